"""The report's efficiency tables and cost figure, from hand-made records with known costs."""

from __future__ import annotations

import csv
import os
import statistics

import pytest
from test_report import expect, record, write

from harness.fingerprint import fingerprint_of
from harness.report import build_report
from harness.report.efficiency import COLUMNS, pareto_front

GPU = "NVIDIA H100 80GB HBM3"


def costed(rec: dict, train_s, *, params=2048, gflops=10.0, per_s=500.0, peak=900.0, device=GPU, cached=False):
    """``rec`` with the cost block its job would have written: one job per (method, dataset, seed)."""
    job = f"{rec['method']}/{rec['dataset']}/seed{rec['seed']}"
    rec.update(job=job, run_dir=f"/runs/{rec['experiment']}/{job}")
    rec["metrics"]["num_trainable_parameters"] = params
    rec["cost"] = {
        "train_s": train_s,
        "epoch_s": None if train_s is None else train_s / 10,
        "train_starts": 0 if train_s is None else 1,
        "resumed": False,
        "eval_s": 1.0,
        "eval_images_per_s": per_s,
        "eval_features_cached": cached,
        "peak_mem_mb": peak,
        "peak_mem_kind": "cuda_max_allocated",
        "gflops_per_image": gflops,
        "device": device,
    }
    return rec


def study() -> tuple[list[dict], dict]:
    """Base-to-new on two datasets, three seeds: CoOp (fast), CoCoOp (slow, better H), CLIP (no training).
    Returns the records and each method's training times, one per job."""
    recs, times = [], {"coop": [], "cocoop": []}
    for i, dataset in enumerate(("eurosat", "dtd")):
        for seed in (1, 2, 3):
            for method, base_time, (b, n), gflops in (
                ("coop", 10.0, (80.0, 60.0), 4.0 + i),
                ("cocoop", 100.0, (78.0, 70.0), 40.0 + 2 * i),
            ):
                t = base_time + 7 * i + seed * seed
                times[method].append(t)
                for subsample, acc in (("base", b), ("new", n)):
                    # The evaluation of new classes read cached image features (CoOp): not its throughput.
                    cached = method == "coop" and subsample == "new"
                    per_s = 100.0 * seed + i + (10_000 if cached else 0)
                    recs.append(
                        costed(
                            record(method, dataset, subsample, acc, seed), t, gflops=gflops, per_s=per_s, cached=cached
                        )
                    )
        for subsample, acc in (("base", 70.0), ("new", 72.0)):
            recs.append(costed(record("zsclip", dataset, subsample, acc), None, params=0, gflops=3.0, per_s=900.0))
    return recs, times


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_efficiency_table_medians_totals_and_the_gates_settings_runs(tmp_path):
    recs, times = study()
    # An older settings run of CoOp (other epochs) that the gate shows as superseded: never counted.
    old = costed(record("coop", "eurosat", "base", 10.0, seed=1), 99_999.0)
    old["settings"] = {**old["settings"], "epochs": 50}
    old.update(fingerprint=fingerprint_of(old["settings"]), timestamp="2023-01-01T00:00:00", run_dir="/old")
    summary = build_report(write(tmp_path / "out", [old] + recs), out_dir=str(tmp_path / "reports"))
    paths = summary["efficiency"]["base2new"]["paths"]
    assert sorted(paths) == ["csv", "md", "tex"] and all(os.path.isfile(p) for p in paths.values())
    rows = {row["method"]: row for row in read_csv(paths["csv"])}
    assert list(read_csv(paths["csv"])[0]) == list(COLUMNS)
    assert list(rows) == ["zsclip", "coop", "cocoop"]  # the report's method order
    for method in ("coop", "cocoop"):
        row = rows[method]
        assert float(row["train_s_median"]) == pytest.approx(statistics.median(times[method]))
        assert float(row["train_s_total"]) == pytest.approx(sum(times[method]))
        assert int(row["jobs"]) == 6 and int(row["learnable_params"]) == 2048 and row["device"] == GPU
        assert float(row["peak_mem_mb"]) == 900.0
    # GFLOPs: the median over evaluations (the class count changes it per dataset).
    assert float(rows["coop"]["gflops_per_image"]) == pytest.approx(statistics.median([4.0] * 6 + [5.0] * 6))
    # Throughput: CoOp's evaluations served from the feature cache are left out.
    assert float(rows["coop"]["eval_images_per_s"]) == pytest.approx(
        statistics.median([100.0 * s + i for i in (0, 1) for s in (1, 2, 3)])
    )
    # CLIP trains nothing: no training time, two evaluation-only jobs, no learnable parameter.
    assert (rows["zsclip"]["train_s_median"], rows["zsclip"]["train_s_total"]) == ("", "")
    assert (rows["zsclip"]["jobs"], rows["zsclip"]["learnable_params"]) == ("2", "0")
    md = open(paths["md"]).read()
    assert f"Times measured by the runner on {GPU}" in md and "not comparable" in md
    assert "efficiency_base2new" in open(summary["index"]).read()


