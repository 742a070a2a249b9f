"""The report stage: the results store -> the paper's tables and figures, beside the paper's numbers.

    from harness.report import build_report
    summary = build_report("output", out_dir="reports", tracking="none")

or ``python -m harness.report --results output [--out reports] [--tracking auto|none]``.

Per table it writes ``<key>.md``, ``<key>.tex`` (booktabs) and ``<key>.csv`` (one line per row x
column group x metric, with mean, std, seeds, paper value and difference); per figure ``<name>.png``
and ``<name>.pdf``; and ``index.md`` listing what was produced and what is missing: only what the
sweeps asked for, in the ``expected.json`` each wrote beside the store (a study's tables:
``tables.STUDY_TABLES``); without one, nothing is listed, and ``index.md`` says why.

Which records feed which table (``experiments`` changes it, see ``gate.Gate.table_filter``):

* Table 1 (base-to-new): every experiment except crossdataset, domaingen, ablations and fewshot (so
  "base2new" and "demo" both count); zero-shot CLIP on base/new classes and prompts learned on the
  same dataset's base classes. Each (experiment, method config) is its own column group, so two
  experiments or two configs are never pooled. Figures 3 and the scatter use the "base2new"
  experiment when it has results, else the first other one.
* Table 2 / 3: experiments crossdataset / domaingen; the source (the dataset the prompts were
  learned on) and the targets come from the records, and each table's source row may come from
  the other experiment's records (the two share their trainings). Average: the targets.
* Table 4: as Table 1, evaluations on all classes.
* Table 5 and the Figure 4 ablation tables: every experiment but crossdataset/domaingen/fewshot, so
  the ctx-4 "a photo of a" CoCoOp of base2new can serve as the initialised arm of the ablation.
* The few-shot tables ``fewshot_<K>shot`` and ``figure_fewshot``: experiment fewshot
  (``harness.report.fewshot``).
* ``efficiency_<experiment>`` and ``figure_cost_vs_<metric>``: what each method of a study costs, from
  the ``cost`` blocks of the records the gate shows (``harness.report.efficiency``); a study none of
  whose records carries a cost (written before costs were recorded) has none.

Seeds: ``expected_seeds=None`` expects, for each cell, every seed seen in its experiment(s) (the
union over all learned-prompt records); a cell with fewer is shown with ``†(k/n seeds)`` and listed
as missing, never silently averaged as if complete. Paper values are read from ``paper_dir``'s CSV
files (``reports/paper``) at run time, and compared only with records of the backbone and shots they
were published for. Every table and figure takes its cells from one gate (``harness.report.gate``):
one settings run per cell, the marks (†, ‡, §) and the paper comparison are decided there.
Which differences are real (``harness.report.studies``): each study's methods against its baseline,
from the records those cells show; ≈ marks an Average within noise of it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from harness.report import gate, studies
from harness.report.builders import BUILDERS
from harness.report.efficiency import efficiency_tables, figure_cost, write_efficiency
from harness.report.fewshot import fewshot_tables, figure_fewshot
from harness.report.figures import color, figure4, methods_comparison, scatter
from harness.report.manifest import replace_manifest
from harness.report.paper.cocoop import figure3, trainable_parameters, transfer_gap
from harness.report.render import display_frame, latex, long_frame, markdown, write_table
from harness.report.successors import reproductions_markdown
from harness.report.tables import (
    AVERAGE,
    MARKS,
    PAPER_DATASETS,
    Cell,
    Paper,
    Table,
    harmonic,
    method_label,
)

log = logging.getLogger(__name__)

__all__ = [
    "build_report",
    "build_tables",
    "ReportError",
    "load_records",
    "default_paper_dir",
    "color",
    "method_label",
    "PAPER_DATASETS",
    "AVERAGE",
    "Cell",
    "Table",
    "harmonic",
    "markdown",
    "latex",
    "display_frame",
    "long_frame",
    "trainable_parameters",
]


def default_paper_dir() -> str:
    """``reports/paper`` of this checkout (else of the working directory)."""
    here = Path(__file__).resolve().parents[2] / "reports" / "paper"
    return str(here) if here.is_dir() else os.path.join("reports", "paper")


def load_records(results) -> list[dict]:
    """Records from a store (``results.jsonl`` or its folder) or a list; a rerun's record (same
    ``harness.results.record_key`` and fingerprint) replaces the earlier one. Records of other
    settings are all kept: ``gate.select`` decides which settings run a table shows."""
    from harness.results import read_records, record_key

    records = read_records(str(results)) if isinstance(results, (str, os.PathLike)) else list(results)
    latest = {}
    for r in records:
        if not isinstance((r.get("metrics") or {}).get("accuracy"), (int, float)):
            log.warning("record %s has no accuracy; skipped", r.get("job"))
            continue
        key = (record_key(r), r.get("fingerprint"))
        latest.pop(key, None)
        latest[key] = r
    return list(latest.values())


class ReportError(ValueError):
    """A report that cannot be made as asked (names what is wrong and the choices)."""


class NoRecordsError(ReportError):
    """The results store holds no record: nothing is written."""


def check_experiments(experiments, records: list[dict]) -> None:
    """Every experiment asked for has records: a misspelt name is an error, not an empty report."""
    if experiments is None:
        return
    if isinstance(experiments, dict):
        asked = {n for names in experiments.values() for n in ([names] if isinstance(names, str) else names or [])}
    else:
        asked = {experiments} if isinstance(experiments, str) else set(experiments)
    known = sorted({str(r.get("experiment")) for r in records})
    unknown = sorted(asked - set(known))
    if unknown:
        raise ReportError(
            f"No records of experiment(s) {unknown} in the results. Experiments with records: "
            f"{', '.join(known) or 'none'}."
        )


def read_expectations(results) -> dict:
    """{experiment: what it expects} recorded by the sweeps beside a store (none for records in memory)."""
    if not isinstance(results, (str, os.PathLike)):
        return {}
    from harness.config import ConfigError
    from harness.sweep import read_expectations as read

    try:
        return read(str(results))
    except ConfigError as e:  # a damaged expected.json: the report's own one-line error
        raise ReportError(str(e)) from e


def expectation_notes(expectations: dict, records: list[dict]) -> list[str]:
    """What the sweeps left out of each experiment with records (--datasets, --seeds, --methods)."""
    present = {str(r.get("experiment")) for r in records}
    notes = []
    for name, expected in expectations.items():
        ran = expected.get("ran") or {}
        if name not in present:
            continue
        for what in ("datasets", "seeds", "methods"):
            left = [x for x in expected.get(what) or [] if x not in (ran.get(what) or [])]
            if left:
                notes.append(
                    f"{name}: its sweeps ran {what} {', '.join(map(str, ran.get(what) or []))} of "
                    f"{', '.join(map(str, expected.get(what)))} (not run: {', '.join(map(str, left))})"
                )
    return notes


def build_tables(results, *args, **options) -> dict:
    """{table key: Table} for every table, empty ones included (their ``missing`` says why); the arguments
    are ``build_study``'s."""
    return build_study(results, *args, **options)[0]


