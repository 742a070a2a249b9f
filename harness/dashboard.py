"""The study's W&B dashboards, built by the harness: workspace views and a W&B Report.

    python -m harness.dashboard --results output --report-dir reports [--project P] [--entity E]
                                [--mode auto|online|offline]
    python -m harness.dashboard --publish reports/wandb [--project P] [--entity E]

What it builds (with ``wandb_workspaces``, W&B's library for workspaces and reports as code):

* **Workspace views**, one per experiment present (base2new, crossdataset, domaingen, ablations,
  ...). A W&B workspace has exactly one run set, so "a section per experiment with its run set
  filtered to the experiment" is one saved view per experiment, each with the run set
  ``Config('experiment') = '<name>'``. Sections of a view: base / new / H from the report stage
  (Markdown panels), accuracy per dataset (a bar panel per dataset of ``eval/<dataset>/<subsample>
  /accuracy``, grouped by ``method_config``, mean ± std over seeds), training curves (loss, lr,
  train accuracy, grouped by ``method_config``), and the runs table (pinned columns: method,
  method config, dataset, subsample, seed, shots, backbone, precision, epochs, job kind, and the
  ``accuracy/<subsample>`` summaries).
* **H**: W&B cannot take a harmonic mean across two runs (a training job evaluates base classes,
  its evaluation job new ones), and H is defined on seed means (PROTOCOL.md 12.1), so H is the
  report stage's number: the view's first section shows that experiment's rows of the report's
  tables (Markdown, rewritten on every ``make dashboard``), the same text as ``reports/*.md``.
* **A W&B Report** of the study: Tables 1-5 and the Figure 4 tables where they have numbers (ours
  ± std, the paper's value and the difference, as in ``reports/``), each study's efficiency table
  (``efficiency_<experiment>``: what each method costs), what is missing, the figures
  (a media panel of the report stage's W&B run, which logged them), each study's comparison with its
  baseline (``comparison_<experiment>.csv``, ``harness.report.studies``), and per experiment a panel
  grid with its own run set filtered to that experiment.

Numbers are never recomputed differently: the tables come from ``harness.report.build_tables``
and must equal the report folder's CSV files (else: run ``make report`` first, with the same
``--experiment`` / ``--seeds`` / ``--no-paper``).

Mode (as ``harness.tracking.resolve_mode``: ``WANDB_MODE``, else a key means online): offline,
the specifications are written as JSON (the library's own models) to ``<report dir>/wandb/``
(``workspace.json``, ``report.json``) with ``PUBLISH.md`` saying how to publish them later;
online, the same files are written and then published (saved to W&B), and their URLs printed.
``<report dir>/wandb/dashboard.json`` records what was built; ``index.md`` links to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import sys

from harness import tracking
from harness.report.index import (
    MANIFEST_FILE,
    NOTE_FILE,
    REPORT_FILE,
    SPEC_DIR,
    WORKSPACE_FILE,
    index_section,
    publish_command,
    read_manifest,
    spec_dir,
    tables_digest,
)

log = logging.getLogger(__name__)

REPORT_RUN_FILE = "report_run.json"  # written by the report stage when it logs to W&B
EXPERIMENT_ORDER = ("base2new", "crossdataset", "domaingen", "ablations", "bigger_coop", "fewshot")
# Tables whose column groups pool experiments: shown in the views of these experiments.
# (Tables 1 and 4 have a column group per experiment: each view shows its own groups.)
TABLE_HOMES = {
    "table2_crossdataset": ("crossdataset",),
    "table3_domaingen": ("domaingen",),
    "table5_bigger_coop": ("bigger_coop", "ablations"),
    "fig4a_init_ablation": ("ablations",),
    "fig4b_length_ablation": ("ablations",),
}
PER_EXPERIMENT_TABLES = ("table1_base2new", "table4_class_incremental")
GROUP_KEY = "method_config"
# Training curves: (title, x key, y key). "Step" is W&B's step (the runner's optimiser step).
CURVES = (
    ("Training loss per step", "Step", tracking.TRAIN_LOSS),
    ("Learning rate per step", "Step", tracking.TRAIN_LR),
    ("Training loss per epoch", tracking.EPOCH, tracking.EPOCH_LOSS),
    ("Training accuracy per epoch (%)", tracking.EPOCH, tracking.EPOCH_TRAIN_ACCURACY),
)


class DashboardError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# What the dashboard shows, read once


@dataclasses.dataclass
class Study:
    results: str
    report_dir: str
    records: list
    tables: dict  # key -> harness.report.tables.Table
    with_paper: bool
    experiments: list  # ordered
    figures: dict  # name -> png path (those in the report folder)
    report_run: dict | None  # the report stage's W&B run, when its figures are the report folder's
    missing: list
    # experiment -> harness.report.studies.Study: each study's comparison with its baseline
    comparisons: dict = dataclasses.field(default_factory=dict)
    efficiency: dict = dataclasses.field(default_factory=dict)  # experiment -> harness.report.efficiency.Efficiency

    def records_of(self, experiment: str) -> list:
        return [r for r in self.records if str(r.get("experiment")) == experiment]


def method_labels(study: Study) -> list[str]:
    """The labels of the study's methods (as their files name them), in the report's order."""
    from harness.report.tables import method_label, method_rank

    return [method_label(m) for m in sorted({str(r.get("method")) for r in study.records}, key=method_rank)]


def ordered_experiments(names) -> list[str]:
    names = {str(n) for n in names}
    return [e for e in EXPERIMENT_ORDER if e in names] + sorted(names - set(EXPERIMENT_ORDER))


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_report_dir(tables: dict, report_dir: str, comparisons: dict | None = None) -> None:
    """Every table with numbers, and every study's comparison, must be in the report folder, as the same
    CSV text."""
    from harness.report import long_frame
    from harness.report.studies import comparison_csv_frame

    for experiment, compared in (comparisons or {}).items():
        if not compared.comparisons:
            continue
        path = os.path.join(report_dir, f"comparison_{experiment}.csv")
        written = open(path).read() if os.path.isfile(path) else None
        if written != comparison_csv_frame(compared).to_csv(index=False, na_rep=""):
            raise DashboardError(
                f"{path} is missing or differs from the comparison of the results store: run `make report` again "
                "(with the same --baseline / --experiment / --seeds as here) before the dashboard."
            )

    for key, table in tables.items():
        if table.empty:
            continue
        path = os.path.join(report_dir, f"{key}.csv")
        if not os.path.isfile(path):
            raise DashboardError(
                f"{path} is missing: the dashboard shows the report stage's tables, so run `make report` "
                f"(python -m harness.report --results ... --out {report_dir}) first."
            )
        with open(path, newline="") as f:
            written = f.read()
        if long_frame(table).to_csv(index=False) != written:
            raise DashboardError(
                f"{path} differs from the tables of the results store: the report folder is out of date or was "
                "made with other options. Run `make report` again (with the same --experiment / --seeds / "
                "--no-paper as here) before the dashboard."
            )


def check_efficiency(efficiency: dict, report_dir: str) -> None:
    """Every study's efficiency table must be in the report folder, as the same CSV text."""
    from harness.report.efficiency import csv_text

    for table in efficiency.values():
        path = os.path.join(report_dir, f"{table.key}.csv")
        written = None
        if os.path.isfile(path):
            with open(path, newline="") as f:
                written = f.read()
        if written != csv_text(table):
            state = "missing" if written is None else "not the results store's"
            raise DashboardError(
                f"{path} is {state}: the dashboard shows the "
                "report stage's efficiency tables, so run `make report` again (with the same --experiment as here) "
                "before the dashboard."
            )


