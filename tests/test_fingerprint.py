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
