"""The few-shot demo's reference run and CoOp's few-shot claims checked on it.

    python -m benchmarks.fewshot_demo check [--results output/demo]   the claims on a finished demo
    python -m benchmarks.fewshot_demo reference                        run make fewshot's demo (timed), then
                                                                       every other method of the study in the
                                                                       same store; keep the report in
                                                                       reports/demo-reference/fewshot/

The README's few-shot blocks are written from the reference by ``python -m benchmarks.readme fewshot``
(``readme_blocks`` here makes them).

CoOp's claims (IJCV 2022, Figure 3 and its discussion) as checked here, on the average over the demo's
datasets, seed by seed (zero-shot CLIP has no seed: its one value serves every seed): learned prompts
beat the linear probe at 1 and 2 shots, and zero-shot CLIP from 2 shots on, by a wide margin at 16.
A claim holds when its gap exceeds its margin by more than twice its population std over seeds (as
``benchmarks.demo``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from benchmarks.demo import checks_markdown, cpu_gflops, other_methods
from benchmarks.demo_runs import command_line, machine, report, run_demo
from harness import sweep
from harness.report.paper.coop import fewshot_rank
from harness.report.tables import method_label
from harness.results import read_records

EXPERIMENT = "fewshot"
REFERENCE_DIR = os.path.join("reports", "demo-reference", "fewshot")

#: (claim, (method, shots), (method, shots), margin in points); zero-shot CLIP at 0 shots
CLAIMS = (
    ("CoOp > linear probe at 1 shot", ("coop", 1), ("lpclip", 1), 0.0),
    ("CoOp > linear probe at 2 shots", ("coop", 2), ("lpclip", 2), 0.0),
    ("CoOp > zero-shot CLIP at 2 shots", ("coop", 2), ("zsclip", 0), 0.0),
    ("CoOp ≥ zero-shot CLIP + 5 at 16 shots", ("coop", 16), ("zsclip", 0), 5.0),
)


def seed_averages(results: str) -> dict[tuple[str, int], list[float]]:
    """{(method, shots): [each seed's mean accuracy over the demo's datasets]} (zero-shot: shots 0)."""
    demo = sweep.load_experiment(EXPERIMENT, profile="demo")
    datasets, seeds = list(demo["datasets"]), list(demo["seeds"])
    acc: dict[tuple, float] = {}
    for r in read_records(results):
        if r.get("experiment") == EXPERIMENT and r["subsample"] == "all" and r["dataset"] in datasets:
            acc[(r["method"], int(r.get("shots") or 0), r["dataset"], r.get("seed"))] = r["metrics"]["accuracy"]
    out: dict[tuple[str, int], list[float]] = {}
    for method, shots in dict.fromkeys(k[:2] for k in acc):
        per_seed = []
        for seed in seeds:
            values = [acc.get((method, shots, d, seed), acc.get((method, shots, d, None))) for d in datasets]
            if all(v is not None for v in values):
                per_seed.append(sum(values) / len(values))
        if per_seed:
            out[(method, shots)] = per_seed
    return out


def claim_checks(averages: dict) -> list[dict]:
    checks = []
    for claim, a, b, margin in CLAIMS:
        if a not in averages or b not in averages:
            checks.append({"claim": claim, "gap": None, "std": None, "holds": False})
            continue
        xs, ys = averages[a], averages[b]
        ys = ys * len(xs) if len(ys) == 1 else ys  # zero-shot: one value for every seed
        diffs = [x - y - margin for x, y in zip(xs, ys)]
        gap, std = statistics.fmean(diffs) + margin, statistics.pstdev(diffs)
        checks.append({"claim": claim, "gap": gap, "std": std, "holds": gap - margin > 2 * std})
    return checks


def verdict(checks: list[dict]) -> str:
    """One sentence saying which claims hold, made from the checks (a claim without a gap was not run)."""
    failed = [c["claim"] for c in checks if not c["holds"] and c["gap"] is not None]
    not_run = [c["claim"] for c in checks if c["gap"] is None]
    if not failed and not not_run:
        return f"All {len(checks)} hold on the reference run."
    held = len(checks) - len(failed) - len(not_run)
    return (
        f"{held} of {len(checks)} hold on the reference run"
        + (f"; not: {'; '.join(failed)}" if failed else "")
        + (f"; not run: {'; '.join(not_run)}" if not_run else "")
        + "."
    )


def curve_table(averages: dict) -> str:
    """Average accuracy per method and shot count (mean ± std over seeds), as the README shows it."""
    shots = sorted({k for _, k in averages if k > 0})
    # The report's order and labels (CoOp's figure first, the registry's after), so the two agree.
    methods = sorted({m for m, _ in averages}, key=fewshot_rank)
    lines = ["| method | " + " | ".join(f"{k} shot{'s' if k > 1 else ''}" for k in shots) + " |"]
    lines.append("| --- |" + " ---: |" * len(shots))
    for m in methods:
        if (m, 0) in averages:
            value = f"{averages[(m, 0)][0]:.2f}"
            lines.append(f"| {method_label(m)} (0 shots) | " + " | ".join(value for _ in shots) + " |")
        elif any((m, k) in averages for k in shots):
            cells = []
            for k in shots:
                v = averages.get((m, k))
                cells.append("–" if not v else f"{statistics.fmean(v):.2f} ± {statistics.pstdev(v):.2f}")
            lines.append(f"| {method_label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_blocks(reference_dir: str = REFERENCE_DIR) -> dict[str, str]:
    with open(os.path.join(reference_dir, "run.json")) as f:
        facts = json.load(f)
    m = facts["machine"]
    averages = {(k.split("@")[0], int(k.split("@")[1])): v for k, v in facts["seed_averages"].items()}
    seconds = facts["sweep_and_report_seconds"]
    timing = "not timed (read from a finished run)" if seconds is None else f"{seconds:.0f} s"
    load = facts.get("load_average")
    # The run itself adds about 1 to the load average (one busy thread): "after" says little of others.
    beside = (
        f" (1-minute load average {load['before']:.1f} when it started: other processes shared the cores)"
        if load and load["before"] >= 0.8
        else (
            f" on an otherwise idle machine (1-minute load average {load['before']:.1f} when it started)"
            if load
            else ""
        )
    )
    gflops = facts.get("cpu_gflops_1thread")
    speed = ""
    if gflops:
        speed = f" CPU speed at the start: {gflops:.0f} GFLOP/s at one thread (`benchmarks.demo.cpu_gflops`)."
    run = (
        f"Reference run: {m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}: `make fewshot`'s sweep "
        f"and report {timing}{beside}, with the tiny CLIP cached.{speed}"
    )
    if facts.get("other_methods_seconds") is not None:
        run += (
            f" Every other method of the study, added to the same store after it (its sweep and the report): "
            f"{facts['other_methods_seconds']:.0f} s."
        )
    if facts.get("timing_note"):
        run += f" {facts['timing_note']}"
    with open(os.path.join(reference_dir, "claims.md")) as f:
        claims = f.read()
    checks = claim_checks(averages)
    return {
        "fewshot-curves": curve_table(averages),
        "fewshot-claims": claims + "\n" + verdict(checks) + "\n",
        "fewshot-run": run + "\n",
    }


def check_kept_timing(kept: dict, averages: dict, results: str) -> None:
    """``--keep-timing``: the timed part's numbers (make fewshot's own methods) in ``results`` must be the
    ones the kept timing was measured with (``kept``: the reference's run.json), or the timing would be shown
    beside a run it did not time (another store, a re-run at other settings)."""
    timed = [
        m for m in sweep.load_experiment(EXPERIMENT, profile="demo")["methods"] if m not in other_methods(EXPERIMENT)
    ]
    then = {k: v for k, v in (kept.get("seed_averages") or {}).items() if k.split("@")[0] in timed}
    now = {f"{m}@{k}": v for (m, k), v in averages.items() if m in timed}
    differ = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    if not then or differ:
        raise SystemExit(
            f"--keep-timing: {results} is not the run {REFERENCE_DIR}/run.json timed: its timed methods' seed "
            f"averages differ at {', '.join(differ[:6]) or 'every point (run.json holds none)'}"
            f"{' ...' if len(differ) > 6 else ''}. Keep the timing only for that run's store, or time this one "
            "(reference without --results)."
        )


def main(argv=None) -> int:
    check = "CoOp's few-shot claims on a finished demo"
    parser, sub = command_line("python -m benchmarks.fewshot_demo", __doc__, check)
    r = sub.add_parser("reference", help="run the few-shot demo (or read --results) and keep it as the reference")
    r.add_argument("--results", help="a finished demo's output folder (its report is rebuilt)")
    r.add_argument(
        "--keep-timing",
        metavar="NOTE",
        help="with --results: keep the reference's timing of make fewshot's own demo (still true when methods "
        "were added to its store since; refused when its own methods' numbers differ) and say so in NOTE, shown "
        "beside it",
    )
    args = parser.parse_args(argv)
    if args.cmd == "reference" and args.keep_timing and not args.results:
        parser.error("--keep-timing keeps a finished run's timing: give that run's folder with --results")

    if args.cmd == "check":
        checks = claim_checks(seed_averages(args.results))
        print(checks_markdown(checks).replace("Average row", "average over datasets"), end="")
        return 0 if all(c["holds"] for c in checks) else 1

    out = args.results or tempfile.mkdtemp(prefix="fewshot-reference-")
    report_dir = os.path.join(out, "report")
    if args.results:
        start = time.time()
        report(out, report_dir)
        seconds, load, speed, others_seconds = None, None, None, None
    else:
        load_before = os.getloadavg()[0]
        speed = round(cpu_gflops(threads=1), 1)  # the demo runs at one thread
        seconds = run_demo(out, report_dir, EXPERIMENT)
        load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
        start, others_seconds = None, None
        if other_methods(EXPERIMENT):  # after the timed part: the README's methods table has every method
            others_seconds = run_demo(out, report_dir, EXPERIMENT, methods=other_methods(EXPERIMENT))
    if args.keep_timing:  # checked before the reference is touched: a refusal leaves it whole
        with open(os.path.join(REFERENCE_DIR, "run.json")) as f:
            kept = json.load(f)
        check_kept_timing(kept, seed_averages(out), out)
    os.makedirs(REFERENCE_DIR, exist_ok=True)
    for name in sorted(os.listdir(report_dir)):
        if name.startswith(("fewshot_", "figure_fewshot")):
            shutil.copy(os.path.join(report_dir, name), os.path.join(REFERENCE_DIR, name))
    averages = seed_averages(out)
    checks = claim_checks(averages)
    with open(os.path.join(REFERENCE_DIR, "claims.md"), "w") as f:
        f.write(checks_markdown(checks).replace("Average row", "average over datasets"))
    facts = {
        "machine": machine(),
        "sweep_and_report_seconds": round(seconds, 1) if seconds is not None else None,
        "load_average": load,
        "cpu_gflops_1thread": speed,
        "other_methods_seconds": round(others_seconds, 1) if others_seconds is not None else None,
    }
    if args.keep_timing:
        facts = {key: kept.get(key) for key in facts} | {"timing_note": args.keep_timing}
    facts["seed_averages"] = {f"{m}@{k}": v for (m, k), v in sorted(averages.items())}
    with open(os.path.join(REFERENCE_DIR, "run.json"), "w") as f:
        json.dump(facts, f, indent=2)
        f.write("\n")
    print(curve_table(averages))
    print(checks_markdown(checks), end="")
    print(
        f"reference written to {REFERENCE_DIR}"
        + (f" ({seconds:.0f} s)" if seconds else f" ({time.time() - start:.0f} s)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
