"""Benchmark: CoCoOp's published per-image path against the fast exact path.

    python -m benchmarks.bench [--quick] [--out reports/bench.md]

It writes its report (``--out``); ``python -m benchmarks.readme bench [--from REPORT]`` copies the report's
main rows into README.md.

On one random CLIP with OpenAI's ViT-B/16 dimensions (open_clip ``CLIP``, QuickGELU, fp32, no
download) it times, in one process:

* a CoCoOp training step (forward + backward) at batch 1 and 8, and CoCoOp evaluation of 32 images
  from precomputed image features, at K = 10, 100 and 1000 classes (ImageNet class names, whose
  lengths vary from 1 to 12 tokens): ``batched=False`` (one text-encoder call per image over all 77
  positions, as published) against the default path (``methods.parts.prompt_encoder``);
* CoOp and zero-shot CLIP evaluation of 32 images including and excluding the image encoder
  (feature cache), CoOp with all 77 positions against truncation;
* one memory/speed line per successor method (every trainable method besides CoOp and CoCoOp,
  ``SUCCESSORS``, with the options of its default config): a training
  step (batch 4, the published update, forward + backward) and an evaluation of the images
  including the image encoder (MaPLe and PromptSRC prompt it, so no feature cache applies), at K = 100,
  with the memory a training step keeps for backward.

Before timing it checks that both paths give the same logits (and loss and gradients), relative
error < 1e-4 in fp32, and it compares the outputs of every timed pair again: a mismatch aborts.
Each time is the median of up to three runs after a warm-up. Next to each fast time is its floor:
the FLOPs the fast path cannot avoid (the text transformer over the positions no exact method can
skip: every class's name tokens up to its EOT, per image, plus each image's SOS + context once;
x2 for a training step, whose backward needs input gradients only) divided by the matmul
throughput measured on this machine. Cases the published path cannot run here (memory) or that
would take too long are estimated from smaller runs or skipped, and the table says which.
A profile of the fast path (torch.profiler, operator categories) follows the table.

On a CUDA device the timings run under bf16 autocast (the correctness check stays fp32) and the
table also reports images per second. Not a test: it takes ~10 minutes on 2 CPU cores (``--quick``:
~3 minutes, K = 10 and 100 only).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import methods
from benchmarks.cocoop_check import FP32_TOLERANCE, check_fast_path, compare, train_step
from clipcore import backbone
from harness.config import default_method_options
from methods.parts import prompt_encoder

GB = 1024**3


# ---------------------------------------------------------------------------------------------------
# Model, class names, machine
# ---------------------------------------------------------------------------------------------------


def build_vitb16_clip(device: str | torch.device = "cpu", seed: int = 0):
    """A randomly initialised fp32 CLIP with OpenAI's ViT-B/16 dimensions and QuickGELU (no download)."""
    return backbone.freeze(backbone.build_random_clip("vit_b16", seed=seed).to(device))


def class_names(k: int) -> list[str]:
    """K ImageNet class names spread over the list (1 to 12 BPE tokens each, as real datasets vary)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES)
    if k > len(names):
        raise ValueError(f"At most {len(names)} class names.")
    return [names[i] for i in np.linspace(0, len(names) - 1, k).round().astype(int)]


def machine_description(device: torch.device, threads: str = "") -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = threads or torch.get_num_threads()
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, threads: {threads}"
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]
    except (OSError, KeyError):
        return 8 * GB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_threads(requested: str, log=print) -> tuple[int, str]:
    """Set torch's CPU threads: a number, or "auto": the faster of 1 and the default on a short probe
    (a fast CoCoOp evaluation, many mid-sized ops). With other processes on the same cores, OpenMP
    threads that wait for each other can make 2 threads several times slower than 1."""
    default = torch.get_num_threads()
    if requested != "auto":
        torch.set_num_threads(int(requested))
        return int(requested), f"{requested} (set on the command line)"
    if default == 1:
        return 1, "1 (the default)"
    clip = build_tiny_probe()
    features = torch.randn(4, backbone.embed_dim(clip), generator=torch.Generator().manual_seed(0))
    model = methods.build_method("cocoop", clip, class_names(100)).eval()
    times = {}
    for threads in (default, 1, default):
        torch.set_num_threads(threads)
        with torch.no_grad():
            model.logits_from_features(features)
            start = time.perf_counter()
            model.logits_from_features(features)
        times[threads] = min(times.get(threads, float("inf")), time.perf_counter() - start)
    best = min(times, key=times.get)
    torch.set_num_threads(best)
    probe = ", ".join(f"{t} thread{'s' if t > 1 else ''} {1000 * v:.0f} ms" for t, v in sorted(times.items()))
    log(f"threads: {best} (probe: {probe})")
    return best, f"{best} of {default} (auto: faster on a probe, {probe})"


def build_tiny_probe():
    """A 4-layer text tower of ViT-B/16's width for the thread probe (quick to build)."""
    probe = dict(text_layers=4, vision_layers=1, vision_width=64, patch_size=32, image_size=64)
    return backbone.freeze(backbone.build_random_clip("vit_b16", **probe))


