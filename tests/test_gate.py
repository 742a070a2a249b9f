"""The report's one gate from records to cells: stores that mix settings, backbones, datasets and shot
counts, and what no cell, Average or curve may do with them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_report import expect as expect_base2new
from test_report import record as base_new_record
from test_report import write

from harness.fingerprint import fingerprint_of
from harness.report import AVERAGE, build_report, build_tables
from harness.report.tables import Cell, dataset_label

SEEDS = (1, 2, 3)


def fewshot(method, dataset, shots, seed, accuracy, timestamp="2024-01-01T00:00:00", config=None, **settings):
    """A few-shot study's record with its settings and fingerprint (``settings``: the run keys it was run with)."""
    learned = method != "zsclip"
    run = {"method": method, "dataset": dataset, "backbone": settings.pop("backbone", "tiny"), "data": f"d-{dataset}"}
    if learned:
        run.update(subsample="all", shots=shots, seed=seed, **settings)
    return {
        "experiment": "fewshot",
        "job": f"fewshot/{method}/{dataset}/{shots}shot/seed{seed}",
        "method": method,
        "config": config or f"{method}/default",
        "train_dataset": dataset if learned else None,
        "train_subsample": "all" if learned else None,
        "shots": shots if learned else 0,
        "seed": seed if learned else None,
        "backbone": run["backbone"],
        "precision": "fp32",
        "epochs": run.get("epochs", 10) if learned else 0,
        "dataset": dataset,
        "subsample": "all",
        "options": dict(run.get("options") or {}),
        "metrics": {"accuracy": accuracy},
        "settings": run,
        "fingerprint": fingerprint_of(run),
        "timestamp": timestamp,
        "wall_time_s": 1.0,
        "git_commit": "test",
        "versions": {},
        "run_dir": "/tmp/x",
        "reevaluated": False,
    }


def expect(store, datasets, shots=(1, 2, 4), seeds=SEEDS, ran=None):
    """The sweeps' expected.json beside the store, as ``harness.sweep`` writes it."""
    from harness import sweep

    full = {"name": "fewshot", "protocol": "fewshot", "datasets": list(datasets), "shots": list(shots)}
    full.update(seeds=list(seeds), methods={"zsclip": {}, "coop": {}})
    sweep.record_expectation(store, {**full, **(ran or {})}, full)


def tables_of(report):
    return {k: v["table"] for k, v in report["tables"].items()}


# -- a few-shot cell holds one settings run ---------------------------------------------------------


def test_a_fewshot_cell_never_averages_two_settings_runs(tmp_path):
    """CoOp at 1 shot on mini_a: seeds 1-2 with n_ctx 16, batch 32, 2 epochs (one config), then seed 3 as a
    fill-in with n_ctx 4, batch 8, 5 epochs (another config). The cell is the newer run's seed alone,
    marked †(1/3), and the older run is named in the table's notes."""
    old = {"options": {"n_ctx": 16}, "batch_size": 32, "epochs": 2}
    new = {"options": {"n_ctx": 4}, "batch_size": 8, "epochs": 5}
    recs = [fewshot("coop", "mini_a", 1, s, 60.0 + s, config="coop/ctx16", **old) for s in (1, 2)]
    recs.append(fewshot("coop", "mini_a", 1, 3, 40.0, "2024-01-02T00:00:00", config="coop/ctx4", **new))
    recs.append(fewshot("zsclip", "mini_a", 0, None, 30.0))
    table = build_tables(recs, with_paper=False)["fewshot_1shot"]
    cell = table.cell("mini_a", table.group_for("coop"), "acc")
    assert (cell.mean, cell.n, cell.note) == (40.0, 1, "†(1/3 seeds)")  # never 54.00 ± 9.93 of two runs
    (note,) = [n for n in table.notes if n.startswith("Superseded")]
    assert "2 record(s) of coop (coop/ctx16, fewshot)" in note and "batch_size 32, epochs 2" in note


# -- a few-shot Average: expected datasets, shot counts, settings, one dataset set per curve --------------


