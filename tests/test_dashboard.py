"""The W&B dashboard on a real tiny study: jobs run by the runner with W&B offline, the report stage
(logging its tables and figures to W&B offline), then ``python -m harness.dashboard`` offline. Every
check reads the runs back with W&B's own reader (``harness.tracking.read_offline_run``)."""

from __future__ import annotations

import hashlib
import json
import os

import pandas as pd
import pytest
from fake_data import make_synthetic_dataset
from PIL import Image

pytest.importorskip("wandb_workspaces")

import wandb_workspaces.reports.v2 as wr  # noqa: E402

from harness import dashboard, results, sweep, tracking  # noqa: E402
from harness.report import build_report, display_frame  # noqa: E402
from harness.runner import run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = {
    "protocol": "base2new",
    "datasets": ["synthetic"],
    "shots": 2,
    "backbone": "tiny",
    "precision": "fp32",
    "tracking": "auto",
    "run": {"num_workers": 0, "batch_size": 4, "test_batch_size": 50, "epochs": 2},
}
# Two experiments, as a sweep expands them: base2new (zero-shot CLIP; CoOp seeds 1 and 2, each a
# training job on base classes and an evaluation job on new and all classes) and ablations (CoOp
# with a random 4-token context, seed 1), which with base2new's CoOp makes Figure 4a.
EXPERIMENTS = [
    {
        **COMMON,
        "name": "base2new",
        "seeds": [1, 2],
        "class_incremental": True,
        "methods": {"zsclip": {"config": "zsclip/vit_b16"}, "coop": {"config": "coop/vit_b16_ctxv1"}},
    },
    {
        **COMMON,
        "name": "ablations",
        "seeds": [1],
        "methods": {"coop_c4_rand": {"config": "coop/vit_b16_ctxv1_c4_rand"}},
    },
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    data, out, reports = str(root / "data"), str(root / "out"), str(root / "reports")
    make_synthetic_dataset(data, num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_PROJECT", raising=False)
        mp.delenv("WANDB_ENTITY", raising=False)
        for experiment in EXPERIMENTS:
            for job in sweep.expand(experiment, data, out):
                run(job.spec)
        summary = build_report(out, out_dir=reports, tracking="offline")
        assert dashboard.main(["--results", out, "--report-dir", reports]) == 0
    runs = [tracking.read_offline_run(folder) for folder in tracking.offline_runs(out)]
    jobs = [r for r in runs if r.job_type in tracking.JOB_KINDS]
    (report_run,) = [r for r in runs if r.job_type == tracking.REPORT_JOB_TYPE]
    views, report = dashboard.load_specs(dashboard.spec_dir(reports))
    return {
        "out": out,
        "reports": reports,
        "records": results.read_records(out),
        "summary": summary,
        "jobs": jobs,
        "report_run": report_run,
        "all_runs": runs,
        "views": {v.name: v for v in views},
        "report": report,
    }


# -- run-set filters, evaluated on the runs as W&B stores them -------------------------------------

RUN_FIELDS = {"name": "run_id", "displayName": "name", "jobType": "job_type", "group": "group"}


def _value(run: tracking.OfflineRun, key: dict):
    section, name = key["section"], key["name"]
    if section == "config":
        return run.config.get(name)
    if section == "summary":
        return run.summary.get(name)
    if section == "run" and name == "tags":
        return run.tags
    if section == "run" and name in RUN_FIELDS:
        return getattr(run, RUN_FIELDS[name])
    raise AssertionError(f"filter key {key} not handled by this test")


def selects(filters: dict, run: tracking.OfflineRun) -> bool:
    """W&B's v2 run filter (a flat list of leaves, all of which must hold) on one run."""
    assert filters.get("filterFormat") == "filterV2", filters
    for leaf in filters["filters"]:
        assert set(leaf) <= {"key", "op", "value", "disabled"}, f"nested filter groups not handled: {leaf}"
        if leaf.get("disabled"):
            continue
        value = _value(run, leaf["key"])
        op, wanted = leaf["op"], leaf["value"]
        if op == "=":
            ok = value == wanted
        elif op == "!=":
            ok = value != wanted
        elif op == "IN":
            ok = value in wanted
        elif op == "NIN":
            ok = value not in wanted
        else:
            raise AssertionError(f"filter operator {op} not handled by this test")
        if not ok:
            return False
    return True


def runsets(study) -> list[tuple[str, dict]]:
    """(where, v2 filter) of every run set: each workspace view's and each report panel grid's."""
    out = []
    for name, view in study["views"].items():
        out.append((f"view {name}", view._to_model().spec.section.run_sets[0].filters))
    for block in study["report"].blocks:
        if isinstance(block, wr.PanelGrid):
            for rs in block.runsets:
                out.append((f"report run set {rs.name}", rs._to_model().filters))
    return out


def test_each_run_set_selects_exactly_its_experiments_runs(study):
    jobs_of = {}
    for record in study["records"]:
        jobs_of.setdefault(record["experiment"], set()).add(record["job"])
    assert set(jobs_of) == {"base2new", "ablations"} and len(study["jobs"]) == 7
    assert {r.name for r in study["jobs"]} == set().union(*jobs_of.values())  # one W&B run per job
    seen = set()
    for where, filters in runsets(study):
        chosen = {r.name for r in study["all_runs"] if selects(filters, r)}
        if where == "report run set report stage":
            assert chosen == {study["report_run"].name}
            continue
        experiment = where.split()[-1]
        assert chosen == jobs_of[experiment], where
        seen.add(experiment)
    assert seen == {"base2new", "ablations"}
    assert set(study["views"]) == {"prompt-harness: base2new", "prompt-harness: ablations"}


# -- every key a panel reads ----------------------------------------------------------------------


def _name(metric) -> str:
    """A panel's metric as its key (the library gives a str or a ``Metric``)."""
    return metric if isinstance(metric, str) else metric.name


def _check_panels(panels, chosen, records_by_job, report_run) -> int:
    checked = 0
    for panel in panels:
        if isinstance(panel, wr.BarPlot):
            assert panel.groupby == wr.Config("method_config")
            for key in map(_name, panel.metrics):
                _, dataset, subsample, metric = key.split("/")
                assert metric == "accuracy"
                having = {r.name for r in chosen if key in r.summary}
                expected = {
                    r.name
                    for r in chosen
                    if any((x["dataset"], x["subsample"]) == (dataset, subsample) for x in records_by_job[r.name])
                }
                assert having == expected and having, key
                for r in chosen:
                    if key in r.summary:
                        (rec,) = [
                            x for x in records_by_job[r.name] if (x["dataset"], x["subsample"]) == (dataset, subsample)
                        ]
                        assert r.summary[key] == rec["metrics"]["accuracy"]
                checked += 1
        elif isinstance(panel, wr.LinePlot):
            assert panel.groupby == wr.Config("method_config")
            trained = [r for r in chosen if r.job_type == "train"]
            assert trained
            for r in chosen:
                (y,) = map(_name, panel.y)
                rows = [row for row in r.history if y in row]
                assert bool(rows) == (r.job_type == "train"), (r.name, y)
                x = "_step" if _name(panel.x) == "Step" else _name(panel.x)
                assert all(x in row for row in rows), (r.name, x)
            checked += 1
        elif isinstance(panel, wr.MediaBrowser):
            (key,) = panel.media_keys
            assert report_run.summary[key]["_type"] == "image-file"
            checked += 1
        else:
            assert isinstance(panel, wr.MarkdownPanel), type(panel)
    return checked


def _check_columns(columns, chosen, records_by_job):
    for column in columns:
        section, name = column.split(":", 1)
        if section == "config":
            key = name.removesuffix(".value")
            assert all(key in r.config for r in chosen), column
        elif section == "summary":
            subsample = name.split("/")[1]
            having = {r.name for r in chosen if name in r.summary}
            own = {
                r.name
                for r in chosen
                if any(
                    x["subsample"] == subsample and x["dataset"] == r.config["dataset"] for x in records_by_job[r.name]
                )
            }
            assert having == own and having, column
        else:
            assert column == "run:displayName"


def test_every_key_a_panel_reads_is_in_the_runs(study):
    records_by_job = {}
    for record in study["records"]:
        records_by_job.setdefault(record["job"], []).append(record)
    for r in study["jobs"]:  # the grouping and runs-table keys, with the records' values
        rec = records_by_job[r.name][0]
        assert r.config["method_config"] == rec["config"] and r.config["experiment"] == rec["experiment"]
        assert (r.config["method"], r.config["backbone"], r.config["precision"]) == (
            rec["method"],
            rec["backbone"],
            rec["precision"],
        )
        assert r.config["job_kind"] == r.job_type and r.group == rec["experiment"]
    checked = 0
    for name, view in study["views"].items():
        experiment = name.split(": ")[1]
        chosen = [r for r in study["jobs"] if r.config["experiment"] == experiment]
        _check_columns(view.runset_settings.pinned_columns, chosen, records_by_job)
        for section in view.sections:
            checked += _check_panels(section.panels, chosen, records_by_job, study["report_run"])
        assert [s.name.split(": ")[1] for s in view.sections] == [
            "base, new and H by method config (report stage)",
            "accuracy per dataset by method config (mean ± std over seeds)",
            "training curves by method config",
        ]
    for block in study["report"].blocks:
        if isinstance(block, wr.PanelGrid):
            chosen = [r for r in study["all_runs"] if selects(block.runsets[0]._to_model().filters, r)]
            checked += _check_panels(block.panels, chosen, records_by_job, study["report_run"])
            if block.runsets[0].pinned_columns:
                _check_columns(block.runsets[0].pinned_columns, chosen, records_by_job)
    assert checked >= 2 * (1 + 4) * 2 + 2  # bars and curves of two views and two grids, two figures


# -- the report's numbers are the report stage's ----------------------------------------------------


def parse_markdown_tables(text: str) -> list[dict]:
    """Each Markdown table in ``text`` as {(first cell, header): cell}."""
    tables, lines = [], text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            cells = {}
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                row = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                for h, c in zip(header[1:], row[1:]):
                    cells[(row[0], h)] = c
                i += 1
            tables.append(cells)
        else:
            i += 1
    return tables


def expected_cells(csv_path: str) -> dict:
    """{(row label, column header): text} that the report folder's CSV says a table shows."""
    frame = pd.read_csv(csv_path, keep_default_na=False, dtype={"shown": str, "group": str, "row_label": str})
    single = frame["group"].nunique() == 1
    out = {}
    for _, line in frame.iterrows():
        head = line["metric"] if single else f"{line['group']} {line['metric']}"
        out[(line["row_label"], head)] = line["shown"]
        if line["paper"] != "":
            paper = float(line["paper"])
            out[(line["row_label"], head + " (paper)")] = f"{paper:.2f}"
            delta = float(line["delta"])
            out[(line["row_label"], head + " Δ")] = "0.00" if abs(delta) < 0.005 else f"{delta:+.2f}"
    return out


def test_report_tables_hold_the_report_folders_numbers(study):
    reports = study["reports"]
    blocks = study["report"].blocks
    shown = {}
    for i, block in enumerate(blocks):
        if isinstance(block, wr.H2) and i + 1 < len(blocks) and isinstance(blocks[i + 1], wr.MarkdownBlock):
            (cells,) = parse_markdown_tables(blocks[i + 1].text)
            shown[block.text] = cells
    # the tables' CSVs (each figure's CSV holds the numbers it draws)
    # (the efficiency tables have a test of their own)
    efficiency = {v["table"].title for v in study["summary"]["efficiency"].values()}
    assert sorted(efficiency) == [
        "Efficiency of ablations: what each method costs",
        "Efficiency of base2new: what each method costs",
    ]
    written = sorted(
        f[:-4] for f in os.listdir(reports) if f.endswith(".csv") and not f.startswith(("figure", "efficiency_"))
    )
    assert written == ["fig4a_init_ablation", "table1_base2new", "table4_class_incremental"]
    titles = {k: v["table"].title for k, v in study["summary"]["tables"].items()}
    assert sorted(set(shown) - efficiency) == sorted(titles[k] for k in written)
    for key in written:
        expected = expected_cells(os.path.join(reports, f"{key}.csv"))
        assert shown[titles[key]] == expected, key
    # The numbers themselves come from the results store: CoOp's base cell of Table 1 is the mean of
    # its two seeds' records, as the report stage computed it.
    coop_base = [
        r["metrics"]["accuracy"]
        for r in study["records"]
        if (r["experiment"], r["method"], r["subsample"]) == ("base2new", "coop", "base")
    ]
    assert len(coop_base) == 2
    mean, std = sum(coop_base) / 2, abs(coop_base[0] - coop_base[1]) / 2
    assert shown[titles["table1_base2new"]][("synthetic", "CoOp Base")] == f"{mean:.2f} ± {std:.2f}"


def test_report_shows_the_papers_values_beside_ours(tmp_path):
    """On the paper's datasets (records holding the paper's own Table 1 numbers), the W&B report and
    the base2new view carry the paper and Δ columns exactly as the report folder does."""
    from test_report import paper_rows, record, write

    recs = []
    for row in paper_rows("base2new.csv"):
        if row["dataset"] != "average":
            recs.append(record(row["method"], row["dataset"], "base", float(row["base"])))
            recs.append(record(row["method"], row["dataset"], "new", float(row["new"])))
    out, reports = write(tmp_path / "out", recs), str(tmp_path / "reports")
    build_report(out, out_dir=reports)
    study = dashboard.load_study(out, reports)
    report = dashboard.build_report(study)
    (view,) = dashboard.build_workspaces(study)
    expected = expected_cells(os.path.join(reports, "table1_base2new.csv"))
    assert ("Average", "CoCoOp H (paper)") in expected and expected[("Average", "CoCoOp H Δ")] == "0.00"
    i = next(i for i, b in enumerate(report.blocks) if isinstance(b, wr.H2) and b.text.startswith("Table 1"))
    assert parse_markdown_tables(report.blocks[i + 1].text) == [expected]
    assert parse_markdown_tables(view.sections[0].panels[0].markdown) == [expected]


def test_workspace_views_show_each_experiments_tables(study):
    reports = study["reports"]
    expected = {
        "base2new": ["table1_base2new", "table4_class_incremental"],
        "ablations": ["fig4a_init_ablation"],
    }
    for experiment, keys in expected.items():
        view = study["views"][f"prompt-harness: {experiment}"]
        (panel,) = view.sections[0].panels
        tables = parse_markdown_tables(panel.markdown)
        assert len(tables) == len(keys)
        for cells, key in zip(tables, keys):
            assert cells == expected_cells(os.path.join(reports, f"{key}.csv")), (experiment, key)


def test_report_stage_logs_its_tables_and_figures_to_wandb(study):
    """log_table / log_image for real: the report run's files hold the tables' rows and the PNGs."""
    run_ = study["report_run"]
    summary = study["summary"]
    assert run_.config == {"results": study["out"], "out_dir": study["reports"]} and run_.exit_code == 0
    logged_tables = [k for k, v in run_.summary.items() if isinstance(v, dict) and v.get("_type") == "table-file"]
    frames = {k: display_frame(v["table"]) for k, v in summary["tables"].items() if v["paths"]}
    frames.update({v["table"].key: v["frame"] for v in summary["efficiency"].values()})
    from harness.report.studies import comparison_csv_frame

    frames.update({f"comparison_{e}": comparison_csv_frame(s) for e, s in summary["studies"].items() if s.comparisons})
    assert sorted(logged_tables) == sorted(frames) and any(k.startswith("efficiency_") for k in frames)
    for key in logged_tables:
        entry = run_.summary[key]
        path = os.path.join(run_.files_dir, entry["path"])
        with open(path, "rb") as f:
            blob = f.read()
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
        table = json.loads(blob)
        frame = frames[key]
        assert table["columns"] == list(frame.columns)
        assert table["data"] == frame.values.tolist()
        assert (entry["nrows"], entry["ncols"]) == frame.shape
    images = {k: v for k, v in run_.summary.items() if isinstance(v, dict) and v.get("_type") == "image-file"}
    assert sorted(images) == sorted(summary["figures"]) == ["figure4", "figure_cost_vs_h", "methods", "scatter"]
    for name, entry in images.items():
        png = summary["figures"][name]["png"]
        stored = os.path.join(run_.files_dir, entry["path"])
        with open(stored, "rb") as f, open(png, "rb") as g:
            data = f.read()
            assert data == g.read()  # the same bytes as the report folder's figure
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert Image.open(stored).size == (entry["width"], entry["height"])
    # The report stage names its run for the dashboard, which shows the figures from it.
    with open(os.path.join(study["reports"], "wandb", "report_run.json")) as f:
        info = json.load(f)
    assert info["run_id"] == run_.run_id
    grid = next(b for b in study["report"].blocks if isinstance(b, wr.PanelGrid))
    assert [p.media_keys for p in grid.panels] == [["figure4"], ["figure_cost_vs_h"], ["methods"], ["scatter"]]


# -- offline path: specifications, note, index ----------------------------------------------------


def test_offline_dashboard_writes_specs_a_publish_note_and_links_them(study):
    reports = study["reports"]
    folder = dashboard.spec_dir(reports)
    # The files are the library's own models: loaded and dumped again, they are unchanged (what
    # --publish sends is exactly what was written).
    views, report = dashboard.load_specs(folder)
    again_views, again_report = dashboard.to_specs(views, report)
    with open(os.path.join(folder, "workspace.json")) as f:
        assert json.load(f) == again_views
    with open(os.path.join(folder, "report.json")) as f:
        assert json.load(f) == again_report
    with open(os.path.join(folder, "dashboard.json")) as f:
        manifest = json.load(f)
    assert manifest["mode"] == "offline" and manifest["urls"] == {} and manifest["project"] == "prompt-harness"
    assert manifest["experiments"] == ["base2new", "ablations"]
    with open(os.path.join(folder, "PUBLISH.md")) as f:
        note = f.read()
    assert f"find {study['out']} -type d -name 'offline-run-*' -exec wandb sync {{}} +" in note
    assert f"python -m harness.dashboard --publish {folder}" in note
    with open(os.path.join(reports, "index.md")) as f:
        index = f.read()
    assert "## Dashboard" in index and "(wandb/workspace.json)" in index and "(wandb/report.json)" in index
    assert "earlier report" not in index


def test_dashboard_refuses_a_report_folder_that_differs_from_the_results(study, tmp_path, capsys):
    stale = tmp_path / "reports"
    stale.mkdir()
    for name in os.listdir(study["reports"]):
        if name.endswith(".csv"):
            text = open(os.path.join(study["reports"], name)).read()
            if name.startswith("table1"):
                assert "50.0" in text
                text = text.replace("50.0", "51.0")
            (stale / name).write_text(text)
    code = dashboard.main(["--results", study["out"], "--report-dir", str(stale), "--mode", "offline"])
    assert code == 1 and "table1_base2new.csv differs" in capsys.readouterr().err
    assert not (stale / "wandb").exists()


def test_index_says_when_the_dashboard_is_older_than_the_report(study, tmp_path):
    import shutil

    reports = tmp_path / "reports"
    shutil.copytree(study["reports"], reports)
    assert "earlier report" not in "\n".join(dashboard.index_section(str(reports)))
    with open(reports / "table1_base2new.csv", "a") as f:
        f.write("\n")  # a newer report stage output
    assert "built from an earlier report" in "\n".join(dashboard.index_section(str(reports)))


def test_publish_fills_entity_and_project_and_links_the_urls(study, tmp_path, monkeypatch):
    """The network part of publishing (W&B's save calls) is replaced; everything around it runs."""
    import shutil

    import wandb
    import wandb_workspaces.workspaces as ws

    reports = tmp_path / "reports"
    shutil.copytree(study["reports"], reports)
    saved = {"views": [], "report": []}

    def save_view(self):
        saved["views"].append((self.entity, self.project, self.name))
        self._internal_name, self._internal_id = f"v{len(saved['views'])}", f"id{len(saved['views'])}"
        return self

    def save_report(self, draft=False, clone=False):
        runsets = [(rs.entity, rs.project) for b in self.blocks if isinstance(b, wr.PanelGrid) for rs in b.runsets]
        saved["report"].append((self.entity, self.project, runsets))
        self.id = "r1"
        return self

    class FakeApi:
        default_entity = "me"

        def project(self, name, entity=None):
            return type("P", (), {"id": "p"})()

    monkeypatch.setattr(ws.Workspace, "save", save_view)
    monkeypatch.setattr(ws.Workspace, "url", property(lambda self: f"https://w/{self._internal_name}"))
    monkeypatch.setattr(wr.Report, "save", save_report)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://r/{self.id}"))
    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = str(reports / "wandb")
    assert dashboard.main(["--publish", folder]) == 1  # offline: refuses, nothing saved
    assert saved == {"views": [], "report": []}
    monkeypatch.setenv("WANDB_MODE", "online")
    assert dashboard.main(["--publish", folder, "--entity", "team", "--project", "study"]) == 0
    assert saved["views"] == [
        ("team", "study", "prompt-harness: base2new"),
        ("team", "study", "prompt-harness: ablations"),
    ]
    ((entity, project, grid_runsets),) = saved["report"]
    assert (entity, project) == ("team", "study") and set(grid_runsets) == {("team", "study")}
    with open(reports / "wandb" / "dashboard.json") as f:
        manifest = json.load(f)
    assert manifest["urls"] == {
        "report": "https://r/r1",
        "views": {"base2new": "https://w/v1", "ablations": "https://w/v2"},
    }
    index = (reports / "index.md").read_text()
    assert "* W&B Report: [prompt-harness: base2new, ablations](https://r/r1)" in index
    assert "not published yet" not in index


def test_the_documentation_names_every_stable_key():
    with open(os.path.join(ROOT, "docs", "reports.md")) as f:  # "Tracking and results"
        readme = f.read()
    names = [
        tracking.TRAIN_LOSS,
        tracking.TRAIN_LR,
        tracking.EPOCH,
        tracking.EPOCH_LOSS,
        tracking.EPOCH_TRAIN_ACCURACY,
        tracking.EPOCH_LR,
        tracking.eval_key("<dataset>", "<subsample>"),
        tracking.eval_key("<dataset>", "<subsample>", "macro_f1"),
        tracking.accuracy_key("<subsample>"),
        *tracking.TABLE_CONFIG_KEYS,
        "experiment",
    ]
    for name in names:
        assert f"`{name}`" in readme, name


def test_report_shows_each_studys_comparison_as_the_report_folder_wrote_it(tmp_path):
    """The W&B report's comparison is the report folder's comparison_<experiment>.csv, row for row."""
    from test_report import write
    from test_studies import base2new_records, expectation

    out = write(tmp_path / "out", base2new_records())
    expectation(out, "base2new", "cocoop")
    reports = str(tmp_path / "reports")
    build_report(out, out_dir=reports)
    report = dashboard.build_report(dashboard.load_study(out, reports))
    i = next(i for i, b in enumerate(report.blocks) if isinstance(b, wr.H2) and b.text.startswith("Comparison with"))
    assert report.blocks[i].text == "Comparison with cocoop: base2new"
    shown = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in report.blocks[i + 1].text.split("\n")
        if line.startswith("| ")
    ]
    written = pd.read_csv(os.path.join(reports, "comparison_base2new.csv"), keep_default_na=False)
    assert shown[0] == list(written.columns)
    assert [r[:5] for r in shown[1:]] == [[str(v) for v in row[:5]] for row in written.itertuples(index=False)]
    assert [r[9] for r in shown[1:]] == list(written["verdict"])
    assert [float(r[5]) for r in shown[1:]] == pytest.approx(list(written["mean_delta"]), abs=0.005)
    # a report folder made with another baseline is refused, not shown beside other numbers
    with pytest.raises(dashboard.DashboardError, match="comparison_base2new.csv"):
        dashboard.load_study(out, reports, baseline="coop")


def test_report_shows_each_studys_efficiency_table_as_the_report_folder_does(tmp_path):
    from test_efficiency import study
    from test_report import write

    recs, times = study()
    out, reports = write(tmp_path / "out", recs), str(tmp_path / "reports")
    summary = build_report(out, out_dir=reports)
    report = dashboard.build_report(dashboard.load_study(out, reports))
    title = summary["efficiency"]["base2new"]["table"].title
    i = next(i for i, b in enumerate(report.blocks) if isinstance(b, wr.H2) and b.text == title)
    assert isinstance(report.blocks[i - 1], wr.H1) and report.blocks[i - 1].text == "Efficiency"
    (shown,) = parse_markdown_tables(report.blocks[i + 1].text)
    with open(summary["efficiency"]["base2new"]["paths"]["md"]) as f:
        assert [shown] == parse_markdown_tables(f.read())
    median = sorted(times["coop"])[2:4]
    assert shown[("coop", "train_s_median")] == f"{sum(median) / 2:.1f}"
    # A report folder whose efficiency table is not the results store's is refused.
    path = summary["efficiency"]["base2new"]["paths"]["csv"]
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace(f"{sum(median) / 2}", "1.0"))
    with pytest.raises(dashboard.DashboardError, match="efficiency_base2new.csv is not the results store's"):
        dashboard.load_study(out, reports)