def matmul_throughput(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of this machine on a text-encoder-shaped GEMM ([4096, 512] x [512, 2048]), best of 5."""
    a = torch.randn(4096, 512, device=device, dtype=dtype)
    w = torch.randn(2048, 512, device=device, dtype=dtype)
    F.linear(a, w)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            F.linear(a, w)
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * 4096 * 512 * 2048 / best


# ---------------------------------------------------------------------------------------------------
# FLOP floors
# ---------------------------------------------------------------------------------------------------


def _layer_flops(width: int, tokens: float, key_sum: float) -> float:
    # per token: q/k/v (3 D^2), out_proj (D^2), MLP (8 D^2) multiply-adds; attention 2 * keys * D.
    return 2 * (12 * width * width * tokens + 2 * width * key_sum)


def cocoop_floor_flops(clip, classnames: list[str], batch: int, n_ctx: int = 4, training: bool = False) -> float:
    """FLOPs no exact method can avoid for CoCoOp's text side (``batch`` = 1 gives CoOp's, whose one
    context serves all images): per image, SOS + context once; per (image, class), the class's own
    positions up to its EOT (no padding), each attending causally to the positions before it; in the
    last layer only keys/values beyond the EOT rows; the projection. x2 with a backward (input
    gradients only: the weights are frozen)."""
    width, layers = backbone.text_width(clip), len(clip.transformer.resblocks)
    prefix = 1 + n_ctx
    ids = backbone.tokenize([f"{' '.join(['X'] * n_ctx)} {n}." for n in classnames])
    ends = (backbone.eot_positions(ids) + 1).double()  # e_c + 1: positions up to and incl. the EOT
    pairs = batch * len(classnames)
    tokens = batch * (prefix + (ends - prefix).sum().item())
    # position t (1-based) attends to t keys: sum over the prefix, then over each class's own positions
    keys = batch * (prefix * (prefix + 1) / 2 + ((ends * (ends + 1) - prefix * (prefix + 1)) / 2).sum().item())
    eot_keys = batch * ends.sum().item()
    flops = (layers - 1) * _layer_flops(width, tokens, keys)
    # last layer: k, v (2 D^2) for every position; q, out_proj, MLP (10 D^2) and attention for EOT rows
    flops += 2 * 2 * width * width * tokens + 2 * (10 * width * width * pairs + 2 * width * eot_keys)
    flops += 2 * pairs * width * backbone.embed_dim(clip)
    return flops * (2 if training else 1)


def image_encoder_flops(clip, images: int) -> float:
    visual = clip.visual
    width = visual.conv1.weight.shape[0]
    patches = (backbone.image_size(clip) // visual.conv1.weight.shape[-1]) ** 2
    tokens = patches + 1
    layers = len(visual.transformer.resblocks)
    per_image = layers * _layer_flops(width, tokens, tokens * tokens)
    per_image += 2 * patches * width * visual.conv1.weight[0].numel()
    return images * per_image


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------


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

    def _cocoop(self, names, **options):
        torch.manual_seed(0)
        return methods.build_method("cocoop", self.clip, names, **options)

    # -- CoCoOp -------------------------------------------------------------------------------------

    def cocoop_train(self, k: int, batch: int) -> Row:
        names = class_names(k)
        row = Row(f"CoCoOp train step, batch {batch}", k, batch)
        features = self.features[:batch]
        labels = torch.arange(batch, device=self.device) % k
        row.floor_flops = cocoop_floor_flops(self.clip, names, batch, training=True)
        fast = self._cocoop(names)
        row.fast_s, runs, fast_out = self._run(lambda: train_step(fast, features, labels), budget_s=self.s.budget_s)
        plan = fast.last_plan
        row.fast_note = f"{_runs(runs)}; {_calls(plan.chunks)}{', checkpointed' if plan.checkpointed else ''}"
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
        reference = self._cocoop(names, batched=False)
        reference.prompt_learner.load_state_dict(fast.prompt_learner.state_dict())
        row.baseline_s, runs, ref_out = self._run(
            lambda: train_step(reference, features, labels), budget_s=self.s.budget_s
        )
        row.baseline_note = _runs(runs)
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
        fast = self._cocoop(names)
        row.fast_s, runs, fast_out = self._run(lambda: train_step(fast, features, None), budget_s=self.s.budget_s)
        row.fast_note = f"{_runs(runs)}; {_calls(fast.last_plan.chunks)}"
        # The published path is a loop over images: time a few and scale when all would take too long.
        reference = self._cocoop(names, batched=False)
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
        row.baseline_note = _runs(runs) + (
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
            f"{_runs(runs_b)}, 77 positions",
            f"{_runs(runs_f)}, exact fast encoder (per-class EOT cut, context once)",
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
        row.baseline_note, row.fast_note = f"{_runs(runs_b)}, incl. image encoder", f"{_runs(runs_f)}, cached features"
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
        row.note = f"train {_runs(runs)}, eval {_runs(runs_e)}" + (
            f"; frozen text teacher once per class set {_seconds(row.teacher_s)} s" if row.teacher_s is not None else ""
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

    # -- profile --------------------------------------------------------------------------------------

    def profile(self, k: int, batch: int, eval_images: int) -> list[str]:
        """Where the fast path's time goes: forward / backward wall time, the forward's split between the
        prefix pass and the class-suffix chunks, and operator categories (torch.profiler)."""
        from torch.profiler import ProfilerActivity, profile

        names = class_names(k)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        lines = []
        for title, labels, feats in (
            (
                f"training step, batch {batch}, K = {k}",
                torch.arange(batch, device=self.device) % k,
                self.features[:batch],
            ),
            (f"evaluation of {eval_images} images, K = {k}", None, self.features[:eval_images]),
        ):
            model = self._cocoop(names)
            with self.autocast():
                train_step(model, feats, labels)  # warm-up
                with profile(activities=activities) as prof:
                    forward_s, backward_s = _timed_step(model, feats, labels, self.device)
            phases = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key.startswith("prompt_encoder.")}
            prefix, chunks = phases.get("prompt_encoder.prefix_cache", 0.0), phases.get("prompt_encoder.chunk", 0.0)
            plan = model.last_plan
            split = f"forward {forward_s:.2f} s" + (f" + backward {backward_s:.2f} s" if labels is not None else "")
            passes = (
                f"prefix pass {prefix:.2f} s, {plan.chunks} suffix chunks {chunks:.2f} s"
                if "prompt_encoder.prefix_cache" in phases
                else f"one packed pass of the prefix and all buckets {chunks:.2f} s"
            )
            split += (
                f" (profiled: {passes}"
                + (", recomputed in backward" if plan.checkpointed else "")
                + f"; {plan.positions} positions in buckets {plan.buckets})"
            )
            lines.append(f"* {title}: {split}. Operators: " + summarise_profile(prof, self.device))
        return lines


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


def _timed_step(model, features, labels, device) -> tuple[float, float]:
    synchronize(device)
    start = time.perf_counter()
    if labels is None:
        train_step(model, features, None)
        synchronize(device)
        return time.perf_counter() - start, 0.0
    model.train()
    for p in model.trainable_parameters():
        p.grad = None
    loss = F.cross_entropy(model.logits_from_features(features), labels)
    synchronize(device)
    middle = time.perf_counter()
    loss.backward()
    synchronize(device)
    return middle - start, time.perf_counter() - middle


CATEGORIES = (
    (
        "matmul (linear layers)",
        ("addmm", "aten::mm", "bmm", "matmul", "linear", "gemm", "mkldnn_", "cutlass", "sm90", "ampere"),
    ),
    ("attention (SDPA)", ("scaled_dot_product", "flash", "_efficient_attention", "softmax", "baddbmm")),
    ("layer norm", ("layer_norm",)),
    (
        "QuickGELU / elementwise",
        (
            "sigmoid",
            "aten::mul",
            "aten::add",
            "aten::sub",
            "aten::div",
            "threshold",
            "relu",
            "elementwise",
            "vectorized",
        ),
    ),
    (
        "copies, gathers, concat",
        (
            "aten::cat",
            "index",
            "gather",
            "copy_",
            "clone",
            "contiguous",
            "expand",
            "repeat",
            "_to_copy",
            "masked",
            "tril",
        ),
    ),
)


def summarise_profile(prof, device: torch.device) -> str:
    """Self-time shares of operator categories (leaf operators only, so nothing is counted twice)."""
    use_cuda = device.type == "cuda"
    totals: dict[str, float] = {}
    total = 0.0
    for event in prof.key_averages():
        t = event.self_device_time_total if use_cuda else event.self_cpu_time_total
        if t <= 0 or event.key.startswith("prompt_encoder."):
            continue
        total += t
        name = event.key
        category = next(
            (c for c, keys in CATEGORIES if any(s in name for s in keys)), "other (autograd, Python, allocation)"
        )
        totals[category] = totals.get(category, 0.0) + t
    parts = sorted(totals.items(), key=lambda kv: -kv[1])
    return f"{total / 1e6:.2f} s profiled; " + ", ".join(f"{c} {100 * t / total:.0f}%" for c, t in parts)


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def _calls(n: int) -> str:
    return f"{n} encoder call{'s' if n != 1 else ''}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 0.01:
        return f"{value:.1e}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def load_note(start: float, end: float) -> str:
    """What the 1-minute load average says of a run: only the start tells of other processes, since the
    benchmark's own threads raise it (toward their number) as it runs; a minute-long average also keeps
    up to about 0.5 of whatever ended just before."""
    seen = f"Load average (1 min) at start {start:.1f}, at end {end:.1f}"
    if start >= 1.0:
        return f"{seen}: other processes shared these cores, so times are noisy."
    return f"{seen} (by then mostly the benchmark's own threads): less than one core was busy at the start."


def render(
    rows: list[Row], header: list[str], profile: list[str], device: torch.device, gflops: float, wall_s: float
) -> str:
    per_second = device.type == "cuda"
    lines = header + [
        "",
        f"Matmul throughput measured for the floor: {gflops / 1e9:.0f} GFLOP/s "
        f"({'bf16' if device.type == 'cuda' else 'fp32'}, [4096, 512] x [512, 2048]). "
        f"Benchmark wall time {wall_s / 60:.1f} min.",
        "",
        "| case | K | published / straightforward (s) | fast (s) | speed-up | floor (s) | fast / floor "
        "| max rel. error | notes |" + (" fast images/s |" if per_second else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if per_second else ""),
    ]
    for r in rows:
        speedup = "—" if not r.speedup else f"{r.speedup:.1f}x" if r.speedup < 1000 else f"{r.speedup:.0f}x"
        ratio = f"{r.fast_s / r.floor_s:.1f}" if r.fast_s and r.floor_s else "—"
        error = f"{r.error:.1e}" if r.error is not None else "—"
        notes = "; ".join(
            x
            for x in (
                f"published: {r.baseline_note}" if r.baseline_note else "",
                f"fast: {r.fast_note}" if r.fast_note else "",
            )
            if x
        )
        timings = [_seconds(r.baseline_s), _seconds(r.fast_s), speedup, _seconds(r.floor_s), ratio]
        cells = [r.case, r.k, *timings, error, notes]
        line = "| " + " | ".join(str(c) for c in cells) + " |"
        if per_second:
            line += f" {r.images / r.fast_s:.1f} |" if r.fast_s else " — |"
        lines.append(line)
    lines += ["", "Where the fast path's time goes (torch.profiler, self time by operator category):", ""] + profile
    return "\n".join(lines) + "\n"


def render_successors(rows: list[SuccessorRow], flops: float, device: torch.device) -> list[str]:
    if not rows:
        return []
    memory = "peak GPU memory of a step" if device.type == "cuda" else "kept for backward"
    lines = [
        "",
        "## The successors: " + ", ".join(methods.method_info(r.method).label for r in rows),
        "",
        "Published options (ViT-B/16 depths), batch 4 for every method (published batch sizes in their configs); "
        "training step = the method's published update (its objective's backward, or its own `backward` where "
        "the update is not one gradient, as ProGrad's), forward + backward; evaluation includes the image "
        "encoder (methods that prompt it cannot read their features from the cache; the others can, and then "
        "cost what CoOp's does above). Floors as above; a prompted image tower counts twice in training "
        "(input gradients), PromptSRC's un-prompted teacher pass once more.",
        "",
        f"| method | trainable parameters | K | train step, batch (s) | floor (s) | {memory} | eval, images (s) "
        "| floor (s) | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        mem = "—" if r.train_bytes is None else f"{r.train_bytes / 1024**2:,.0f} MB"
        lines.append(
            f"| {r.method} | {r.trainable:,} | {r.k} | {_seconds(r.train_s)} (B = {r.batch}) | "
            f"{_seconds(r.train_floor_flops / flops if r.train_floor_flops else None)} | {mem} | "
            f"{_seconds(r.eval_s)} ({r.eval_images}) | "
            f"{_seconds(r.eval_floor_flops / flops if r.eval_floor_flops else None)} | {r.note} |"
        )
    return lines


# ---------------------------------------------------------------------------------------------------
# The README's table, read from the report
# ---------------------------------------------------------------------------------------------------

REPORT = os.path.join("reports", "bench.md")
README_BLOCK = "bench:table"
#: (case in the report, K, its name in the README)
README_ROWS = (
    ("CoCoOp train step, batch 1", "100", "CoCoOp training step, batch 1"),
    ("CoCoOp train step, batch 8", "100", "CoCoOp training step, batch 8"),
    ("CoCoOp eval, 32 images from cached features", "100", "CoCoOp evaluation, 32 images"),
    ("CoCoOp eval, 32 images from cached features", "1000", "CoCoOp evaluation, 32 images"),
    ("CoOp eval, 32 images from cached features", "100", "CoOp evaluation, 32 images"),
    ("CoOp eval, 32 images incl. image encoder", "100", "CoOp evaluation, 32 images, with the image encoder"),
)


def report_rows(text: str) -> list[dict[str, str]]:
    """The rows of a ``bench.md``'s main table (the one that starts ``| case | K |``), cells by column."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case | K |"))
    columns = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(columns, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def readme_block(report: str = REPORT) -> str:
    """README.md's benchmark table: the rows of ``README_ROWS`` found in ``report``, and its machine line."""
    with open(report, encoding="utf-8") as f:
        text = f.read()
    by_case = {(r["case"], r["K"]): r for r in report_rows(text)}
    out = [
        "| case | K | published (s) | fast (s) | speed-up | floor (s) | fast / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, k, name in README_ROWS:
        row = by_case.get((case, k))
        if row is None:  # a --quick report has no K = 1000
            continue
        published = row["published / straightforward (s)"]
        too_big = re.search(r"does not fit: needs (~[\d.]+ [GMT]B)", row["notes"])
        if published == "—" and too_big:
            published = f"does not fit ({too_big.group(1)})"
        speedup = row["speed-up"].replace("x", "×")
        out.append(
            f"| {name} | {k} | {published} | {row['fast (s)']} | {speedup} | {row['floor (s)']} | "
            f"{row['fast / floor']} |"
        )
    generated = next(line for line in text.splitlines() if line.startswith("Generated by"))
    machine = next(line for line in text.splitlines() if line.startswith("* Machine:"))[2:]
    rate = next(line for line in text.splitlines() if line.startswith("Matmul throughput"))
    return "\n".join(out) + f"\n\n{generated} {machine} {rate} (`{report}`)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="K = 10 and 100 only, fewer repeats (~3 minutes on 2 cores)"
    )
    parser.add_argument("--out", default="reports/bench.md", help="where to write the Markdown table")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", default="auto", help="CPU threads, or auto (the faster of 1 and the default)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":  # fp32 correctness checks without TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    settings = (
        Settings(ks=(10, 100), budget_s=6.0, max_baseline_s=12.0, quick=True)
        if args.quick
        else Settings(ks=(10, 100, 1000), budget_s=15.0, max_baseline_s=30.0)
    )
    started = time.perf_counter()
    load = os.getloadavg()
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    threads = choose_threads(args.threads, log)[1] if device.type == "cpu" else str(torch.get_num_threads())
    log(f"Building a random ViT-B/16-shaped CLIP on {device} ...")
    bench = Bench(settings, device, log)
    log(f"matmul throughput: {bench.flops / 1e9:.0f} GFLOP/s")

    log("Checking the fast path against the published per-image path (fp32) ...")
    errors = check_fast_path(bench.clip, class_names(10), batch=3)
    errors.update(
        {
            f"{k} (no prefix cache)": v
            for k, v in check_fast_path(bench.clip, class_names(10), batch=2, prefix_cache=False).items()
        }
    )
    worst = max(errors.values())
    log(f"  OK: largest relative error {worst:.2e} over {len(errors)} checks (logits, loss, gradients)")

    cases: list[tuple[str, Callable[[], Row]]] = []
    for k in settings.ks:
        for batch in settings.train_batches:
            cases.append((f"CoCoOp train K={k} B={batch}", lambda k=k, b=batch: bench.cocoop_train(k, b)))
        cases.append((f"CoCoOp eval K={k}", lambda k=k: bench.cocoop_eval(k)))
    for k in settings.ks:
        cases.append((f"CoOp eval K={k} cached", lambda k=k: bench.coop_eval(k, False)))
    # The image encoder's cost does not depend on K: these two run at K = 100 only.
    cases.append(("CoOp eval K=100 + image encoder", lambda: bench.coop_eval(100, True)))
    cases.append(("zero-shot eval K=100", lambda: bench.zeroshot_eval(100)))
    for title, case in cases:
        log(f"{title} ...")
        row = case()
        bench.rows.append(row)
        log(
            f"  published {_seconds(row.baseline_s)} s, fast {_seconds(row.fast_s)} s"
            + (f", {row.speedup:.1f}x" if row.speedup else "")
            + f", floor {_seconds(row.floor_flops / bench.flops if row.floor_flops else None)} s"
        )
    successors = []
    for method in SUCCESSORS:
        log(f"{method}: train step B=4 and eval, K=100 ...")
        row = bench.successor(method, 100, 4, 8 if settings.quick else settings.eval_images)
        successors.append(row)
        log(
            f"  train {_seconds(row.train_s)} s ({row.train_bytes / 1024**2:,.0f} MB), eval {_seconds(row.eval_s)} s, "
            f"{row.trainable:,} trainable parameters"
        )
    bench.flops = max(
        bench.flops, matmul_throughput(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    for row in bench.rows:  # floors with the best throughput seen (start or end)
        row.floor_s = row.floor_flops / bench.flops if row.floor_flops is not None else None
    log("Profiling the fast path ...")
    profile_k, profile_batch = 100, 8
    profile = bench.profile(profile_k, profile_batch, 8 if settings.quick else settings.eval_images)
    for line in profile:
        log(line)

    wall = time.perf_counter() - started
    header = [
        "# CoCoOp / CoOp / zero-shot: published vs fast path" + (" (quick)" if settings.quick else ""),
        "",
        f"Generated by `python -m benchmarks.bench{' --quick' if settings.quick else ''}` on "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='minutes')}.",
        "",
        f"* Machine: {machine_description(device, threads)}. {load_note(load[0], os.getloadavg()[0])}",
        "* Model: random CLIP with OpenAI's ViT-B/16 dimensions (text: 12 layers, width 512, 8 heads; "
        f"QuickGELU), {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; CoCoOp n_ctx = 4 "
        '("a photo of a"), default memory budget; class names from ImageNet, 1-12 tokens.',
        "* Published = `batched=False` (one text-encoder call per image over all 77 positions; CoOp "
        "`truncate=False`). Fast = the default path (exact: causal truncation, length buckets, prefix "
        "key/value cache, chunked; CoOp: the same encoder with one shared context). Times in seconds, median of "
        "up to 3 "
        "runs after a warm-up; training = forward + backward.",
        f"* Before timing: fast vs published on K = 10, batch 3 (logits, loss, every gradient), with and "
        f"without the prefix cache: largest relative error {worst:.1e} (limit {FP32_TOLERANCE:g}). Every timed "
        "pair is compared again (column max rel. error).",
        "* CoCoOp's published path loops over images, so its evaluation time is scaled from the images "
        "timed when all 32 would take too long, and a training step that cannot fit in memory (its B "
        "graphs of K x 77 positions are kept until backward; `estimate_step_memory`) is not run. CoOp incl. "
        "the image encoder and zero-shot run at K = 100 only: the image encoder does not depend on K; "
        "zero-shot's text features are built once, so its fast path is the feature cache.",
        "* Floor = FLOPs the fast path cannot avoid (text transformer over each class's own positions up "
        "to its EOT per image, plus each image's SOS + context once; x2 for training, whose backward "
        "needs input gradients only; plus the image encoder where included) / measured matmul throughput.",
    ]
    text = render(bench.rows, header, profile, device, bench.flops, wall)
    text += "\n".join(render_successors(successors, bench.flops, device)) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print("\n" + text)
    log(f"Written to {args.out} ({wall / 60:.1f} min).")
    log(f"README.md's rows from it (the benchmark writes none): python -m benchmarks.readme bench --from {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