@pytest.mark.parametrize(
    "seeds, coop_note",
    [(SEEDS, "‡(1/3 datasets)"), ((1,), "†‡(1/3 datasets, fewer seeds than expected)")],
)
def test_fewshot_average_is_over_the_expected_datasets(tmp_path, seeds, coop_note):
    """One of three expected datasets run (with every seed, or SEEDS=1 of three): the Average says
    1 of 3, never 1 of 1; the other two datasets are rows without cells."""
    recs = [fewshot("coop", "mini_a", 1, s, 50.0 + s) for s in seeds] + [fewshot("zsclip", "mini_a", 0, None, 30.0)]
    store = write(tmp_path / "out", recs)
    expect(store, ["mini_a", "mini_b", "mini_c"], shots=(1,))
    report = build_report(store, out_dir=str(tmp_path / "r"), with_paper=False)
    table = tables_of(report)["fewshot_1shot"]
    assert [row for row, _ in table.rows] == ["mini_a", "mini_b", "mini_c", AVERAGE]
    assert table.cell(AVERAGE, table.group_for("zsclip"), "acc").note == "‡(1/3 datasets)"
    assert table.cell(AVERAGE, table.group_for("coop"), "acc").note == coop_note
    assert any("coop" in m.lower() and "mini_b" in m for m in report["missing"])


def test_fewshot_shot_counts_expected_but_never_run_are_listed_as_missing(tmp_path):
    recs = [fewshot("coop", "mini_a", k, s, 50.0 + k + s) for k in (1, 2) for s in SEEDS]
    store = write(tmp_path / "out", recs + [fewshot("zsclip", "mini_a", 0, None, 30.0)])
    expect(store, ["mini_a"], shots=(1, 2, 4, 8))
    report = build_report(store, out_dir=str(tmp_path / "r"), with_paper=False)
    assert sorted(k for k in report["tables"] if k.startswith("fewshot_")) == ["fewshot_1shot", "fewshot_2shot"]
    never = [m for m in report["missing"] if "shots expected" in m]
    assert never == [
        "Few-shot classification: 4 shots expected, no records",
        "Few-shot classification: 8 shots expected, no records",
    ]


def test_fewshot_average_over_datasets_run_at_different_set_values_is_marked(tmp_path):
    """CoOp at 4 shots, one config, on mini_a with --set epochs=2 and on mini_b at its 10 epochs: no re-run,
    yet the Average mixes settings: § and a note naming both."""
    recs = [fewshot("coop", "mini_a", 4, s, 50.0 + s, epochs=2) for s in SEEDS]
    recs += [fewshot("coop", "mini_b", 4, s, 60.0 + s, epochs=10) for s in SEEDS]
    table = build_tables(recs, with_paper=False)["fewshot_4shot"]
    average = table.cell(AVERAGE, table.group_for("coop"), "acc")
    assert average.note == "§(mixed settings)" and average.paper is None
    (note,) = [n for n in table.notes if n.startswith("§")]
    assert "epochs 2 on mini_a" in note and "epochs 10 on mini_b" in note


def split_store():
    """1 and 2 shots run on mini_a, 4 shots on mini_b (two sweeps into one store); zero-shot CLIP only
    with the first."""
    recs = [fewshot("coop", "mini_a", k, s, 40.0 + 5 * k + s) for k in (1, 2) for s in SEEDS]
    recs += [fewshot("coop", "mini_b", 4, s, 80.0 + s) for s in SEEDS]
    return recs + [fewshot("zsclip", "mini_a", 0, None, 30.0)]


def test_fewshot_averages_of_one_row_over_different_datasets_are_marked_and_named():
    """The 4-shot Average row: CLIP's over mini_a, CoOp's over mini_b. Each is marked ‡ and the table says
    which datasets each holds; no Average shown unmarked holds other datasets than another unmarked one."""
    tables = build_tables(split_store(), with_paper=False)
    for key in ("fewshot_1shot", "fewshot_2shot", "fewshot_4shot"):
        table = tables[key]
        averages = [table.cell(AVERAGE, g, "acc") for g in table.groups]
        assert all(c is not None and c.datasets for c in averages)
        assert len({c.datasets for c in averages if not c.note}) <= 1
        widest = max(len(c.datasets) for c in averages)
        assert all("‡" in c.note for c in averages if len(c.datasets) < widest or len(c.datasets) < 2)
    four = tables["fewshot_4shot"]
    (note,) = [n for n in four.notes if n.startswith("‡ The Averages")]
    assert "CLIP over mini_a" in note and "CoOp over mini_b" in note


