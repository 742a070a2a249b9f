"""The timed cases: CoCoOp's published per-image path against the fast exact path (training and evaluation),
CoOp and zero-shot CLIP, and one memory/speed line per successor method; each case returns its row."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import methods
from benchmarks.bench.floors import cocoop_floor_flops, image_encoder_flops
from benchmarks.bench.probes import (
    GB,
    available_memory,
    build_vitb16_clip,
    class_names,
    matmul_throughput,
    synchronize,
)
from benchmarks.bench.report import calls_note, runs_note, secs
from benchmarks.cocoop_check import FP32_TOLERANCE, compare, train_step
from clipcore import backbone
from harness.config import default_method_options
from methods.parts import prompt_encoder


@dataclass
class Row:
    case: str
    k: int
    images: int
    baseline_s: float | None = None
    fast_s: float | None = None
    floor_flops: float | None = None
    floor_s: float | None = None  # floor_flops / measured matmul throughput
    baseline_note: str = ""
    fast_note: str = ""
    error: float | None = None  # relative error of the compared outputs
    extra: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        if self.baseline_s is None or self.fast_s is None:
            return None
        return self.baseline_s / self.fast_s


def measure(fn: Callable[[], object], device: torch.device, repeats: int = 3, budget_s: float = 20.0):
    """(median seconds, runs, last output). The first call is a warm-up; when it alone took more than
    half of ``budget_s`` it is the (single) measurement, otherwise up to ``repeats`` further calls are
    timed while the time spent stays within ``budget_s``."""

    def timed():
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        return time.perf_counter() - start, out

    first, out = timed()
    if 2 * first > budget_s:
        return first, 1, out
    times, spent = [], 0.0
    while len(times) < repeats and (not times or spent + times[-1] <= budget_s):
        t, out = timed()
        times.append(t)
        spent += t
    return statistics.median(times), len(times), out


@dataclass
class Settings:
    ks: tuple[int, ...]
    eval_images: int = 32
    train_batches: tuple[int, ...] = (1, 8)
    budget_s: float = 20.0  # timing budget per measurement (beyond the warm-up)
    max_baseline_s: float = 40.0  # longest single published-path run we wait for; else fewer images
    quick: bool = False


class Bench:
    def __init__(self, settings: Settings, device: torch.device, log=print):
        self.s, self.device, self.log = settings, device, log
        self.autocast = (
            (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16))
            if device.type == "cuda"
            else contextlib.nullcontext
        )
        self.tolerance = FP32_TOLERANCE if device.type != "cuda" else 5e-2  # bf16 timings: loose sanity check only
        self.clip = build_vitb16_clip(device)
        self.flops = matmul_throughput(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
        generator = torch.Generator().manual_seed(0)
        self.features = torch.randn(
            max(settings.eval_images, max(settings.train_batches)), 512, generator=generator
        ).to(device)
        self.images = torch.randn(settings.eval_images, 3, 224, 224, generator=generator).to(device)
        self.rows: list[Row] = []
        self._single_train_s: dict[int, float] = {}  # published training step at batch 1, per K

    def _run(self, fn, **kw):
        with self.autocast():
            return measure(fn, self.device, **kw)

    def cocoop(self, names, **options):
        """A CoCoOp on this bench's CLIP, seeded alike wherever it is built (cases, profile)."""
        torch.manual_seed(0)
        return methods.build_method("cocoop", self.clip, names, **options)

    # -- CoCoOp -------------------------------------------------------------------------------------

    def cocoop_train(self, k: int, batch: int) -> Row:
        names = class_names(k)
        row = Row(f"CoCoOp train step, batch {batch}", k, batch)
        features = self.features[:batch]
        labels = torch.arange(batch, device=self.device) % k
        row.floor_flops = cocoop_floor_flops(self.clip, names, batch, training=True)
        fast = self.cocoop(names)
        row.fast_s, runs, fast_out = self._run(lambda: train_step(fast, features, labels), budget_s=self.s.budget_s)
        plan = fast.last_plan
        row.fast_note = f"{runs_note(runs)}; {calls_note(plan.chunks)}{', checkpointed' if plan.checkpointed else ''}"
        need = prompt_encoder.estimate_step_memory(self.clip, batch, k, 77, training=True, prefix_cache=False)
        if need > 0.6 * available_memory(self.device):
            graphs = f"all {batch} graphs" if batch > 1 else "its graph"
            row.baseline_note = (
                f"does not fit: needs ~{need / GB:.0f} GB ({graphs} of {k} x 77 positions kept for backward)"
            )
            self.log(f"  published path skipped: {row.baseline_note}")
            return row
        single = self._single_train_s.get(k)  # the published path is B independent passes: ~B x batch 1
        if single is not None and batch * single > self.s.max_baseline_s:
            row.baseline_note = f"skipped: would take ~{batch * single:.0f} s per step (~{batch} x batch 1)"
            return row
        reference = self.cocoop(names, batched=False)
        reference.prompt_learner.load_state_dict(fast.prompt_learner.state_dict())
        row.baseline_s, runs, ref_out = self._run(
            lambda: train_step(reference, features, labels), budget_s=self.s.budget_s
        )
        row.baseline_note = runs_note(runs)
        if batch == 1:
            self._single_train_s[k] = row.baseline_s
        row.error = max(
            compare(f"{row.case} K={k} logits", fast_out[0], ref_out[0], self.tolerance),
            *(compare(f"{row.case} K={k} gradient", g, r, self.tolerance) for g, r in zip(fast_out[2], ref_out[2])),
        )
        return row

    def cocoop_eval(self, k: int) -> Row:
        names = class_names(k)
        n = self.s.eval_images
        row = Row(f"CoCoOp eval, {n} images from cached features", k, n)
        features = self.features[:n]
        row.floor_flops = cocoop_floor_flops(self.clip, names, n)
        fast = self.cocoop(names)
        row.fast_s, runs, fast_out = self._run(lambda: train_step(fast, features, None), budget_s=self.s.budget_s)
        row.fast_note = f"{runs_note(runs)}; {calls_note(fast.last_plan.chunks)}"
        # The published path is a loop over images: time a few and scale when all would take too long.
        reference = self.cocoop(names, batched=False)
        reference.prompt_learner.load_state_dict(fast.prompt_learner.state_dict())
        probe_s, _, ref_out = self._run(lambda: train_step(reference, features[:1], None), repeats=0, budget_s=0.0)
        measured = n if probe_s * n <= self.s.max_baseline_s else max(1, int(self.s.max_baseline_s // probe_s))
        if measured == 1:
            row.baseline_s, runs = probe_s * n, 1
        else:
            t, runs, ref_out = self._run(
                lambda: train_step(reference, features[:measured], None), budget_s=self.s.budget_s
            )
            row.baseline_s = t * n / measured
        row.baseline_note = runs_note(runs) + (
            f" of {measured} image{'s' if measured > 1 else ''}, x{n / measured:.1f} (per-image loop)"
            if measured < n
            else ""
        )
        row.error = compare(f"{row.case} K={k} logits", fast_out[: ref_out.shape[0]], ref_out, self.tolerance)
        return row

    # -- CoOp and zero-shot ---------------------------------------------------------------------------

    def coop_eval(self, k: int, with_image_encoder: bool) -> Row:
        names = class_names(k)
        n = self.s.eval_images
        where = "incl. image encoder" if with_image_encoder else "from cached features"
        row = Row(f"CoOp eval, {n} images {where}", k, n)
        torch.manual_seed(0)
        models = {t: methods.build_method("coop", self.clip, names, truncate=t).eval() for t in (False, True)}
        models[True].prompt_learner.load_state_dict(models[False].prompt_learner.state_dict())
        features = self.features[:n]

        def run(model):
            with torch.no_grad():
                return model(self.images) if with_image_encoder else model.logits_from_features(features)

        row.baseline_s, runs_b, ref = self._run(lambda: run(models[False]), budget_s=self.s.budget_s)
        row.fast_s, runs_f, out = self._run(lambda: run(models[True]), budget_s=self.s.budget_s)
        row.baseline_note, row.fast_note = (
            f"{runs_note(runs_b)}, 77 positions",
            f"{runs_note(runs_f)}, exact fast encoder (per-class EOT cut, context once)",
        )
        # One context for all images: the unavoidable text work is CoCoOp's for a single "image".
        row.floor_flops = cocoop_floor_flops(self.clip, names, 1) + (
            image_encoder_flops(self.clip, n) if with_image_encoder else 0
        )
        row.error = compare(f"{row.case} K={k}", out, ref, self.tolerance)
        return row

    def zeroshot_eval(self, k: int) -> Row:
        names = class_names(k)
        n = self.s.eval_images
        row = Row(f"Zero-shot eval, {n} images: image encoder vs feature cache", k, n)
        model = methods.build_method("zsclip", self.clip, names).eval()
        features = backbone.encode_image(self.clip, self.images)

        def with_encoder():
            with torch.no_grad():
                return model(self.images)

        def cached():
            with torch.no_grad():
                return model.logits_from_features(features)

        row.baseline_s, runs_b, ref = self._run(with_encoder, budget_s=self.s.budget_s)
        row.fast_s, runs_f, out = self._run(cached, budget_s=self.s.budget_s)
        row.baseline_note, row.fast_note = (
            f"{runs_note(runs_b)}, incl. image encoder",
            f"{runs_note(runs_f)}, cached features",
        )
        row.floor_flops = 2 * n * k * backbone.embed_dim(self.clip)
        row.error = compare(f"{row.case} K={k}", out, ref, self.tolerance)
        return row

    # -- the successors (every trainable method besides CoOp and CoCoOp) -------------------------------

    def successor(self, method: str, k: int, batch: int, eval_images: int) -> SuccessorRow:
        """A training step of ``batch`` images (the method's published objective) and an evaluation of
        ``eval_images`` images including the image encoder, on the published options at ViT-B/16 shapes."""
        names = class_names(k)
        torch.manual_seed(0)
        model = methods.build_method(method, self.clip, names, **SUCCESSORS[method])
        row = SuccessorRow(method, k, batch, eval_images, model.num_trainable_parameters())
        images, labels = self.images[:batch], torch.arange(batch, device=self.device) % k
        if hasattr(type(model), "teacher_text"):  # computed once per class set at the first step: timed apart
            synchronize(self.device)
            start = time.perf_counter()
            model.teacher_text  # noqa: B018
            synchronize(self.device)
            row.teacher_s = time.perf_counter() - start
        row.train_s, runs, _ = self._run(lambda: successor_step(model, images, labels), budget_s=self.s.budget_s)
        row.train_bytes = self._step_memory(lambda: successor_step(model, images, labels))
        row.eval_s, runs_e, _ = self._run(
            lambda: successor_step(model, self.images[:eval_images], None), budget_s=self.s.budget_s
        )
        row.note = f"train {runs_note(runs)}, eval {runs_note(runs_e)}" + (
            f"; frozen text teacher once per class set {secs(row.teacher_s)} s" if row.teacher_s is not None else ""
        )
        # Floors: the text tower over every class's positions up to its EOT (x2 with a backward), the image
        # encoder (x2 in training when prompted: input gradients; a frozen image teacher adds its un-prompted pass).
        prompted = not model.features_cacheable
        text = cocoop_floor_flops(self.clip, names, 1)
        image = image_encoder_flops(self.clip, batch)
        row.train_floor_flops = 2 * text + image * (2 if prompted else 1) + (image if model.frozen_image_teacher else 0)
        row.eval_floor_flops = text + image_encoder_flops(self.clip, eval_images)
        return row

    def _step_memory(self, step) -> int:
        """Bytes a training step needs beyond the model: on CUDA the peak allocation, on a CPU the tensors
        autograd keeps for backward (distinct storages, frozen weights excluded)."""
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            with self.autocast():
                step()
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - start
        weights = {p.untyped_storage().data_ptr() for p in self.clip.parameters()}
        kept: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                kept[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
        return sum(kept.values())


# The successors: every trainable method besides CoOp and CoCoOp (which have rows of their own), with their
# published options (the depths are those of ViT-B/16's 12 blocks), all at batch 4 here (published: KgCoOp
# 128, MaPLe and PromptSRC 4).
SUCCESSORS = {
    m: default_method_options(m)
    for m in methods.list_methods()
    # a method that fits on frozen features (the linear probe) has no training step to time
    if methods.method_class(m).trainable and not methods.method_class(m).fits_features and m not in ("coop", "cocoop")
}


@dataclass
class SuccessorRow:
    method: str
    k: int
    batch: int
    eval_images: int
    trainable: int
    train_s: float | None = None
    eval_s: float | None = None
    train_bytes: int | None = None
    train_floor_flops: float | None = None
    eval_floor_flops: float | None = None
    teacher_s: float | None = None
    note: str = ""


def successor_step(model, images: torch.Tensor, labels: torch.Tensor | None):
    """Logits of ``images`` (eval, no_grad), or one training step: the method's objective and its backward."""
    if labels is None:
        model.eval()
        with torch.no_grad():
            return model(images)
    model.train()
    for p in model.trainable_parameters():
        p.grad = None
    if callable(getattr(model, "backward", None)):  # its published update is not one loss's gradient (ProGrad)
        return model.backward(images, labels).detach()
    loss = model.training_loss(images, labels)
    loss.backward()
    return loss.detach()
