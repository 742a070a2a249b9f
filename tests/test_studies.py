"""Which differences are real, wired into the report: the frames come from the gate (what each cell shows),
the baseline from expected.json or --baseline, the ≈ mark on the tables' Averages, and the files."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats
from test_gate import fewshot
from test_report import record, write

from harness import sweep
from harness.fingerprint import fingerprint_of
from harness.report import AVERAGE, ReportError, build_report, build_study, harmonic
from harness.report.__main__ import main as report_main
from harness.report.comparison import COLUMNS

DATASETS = ("mini_a", "mini_b", "mini_c")
SEEDS = (1, 2, 3)


def base_new_accuracy(method, dataset, subsample, seed):
    """Irregular per seed; coop clearly above cocoop (+6 base, +5 new), kgcoop within a point of it either way."""
    d = DATASETS.index(dataset)
    seed = seed or 0  # zero-shot CLIP: no seed
    base = 60.0 + 3 * d + ((seed * 7 + d * 5) % 11) / 2
    new = 55.0 + 2 * d + ((seed * 5 + d * 3) % 7) / 2
    value = base if subsample == "base" else new
    if method == "coop":
        return value + (6.0 if subsample == "base" else 5.0)
    if method == "kgcoop":
        return value + (0.8 if (seed + d) % 2 else -0.9)
    if method == "zsclip":
        return value - 4.0 + d
    return value


def base2new_records(methods=("zsclip", "coop", "cocoop", "kgcoop")):
    recs = []
    for method in methods:
        for dataset in DATASETS:
            for seed in (None,) if method == "zsclip" else SEEDS:
                for subsample in ("base", "new"):
                    acc = base_new_accuracy(method, dataset, subsample, seed)
                    recs.append(record(method, dataset, subsample, acc, seed=seed or 1))
    return recs


def expectation(tmp_path, name, baseline, protocol="base2new", methods=("zsclip", "coop", "cocoop", "kgcoop")):
    """expected.json as the sweep writes it, from an experiment mapping with a report: section."""
    experiment = {
        "name": name,
        "protocol": protocol,
        "datasets": list(DATASETS),
        "seeds": list(SEEDS),
        "methods": {m: {} for m in methods},
        "report": {"baseline": baseline},
    }
    if protocol == "fewshot":
        experiment["shots"] = [1, 4]
    sweep.record_expectation(str(tmp_path), experiment, experiment)
    return sweep.read_expectations(str(tmp_path))


def superseded_coop():
    """An older settings run of CoOp on mini_a (2 epochs), far below: it must never be compared."""
    old = []
    for seed in SEEDS:
        for subsample in ("base", "new"):
            r = record("coop", "mini_a", subsample, 10.0 + seed, seed=seed)
            r["settings"] = {**r["settings"], "epochs": 2}
            r["fingerprint"] = fingerprint_of(r["settings"])
            r["timestamp"] = "2023-01-01T00:00:00"
            old.append(r)
    return old


def test_base2new_frame_is_per_seed_h_of_the_shown_run_with_zero_shot_paired(tmp_path):
    recs = base2new_records() + superseded_coop()  # written later, yet older settings: the newer run is shown
    tables, found = build_study(recs, with_paper=False, expectations=expectation(tmp_path, "base2new", "cocoop"))
    assert any(n.startswith("Superseded") for n in tables["table1_base2new"].notes)  # the gate saw both runs
    study = found["base2new"]
    assert study.baseline == "cocoop"
    frame = study.frames["H"]
    coop_a = frame[(frame["method"] == "coop") & (frame["dataset"] == "mini_a")].set_index("seed")["value"]
    expected = {s: harmonic(*(base_new_accuracy("coop", "mini_a", sub, s) for sub in ("base", "new"))) for s in SEEDS}
    assert coop_a.to_dict() == pytest.approx(expected)  # per seed, the newer run only: no 11-13 % seeds
    zs = frame[frame["method"] == "zsclip"]
    assert zs["seed"].isna().all() and len(zs) == len(DATASETS)  # one seedless value per dataset

    table = study.comparisons["H"].set_index(["method", "dataset"])
    cocoop = {s: harmonic(*(base_new_accuracy("cocoop", "mini_b", sub, s) for sub in ("base", "new"))) for s in SEEDS}
    zs_b = harmonic(*(base_new_accuracy("zsclip", "mini_b", sub, None) for sub in ("base", "new")))
    row = table.loc[("zsclip", "mini_b")]
    assert row["n_pairs"] == 3  # zero-shot CLIP's one value against each of the baseline's seeds
    assert row["mean_delta"] == pytest.approx(np.mean([zs_b - cocoop[s] for s in SEEDS]))
    assert table.loc[("coop", "mini_a"), "mean_delta"] == pytest.approx(
        np.mean(
            [
                expected[s] - harmonic(*(base_new_accuracy("cocoop", "mini_a", sub, s) for sub in ("base", "new")))
                for s in SEEDS
            ]
        )
    )
    assert table.loc[("coop", AVERAGE), "verdict"] == "better"
    assert table.loc[("kgcoop", AVERAGE), "verdict"] == "within noise"


def test_within_noise_marks_table1_average_with_its_legend(tmp_path):
    tables, _ = build_study(
        base2new_records(), with_paper=False, expectations=expectation(tmp_path, "base2new", "cocoop")
    )
    table = tables["table1_base2new"]
    kgcoop, coop, cocoop = (table.group_for(m) for m in ("kgcoop", "coop", "cocoop"))
    assert table.cell(AVERAGE, kgcoop, "h").text().endswith("≈")
    assert table.cell(AVERAGE, kgcoop, "h").note == ""  # the mark does not make the Average incomplete
    assert "≈" not in table.cell(AVERAGE, coop, "h").text()  # better: no mark
    assert "≈" not in table.cell(AVERAGE, cocoop, "h").text()  # the baseline itself
    assert "≈" not in table.cell("mini_a", kgcoop, "h").text()  # only the Average
    (legend,) = [n for n in table.notes if n.startswith("≈")]
    assert "within noise of cocoop" in legend and "comparison_base2new.csv" in legend


def test_baseline_from_expected_json_and_overridden_by_the_flag(tmp_path):
    store = tmp_path / "store"
    write(store, base2new_records())
    expectation(store, "base2new", "cocoop")
    out = tmp_path / "out"
    report = build_report(str(store), out_dir=str(out), with_paper=False)
    assert set(report["studies"]["base2new"].table()["baseline"]) == {"cocoop"}

    assert report_main(["--results", str(store), "--out", str(out), "--no-paper", "--baseline", "coop"]) == 0
    with open(out / "comparison_base2new.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["baseline"] for r in rows} == {"coop"} and "coop" not in {r["method"] for r in rows}

    with pytest.raises(ReportError, match=r"--baseline 'cocop'.*base2new: cocoop, coop, kgcoop, zsclip"):
        build_report(str(store), out_dir=str(out), with_paper=False, baseline="cocop")


def test_no_baseline_no_comparison(tmp_path):
    report = build_report(base2new_records(), out_dir=str(tmp_path), with_paper=False)
    assert not report["comparisons"] and not os.path.exists(tmp_path / "comparison_base2new.csv")


def test_comparison_csv_columns_average_label_and_files(tmp_path):
    store = tmp_path / "store"
    write(store, base2new_records())
    expectation(store, "base2new", "cocoop")
    out = tmp_path / "out"
    report = build_report(str(store), out_dir=str(out), with_paper=False)
    with open(out / "comparison_base2new.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == list(COLUMNS)
    averages = [r for r in rows if r[3] == "Average"]
    assert [r[0] for r in averages] == ["zsclip", "coop", "kgcoop"]
    assert not any(r[3] == AVERAGE for r in rows)
    # NaN written empty: the pair count says when (never with three seeds; here every dataset has three)
    assert all(r[4] == "3" for r in rows if r[3] != "Average")
    board = (out / "leaderboard_base2new.md").read_text()
    assert "| 1 | coop |" in board and "Friedman test over 3 datasets" in board
    # each method's line carries its Average comparison with the baseline, as the csv writes it
    lines = {line.split(" | ")[1]: line for line in board.splitlines() if line.startswith("| ") and "---" not in line}
    for method, _, _, _, _, delta, low, high, _, verdict in averages:
        assert lines[method].endswith(f"| {float(delta):+.2f} [{float(low):.2f}, {float(high):.2f}] {verdict} |")
    assert lines["cocoop"].endswith("| baseline |") and "| vs cocoop |" in board
    assert os.path.getsize(out / "figure_critical_difference_base2new.png") > 0
    assert "figure_critical_difference_base2new" in report["figures"]
    assert report["comparisons"]["comparison_base2new"]["csv"] == str(out / "comparison_base2new.csv")
    assert "comparison_base2new.md" in (out / "index.md").read_text()


def test_one_seed_rows_are_written_empty(tmp_path):
    recs = [r for r in base2new_records() if r.get("seed") in (None, 1) or r["method"] == "zsclip"]
    recs = [r for r in recs if r["method"] == "zsclip" or r["seed"] == 1]
    store = tmp_path / "store"
    write(store, recs)
    expectation(store, "base2new", "cocoop")
    out = tmp_path / "out"
    build_report(str(store), out_dir=str(out), with_paper=False, expected_seeds=(1,))
    with open(out / "comparison_base2new.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["dataset"] == "mini_a"]
    assert rows and all(r["ci_low"] == r["ci_high"] == r["p_value"] == "" for r in rows)


def test_two_datasets_say_why_no_diagram(tmp_path):
    recs = [r for r in base2new_records() if r["dataset"] != "mini_c"]
    store = tmp_path / "store"
    write(store, recs)
    expectation(store, "base2new", "cocoop")
    report = build_report(str(store), out_dir=str(tmp_path / "out"), with_paper=False)
    assert any(
        m.startswith("figure_critical_difference_base2new: no diagram") and "3 datasets" in m for m in report["missing"]
    )


def fewshot_records():
    recs = []
    for dataset in DATASETS:
        d = DATASETS.index(dataset)
        recs.append(fewshot("zsclip", dataset, 0, None, 40.0 + d))
        for shots in (1, 4):
            for seed in SEEDS:
                noise = ((seed * 3 + d + shots) % 5) / 2
                config = f"coop/ep{50 if shots == 1 else 100}"  # a config per shot count, as CoOp's
                recs.append(fewshot("coop", dataset, shots, seed, 50.0 + shots + noise, config=config))
                recs.append(fewshot("lpclip", dataset, shots, seed, 45.0 + shots + noise + (0.3 if seed % 2 else -0.3)))
    return recs


def test_fewshot_one_comparison_per_shot_count(tmp_path):
    tables, found = build_study(
        fewshot_records(), with_paper=False, expectations=expectation(tmp_path, "fewshot", "coop", "fewshot")
    )
    study = found["fewshot"]
    assert list(study.comparisons) == ["accuracy@1", "accuracy@4"]
    four = study.comparisons["accuracy@4"].set_index(["method", "dataset"])
    assert four.loc[("lpclip", AVERAGE), "verdict"] == "worse"
    assert four.loc[("zsclip", "mini_a"), "n_pairs"] == 3
    assert set(study.table()["metric"]) == {"accuracy@1", "accuracy@4"}
    assert set(study.table()["method"]) == {"zsclip", "lpclip"}  # coop is the baseline at every K


def test_fewshot_paper_values_from_the_shared_csv_for_their_backbone_only(tmp_path):
    """reports/paper/fewshot.csv (copied from the shared paper-results): PromptSRC's ViT-B/16 averages and CoOp's
    RN50 per-dataset sheet. A ViT-B/16 average gets the average, an RN50 dataset cell its row, nothing crosses."""
    from harness.report import PAPER_DATASETS

    def recs(backbone, value):
        out = []
        for dataset in PAPER_DATASETS:
            out.append(fewshot("zsclip", dataset, 0, None, 50.0, backbone=backbone))
            for seed in SEEDS:
                out += [fewshot(m, dataset, 16, seed, value, backbone=backbone) for m in ("coop", "lpclip")]
        return out

    report = build_report(recs("ViT-B/16", 80.0) + recs("RN50", 70.0), out_dir=str(tmp_path))
    table = report["tables"]["fewshot_16shot"]["table"]
    groups = {(g.method, g.backbone): g for g in table.groups}
    vit, rn50 = groups["coop", "ViT-B/16"], groups["coop", "RN50"]
    assert table.cell(AVERAGE, vit, "acc").paper == 79.89  # PromptSRC's few-shot table
    assert table.cell("eurosat", vit, "acc").paper is None  # no ViT-B/16 per-dataset value
    assert table.cell("eurosat", rn50, "acc").paper == 83.53  # CoOp's sheet, RN50
    assert table.cell(AVERAGE, rn50, "acc").paper is None  # the sheet's average is derived, not printed
    assert table.cell("imagenet", groups["zsclip", "RN50"], "acc").paper == 58.18
    assert table.cell("imagenet", groups["zsclip", "ViT-B/16"], "acc").paper is None
    assert any("copy" in n and "RN50" in n for n in table.notes)
    # the figure's published curves: ViT-B/16 averages beside the ViT-B/16 curves, RN50 datasets beside RN50's
    with open(report["figures"]["fewshot"]["csv"], newline="") as f:
        published = [r for r in csv.DictReader(f) if r["source"] != "ours"]
    vit_rows = [r for r in published if "ViT-B/16" in r["label"]]
    rn50_rows = [r for r in published if "RN50" in r["label"]]
    assert vit_rows and {r["dataset"] for r in vit_rows} == {AVERAGE}
    assert {r["method"] for r in vit_rows} == {"coop", "lpclip"}
    assert rn50_rows and AVERAGE not in {r["dataset"] for r in rn50_rows}
    assert any(r["method"] == "zsclip" and r["shots"] == "0" and r["mean"] == "58.18" for r in rn50_rows)
    assert all("copy" in r["source"] for r in rn50_rows)


def test_report_yaml_section_is_checked(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nprotocol: base2new\ndatasets: [a]\nmethods: {coop: {}}\nreport: {baseline: cocoop}\n")
    with pytest.raises(Exception, match=r"report.baseline 'cocoop' is not one of the experiment's methods \(coop\)"):
        sweep.load_experiment(str(path))
    path.write_text("name: x\nprotocol: base2new\ndatasets: [a]\nmethods: {coop: {}}\nreport: {baselin: coop}\n")
    with pytest.raises(Exception, match=r"report must be a mapping with the key\(s\) \['baseline'\]"):
        sweep.load_experiment(str(path))
    for name, baseline in (
        ("base2new", "cocoop"),
        ("crossdataset", "cocoop"),
        ("domaingen", "cocoop"),
        ("fewshot", "coop"),
    ):
        assert sweep.load_experiment(name)["report"] == {"baseline": baseline}


def test_an_average_of_mixed_settings_is_named_in_the_comparison_and_the_leaderboard(tmp_path):
    """CoOp re-run at other epochs on one dataset only: Table 1 marks its Average §, and the comparison and the
    leaderboard built from those cells say so instead of passing for like-for-like numbers."""
    recs = base2new_records()
    for r in recs:
        if r["method"] == "coop" and r["dataset"] == DATASETS[0]:
            r["settings"] = {**r["settings"], "epochs": 2}
            r["fingerprint"] = fingerprint_of(r["settings"])
    store = tmp_path / "store"
    write(store, recs)
    expectation(store, "base2new", "cocoop")
    out = tmp_path / "out"
    report = build_report(str(store), out_dir=str(out), with_paper=False)
    table1 = report["tables"]["table1_base2new"]["table"]
    assert "§" in table1.cell(AVERAGE, table1.group_for("coop"), "h").note
    for name in ("comparison_base2new.md", "leaderboard_base2new.md"):
        text = (out / name).read_text()
        assert "§ The Average of coop mixes settings" in text, name
        assert "The Average of cocoop" not in text and "The Average of kgcoop" not in text, name
    # Alike settings: no such note.
    write(tmp_path / "alike", base2new_records())
    expectation(tmp_path / "alike", "base2new", "cocoop")
    build_report(str(tmp_path / "alike"), out_dir=str(tmp_path / "out2"), with_paper=False)
    assert "mixes settings" not in (tmp_path / "out2" / "comparison_base2new.md").read_text()


def test_the_report_run_logs_each_comparison_as_its_csv(tmp_path, monkeypatch):
    import pandas as pd

    from harness import tracking

    logged = {}

    class Recorder(tracking.Tracker):
        def log_table(self, name, frame):
            logged[name] = frame

    monkeypatch.setattr(tracking, "start_run", lambda mode, **kwargs: Recorder())
    store = tmp_path / "store"
    write(store, base2new_records())
    expectation(store, "base2new", "cocoop")
    build_report(str(store), out_dir=str(tmp_path / "out"), with_paper=False, tracking="offline")
    written = pd.read_csv(tmp_path / "out" / "comparison_base2new.csv", keep_default_na=False)
    frame = logged["comparison_base2new"]
    assert list(frame.columns) == list(written.columns) and len(frame) == len(written)
    assert list(frame["verdict"]) == list(written["verdict"]) and list(frame["dataset"]) == list(written["dataset"])


def _h(method, dataset, seed, shift=0.0):
    return harmonic(*(base_new_accuracy(method, dataset, sub, seed) + shift for sub in ("base", "new")))


def test_two_shot_counts_of_one_method_are_two_methods_each_paired_with_the_baseline_alike(tmp_path):
    """CoOp at 16 shots (as the baseline) and again at 4 shots, far below, in one base-to-new study: two columns
    of Table 1, so two methods, never one whose seeds mix both; the 4-shot one is not paired with a 16-shot
    baseline."""
    recs = base2new_records(("coop", "cocoop"))
    for r in [r for r in recs if r["method"] == "coop"]:
        four = {**r, "shots": 4, "settings": {**r["settings"], "shots": 4}, "job": r["job"] + "/4shot"}
        four["metrics"] = {**r["metrics"], "accuracy": r["metrics"]["accuracy"] - 30.0}
        recs.append(four)
    _, found = build_study(recs, with_paper=False, expectations=expectation(tmp_path, "base2new", "cocoop"))
    study = found["base2new"]
    table = study.comparisons["H"].set_index(["method", "dataset"])
    assert set(table.index.get_level_values("method")) == {"coop (16 shots)"}
    for dataset in DATASETS:
        deltas = [_h("coop", dataset, s) - _h("cocoop", dataset, s) for s in SEEDS]
        assert table.loc[("coop (16 shots)", dataset), "mean_delta"] == pytest.approx(np.mean(deltas))
        low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(deltas), scale=scipy_stats.sem(deltas))
        assert (
            table.loc[("coop (16 shots)", dataset), "ci_low"],
            table.loc[("coop (16 shots)", dataset), "ci_high"],
        ) == (
            pytest.approx(low),
            pytest.approx(high),
        )
    assert any(
        "coop (4 shots) is not compared with cocoop" in n and "4 shots" in n and "16 shots" in n for n in study.notes
    )


def test_a_method_on_another_backbone_than_the_baseline_is_not_paired_with_it(tmp_path):
    """CoOp on RN50 only, CoCoOp (the baseline) on ViT-B/16: their difference is the backbones'."""
    recs = base2new_records(("zsclip", "coop", "cocoop"))
    for r in recs:
        if r["method"] == "coop":
            r["backbone"] = "RN50"
            r["settings"] = {**r["settings"], "backbone": "RN50"}
    _, found = build_study(recs, with_paper=False, expectations=expectation(tmp_path, "base2new", "cocoop"))
    study = found["base2new"]
    table = study.comparisons["H"]
    assert set(table["method"]) == {"zsclip"}  # zero-shot CLIP on the baseline's backbone is still paired
    zs = table[(table["method"] == "zsclip") & (table["dataset"] == "mini_a")].iloc[0]
    assert zs["mean_delta"] == pytest.approx(
        np.mean([_h("zsclip", "mini_a", None) - _h("cocoop", "mini_a", s) for s in SEEDS])
    )
    assert any("coop is not compared with cocoop" in n and "RN50" in n and "ViT-B/16" in n for n in study.notes)


