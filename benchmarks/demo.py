"""The demo's reference run, its drift, and the paper's pattern in its Average row.

    python -m benchmarks.demo check [--results output/demo]    the pattern checks of a finished demo
    python -m benchmarks.demo reference                         run the demos (base-to-new: every method of the
                                                                study) and keep them in reports/demo-reference/
    python -m benchmarks.demo transfer                          run only the crossdataset and domaingen demos
    python -m benchmarks.demo drift [--results DIR]             re-run the demos (or read DIR: make demo-drift
                                                                reads output/demo) and compare
    python -m benchmarks.demo ablations                         run the demo ablations; keep Figure 4's tables

The README's demo blocks are written from the reference by ``python -m benchmarks.readme demo``
(``readme_blocks`` here makes them).

The pattern checked per seed: for base-to-new (CoCoOp paper, Table 1's Average row) each seed's
average over the demo's datasets; for cross-dataset transfer and domain generalisation (Tables 2
and 3) each seed's source accuracy and average over the demo's targets. Each gap between two
methods is taken seed by seed (zero-shot CLIP has no seed: its one value is used for every seed).
A gap holds when its mean exceeds the claim's margin by more than twice its population standard
deviation over seeds.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import sys
import tempfile

from benchmarks.demo_runs import command_line, machine, report, run_demo
from benchmarks.demo_runs import sweep as run_sweep
from harness import sweep
from harness.report.tables import harmonic
from harness.results import read_records

REFERENCE_DIR = os.path.join("reports", "demo-reference")


def seed_averages(results: str, experiment: str = "base2new") -> dict[str, dict[str, list[float]]]:
    """{method: {"base"|"new"|"h": [one value per seed]}}: each seed's mean over the demo's datasets."""
    demo = sweep.load_experiment(experiment, profile="demo")
    datasets, seeds = list(demo["datasets"]), list(demo["seeds"])
    acc: dict[tuple, float] = {}
    for r in read_records(results):
        if r.get("experiment") == experiment and r["subsample"] in ("base", "new") and r["dataset"] in datasets:
            acc[(r["method"], r["subsample"], r["dataset"], r.get("seed"))] = r["metrics"]["accuracy"]
    out: dict[str, dict[str, list[float]]] = {}
    for method in dict.fromkeys(k[0] for k in acc):
        rows: dict[str, list[float]] = {"base": [], "new": [], "h": []}
        for seed in seeds:
            means = {}
            for sub in ("base", "new"):
                values = [acc.get((method, sub, d, seed), acc.get((method, sub, d, None))) for d in datasets]
                if any(v is None for v in values):
                    break
                means[sub] = sum(values) / len(values)
            else:
                rows["base"].append(means["base"])
                rows["new"].append(means["new"])
                rows["h"].append(harmonic(means["base"], means["new"]))
        if rows["base"]:
            out[method] = rows
    return out


def transfer_seed_averages(results: str, experiment: str) -> dict[str, dict[str, list[float]]]:
    """{method: {"source"|"targets": [one value per seed]}}: each seed's accuracy on the demo's source
    and its mean over the demo's targets. The source may have been evaluated by the other transfer
    experiment (their trainings are shared), so its records are read from either."""
    demo = sweep.load_experiment(experiment, profile="demo")
    source, targets, seeds = demo["source"], list(demo["targets"]), list(demo["seeds"])
    acc: dict[tuple, float] = {}
    for r in read_records(results):
        if r["subsample"] != "all" or r.get("experiment") not in TRANSFER_EXPERIMENTS:
            continue
        trained = r.get("train_dataset")
        if trained not in (None, source) or (trained and r.get("train_subsample") != "all"):
            continue
        if r["dataset"] == source or (r.get("experiment") == experiment and r["dataset"] in targets):
            acc[(r["method"], r["dataset"], r.get("seed"))] = r["metrics"]["accuracy"]
    out: dict[str, dict[str, list[float]]] = {}
    for method in dict.fromkeys(k[0] for k in acc):
        rows: dict[str, list[float]] = {"source": [], "targets": []}
        for seed in seeds:
            values = [acc.get((method, d, seed), acc.get((method, d, None))) for d in [source, *targets]]
            if all(v is not None for v in values):
                rows["source"].append(values[0])
                rows["targets"].append(statistics.fmean(values[1:]))
        if rows["source"]:
            out[method] = rows
    return out


def _gap(a: list[float], b: list[float], offset: float = 0.0) -> tuple[float, float]:
    diffs = [x - y - offset for x, y in zip(a, b)]
    return statistics.fmean(diffs), statistics.pstdev(diffs)


#: (claim, (method, metric), (method, metric), required margin in points)
CLAIMS = (
    ("CoOp base ≥ zero-shot base + 5", ("coop", "base"), ("zsclip", "base"), 5.0),
    ("CoOp new < zero-shot new", ("zsclip", "new"), ("coop", "new"), 0.0),
    ("CoCoOp new ≥ CoOp new + 2", ("cocoop", "new"), ("coop", "new"), 2.0),
    ("CoCoOp H > CoOp H", ("cocoop", "h"), ("coop", "h"), 0.0),
)
# The paper's claims for Tables 2 and 3 (CoCoOp paper 4.2, 4.3): CoCoOp transfers better than CoOp
# on average over the targets; in Table 3, both learned prompts beat zero-shot CLIP on the source.
TRANSFER_EXPERIMENTS = ("crossdataset", "domaingen")
TRANSFER_CLAIMS = {
    "crossdataset": (("CoCoOp target average > CoOp target average", ("cocoop", "targets"), ("coop", "targets"), 0.0),),
    "domaingen": (
        ("CoCoOp target average > CoOp target average", ("cocoop", "targets"), ("coop", "targets"), 0.0),
        ("CoOp source > zero-shot source", ("coop", "source"), ("zsclip", "source"), 0.0),
        ("CoCoOp source > zero-shot source", ("cocoop", "source"), ("zsclip", "source"), 0.0),
    ),
}


def pattern_checks(averages: dict, claims=CLAIMS) -> list[dict]:
    checks = []
    for claim, (ma, ka), (mb, kb), margin in claims:
        if ma not in averages or mb not in averages:
            checks.append({"claim": claim, "holds": False, "gap": None, "std": None, "margin": margin})
            continue
        a, b = averages[ma][ka], averages[mb][kb]
        if len(b) == 1 and len(a) > 1:
            b = b * len(a)
        if len(a) == 1 and len(b) > 1:
            a = a * len(b)
        gap, std = _gap(a, b)
        checks.append(
            {
                "claim": claim,
                "gap": gap,
                "std": std,
                "margin": margin,
                "holds": gap - margin > 0 and gap - margin > 2 * std,
            }
        )
    return checks


def checks_markdown(checks: list[dict], what: str = "Average row") -> str:
    lines = [
        f"| claim ({what}, seed by seed) | gap (points) | std over seeds | holds |",
        "| --- | ---: | ---: | :---: |",
    ]
    for c in checks:
        gap = "—" if c["gap"] is None else f"{c['gap']:+.2f}"
        std = "—" if c["std"] is None else f"{c['std']:.2f}"
        holds = "not run" if c["gap"] is None else "yes" if c["holds"] else "NO"  # no gap: its runs were never made
        lines.append(f"| {c['claim']} | {gap} | {std} | {holds} |")
    return "\n".join(lines) + "\n"


def cpu_gflops(threads: int = 1) -> float:
    """This CPU's speed now, in GFLOP/s on a text-encoder-shaped matmul at ``threads`` torch threads: a
    timing's context, since a cloud VM's speed can move by a factor of two within a day."""
    import torch

    from benchmarks.bench.probes import matmul_throughput

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return matmul_throughput(torch.device("cpu")) / 1e9
    finally:
        torch.set_num_threads(before)


def other_methods(experiment: str = "base2new") -> list[str]:
    """The study's methods that its demo does not run by default (the successors): the reference runs them
    too, after the timed default demo, so that the README's methods table has every method's demo H."""
    demo = sweep.load_experiment(experiment, profile="demo")
    return [m for m in demo["methods"] if m not in demo.get("default_methods", demo["methods"])]


def run_reference_demo(out: str, report_dir: str) -> float:
    """``make base2new`` (timed: the README's figure), then every other method of the study in the same
    store, and one report over all of them. Returns the timed part's seconds."""
    seconds = run_demo(out, report_dir)
    if other_methods():
        run_demo(out, report_dir, methods=other_methods())
    return seconds


#: the files of the transfer demos in a report: Tables 2 and 3 and their figures
TRANSFER_TABLES = {"crossdataset": "table2_crossdataset", "domaingen": "table3_domaingen"}
TRANSFER_FILES = [f"{t}.{ext}" for t in TRANSFER_TABLES.values() for ext in ("md", "csv", "tex")] + [
    f"figure_{e}_cocoop_vs_coop.{ext}" for e in TRANSFER_TABLES for ext in ("csv", "png", "pdf")
]


def run_transfer(out: str, report_dir: str) -> dict[str, float]:
    """``make crossdataset`` then ``make domaingen`` (the second reuses the first's trainings), in one
    output folder; returns each one's wall time in seconds."""
    return {experiment: run_demo(out, report_dir, experiment) for experiment in TRANSFER_EXPERIMENTS}


def transfer_facts(out: str, seconds: dict[str, float], reference_dir: str = REFERENCE_DIR) -> dict:
    """Write each transfer study's pattern checks beside the reference; its facts for run.json."""
    averages = {e: transfer_seed_averages(out, e) for e in TRANSFER_EXPERIMENTS}
    for experiment, claims in TRANSFER_CLAIMS.items():
        checks = pattern_checks(averages[experiment], claims)
        with open(os.path.join(reference_dir, f"pattern_{experiment}.md"), "w") as f:
            f.write(checks_markdown(checks, TRANSFER_WHAT))
        print(checks_markdown(checks, TRANSFER_WHAT), end="")
    return {
        "transfer_machine": machine(),
        "transfer_seconds": {e: round(v, 1) for e, v in seconds.items()},
        "transfer_seed_averages": averages,
    }


TRANSFER_WHAT = "source and target average"


def read_table(path: str) -> dict[tuple, float]:
    with open(path, newline="") as f:
        return {(r["row"], r["method"], r["metric"]): float(r["mean"]) for r in csv.DictReader(f) if r["mean"]}


def drift(reference_csv: str, new_csv: str) -> tuple[list[tuple], list[str], list[str]]:
    """(key, reference, now) per cell of the reference of each method the new run has (now None where it
    lacks that cell: a real gap), the reference's methods the new run did not run at all (``make
    base2new`` runs the paper's three; the reference has every method of the study), and the new run's
    methods the reference does not have (a method added or renamed since: nothing to compare it with)."""
    ref, new = read_table(reference_csv), read_table(new_csv) if os.path.isfile(new_csv) else {}
    ran, had = {method for _, method, _ in new}, {method for _, method, _ in ref}
    not_run = list(dict.fromkeys(method for _, method, _ in ref if method not in ran))
    unknown = list(dict.fromkeys(method for _, method, _ in new if method not in had))
    return [(key, ref[key], new.get(key)) for key in ref if key[1] in ran], not_run, unknown


def _table_lines(path: str) -> str:
    with open(path) as f:
        return "".join(line for line in f if line.startswith("|"))


def _section_lines(path: str, heading: str) -> str:
    """One ``## heading`` section of a report file: its table and the lines that say how to read it."""
    with open(path) as f:
        text = f.read()
    marker = f"## {heading}\n"
    if marker not in text:
        raise ValueError(f"{path} has no section {marker.strip()!r}: re-run python -m benchmarks.demo reference")
    return text.split(marker, 1)[1].split("\n## ", 1)[0].strip("\n") + "\n"


def _averages_by_group(path: str) -> dict[tuple[str, str], float]:
    with open(path, newline="") as f:
        return {
            (r["group"], r["metric"]): float(r["mean"])
            for r in csv.DictReader(f)
            if r["row"] == "average" and r["mean"]
        }


def ablation_sentence(reference_dir: str = REFERENCE_DIR) -> str:
    """Figure 4 of the reference ablations in one sentence (averages over the demo's datasets)."""
    init = _averages_by_group(os.path.join(reference_dir, "fig4a_init_ablation.csv"))
    length = _averages_by_group(os.path.join(reference_dir, "fig4b_length_ablation.csv"))
    parts = []
    for method in dict.fromkeys(g.split(" ")[0] for g, _ in init):
        groups = sorted({g for g, _ in init if g.startswith(method + " ")}, key=lambda g: g.endswith("random"))
        if len(groups) == 2:
            initialised, random = groups
            d_base = init[(random, "Base")] - init[(initialised, "Base")]
            d_new = init[(random, "New")] - init[(initialised, "New")]
            parts.append(f"{method} {d_base:+.2f} base and {d_new:+.2f} new points")
    tokens = sorted({g for g, _ in length}, key=lambda g: int(g.rsplit(" ", 1)[-1]))
    h_values = ", ".join(f"{length[(g, 'H')]:.2f}" for g in tokens)
    counts = ", ".join(g.rsplit(" ", 1)[-1] for g in tokens)
    return (
        "Random instead of “a photo of a” initialisation changes the average by "
        + "; ".join(parts)
        + f"; {counts} random context tokens give CoCoOp H = {h_values}."
    )


def readme_blocks(reference_dir: str = REFERENCE_DIR) -> dict[str, str]:
    """The README's demo blocks, each made from the reference run's files."""
    with open(os.path.join(reference_dir, "run.json")) as f:
        facts = json.load(f)
    m, pre = facts["machine"], facts["pretraining"]
    run = (
        f"Reference run: {m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Pre-training "
        f"{pre['seconds']:.0f} s (weights sha256 `{pre['weights_sha256'][:16]}…`), then the sweep and the report "
        f"{facts['sweep_and_report_seconds']:.0f} s, with the tiny CLIP cached."
    )
    if facts.get("timing_note"):  # timings kept from an earlier, idle run of the same computation
        run += f" Timings: {facts['timing_note']}."
    blocks = {
        "table1": _table_lines(os.path.join(reference_dir, "table1_base2new.md")),
        "pattern": _table_lines(os.path.join(reference_dir, "pattern.md")),
        "run": run + "\n",
    }
    leaderboard = os.path.join(reference_dir, "leaderboard_base2new.md")
    if os.path.isfile(leaderboard):  # which differences are real, and what each method costs
        blocks["leaderboard"] = _section_lines(leaderboard, "H")
        efficiency = os.path.join(reference_dir, "efficiency_base2new.md")
        with open(efficiency) as f:
            blocks["efficiency"] = _section_lines(efficiency, f.readline()[3:].strip())
    if os.path.isfile(os.path.join(reference_dir, "fig4a_init_ablation.csv")):
        blocks["ablations"] = ablation_sentence(reference_dir) + "\n"
    if "transfer_seconds" in facts:
        for experiment, table in TRANSFER_TABLES.items():
            blocks[table.split("_")[0]] = _table_lines(os.path.join(reference_dir, f"{table}.md"))
            blocks[f"pattern_{experiment}"] = _table_lines(os.path.join(reference_dir, f"pattern_{experiment}.md"))
        took, tm = facts["transfer_seconds"], facts["transfer_machine"]
        blocks["transfer_run"] = (
            f"Reference run: {tm['date']}, {tm['cpu']}, {tm['cores']} cores, torch {tm['torch']}: "
            f"`make crossdataset` {took['crossdataset']:.0f} s "
            f"(its trainings and report), then `make domaingen` {took['domaingen']:.0f} s (the same trainings, "
            "new evaluations), with the tiny CLIP cached.\n"
        )
    return blocks


def main(argv=None) -> int:
    parser, sub = command_line(
        "python -m benchmarks.demo", __doc__, "the paper's pattern in a finished demo's Average row"
    )
    sub.add_parser("reference", help="run the demos (base-to-new with every method of the study) and keep their report")
    sub.add_parser("transfer", help="run the crossdataset and domaingen demos; keep Tables 2 and 3 with the reference")
    d = sub.add_parser("drift", help="re-run the demo (or read --results) and compare with the reference")
    d.add_argument("--results", help="a finished demo's output folder (default: run the demo now)")
    sub.add_parser("ablations", help="run the demo ablations and keep Figure 4's tables with the reference")
    args = parser.parse_args(argv)

    if args.cmd == "ablations":
        out = tempfile.mkdtemp(prefix="demo-ablations-")
        report_dir = os.path.join(out, "report")
        run_sweep("ablations", out)
        run_sweep("base2new", out)
        report(out, report_dir)
        os.makedirs(REFERENCE_DIR, exist_ok=True)
        for name in (
            "fig4a_init_ablation.md",
            "fig4a_init_ablation.csv",
            "fig4b_length_ablation.md",
            "fig4b_length_ablation.csv",
        ):
            shutil.copy(os.path.join(report_dir, name), os.path.join(REFERENCE_DIR, name))
        print(ablation_sentence())
        return 0

    if args.cmd == "check":  # every demo study the results hold
        checks = []
        if seed_averages(args.results):
            checks += pattern_checks(seed_averages(args.results))
            print(checks_markdown(checks), end="")
        for experiment, claims in TRANSFER_CLAIMS.items():
            averages = transfer_seed_averages(args.results, experiment)
            if averages:
                print(f"\n{experiment}:\n")
                checks += pattern_checks(averages, claims)
                print(checks_markdown(checks[-len(claims) :], TRANSFER_WHAT), end="")
        if not checks:
            print(f"no demo results in {args.results}")
        return 0 if checks and all(c["holds"] for c in checks) else 1

    if args.cmd == "transfer":
        out = tempfile.mkdtemp(prefix="demo-transfer-")
        report_dir = os.path.join(out, "report")
        seconds = run_transfer(out, report_dir)
        os.makedirs(REFERENCE_DIR, exist_ok=True)
        for name in TRANSFER_FILES:
            shutil.copy(os.path.join(report_dir, name), os.path.join(REFERENCE_DIR, name))
        path = os.path.join(REFERENCE_DIR, "run.json")
        with open(path) as f:
            facts = json.load(f)
        facts.update(transfer_facts(out, seconds))
        with open(path, "w") as f:
            json.dump(facts, f, indent=2)
            f.write("\n")
        print(f"Tables 2 and 3 written to {REFERENCE_DIR} ({seconds})")
        return 0

    if args.cmd == "reference":
        out = tempfile.mkdtemp(prefix="demo-reference-")
        report_dir = os.path.join(out, "report")
        seconds = run_reference_demo(out, report_dir)
        transfer_seconds = run_transfer(out, report_dir)
        shutil.copytree(report_dir, REFERENCE_DIR, dirs_exist_ok=True)  # the whole report: tables, figures, index
        averages = seed_averages(out)
        checks = pattern_checks(averages)
        with open(os.path.join(REFERENCE_DIR, "pattern.md"), "w") as f:
            f.write(checks_markdown(checks))
        facts = {"machine": machine(), "sweep_and_report_seconds": round(seconds, 1), "seed_averages": averages}
        facts.update(transfer_facts(out, transfer_seconds))
        from miniworld import pretrain

        with open(pretrain.cache_path() + ".json") as f:
            facts["pretraining"] = json.load(f)
        with open(os.path.join(REFERENCE_DIR, "run.json"), "w") as f:
            json.dump(facts, f, indent=2)
            f.write("\n")
        print(checks_markdown(checks), end="")
        print(f"reference written to {REFERENCE_DIR} ({seconds:.0f} s)")
        return 0

    results = args.results
    if results is None:
        results = tempfile.mkdtemp(prefix="demo-drift-")
        run_reference_demo(results, os.path.join(results, "report"))
    elif not read_records(results):
        print(
            f"error: no demo results in {results}: run `make base2new` (no DATA_ROOT) first, or re-run every demo "
            "study and compare: make demo-drift RERUN=1",
            file=sys.stderr,
        )
        return 2
    report_csv = os.path.join(results, "report", "table1_base2new.csv")
    if not os.path.isfile(report_csv):
        report(results, os.path.join(results, "report"))
    tables = ["table1_base2new"]
    transfer = os.path.isfile(os.path.join(REFERENCE_DIR, "table2_crossdataset.csv"))
    if transfer:  # the reference has the transfer demos: re-run (or read) them too
        tables += list(TRANSFER_TABLES.values())
        if args.results is None:
            run_transfer(results, os.path.join(results, "report"))
    print("| table | row | method | metric | reference | now | drift |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    worst, not_compared, not_in_reference = 0.0, {}, {}
    for table in tables:
        rows, not_run, unknown = drift(
            os.path.join(REFERENCE_DIR, f"{table}.csv"), os.path.join(results, "report", f"{table}.csv")
        )
        not_compared.update(dict.fromkeys(not_run))
        not_in_reference.update(dict.fromkeys(unknown))
        for (row, method, metric), ref, now in rows:
            delta = None if now is None else now - ref
            worst = max(worst, abs(delta)) if delta is not None else worst
            shown = "missing" if now is None else f"{now:.2f}"
            change = "" if delta is None else f"{delta:+.2f}"
            print(f"| {table.split('_')[0]} | {row} | {method} | {metric} | {ref:.2f} | {shown} | {change} |")
    print(f"\nlargest drift: {worst:.2f} points")
    if not_compared:
        print(
            f"not compared (the reference has them, these results do not): {', '.join(not_compared)}; "
            f"METHODS={','.join(not_compared)} on the same make targets adds them to the same results"
        )
    if not_in_reference:
        print(
            f"not in the reference (these results have them, the reference does not: a method added or renamed "
            f"since): {', '.join(not_in_reference)}; python -m benchmarks.demo reference makes a reference with them"
        )
    checks = pattern_checks(seed_averages(results))
    print(checks_markdown(checks), end="")
    if transfer:
        for experiment, claims in TRANSFER_CLAIMS.items():
            mine = pattern_checks(transfer_seed_averages(results, experiment), claims)
            print(f"\n{experiment}:\n\n" + checks_markdown(mine, TRANSFER_WHAT), end="")
            checks += mine
    return 0 if all(c["holds"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