def load_study(
    results,
    report_dir: str = "reports",
    experiments=None,
    expected_seeds=None,
    paper_dir=None,
    with_paper: bool = True,
    baseline: str | None = None,
) -> Study:
    from harness.report import build_study, default_paper_dir, gate, load_records, read_expectations
    from harness.report.efficiency import efficiency_tables

    records = load_records(results)
    if not records:
        raise DashboardError(f"no records in {results}: nothing to show")
    paper_dir = paper_dir if paper_dir is not None else default_paper_dir()
    expectations = read_expectations(results)  # as the report stage read them, so the tables are its tables
    from harness.report import ReportError

    try:
        tables, comparisons = build_study(
            records, experiments, expected_seeds, paper_dir, with_paper, expectations=expectations, baseline=baseline
        )
    except ReportError as exc:  # an unknown --baseline
        raise DashboardError(str(exc)) from None
    check_report_dir(tables, report_dir, comparisons)
    figures = {}  # the report stage's W&B run logged these images (name -> png in the report folder)
    report_run = None
    run_file = os.path.join(report_dir, SPEC_DIR, REPORT_RUN_FILE)
    if os.path.isfile(run_file):
        with open(run_file) as f:
            report_run = json.load(f)
        for name, logged in (report_run.get("figures") or {}).items():
            path = os.path.join(report_dir, logged["png"])
            # The run's images must be the report folder's figures (same bytes), else they are left out.
            if os.path.isfile(path) and _sha256(path) == logged["sha256"]:
                figures[name] = path
            else:
                log.warning("%s: the W&B run's %s is not %s; left out", run_file, name, path)
    missing = [m for t in tables.values() for m in t.missing]
    efficiency = {e: t for e, t in efficiency_tables(gate.select(records)[0], experiments).items() if t.measured}
    check_efficiency(efficiency, report_dir)
    return Study(
        results=str(results),
        report_dir=report_dir,
        records=records,
        tables=tables,
        with_paper=with_paper,
        experiments=ordered_experiments(r.get("experiment") for r in records),
        figures=figures,
        report_run=report_run,
        missing=missing,
        comparisons=comparisons,
        efficiency=efficiency,
    )


