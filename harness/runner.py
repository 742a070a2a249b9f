"""One runner for every method, read top to bottom: ``run`` -> train -> evaluate -> record.

    from harness.config import build_spec
    from harness.runner import run
    records = run(build_spec({"method": "coop", "dataset": "oxford_pets", ...}))

Order of work inside a run follows the published framework (PROTOCOL.md 1): seed -> log -> backbone
(loaded once per job) -> dataset (few-shot draw, base/new) -> loaders -> model -> optimiser and
schedule -> train -> test.

The runner knows no method by name: it builds one and asks it (``methods.parts.base``) for its training
objective, its parameter groups, its end-of-epoch hook and whether its image features may come from
the shared cache.

Training (PROTOCOL.md 9, 10): SGD (or a method's published Adam / AdamW: run key ``optimizer``) over the
method's parameter groups only (``build_optimizer``), one
constant warm-up epoch then cosine (``build_scheduler``), stepped once per epoch (or a method's own schedule,
stepped per batch up to its budget of steps: ``step_schedule``); each step is taken in
``Run.train_epoch``, which stops the run on a non-finite loss, and on a non-finite learned tensor
after the optimiser's steps or after the method's end-of-epoch hook. Everything carried from one
epoch to the next is one ``TrainingState``, saved after each epoch (``harness.checkpoint``), so that
a killed run restarts from its last finished epoch and ends exactly where an uninterrupted one would.
The time of each epoch is kept there too, so a resumed job's training time sums its starts.

Evaluation (PROTOCOL.md 13): accuracy, error, macro-F1 and per-class accuracy on the test split of
each target. Each finished evaluation appends one record (``harness.results.make_record``) to the
results store with the job's fingerprint and the stamp of the images it scored
(``harness.fingerprint``) and what the job cost (``harness.cost``: training and evaluation time,
peak memory, GFLOPs per image, device; no setting, outside the fingerprint); a run whose records
all exist with them is skipped. A job that loads a
trained prompt (``load_from``) scores it only under the settings it was trained with
(``Run.loaded_checkpoint``). The run folder's ``fingerprint.json`` says which settings run it
holds: a folder of other settings is refused, ``force`` trains anew in a fresh folder beside it,
``reevaluate`` scores its finished checkpoint again.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import logging
import math
import os
import random
import socket
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from tqdm import tqdm

import methods
from clipcore import backbone, paths
from clipcore.checkpoint_file import load_checkpoint_file
from harness import checkpoint, cost, data, results, tracking
from harness import fingerprint as fingerprints
from harness.checkpoint import TrainingState
from harness.config import ConfigError, RunSpec, validate
from harness.data.errors import DatasetError
from harness.features import FeatureCache, cache_namespace, compute_features
from harness.logs import FILE_ONLY, run_logging
from harness.metrics import classification_metrics

log = logging.getLogger(__name__)


_RUN_KEYS = frozenset(f.name for f in dataclasses.fields(RunSpec))


def authors_file_run(path: str, checkpoint_folder: str) -> str | None:
    """The run folder of ours whose job wrote an authors' file (``authors_files``: under the run's
    ``checkpoint_folder``, at their loader's path), or None for a file elsewhere (their code wrote it, or it
    was copied out)."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    while os.path.dirname(folder) != folder:
        if fingerprints.read_folder(folder) is not None:
            return folder if path.startswith(os.path.join(folder, checkpoint_folder) + os.sep) else None
        folder = os.path.dirname(folder)
    return None


class RunFailedError(RuntimeError):
    """Training ran but produced no valid result (the message says why and what to try)."""


class NonFiniteLossError(RunFailedError):
    pass


def run(spec: RunSpec) -> list[dict]:
    """Run one job; returns the records it appended (empty if everything already existed)."""
    return Run(spec)()