def test_seeds_disjoint_from_the_baselines_are_no_comparison_and_no_within_noise_mark(tmp_path):
    """CoOp ran seeds 4-6, the baseline 1-3: not one pair. No Average row claims "within noise" (and no ≈ on
    Table 1): there is nothing to compare, and the notes say so."""
    recs = base2new_records(("coop", "cocoop"))
    for r in recs:
        if r["method"] == "coop":
            r["seed"] += 3
            r["settings"] = {**r["settings"], "seed": r["seed"]}
    store = tmp_path / "store"
    write(store, recs)
    expectation(store, "base2new", "cocoop", methods=("coop", "cocoop"))
    out = tmp_path / "out"
    report = build_report(
        str(store), out_dir=str(out), with_paper=False, baseline="cocoop", expected_seeds=(1, 2, 3, 4, 5, 6)
    )
    study = report["studies"]["base2new"]
    assert "coop" not in set(study.table()["method"])
    table1 = report["tables"]["table1_base2new"]["table"]
    assert "≈" not in table1.cell(AVERAGE, table1.group_for("coop"), "h").text()
    assert any("coop is not compared with cocoop: no (dataset, seed) pair" in m for m in report["missing"])
    assert "no (dataset, seed) pair" in (out / "comparison_base2new.md").read_text()