# ---------------------------------------------------------------------------------------------
# Pieces shared by the workspace views and the report


def experiment_filter(experiment: str) -> str:
    """The run-set filter of one experiment (W&B's filter expression syntax)."""
    return f"Config('experiment') = {experiment!r}"


def runs_table_columns(records: list) -> list[str]:
    """The runs table: what each job is, and its accuracies on its own dataset (``accuracy/<subsample>``)
    for the class sets these records evaluate."""
    config = [f"config:{k}.value" for k in tracking.TABLE_CONFIG_KEYS]
    subsamples = {r["subsample"] for r in records}
    summary = [f"summary:{tracking.accuracy_key(s)}" for s in tracking.SUBSAMPLES if s in subsamples]
    return ["run:displayName"] + config + summary


def evaluated(records: list) -> dict:
    """{dataset: [subsamples]} evaluated by these records, datasets in the report's order."""
    from harness.report.tables import DG_DATASETS, PAPER_DATASETS, ordered_datasets

    found: dict = {}
    for r in records:
        found.setdefault(r["dataset"], set()).add(r["subsample"])
    order = ordered_datasets(found, PAPER_DATASETS + DG_DATASETS[1:])
    return {d: [s for s in tracking.SUBSAMPLES if s in found[d]] for d in order}


def accuracy_panels(records: list) -> list:
    import wandb_workspaces.reports.v2 as wr

    from harness.report.tables import dataset_label

    panels = []
    for dataset, subsamples in evaluated(records).items():
        panels.append(
            wr.BarPlot(
                title=f"{dataset_label(dataset)}: accuracy (%) on {' / '.join(subsamples)} classes",
                metrics=[tracking.eval_key(dataset, s) for s in subsamples],
                groupby=wr.Config(GROUP_KEY),
                groupby_aggfunc="mean",
                groupby_rangefunc="stddev",
                orientation="v",
            )
        )
    return panels


