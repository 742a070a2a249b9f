"""No stale or mixed result passes for a fresh one: the report's own files, few-shot caches
checked against their split, features keyed on image content, fingerprints of what a number depends
on, changed settings run in folders of their own, ``--force`` and ``--reevaluate``, one settings
variant per report cell, and the expected datasets and seeds."""

import os

import pytest
from test_report import record, write

from harness.report import ReportError, build_report
from harness.report.__main__ import main as report_main
from harness.report.manifest import MANIFEST_FILE

# -- 5. the report owns only its own files ---------------------------------------------------------


def test_report_removes_only_its_own_stale_files(tmp_path):
    out = tmp_path / "r"
    full = [record("coop", "dtd", s, 60.0) for s in ("base", "new")]
    full += [record("coop", "dtd", "all", 55.0)]  # Table 4 (class-incremental)
    build_report(write(tmp_path / "a", full), out_dir=str(out))
    assert (out / "table4_class_incremental.tex").exists() and (out / MANIFEST_FILE).exists()
    others = [out / "paper" / "table1.csv", out / "bench.md", out / "demo-reference" / "index.md"]
    others.append(out / "wandb" / "dashboard.json")
    for path in others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"note": "not the report\'s"}')
    build_report(write(tmp_path / "b", full[:2]), out_dir=str(out))  # no class-incremental records now
    for ext in ("md", "tex", "csv"):
        assert not (out / f"table4_class_incremental.{ext}").exists()
    assert (out / "table1_base2new.tex").exists() and (out / "index.md").exists()
    assert all(p.read_text() == '{"note": "not the report\'s"}' for p in others)


def test_unknown_experiment_is_an_error_listing_the_known_ones(tmp_path, capsys):
    store = write(tmp_path / "o", [record("coop", "dtd", s, 60.0) for s in ("base", "new")])
    out = tmp_path / "r"
    out.mkdir()
    (out / "table1_base2new.md").write_text("old")
    with pytest.raises(ReportError, match=r"\['base2nwe'\].*Experiments with records: base2new"):
        build_report(store, out_dir=str(out), experiments=["base2nwe"])
    assert report_main(["--results", store, "--out", str(out), "--experiment", "base2nwe"]) == 2
    assert "base2new" in capsys.readouterr().err
    assert (out / "table1_base2new.md").read_text() == "old"
    assert os.listdir(out) == ["table1_base2new.md"]


# -- 6. a few-shot cache is checked against the split it was drawn from ------------------------------


def _swap_train_and_test(ddir):
    import glob
    import json

    (path,) = glob.glob(os.path.join(ddir, "split_zhou_*.json"))
    with open(path) as f:
        split = json.load(f)
    split["train"], split["test"] = split["test"], split["train"]
    with open(path, "w") as f:
        json.dump(split, f)


def test_a_cache_drawn_from_another_split_is_not_reused(tmp_path):
    from fake_data import make_layout

    from harness.data import build_dataset

    ddir = make_layout(tmp_path, "eurosat", num_classes=4, images_per_class=20)
    first = build_dataset("eurosat", tmp_path, num_shots=4, seed=1)
    _swap_train_and_test(ddir)
    again = build_dataset("eurosat", tmp_path, num_shots=4, seed=1)
    now_train = {d.impath for d in build_dataset("eurosat", tmp_path, num_shots=0).train}
    assert again.fewshot_source == "drawn" and again.fewshot_cache == first.fewshot_cache
    assert {d.impath for d in again.train} <= now_train
    assert not {d.impath for d in first.train} & now_train


def test_a_stale_cache_without_its_split_recorded_is_an_error(tmp_path):
    import json

    from fake_data import make_layout

    from harness.data import FewShotCacheError, build_dataset

    ddir = make_layout(tmp_path, "eurosat", num_classes=4, images_per_class=20)
    path = build_dataset("eurosat", tmp_path, num_shots=4, seed=1).fewshot_cache
    with open(path) as f:
        old = json.load(f)
    old.pop("split_fingerprint")  # as an earlier harness wrote it
    with open(path, "w") as f:
        json.dump(old, f)
    assert build_dataset("eurosat", tmp_path, num_shots=4, seed=1).fewshot_source == "cache"  # still valid
    _swap_train_and_test(ddir)
    with pytest.raises(FewShotCacheError, match=rf"{path} names 16 of its 16 .*delete it to draw a new sample"):
        build_dataset("eurosat", tmp_path, num_shots=4, seed=1)


