"""One runner for every method: train (or resume, or load), evaluate, record.

    from harness.config import build_spec
    from harness.runner import run
    records = run(build_spec({"method": "coop", "dataset": "oxford_pets", ...}))

Order of work inside a run follows the published framework (PROTOCOL.md 1): seed -> log -> dataset
(few-shot draw, base/new) -> loaders -> model -> optimiser and schedule -> train -> test.

Training (PROTOCOL.md 9, 10): SGD over the method's trainable parameters only, one constant
warm-up epoch then cosine, stepped once per epoch. A checkpoint in the authors' format, with the
optimiser, scheduler and every RNG state, is written atomically after each epoch, so a killed run
restarts from its last finished epoch and ends exactly where an uninterrupted one would.

Evaluation (PROTOCOL.md 13): accuracy, error, macro-F1 and per-class accuracy on the test split of
each target; test-image features come from the shared feature cache. Each finished evaluation
appends one record to the results store; a run whose records all exist is skipped.
"""

from __future__ import annotations

import datetime
import glob
import logging
import math
import os
import random
import re
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from tqdm import tqdm

import methods
from harness import backbone, data, results, tracking
from harness.config import RunSpec
from harness.features import FeatureCache, compute_features

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "prompt_learner"
CHECKPOINT_PREFIX = "model.pth.tar-"


class NonFiniteLossError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Pieces (public: the tests and the benchmark use them)
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int | None) -> None:
    """PROTOCOL.md 1: python, numpy and torch (all devices); None or negative seeds nothing."""
    if seed is None or seed < 0:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def clip_precision(run_precision: str) -> str:
    """The backbone's precision for a run mode: amp trains an fp32 CLIP under autocast."""
    return {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "amp": "fp32"}[run_precision]


def build_optimizer(params, spec: RunSpec) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def build_scheduler(optimizer, spec: RunSpec):
    """Constant warm-up at ``warmup_lr`` for ``warmup_epochs``, then cosine over ``epochs`` with the
    counter restarted after warm-up (PROTOCOL.md 10): lr(e) = lr * (1 + cos(pi (e - 2) / E)) / 2
    for e >= 2 with one warm-up epoch. Stepped once per epoch."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, spec.epochs))
    if spec.warmup_epochs <= 0:
        return cosine
    warmup = torch.optim.lr_scheduler.ConstantLR(
        optimizer, factor=spec.warmup_lr / spec.lr, total_iters=spec.warmup_epochs
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[spec.warmup_epochs])


def learning_rates(spec: RunSpec) -> list[float]:
    """The learning rate of each epoch (1-based order) under ``spec``'s schedule."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], spec)
    scheduler = build_scheduler(optimizer, spec)
    rates = []
    for _ in range(spec.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    """PROTOCOL.md 13, in percent: accuracy, error, macro-F1 over the labels present, per-class accuracy."""
    correct = int((labels == predictions).sum())
    total = int(labels.size)
    accuracy = 100.0 * correct / max(1, total)
    present = np.unique(labels)
    macro_f1 = 100.0 * f1_score(labels, predictions, average="macro", labels=present) if total else 0.0
    per_class = []
    for label in range(num_classes):
        mask = labels == label
        per_class.append(100.0 * float((predictions[mask] == label).mean()) if mask.any() else None)
    observed = [a for a in per_class if a is not None]
    return {
        "accuracy": accuracy,
        "error": 100.0 - accuracy,
        "macro_f1": float(macro_f1),
        "perclass_accuracy": float(np.mean(observed)) if observed else 0.0,
        "per_class_accuracy": per_class,
        "total": total,
        "correct": correct,
    }


def latest_checkpoint(run_dir: str) -> tuple[str, int] | None:
    """(path, epoch) of the newest finished-epoch checkpoint in a run folder, or None."""
    folder = os.path.join(run_dir, CHECKPOINT_DIR)
    pointer = os.path.join(folder, "checkpoint")
    candidates = []
    if os.path.isfile(pointer):
        with open(pointer) as f:
            name = f.readline().strip()
        if name:
            candidates.append(os.path.join(folder, name))
    candidates += sorted(
        glob.glob(os.path.join(folder, CHECKPOINT_PREFIX + "*")),
        key=lambda p: int(p.rsplit("-", 1)[1]) if p.rsplit("-", 1)[1].isdigit() else -1,
        reverse=True,
    )
    for path in candidates:
        match = re.search(r"-(\d+)$", path)
        if match and os.path.isfile(path):
            return path, int(match.group(1))
    return None


def git_commit() -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict:
    import open_clip

    import harness

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "?"),
        "harness": harness.__version__,
    }