def test_fewshot_figure_never_joins_averages_over_different_datasets(tmp_path, monkeypatch):
    """The Average panel: CoOp's 1- and 2-shot Averages (mini_a) are one line, its 4-shot Average (mini_b)
    another; no drawn line joins points of two dataset sets."""
    from harness.report import fewshot as fewshot_module

    figures = []
    save = fewshot_module._save
    monkeypatch.setattr(fewshot_module, "_save", lambda fig, *a: figures.append(fig) or save(fig, *a))
    report = build_report(split_store(), out_dir=str(tmp_path / "r"), with_paper=False)
    (fig,) = figures
    average_panel = next(ax for ax in fig.axes if ax.get_title() == "Average")
    table = {k: tables_of(report)[f"fewshot_{k}shot"] for k in (1, 2, 4)}
    coop = table[1].group_for("coop")
    datasets_at = {i + 1: table[k].cell(AVERAGE, coop, "acc").datasets for i, k in enumerate((1, 2, 4))}
    lines = [line for line in average_panel.get_lines() if len(line.get_xdata()) > 1]
    assert lines, "CoOp's 1- and 2-shot Averages are one line"
    for line in lines:
        assert len({datasets_at[int(x)] for x in line.get_xdata()}) == 1, line.get_xdata()
    assert {int(x) for line in lines for x in line.get_xdata()} == {1, 2}


def figure_of(store, tmp_path, monkeypatch):
    """(the few-shot figure, its CSV rows, the report) built from ``store``."""
    import csv

    from harness.report import fewshot as fewshot_module

    figures = []
    save = fewshot_module._save
    monkeypatch.setattr(fewshot_module, "_save", lambda fig, *a: figures.append(fig) or save(fig, *a))
    report = build_report(store, out_dir=str(tmp_path / "r"), with_paper=False)
    (fig,) = figures
    with open(report["figures"]["fewshot"]["csv"], newline="") as f:
        return fig, list(csv.DictReader(f)), report


