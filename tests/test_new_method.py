"""What a contributor does to add a method: two new files in a clean copy of the project, nothing else
edited. The copy then lists the method, runs it in a one-dataset demo sweep beside zero-shot CLIP
without the study's YAML naming it, and shows it in the report with its own label and colour."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHOD_FILE = '''"""A throwaway method for the test: CoOp under another name."""

from methods.coop import CoOp
from methods.parts.registry import register_method


@register_method("throwaway")
class Throwaway(CoOp):
    label = "ThrowAway"
    paper = "Nobody et al., arXiv"
    year = 2026
    color = "#123456"
'''

CONFIG_FILE = """method: throwaway
options: {n_ctx: 4, ctx_init: a photo of a}
"""


def harness(copy, *args):
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-m", *args], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_a_new_method_is_two_files(tmp_path):
    copy = tmp_path / "project"
    for folder in ("clipcore", "harness", "methods", "miniworld", "experiments", os.path.join("reports", "paper")):
        shutil.copytree(os.path.join(ROOT, folder), copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "methods" / "throwaway.py").write_text(METHOD_FILE)
    (copy / "experiments" / "methods" / "throwaway").mkdir()
    (copy / "experiments" / "methods" / "throwaway" / "vit_b16.yaml").write_text(CONFIG_FILE)

    listed = [line.split() for line in harness(copy, "harness", "methods").splitlines()]
    assert [
        "throwaway",
        "ThrowAway:",
        "Nobody",
        "et",
        "al.,",
        "arXiv",
        "2026",
        "throwaway/vit_b16",
        "(default)",
    ] in listed
    assert {line[0] for line in listed} >= {"zsclip", "coop", "cocoop", "throwaway"}

    from miniworld import pretrain

    backbone = [] if os.path.isfile(pretrain.cache_path()) else ["--backbone", "tiny"]  # no pre-training here
    out, report = tmp_path / "out", tmp_path / "report"
    harness(
        copy, "harness", "sweep", "base2new", "--profile", "demo", "--datasets", "miniworld_dusk", "--seeds", "1",
        "--methods", "zsclip,throwaway", "--set", "epochs=1", "--set", "tracking=none", "--out", str(out), *backbone,
    )  # fmt: skip
    with open(out / "results.jsonl") as f:
        records = [json.loads(line) for line in f]
    # The training job's base classes; the evaluation job's new and all classes (Table 4).
    assert sorted(r["subsample"] for r in records if r["method"] == "throwaway") == ["all", "base", "new"]
    assert {r["config"] for r in records} == {"zsclip/vit_b16", "throwaway/vit_b16"}  # with its own config
    harness(copy, "harness.report", "--results", str(out), "--out", str(report), "--tracking", "none")

    for ext in ("md", "tex"):
        assert "ThrowAway" in (report / f"table1_base2new.{ext}").read_text(), ext
    with open(report / "table1_base2new.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "throwaway"]
    assert rows and {r["metric"] for r in rows} >= {"Base", "New", "H"} and "ThrowAway" in rows[0]["group"]
    with open(report / "figure_methods_base_new_h.csv", newline="") as f:
        drawn = list(csv.DictReader(f))
    assert [(r["method"], r["label"], r["color"]) for r in drawn] == [
        ("zsclip", "CLIP", "#7f7f7f"),
        ("throwaway", "ThrowAway", "#123456"),
    ]
