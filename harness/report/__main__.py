"""python -m harness.report --results OUT [--out reports] [--tracking auto|none] [--experiment base2new ...]"""

from __future__ import annotations

import argparse
import logging
import sys

from harness.report import NOTHING_EXPECTED, NoRecordsError, ReportError, build_report
from harness.results import RESULTS_HOME


def main(argv: list[str] | None = None) -> int:
    from harness.tracking import MODES

    parser = argparse.ArgumentParser(
        prog="python -m harness.report", description="Tables and figures from a results store."
    )
    parser.add_argument(
        "--results",
        default=RESULTS_HOME,
        help=f"results folder or its results.jsonl (default: {RESULTS_HOME}, where runs and sweeps record)",
    )
    parser.add_argument("--out", default="reports", help="where the report goes (default: reports)")
    parser.add_argument(
        "--tracking", default="none", choices=MODES, help="W&B mode for logging the report (default: none)"
    )
    parser.add_argument(
        "--experiment",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these experiments' records (default: each table's own choice)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds every learned-prompt cell should have (default: those seen per experiment)",
    )
    parser.add_argument("--paper-dir", default=None, help="folder of the paper's CSV files (default: reports/paper)")
    parser.add_argument("--no-paper", action="store_true", help="leave out the paper and Δ columns")
    parser.add_argument(
        "--all-variants",
        action="store_true",
        help="each settings run of a cell as its own column group, labelled by what differs "
        "(default: the newest, the others listed as superseded in the table notes)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="METHOD",
        help="the method every study is compared with, as the records name it (default: each study's own, "
        "the report: {baseline: ...} of its YAML)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        summary = build_report(
            args.results,
            out_dir=args.out,
            experiments=args.experiment,
            tracking=args.tracking,
            paper_dir=args.paper_dir,
            expected_seeds=args.seeds,
            with_paper=not args.no_paper,
            all_variants=args.all_variants,
            baseline=args.baseline,
        )
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, NoRecordsError) else 2
    tables = [k for k, v in summary["tables"].items() if v["paths"]] + list(summary["efficiency"])
    print(
        f"{summary['records']} records -> {len(tables)} tables, {len(summary['figures'])} figures "
        f"in {summary['out_dir']}"
    )
    print(f"index: {summary['index']}")
    if not summary["expected"]:
        print(f"missing: {NOTHING_EXPECTED}")
    elif summary["missing"]:
        print(f"missing ({len(summary['missing'])}):")
        for line in summary["missing"]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