def build_study(
    results,
    experiments=None,
    expected_seeds=None,
    paper_dir=None,
    with_paper=True,
    all_variants: bool = False,
    expectations: dict | None = None,
    baseline: str | None = None,
) -> tuple[dict, dict]:
    """({table key: Table}, {experiment: studies.Study}): the tables (``build_tables``) and each study's
    comparison with its baseline, both from the one gate.

    all_variants: each settings run of a cell its own column group (default: the newest, the others
    listed in the notes). expectations: {experiment: expected datasets and seeds}; default those the
    sweeps recorded beside the store. baseline: the method every study compares with (default: each
    study's own, ``expected.json``); it decides the ≈ marks."""
    records = load_records(results)
    expectations = read_expectations(results) if expectations is None else expectations
    shown, superseded = gate.select(records, all_variants)
    paper = Paper(paper_dir if paper_dir is not None else default_paper_dir()) if with_paper else None
    ctx = gate.Gate(shown, experiments, expected_seeds, paper, with_paper, expectations, records, superseded)
    tables = {table.key: table for table in (build(ctx) for build in BUILDERS)}
    tables.update({table.key: table for table in fewshot_tables(ctx).values()})  # fewshot_<K>shot
    try:
        found = studies.build_studies(ctx, tables, baseline)
    except studies.BaselineError as exc:
        raise ReportError(str(exc)) from None
    for table in tables.values():
        ctx.finish(table)
        if not ctx.asks_for(table.key):  # no sweep asked for it: nothing of it is missing
            table.missing = []
    studies.note_mixed(found)  # after the gate's § marks
    return tables, found


