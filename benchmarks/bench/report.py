"""The report's text: the main table, the successors' table, the load note, and the README's rows read back
from a report (``python -m benchmarks.readme bench`` writes them)."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import torch

import methods

if TYPE_CHECKING:  # the rows are made by the cases, which format their notes with the helpers here
    from benchmarks.bench.cases import Row, SuccessorRow


def runs_note(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def calls_note(n: int) -> str:
    return f"{n} encoder call{'s' if n != 1 else ''}"


def secs(value: float | None) -> str:
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
        timings = [secs(r.baseline_s), secs(r.fast_s), speedup, secs(r.floor_s), ratio]
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
            f"| {r.method} | {r.trainable:,} | {r.k} | {secs(r.train_s)} (B = {r.batch}) | "
            f"{secs(r.train_floor_flops / flops if r.train_floor_flops else None)} | {mem} | "
            f"{secs(r.eval_s)} ({r.eval_images}) | "
            f"{secs(r.eval_floor_flops / flops if r.eval_floor_flops else None)} | {r.note} |"
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
