"""The frame both demo reference commands share (benchmarks/demo_runs.py): their ``check`` reads make's demo
results by default, and a demo runs as ``make`` runs it, its sweep then its report."""

from __future__ import annotations

import os
import sys

import pytest

from benchmarks import demo, demo_runs, fewshot_demo


@pytest.mark.parametrize("module", [demo, fewshot_demo])
def test_check_reads_the_demo_results_by_default(module, monkeypatch):
    read = []
    monkeypatch.setattr(module, "seed_averages", lambda results: read.append(results) or {})
    module.main(["check"])
    assert read and set(read) == {demo_runs.DEMO_RESULTS}
    assert demo_runs.DEMO_RESULTS == os.path.join("output", "demo")  # the Makefile's $(OUT)/demo, OUT = output


def test_a_demo_runs_its_sweep_then_its_report(monkeypatch):
    commands = []
    monkeypatch.setattr(demo_runs.subprocess, "run", lambda command, check: commands.append(command))
    assert demo_runs.run_demo("OUT", "OUT/report", "fewshot", methods=["coop", "lpclip"]) >= 0
    sweep, report = commands
    assert sweep == [sys.executable, "-m", "harness", "sweep", "fewshot", "--profile", "demo", "--out", "OUT"] + [
        "--methods",
        "coop,lpclip",
    ]
    assert report == [sys.executable, "-m", "harness.report", "--results", "OUT", "--out", "OUT/report"] + [
        "--tracking",
        "none",
    ]