class Run:
    """State of one job while it runs; ``run(spec)`` is the entry point."""

    def __init__(self, spec: RunSpec):
        validate(spec)  # a RunSpec built in Python is checked as one built from YAML or the command line
        self.spec = spec
        self.run_dir = os.path.abspath(spec.output_dir)
        self.results = spec.results or os.path.dirname(self.run_dir)
        self.device = resolve_device(spec.device)
        self.cache = FeatureCache(
            spec.feature_cache or os.path.join(os.path.dirname(results.results_path(self.results)), "feature_cache")
        )
        self.job = spec.job_name
        self.tracker: tracking.Tracker = tracking.Tracker()
        self.clip = None
        self.settings = fingerprints.settings_of(spec)  # what the numbers depend on (harness.fingerprint)
        self.fingerprint = fingerprints.fingerprint_of(self.settings)
        self.loaded: tuple[str, int] | None = None  # (checkpoint, epoch) of load_from, once checked
        self.load_note: str | None = None  # load_any: what the loaded prompt's training differs in
        self.training_cost = dict(cost.NOT_TRAINED)  # harness.cost: set by train / fit

    def __call__(self) -> list[dict]:
        if self.spec.force:
            self.run_dir = self.forced_run_dir()
        with run_folder_lock(self.run_dir, self.job):
            return self.run()

    def run(self) -> list[dict]:
        """The job: train (or load a trained prompt, or nothing for zero-shot), evaluate each pending
        target, record each result."""
        spec = self.spec
        if spec.learns and not spec.trains:
            # Checked first: a refused prompt claims no folder, and load_any records its training fingerprint.
            self.loaded_checkpoint()
        pending = self.pending_targets()
        if not pending:
            log.info(
                "Skipping %s: all %d results exist in %s (force=true redoes it)",
                self.job,
                len(spec.eval_targets()),
                results.results_path(self.results),
            )
            return []
        self.claim_folder()
        started = time.time()
        cost.reset_peak_memory(self.device)
        seed_everything(spec.seed if spec.learns else None)
        records = []
        with run_logging(self.run_dir) as log_path:
            log.info("Run %s -> %s (log %s)", self.job, self.run_dir, log_path)
            log.info("Spec: %s", spec.to_dict(), extra=FILE_ONLY)
            log.info("Fingerprint %s of the settings %s", self.fingerprint, self.settings, extra=FILE_ONLY)
            self.tracker = tracking.start_run(
                spec.tracking,
                name=self.job,
                group=spec.experiment,
                tags=tracking.run_tags(spec),
                config=tracking.run_config(spec),
                job_type=spec.job_kind,
                dir=self.run_dir,
            )
            failed = True
            try:
                self.clip = backbone.load_clip(
                    spec.backbone, device=self.device, precision=clip_precision(spec.precision)
                )
                if spec.reevaluate and spec.trains:
                    checkpoint_file, epochs = self.finished_checkpoint()
                elif spec.trains and methods.method_class(spec.method).fits_features:
                    checkpoint_file, epochs = self.fit(), 0  # fitted on frozen features, no epochs
                elif spec.trains:
                    checkpoint_file, epochs = self.train(), spec.epochs
                else:
                    checkpoint_file, epochs = self.loaded_checkpoint()
                for dataset, subsample in pending:
                    evaluation = self.evaluate(dataset, subsample, checkpoint_file)
                    records.append(self.record(dataset, subsample, evaluation, epochs, started))
                failed = False
            except Exception:  # the traceback in the run's log; the caller shows the error's own line
                log.exception("%s failed", self.job, extra=FILE_ONLY)
                raise
            finally:
                self.tracker.finish(failed=failed)
        held = fingerprints.read_folder(self.run_dir) or {}
        fingerprints.write_folder(
            self.run_dir, self.settings, self.fingerprint, forced=bool(held.get("forced")), finished=True
        )
        log.info("Feature cache: %d hits, %d computed", self.cache.hits, self.cache.misses)
        return records

    # -- training ----------------------------------------------------------------------------

    def train(self) -> str:
        """Train on the spec's few-shot draw, resuming from the run folder's newest checkpoint if there
        is one; return the final checkpoint's path."""
        spec = self.spec
        seed = spec.seed if spec.seed is not None else 1
        splits = data.build_dataset(
            spec.dataset, spec.data_root, num_shots=spec.shots, seed=seed, subsample=spec.subsample
        )
        state = self.start_training(splits.classnames)
        model = state.model  # its declared training images: augmentation and views per image
        transform = data.build_transform(
            train=True,
            size=backbone.image_size(self.clip),
            crop_scale=tuple(spec.crop_scale),
            augmentation=model.train_augmentation,
        )
        transform = data.with_views(transform, model.train_views)
        loader = data.build_loader(
            splits.train,
            transform,
            spec.batch_size,
            train=True,
            num_workers=spec.num_workers,  # None: the loader's default
            generator=state.loader_generator,
        )
        step_schedule = getattr(state.model, "step_schedule", None)  # methods.parts.base: a budget of steps
        if callable(step_schedule):
            state.scheduler, state.step_budget = step_schedule(state.optimizer, spec.shots, len(loader), spec.epochs)
        start_epoch = checkpoint.resume(self.run_dir, state, spec.training_identity())
        final = checkpoint.checkpoint_path(self.run_dir, spec.epochs, state.model.checkpoint_folder)
        if start_epoch >= spec.epochs and os.path.isfile(final):
            log.info("Training already finished: %s", final)
            self.training_cost = cost.training(state.epoch_seconds, state.starts)
            return final
        state.starts += 1

        log.info(
            "Training %s on %s (%s classes: %d, %d images) for %d epochs, %d steps each; %d trainable parameters",
            spec.method,
            spec.dataset,
            spec.subsample,
            len(splits.classnames),
            len(splits.train),
            spec.epochs,
            len(loader),
            state.model.num_trainable_parameters(),
        )
        with tqdm(
            total=spec.epochs * len(loader),
            initial=start_epoch * len(loader),
            desc=f"train {self.job}",
            unit="step",
            mininterval=2,
            dynamic_ncols=True,
            disable=None,  # a bar on a terminal only: a log file gets the epoch lines instead
            leave=False,
        ) as progress:
            state.model.train()
            for epoch in range(start_epoch + 1, spec.epochs + 1):
                began = time.perf_counter()
                self.train_epoch(state, loader, epoch, progress)
                if state.epoch_seconds is not None:
                    state.epoch_seconds.append(time.perf_counter() - began)
                state.epoch = epoch
                checkpoint.save(self.run_dir, state, spec.training_identity(), final=epoch == spec.epochs)
        if spec.epochs == 0:  # on purpose: evaluate the initial prompt (CoOp's is the hand-made one's)
            log.info("epochs = 0: no training; the initial prompt is saved and evaluated")
            checkpoint.save(self.run_dir, state, spec.training_identity(), final=True)
        self.training_cost = cost.training(state.epoch_seconds, state.starts)
        log.info("Finish training (%s s)", self.training_cost["train_s"])
        return final

    def start_training(self, classnames: list[str]) -> TrainingState:
        """The state of epoch 0: the method at its initialisation, the optimiser over its parameter
        groups, the schedule, the gradient scaler (amp on CUDA only) and the training loader's generator."""
        spec = self.spec
        model = self.build_method(classnames, spec.dataset, spec.subsample)
        optimizer = build_optimizer(model.parameter_groups(), spec)
        scheduler = build_scheduler(optimizer, spec)
        scaler = torch.amp.GradScaler("cuda", enabled=spec.precision == "amp" and self.device.type == "cuda")
        loader_generator = torch.Generator()
        loader_generator.manual_seed(spec.seed if spec.seed is not None and spec.seed >= 0 else int(time.time()))
        return TrainingState(model, optimizer, scheduler, scaler, loader_generator)

    def train_epoch(self, state: TrainingState, loader, epoch: int, progress) -> None:
        """Epoch ``epoch`` (1-based): one optimiser step per batch, then the schedule's step and the
        method's end-of-epoch hook. A non-finite loss or parameter ends the run with advice."""
        spec, model, optimizer, scaler = self.spec, state.model, state.optimizer, state.scaler
        lr = optimizer.param_groups[0]["lr"]
        losses, correct, seen, skipped = [], 0, 0, 0
        step = (epoch - 1) * len(loader)
        own_backward = callable(getattr(model, "backward", None))  # the contract: an update that is not one gradient
        for images, labels in loader:
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            details: dict = {}
            optimizer.zero_grad(set_to_none=True)
            scale = scaler.get_scale()  # a disabled scaler passes the loss and the step through unchanged
            with self.autocast():
                if own_backward:
                    # The method leaves its published update in .grad itself (ProGrad's projection), each
                    # of its losses multiplied by the scaler's factor.
                    loss = model.backward(images, labels, details=details, loss_scale=scale)
                else:
                    loss = model.training_loss(images, labels, details=details)
            # With a gradient scaler a non-finite step is skipped by design (and counted); otherwise it ends the run.
            if not scaler.is_enabled() and not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"Loss is {loss.item()} at epoch {epoch}, step {step + 1} of {self.job} (lr {lr:.3g}). "
                    f"{loss_cause(details, spec)} {self.last_good()}"
                )
            if not own_backward:
                scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            skipped += scaler.get_scale() < scale  # the scale drops exactly when a step is skipped
            step += 1
            if state.step_budget is not None:
                state.scheduler.step()
                lr = optimizer.param_groups[0]["lr"]
            losses.append(loss.item())
            correct += int((details["logits"].argmax(-1) == labels).sum())
            seen += labels.numel()
            terms = {f"train/{k}": float(v) for k, v in details.items() if k != "logits"}
            self.tracker.log({**tracking.step_metrics(losses[-1], lr, epoch), **terms}, step=step)
            progress.update(1)
            progress.set_postfix(
                epoch=f"{epoch}/{spec.epochs}", loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", refresh=False
            )
            if state.step_budget is not None and step >= state.step_budget:
                break  # the method's budget ends mid-epoch (CLIP-LoRA counts steps, not epochs)
        if losses and skipped == len(losses):
            raise RunFailedError(
                f"The gradient scaler skipped every step of epoch {epoch} of {self.job}: the loss or its "
                f"gradients are not finite, so nothing was learned. {self.last_good()} "
                f"{non_finite_advice(spec.precision)}"
            )
        bad = non_finite_tensors(model)
        if bad:
            raise RunFailedError(
                f"After epoch {epoch} of {self.job} (lr {lr:.3g}) the learned {', '.join(bad)} are not finite. "
                f"{self.last_good()} {non_finite_advice(spec.precision)}"
            )
        if state.step_budget is None:
            state.scheduler.step()
        model.on_epoch_end(epoch, spec.epochs)
        # The hook may rewrite the learned tensors (PromptSRC's aggregate replaces them at the last
        # epoch) and keeps state that a resumed run carries on: a NaN there is caught here, not recorded.
        bad = non_finite_tensors(model)
        if bad:
            raise RunFailedError(
                f"After epoch {epoch} of {self.job} the method's end-of-epoch hook ({spec.method}'s "
                f"on_epoch_end) left {', '.join(bad)} not finite (they were finite after the epoch's last step): "
                f"the hook's options ({fingerprints.show(spec.options)}) are the likely cause, not the learning rate. "
                f"{self.last_good()}"
            )
        epoch_loss = float(np.mean(losses)) if losses else math.nan
        epoch_acc = 100.0 * correct / max(1, seen)
        log.info("epoch %d/%d  loss %.4f  train acc %.2f%%  lr %.3e", epoch, spec.epochs, epoch_loss, epoch_acc, lr)
        self.tracker.log(tracking.epoch_metrics(epoch_loss, epoch_acc, lr, epoch), step=step)

    def fit(self) -> str:
        """For methods fitted on frozen features (``fits_features``: linear-probe CLIP): features of the
        full train and val splits with the test transform (once, through the shared cache), ``fit``, and
        the fitted checkpoint; a finished fit of the same spec is reused (a killed job resumes here)."""
        spec = self.spec
        seed = spec.seed if spec.seed is not None else 1
        # The linear probe draws its own shots from the full splits (PROTOCOL.md 20): no split_fewshot draw.
        # A cache model (Tip-Adapter) is fitted on the split_fewshot draw, searched on the full val split.
        splits = data.build_dataset(spec.dataset, spec.data_root, num_shots=0, seed=seed, subsample=spec.subsample)
        model = self.build_method(splits.classnames, spec.dataset, spec.subsample)
        extra = {}
        if not model.draws_own_shots:
            fewshot = data.build_dataset(
                spec.dataset, spec.data_root, num_shots=spec.shots, seed=seed, subsample=spec.subsample
            )
            splits = dataclasses.replace(splits, train=fewshot.train)
            extra["augmented"] = self.augmented_features(model, fewshot.train)
        if not splits.val:  # what the fit is chosen on (the probe's C, the cache's beta and alpha)
            raise DatasetError(
                f"{spec.dataset}'s val split ({spec.subsample} classes) is empty under {spec.data_root}, and method "
                f"{spec.method!r} chooses its fit on it: give the dataset a split file with validation images."
            )
        final = checkpoint.checkpoint_path(self.run_dir, 0, model.checkpoint_folder)
        if os.path.isfile(final):
            saved = load_checkpoint_file(final).get("spec")
            if not checkpoint.spec_differences(saved, spec.training_identity()):
                log.info("Fit already done: %s", final)
                return final
            log.warning("%s was fitted for another spec: fitting again", final)
        began = time.perf_counter()
        model.eval()
        features = {
            name: self.image_features(model, getattr(splits, name), spec.dataset, f"{spec.dataset}/{name}")
            for name in ("train", "val")
        }
        labels = {name: np.array([item.label for item in getattr(splits, name)]) for name in ("train", "val")}
        log.info(
            "Fitting %s on %s (%d classes; %d train and %d val features) with %d shots, seed %d",
            spec.method,
            spec.dataset,
            len(splits.classnames),
            len(labels["train"]),
            len(labels["val"]),
            spec.shots,
            seed,
        )
        model.fit(
            features["train"], labels["train"], features["val"], labels["val"], seed=seed, shots=spec.shots, **extra
        )
        log.info("Fitted: %s", model.record_options())
        checkpoint.save_authors_files(model, final, spec.training_identity())
        model.save_prompt_checkpoint(final, 0, spec=spec.training_identity())
        self.training_cost = cost.fitted(time.perf_counter() - began)
        return final

    def augmented_features(self, model, items):
        """``fit``'s ``augmented``: seed -> ``model.encode_image`` of ``items`` through the training transform,
        in their order. The crops come from the global torch generator, forked and seeded with the given seed:
        a rerun draws the same crops, whether or not the shared feature cache spared it other work before."""
        spec = self.spec
        transform = data.build_transform(
            train=True, size=backbone.image_size(self.clip), crop_scale=tuple(spec.crop_scale)
        )

        def augmented(seed: int) -> torch.Tensor:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                loader = data.build_loader(items, transform, spec.batch_size, train=False, num_workers=spec.num_workers)
                with torch.no_grad():
                    return compute_features(model, loader, self.device, desc=f"augmented {spec.dataset}")

        return augmented

    def finished_checkpoint(self) -> tuple[str, int]:
        """``reevaluate``: the run folder's final checkpoint, scored again without training."""
        found = checkpoint.load_latest(self.run_dir)
        finished = 0 if methods.method_class(self.spec.method).fits_features else self.spec.epochs  # a fit: epoch 0
        if not found or found[1] != finished:
            raise RunFailedError(
                f"Nothing to re-evaluate in {self.run_dir}: no finished training of {finished} epochs "
                f"(last checkpoint: {found[0] if found else 'none'}). Run it without reevaluate to train."
            )
        path, epochs, contents = found
        stored = contents.get("cost") or {}
        if stored.get("epoch_seconds") is not None:  # the new records still say what the prompt cost to learn
            self.training_cost = cost.training(stored["epoch_seconds"], int(stored.get("starts", 1)))
        log.info("Re-evaluating %s (no training)", path)
        return path, epochs

    def loaded_checkpoint(self) -> tuple[str | None, int]:
        """For a job that does not train: (checkpoint to evaluate, epochs it was trained), from
        ``load_from`` (a run folder or a checkpoint file), or (None, 0) for a method that learns nothing.

        The prompt must be the finished training of this job's settings: the checkpoint's own training
        spec and epoch, and its run folder's ``fingerprint.json`` (the data, the backbone's weights, the
        training images; a folder written before those were stamped, on the rest), are compared with
        this job's. A partial or differently trained prompt is an
        error naming the differences, unless ``load_any``: then this job's settings and fingerprint
        become the training run's plus a ``load_any`` note of what differs (a settings run of its own in
        the report), and its records carry the note. A checkpoint without a stored spec (the authors'
        code or an early harness wrote it) is accepted with a warning when its epoch is the job's:
        its other settings cannot be checked. A file in the authors' own layout (``is_authors_file``:
        CLIP-LoRA's ``save_lora`` file) holds no epoch and is taken as a finished training; the method
        checks what it does hold (its metadata) when it loads it. One under a run folder of ours is that run's
        (``authors_file_run``): its folder's fingerprint and latest checkpoint are checked as above."""
        spec = self.spec
        if not spec.learns:
            return None, 0
        if self.loaded is not None:
            return self.loaded
        path = spec.load_from
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.dirname(os.path.abspath(path)))
        if os.path.isdir(path):
            found = checkpoint.latest_checkpoint(path)
            if not found:
                raise FileNotFoundError(
                    f"No prompt checkpoint ({checkpoint.CHECKPOINT_PREFIX}<epoch>) under {path} to evaluate."
                )
            path = found[0]
        contents = load_checkpoint_file(path)
        contents = contents if isinstance(contents, dict) else {}
        if methods.method_class(spec.method).is_authors_file(contents):
            writer = authors_file_run(path, methods.method_class(spec.method).checkpoint_folder)
            if writer:  # one of our jobs wrote it beside its checkpoint, which holds the spec the file lacks
                folder, found = writer, checkpoint.latest_checkpoint(writer)
                contents = load_checkpoint_file(found[0]) if found else {}
            else:
                contents = {"epoch": spec.epochs}  # their code writes it once, after the last step; no epoch in it
        epoch, saved = int(contents.get("epoch", 0)), contents.get("spec")
        held = fingerprints.read_folder(folder)
        changes = {}
        if held and held.get("fingerprint") != self.fingerprint:
            changes.update(fingerprints.differences(held.get("settings"), self.settings) or {"data": ("?", "?")})
            if "images" not in (held.get("settings") or {}):  # written before the inputs were stamped: unknown
                changes = {k: v for k, v in changes.items() if k not in fingerprints.INPUT_STAMPS}
        for key, change in checkpoint.spec_differences(saved, spec.training_identity()).items():
            if not (key == "options" and any(k.startswith("options.") for k in changes)):
                changes.setdefault(key, change)
        fitted = methods.method_class(spec.method).fits_features
        trained_for = 0 if fitted else int(saved.get("epochs", spec.epochs)) if saved else spec.epochs
        problems = []
        if epoch != trained_for and saved:
            problems.append(f"it holds epoch {epoch} of a {trained_for}-epoch training that did not finish")
        elif epoch != trained_for:
            changes.setdefault("epochs", (epoch, spec.epochs))
        if changes:
            problems.append(f"it was trained at other settings than this job's ({fingerprints.describe(changes)})")
        if not saved:
            log.warning(
                "%s holds no training spec (the authors' code or an early harness wrote it): its training "
                "settings cannot be checked against this job's; its epoch (%d) is.",
                path,
                epoch,
            )
        other_classes = {k: changes[k] for k in ("dataset", "subsample") if k in changes}
        if other_classes and not methods.method_class(spec.method).transfers_to_other_classes:
            # load_any included: the fit holds one row per class it was fitted on, which another set of as
            # many classes would take index by index, a score that looks like one.
            theirs = " ".join(f"{k}={fingerprints.show(a)}" for k, (a, _) in other_classes.items())
            raise checkpoint.LoadMismatchError(
                f"--load-from {path}: method {spec.method!r} was fitted on other classes than this job's "
                f"({fingerprints.describe(other_classes)}) and cannot score them, load_any or not. Evaluate it on "
                f"its own classes (--set {theirs}), or fit it on these."
            )
        if problems and not spec.load_any:
            settable = [f"{k}={fingerprints.show(a)}" for k, (a, _) in changes.items() if k.split(".")[0] in _RUN_KEYS]
            ways = ["finish its training (run its training job again)"] if "did not finish" in problems[0] else []
            ways += [f"evaluate it at its own settings (--set {' '.join(settable)})"] if settable else []
            ways += ["retrain it on this data and backbone"] if len(settable) < len(changes) else []
            raise checkpoint.LoadMismatchError(
                f"--load-from {path}: {'; and '.join(problems)}, so its score would be recorded under settings "
                f"it was not trained with. To fix: {'; or '.join(ways)}; or set load_any=true to score it anyway "
                "(its records are marked load_any and form a settings run of their own)."
            )
        if problems:
            self.load_note = "; ".join(
                ([f"epoch {epoch} of {trained_for}"] if "did not finish" in problems[0] else [])
                + ([fingerprints.describe(changes)] if changes else [])
            )
            if held and held.get("settings"):
                trained = held["settings"]
            elif saved:
                fields = {f.name for f in dataclasses.fields(RunSpec)}
                overlay = {k: v for k, v in saved.items() if k in fields}
                trained = fingerprints.settings_of(dataclasses.replace(spec, **overlay), data=self.settings["data"])
            else:
                trained = self.settings
            self.settings = {**trained, "load_any": self.load_note}
            self.fingerprint = fingerprints.fingerprint_of(self.settings)
            log.warning("load_any: scoring %s although %s", path, "; and ".join(problems))
        self.loaded = (path, epoch)
        return self.loaded

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, dataset: str, subsample: str, checkpoint_file: str | None) -> dict:
        """{"metrics", "options"} of the prompt in ``checkpoint_file`` (None: the method as built) on
        the test split of ``dataset``'s ``subsample`` classes."""
        spec = self.spec
        # The test split and class names do not depend on the few-shot draw: build without one.
        seed = spec.seed if spec.seed is not None else 1
        splits = data.build_dataset(dataset, spec.data_root, num_shots=0, seed=seed, subsample=subsample)
        model = self.build_method(splits.classnames, dataset, subsample)
        if checkpoint_file:
            model.load_prompt_checkpoint(checkpoint_file)
        model.eval()
        began, hits = time.perf_counter(), self.cache.hits
        features = self.test_features(model, splits, dataset, subsample)
        labels = np.array([item.label for item in splits.test])
        # Methods whose class text does not depend on the image score the whole test set at once
        # (one text-encoder pass); image-conditioned prompts go batch by batch.
        step = spec.test_batch_size if model.text_depends_on_image else max(1, len(features))
        predictions = []
        with torch.no_grad():
            starts = range(0, len(features), step)
            with tqdm(
                starts, desc=f"eval {dataset}/{subsample}", unit="batch", leave=False, mininterval=2, disable=None
            ) as bar:
                for start in bar:
                    batch = features[start : start + step].to(self.device)
                    predictions.append(model.logits_from_features(batch).argmax(-1).cpu())
        predictions = torch.cat(predictions).numpy() if predictions else np.array([], dtype=int)
        seconds = time.perf_counter() - began
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
        options = {**spec.options, **model.record_options()}
        costs = self.evaluation_cost(model, options, seconds, len(labels), cached=self.cache.hits > hits)
        return {"metrics": metrics, "options": options, "cost": costs}

    def evaluation_cost(self, model, options: dict, seconds: float, images: int, cached: bool) -> dict:
        """The evaluation half of the record's cost (``harness.cost``): its time and throughput, and the
        GFLOPs of one image for this model (counted outside the timed evaluation, once per model)."""
        size = backbone.image_size(self.clip)
        key = {
            "method": self.spec.method,
            "options": options,
            "backbone": self.spec.backbone,
            "precision": self.spec.precision,
            "classes": len(model.classnames),
            "image_size": size,
        }
        return {
            "eval_s": round(seconds, 3),
            "eval_images_per_s": round(images / seconds, 2) if seconds > 0 else None,
            "eval_features_cached": cached,
            "gflops_per_image": cost.gflops_per_image(model, size, self.device, paths.cache_dir(), key),
        }

    def test_features(self, model, splits, dataset: str, subsample: str) -> torch.Tensor:
        """``model.encode_image`` of the test images (``image_features`` of the test split)."""
        return self.image_features(model, splits.test, dataset, f"{dataset}/{subsample}")

    def image_features(self, model, items, dataset: str, what: str) -> torch.Tensor:
        """``model.encode_image`` of ``items`` with the test transform: from the shared cache when the
        method's image side is the frozen tower (``features_cacheable``), else computed for this model."""
        spec = self.spec
        size = backbone.image_size(self.clip)

        def compute():
            loader = data.build_loader(
                items,
                data.build_transform(train=False, size=size),
                spec.test_batch_size,
                train=False,
                num_workers=spec.num_workers,  # None: the loader's default
            )
            return compute_features(model, loader, self.device, desc=f"features {what}")

        if not model.features_cacheable:
            return compute()
        namespace = cache_namespace(spec.backbone, clip_precision(spec.precision), dataset, size, model.feature_key())
        return self.cache.get_or_compute(namespace, [item.impath for item in items], compute)

    # -- records -----------------------------------------------------------------------------

    def record(self, dataset: str, subsample: str, evaluation: dict, epochs: int, started: float) -> dict:
        """Append one evaluation's record to the results store and report it to the tracker."""
        costs = {
            **self.training_cost,
            **evaluation["cost"],
            **cost.peak_memory(self.device),
            "device": cost.device_name(self.device),
        }
        record = results.make_record(
            self.spec.identity(), dataset, subsample, evaluation, epochs, started, self.run_dir, costs
        )
        record.update(
            fingerprint=self.fingerprint,
            settings=self.settings,
            reevaluated=bool(self.spec.reevaluate),
            load_any=self.load_note,
            images=fingerprints.images_of(self.spec, dataset, subsample),
        )
        results.append_record(self.results, record)
        self.tracker.log(tracking.eval_metrics(dataset, subsample, record["metrics"]))
        self.tracker.summary(tracking.summary_metrics(record, self.spec.dataset))
        log.info("%s on %s/%s: accuracy %.2f%%", self.spec.method, dataset, subsample, record["metrics"]["accuracy"])
        return record

    # -- helpers -----------------------------------------------------------------------------

    def pending_targets(self) -> list[tuple[str, str]]:
        """Targets without a record of this job's identity, fingerprint and images (all with force or reevaluate)."""
        if self.spec.force or self.spec.reevaluate:
            return self.spec.eval_targets()
        done = fingerprints.finished(results.read_records(self.results))
        return fingerprints.pending(self.spec, done, self.fingerprint)

    def forced_run_dir(self) -> str:
        """``force``: a fresh folder beside the old one; the same folder when it is a forced run of
        these settings that was interrupted (a requeued job resumes it)."""
        held = fingerprints.read_folder(self.run_dir)
        if held and held.get("forced") and not held.get("finished") and held.get("fingerprint") == self.fingerprint:
            return self.run_dir
        return fingerprints.fresh_run_dir(self.run_dir)

    def claim_folder(self) -> None:
        """The run folder holds this settings run (or nothing yet): say so in its ``fingerprint.json``.
        A claim that never finished and left no checkpoint (a refused, crashed or killed run) holds nothing
        to protect: it passes to this run, whatever its settings."""
        held = fingerprints.read_folder(self.run_dir)
        if held is not None and not held.get("finished") and not checkpoint.latest_checkpoint(self.run_dir):
            held = None
        else:
            fingerprints.check_folder(self.run_dir, self.settings, self.fingerprint)
        if held is None or held.get("fingerprint") != self.fingerprint:
            fingerprints.write_folder(
                self.run_dir, self.settings, self.fingerprint, forced=self.spec.force, finished=False
            )

    def build_method(self, classnames: list[str], dataset: str, subsample: str):
        options = dict(self.spec.options)
        if "dataset" in methods.method_options(self.spec.method):
            options.setdefault("dataset", dataset)  # e.g. selects the dataset's hand-made template
        return methods.build_method(self.spec.method, self.clip, classnames, subsample=subsample, **options).to(
            self.device
        )

    def autocast(self):
        if self.spec.precision != "amp":
            return nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def last_good(self) -> str:
        last = checkpoint.latest_checkpoint(self.run_dir)
        return f"The last good checkpoint is {last[0]}." if last else "No epoch finished (no checkpoint)."