def test_a_method_measured_on_several_devices_says_so(tmp_path):
    recs, _ = study()
    for r in recs:
        if r["method"] == "coop" and r["seed"] == 3:
            r["cost"]["device"] = "AMD EPYC 7763"
    store = write(tmp_path / "out", recs)
    expect(store, datasets=("eurosat", "dtd"))  # a sweep asked for the study: what its figure lacks is listed
    summary = build_report(store, out_dir=str(tmp_path / "reports"))
    table = summary["efficiency"]["base2new"]["table"]
    row = next(row for row in table.rows if row["method"] == "coop")
    assert row["device"] == f"AMD EPYC 7763 + {GPU}"
    assert any(note.startswith("coop was measured on several devices") for note in table.notes)
    assert "on several devices" in table.notes[0]


def test_several_configs_of_one_method_are_rows_of_their_own(tmp_path):
    recs = []
    for config, t in (("vit_b16_ep10", 10.0), ("vit_b16_ep50", 50.0)):
        for subsample in ("base", "new"):
            rec = record("coop", "eurosat", subsample, 70.0, config=config)
            rec["settings"] = {**rec["settings"], "config": config}
            rec["fingerprint"] = fingerprint_of(rec["settings"])
            recs.append(costed(rec, t))
            recs[-1].update(run_dir=f"/runs/{config}")
    summary = build_report(write(tmp_path / "out", recs), out_dir=str(tmp_path / "reports"))
    rows = read_csv(summary["efficiency"]["base2new"]["paths"]["csv"])
    assert [(r["method"], float(r["train_s_median"])) for r in rows] == [
        ("coop/vit_b16_ep10", 10.0),
        ("coop/vit_b16_ep50", 50.0),
    ]
    # Configs named with their method's folder, as the published ones are, get the same names.
    for r in recs:
        r["config"] = f"coop/{r['config']}"
    summary = build_report(write(tmp_path / "out2", recs), out_dir=str(tmp_path / "reports2"))
    rows = read_csv(summary["efficiency"]["base2new"]["paths"]["csv"])
    assert [r["method"] for r in rows] == ["coop/vit_b16_ep10", "coop/vit_b16_ep50"]


def test_pareto_front_of_hand_made_points():
    points = [
        ("a", 1.0, 50.0),
        ("b", 2.0, 60.0),
        ("c", 3.0, 55.0),
        ("d", 4.0, 70.0),
        ("e", 4.0, 65.0),
        ("f", 0.5, 40.0),
    ]
    # c is beaten by b (faster and better), e by d (as fast, better): the rest trade time for the metric.
    assert [p[0] for p in pareto_front(points)] == ["f", "a", "b", "d"]
    assert pareto_front([("x", 1.0, 1.0), ("y", 1.0, 1.0)]) == [("x", 1.0, 1.0), ("y", 1.0, 1.0)]  # ties: both


def test_cost_figure_plots_the_gates_average_h_against_training_time(tmp_path):
    recs, times = study()
    summary = build_report(write(tmp_path / "out", recs), out_dir=str(tmp_path / "reports"))
    paths = summary["figures"]["figure_cost_vs_h"]
    assert all(os.path.getsize(paths[ext]) > 0 for ext in ("png", "pdf"))
    drawn = {row["method"]: row for row in read_csv(paths["csv"])}
    table1 = summary["tables"]["table1_base2new"]["table"]
    for method in ("coop", "cocoop", "zsclip"):
        assert float(drawn[method]["H"]) == pytest.approx(table1.cell("average", table1.group_for(method), "h").mean)
    assert float(drawn["coop"]["train_s_median"]) == pytest.approx(statistics.median(times["coop"]))
    # CoOp is faster, CoCoOp better: both on the front; CLIP trains nothing and is drawn as a line.
    assert drawn["coop"]["pareto"] == drawn["cocoop"]["pareto"] == "True"
    assert drawn["zsclip"]["train_s_median"] == ""


