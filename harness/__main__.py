"""Command line: ``python -m harness <command> --help``.

    python -m harness run --config run.yaml [--set key=value ...]     one training/evaluation job
    python -m harness run --method coop --dataset oxford_pets --data-root DATA --output-dir out/x
    python -m harness configs                                          the published method configs
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import yaml

from harness.config import FIELD_HELP, ConfigError, RunSpec, build_spec, load_spec_file, method_config_names, parse_overrides


def _run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="train and/or evaluate one job",
        description="Train and/or evaluate one job. Every run key can be given as --key VALUE (VALUE parsed as "
        "YAML), in a --config YAML file, or as --set key=value; later sources win. Method options: "
        "-o n_ctx=8 or --set options.n_ctx=8.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", dest="spec_file", metavar="YAML", help="run spec file (a mapping of the keys below)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override any key")
    p.add_argument("-o", "--option", dest="method_options", action="append", default=[], metavar="NAME=VALUE", help="method option")
    defaults = RunSpec()
    for f in dataclasses.fields(RunSpec):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "config":
            flag = "--method-config"
        default = getattr(defaults, f.name)
        p.add_argument(flag, dest=f"field_{f.name}", default=None, metavar="VALUE", help=f"{FIELD_HELP[f.name]} (default: {default!r})")
    return p


def _cmd_run(args) -> int:
    from harness.runner import run

    explicit = {}
    for f in dataclasses.fields(RunSpec):
        raw = getattr(args, f"field_{f.name}")
        if raw is not None:
            explicit[f.name] = raw if f.type in ("str", str) else yaml.safe_load(raw)
    overrides = {**explicit, **parse_overrides(args.overrides)}
    if args.method_options:
        overrides.setdefault("options", {}).update(parse_overrides(args.method_options))
    spec = load_spec_file(args.spec_file, overrides) if args.spec_file else build_spec({}, overrides)
    records = run(spec)
    for r in records:
        print(json.dumps({k: r[k] for k in ("job", "dataset", "subsample")} | {"accuracy": round(r["metrics"]["accuracy"], 2)}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description="prompt-harness: zero-shot CLIP, CoOp and CoCoOp as published.")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    sub.add_parser("configs", help="list the published method configs")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "configs":
            print("\n".join(method_config_names()))
            return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