@contextmanager
def run_folder_lock(run_dir: str, job: str):
    """One process per run folder: a second run of the same job (an orphaned job still running when a
    sweep is re-run) would train and record the same results twice. A POSIX record lock belongs to its
    process alone (data-loader workers forked from it do not hold it) and dies with it, so a killed or
    pre-empted job never leaves it behind."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, ".run.lock")
    with open(path, "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunFailedError(
                f"{run_dir} is in use by another run of {job} ({holder}). Wait for it to end, or stop it "
                "(an orphaned job of an earlier sweep?), then run again."
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.lockf(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Pieces (public: the tests and the benchmark use them)
# ---------------------------------------------------------------------------------------------


def optimizer_groups(param_groups, spec: RunSpec) -> list[dict]:
    """The method's parameter groups with their learning rates resolved: a group's ``lr_scale`` multiplies
    the run's lr (so ``--set lr=...`` scales every group, as the authors' configs do), an absolute ``lr``
    is kept, a group with neither trains at the run's lr."""
    groups = []
    for group in param_groups:
        group = dict(group) if isinstance(group, dict) else {"params": group}
        if "lr_scale" in group:
            if "lr" in group:
                raise ValueError("A parameter group gives both 'lr' and 'lr_scale'; give one of them.")
            group["lr"] = spec.lr * group.pop("lr_scale")
        groups.append(group)
        _check_rate_fits(group, spec)
    return groups