#: The Missing section when no sweep wrote what it expects beside the store.
NOTHING_EXPECTED = (
    "not known: no expected.json beside the results (each sweep writes <results>/<experiment>/expected.json), "
    "so nothing is listed as missing"
)


def _index(
    out_dir, source, records, tables, figures, missing, with_paper, paper_dir, efficiency, comparisons, expected
) -> str:
    experiments = sorted({str(r.get("experiment")) for r in records})
    lines = [
        "# Report",
        "",
        f"Results: `{source}` ({len(records)} records; experiments: {', '.join(experiments) or 'none'}).",
        "Paper values: "
        + (f"`{paper_dir}` (each method's own paper; sources in its README.md)" if with_paper else "not shown")
        + ".",
        *(
            ["Reproductions by others, kept apart from the paper values: [reproductions.md](reproductions.md)."]
            if with_paper and os.path.exists(os.path.join(out_dir, "reproductions.md"))
            else []
        ),
        "",
        "## Tables",
        "",
    ]
    produced = [t for t in tables.values() if t["written"]]
    for t in produced:
        files = ", ".join(f"[{ext}]({os.path.basename(p)})" for ext, p in t["paths"].items())
        lines.append(f"* {t['table'].title}: {files}")
    for entry in efficiency.values():
        files = ", ".join(f"[{ext}]({os.path.basename(p)})" for ext, p in entry["paths"].items())
        lines.append(f"* {entry['table'].title}: {files}")
    if not produced and not efficiency:
        lines.append("* none")
    if comparisons:
        lines += ["", "## Which differences are real", ""]
        for name, paths in comparisons.items():
            lines.append(f"* {name}: " + ", ".join(f"[{ext}]({os.path.basename(p)})" for ext, p in paths.items()))
    lines += ["", "## Figures", ""]
    for name, paths in figures.items():
        lines.append(f"* {name}: " + ", ".join(f"[{ext}]({os.path.basename(p)})" for ext, p in paths.items()))
    if not figures:
        lines.append("* none")
    nothing = "nothing" if expected else NOTHING_EXPECTED
    lines += ["", "## Missing", ""] + ([f"* {m}" for m in missing] or [f"* {nothing}"])
    lines += [
        "",
        MARKS + ".",
        "",
    ]
    from harness.report.index import index_section

    section = index_section(out_dir)  # the W&B dashboard built from these tables (make dashboard)
    if section:
        lines += [""] + section
    path = os.path.join(out_dir, "index.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def build_report(
    results,
    out_dir: str = "reports",
    experiments=None,
    tracking: str = "none",
    paper_dir: str | None = None,
    expected_seeds=None,
    with_paper: bool = True,
    all_variants: bool = False,
    baseline: str | None = None,
) -> dict:
    """Write every table (md, tex, csv) and figure (png, pdf) under ``out_dir`` plus ``index.md``.

    results: a store folder, a ``results.jsonl`` path, or a list of records. experiments: None
    (defaults), a list of experiment names (narrows every table), or {table: [names]} with table
    keys "table1".."table5", "fig4a", "fig4b". expected_seeds: None (the seeds seen per experiment)
    or e.g. (1, 2, 3); by default also the seeds and datasets the sweeps recorded beside the store
    (``<store folder>/<experiment>/expected.json``): every cell and Average short of them is marked.
    all_variants: every settings run of a cell its own column group (``gate``). baseline: the method
    every study is compared with (default: the one each study's YAML names, recorded in expected.json;
    ``harness.report.studies`` writes ``comparison_*``, ``leaderboard_*`` and the critical-difference
    diagrams). tracking: a
    ``harness.tracking`` mode; not "none" logs every table and
    figure to one W&B run (job_type "report") and names it, with its figures' hashes, in
    ``<out_dir>/wandb/report_run.json`` (the dashboard's report shows the figures from that run).
    ``index.md`` ends with a link to the W&B dashboard when ``make dashboard`` has built one.

    Returns {"out_dir", "index", "records", "tables": {key: {"table", "frame", "paths"}},
    "efficiency": {experiment: {"table", "frame", "paths"}}, "figures": {name: {"png", "pdf"}}, "comparisons":
    {name: {ext: path}}, "studies": {experiment: studies.Study}, "missing": [...], "expected": bool}: missing lists
    only what the sweeps' expected.json files asked for ("expected": False when there is none, and nothing is
    listed)."""
    expectations = read_expectations(results)  # a damaged expected.json is named before anything else
    records = load_records(results)
    if not records and isinstance(results, (str, os.PathLike)):
        # a report of nothing would replace the one in out_dir (its manifest drops every file not written again)
        from harness.results import results_path

        raise NoRecordsError(
            f"no records in {os.path.abspath(results_path(str(results)))}: nothing to report, and {out_dir} is left "
            "as it is. Give --results the folder your runs and sweeps recorded in (their --results / --out), or run "
            "one first (python -m harness run ..., make base2new)"
        )
    check_experiments(experiments, records)
    paper_dir = paper_dir if paper_dir is not None else default_paper_dir()
    if with_paper and not os.path.isdir(paper_dir):
        log.warning("no paper values at %s; tables without the paper's columns", paper_dir)
    tables, found = build_study(
        records, experiments, expected_seeds, paper_dir, with_paper, all_variants, expectations, baseline
    )
    os.makedirs(out_dir, exist_ok=True)
    missing, written = expectation_notes(expectations, records), {}
    for key, table in tables.items():
        missing += table.missing
        entry = {"table": table, "frame": display_frame(table, with_paper), "paths": {}, "written": not table.empty}
        if not table.empty:
            entry["paths"] = write_table(table, out_dir, with_paper)
        written[key] = entry
    # What no sweep asked for is not missing (build_study scoped the tables' lists the same way).
    asks = gate.Gate([], experiments, expectations=expectations).asks_for
    figures = {}
    for name, (paths, why), table in (
        ("figure3", figure3(tables["table1_base2new"], out_dir), "table1"),
        ("figure4", figure4(tables["fig4a_init_ablation"], tables["fig4b_length_ablation"], out_dir), "fig4a"),
        ("scatter", scatter(tables["table1_base2new"], out_dir), "table1"),
        ("methods", methods_comparison(tables["table1_base2new"], out_dir), "table1"),
        (
            "crossdataset",
            transfer_gap(tables["table2_crossdataset"], out_dir, "figure_crossdataset_cocoop_vs_coop"),
            "table2",
        ),
        ("domaingen", transfer_gap(tables["table3_domaingen"], out_dir, "figure_domaingen_cocoop_vs_coop"), "table3"),
        (
            "fewshot",
            figure_fewshot(
                {int(k[len("fewshot_") : -len("shot")]): t for k, t in tables.items() if k.startswith("fewshot_")},
                out_dir,
                Paper(paper_dir) if with_paper else None,
            ),
            "fewshot",
        ),
    ):
        if paths:
            figures[name] = paths
        if why and asks(table):
            missing += why if isinstance(why, list) else [why]
    comparisons = {}
    for study in found.values():
        files, drawn, why = studies.write_study(study, out_dir)
        comparisons.update(files)
        figures.update(drawn)
        missing += why if study.experiment in expectations else []
    efficiency = {}
    # the records the tables show: with --all-variants each settings run is its own row, as it is a column
    for experiment, table in efficiency_tables(gate.select(records, all_variants)[0], experiments).items():
        if table.measured:
            efficiency[experiment] = {"table": table, "frame": table.frame(), "paths": write_efficiency(table, out_dir)}
        elif experiment in expectations:
            missing.append(f"Efficiency: no record of {experiment} carries a cost (written before costs were recorded)")
    cost_figures, why = figure_cost({e: entry["table"] for e, entry in efficiency.items()}, tables, out_dir)
    figures.update(cost_figures)
    missing += [reason for experiment, reason in why if experiment in expectations]
    reproductions = os.path.join(out_dir, "reproductions.md")
    text = reproductions_markdown(paper_dir) if with_paper else None
    if text:  # others' runs of a method: a page of their own, never a "(paper)" column
        with open(reproductions, "w") as f:
            f.write(text)
    elif os.path.exists(reproductions):
        os.unlink(reproductions)
    source = results if isinstance(results, (str, os.PathLike)) else "records given in memory"
    # The W&B run of an earlier report holds earlier figures: forget it before (maybe) logging anew.
    run_file = os.path.join(out_dir, "wandb", "report_run.json")
    if os.path.exists(run_file):
        os.unlink(run_file)
    if tracking != "none":
        logged = {**written, **{e["table"].key: e for e in efficiency.values()}}
        for experiment, study in found.items():  # each comparison with its baseline, as its csv holds it
            if study.comparisons:
                frame = studies.comparison_csv_frame(study)
                logged[f"comparison_{experiment}"] = {"frame": frame, "paths": comparisons[f"comparison_{experiment}"]}
        _track(tracking, out_dir, source, logged, figures)
    index = _index(
        out_dir,
        source,
        records,
        written,
        figures,
        missing,
        with_paper,
        paper_dir,
        efficiency,
        comparisons,
        expected=bool(expectations),
    )
    files = (
        [index] + ([reproductions] if text else []) + [p for entry in written.values() for p in entry["paths"].values()]
    )
    files += [p for entry in efficiency.values() for p in entry["paths"].values()]
    files += [p for paths in comparisons.values() for p in paths.values()]
    files += [p for paths in figures.values() for p in paths.values()]
    if os.path.exists(run_file):
        files.append(run_file)
    replace_manifest(out_dir, files)
    return {
        "out_dir": out_dir,
        "index": index,
        "records": len(records),
        "tables": {k: {"table": v["table"], "frame": v["frame"], "paths": v["paths"]} for k, v in written.items()},
        "efficiency": efficiency,
        "figures": figures,
        "comparisons": comparisons,
        "studies": found,
        "missing": missing,
        "expected": bool(expectations),
    }