def shots_panels(records: list) -> list:
    """The few-shot study: a point per run, accuracy on all classes against its shot count (zero-shot
    CLIP at 0), one panel per dataset; the curves with their seed means are the report's figure."""
    import wandb_workspaces.reports.v2 as wr

    from harness.report.tables import dataset_label

    return [
        wr.ScatterPlot(
            title=f"{dataset_label(dataset)}: accuracy (%) on all classes against shots per class",
            x=wr.Config("shots"),
            y=wr.SummaryMetric(tracking.eval_key(dataset, "all")),
        )
        for dataset, subsamples in evaluated(records).items()
        if "all" in subsamples
    ]


def curve_panels() -> list:
    import wandb_workspaces.reports.v2 as wr

    return [
        wr.LinePlot(
            title=title,
            x=x,
            y=[y],
            groupby=wr.Config(GROUP_KEY),
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
        )
        for title, x, y in CURVES
    ]


def _body(markdown_text: str) -> str:
    """A table's Markdown without its "## title" line (the title is a heading of its own)."""
    lines = markdown_text.split("\n")
    if lines and lines[0].startswith("## "):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"


def table_markdown(table, with_paper: bool) -> str:
    from harness.report import markdown

    return _body(markdown(table, with_paper))


def _owner(line: str, table) -> object | None:
    """The column group a missing-list line is about (longest label that starts it), else None."""
    prefix = table.title.split(":")[0] + ": "
    best = None
    for g in table.groups:
        if line.startswith(prefix + g.label + " ") and (best is None or len(g.label) > len(best.label)):
            best = g
    return best


def experiment_tables(study: Study, experiment: str) -> list:
    """[(table key, table narrowed to this experiment)]: Tables 1 and 4 keep the experiment's column
    groups (and their missing-list lines); the pooled tables appear in their home experiments."""
    out = []
    for key, table in study.tables.items():
        if table.empty:
            continue
        if key in PER_EXPERIMENT_TABLES:
            groups = [g for g in table.groups if str(g.key[0]) == experiment]
            if not groups:
                continue
            keep = {g.key for g in groups}
            missing = [m for m in table.missing if (_owner(m, table) is None or _owner(m, table).key in keep)]
            out.append((key, dataclasses.replace(table, groups=groups, missing=missing)))
        elif experiment in TABLE_HOMES.get(key, ()) or (experiment == "fewshot" and key.startswith("fewshot_")):
            out.append((key, table))  # the few-shot tables (fewshot_<K>shot) live in the fewshot view
    return out


def experiment_markdown(study: Study, experiment: str) -> str:
    """The experiment's tables (base, new, H, ...) as the report folder shows them, and what they lack."""
    parts = []
    for _, table in experiment_tables(study, experiment):
        parts.append(f"### {table.title}\n\n{table_markdown(table, study.with_paper)}")
        if table.missing:
            parts.append("Missing:\n\n" + "\n".join(f"* {m}" for m in table.missing) + "\n")
    if not parts:
        return f"No table of the report reads experiment `{experiment}`; its runs are in the panels below.\n"
    source = f"From the report stage (`{study.report_dir}`), rebuilt by `make dashboard`."
    return source + "\n\n" + "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The workspace views


def view_name(experiment: str) -> str:
    return f"prompt-harness: {experiment}"


def build_workspaces(study: Study, entity: str = "", project: str = "") -> list:
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    project = tracking.project_name(project)
    views = []
    for experiment in study.experiments:
        records = study.records_of(experiment)
        sections = [
            ws.Section(
                name=f"{experiment}: base, new and H by method config (report stage)",
                panels=[wr.MarkdownPanel(markdown=experiment_markdown(study, experiment))],
                is_open=True,
                layout_settings=ws.SectionLayoutSettings(columns=1, rows=1),
            ),
            ws.Section(
                name=f"{experiment}: accuracy per dataset by method config (mean ± std over seeds)",
                panels=accuracy_panels(records),
                is_open=True,
            ),
        ]
        if experiment == "fewshot":
            sections.append(
                ws.Section(name=f"{experiment}: accuracy against shots", panels=shots_panels(records), is_open=True)
            )
        if any(r.get("train_dataset") is not None for r in records):
            sections.append(
                ws.Section(
                    name=f"{experiment}: training curves by method config",
                    panels=curve_panels(),
                    is_open=True,
                    layout_settings=ws.SectionLayoutSettings(columns=2, rows=2),
                )
            )
        views.append(
            ws.Workspace(
                entity=entity,
                project=project,
                name=view_name(experiment),
                sections=sections,
                settings=ws.WorkspaceSettings(x_axis="Step", max_runs=100),
                runset_settings=ws.RunsetSettings(
                    filters=experiment_filter(experiment),
                    pinned_columns=runs_table_columns(records),
                    order=[ws.Ordering(ws.Config("job"), ascending=True)],
                ),
            )
        )
    return views