def test_the_comparison_pairs_only_the_seeds_the_table_shows(tmp_path):
    """The report narrowed to seeds 1 and 2 (--seeds): the tables average those, and the comparison beside them
    pairs those, not every seed the store holds."""
    _, found = build_study(
        base2new_records(("coop", "cocoop")),
        with_paper=False,
        expected_seeds=(1, 2),
        expectations=expectation(tmp_path, "base2new", "cocoop", methods=("coop", "cocoop")),
    )
    table = found["base2new"].comparisons["H"].set_index(["method", "dataset"])
    for dataset in DATASETS:
        deltas = [_h("coop", dataset, s) - _h("cocoop", dataset, s) for s in (1, 2)]
        assert table.loc[("coop", dataset), "n_pairs"] == 2
        assert table.loc[("coop", dataset), "mean_delta"] == pytest.approx(np.mean(deltas))
        assert table.loc[("coop", dataset), "p_value"] == pytest.approx(
            scipy_stats.ttest_rel(
                [_h("coop", dataset, s) for s in (1, 2)], [_h("cocoop", dataset, s) for s in (1, 2)]
            ).pvalue
        )


def test_a_dataset_without_the_baseline_is_named_and_left_out_of_the_average(tmp_path):
    """CoCoOp (the baseline) never ran on mini_c: CoOp's Average difference is over mini_a and mini_b, which the
    comparison and the leaderboard say, while Table 1's CoOp Average holds mini_c too."""
    recs = [
        r for r in base2new_records(("coop", "cocoop")) if not (r["method"] == "cocoop" and r["dataset"] == "mini_c")
    ]
    store = tmp_path / "store"
    write(store, recs)
    expectation(store, "base2new", "cocoop", methods=("coop", "cocoop"))
    out = tmp_path / "out"
    report = build_report(str(store), out_dir=str(out), with_paper=False)
    table = report["studies"]["base2new"].comparisons["H"].set_index(["method", "dataset"])
    means = [np.mean([_h("coop", d, s) - _h("cocoop", d, s) for s in SEEDS]) for d in ("mini_a", "mini_b")]
    assert table.loc[("coop", AVERAGE), "n_pairs"] == 2
    assert table.loc[("coop", AVERAGE), "mean_delta"] == pytest.approx(np.mean(means))
    for name in ("comparison_base2new.md", "leaderboard_base2new.md"):
        assert "cocoop has no records on mini_c" in (out / name).read_text(), name


