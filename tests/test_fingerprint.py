"""No stale or mixed result passes for a fresh one (issue 24): the report's own files, few-shot caches
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