# ---------------------------------------------------------------------------------------------
# The report


def report_title(study: Study) -> str:
    return "prompt-harness: " + ", ".join(study.experiments)


def build_report(study: Study, entity: str = "", project: str = ""):
    import wandb_workspaces.reports.v2 as wr

    from harness.report.tables import TABLE_KEYS

    project = tracking.project_name(project)
    order = list(TABLE_KEYS.values())
    blocks = [
        wr.P(
            f"Results store {study.results} ({len(study.records)} records), tables and figures of the report stage "
            f"({study.report_dir}). ± population std over seeds; † fewer seeds than expected; ‡ average over fewer "
            "datasets than expected; ≈ average within noise of the study's baseline (see Which differences are "
            "real); paper: each method's own paper or its authors' README (reports/paper); Δ = ours − paper."
        ),
        wr.TableOfContents(),
        wr.H1("Tables"),
    ]
    for key in sorted(study.tables, key=lambda k: order.index(k) if k in order else len(order)):
        table = study.tables[key]
        if table.empty:
            continue
        blocks += [wr.H2(table.title), wr.MarkdownBlock(text=table_markdown(table, study.with_paper))]
    compared = [c for c in study.comparisons.values() if c.comparisons]
    if compared:
        from harness.report.studies import comparison_markdown

        blocks.append(wr.H1("Which differences are real"))
        for c in compared:
            title, body = comparison_markdown(c).split("\n", 1)
            blocks += [wr.H2(title.lstrip("# ")), wr.MarkdownBlock(text=body.lstrip("\n"))]
    if study.efficiency:
        from harness.report.efficiency import markdown as efficiency_markdown

        blocks.append(wr.H1("Efficiency"))
        for experiment in ordered_experiments(study.efficiency):
            table = study.efficiency[experiment]
            blocks += [wr.H2(table.title), wr.MarkdownBlock(text=_body(efficiency_markdown(table)))]
    blocks += [wr.H1("Missing")]
    if study.missing:
        blocks.append(wr.MarkdownBlock(text="\n".join(f"* {m}" for m in study.missing) + "\n"))
    else:
        blocks.append(wr.P("Nothing: every cell has its expected seeds."))
    blocks.append(wr.H1("Figures"))
    if study.figures:
        blocks.append(
            wr.PanelGrid(
                runsets=[
                    wr.Runset(name="report stage", filters=f"Metric('ID') = {study.report_run['run_id']!r}"),
                ],
                panels=[wr.MediaBrowser(title=name, media_keys=[name]) for name in study.figures],
            )
        )
    else:
        pngs = sorted(f for f in os.listdir(study.report_dir) if f.endswith(".png"))
        blocks.append(
            wr.P(
                f"The figures are in the report folder ({', '.join(pngs) or 'none yet'}); they appear here when "
                "the report stage logs them to W&B (make report, TRACKING=auto, offline or online)."
            )
        )
    blocks.append(wr.H1("Experiments"))
    for experiment in study.experiments:
        records = study.records_of(experiment)
        panels = accuracy_panels(records)
        if any(r.get("train_dataset") is not None for r in records):
            panels += curve_panels()
        blocks += [
            wr.H2(experiment),
            wr.PanelGrid(
                runsets=[
                    wr.Runset(
                        name=experiment,
                        filters=experiment_filter(experiment),
                        pinned_columns=runs_table_columns(records),
                    )
                ],
                panels=panels,
            ),
        ]
    return wr.Report(
        project=project,
        entity=entity,
        title=report_title(study)[:128],
        description=f"{', '.join(method_labels(study)) or 'Prompt-learning methods for CLIP'} re-implemented; "
        "built by python -m harness.dashboard.",
        blocks=blocks,
        width="fluid",
    )


