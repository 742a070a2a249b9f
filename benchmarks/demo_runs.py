"""What the demos' reference commands (``benchmarks.demo``, ``benchmarks.fewshot_demo``) share: the frame of
their command line, a demo study run as ``make`` runs it, its report, and the machine it ran on."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

#: where ``make``'s demo targets write their results without DATA_ROOT (the Makefile's $(OUT)/demo)
DEMO_RESULTS = os.path.join("output", "demo")


def command_line(prog: str, doc: str, check_help: str):
    """(parser, its sub-commands) of ``python -m <prog> COMMAND``: described by the first line of ``doc``,
    with the ``check`` command every demo has (its claims on a finished demo's results)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    commands = parser.add_subparsers(dest="cmd", required=True)
    commands.add_parser("check", help=check_help).add_argument("--results", default=DEMO_RESULTS)
    return parser, commands


def sweep(experiment: str, out: str, methods: list[str] | None = None) -> None:
    """``make <experiment>``'s sweep on the demo profile (``METHODS=`` when ``methods`` is given)."""
    narrowed = ["--methods", ",".join(methods)] if methods else []
    command = [sys.executable, "-m", "harness", "sweep", experiment, "--profile", "demo", "--out", out, *narrowed]
    subprocess.run(command, check=True)


def report(results: str, report_dir: str) -> None:
    """The report of a demo's results, without tracking."""
    command = [sys.executable, "-m", "harness.report", "--results", results, "--out", report_dir, "--tracking", "none"]
    subprocess.run(command, check=True)


def run_demo(out: str, report_dir: str, experiment: str = "base2new", methods: list[str] | None = None) -> float:
    """A demo as ``make <experiment>`` runs it, its sweep and its report; returns its wall time in seconds."""
    start = time.time()
    sweep(experiment, out, methods)
    report(out, report_dir)
    return time.time() - start


def machine() -> dict:
    """The CPU, its cores, Python's and torch's versions and the date: what a reference run ran on."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
