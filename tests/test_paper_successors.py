"""The successors' numbers: one name -> registry-key table, published rows derived from the shared
successors.csv (never typed), reproductions by others kept apart and never shown as paper values."""

from __future__ import annotations

import csv
import filecmp
import os
import shutil

import pytest

from harness.report import build_report, default_paper_dir
from harness.report.successors import classify, default_successors_path, read_names, write
from harness.report.tables import Paper
from methods import list_methods
from tests.test_report import record
from tests.test_report import write as write_store

PAPER = default_paper_dir()
SHARED = os.environ.get("SUCCESSORS_CSV", default_successors_path())  # CI: ../shared beside the clone
needs_shared = pytest.mark.skipif(not os.path.exists(SHARED), reason=f"{SHARED} absent (../shared beside the clone)")


def rows(name, paper_dir=PAPER):
    with open(os.path.join(paper_dir, name), newline="") as f:
        return list(csv.DictReader(f))


def test_every_name_maps_to_a_registered_method_or_to_none():
    names = read_names(PAPER)
    registered = set(list_methods())
    for name, entry in names.items():
        assert entry["role"] == "none" or entry["method"] in registered, name
    assert names["DePT+CoOp"] == {"method": "coop_dept", "role": "published", "reproduced_by": ""}
    assert names["CoOp (DePT repro)"]["method"] == "coop" and names["CoOp (DePT repro)"]["role"] == "reproduction"
    assert all(e["reproduced_by"] for e in names.values() if e["role"] == "reproduction")


def test_bad_name_table_and_unknown_names_are_refused_by_file_and_fix(tmp_path):
    shutil.copy(os.path.join(PAPER, "successor_names.csv"), tmp_path)
    with pytest.raises(ValueError, match="not in successor_names.csv"):
        classify([{"method": "NewMethod", "study": "base2new"}], read_names(str(tmp_path)))
    with open(tmp_path / "successor_names.csv", "a") as f:
        f.write("Odd,coop,paper,\n")
    with pytest.raises(ValueError, match=r"successor_names.csv: name 'Odd' has role 'paper'"):
        read_names(str(tmp_path))


@needs_shared
def test_committed_paper_files_are_the_scripts_output_from_the_shared_file(tmp_path):
    """No successor number is typed: rewriting the rows from successors.csv changes nothing."""
    copy = tmp_path / "paper"
    shutil.copytree(PAPER, copy)
    write(str(copy), SHARED)
    for name in ("base2new.csv", "crossdataset.csv", "domaingen.csv", "reproductions.csv"):
        assert filecmp.cmp(copy / name, os.path.join(PAPER, name), shallow=False), name


@needs_shared
def test_published_values_agree_with_the_shared_file_and_reproductions_stay_apart():
    shared = classify(rows(os.path.basename(SHARED), os.path.dirname(SHARED)), read_names(PAPER))
    paper = Paper(PAPER)
    for r in shared:
        if r["role"] == "published" or (r["role"] == "average" and r["dataset"] == "average"):
            if r["study"] == "base2new":
                for metric in ("base", "new", "h"):
                    value = paper.value("base2new", {"dataset": r["dataset"], "method": r["method"]}, metric)
                    assert value == float(r[metric]), (r["name"], r["dataset"], metric)
            else:
                assert paper.value(r["study"], {"method": r["method"]}, r["dataset"]) == float(r["base"])
    reproduced = [r for r in shared if r["role"] == "reproduction"]
    assert len(rows("reproductions.csv")) == len(reproduced) > 0
    published_sources = {
        row["source"] for name in ("base2new.csv", "crossdataset.csv", "domaingen.csv") for row in rows(name)
    }
    # a published row of the same file (DePT's image) is fine; a reproduction's own row never is
    published_keys = {(r["study"], r["dataset"], r["method"], r["base"]) for r in shared if r["role"] == "published"}
    for r in reproduced:
        assert (r["study"], r["dataset"], r["method"], r["base"]) not in published_keys
        if "issue" in r["source"]:
            assert r["source"] not in published_sources


def test_a_reproduction_is_never_a_paper_value_in_the_report(tmp_path):
    """KgCoOp on cross-dataset transfer: only DePT's reproduction exists, so Table 2 shows no paper
    value for it, while CoOp + DePT (published) gets its own; the report lists the reproduction apart."""
    reproduced = {
        r["dataset"]: r for r in rows("reproductions.csv") if (r["study"], r["method"]) == ("crossdataset", "kgcoop")
    }
    published = {r["method"]: r for r in rows("crossdataset.csv")}
    assert reproduced and "kgcoop" not in published
    recs = []
    for method in ("kgcoop", "coop_dept"):
        for dataset in ("imagenet", "caltech101", "dtd"):
            recs.append(record(method, dataset, "all", 60.0, 1, "crossdataset", "all", "imagenet", config="c"))
    summary = build_report(write_store(tmp_path / "o", recs), out_dir=str(tmp_path / "r"))
    t = summary["tables"]["table2_crossdataset"]["table"]
    for dataset in ("caltech101", "dtd"):
        assert t.cell(dataset, t.group_for("kgcoop"), "acc").paper is None
        assert t.cell(dataset, t.group_for("coop_dept"), "acc").paper == float(published["coop_dept"][dataset])
    page = (tmp_path / "r" / "reproductions.md").read_text()
    assert page.startswith("# Reproductions by others (not published values)")
    line = next(x for x in page.splitlines() if "| crossdataset | caltech101 | kgcoop |" in x)
    assert f"| {reproduced['caltech101']['accuracy']} | DePT authors (Koorye/DePT) |" in line
    assert "[reproductions.md](reproductions.md)" in (tmp_path / "r" / "index.md").read_text()
    summary = build_report(str(tmp_path / "o"), out_dir=str(tmp_path / "r"), with_paper=False)
    assert not (tmp_path / "r" / "reproductions.md").exists()
