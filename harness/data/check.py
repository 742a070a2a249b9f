"""``python -m harness.data``: ``check`` (is each dataset folder complete, and what is missing? harness.data.verify),
``prepare`` (fetch, verify and arrange: harness.data.prepare), ``list``, ``sources`` (docs/data.md's table)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .errors import DatasetError
from .registry import DATASETS, get_info, list_datasets
from .sources import markdown_table
from .verify import LAYOUT, check_dataset, layout

__all__ = ["LAYOUT", "check_dataset", "layout", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.data", description="Data-layer utilities (PROTOCOL.md 3).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="check dataset folders under a data root")
    p.add_argument("--root", required=True, help="data root holding the dataset folders")
    p.add_argument(
        "--dataset",
        action="append",
        default=None,
        help="dataset key (repeatable, or comma-separated; default: every dataset, absent ones are reported but not "
        "counted as broken)",
    )
    p.add_argument("--cache-dir", default=None, help="writable cache folder (see build_dataset)")
    p.add_argument("--strict", action="store_true", help="treat warnings as failures")
    p.add_argument("--quick", action="store_true", help="check that the images exist without decoding them")
    p = sub.add_parser(
        "prepare", help="fetch, verify and arrange datasets under a data root (check passes when it is done)"
    )
    p.add_argument("--root", required=True, help="data root to hold the dataset folders")
    p.add_argument("--dataset", action="append", default=None, help="dataset key (repeatable; default: every dataset)")
    p.add_argument(
        "--from",
        dest="from_dir",
        default=None,
        help="folder holding the files fetched by hand (no network is used; what is missing there is listed)",
    )
    p.add_argument("--force", action="store_true", help="prepare again a dataset that is already there")
    p.add_argument("--sources", default=None, help="JSON file of URL/MD5 overrides, e.g. a mirror (see sources.py)")
    sub.add_parser("list", help="list the dataset keys")
    sub.add_parser("sources", help="print the datasets' sizes, licences and downloads (the table of docs/data.md)")
    args = parser.parse_args(argv)
    if getattr(args, "dataset", None):  # check and prepare alike: --dataset a,b as make's DATASETS=a,b passes it
        args.dataset = [k for value in args.dataset for k in value.split(",") if k]

    if args.cmd == "list":
        for k in list_datasets():
            i = DATASETS[k]
            print(f"{k:16s} {i.paper_name:20s} {i.folder}/" + ("  (test only)" if i.test_only else ""))
        return 0
    if args.cmd == "sources":
        print(markdown_table(), end="")
        return 0
    if args.cmd == "prepare":
        from .prepare import main as prepare_main

        return prepare_main(args)

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    explicit = bool(args.dataset)
    try:
        keys = [get_info(k).key for k in args.dataset] if explicit else list_datasets()
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.root):
        print(f"error: data root {args.root} is not a folder", file=sys.stderr)
        return 2
    statuses = []
    for k in keys:
        try:
            status, lines = check_dataset(k, args.root, explicit, args.cache_dir, decode=not args.quick)
        except ValueError as e:  # a bad $HARNESS_DATA_SOURCES file
            print(f"error: {e}", file=sys.stderr)
            return 2
        statuses.append(status)
        print("\n".join(lines) + ("" if status == "absent" else "\n"))
    bad = [k for k, s in zip(keys, statuses) if s == "broken" or (args.strict and s == "warn")]
    present = [k for k, s in zip(keys, statuses) if s != "absent"]
    print(f"summary: {len(present)} dataset(s) found, {len(bad)} broken" + (f": {', '.join(bad)}" if bad else ""))
    if not present:
        print("no dataset found under " + os.path.abspath(args.root))
        return 1
    return 1 if bad else 0
