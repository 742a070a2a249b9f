"""The report's text (``render``, its table ``table``) and the README's block read back from a report
(``python -m benchmarks.readme vs-authors`` writes it)."""

from __future__ import annotations

import datetime
import os

from benchmarks.vs_authors.compare import Line, Settings

REPORT = "reports/bench-vs-authors.md"
README_BLOCK = "vs-authors:table"


def _ratio(pair) -> str:
    return f"{pair[0] / pair[1]:.1f}×" if pair else "—"


def _secs(pair, i) -> str:
    return f"{pair[i]:.3g}" if pair else "—"


def table(lines: list[Line]) -> str:
    rows = [
        "| method | authors' code @ commit | train step, authors (s) | ours (s) | speed-up | floor (s) | "
        "eval, authors (s) | ours (s) | speed-up | floor (s) | same logits (max rel. error) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for line in lines:
        commit = line.commit[:7] if line.commit else "unknown"
        error = " ".join(line.error.split())  # one table cell: one line
        same = error[:300] + " …" if len(error) > 300 else error
        same = same or (f"yes ({max(line.check.values()):.1e})" if line.check else "—")
        rows.append(
            f"| {line.method} | {line.repository} @ {commit} | {_secs(line.train, 0)} | {_secs(line.train, 1)} | "
            f"{_ratio(line.train)} | {_secs(line.floor, 0)} | {_secs(line.evaluation, 0)} | "
            f"{_secs(line.evaluation, 1)} | {_ratio(line.evaluation)} | {_secs(line.floor, 1)} | {same} |"
        )
    return "\n".join(rows)


def load_description() -> str:
    try:
        with open("/proc/loadavg") as f:
            one, five, fifteen = f.read().split()[:3]
        return f"load average {one} / {five} / {fifteen} (1 / 5 / 15 min) on {os.cpu_count()} logical CPUs"
    except OSError:
        return "load unknown"


def render(
    lines: list[Line],
    settings: Settings,
    machine: str,
    load_before: str,
    load_after: str,
    note: str,
    flops_per_s: float = 0.0,
) -> str:
    out = [
        "# Every method against its authors' code",
        "",
        f"Made by `python -m benchmarks.vs_authors` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine}. Before: {load_before}; after: {load_after}." + (f" {note}" if note else ""),
        "",
        f"Random CLIP with OpenAI's ViT-B/16 dimensions (weights rounded through fp16, as the authors' loader "
        f"holds them), fp32 on the CPU, K = {settings.k} ImageNet class names. Train step: batch {settings.batch}, "
        f"forward + the published objective + backward (the authors' `forward_backward`, learning rate 0). "
        f"Eval: {settings.eval_images} images, including the image encoder. Median of up to {settings.runs} runs "
        f"after a warm-up (runs per cell below). Speed-up: the authors' time over ours. Both sides first gave "
        f"the same eval logits and training loss, and the same update where the checks name one (relative error < "
        f"{settings.tolerance:g}), or the line says why not. "
        f"Floor: the FLOPs no exact method avoids (the text positions up to each EOT, the image encoder's forward; "
        f"`benchmarks/bench/floors.py`) at this machine's measured fp32 matmul rate ({flops_per_s / 1e9:.0f} "
        f"GFLOP/s, the fastest of a probe before each method), where the method has one.",
        "",
        table(lines),
        "",
    ]
    for line in lines:
        details = []
        if line.warning:
            details.append(f"WARNING: {line.warning}")
        if line.runs:
            details.append("runs (authors, ours): " + ", ".join(f"{k} {a}, {b}" for k, (a, b) in line.runs.items()))
        if line.check:
            details.append("checks: " + ", ".join(f"{k} {v:.1e}" for k, v in line.check.items()))
        if line.note:
            details.append(line.note)
        if line.floor_flops:
            details.append(
                "floor: "
                + "; ".join(
                    f"{case} " + " + ".join(f"{part} {flops / 1e9:.0f}" for part, flops in parts.items()) + " GFLOP"
                    for case, parts in line.floor_flops.items()
                )
            )
        if line.commit:
            details.append(f"commit {line.commit}" + (f" (docs/: {line.documented})" if line.documented else ""))
        out.append(f"* {line.method}: " + "; ".join(details) + ".")
    return "\n".join(out) + "\n"


def readme_block(report: str = REPORT) -> str:
    """README.md's block: the table (and the line naming machine and load) of ``report``."""
    with open(report, encoding="utf-8") as f:
        text = f.read()
    machine = next(line for line in text.splitlines() if line.startswith("Machine:"))
    body = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    return f"{body}\n\n{machine} (`{report}`)\n"