def test_the_read_only_fallback_cache_of_another_data_root_is_not_reused(tmp_path, monkeypatch):
    from fake_data import make_layout

    import harness.data.fewshot as fs
    from harness.data import build_dataset

    roots = [tmp_path / "a", tmp_path / "b"]
    for i, root in enumerate(roots):
        make_layout(root, "dtd", num_classes=3, images_per_class=12 + 4 * i)  # same name, other data
    monkeypatch.setattr(fs, "dir_writable", lambda p: "split_fewshot" not in str(p) or "cc" in str(p))
    a = build_dataset("dtd", roots[0], num_shots=2, seed=1, cache_dir=tmp_path / "cc")
    b = build_dataset("dtd", roots[1], num_shots=2, seed=1, cache_dir=tmp_path / "cc")
    assert a.fewshot_cache == b.fewshot_cache == str(tmp_path / "cc" / "dtd" / "shot_2-seed_1.json")
    assert b.fewshot_source == "drawn"
    assert {d.impath for d in b.train} <= {d.impath for d in build_dataset("dtd", roots[1], num_shots=0).train}


# -- 3. features are keyed on the images' content ----------------------------------------------------


def test_feature_cache_recomputes_images_changed_in_place(tmp_path):
    import torch

    from harness.features import FeatureCache

    images = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(images):
        path.write_bytes(bytes([i]) * 10)
    cache, calls = FeatureCache(str(tmp_path / "cache")), []

    def features():
        calls.append(1)
        return torch.tensor([[float(p.read_bytes()[0])] for p in images])

    paths, namespace = [str(p) for p in images], {"dataset": "d"}
    assert cache.get_or_compute(namespace, paths, features).flatten().tolist() == [0.0, 1.0, 2.0]
    assert cache.get_or_compute(namespace, paths, features) is not None and len(calls) == 1
    images[1].write_bytes(bytes([7]) * 12)  # re-extracted, resized: another size and time
    assert cache.get_or_compute(namespace, paths, features).flatten().tolist() == [0.0, 7.0, 2.0]
    # Same size, and a modification time that cannot be trusted (zero): the content decides.
    os.utime(images[2], ns=(0, 0))
    cache.get_or_compute(namespace, paths, features)
    calls.clear()
    images[2].write_bytes(bytes([9]) * 10)
    os.utime(images[2], ns=(0, 0))
    assert cache.get_or_compute(namespace, paths, features).flatten().tolist() == [0.0, 7.0, 9.0] and calls


# -- 2. the report never averages across settings runs ------------------------------------------------


def settings_record(method, dataset, subsample, accuracy, seed, timestamp, **settings):
    """A record of ``test_report.record`` whose settings (and fingerprint, precision, epochs) are changed."""
    from harness.fingerprint import fingerprint_of

    r = record(method, dataset, subsample, accuracy, seed)
    r["settings"] = {**r["settings"], **settings}
    r["fingerprint"] = fingerprint_of(r["settings"])
    r["precision"] = settings.get("precision", r["precision"])
    r["epochs"] = settings.get("epochs", r["epochs"])
    r["timestamp"] = timestamp
    return r


def mixed_store(tmp_path):
    """CoOp on dtd: seeds 1-2 at fp32 for 10 epochs, then seed 3 at bf16 for 1 epoch."""
    recs = []
    for seed, base, new in ((1, 80.0, 60.0), (2, 82.0, 62.0)):
        for sub, acc in (("base", base), ("new", new)):
            recs.append(settings_record("coop", "dtd", sub, acc, seed, "2024-01-01T00:00:00", precision="fp32"))
    for sub, acc in (("base", 50.0), ("new", 40.0)):
        recs.append(settings_record("coop", "dtd", sub, acc, 3, "2024-01-02T00:00:00", precision="bf16", epochs=1))
    return write(tmp_path / "mixed", recs)


