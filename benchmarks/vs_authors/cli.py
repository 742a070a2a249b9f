"""The command line: ``python -m benchmarks.vs_authors --authors METHOD=DIR ... [--out REPORT]``."""

from __future__ import annotations

import argparse
import os

import torch

import benchmarks.vs_authors as package
from benchmarks.bench.probes import machine_description, matmul_throughput
from benchmarks.vs_authors.adapters import AUTHORS
from benchmarks.vs_authors.commits import DOCS
from benchmarks.vs_authors.compare import Line, Settings, compare_method
from benchmarks.vs_authors.entry import AuthorsCode
from benchmarks.vs_authors.importing import round_through_fp16
from benchmarks.vs_authors.report import REPORT, load_description, render, table
from clipcore import backbone


def parse_authors(items: list[str], known: dict[str, AuthorsCode]) -> dict[str, str]:
    checkouts = {}
    for item in items:
        method, sep, directory = item.partition("=")
        if not sep or not directory:
            raise SystemExit(f"--authors {item!r}: expected METHOD=DIR, e.g. cocoop=/path/to/CoOp")
        if method not in known:
            raise SystemExit(f"--authors {item!r}: no authors' adapter for {method!r}; known: {', '.join(known)}")
        if not os.path.isdir(directory):
            raise SystemExit(
                f"--authors {item!r}: {directory} is not a folder; clone it: "
                f"git clone https://github.com/{known[method].repository} {directory}"
            )
        checkouts[method] = directory
    return checkouts


def main(argv: list[str] | None = None, adapters: dict[str, AuthorsCode] = AUTHORS, clip=None, docs=DOCS) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.vs_authors", description=package.__doc__.split("\n\n")[0]
    )
    parser.add_argument("--authors", nargs="*", default=[], metavar="METHOD=DIR")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=60.0, help="timing budget per measurement after warm-up")
    parser.add_argument(
        "--loop-eval-images",
        type=int,
        default=0,
        help="time the authors' per-image eval loop (CoCoOp) on this many images and scale (0: all)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--note", default="", help="a sentence for the report, e.g. about other load")
    parser.add_argument("--out", default=REPORT)
    args = parser.parse_args(argv)
    checkouts = parse_authors(args.authors, adapters)
    if not checkouts:
        parser.error("name at least one METHOD=DIR with --authors")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(
        k=args.k,
        batch=args.batch,
        eval_images=args.eval_images,
        runs=args.runs,
        budget_s=args.budget_s,
        loop_eval_images=args.loop_eval_images,
    )
    if clip is None:
        clip = backbone.freeze(backbone.build_random_clip("vit_b16", seed=0))
    round_through_fp16(clip)
    load_before = load_description()
    flops_per_s = matmul_throughput(torch.device("cpu"))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    machine, lines = machine_description(torch.device("cpu")), []
    for method, checkout in checkouts.items():
        print(f"{method}: {adapters[method].repository} from {checkout}", flush=True)
        # The floor must stay a lower bound: on a shared machine one probe can catch a busy moment, so the
        # rate is probed again before each method and the fastest seen serves every line.
        flops_per_s = max(flops_per_s, matmul_throughput(torch.device("cpu")))
        lines.append(compare_method(adapters[method], checkout, clip, settings, docs=docs, flops_per_s=flops_per_s))
        for line in lines:
            if line.floor_flops:
                line.floor = tuple(sum(line.floor_flops[case].values()) / flops_per_s for case in ("train", "eval"))
        print(table(lines[-1:]).splitlines()[-1], flush=True)
        # written after every method, so a run stopped early keeps what it measured and says what it did not
        pending = [Line(m, adapters[m].repository, error="not measured: the run stopped before it") for m in checkouts]
        pending = pending[len(lines) :]
        text = render(lines + pending, settings, machine, load_before, load_description(), args.note, flops_per_s)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    print(f"wrote {args.out}")
    return 1 if any(line.error for line in lines) else 0
