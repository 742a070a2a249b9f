"""The few-shot report: tables per shot count and the accuracy-vs-shots figure, against values computed here."""

import csv
import os

import numpy as np
import pytest

from harness.report import build_report

DATASETS = ("mini_a", "mini_b")
SHOTS = (1, 4)
SEEDS = (1, 2, 3)


def accuracy_of(method, dataset, shots, seed):
    """A distinct, irregular number per cell (so that a mix-up of any two shows)."""
    base = {"lpclip": 40.0, "coop": 50.0}[method] + 7.0 * DATASETS.index(dataset) + 3.0 * np.log2(shots)
    return round(base + ((seed * 37 + shots * 11 + len(method)) % 13) / 4.0, 2)


def record(method, dataset, shots, seed, accuracy, experiment="fewshot"):
    learned = method != "zsclip"
    return {
        "experiment": experiment,
        "job": f"{experiment}/{method}/{dataset}/{shots}shot/seed{seed}",
        "method": method,
        "config": None,
        "train_dataset": dataset if learned else None,
        "train_subsample": "all" if learned else None,
        "shots": shots if learned else 0,
        "seed": seed if learned else None,
        "backbone": "tiny-pretrained",
        "precision": "fp32",
        "dataset": dataset,
        "subsample": "all",
        "options": {},
        "metrics": {"accuracy": accuracy},
    }


@pytest.fixture
def records():
    recs = [record("zsclip", d, 0, None, 30.0 + 5 * i) for i, d in enumerate(DATASETS)]
    for method in ("lpclip", "coop"):
        for d in DATASETS:
            for k in SHOTS:
                for s in SEEDS:
                    recs.append(record(method, d, k, s, accuracy_of(method, d, k, s)))
    # A base-to-new record on all classes (class-incremental) is not part of the few-shot study.
    recs.append({**record("coop", "mini_a", 16, 1, 99.0, "base2new"), "train_subsample": "base"})
    return recs


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tables_per_shot_count_hold_mean_and_std_over_seeds(records, tmp_path):
    report = build_report(records, out_dir=str(tmp_path), with_paper=False)
    assert sorted(k for k in report["tables"] if k.startswith("fewshot_")) == ["fewshot_1shot", "fewshot_4shot"]
    for k in SHOTS:
        table = report["tables"][f"fewshot_{k}shot"]["table"]
        assert [g.method for g in table.groups] == ["zsclip", "lpclip", "coop"]
        for method in ("lpclip", "coop"):
            group = table.group_for(method)
            means = []
            for d in DATASETS:
                values = np.array([accuracy_of(method, d, k, s) for s in SEEDS])
                cell = table.cell(d, group, "acc")
                assert cell.mean == pytest.approx(values.mean()) and cell.std == pytest.approx(values.std())
                means.append(values.mean())
            assert table.cell("average", group, "acc").mean == pytest.approx(np.mean(means))
        zero = table.group_for("zsclip")
        assert [table.cell(d, zero, "acc").mean for d in DATASETS] == [30.0, 35.0]
        for ext in ("md", "tex", "csv"):
            assert os.path.isfile(tmp_path / f"fewshot_{k}shot.{ext}")
    rows = read_csv(tmp_path / "fewshot_4shot.csv")
    coop_b = next(r for r in rows if r["method"] == "coop" and r["row"] == "mini_b")
    expected = np.array([accuracy_of("coop", "mini_b", 4, s) for s in SEEDS])
    assert float(coop_b["mean"]) == pytest.approx(expected.mean(), abs=1e-6)
    md = (tmp_path / "fewshot_4shot.md").read_text()
    assert f"{expected.mean():.2f} ± {expected.std():.2f}" in md
    # The base-to-new tables do not take the few-shot study's records (nor it theirs): Table 4 shows the
    # base-to-new CoOp, not the few-shot study's zero-shot CLIP, linear probe or CoOp.
    table4 = report["tables"]["table4_class_incremental"]["table"]
    assert [(g.method, table4.cell("mini_a", g, "acc").mean) for g in table4.groups] == [("coop", 99.0)]