def test_report_shows_the_newest_settings_run_and_lists_the_superseded(tmp_path):
    from harness.report import build_tables

    t = build_tables(mixed_store(tmp_path))["table1_base2new"]
    (group,) = t.groups
    base = t.cell("dtd", group, "base")
    assert (base.mean, base.n, base.note) == (50.0, 1, "†(1/3 seeds)")  # never 73.50 ± 8.20 of mixed runs
    notes = "\n".join(t.notes)
    assert "Superseded: 4 record(s) of coop" in notes
    assert "with epochs 10, precision fp32; shown instead: the newer epochs 1, precision bf16" in notes
    assert "Settings: backbone ViT-B/16; precision bf16; shots 16; epochs CoOp 1." in notes


def test_an_average_over_datasets_of_different_settings_is_marked(tmp_path):
    """CoOp on three datasets at 10 epochs, then dtd alone re-run at 2: each cell holds one settings run,
    but the Average would mix 2 and 10 epochs. It is marked § and not compared with the paper; a study
    whose datasets differ by its own design (a dataset's own config, as a sweep's per_dataset gives it) is
    not marked, nor one re-run alike everywhere."""
    from harness.report import build_report

    def store(name, reruns):
        recs = []
        for d in ("dtd", "eurosat", "food101"):
            for seed in (1, 2, 3):
                for sub in ("base", "new"):
                    epochs = 50 if d == "food101" else 10  # a per-dataset schedule of the study's own
                    r = settings_record("coop", d, sub, 70.0, seed, "2024-01-01T00:00:00", epochs=epochs)
                    r["config"] = "vit_b16_ep50_ctxv1" if d == "food101" else r["config"]
                    recs.append(r)
        for d in reruns:
            for seed in (1, 2, 3):
                for sub in ("base", "new"):
                    recs.append(settings_record("coop", d, sub, 40.0, seed, "2024-01-02T00:00:00", epochs=2))
        return write(tmp_path / name, recs)

    def average(name, reruns):
        summary = build_report(store(name, reruns), out_dir=str(tmp_path / f"r-{name}"))
        t = summary["tables"]["table1_base2new"]["table"]
        return t, t.cell("average", t.groups[0], "h")

    t, h = average("one", ["dtd"])
    assert h.note == "‡(2/11 datasets) §(mixed settings)" and h.paper is None  # 2 of the paper's 11 datasets
    assert t.cell("dtd", t.groups[0], "base").mean == 40.0 and t.cell("dtd", t.groups[0], "base").note == ""
    (note,) = [n for n in t.notes if n.startswith("§")]
    assert "dtd was re-run with epochs 2" in note and "eurosat still at epochs 10" in note and "food101" not in note
    assert "§(mixed settings)" in (tmp_path / "r-one" / "table1_base2new.md").read_text()
    assert r"\S{}" in (tmp_path / "r-one" / "table1_base2new.tex").read_text()
    assert average("none", [])[1].note == "‡(2/11 datasets)"  # food101's 50 epochs are its config's: no re-run
    assert average("all", ["dtd", "eurosat"])[1].note == "‡(2/11 datasets)"  # re-run alike


def test_within_one_second_the_later_written_settings_run_is_the_newest(tmp_path):
    """Timestamps are whole seconds; a re-run finished in the same second as the run it replaces (a fast
    machine, a tiny model) must still count as the newer: the store's order decides."""
    from harness import fingerprint
    from harness.report import build_tables
    from harness.results import KEY_FIELDS, read_records

    second = "2024-01-01T00:00:00"
    recs = [settings_record("coop", "dtd", "base", 80.0, 1, second, epochs=1)]
    recs.append(settings_record("coop", "dtd", "base", 60.0, 1, second, epochs=2))
    recs.append(settings_record("coop", "dtd", "base", 50.0, 1, second, epochs=3))
    store = write(tmp_path / "same-second", recs)
    table = build_tables(store)["table1_base2new"]
    assert table.cell("dtd", table.groups[0], "base").mean == 50.0  # the last written, not the first
    stored = read_records(store)
    identity = {field: stored[0].get(field) for field in KEY_FIELDS}
    earlier = fingerprint.superseded(stored, identity, [("dtd", "base")], "a new fingerprint")
    assert earlier["settings"]["epochs"] == 3  # what a fourth run's plan compares against