def test_a_non_finite_accuracy_is_a_missing_seed_in_the_table_and_the_comparison(tmp_path):
    """One few-shot record with a nan accuracy: the report still builds; the cell is over the other seeds (†, the
    record listed), and the comparison pairs those same seeds instead of failing the whole report."""
    recs = fewshot_records()
    bad = next(r for r in recs if r["method"] == "lpclip" and r["shots"] == 4 and r["dataset"] == "mini_a")
    bad["metrics"]["accuracy"] = float("nan")
    tables, found = build_study(
        recs, with_paper=False, expectations=expectation(tmp_path, "fewshot", "coop", "fewshot")
    )
    table = tables["fewshot_4shot"]
    cell = table.cell("mini_a", table.group_for("lpclip"), "acc")
    assert cell.n == 2 and cell.note.startswith("†") and np.isfinite(cell.mean)
    assert any("not a finite number" in m and f"seed {bad['seed']}" in m for m in table.missing)
    four = found["fewshot"].comparisons["accuracy@4"].set_index(["method", "dataset"])
    value = {
        (r["method"], r["seed"]): r["metrics"]["accuracy"] for r in recs if r["shots"] == 4 and r["dataset"] == "mini_a"
    }
    seeds = [s for s in SEEDS if s != bad["seed"]]
    assert four.loc[("lpclip", "mini_a"), "n_pairs"] == 2
    assert four.loc[("lpclip", "mini_a"), "mean_delta"] == pytest.approx(
        np.mean([value["lpclip", s] - value["coop", s] for s in seeds])
    )
