"""What a job costs, measured by the runner itself while it runs (not by a separate benchmark).

Every record carries a ``cost`` block (``harness.results``), outside the settings fingerprint: the
same settings measured on another machine are the same result at another cost.

    train_s             wall time of the training epochs (evaluation and checkpoint writes excluded);
                        a resumed job sums the epochs of each of its starts; ``reevaluate`` repeats
                        the training time its checkpoint kept. None: the job trained nothing
                        (zero-shot, ``load_from``) or its checkpoint was written before times were kept
    epoch_s             median time of one epoch (None without epochs: a fitted linear probe)
    train_starts        how many starts of the job trained (2 or more: it was resumed)
    resumed             train_starts > 1
    eval_s              wall time of this evaluation (image features and scoring)
    eval_images_per_s   test images / eval_s
    eval_features_cached  the image features came from the feature cache (the image tower did not
                        run, so the throughput is the scoring's alone)
    peak_mem_mb         CUDA: the device's peak allocated memory during the job; CPU: the process's
                        peak resident memory since the job began (Linux resets the high-water mark;
                        elsewhere it is the process's lifetime peak: ``peak_mem_kind`` says which)
    peak_mem_kind       "cuda_max_allocated" | "cpu_max_rss" (since the job began) |
                        "cpu_max_rss_process" (since the process began: the jobs it ran before count)
    gflops_per_image    inference GFLOPs for one image at the evaluated class count (image tower plus
                        the class-text side that scores it), counted once with torch's
                        ``FlopCounterMode`` and cached per method, options, backbone, class count and
                        the code that computes it (``code_digest``)
    device              the GPU's name, or the CPU's model name
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import platform
import resource
import statistics
import sys

import torch

from clipcore.atomic import atomic_write_text

log = logging.getLogger(__name__)

FLOPS_FOLDER = "flops"  # in the user's cache folder (clipcore.paths): a property of the model, not of a run


def training(epoch_seconds: list[float] | None, starts: int) -> dict:
    """The training half of a cost block from the time of each epoch trained (over all starts)."""
    known = epoch_seconds is not None
    return {
        "train_s": round(sum(epoch_seconds), 3) if known else None,
        "epoch_s": round(statistics.median(epoch_seconds), 3) if known and epoch_seconds else None,
        "train_starts": starts,
        "resumed": starts > 1,
    }


def fitted(seconds: float | None) -> dict:
    """The training half for a method fitted on frozen features in one go (no epochs)."""
    return {
        "train_s": None if seconds is None else round(seconds, 3),
        "epoch_s": None,
        "train_starts": 1,
        "resumed": False,
    }


NOT_TRAINED = {"train_s": None, "epoch_s": None, "train_starts": 0, "resumed": False}


# Linux keeps a process's resident high-water mark in /proc/self/status (VmHWM) and resets it when "5" is
# written to /proc/self/clear_refs: without the reset, a job run after others in one process (the debug
# executor, a notebook) would report the largest of them all.
_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"
_cpu_peak_reset = False  # did the last reset_peak_memory on the CPU take effect?


def reset_peak_memory(device: torch.device) -> None:
    global _cpu_peak_reset
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        _cpu_peak_reset = _resident_high_water_kib() is not None
    except OSError:
        _cpu_peak_reset = False  # not Linux, or not allowed: peak_memory reads the lifetime peak and says so


def _resident_high_water_kib() -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "peak_mem_kind": "cuda_max_allocated",
        }
    if _cpu_peak_reset and (kib := _resident_high_water_kib()) is not None:
        return {"peak_mem_mb": round(kib / 2**10, 1), "peak_mem_kind": "cpu_max_rss"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return {"peak_mem_mb": round(mb, 1), "peak_mem_kind": "cpu_max_rss_process"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def count_gflops(model, image_size: int, device: torch.device) -> float:
    """GFLOPs of scoring one image (``encode_image`` then ``logits_from_features``, as evaluation does)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.zeros(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.logits_from_features(model.encode_image(image))
    return counter.get_total_flops() / 1e9


def code_digest(model) -> str:
    """What identifies the code ``count_gflops`` runs: the sources of the model's class and its bases (a
    plugin's file included), of the ``methods`` and ``clipcore`` packages (the shared parts and the CLIP
    towers they call) and of this counter, and the torch and open_clip versions. By content, not path: two
    checkouts of the same code share their counts. Hashing them all on each call costs milliseconds, less
    than one counted forward; an edit anywhere in them recounts every method once."""
    import open_clip

    import clipcore
    import methods

    files = {os.path.realpath(__file__)}
    for cls in type(model).__mro__:
        source = getattr(sys.modules.get(cls.__module__), "__file__", None)
        if source and source.endswith(".py"):
            files.add(os.path.realpath(source))
    for package in (methods, clipcore):
        folder = os.path.dirname(package.__file__)
        files.update(os.path.realpath(p) for p in glob.glob(os.path.join(folder, "**", "*.py"), recursive=True))
    contents = []
    for path in files:
        with open(path, "rb") as f:
            contents.append(hashlib.sha256(f.read()).hexdigest())
    versions = f"torch {torch.__version__}, open_clip {getattr(open_clip, '__version__', '?')}"
    return hashlib.sha256("\n".join([versions, *sorted(contents)]).encode()).hexdigest()[:16]


def gflops_per_image(model, image_size: int, device: torch.device, folder: str, key: dict) -> float:
    """``count_gflops``, read from ``folder/flops/`` when this ``key`` (method, options, backbone,
    class count, ...) was counted before with the same code (``code_digest``, added to the key here, where
    every count passes): the count is a property of the model and its code, not of the run."""
    key = {**key, "code": code_digest(model)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = os.path.join(folder, FLOPS_FOLDER, f"{key.get('method', 'model')}-{digest}.json")
    try:
        with open(path) as f:
            return float(json.load(f)["gflops_per_image"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = count_gflops(model, image_size, device)
    atomic_write_text(path, json.dumps({"gflops_per_image": value, "key": key}, sort_keys=True, default=str))
    log.info("Counted %.3f GFLOPs per image for %s (cached in %s)", value, key.get("method"), path)
    return value