def test_all_variants_shows_each_settings_run_as_its_own_column_group(tmp_path):
    from harness.report import build_report

    out = tmp_path / "r"
    t = build_report(mixed_store(tmp_path), out_dir=str(out), all_variants=True)["tables"]["table1_base2new"]["table"]
    labels = {g.label: g for g in t.groups}
    assert set(labels) == {"CoOp (epochs 1, precision bf16)", "CoOp (epochs 10, precision fp32)"}
    old = t.cell("dtd", labels["CoOp (epochs 10, precision fp32)"], "base")
    assert (old.mean, old.std, old.note) == (81.0, 1.0, "†(2/3 seeds)")
    assert t.cell("dtd", labels["CoOp (epochs 1, precision bf16)"], "new").mean == 40.0
    assert report_main(["--results", str(tmp_path / "mixed"), "--out", str(out), "--all-variants"]) == 0
    assert "epochs 10, precision fp32" in (out / "table1_base2new.md").read_text()


def test_records_without_a_fingerprint_are_marked(tmp_path):
    import json

    from harness.report import build_tables

    store = tmp_path / "old"
    store.mkdir()
    with open(store / "results.jsonl", "w") as f:
        for sub in ("base", "new"):
            old = record("coop", "dtd", sub, 70.0)
            for key in ("fingerprint", "settings", "reevaluated"):
                old.pop(key)
            f.write(json.dumps(old) + "\n")
    t = build_tables(str(store))["table1_base2new"]
    assert t.cell("dtd", t.groups[0], "base").mean == 70.0
    assert any("2 record(s) lack a fingerprint" in n for n in t.notes)


# -- 7. the report knows what the experiment expected -------------------------------------------------


def test_report_marks_cells_and_averages_short_of_the_experiment(tmp_path):
    from harness import sweep
    from harness.report import build_report

    full = {"name": "base2new", "protocol": "base2new", "datasets": ["dusk", "sea", "stage"], "seeds": [1, 2, 3]}
    full["methods"] = {"coop": {}}
    recs = [record("coop", "dusk", sub, 60.0 + seed, seed) for seed in (1, 2, 3) for sub in ("base", "new")]
    recs += [record("coop", "sea", sub, 70.0 + seed, seed) for seed in (1, 2) for sub in ("base", "new")]
    store = write(tmp_path / "o", recs)
    sweep.record_expectation(store, {**full, "datasets": ["dusk", "sea"], "seeds": [1, 2]}, full)
    sweep.record_expectation(store, {**full, "datasets": ["dusk"], "seeds": [3]}, full)
    summary = build_report(store, out_dir=str(tmp_path / "r"))
    t = summary["tables"]["table1_base2new"]["table"]
    (g,) = t.groups
    assert [key for key, _ in t.rows] == ["dusk", "sea", "stage", "average"]
    assert t.cell("dusk", g, "base").note == "" and t.cell("sea", g, "base").note == "†(2/3 seeds)"
    assert t.cell("stage", g, "base") is None
    assert t.cell("average", g, "base").note == "‡(1/3 datasets)"
    assert any("not run: stage" in m for m in summary["missing"])


# -- 1, 4, 5. changed settings run in folders of their own; --force and --reevaluate -------------------

SMALL = {
    "name": "mini",
    "protocol": "base2new",
    "datasets": ["synthetic"],
    "seeds": [1, 2],
    "shots": 2,
    "backbone": "tiny",
    "precision": "fp32",
    "tracking": "none",
    "run": {"num_workers": 0, "batch_size": 4, "test_batch_size": 50, "epochs": 1},
    "methods": {"zsclip": {"config": "zsclip/vit_b16"}, "coop": {"config": "coop/vit_b16_ctxv1"}},
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from fake_data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24
    )
    return str(root)


def _sweep(experiment_file, data_root, out, *extra):
    from harness.cli import main

    args = ["sweep", str(experiment_file), "--data-root", data_root, "--out", str(out), "--launcher", "debug"]
    return main([*args, *extra])


def _final_checkpoints(out) -> dict:
    """{prompt checkpoint of any run folder under <out>/runs: its modification time}."""
    import glob

    return {
        p: os.stat(p).st_mtime_ns
        for p in glob.glob(os.path.join(str(out), "runs", "**", "model.pth.tar-*"), recursive=True)
    }