def _track(mode, out_dir, source, tables, figures) -> None:
    from harness import tracking

    # W&B's files go beside the results store, not among the generated tables.
    from harness.results import results_path

    wandb_dir = (
        os.path.dirname(os.path.abspath(results_path(str(source))))
        if isinstance(source, (str, os.PathLike))
        else out_dir
    )
    tracker = tracking.start_run(
        mode,
        name="report",
        job_type="report",
        tags=["report"],
        config={"results": str(source), "out_dir": out_dir},
        dir=os.path.join(wandb_dir, "report-wandb"),
    )
    failed = False
    try:
        for key, entry in tables.items():
            if entry["paths"]:
                tracker.log_table(key, entry["frame"])
        for name, paths in figures.items():
            tracker.log_image(name, paths["png"])
    except Exception:
        failed = True
        raise
    finally:
        tracker.finish(failed=failed)
    if tracker.run_id:
        # Which W&B run holds these figures (the dashboard's report shows them from it once synced).
        import hashlib
        import json

        digests = {}
        for name, paths in figures.items():
            with open(paths["png"], "rb") as f:
                digests[name] = {"png": os.path.basename(paths["png"]), "sha256": hashlib.sha256(f.read()).hexdigest()}
        os.makedirs(os.path.join(out_dir, "wandb"), exist_ok=True)
        info = {"run_id": tracker.run_id, "project": tracker.project, "mode": tracker.mode, "figures": digests}
        info["run_dir"] = os.path.dirname(tracker.run_dir or "")
        with open(os.path.join(out_dir, "wandb", "report_run.json"), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