def panel(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_comparable_points_is_the_widest_dataset_set_then_the_one_most_points_hold():
    from harness.report.gate import comparable_points
    from harness.report.tables import Cell

    cells = {"a": Cell(1.0, datasets=("x",)), "b": Cell(2.0, datasets=("y",)), "c": Cell(3.0, datasets=("y",))}
    assert comparable_points(cells) == (("y",), {"a": ("x",)})
    cells["d"] = Cell(4.0, datasets=("x", "z"))
    assert comparable_points(cells) == (("x", "z"), {"a": ("x",), "b": ("y",), "c": ("y",)})


def test_fewshot_figure_average_panel_draws_only_averages_over_one_dataset_set(tmp_path, monkeypatch):
    """CoOp at 1 and 2 shots on mini_a, at 4 on mini_b, zero-shot CLIP on mini_c alone: the Average panel
    draws CoOp's 1- and 2-shot Averages (the set most of its points hold), neither CLIP's star nor CoOp's
    4-shot point; the figure and its CSV say what was left out, over which datasets."""
    recs = [fewshot("coop", "mini_a", k, s, 40.0 + 5 * k + s) for k in (1, 2) for s in SEEDS]
    recs += [fewshot("coop", "mini_b", 4, s, 80.0 + s) for s in SEEDS]
    recs.append(fewshot("zsclip", "mini_c", 0, None, 30.0))
    fig, rows, _ = figure_of(recs, tmp_path, monkeypatch)
    average = panel(fig, "Average")
    drawn = [(line.get_marker(), float(x)) for line in average.get_lines() for x in line.get_xdata()]
    assert {x for _, x in drawn} == {1.0, 2.0} and "*" not in {m for m, _ in drawn}  # errorbar caps: lines too
    assert panel(fig, dataset_label("mini_c")).get_lines()  # CLIP's star stays on its own dataset's panel
    (line,) = [t.get_text() for t in fig.texts if t.get_text().startswith("Average panel")]
    assert "CLIP (over mini_c)" in line and "CoOp 4 shots (over mini_b)" in line and "over mini_a only" in line
    notes = {(r["method"], r["shots"]): r["note"] for r in rows if r["dataset"] == AVERAGE}
    assert notes["coop", "1"] == notes["coop", "2"] == ""
    assert notes["zsclip", "0"].startswith("left out") and "over mini_c" in notes["zsclip", "0"]
    assert notes["coop", "4"].startswith("left out") and "over mini_b" in notes["coop", "4"]


def test_fewshot_figure_marks_points_rerun_at_other_settings(tmp_path, monkeypatch):
    """CoOp on mini_a, mini_b and mini_c at 1, 2 and 4 shots, 10 epochs, but mini_c at 4 shots run with
    --set epochs=2; then mini_a at 1 shot re-run at 2 epochs. Marked (a ringed point, a legend
    entry, a CSV note): mini_a's 1-shot point, the 1-shot Average, mini_c's 4-shot point and the 4-shot
    Average (§); unmarked: the 2-shot points, the 4-shot points at the study's settings."""
    from harness.report.fewshot import RERUN_LABEL

    recs = [
        fewshot("coop", d, k, s, 50.0 + k + s, epochs=10)
        for d in ("mini_a", "mini_b", "mini_c")
        for k in (1, 2, 4)
        for s in SEEDS
        if (d, k) != ("mini_c", 4)
    ]
    recs += [fewshot("coop", "mini_a", 1, s, 20.0 + s, "2024-01-02T00:00:00", epochs=2) for s in SEEDS]
    recs += [fewshot("coop", "mini_c", 4, s, 70.0 + s, epochs=2) for s in SEEDS]
    fig, rows, report = figure_of(recs, tmp_path, monkeypatch)
    tables = tables_of(report)
    marked = {
        (row, k)
        for k in (1, 2, 4)
        for row, _ in tables[f"fewshot_{k}shot"].rows
        if (tables[f"fewshot_{k}shot"].cell(row, tables[f"fewshot_{k}shot"].groups[0], "acc") or Cell(None)).rerun
    }
    assert marked == {("mini_a", 1), (AVERAGE, 1), ("mini_c", 4), (AVERAGE, 4)}
    ringed = {
        (ax.get_title(), float(x))
        for ax in fig.axes
        for line in ax.get_lines()
        if line.get_marker() == "D"
        for x in line.get_xdata()
    }
    positions = {1: 1.0, 2: 2.0, 4: 3.0}
    assert ringed == {(dataset_label(row), positions[k]) for row, k in marked}
    assert RERUN_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]
    notes = {(r["dataset"], int(r["shots"])): r["note"] for r in rows if r["method"] == "coop"}
    assert "re-run at epochs 2, superseding epochs 10" in notes["mini_a", 1] and not notes["mini_a", 2]
    assert "§" in notes["mini_c", 4] and not notes["mini_b", 4] and not notes["mini_b", 1]


# -- published values only for the backbone and protocol they were published for ----------------------


def transfer_records(backbone):
    recs = []
    for experiment, targets in (("crossdataset", ("caltech101", "dtd")), ("domaingen", ("imagenetv2",))):
        for d in ("imagenet", *targets):
            for method in ("coop", "cocoop"):
                for s in SEEDS:
                    recs.append(
                        base_new_record(method, d, "all", 60.0 + s, s, experiment, "all", "imagenet", backbone=backbone)
                    )
            recs.append(base_new_record("zsclip", d, "all", 55.0, experiment=experiment, backbone=backbone))
    return recs