@contextmanager
def run_logging(run_dir: str):
    """Log to ``<run_dir>/log.txt`` as well as the console; an existing log is kept and the new one
    gets a time suffix, as in the authors' framework (PROTOCOL.md 1)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "log.txt")
    if os.path.exists(path):
        path += datetime.datetime.now().strftime("-%Y-%m-%d-%H-%M-%S")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(console)
    else:
        console = None
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        if console is not None:
            root.removeHandler(console)
        root.setLevel(previous)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Run:
    """State of one job while it runs; ``run(spec)`` is the entry point."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.run_dir = os.path.abspath(spec.output_dir)
        self.results = spec.results or os.path.dirname(self.run_dir)
        self.device = resolve_device(spec.device)
        self.cache = FeatureCache(
            spec.feature_cache or os.path.join(os.path.dirname(results.results_path(self.results)), "feature_cache")
        )
        self.job = spec.job or f"{spec.method}/{spec.dataset}/seed{spec.seed}"
        self.tracker: tracking.Tracker = tracking.Tracker()
        self.clip = None
        self.trainable = methods.method_class(spec.method).trainable

    # -- bookkeeping -------------------------------------------------------------------------

    def record_base(self) -> dict:
        spec = self.spec
        return {
            "experiment": spec.experiment,
            "job": self.job,
            "method": spec.method,
            "config": spec.config or None,
            "train_dataset": spec.dataset if self.trainable else None,
            "train_subsample": spec.subsample if self.trainable else None,
            "shots": spec.shots if self.trainable else 0,
            "seed": spec.seed if self.trainable else None,
            "backbone": spec.backbone,
            "precision": spec.precision,
        }

    def target_key(self, dataset: str, subsample: str) -> tuple:
        return results.record_key({**self.record_base(), "dataset": dataset, "subsample": subsample})

    def pending_targets(self) -> list[tuple[str, str]]:
        targets = self.spec.eval_targets()
        if self.spec.force:
            return targets
        done = results.existing_keys(self.results)
        return [t for t in targets if self.target_key(*t) not in done]

    def load_backbone(self):
        if self.clip is None:
            self.clip = backbone.load_clip(
                self.spec.backbone, device=self.device, precision=clip_precision(self.spec.precision)
            )
        return self.clip

    def build_method(self, classnames: list[str], dataset: str):
        options = dict(self.spec.options)
        if self.spec.method == "zsclip":
            options.setdefault("dataset", dataset)  # selects the dataset's hand-made template
        return methods.build_method(self.spec.method, self.load_backbone(), classnames, **options).to(self.device)

    def autocast(self):
        if self.spec.precision != "amp":
            return nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # -- training ----------------------------------------------------------------------------

    def checkpoint_path(self, epoch: int) -> str:
        return os.path.join(self.run_dir, CHECKPOINT_DIR, f"{CHECKPOINT_PREFIX}{epoch}")

    def save_checkpoint(self, model, optimizer, scheduler, epoch: int, loader_generator, scaler) -> None:
        path = self.checkpoint_path(epoch)
        model.save_prompt_checkpoint(
            path,
            epoch,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            rng={
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "loader": loader_generator.get_state(),
            },
            scaler=scaler.state_dict() if scaler is not None else None,
            classnames=model.classnames,
            spec=self.spec.to_dict(),
        )
        pointer = os.path.join(self.run_dir, CHECKPOINT_DIR, "checkpoint")
        with open(pointer + ".tmp", "w") as f:
            f.write(os.path.basename(path) + "\n")
        os.replace(pointer + ".tmp", pointer)
        # Only the newest checkpoint is needed to resume; older epochs go (the final one stays).
        for old in glob.glob(os.path.join(self.run_dir, CHECKPOINT_DIR, CHECKPOINT_PREFIX + "*")):
            if old != path and not old.endswith(".tmp"):
                os.unlink(old)

    def train(self, splits) -> str:
        """Train (resuming if a checkpoint exists); return the final checkpoint's path."""
        spec = self.spec
        found = latest_checkpoint(self.run_dir)
        if found and found[1] >= spec.epochs:
            log.info("Training already finished: %s", found[0])
            return found[0]

        model = self.build_method(splits.classnames, spec.dataset)
        params = model.trainable_parameters()
        optimizer = build_optimizer(params, spec)
        scheduler = build_scheduler(optimizer, spec)
        scaler = torch.amp.GradScaler("cuda") if spec.precision == "amp" and self.device.type == "cuda" else None
        loader_generator = torch.Generator()
        loader_generator.manual_seed(spec.seed if spec.seed is not None and spec.seed >= 0 else int(time.time()))
        start_epoch = 0
        if found:
            checkpoint = model.load_prompt_checkpoint(found[0])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            rng = checkpoint["rng"]
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            loader_generator.set_state(rng["loader"])
            if scaler is not None and checkpoint.get("scaler"):
                scaler.load_state_dict(checkpoint["scaler"])
            start_epoch = found[1]
            log.info("Resuming from %s (epoch %d of %d)", found[0], start_epoch, spec.epochs)

        transform = data.build_transform(train=True, size=backbone.image_size(self.clip))
        loader = data.build_loader(
            splits.train,
            transform,
            spec.batch_size,
            train=True,
            num_workers=self.num_workers(),
            generator=loader_generator,
        )
        log.info(
            "Training %s on %s (%s classes: %d, %d images) for %d epochs, %d steps each; %d trainable parameters",
            spec.method,
            spec.dataset,
            spec.subsample,
            len(splits.classnames),
            len(splits.train),
            spec.epochs,
            len(loader),
            model.num_trainable_parameters(),
        )
        check_finite = spec.precision in ("fp16", "fp32", "bf16")
        fault_epoch = int(os.environ.get("HARNESS_FAULT_AFTER_EPOCH", "0"))  # tests: die like a killed job
        step = start_epoch * len(loader)
        progress = tqdm(
            total=spec.epochs * len(loader),
            initial=step,
            desc=f"train {self.job}",
            unit="step",
            mininterval=2,
            dynamic_ncols=True,
        )
        model.train()
        for epoch in range(start_epoch + 1, spec.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            losses, correct, seen = [], 0, 0
            for images, labels in loader:
                images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                with self.autocast():
                    features = model.encode_image(images)
                    logits = model.logits_from_features(features)
                    loss = F.cross_entropy(logits, labels)
                if check_finite and not torch.isfinite(loss):
                    progress.close()
                    last = latest_checkpoint(self.run_dir)
                    raise NonFiniteLossError(
                        f"Loss is {loss.item()} at epoch {epoch}, step {step + 1} of {self.job}. The last good "
                        f"checkpoint is {last[0] if last else 'none (first epoch)'}. "
                        f"With precision {spec.precision!r}, "
                        "try precision fp32 or amp, or a lower lr."
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                step += 1
                losses.append(loss.item())
                correct += int((logits.argmax(-1) == labels).sum())
                seen += labels.numel()
                self.tracker.log(tracking.step_metrics(losses[-1], lr, epoch), step=step)
                progress.update(1)
                progress.set_postfix(
                    epoch=f"{epoch}/{spec.epochs}", loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", refresh=False
                )
            scheduler.step()
            epoch_loss = float(np.mean(losses)) if losses else math.nan
            epoch_acc = 100.0 * correct / max(1, seen)
            log.info("epoch %d/%d  loss %.4f  train acc %.2f%%  lr %.3e", epoch, spec.epochs, epoch_loss, epoch_acc, lr)
            self.tracker.log(tracking.epoch_metrics(epoch_loss, epoch_acc, lr, epoch), step=step)
            self.save_checkpoint(model, optimizer, scheduler, epoch, loader_generator, scaler)
            if fault_epoch and epoch == fault_epoch:
                log.warning("HARNESS_FAULT_AFTER_EPOCH=%d: exiting abruptly", fault_epoch)
                os._exit(137)
        progress.close()
        log.info("Finish training")
        return self.checkpoint_path(spec.epochs)

    def num_workers(self) -> int:
        if self.spec.num_workers is not None:
            return self.spec.num_workers
        return min(8, os.cpu_count() or 1)

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, dataset: str, subsample: str, checkpoint: str | None) -> dict:
        spec = self.spec
        # The test split and class names do not depend on the few-shot draw: build without one.
        splits = data.build_dataset(
            dataset, spec.data_root, num_shots=0, seed=spec.seed if spec.seed is not None else 1, subsample=subsample
        )
        model = self.build_method(splits.classnames, dataset)
        if checkpoint:
            model.load_prompt_checkpoint(checkpoint)
        model.eval()
        clip = self.load_backbone()
        size = backbone.image_size(clip)
        impaths = [item.impath for item in splits.test]
        namespace = {
            "backbone": spec.backbone,
            "precision": clip_precision(spec.precision),
            "dataset": dataset,
            "transform": f"test-bicubic-{size}",
        }
        if os.path.isfile(os.path.expanduser(spec.backbone)):
            stat = os.stat(os.path.expanduser(spec.backbone))
            namespace["backbone_file"] = [stat.st_size, int(stat.st_mtime)]

        def compute():
            loader = data.build_loader(
                splits.test,
                data.build_transform(train=False, size=size),
                spec.test_batch_size,
                train=False,
                num_workers=self.num_workers(),
            )
            return compute_features(model, loader, self.device, desc=f"features {dataset}/{subsample}")

        features = self.cache.get_or_compute(namespace, impaths, compute)
        labels = np.array([item.label for item in splits.test])
        predictions = []
        step = spec.test_batch_size if model.text_depends_on_image else max(1, len(features))
        with torch.no_grad():
            for start in tqdm(
                range(0, len(features), step),
                desc=f"eval {dataset}/{subsample}",
                unit="batch",
                leave=False,
                mininterval=2,
            ):
                batch = features[start : start + step].to(self.device)
                predictions.append(model.logits_from_features(batch).argmax(-1).cpu())
        predictions = torch.cat(predictions).numpy() if predictions else np.array([], dtype=int)
        metrics = classification_metrics(labels, predictions, len(splits.classnames))
        metrics["num_trainable_parameters"] = model.num_trainable_parameters()
        log.info(
            "=> result\n* total: %d\n* correct: %d\n* accuracy: %.2f%%\n* error: %.2f%%\n* macro_f1: %.2f%%",
            metrics["total"],
            metrics["correct"],
            metrics["accuracy"],
            metrics["error"],
            metrics["macro_f1"],
        )
        return {"metrics": metrics, "options": self.method_options(model)}

    def method_options(self, model) -> dict:
        options = dict(self.spec.options)
        pl = model.prompt_learner
        if hasattr(pl, "n_ctx"):
            options["n_ctx"] = pl.n_ctx
        if getattr(model, "templates", None):
            options["template"] = model.templates if len(model.templates) > 1 else model.templates[0]
        return options

    # -- the job -----------------------------------------------------------------------------

    def __call__(self) -> list[dict]:
        spec = self.spec
        pending = self.pending_targets()
        if not pending:
            log.info(
                "Skipping %s: all %d results exist in %s (force=true redoes it)",
                self.job,
                len(spec.eval_targets()),
                results.results_path(self.results),
            )
            return []
        started = time.time()
        seed_everything(spec.seed if self.trainable else None)
        records = []
        with run_logging(self.run_dir) as log_path:
            log.info("Run %s -> %s (log %s)", self.job, self.run_dir, log_path)
            log.info("Spec: %s", spec.to_dict())
            kind = tracking.job_kind(self.trainable, spec.load_from)
            self.tracker = tracking.start_run(
                spec.tracking,
                name=self.job,
                group=spec.experiment,
                tags=tracking.run_tags(spec, kind),
                config=tracking.run_config(spec, kind),
                job_type=kind,
                dir=self.run_dir,
            )
            failed = True
            try:
                checkpoint = None
                epochs = 0
                if self.trainable and spec.load_from:
                    checkpoint = spec.load_from
                    if os.path.isdir(checkpoint):
                        found = latest_checkpoint(checkpoint)
                        if not found:
                            raise FileNotFoundError(
                                f"No prompt checkpoint under {checkpoint}/{CHECKPOINT_DIR}/ to evaluate."
                            )
                        checkpoint = found[0]
                    epochs = int(torch.load(checkpoint, map_location="cpu", weights_only=False).get("epoch", 0))
                elif self.trainable:
                    splits = data.build_dataset(
                        spec.dataset,
                        spec.data_root,
                        num_shots=spec.shots,
                        seed=spec.seed if spec.seed is not None else 1,
                        subsample=spec.subsample,
                    )
                    self.load_backbone()
                    checkpoint = self.train(splits)
                    epochs = spec.epochs
                for dataset, subsample in pending:
                    result = self.evaluate(dataset, subsample, checkpoint)
                    record = {
                        **self.record_base(),
                        "dataset": dataset,
                        "subsample": subsample,
                        "options": result["options"],
                        "metrics": result["metrics"],
                        "epochs": epochs,
                        "wall_time_s": round(time.time() - started, 2),
                        "git_commit": git_commit(),
                        "versions": package_versions(),
                        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "run_dir": self.run_dir,
                    }
                    results.append_record(self.results, record)
                    records.append(record)
                    accuracy = result["metrics"]["accuracy"]
                    self.tracker.log(tracking.eval_metrics(dataset, subsample, result["metrics"]))
                    self.tracker.summary(tracking.summary_metrics(record, spec.dataset))
                    log.info("%s on %s/%s: accuracy %.2f%%", spec.method, dataset, subsample, accuracy)
                failed = False
            finally:
                self.tracker.finish(failed=failed)
        log.info("Feature cache: %d hits, %d computed", self.cache.hits, self.cache.misses)
        return records


def run(spec: RunSpec) -> list[dict]:
    """Run one job; returns the records it appended (empty if everything already existed)."""
    return Run(spec)()
