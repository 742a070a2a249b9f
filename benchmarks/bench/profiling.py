"""Where the fast path's time goes: forward and backward wall time, the prefix pass against the class-suffix
chunks, and the self time of operator categories (torch.profiler)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from benchmarks.bench.probes import class_names, synchronize
from benchmarks.cocoop_check import train_step


def profile_fast_path(bench, k: int, batch: int, eval_images: int) -> list[str]:
    """One line per case (a training step, an evaluation) of ``bench``'s model and features: forward /
    backward wall time, the forward's split between the prefix pass and the class-suffix chunks, and
    operator categories (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    names = class_names(k)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    lines = []
    for title, labels, feats in (
        (
            f"training step, batch {batch}, K = {k}",
            torch.arange(batch, device=bench.device) % k,
            bench.features[:batch],
        ),
        (f"evaluation of {eval_images} images, K = {k}", None, bench.features[:eval_images]),
    ):
        model = bench.cocoop(names)
        with bench.autocast():
            train_step(model, feats, labels)  # warm-up
            with profile(activities=activities) as prof:
                forward_s, backward_s = _timed_step(model, feats, labels, bench.device)
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
        lines.append(f"* {title}: {split}. Operators: " + summarise_profile(prof, bench.device))
    return lines


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