def paper_store(backbone, shots=16):
    """Tables 1-5 fed with records of one backbone: base-to-new on the 11 datasets (CLIP, CoOp, CoCoOp),
    class-incremental, ImageNet with CoOp ctx 4 / 60 and CoCoOp, and transfer from ImageNet."""
    from harness.report import PAPER_DATASETS

    recs = []
    for d in PAPER_DATASETS:
        for sub in ("base", "new", "all"):
            recs.append(base_new_record("zsclip", d, sub, 60.0, backbone=backbone))
            for method in ("coop", "cocoop"):
                recs += [base_new_record(method, d, sub, 70.0 + s, s, backbone=backbone) for s in SEEDS]
    recs += [
        base_new_record("coop", "imagenet", sub, 70.0, s, n_ctx=60, ctx_init="", backbone=backbone)
        for s in SEEDS
        for sub in ("base", "new")
    ]
    recs += transfer_records(backbone)
    for r in recs:
        if r["train_dataset"] is not None:
            r["shots"] = r["settings"]["shots"] = shots
    return recs


@pytest.mark.parametrize("backbone, shots", [("RN50", 16), ("tiny", 16), ("ViT-B/16", 4)])
def test_no_paper_value_beside_another_backbone_or_shot_count(tmp_path, backbone, shots):
    """The published Tables 1-5 are ViT-B/16 at 16 shots: records of RN50 or of the tiny CLIP get no paper
    value and no Δ in any cell, prompts learned from 4 shots none in theirs (zero-shot CLIP learns from no
    shots), and each table says why."""
    tables = build_tables(paper_store(backbone, shots))
    for key in ("table1_base2new", "table2_crossdataset", "table3_domaingen", "table4_class_incremental"):
        table = tables[key]
        assert not table.empty, key
        method = {g.key: g.method for g in table.groups}
        compared = [c for (_, g, _), c in table.cells.items() if backbone != "ViT-B/16" or method[g] != "zsclip"]
        assert compared and all(c.paper is None and c.delta is None for c in compared), key
        assert any("the published values are for ViT-B/16, 16 shots" in n for n in table.notes), key
    table5 = tables["table5_bigger_coop"]
    assert not table5.empty and all(c.paper is None for c in table5.cells.values())


def test_the_published_backbone_and_shots_are_compared(tmp_path):
    """The control: ViT-B/16 at 16 shots gets the paper's values in every one of those tables."""
    tables = build_tables(paper_store("ViT-B/16"))
    for key in ("table1_base2new", "table2_crossdataset", "table3_domaingen", "table4_class_incremental"):
        assert any(c.paper is not None for c in tables[key].cells.values()), key
    assert any(c.paper is not None for c in tables["table5_bigger_coop"].cells.values())
    assert not any("the published values are for" in n for t in tables.values() for n in t.notes)


def test_fewshot_published_values_of_another_backbone_are_not_compared(tmp_path):
    paper_dir = tmp_path / "paper"
    paper_dir.mkdir()
    (paper_dir / "fewshot.csv").write_text(
        "dataset,method,backbone,shots,accuracy,source\nmini_a,coop,RN50,1,61.5,Somebody\n"
    )
    recs = [fewshot("coop", "mini_a", 1, s, 50.0 + s) for s in SEEDS]
    table = build_tables(recs, paper_dir=str(paper_dir))["fewshot_1shot"]
    assert table.cell("mini_a", table.group_for("coop"), "acc").paper is None
    assert any("the published values are for RN50, 1 shots" in n for n in table.notes)


# -- the property: a store mixing everything, and no cell mixing anything ---------------------------------

