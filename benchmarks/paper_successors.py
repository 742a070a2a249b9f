"""Rewrite the successors' rows of reports/paper from shared/paper-results/successors.csv.

    python -m benchmarks.paper_successors [--successors PATH] [--paper-dir DIR]

DePT + CoOp's published values go into base2new.csv, crossdataset.csv and domaingen.csv; others'
reproductions into reproductions.csv (harness.report.successors says which name is which)."""

from __future__ import annotations

import argparse
import os

from harness.report import default_paper_dir
from harness.report.successors import default_successors_path, write


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper_successors", description=__doc__.split("\n")[0])
    parser.add_argument("--successors", default=default_successors_path())
    parser.add_argument("--paper-dir", default=default_paper_dir())
    args = parser.parse_args(argv)
    if not os.path.exists(args.successors):
        raise SystemExit(f"{args.successors}: no such file; pass --successors PATH to it")
    counts = write(args.paper_dir, args.successors)
    print(f"{args.paper_dir}: {counts['published']} published rows, {counts['reproductions']} reproductions")


if __name__ == "__main__":
    main()