def test_changed_settings_run_skip_the_unchanged_and_the_report_shows_the_new_runs(data_root, tmp_path, capsys):
    import yaml

    from harness import results
    from harness.report import build_tables
    from harness.report.tables import harmonic

    experiment, out = tmp_path / "mini.yaml", tmp_path / "out"
    experiment.write_text(yaml.safe_dump(SMALL))
    assert _sweep(experiment, data_root, out) == 0
    assert _sweep(experiment, data_root, out, "--dry-run") == 0
    assert "5 jobs: 0 to run" in capsys.readouterr().out  # an unchanged study re-run skips everything

    steps = [
        (["--set", "epochs=2"], "epochs: 1 -> 2"),
        (["--set", "epochs=2", "--set", "lr=0.01"], "lr: 0.002 -> 0.01"),
        (["--set", "epochs=2", "--set", "lr=0.01"], None),  # edited config below: a method option
    ]
    for extra, change in steps:
        if change is None:
            edited = {
                **SMALL,
                "methods": {
                    **SMALL["methods"],
                    "coop": {"config": "coop/vit_b16_ctxv1", "options": {"ctx_init": "a picture of a"}},
                },
            }
            experiment.write_text(yaml.safe_dump(edited))
            change = "options.ctx_init: a photo of a -> a picture of a"
        before_records = results.read_records(str(out))
        before_checkpoints = _final_checkpoints(out)
        capsys.readouterr()
        assert _sweep(experiment, data_root, out, *extra, "--dry-run") == 0
        plan = capsys.readouterr().out
        assert "5 jobs: 4 to run, 1 already have all their results" in plan  # zero-shot CLIP is unchanged
        assert f"settings changed: {change}" in plan, plan
        assert _sweep(experiment, data_root, out, *extra) == 0
        assert f"[changed] mini/coop/synthetic/seed1/train: {change}" in capsys.readouterr().out
        after = results.read_records(str(out))
        # Nothing of the earlier runs is lost: their records and checkpoints stay as they were.
        assert after[: len(before_records)] == before_records and len(after) == len(before_records) + 4
        assert all(_final_checkpoints(out).get(p) == t for p, t in before_checkpoints.items())
        folders = lambda found: {os.path.dirname(p) for p in found}  # noqa: E731
        assert len(folders(_final_checkpoints(out))) == len(folders(before_checkpoints)) + 2

    newest = after[-4:]
    assert len({r["fingerprint"] for r in newest if r["seed"] == 1}) == 1  # train and eval records pair
    assert all(r["epochs"] == 2 and r["options"]["ctx_init"] == "a picture of a" for r in newest)
    t = build_tables(str(out))["table1_base2new"]
    coop = t.group_for("coop")
    for sub in ("base", "new"):
        values = [r["metrics"]["accuracy"] for r in newest if r["subsample"] == sub]
        cell = t.cell("synthetic", coop, sub)
        assert cell.mean == pytest.approx(sum(values) / 2) and cell.n == 2 and cell.note == ""
    base, new = (sum(r["metrics"]["accuracy"] for r in newest if r["subsample"] == s) / 2 for s in ("base", "new"))
    assert t.cell("synthetic", coop, "h").mean == pytest.approx(harmonic(base, new))
    assert sum("Superseded" in n for n in t.notes) == 3  # the three earlier settings runs