# ---------------------------------------------------------------------------------------------
# Specifications on disk, publishing, the index


def to_specs(workspaces: list, report) -> tuple[dict, dict]:
    """The library's own models, as JSON-ready dicts (what W&B stores for a view and a report)."""
    views = [w._to_model().model_dump(by_alias=True, exclude_none=True, mode="json") for w in workspaces]
    return {"views": views}, report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def load_specs(folder: str) -> tuple[list, object]:
    """(workspaces, report) as library objects, from the JSON written by ``write_specs``."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.reports.v2 import internal as report_models
    from wandb_workspaces.workspaces import internal as workspace_models

    with open(os.path.join(folder, WORKSPACE_FILE)) as f:
        views = json.load(f)["views"]
    with open(os.path.join(folder, REPORT_FILE)) as f:
        report = json.load(f)
    workspaces = [ws.Workspace._from_model(workspace_models.View.model_validate(v)) for v in views]
    loaded = wr.Report._from_model(report_models.ReportViewspec.model_validate(report))
    loaded.width = report["spec"].get("width", loaded.width)  # _from_model (0.4.13) drops the width
    return workspaces, loaded


def _sync_command(results: str) -> str:
    from harness.results import results_path

    out = os.path.dirname(results_path(results)) or "."
    return f"find {out} -type d -name 'offline-run-*' -exec wandb sync {{}} +"


def write_specs(study: Study, workspaces: list, report, mode: str) -> dict:
    folder = spec_dir(study.report_dir)
    os.makedirs(folder, exist_ok=True)
    views, report_spec = to_specs(workspaces, report)
    paths = {"workspace": os.path.join(folder, WORKSPACE_FILE), "report": os.path.join(folder, REPORT_FILE)}
    for key, data in (("workspace", views), ("report", report_spec)):
        with open(paths[key] + ".tmp", "w") as f:
            json.dump(data, f, indent=1)  # key order kept: the runs table's column order is a dict's
        os.replace(paths[key] + ".tmp", paths[key])
    project = workspaces[0].project if workspaces else report.project
    entity = report.entity
    note = [
        "# Publishing the W&B dashboard",
        "",
        f"Built {datetime.datetime.now().isoformat(timespec='seconds')} ({mode}) from `{study.results}` "
        f"({len(study.records)} records) and the tables in `{study.report_dir}`.",
        f"W&B project `{project}`, entity `{entity or 'your default entity'}`.",
        "",
        f"* `{WORKSPACE_FILE}`: {len(views['views'])} workspace view(s), one per experiment "
        f"({', '.join(study.experiments)}), each with its run set filtered to the experiment.",
        f"* `{REPORT_FILE}`: the W&B Report (Tables, missing entries, figures, a panel grid per experiment).",
        "",
        "To publish from a machine with network and a W&B key (`wandb login`):",
        "",
        "1. Upload the runs the panels read: the jobs' offline runs and the report stage's run (its figures).",
        "   From a cluster without network, copy the output folder (or only its `wandb/` folders) first.",
        "",
        "       " + _sync_command(study.results),
        "",
        "   (add `-p PROJECT -e ENTITY` to `wandb sync` to upload into another project or entity.)",
        "2. Publish the views and the report (prints their URLs and links them from index.md):",
        "",
        "       " + publish_command(folder) + (f" --project {project}" if project else ""),
        "",
        "Re-running `make dashboard` rebuilds these files from the results store and the report folder.",
        "",
    ]
    with open(os.path.join(folder, NOTE_FILE), "w") as f:
        f.write("\n".join(note))
    return paths


def write_manifest(report_dir: str, data: dict) -> str:
    folder = spec_dir(report_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, MANIFEST_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def update_index(report_dir: str) -> str | None:
    """Rewrite the "## Dashboard" section at the end of ``index.md`` (the report stage writes the rest)."""
    path = os.path.join(report_dir, "index.md")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read()
    cut = text.find("\n## Dashboard\n")
    if cut >= 0:
        text = text[: cut + 1]
    section = index_section(report_dir)
    if section:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section)
    with open(path, "w") as f:
        f.write(text)
    return path


def _ensure_project(api, entity: str, project: str) -> None:
    try:
        api.project(project, entity=entity).id  # noqa: B018 (raises when it does not exist)
    except Exception:
        api.create_project(project, entity)


def publish(folder: str, entity: str | None = None, project: str | None = None) -> dict:
    """Save the views and the report of ``folder`` to W&B (needs network and a key); returns URLs."""
    import wandb
    from wandb_workspaces.reports.v2 import PanelGrid

    workspaces, report = load_specs(folder)
    manifest = read_manifest(os.path.dirname(os.path.abspath(folder))) or {}
    api = wandb.Api()
    entity = entity or os.environ.get("WANDB_ENTITY") or report.entity or api.default_entity
    project = project or report.project or tracking.project_name()
    _ensure_project(api, entity, project)
    saved = manifest.get("saved") or {}
    urls = {"views": {}}
    for w, experiment in zip(workspaces, manifest.get("experiments") or [w.name for w in workspaces]):
        w.entity, w.project = entity, project
        previous = (saved.get("views") or {}).get(experiment)
        if previous and previous.get("entity") == entity and previous.get("project") == project:
            w._internal_name, w._internal_id = previous["name"], previous["id"]  # update the same view
        w.save()
        urls["views"][experiment] = w.url
        saved.setdefault("views", {})[experiment] = {
            "name": w._internal_name,
            "id": w._internal_id,
            "entity": entity,
            "project": project,
        }
    report.entity, report.project = entity, project
    for block in report.blocks:
        if isinstance(block, PanelGrid):
            for runset in block.runsets:
                runset.entity, runset.project = entity, project
    previous = saved.get("report")
    if previous and previous.get("entity") == entity and previous.get("project") == project:
        report.id = previous["id"]
    report.save()
    urls["report"] = report.url
    saved["report"] = {"id": report.id, "entity": entity, "project": project}
    return {"urls": urls, "saved": saved, "entity": entity, "project": project}


# ---------------------------------------------------------------------------------------------
# The command


def build(
    results,
    report_dir: str = "reports",
    project: str | None = None,
    entity: str | None = None,
    mode: str = "auto",
    experiments=None,
    expected_seeds=None,
    paper_dir=None,
    with_paper: bool = True,
    baseline: str | None = None,
) -> dict:
    """Build the views and the report, write their specifications, publish them when online.

    Returns {"mode", "paths", "urls", "manifest", "study"}."""
    resolved = resolve_mode(mode)
    study = load_study(results, report_dir, experiments, expected_seeds, paper_dir, with_paper, baseline)
    project = tracking.project_name(project)
    entity = entity or os.environ.get("WANDB_ENTITY") or ""
    # Run sets stay without entity/project in the specifications (W&B resolves those online);
    # publishing fills them in.
    workspaces = build_workspaces(study, entity, project)
    report = build_report(study, entity, project)
    paths = write_specs(study, workspaces, report, resolved)
    manifest = {
        "built": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": resolved,
        "project": project,
        "entity": entity,
        "title": report.title,
        "experiments": study.experiments,
        "views": [w.name for w in workspaces],
        "results": study.results,
        "records": len(study.records),
        "tables_sha256": tables_digest(report_dir),
        "report_run": (study.report_run or {}).get("run_id"),
        "urls": {},
        "saved": (read_manifest(report_dir) or {}).get("saved") or {},
    }
    if resolved == "online":
        write_manifest(report_dir, manifest)  # publish reads the experiments and earlier saves from it
        published = publish(spec_dir(report_dir), entity or None, project)
        manifest.update(
            urls=published["urls"], saved=published["saved"], entity=published["entity"], project=published["project"]
        )
    write_manifest(report_dir, manifest)
    update_index(report_dir)
    return {"mode": resolved, "paths": paths, "urls": manifest["urls"], "manifest": manifest, "study": study}


def resolve_mode(mode: str) -> str:
    """auto | online | offline -> online | offline, as ``harness.tracking.resolve_mode`` decides."""
    if mode not in ("auto", "online", "offline"):
        raise DashboardError(f"--mode must be auto, online or offline, got {mode!r}")
    resolved = tracking.resolve_mode(mode)
    return "online" if resolved == "online" else "offline"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.dashboard",
        description="The study's W&B workspace views and report, from the results store and the report folder.",
    )
    parser.add_argument("--results", help="results folder or its results.jsonl (what `make report` read)")
    parser.add_argument("--report-dir", default="reports", help="the report stage's folder (default: reports)")
    parser.add_argument("--project", default=None, help="W&B project (default: $WANDB_PROJECT or prompt-harness)")
    parser.add_argument("--entity", default=None, help="W&B entity (default: $WANDB_ENTITY or your default)")
    parser.add_argument(
        "--mode",
        default="auto",
        choices=("auto", "online", "offline"),
        help="auto: online when W&B is (WANDB_MODE, else a key); offline writes the specifications only",
    )
    parser.add_argument("--experiment", nargs="+", default=None, metavar="NAME", help="as for harness.report")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="as for harness.report")
    parser.add_argument("--paper-dir", default=None, help="as for harness.report")
    parser.add_argument("--no-paper", action="store_true", help="as for harness.report")
    parser.add_argument("--baseline", default=None, metavar="METHOD", help="as for harness.report")
    parser.add_argument(
        "--publish", default=None, metavar="DIR", help="publish the specifications in DIR (e.g. reports/wandb)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        if args.publish:
            if resolve_mode(args.mode) != "online":
                raise DashboardError(
                    "publishing needs W&B online: log in (wandb login, or WANDB_API_KEY) on a machine with network, "
                    "and unset WANDB_MODE=offline."
                )
            report_dir = os.path.dirname(os.path.abspath(args.publish))
            published = publish(args.publish, args.entity, args.project)
            manifest = read_manifest(report_dir) or {}
            manifest.update(
                urls=published["urls"],
                saved=published["saved"],
                entity=published["entity"],
                project=published["project"],
                mode="online",
            )
            write_manifest(report_dir, manifest)
            update_index(report_dir)
            _print_urls(published["urls"])
            return 0
        if not args.results:
            parser.error("--results is required (or --publish DIR)")
        out = build(
            args.results,
            args.report_dir,
            args.project,
            args.entity,
            args.mode,
            args.experiment,
            args.seeds,
            args.paper_dir,
            not args.no_paper,
            args.baseline,
        )
    except DashboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    study = out["study"]
    print(
        f"{len(out['manifest']['views'])} workspace views ({', '.join(study.experiments)}) and a report of "
        f"{sum(not t.empty for t in study.tables.values())} tables"
    )
    if out["mode"] == "online":
        _print_urls(out["urls"])
    else:
        folder = spec_dir(args.report_dir)
        print(f"W&B is offline: specifications written to {out['paths']['workspace']} and {out['paths']['report']}")
        print("to publish them later, on a machine with network and a W&B key:")
        print(f"  1. {_sync_command(study.results)}")
        print(f"  2. {publish_command(folder)}")
        print(f"(details: {os.path.join(folder, NOTE_FILE)})")
    return 0


def _print_urls(urls: dict) -> None:
    print(f"W&B Report: {urls.get('report')}")
    for experiment, url in (urls.get("views") or {}).items():
        print(f"workspace view {experiment}: {url}")


if __name__ == "__main__":
    sys.exit(main())