def test_records_without_a_cost_still_give_a_report(tmp_path):
    recs, _ = study()
    old = [r for r in recs if r["method"] != "coop"]
    for r in old:
        del r["cost"]  # written before costs were recorded
    store = write(tmp_path / "old", old)
    expect(store, datasets=("eurosat", "dtd"))  # the sweep that asked for base2new's tables
    only_old = build_report(store, out_dir=str(tmp_path / "old_reports"))
    assert only_old["efficiency"] == {} and not any(
        f.startswith("efficiency") for f in os.listdir(tmp_path / "old_reports")
    )
    assert any("no record of base2new carries a cost" in m for m in only_old["missing"])
    assert "figure_cost_vs_h" not in only_old["figures"] and only_old["tables"]["table1_base2new"]["paths"]
    mixed = build_report(write(tmp_path / "mixed", recs), out_dir=str(tmp_path / "mixed_reports"))
    table = mixed["efficiency"]["base2new"]["table"]
    cocoop = next(row for row in table.rows if row["method"] == "cocoop")
    assert cocoop["train_s_median"] is None and cocoop["jobs"] == 6
    assert any("12 record(s) of cocoop carry no cost" in note for note in table.notes)


def test_few_shot_methods_are_plotted_at_their_own_shot_count(tmp_path):
    from test_fewshot_report import record as fewshot_record

    recs = []
    for dataset, accuracy in (("mini_a", 30.0), ("mini_b", 40.0)):
        recs.append(costed(fewshot_record("zsclip", dataset, 0, None, accuracy), None, params=0))
        for shots, t in ((1, 5.0), (4, 20.0)):
            for seed in (1, 2):
                rec = fewshot_record("coop", dataset, shots, seed, accuracy + 10 * shots + seed)
                recs.append(costed({**rec, "config": f"ep{shots}"}, t + seed))
                recs[-1]["run_dir"] += f"/{shots}shot"  # a job per shot count
    summary = build_report(recs, out_dir=str(tmp_path / "reports"))  # records as the few-shot tests write them
    # One row per method, as the comparison names it: a config per shot count is still CoOp.
    rows = {row["method"]: row for row in read_csv(summary["efficiency"]["fewshot"]["paths"]["csv"])}
    assert sorted(rows) == ["coop", "zsclip"]
    assert float(rows["coop"]["train_s_median"]) == pytest.approx(statistics.median([6.0, 7.0, 21.0, 22.0]))
    assert int(rows["coop"]["jobs"]) == 8  # two shot counts x two seeds x two datasets
    # The figure: CoOp at its most shots, against its training time at that shot count.
    drawn = {row["method"]: row for row in read_csv(summary["figures"]["figure_cost_vs_accuracy"]["csv"])}
    assert sorted(drawn) == ["coop", "zsclip"]
    for name in drawn:
        table = summary["tables"]["fewshot_4shot"]["table"]
        expected = table.cell("average", table.group_for(name), "acc").mean
        assert float(drawn[name]["accuracy"]) == pytest.approx(expected)
    assert float(drawn["coop"]["train_s_median"]) == pytest.approx(21.5)


def test_a_parameter_range_and_a_cached_throughput_read_the_same_in_markdown_and_csv():
    from harness.report.efficiency import Efficiency, csv_text, markdown

    row = dict.fromkeys(COLUMNS)
    row.update(method="coop_dept", learnable_params=(2304, 2954), eval_images_per_s="29525.0*", jobs=18)
    table = Efficiency("base2new", [row])
    assert "| coop_dept | 2,304–2,954 | – | – | – | 29,525.0* | – | – | 18 |" in markdown(table)
    assert "coop_dept,2304–2954,,,,29525.0*,,,18" in csv_text(table)


def test_cost_figure_plots_each_row_at_its_own_columns_headline(tmp_path):
    """CoOp of one config on two backbones: two rows of the efficiency table and two columns of Table 1. Each
    point is its own column's H beside its own training time, never the other backbone's H."""
    recs, times = study()
    rn50 = []
    for r in [r for r in recs if r["method"] == "coop"]:
        other = {**r, "backbone": "RN50", "settings": {**r["settings"], "backbone": "RN50"}}
        other["metrics"] = {**r["metrics"], "accuracy": r["metrics"]["accuracy"] - 40.0}
        other["cost"] = {**r["cost"], "train_s": r["cost"]["train_s"] * 5}
        other.update(job=r["job"] + "/rn50", run_dir=r["run_dir"] + "/rn50")
        rn50.append(other)
    summary = build_report(write(tmp_path / "out", recs + rn50), out_dir=str(tmp_path / "reports"))
    points = {row["method"]: row for row in read_csv(summary["figures"]["figure_cost_vs_h"]["csv"])}
    h = lambda base, new: 2 * base * new / (base + new)  # noqa: E731
    assert float(points["coop (ViT-B/16)"]["H"]) == pytest.approx(h(80.0, 60.0), abs=1e-3)
    assert float(points["coop (RN50)"]["H"]) == pytest.approx(h(40.0, 20.0), abs=1e-3)
    assert float(points["coop (ViT-B/16)"]["train_s_median"]) == pytest.approx(statistics.median(times["coop"]))
    assert float(points["coop (RN50)"]["train_s_median"]) == pytest.approx(5 * statistics.median(times["coop"]))