def test_run_into_a_folder_of_other_settings_refuses(data_root, tmp_path, capsys):
    from harness.cli import main

    args = ["run", "--method", "coop", "--dataset", "synthetic", "--data-root", data_root, "--backbone", "tiny"]
    args += ["--precision", "fp32", "--shots", "2", "--num-workers", "0", "--tracking", "none"]
    args += ["--output-dir", str(tmp_path / "x"), "--results", str(tmp_path), "--epochs", "1"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "holds a run of other settings" in err and "epochs: 1 -> 2" in err
    assert "--output-dir" in err and "--force" in err


def test_force_retrains_into_fresh_folders_and_reevaluate_rescores(data_root, tmp_path, capsys):
    import glob

    import yaml

    from harness import results

    experiment, out = tmp_path / "mini.yaml", tmp_path / "out"
    experiment.write_text(yaml.safe_dump({**SMALL, "seeds": [1]}))
    assert _sweep(experiment, data_root, out, "--methods", "coop") == 0
    first = results.read_records(str(out))
    checkpoints = _final_checkpoints(out)
    (old_dir,) = {os.path.dirname(os.path.dirname(p)) for p in checkpoints}
    assert _sweep(experiment, data_root, out, "--methods", "coop", "--force") == 0
    forced = results.read_records(str(out))[len(first) :]
    # Training redone from scratch in a fresh folder beside the old one, which keeps its checkpoint.
    assert len(forced) == 2 and not any(r["reevaluated"] for r in forced)
    assert {r["run_dir"] for r in forced if r["subsample"] == "base"} == {old_dir + "-2"}
    after_force = _final_checkpoints(out)
    assert after_force.items() >= checkpoints.items() and len(after_force) == 2
    # The evaluation job loaded the prompt trained now, not the old folder's.
    (eval_dir,) = {r["run_dir"] for r in forced if r["subsample"] == "new"}
    assert eval_dir.endswith("-2")
    (log_file,) = glob.glob(os.path.join(eval_dir, "log.txt*"))
    with open(log_file) as f:
        assert f"'load_from': '{old_dir}-2'" in f.read()
    # --reevaluate scores the existing checkpoints again, without training, and says so in the records.
    assert _sweep(experiment, data_root, out, "--methods", "coop", "--reevaluate") == 0
    again = results.read_records(str(out))[len(first) + 2 :]
    assert len(again) == 2 and all(r["reevaluated"] for r in again)
    assert _final_checkpoints(out) == after_force
    assert [r["metrics"] for r in again] == [r["metrics"] for r in forced]


def test_a_training_folder_of_a_sweep_before_fingerprints_is_still_found(data_root, tmp_path):
    import hashlib
    import json

    from harness import sweep

    experiment = sweep.narrow(sweep.load_experiment(_write_small(tmp_path)), methods=["coop"], seeds=["1"])
    out = str(tmp_path / "out")
    (train, evaluation) = sweep.expand(experiment, data_root, out)
    assert os.path.basename(train.spec.output_dir) == f"shots2_seed1_{train.fingerprint[:8]}"
    key = {**train.spec.training_identity(), "data_root": data_root}
    legacy_hash = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    legacy = os.path.join(os.path.dirname(train.spec.output_dir), f"shots2_seed1_{legacy_hash}")
    os.makedirs(legacy)
    (train, evaluation) = sweep.expand(experiment, data_root, out)
    assert train.spec.output_dir == evaluation.spec.load_from == legacy


def test_status_shows_each_jobs_fingerprint(data_root, tmp_path, capsys):
    from harness import sweep
    from harness.cli import main

    path = _write_small(tmp_path)
    experiment = sweep.load_experiment(path)
    jobs = sweep.expand(experiment, data_root, str(tmp_path / "out"))
    sweep.record_expectation(str(tmp_path / "out"), experiment, experiment, jobs)  # as a sweep does first
    assert main(["status", path, "--out", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    for job in jobs:
        assert f"fingerprint {job.fingerprint}" in shown
    # The data is in it, not where it lies; a setting at its default value is not.
    moved = str(tmp_path / "moved")
    os.symlink(data_root, moved)
    assert [j.fingerprint for j in sweep.expand(sweep.load_experiment(path), moved, str(tmp_path / "o"))] == [
        j.fingerprint for j in jobs
    ]
    stated = sweep.expand(sweep.load_experiment(path), data_root, str(tmp_path / "o"), {"momentum": 0.9})
    assert [j.fingerprint for j in stated] == [j.fingerprint for j in jobs]
    other = sweep.expand(sweep.load_experiment(path), data_root, str(tmp_path / "o"), {"momentum": 0.8})
    changed = [a.fingerprint != b.fingerprint for a, b in zip(other, jobs)]
    assert changed == [j.spec.method == "coop" for j in jobs]  # zero-shot CLIP has no optimiser


def _write_small(tmp_path) -> str:
    import yaml

    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return str(path)


def test_records_written_before_fingerprints_finish_their_jobs(data_root, tmp_path):
    import json

    from harness import sweep
    from harness.launcher import plan

    out = tmp_path / "out"
    jobs = sweep.expand(sweep.load_experiment(_write_small(tmp_path)), data_root, str(out))
    out.mkdir()
    with open(out / "results.jsonl", "w") as f:  # as an earlier harness wrote them: no fingerprint
        for job in jobs[:-1]:
            for dataset, subsample in job.targets():
                f.write(json.dumps({**job.spec.identity(), "dataset": dataset, "subsample": subsample}) + "\n")
    states = plan(jobs)
    assert [s.state for s in states] == ["skipped"] * (len(jobs) - 1) + ["pending"]
    assert states[-1].fingerprint == jobs[-1].fingerprint and states[-1].changed is None