def _check_rate_fits(group: dict, spec: RunSpec) -> None:
    """torch's optimisers turn a rate into the learned tensors' dtype and crash where it does not fit (fp16
    holds up to 65504): a ``ConfigError`` before the first step instead."""
    for key, rate in (("lr", group.get("lr", spec.lr)), ("warmup_lr", spec.warmup_lr if spec.warmup_epochs else 0)):
        for dtype in {p.dtype for p in group["params"] if p.is_floating_point()}:
            largest = torch.finfo(dtype).max
            if rate > largest:
                raise ConfigError(
                    f"Run key {key!r} gives a parameter group the rate {rate:g}, more than the {dtype} of its "
                    f"learned tensors holds ({largest:g}): give a smaller {key}, or precision fp32 or amp."
                )


def build_optimizer(param_groups, spec: RunSpec) -> torch.optim.Optimizer:
    """``spec.optimizer`` over the method's parameter groups (``optimizer_groups``); Adam and AdamW as Dassl
    builds them (betas 0.9, 0.999, ``weight_decay``: Adam's L2 term in the gradient, AdamW's decoupled
    decay) with ``adam_eps``."""
    groups = optimizer_groups(param_groups, spec)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    adam = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec.optimizer]
    return adam(groups, lr=spec.lr, betas=(0.9, 0.999), eps=spec.adam_eps, weight_decay=spec.weight_decay)