def test_a_missing_seed_is_marked_not_averaged_silently(records, tmp_path):
    records = [
        r
        for r in records
        if not (r["method"] == "coop" and r["shots"] == 1 and r["seed"] == 3 and r["dataset"] == "mini_a")
    ]
    import json

    from harness import sweep

    store = tmp_path / "store"  # the records as a sweep's store, with what the sweep asked for beside them
    store.mkdir()
    (store / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    store = str(store)
    study = {"name": "fewshot", "protocol": "fewshot", "datasets": list(DATASETS), "shots": list(SHOTS)}
    study.update(seeds=list(SEEDS), methods={"zsclip": {}, "lpclip": {}, "coop": {}})
    sweep.record_expectation(store, study, study)  # its missing seed is listed
    report = build_report(store, out_dir=str(tmp_path / "report"), with_paper=False)
    table = report["tables"]["fewshot_1shot"]["table"]
    cell = table.cell("mini_a", table.group_for("coop"), "acc")
    assert cell.note == "†(2/3 seeds)" and cell.n == 2
    assert any("mini_a" in m and "seed 3 missing" in m for m in report["missing"])


def test_figure_draws_every_curve_with_zero_shot_at_zero_and_published_values_with_their_source(records, tmp_path):
    paper_dir = tmp_path / "paper"
    paper_dir.mkdir()
    (paper_dir / "fewshot.csv").write_text(
        "dataset,method,backbone,shots,accuracy,source\n"
        "mini_a,coop,tiny-pretrained,1,61.5,Somebody et al. Table 9\n"
        "mini_a,coop,tiny-pretrained,4,70.25,Somebody et al. Table 9\n"
    )
    out = tmp_path / "out"
    report = build_report(records, out_dir=str(out), paper_dir=str(paper_dir))
    paths = report["figures"]["fewshot"]
    assert all(os.path.getsize(paths[ext]) > 0 for ext in ("png", "pdf", "csv"))
    rows = read_csv(paths["csv"])
    ours = {(r["dataset"], r["method"], int(r["shots"])): r for r in rows if r["source"] == "ours"}
    assert ours["mini_b", "zsclip", 0]["mean"] == "35.0" and ("mini_b", "zsclip", 1) not in ours
    for method in ("lpclip", "coop"):
        for k in SHOTS:
            values = np.array([accuracy_of(method, "mini_a", k, s) for s in SEEDS])
            assert float(ours["mini_a", method, k]["mean"]) == pytest.approx(values.mean(), abs=1e-4)
            assert float(ours["mini_a", method, k]["std"]) == pytest.approx(values.std(), abs=1e-4)
        average = np.mean([np.mean([accuracy_of(method, d, 4, s) for s in SEEDS]) for d in DATASETS])
        assert float(ours["average", method, 4]["mean"]) == pytest.approx(average, abs=1e-4)
    published = [r for r in rows if r["source"] != "ours"]
    assert [(r["dataset"], r["shots"], r["mean"], r["source"]) for r in published] == [
        ("mini_a", "1", "61.5", "Somebody et al. Table 9"),
        ("mini_a", "4", "70.25", "Somebody et al. Table 9"),
    ]
    # the table shows the published value beside ours, with the difference
    table = report["tables"]["fewshot_4shot"]["table"]
    cell = table.cell("mini_a", table.group_for("coop"), "acc")
    assert cell.paper == 70.25 and cell.delta == pytest.approx(cell.mean - 70.25)


def test_no_few_shot_records_no_few_shot_output(records, tmp_path):
    others = [r for r in records if r["experiment"] != "fewshot"]
    report = build_report(others, out_dir=str(tmp_path), with_paper=False)
    assert "fewshot" not in report["figures"] and not any(k.startswith("fewshot_") for k in report["tables"])
    assert not any("fewshot" in m for m in report["missing"])


def test_the_dashboard_view_of_the_study_shows_its_tables_and_accuracy_against_shots(records, tmp_path):
    from harness import dashboard, tracking

    build_report(records, out_dir=str(tmp_path), with_paper=False)
    study = dashboard.load_study(records, report_dir=str(tmp_path), with_paper=False)
    views = {v.name: v for v in dashboard.build_workspaces(study)}
    view = views[dashboard.view_name("fewshot")]
    names = [s.name.split(": ", 1)[1] for s in view.sections]
    assert names[0] == "base, new and H by method config (report stage)" and "accuracy against shots" in names
    text = view.sections[0].panels[0].markdown
    for k in SHOTS:  # the view's tables are the report folder's
        body = (tmp_path / f"fewshot_{k}shot.md").read_text().split("\n", 1)[1].strip()
        assert body in text
    shots = view.sections[names.index("accuracy against shots")].panels
    assert [(p.x.name, p.y.name) for p in shots] == [("shots", tracking.eval_key(d, "all")) for d in DATASETS]
    assert view.runset_settings.filters == "Config('experiment') = 'fewshot'"


def test_a_rerun_at_other_settings_is_named_in_its_shot_count_table_only(tmp_path):
    """CoOp on both datasets at 1 and 4 shots, 10 epochs; then mini_a at 4 shots re-run at 2 epochs. The
    4-shot table shows the re-run's numbers, names the superseded run, marks its Average § (mini_b still at
    10 epochs) and compares it with no paper value; the 1-shot table, untouched, says none of it."""
    from harness.fingerprint import fingerprint_of

    def settled(method, dataset, shots, seed, accuracy, epochs, timestamp):
        r = record(method, dataset, shots, seed, accuracy)
        r["settings"] = {"method": method, "dataset": dataset, "shots": shots, "epochs": epochs, "seed": seed}
        r.update(fingerprint=fingerprint_of(r["settings"]), epochs=epochs, timestamp=timestamp)
        return r

    first = "2024-01-01T00:00:00"
    recs = [
        settled("coop", d, k, s, accuracy_of("coop", d, k, s), 10, first)
        for d in DATASETS
        for k in SHOTS
        for s in SEEDS
    ]
    recs += [settled("coop", "mini_a", 4, s, 11.0 + s, 2, "2024-01-02T00:00:00") for s in SEEDS]
    report = build_report(recs, out_dir=str(tmp_path / "report"), with_paper=False)
    four, one = (report["tables"][f"fewshot_{k}shot"]["table"] for k in (4, 1))
    (group,) = four.groups
    assert four.cell("mini_a", group, "acc").mean == pytest.approx(13.0)  # the re-run's seeds only
    assert "§(mixed settings)" in four.cell("average", group, "acc").note
    (superseded,) = [n for n in four.notes if n.startswith("Superseded")]
    assert "3 record(s) of coop" in superseded and "epochs 10" in superseded and "the newer epochs 2" in superseded
    (mixed,) = [n for n in four.notes if n.startswith("§")]
    assert "mini_a was re-run with epochs 2" in mixed and "mini_b still at epochs 10" in mixed
    assert not [n for n in one.notes if n.startswith(("Superseded", "§"))]
    assert "§" not in one.cell("average", one.groups[0], "acc").note
    text = (tmp_path / "report" / "fewshot_4shot.md").read_text()
    assert "| Dataset | CoOp Accuracy |" in text  # the method named, though it is the table's only one
    assert "Superseded: 3 record(s) of coop" in text


def test_a_step_budget_methods_epochs_per_dataset_are_not_mixed_settings(tmp_path):
    """CLIP-LoRA runs n_iters x K steps, so its epochs are each dataset's own (the study sets them per dataset and
    the method refuses any other): one settings run, its Average unmarked. Another n_iters on one dataset is a
    mix, and CoOp's epochs per dataset still are."""
    from harness.fingerprint import fingerprint_of

    def settled(method, dataset, seed, epochs, n_iters=5):
        r = record(method, dataset, 4, seed, accuracy_of("coop", dataset, 4, seed))
        r["settings"] = {"method": method, "dataset": dataset, "shots": 4, "epochs": epochs, "seed": seed}
        if method == "clip_lora":
            r["settings"]["options"] = {"n_iters": n_iters}
        r.update(fingerprint=fingerprint_of(r["settings"]), epochs=epochs)
        return r

    def average_note(recs):
        report = build_report(recs, out_dir=str(tmp_path / "report"), with_paper=False)
        table = report["tables"]["fewshot_4shot"]["table"]
        return table.cell("average", table.groups[0], "acc").note

    epochs = {"mini_a": 20, "mini_b": 10}  # the steps of an epoch differ with the dataset's classes
    assert "§" not in average_note([settled("clip_lora", d, s, epochs[d]) for d in DATASETS for s in SEEDS])
    other = [settled("clip_lora", d, s, epochs[d], n_iters=5 if d == "mini_a" else 7) for d in DATASETS for s in SEEDS]
    assert "§(mixed settings)" in average_note(other)
    assert "§(mixed settings)" in average_note([settled("coop", d, s, epochs[d]) for d in DATASETS for s in SEEDS])
