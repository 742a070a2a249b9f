"""The report stage: aggregation by hand-computed numbers, the paper's own Table 1, files, CLI."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import pytest

from harness.fingerprint import fingerprint_of
from harness.report import (
    AVERAGE,
    NOTHING_EXPECTED,
    PAPER_DATASETS,
    build_report,
    build_tables,
    default_paper_dir,
    trainable_parameters,
)
from harness.report.__main__ import main as report_main
from harness.results import append_record

CONFIGS = {
    "zsclip": "vit_b16",
    "coop": "vit_b16_ctxv1",
    "cocoop": "vit_b16_c4_ep10_batch1_ctxv1",
    "kgcoop": "kgcoop/vit_b16_ep100_ctxv1",
    "maple": "maple/vit_b16_c2_ep5_batch4_2ctx",
    "promptsrc": "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx",
    "coop_dept": "coop_dept/vit_b16_ep10_bs4_lr35",
}


def record(
    method,
    dataset,
    subsample,
    accuracy,
    seed=1,
    experiment="base2new",
    train_subsample="base",
    train_dataset="same",
    n_ctx=4,
    ctx_init="a photo of a",
    config=None,
    backbone="ViT-B/16",
):
    """A complete results-store record; zero-shot CLIP gets no training fields and no seed."""
    zero_shot = method == "zsclip"
    options = {} if zero_shot else {"n_ctx": n_ctx, "ctx_init": ctx_init}
    trained_on = None if zero_shot else (dataset if train_dataset == "same" else train_dataset)
    settings = {"method": method, "options": options, "dataset": trained_on or dataset, "backbone": backbone}
    if not zero_shot:
        settings.update(subsample=train_subsample, seed=seed, shots=16)
    settings["data"] = "split-digest"
    return {
        "experiment": experiment,
        "job": f"{method}/{dataset}/{subsample}/seed{seed}",
        "method": method,
        "config": config or CONFIGS[method],
        "options": options,
        "dataset": dataset,
        "subsample": subsample,
        "train_dataset": None if zero_shot else (dataset if train_dataset == "same" else train_dataset),
        "train_subsample": None if zero_shot else train_subsample,
        "shots": 16,
        "seed": None if zero_shot else seed,
        "backbone": backbone,
        "precision": "fp16",
        "metrics": {
            "accuracy": accuracy,
            "error": 100 - accuracy,
            "macro_f1": accuracy,
            "perclass_accuracy": None,
            "per_class_accuracy": [],
            "total": 100,
            "correct": round(accuracy),
        },
        "epochs": 0 if zero_shot else 10,
        "wall_time_s": 1.0,
        "git_commit": "test",
        "versions": {},
        "timestamp": "2024-01-01T00:00:00",
        "run_dir": "/tmp/x",
        "settings": settings,
        "fingerprint": fingerprint_of(settings),
        "reevaluated": False,
    }


def write(store, records):
    for r in records:
        append_record(str(store), r)
    return str(store)


def paper_rows(name):
    with open(os.path.join(default_paper_dir(), name), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def small_store(tmp_path):
    """CoCoOp on two datasets with seeds 1-3 (one seed missing on dtd/new), CoOp and CLIP."""
    recs = []
    for seed, b, n in ((1, 70.0, 60.0), (2, 72.0, 62.0), (3, 74.0, 67.0)):
        recs += [record("cocoop", "eurosat", "base", b, seed), record("cocoop", "eurosat", "new", n, seed)]
    for seed, b, n in ((1, 50.0, 40.0), (2, 54.0, 42.0), (3, 52.0, None)):
        recs.append(record("cocoop", "dtd", "base", b, seed))
        if n is not None:
            recs.append(record("cocoop", "dtd", "new", n, seed))
    for seed in (1, 2, 3):
        recs += [record("coop", "eurosat", "base", 90.0, seed), record("coop", "eurosat", "new", 50.0 + seed, seed)]
    recs += [record("zsclip", "eurosat", "base", 56.0), record("zsclip", "eurosat", "new", 64.0)]
    return write(tmp_path / "out", recs)


def test_seed_mean_population_std_and_h(small_store):
    t = build_tables(small_store)["table1_base2new"]
    cocoop = t.group_for("cocoop")
    base, new, h = (t.cell("eurosat", cocoop, m) for m in ("base", "new", "h"))
    assert base.mean == pytest.approx(72.0) and base.std == pytest.approx(math.sqrt(8 / 3))  # 1.63299...
    assert base.std == pytest.approx(1.632993, abs=1e-6)
    assert new.mean == pytest.approx(63.0) and new.std == pytest.approx(math.sqrt(26 / 3))  # 60, 62, 67
    assert h.mean == pytest.approx(2 * 72 * 63 / (72 + 63))  # 67.2, from the seed means
    assert base.text() == "72.00 ± 1.63" and h.text() == "67.20"
    clip = t.group_for("zsclip")
    assert t.cell("eurosat", clip, "base").text() == "56.00"  # zero-shot: no seeds, no ±
    assert t.cell("eurosat", clip, "h").mean == pytest.approx(2 * 56 * 64 / 120)


def test_missing_seed_is_marked_and_listed(small_store):
    # The sweep asked for the paper's 11 datasets and seeds 1-3 (its expected.json): what it lacks is listed.
    asked = {"base2new": {"datasets": list(PAPER_DATASETS), "seeds": [1, 2, 3]}}
    t = build_tables(small_store, expectations=asked)["table1_base2new"]
    cocoop = t.group_for("cocoop")
    new = t.cell("dtd", cocoop, "new")
    assert new.mean == pytest.approx(41.0) and new.std == pytest.approx(1.0)
    assert new.text() == "41.00 ± 1.00 †(2/3 seeds)"
    assert "†" in t.cell("dtd", cocoop, "h").text()
    assert any("dtd new" in m and "seed 3 missing (2/3)" in m for m in t.missing)
    # The average only takes the complete dataset (eurosat) and says so.
    avg = t.cell(AVERAGE, cocoop, "base")
    assert avg.mean == pytest.approx(72.0) and avg.note == "‡(1/11 datasets)"
    assert avg.paper is None  # no paper comparison for a partial average
    assert any("no records for imagenet" in m for m in t.missing)
    # Asking for seeds 1-4 marks even the complete-looking cells.
    t4 = build_tables(small_store, expected_seeds=(1, 2, 3, 4))["table1_base2new"]
    assert t4.cell("eurosat", t4.group_for("cocoop"), "base").note == "†(3/4 seeds)"


def test_average_h_from_averaged_base_and_new(tmp_path):
    recs = []
    for ds, b, n in (("eurosat", 90.0, 30.0), ("dtd", 50.0, 70.0)):
        recs += [record("coop", ds, "base", b), record("coop", ds, "new", n)]
    t = build_tables(write(tmp_path / "o", recs))["table1_base2new"]
    g = t.group_for("coop")
    assert t.cell(AVERAGE, g, "base").mean == pytest.approx(70.0)
    assert t.cell(AVERAGE, g, "new").mean == pytest.approx(50.0)
    h = t.cell(AVERAGE, g, "h").mean
    assert h == pytest.approx(2 * 70 * 50 / 120)  # 58.33, not the mean of 45.0 and 58.33
    assert h != pytest.approx((45.0 + 2 * 50 * 70 / 120) / 2)


def test_paper_table1_reproduces_its_own_h(tmp_path):
    recs = []
    for row in paper_rows("base2new.csv"):
        if row["dataset"] == "average":
            continue
        recs.append(record(row["method"], row["dataset"], "base", float(row["base"])))
        recs.append(record(row["method"], row["dataset"], "new", float(row["new"])))
    summary = build_report(write(tmp_path / "o", recs), out_dir=str(tmp_path / "r"))
    t = summary["tables"]["table1_base2new"]["table"]
    per_dataset = {r["method"] for r in paper_rows("base2new.csv") if r["dataset"] != "average"}
    for row in (r for r in paper_rows("base2new.csv") if r["method"] in per_dataset):
        g = t.group_for(row["method"])
        for metric in ("base", "new", "h"):
            cell = t.cell(row["dataset"], g, metric)
            assert cell.paper == float(row[metric])
            if row["dataset"] == "average" and row["method"] == "coop_dept":
                # DePT prints per-dataset values rounded to 2 decimals: their mean may differ by 0.01
                assert abs(cell.mean - float(row[metric])) <= 0.01 + 1e-9, (row, metric)
                continue
            assert f"{cell.mean:.2f}" == row[metric], (row, metric)
            assert cell.delta_text() == "0.00"
    assert [f"{t.cell(AVERAGE, t.group_for(m), 'h').mean:.2f}" for m in ("zsclip", "coop", "cocoop")] == [
        "71.70",
        "71.66",
        "75.83",
    ]
    frame = summary["tables"]["table1_base2new"]["frame"]
    deltas = [c for c in frame.columns if c.endswith("Δ")]
    published_per_dataset = [c for c in deltas if c.split()[0] in ("CLIP", "CoOp", "CoCoOp")]  # CoCoOp paper
    assert len(deltas) == 12 and len(published_per_dataset) == 9  # and DePT's 3, checked cell by cell above
    assert set(frame[published_per_dataset].values.ravel()) == {"0.00"}
    assert not any("Table 1" in m for m in summary["missing"])
    md = open(summary["tables"]["table1_base2new"]["paths"]["md"]).read()
    assert "| Average | 69.34 | 69.34 | 0.00 |" in md


def test_files_and_figures_are_written(tmp_path):
    recs = []
    for ds, off in (("eurosat", 0.0), ("dtd", 5.0), ("synthetic", 2.0)):
        recs += [record("zsclip", ds, "base", 60 + off), record("zsclip", ds, "new", 65 + off)]
        for seed in (1, 2):
            recs += [
                record("coop", ds, "base", 85 + off + seed, seed),
                record("coop", ds, "new", 55 + off, seed),
                record("cocoop", ds, "base", 82 + off, seed),
                record("cocoop", ds, "new", 66 + off - seed, seed),
            ]
            for n_ctx, init, cfg in (
                (4, "", "vit_b16_c4_ep10_batch1"),
                (8, "", "vit_b16_c8_ep10_batch1"),
                (16, "", "vit_b16_c16_ep10_batch1"),
            ):
                for sub, acc in (("base", 80 + n_ctx / 4), ("new", 60 + n_ctx / 2)):
                    recs.append(
                        record("cocoop", ds, sub, acc + off, seed, "ablations", n_ctx=n_ctx, ctx_init=init, config=cfg)
                    )
            recs.append(record("coop", ds, "all", 70 + off, seed))
        recs.append(record("zsclip", ds, "all", 62 + off))
    for seed in (1, 2):  # Table 5 on ImageNet, Tables 2 and 3 from the ImageNet checkpoints
        for method, n_ctx, init, cfg in (
            ("coop", 4, "a photo of a", None),
            ("coop", 60, "", "vit_b16_c60"),
            ("cocoop", 4, "a photo of a", None),
        ):
            recs += [
                record(method, "imagenet", sub, 70.0 + seed, seed, "ablations", n_ctx=n_ctx, ctx_init=init, config=cfg)
                for sub in ("base", "new")
            ]
        for method_index, method in enumerate(("coop", "cocoop")):
            for i, ds in enumerate(("imagenet", "caltech101", "dtd", "imagenetv2", "imagenet_a")):
                recs.append(
                    record(
                        method,
                        ds,
                        "all",
                        60.0 + seed + 3 * i + 10 * method_index,  # a different value in every cell
                        seed,
                        "crossdataset" if ds in PAPER_DATASETS else "domaingen",
                        train_subsample="all",
                        train_dataset="imagenet",
                    )
                )
    summary = build_report(write(tmp_path / "o", recs), out_dir=str(tmp_path / "r"))
    out = tmp_path / "r"
    for key in (
        "table1_base2new",
        "table2_crossdataset",
        "table3_domaingen",
        "table4_class_incremental",
        "table5_bigger_coop",
        "fig4a_init_ablation",
        "fig4b_length_ablation",
    ):
        for ext in ("md", "tex", "csv"):
            assert (out / f"{key}.{ext}").stat().st_size > 0, (key, ext)
    for name in ("figure3_cocoop_vs_coop", "figure4_ablations", "figure_base_vs_new"):
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000, (name, ext)
    index = (out / "index.md").read_text()
    # No sweep wrote an expected.json beside these records: what is missing is not known, and nothing is listed.
    assert "table1_base2new.md" in index and "## Missing" in index and NOTHING_EXPECTED in index
    t1 = summary["tables"]["table1_base2new"]["table"]
    assert [r for r, _ in t1.rows] == ["dtd", "eurosat", "synthetic", AVERAGE]
    # The average covers the two paper datasets only (synthetic is not one of the 11).
    assert t1.cell(AVERAGE, t1.group_for("zsclip"), "base").mean == pytest.approx(62.5)
    t5 = summary["tables"]["table5_bigger_coop"]["table"]
    params = {r: t5.cell(r, t5.groups[0], "params") for r, _ in t5.rows}
    assert params["CoOp (ctx 4)"].mean == 2048 and params["CoOp (ctx 60, random init)"].mean == 30720
    assert params["CoCoOp (ctx 4)"].mean == 35360 and params["CoCoOp (ctx 4)"].paper == 34816
    t4b = summary["tables"]["fig4b_length_ablation"]["table"]
    assert [g.label for g in t4b.groups] == ["CoCoOp ctx 4", "CoCoOp ctx 8", "CoCoOp ctx 16"]
    t4a = summary["tables"]["fig4a_init_ablation"]["table"]
    assert [g.label for g in t4a.groups] == ["CoCoOp “a photo of a”", "CoCoOp random"]
    t2 = summary["tables"]["table2_crossdataset"]["table"]
    assert t2.cell(AVERAGE, t2.group_for("coop"), "acc").note == "‡(2/10 datasets)"

    # Tables 2-4: every cell against the mean over seeds computed here from the records themselves.
    def seed_mean(method, dataset, subsample, experiments):
        values = [
            r["metrics"]["accuracy"]
            for r in recs
            if (r["method"], r["dataset"], r["subsample"]) == (method, dataset, subsample)
            and r["experiment"] in experiments
        ]
        return sum(values) / len(values)

    t3 = summary["tables"]["table3_domaingen"]["table"]
    assert [r for r, _ in t3.rows] == ["imagenet", "imagenetv2", "imagenet_a", AVERAGE]
    for method in ("coop", "cocoop"):
        for ds in ("caltech101", "dtd"):
            assert t2.cell(ds, t2.group_for(method), "acc").mean == pytest.approx(
                seed_mean(method, ds, "all", {"crossdataset"})
            )
        expected_average = (
            seed_mean(method, "caltech101", "all", {"crossdataset"}) + seed_mean(method, "dtd", "all", {"crossdataset"})
        ) / 2
        assert t2.cell(AVERAGE, t2.group_for(method), "acc").mean == pytest.approx(expected_average)
        for ds in ("imagenetv2", "imagenet_a"):
            cell = t3.cell(ds, t3.group_for(method), "acc")
            assert cell.mean == pytest.approx(
                seed_mean(method, ds, "all", {"domaingen"})
            ) and cell.std == pytest.approx(0.5)
    t4 = summary["tables"]["table4_class_incremental"]["table"]
    g4 = t4.group_for("coop")
    for ds in ("dtd", "eurosat"):
        assert t4.cell(ds, g4, "acc").mean == pytest.approx(seed_mean("coop", ds, "all", {"base2new"}))
    paper_two = [seed_mean("coop", ds, "all", {"base2new"}) for ds in ("dtd", "eurosat")]
    assert t4.cell(AVERAGE, g4, "acc").mean == pytest.approx(sum(paper_two) / 2)  # synthetic is no paper dataset
    with open(out / "table3_domaingen.csv") as f:  # the written file holds the same numbers
        rows = list(csv.DictReader(f))
    written = {(r["row"], r["method"]): float(r["mean"]) for r in rows if r.get("mean")}
    assert written[("imagenet_a", "cocoop")] == pytest.approx(seed_mean("cocoop", "imagenet_a", "all", {"domaingen"}))

    # Every figure's CSV holds the numbers it draws, checked against values computed here.
    def figure_rows(name):
        with open(out / f"{name}.csv") as f:
            return list(csv.DictReader(f))

    fig3 = {(r["panel"], r["dataset"]): float(r["cocoop_minus_coop"]) for r in figure_rows("figure3_cocoop_vs_coop")}
    for ds, label in (("dtd", "DTD"), ("eurosat", "EuroSAT")):
        for panel in ("base", "new"):
            expected = seed_mean("cocoop", ds, panel, {"base2new"}) - seed_mean("coop", ds, panel, {"base2new"})
            assert fig3[(panel, label)] == pytest.approx(expected, abs=1e-4)
    points = {(r["method"].split(" ")[0], r["dataset"]): r for r in figure_rows("figure_base_vs_new")}
    eurosat_coop = points[("CoOp", "EuroSAT")]
    assert float(eurosat_coop["base"]) == pytest.approx(seed_mean("coop", "eurosat", "base", {"base2new"}))
    assert float(eurosat_coop["new"]) == pytest.approx(seed_mean("coop", "eurosat", "new", {"base2new"}))
    fig4 = {
        (r["panel"], r["n_ctx"], r["metric"]): float(r["value"]) for r in figure_rows("figure4_ablations") if r["n_ctx"]
    }
    # ctx 8 on the two paper datasets (offsets 0 and 5): base 80 + 8/4, new 60 + 8/2
    base8, new8 = 82 + 2.5, 64 + 2.5
    assert fig4[("length", "8", "base")] == pytest.approx(base8) and fig4[("length", "8", "new")] == pytest.approx(new8)
    assert fig4[("length", "8", "h")] == pytest.approx(2 * base8 * new8 / (base8 + new8), abs=1e-3)
    tex = (out / "table1_base2new.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "\\toprule" in tex


def test_absent_figure_data_is_listed_not_drawn(tmp_path):
    store = write(tmp_path / "o", [record("zsclip", "dtd", "base", 50.0), record("zsclip", "dtd", "new", 60.0)])
    expect(store, datasets=("dtd",))  # asks for Figure 3 (Table 1's)
    expect(store, name="ablations", datasets=("dtd",))  # asks for Figure 4
    summary = build_report(store, out_dir=str(tmp_path / "r"))
    assert set(summary["figures"]) == {"scatter", "methods"}  # what the data allow: CLIP's base/new
    assert any(m.startswith("Figure 3") for m in summary["missing"]) and any(
        m.startswith("Figure 4a") for m in summary["missing"]
    )
    assert not (tmp_path / "r" / "figure3_cocoop_vs_coop.png").exists()
    assert not (tmp_path / "r" / "table2_crossdataset.md").exists()


def test_experiment_selection(tmp_path):
    recs = [record("coop", "dtd", s, 50.0, 1, "demo") for s in ("base", "new")]
    recs += [record("coop", "dtd", s, 70.0, 1, "base2new") for s in ("base", "new")]
    store = write(tmp_path / "o", recs)
    t = build_tables(store)["table1_base2new"]
    assert [g.label for g in t.groups] == ["CoOp (base2new)", "CoOp (demo)"]  # not pooled
    t = build_tables(store, experiments=["demo"])["table1_base2new"]
    assert len(t.groups) == 1 and t.cell("dtd", t.groups[0], "base").mean == 50.0
    t = build_tables(store, experiments={"table1": ["base2new"]})["table1_base2new"]
    assert t.cell("dtd", t.groups[0], "base").mean == 70.0


def test_trainable_parameters():
    assert (
        trainable_parameters(record("cocoop", "imagenet", "base", 1.0, backbone="tiny"))
        == 4 * 64 + 32 * 2 + 2 + 2 * 64 + 64
    )
    assert trainable_parameters(record("coop", "imagenet", "base", 1.0, n_ctx=16, ctx_init="")) == 16 * 512


def test_cli_small_store(small_store, tmp_path):
    out = tmp_path / "cli"
    assert report_main(["--results", small_store, "--out", str(out), "--tracking", "none"]) == 0
    assert (out / "table1_base2new.md").exists() and (out / "index.md").exists()
    assert report_main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "e")]) == 1
    assert not (tmp_path / "e").exists()
    # a mistyped store leaves the report already in --out as it was (its tables are not dropped as stale)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert report_main(["--results", str(tmp_path / "typo"), "--out", str(out), "--tracking", "none"]) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    expect(small_store, datasets=("eurosat", "dtd"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.report",
            "--results",
            small_store + "/results.jsonl",
            "--out",
            str(tmp_path / "cli2"),
            "--experiment",
            "base2new",
            "--seeds",
            "1",
            "2",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "table1_base2new" not in done.stderr and (tmp_path / "cli2" / "table1_base2new.csv").exists()
    assert "seed 3 missing" in done.stdout


def test_tracking_logs_tables_and_figures(small_store, tmp_path, monkeypatch):
    from harness import tracking

    calls = {"start": [], "table": [], "image": [], "finish": 0}

    class Recorder(tracking.Tracker):
        def log_table(self, name, frame):
            calls["table"].append((name, len(frame)))

        def log_image(self, name, path):
            assert os.path.exists(path)
            calls["image"].append(name)

        def finish(self, failed=False):
            calls["finish"] += 1

    def start_run(mode, **kwargs):
        calls["start"].append((mode, kwargs))
        return Recorder()

    monkeypatch.setattr(tracking, "start_run", start_run)
    summary = build_report(small_store, out_dir=str(tmp_path / "r"), tracking="offline")
    ((mode, kwargs),) = calls["start"]
    assert mode == "offline" and kwargs["job_type"] == "report" and kwargs["name"] == "report"
    assert [n for n, _ in calls["table"]] == [k for k, v in summary["tables"].items() if v["paths"]]
    assert ("table1_base2new", 3) in calls["table"]  # dtd, eurosat, Average
    assert sorted(calls["image"]) == sorted(summary["figures"]) and calls["finish"] == 1
    calls["start"].clear()
    build_report(small_store, out_dir=str(tmp_path / "r2"))  # tracking="none": no run at all
    assert calls["start"] == []


# -- the successors (KgCoOp, MaPLe, PromptSRC) -------------------------------------------------------


def test_successors_published_averages_are_the_protocols_with_their_sources():
    with open(os.path.join(os.path.dirname(default_paper_dir()), "..", "docs", "PROTOCOL-successors.md")) as f:
        text = " ".join(f.read().split())
    rows = {r["method"]: r for r in paper_rows("base2new.csv") if r["dataset"] == "average"}
    for method, name in (("kgcoop", "KgCoOp"), ("maple", "MaPLe"), ("promptsrc", "PromptSRC")):
        row = rows[method]
        assert f"{name} {row['base']} / {row['new']} / {row['h']} ({name} README)" in text
        assert row["source"].startswith(f"{name} README")
        base, new = float(row["base"]), float(row["new"])
        assert f"{2 * base * new / (base + new):.2f}" == row["h"]  # H from base and new, not copied
    assert {r["source"] for r in paper_rows("base2new.csv") if r["method"] in CONFIGS and r["method"][-4:] == "coop"}


def test_successors_in_table1_beside_their_published_average_and_the_comparison_figure(tmp_path):
    recs, ours = [], {}
    for m, method in enumerate(("kgcoop", "maple", "promptsrc")):
        for d, dataset in enumerate(PAPER_DATASETS):
            for seed in (1, 2, 3):
                base, new = 70.0 + m + d + seed, 60.0 + 2 * m - d + seed
                recs += [record(method, dataset, "base", base, seed), record(method, dataset, "new", new, seed)]
        # the average of the per-dataset seed means, computed here
        base = sum(70.0 + m + d + 2 for d in range(11)) / 11
        new = sum(60.0 + 2 * m - d + 2 for d in range(11)) / 11
        ours[method] = (base, new, 2 * base * new / (base + new))
    summary = build_report(write(tmp_path / "o", recs), out_dir=str(tmp_path / "r"))
    t = summary["tables"]["table1_base2new"]["table"]
    published = {r["method"]: r for r in paper_rows("base2new.csv") if r["dataset"] == "average"}
    for method, (base, new, h) in ours.items():
        g = t.group_for(method)
        for metric, value in (("base", base), ("new", new), ("h", h)):
            cell = t.cell(AVERAGE, g, metric)
            assert cell.mean == pytest.approx(value) and cell.paper == float(published[method][metric])
            assert cell.delta == pytest.approx(value - float(published[method][metric]))
    assert [g.label for g in t.groups] == ["KgCoOp", "MaPLe", "PromptSRC"]
    md = open(summary["tables"]["table1_base2new"]["paths"]["md"]).read()
    assert "KgCoOp Base (paper)" in md and "80.73" in md and "MaPLe H (paper)" in md
    for ext in ("png", "pdf"):
        assert (tmp_path / "r" / f"figure_methods_base_new_h.{ext}").stat().st_size > 1000
    from harness.report.figures import method_averages

    experiment, rows = method_averages(t)
    assert experiment == "base2new" and [r["method"] for r in rows] == ["kgcoop", "maple", "promptsrc"]
    for r in rows:
        assert (r["base"], r["new"], r["h"]) == pytest.approx(ours[r["method"]])
        assert r["paper_h"] == float(published[r["method"]]["h"])


def test_comparison_figure_on_demo_data_has_no_paper_ticks(tmp_path):
    recs = [record("zsclip", "miniworld", s, a) for s, a in (("base", 60.0), ("new", 70.0))]
    for seed in (1, 2):
        recs += [
            record("maple", "miniworld", "base", 80.0 + seed, seed),
            record("maple", "miniworld", "new", 65.0, seed),
        ]
    summary = build_report(write(tmp_path / "o", recs), out_dir=str(tmp_path / "r"))
    assert "methods" in summary["figures"]
    from harness.report.figures import method_averages

    _, rows = method_averages(summary["tables"]["table1_base2new"]["table"])
    assert [(r["method"], r["base"], r["paper_base"]) for r in rows] == [("zsclip", 60.0, None), ("maple", 81.5, None)]
    empty_store = write(tmp_path / "e", [record("zsclip", "dtd", "base", 50.0)])
    expect(empty_store, datasets=("dtd",))
    empty = build_report(empty_store, out_dir=str(tmp_path / "re"))
    assert "methods" not in empty["figures"] and any("Methods comparison" in m for m in empty["missing"])


def test_transfer_tables_take_source_and_targets_from_the_records(tmp_path):
    """Tables 2 and 3 of a study on other datasets: the source and targets are the records' own, each
    table's targets are its experiment's, the source row is shared (one training serves both), the
    Average is over the targets only, and each figure draws CoCoOp minus CoOp per target."""
    recs = []
    cross, shifted = ("world_shapes", "world_textures", "world_backdrops"), ("world_dusk", "world_sea")
    for i, ds in enumerate(("world_lamp",) + cross + shifted):
        experiment = "domaingen" if ds in shifted else "crossdataset"
        recs.append(record("zsclip", ds, "all", 40.0 + 3 * i, experiment=experiment))
        for seed in (1, 2):
            for m, method in enumerate(("coop", "cocoop")):
                value = 50.0 + 7 * i + seed + (4 - i) * m  # CoCoOp ahead on some targets, behind on others
                recs.append(record(method, ds, "all", value, seed, experiment, "all", "world_lamp"))
    recs.append(record("zsclip", "world_lamp", "all", 40.0, experiment="domaingen"))  # its own zero-shot source
    summary = build_report(write(tmp_path / "o", recs), out_dir=str(tmp_path / "r"))
    out = tmp_path / "r"

    def mean(method, ds):
        values = [r["metrics"]["accuracy"] for r in recs if (r["method"], r["dataset"]) == (method, ds)]
        return sum(values) / len(values)

    for key, targets in (("table2_crossdataset", cross), ("table3_domaingen", shifted)):
        t = summary["tables"][key]["table"]
        assert t.title.endswith("from world_lamp (accuracy %)")
        assert [r for r, _ in t.rows] == ["world_lamp", *sorted(targets), AVERAGE] and t.source == "world_lamp"
        assert t.rows[0][1] == "world_lamp (source)"
        for method in ("zsclip", "coop", "cocoop"):
            g = t.group_for(method)
            for ds in ("world_lamp", *targets):
                assert t.cell(ds, g, "acc").mean == pytest.approx(mean(method, ds)), (key, method, ds)
            average = sum(mean(method, ds) for ds in targets) / len(targets)
            cell = t.cell(AVERAGE, g, "acc")
            assert cell.mean == pytest.approx(average) and not cell.note
            assert cell.paper is None  # the paper's average is over ImageNet's targets, not these
        for ext in ("md", "csv", "tex"):
            assert (out / f"{key}.{ext}").stat().st_size > 0
        name = "figure_" + key.split("_", 1)[1] + "_cocoop_vs_coop"
        with open(out / f"{name}.csv") as f:
            drawn = {r["dataset"]: float(r["cocoop_minus_coop"]) for r in csv.DictReader(f)}
        assert drawn == pytest.approx({ds: mean("cocoop", ds) - mean("coop", ds) for ds in targets})
        assert list(drawn.values()) == sorted(drawn.values(), reverse=True)
        assert (out / f"{name}.png").stat().st_size > 1000
    assert not summary["tables"]["table2_crossdataset"]["table"].missing


def test_methods_are_labelled_ordered_and_coloured_from_the_registry(monkeypatch):
    """Labels and colours are what each method's file says; the built-ins keep the paper's order (year,
    then registration); a method without a colour gets one no other method has, the same every time."""
    import methods
    from harness.report import figures
    from harness.report.tables import method_label, method_rank

    builtin = ["zsclip", "coop", "cocoop", "kgcoop", "maple", "promptsrc"]
    assert sorted(builtin, key=method_rank) == builtin
    assert [method_label(m) for m in builtin] == ["CLIP", "CoOp", "CoCoOp", "KgCoOp", "MaPLe", "PromptSRC"]
    assert method_label("not_registered") == "not_registered" and method_rank("not_registered") > method_rank("coop")
    own = {m: methods.method_info(m).color for m in builtin}
    assert [figures.color(m) for m in builtin] == list(own.values()) and len(set(own.values())) == len(builtin)

    class Plain(methods.method_class("coop")):  # says nothing about itself: inherits no label or colour
        pass

    for name in ("plain_b", "plain_a"):
        monkeypatch.setitem(methods.METHODS, name, Plain)
    monkeypatch.setattr(figures, "_assigned", {})
    assert method_label("plain_a") == "plain_a"
    first = {m: figures.color(m) for m in ("plain_b", "not_registered", "plain_a")}
    assert len(set(first.values()) | set(own.values())) == len(first) + len(own)
    monkeypatch.setattr(figures, "_assigned", {})
    again = {m: figures.color(m) for m in ("not_registered", "plain_a", "plain_b")}
    assert (again["plain_a"], again["plain_b"]) == (first["plain_a"], first["plain_b"])  # asked in another order


def expect(store, name="base2new", datasets=("eurosat",), ran=None, protocol="base2new"):
    """The expected.json a sweep of ``name`` writes beside the store (``ran``: what it narrowed to)."""
    from harness import sweep

    full = {"name": name, "protocol": protocol, "datasets": list(datasets), "seeds": [1, 2, 3]}
    full["methods"] = {m: {} for m in ("zsclip", "coop", "cocoop")}
    sweep.record_expectation(str(store), {**full, **(ran or {})}, full)


def one_dataset_base2new(store) -> str:
    recs = [record("zsclip", "eurosat", sub, 50.0) for sub in ("base", "new", "all")]
    for seed in (1, 2, 3):
        for method in ("coop", "cocoop"):
            recs += [record(method, "eurosat", sub, 60.0 + seed, seed) for sub in ("base", "new", "all")]
    return write(store, recs)


def test_missing_lists_only_what_the_sweeps_asked_for(tmp_path):
    """A base-to-new sweep narrowed to one of its two datasets: the report lists the dataset it left out, and
    nothing of what no sweep asked for (Tables 2, 3, 5, Figure 4, the paper's other datasets)."""
    store = one_dataset_base2new(tmp_path / "o")
    expect(store, datasets=("eurosat", "dtd"), ran={"datasets": ["eurosat"]})
    summary = build_report(store, out_dir=str(tmp_path / "r"))
    missing = summary["missing"]
    assert summary["expected"] and missing
    assert not [m for m in missing if m.startswith(("Table 2", "Table 3", "Table 5", "Figure 4"))], missing
    assert not [m for m in missing if "imagenet" in m], missing
    assert any("not run: dtd" in m for m in missing)  # the sweep's own narrowing
    assert any(m.startswith("Table 1") and "dtd" in m for m in missing)
    assert any(m.startswith("Table 4") and "dtd" in m for m in missing)
    # The same tables reach the dashboard through build_study, scoped alike.
    assert not build_tables(store)["table5_bigger_coop"].missing
    # An ablations sweep beside it asks for Figure 4: now what Figure 4 lacks is missing.
    expect(store, name="ablations", datasets=("eurosat",))
    again = build_report(store, out_dir=str(tmp_path / "r2"))
    assert any(m.startswith("Figure 4a") for m in again["missing"])
    assert not [m for m in again["missing"] if m.startswith(("Table 2", "Table 3", "Table 5"))]


def test_without_expected_json_nothing_is_listed_and_the_index_says_why(tmp_path, capsys):
    store = one_dataset_base2new(tmp_path / "o")
    summary = build_report(store, out_dir=str(tmp_path / "r"))
    assert summary["missing"] == [] and not summary["expected"]
    assert f"* {NOTHING_EXPECTED}" in (tmp_path / "r" / "index.md").read_text()
    assert report_main(["--results", store, "--out", str(tmp_path / "r2"), "--tracking", "none"]) == 0
    assert f"missing: {NOTHING_EXPECTED}" in capsys.readouterr().out


def test_a_dataset_is_named_as_its_registry_entry_says(monkeypatch):
    # The data registry owns display names: a dataset registered with a label shows it in every table
    # and figure, one without shows its key; the paper's datasets print as the papers do.
    from dataclasses import replace

    from harness.data.registry import DATASETS
    from harness.report.tables import dataset_label

    assert [dataset_label(k) for k in ("oxford_flowers", "dtd", "imagenet_sketch")] == [
        "Flowers102",
        "DTD",
        "ImageNet-Sketch",
    ]
    monkeypatch.setitem(DATASETS, "my_birds", replace(DATASETS["synthetic"], key="my_birds", label="My Birds"))
    monkeypatch.setitem(DATASETS, "my_cats", replace(DATASETS["synthetic"], key="my_cats"))
    assert (dataset_label("my_birds"), dataset_label("my_cats"), dataset_label(AVERAGE)) == (
        "My Birds",
        "my_cats",
        "Average",
    )