class ConstantWarmup(torch.optim.lr_scheduler.ConstantLR):
    """Every parameter group at ``warmup_lr`` during the warm-up epochs, whatever its own rate, as Dassl's
    ConstantWarmupScheduler sets them (``[cons_lr for _ in base_lrs]``); the cosine that follows starts
    each group from its own rate. (A ConstantLR, so resume states written before groups had their own
    rates load unchanged; for one group at the run's lr the values are the same.)"""

    def __init__(self, optimizer, warmup_lr: float, total_iters: int, factor: float):
        self.warmup_lr = warmup_lr
        super().__init__(optimizer, factor=factor, total_iters=total_iters)

    def get_lr(self):
        if self.last_epoch < self.total_iters:
            return [self.warmup_lr for _ in self.optimizer.param_groups]
        return [group["initial_lr"] for group in self.optimizer.param_groups]


def build_scheduler(optimizer, spec: RunSpec):
    """Constant warm-up at ``warmup_lr`` for ``warmup_epochs`` (every group), then cosine over ``epochs``
    with the counter restarted after warm-up (PROTOCOL.md 10), from each group's own rate b:
    lr(e) = b * (1 + cos(pi (e - 2) / E)) / 2 for e >= 2 with one warm-up epoch. Stepped once per epoch."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, spec.epochs))
    if spec.warmup_epochs <= 0:
        return cosine
    warmup = ConstantWarmup(
        optimizer, spec.warmup_lr, total_iters=spec.warmup_epochs, factor=min(1.0, spec.warmup_lr / spec.lr)
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


def non_finite_tensors(model) -> list[str]:
    """Names of the learned parameters and of the tensors in the method's ``training_state()`` (e.g. the
    running aggregate of PromptSRC) that hold a NaN or an infinity."""
    bad = [f"parameter {n}" for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]

    def walk(value, name):
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not torch.isfinite(value).all():
                bad.append(f"training state {name}")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}[{i}]")

    walk(model.training_state(), "")
    return bad


def loss_cause(details: dict, spec: RunSpec) -> str:
    """What a non-finite loss says about its cause: the loss terms that are not finite, and the advice
    that fits them (a weighted term gone bad beside a finite cross-entropy points at its weight, not at
    the learning rate)."""
    terms = {k: float(v) for k, v in details.items() if k != "logits" and torch.as_tensor(v).numel() == 1}
    bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
    if not terms:
        return non_finite_advice(spec.precision)
    if not bad:
        return (
            f"Every loss term is finite ({', '.join(f'{k} {v:.4g}' for k, v in terms.items())}), so their sum "
            f"overflowed: lower the method's loss weights in options ({fingerprints.show(spec.options)}) or the "
            "learning rate (lr)."
        )
    named = ", ".join(f"{k} {v}" for k, v in bad.items())
    if "ce" in terms and math.isfinite(terms["ce"]):
        return (
            f"Not finite: {named}, while the cross-entropy is finite ({terms['ce']:.4g}): the weight of "
            f"{'that term' if len(bad) == 1 else 'those terms'} in the method's options "
            f"({fingerprints.show(spec.options)}) is the likely cause, not the learning rate."
        )
    return f"Not finite: {named}. {non_finite_advice(spec.precision)}"


def non_finite_advice(precision: str) -> str:
    if precision == "fp32":
        return "Try a lower learning rate (lr)."
    if precision == "amp":
        return "Try a lower learning rate (lr), or precision fp32."
    return f"With precision {precision!r}, try precision fp32 or amp, or a lower learning rate (lr)."


def seed_everything(seed: int | None) -> None:
    """PROTOCOL.md 1: python, numpy and torch (all devices); None or negative seeds nothing."""
    if seed is None or seed < 0:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def resolve_device(device: str) -> torch.device:
    """The torch device of run key ``device``; a GPU this machine does not have is a ``ConfigError``
    (raised before the run folder is written)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index or 0) >= count:
            seen = f"{count} GPU(s), cuda:0..cuda:{count - 1}" if count else "no CUDA GPU"
            raise ConfigError(f"Run key 'device' is {device!r}, but torch sees {seen} here. Use device=auto or cpu.")
    return resolved


def clip_precision(run_precision: str) -> str:
    """The backbone's precision for a run mode: amp trains an fp32 CLIP under autocast."""
    return {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "amp": "fp32"}[run_precision]