RUN = st.fixed_dictionaries(
    {
        "config": st.sampled_from(["coop/a", "coop/b"]),
        "backbone": st.sampled_from(["tiny", "RN50"]),
        "epochs": st.sampled_from([2, 10]),
        "day": st.integers(1, 3),
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["mini_a", "mini_b", "mini_c"]),
            st.sampled_from([1, 2, 4]),
            RUN,
            st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3, unique=True),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_no_cell_average_or_curve_mixes_settings_backbones_or_datasets(runs):
    """Each settings run's records carry one accuracy of its own (a run is its dataset, shots, backbone
    and epochs: the config is not a setting): a cell that averaged two runs would show a std above 0 or
    a value of another run. Every Average is the mean of the cells of the datasets it names, over the
    same datasets as the others of its row or marked ‡."""
    recs, values = [], {}
    for i, (dataset, shots, run, seeds) in enumerate(runs):
        settings_run = (dataset, shots, run["backbone"], run["epochs"])
        value = values.setdefault(settings_run, 10.0 + len(values))
        for seed in seeds:
            timestamp = f"2024-01-0{run['day']}T00:00:{i:02d}"
            recs.append(
                fewshot(
                    "coop",
                    dataset,
                    shots,
                    seed,
                    value,
                    timestamp,
                    config=run["config"],
                    backbone=run["backbone"],
                    epochs=run["epochs"],
                )
            )
    values = {v: k[:3] for k, v in values.items()}
    tables = build_tables(recs, with_paper=False)
    for key, table in tables.items():
        if not key.startswith("fewshot_"):
            continue
        shots = int(key[len("fewshot_") : -len("shot")])
        averages = []
        for group in table.groups:
            for row, _ in table.rows:
                cell = table.cell(row, group, "acc")
                if cell is None:
                    continue
                if row == AVERAGE:
                    averages.append(cell)
                    members = [table.cell(d, group, "acc") for d in cell.datasets]
                    assert cell.mean == pytest.approx(np.mean([m.mean for m in members]))
                    continue
                assert cell.std == 0.0, (key, row, group.label)
                assert values[cell.mean] == (row, shots, group.backbone)
        widest = max((len(c.datasets) for c in averages), default=0)
        assert all("‡" in c.note for c in averages if len(c.datasets) < widest)
        assert len({c.datasets for c in averages if "‡" not in c.note}) <= 1


# -- the figures of Table 1 ---------------------------------------------------------------------------


def test_figure3_subtracts_coop_from_cocoop_only_on_one_backbone(tmp_path):
    """CoOp on RN50 and on ViT-B/16, CoCoOp on ViT-B/16: Figure 3 is CoCoOp − CoOp of ViT-B/16; with CoOp
    on RN50 alone there is no Figure 3."""
    import csv

    def records(coop_backbones):
        recs = []
        for d in ("dtd", "eurosat"):
            for sub in ("base", "new"):
                recs += [base_new_record("cocoop", d, sub, 70.0, s) for s in SEEDS]
                for backbone in coop_backbones:
                    value = 50.0 if backbone == "RN50" else 65.0
                    recs += [base_new_record("coop", d, sub, value, s, backbone=backbone) for s in SEEDS]
        return recs

    report = build_report(records(["RN50", "ViT-B/16"]), out_dir=str(tmp_path / "both"), with_paper=False)
    with open(report["figures"]["figure3"]["csv"], newline="") as f:
        assert {float(r["cocoop_minus_coop"]) for r in csv.DictReader(f)} == {5.0}  # never 70 − 50
    store = write(tmp_path / "rn50_store", records(["RN50"]))
    expect_base2new(store, datasets=("dtd", "eurosat"))  # a base-to-new sweep asked for Table 1 and its figures
    report = build_report(store, out_dir=str(tmp_path / "rn50"), with_paper=False)
    assert "figure3" not in report["figures"]
    assert any("one experiment and backbone" in m for m in report["missing"])


def test_methods_comparison_sets_side_by_side_only_averages_over_the_same_datasets(tmp_path):
    """CoOp complete on dtd and eurosat, CoCoOp on dtd only: the comparison figure draws CoOp's Average
    alone (CoCoOp's, over one dataset, would not compare), and Table 1 says which datasets each holds."""
    import csv

    recs = []
    for sub in ("base", "new"):
        recs += [base_new_record("coop", d, sub, 60.0, s) for d in ("dtd", "eurosat") for s in SEEDS]
        recs += [base_new_record("cocoop", "dtd", sub, 70.0, s) for s in SEEDS]
    report = build_report(recs, out_dir=str(tmp_path / "r"), with_paper=False)
    with open(report["figures"]["methods"]["csv"], newline="") as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["coop"]
    table = tables_of(report)["table1_base2new"]
    (note,) = [n for n in table.notes if n.startswith("‡ The Averages")]
    assert "CoOp over dtd, eurosat" in note and "CoCoOp over dtd" in note