def test_all_variants_gives_each_settings_run_its_row_and_its_own_point(tmp_path):
    """--all-variants shows an older settings run of CoOp (other epochs, far below, ten times slower) as its own
    column: the efficiency table and the cost figure show it as its own row and point, never its H beside the
    newer run's time or the other way round."""
    recs, times = study()
    old = []
    for r in [r for r in recs if r["method"] == "coop"]:
        o = {**r, "settings": {**r["settings"], "epochs": 50}, "timestamp": "2023-01-01T00:00:00"}
        o["fingerprint"] = fingerprint_of(o["settings"])
        o["metrics"] = {**r["metrics"], "accuracy": r["metrics"]["accuracy"] - 40.0}
        o["cost"] = {**r["cost"], "train_s": r["cost"]["train_s"] * 10}
        o.update(job=r["job"] + "/old", run_dir=r["run_dir"] + "/old")
        old.append(o)
    summary = build_report(write(tmp_path / "out", old + recs), out_dir=str(tmp_path / "reports"), all_variants=True)
    rows = {row["method"]: row for row in read_csv(summary["efficiency"]["base2new"]["paths"]["csv"])}
    points = {row["method"]: row for row in read_csv(summary["figures"]["figure_cost_vs_h"]["csv"])}
    coop = sorted(name for name in rows if name.startswith("coop"))
    assert len(coop) == 2 and set(coop) <= set(points), (rows, points)
    h = lambda base, new: 2 * base * new / (base + new)  # noqa: E731
    by_time = sorted(coop, key=lambda name: float(rows[name]["train_s_median"]))
    assert float(rows[by_time[0]]["train_s_median"]) == pytest.approx(statistics.median(times["coop"]))
    assert float(points[by_time[0]]["H"]) == pytest.approx(h(80.0, 60.0), abs=1e-3)
    assert float(points[by_time[1]]["H"]) == pytest.approx(h(40.0, 20.0), abs=1e-3)


def test_no_pareto_front_across_devices(tmp_path):
    """CoOp timed on a CPU, CoCoOp on the GPU: the figure would put CoOp's CPU time beside CoCoOp's GPU time and
    draw a front ranking the machines. No panel is drawn, and the report says why."""
    recs, _ = study()
    for r in recs:
        if r["method"] == "coop":
            r["cost"]["device"] = "AMD EPYC 7763"
    store = write(tmp_path / "out", recs)
    expect(store, datasets=("eurosat", "dtd"))  # a sweep asked for the study: what its figure lacks is listed
    summary = build_report(store, out_dir=str(tmp_path / "reports"))
    assert "figure_cost_vs_h" not in summary["figures"]
    assert any("several devices" in m and "AMD EPYC 7763" in m and GPU in m for m in summary["missing"])
    # one device: drawn
    recs, _ = study()
    summary = build_report(write(tmp_path / "one", recs), out_dir=str(tmp_path / "reports1"))
    assert "figure_cost_vs_h" in summary["figures"]


def test_the_cost_figure_lists_as_missing_only_what_a_sweep_asked_for(tmp_path):
    """An ad hoc run (its own experiment, no expected.json) beside a swept study: what the cost figure lacks
    for the ad hoc one is not missing; once a sweep of it asked, it is."""
    recs, _ = study()
    recs.append(costed(record("coop", "eurosat", "base", 80.0, experiment="adhoc"), 12.0))  # no new: no H
    store = write(tmp_path / "out", recs)
    expect(store, datasets=("eurosat", "dtd"))
    summary = build_report(store, out_dir=str(tmp_path / "reports"))
    assert summary["expected"] and "figure_cost_vs_h" in summary["figures"]
    assert not [m for m in summary["missing"] if m.startswith("Cost figure")], summary["missing"]
    expect(store, name="adhoc", datasets=("eurosat",))
    summary = build_report(store, out_dir=str(tmp_path / "reports"))
    assert "Cost figure: no method of adhoc has both a training time and a headline Average" in summary["missing"]
