"""What the benchmarks know of the machine and the model they time: a ViT-B/16-shaped CLIP, K ImageNet class
names, the CPU (or GPU) and its memory, torch's threads, and the matmul rate the FLOP floors are divided by."""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

import methods
from clipcore import backbone

GB = 1024**3


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
