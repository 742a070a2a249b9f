"""Command line: ``python -m harness <command> --help``.

python -m harness run --config run.yaml [--set key=value ...]     one training/evaluation job
python -m harness run --method coop --dataset oxford_pets --data-root DATA --output-dir out/x
python -m harness sweep base2new --data-root DATA [--launcher slurm] [--dry-run]
python -m harness sweep base2new --profile demo                    generated data, tiny CLIP
python -m harness status base2new --out output                     what finished, failed, waits
python -m harness configs                                          the published method configs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import yaml

from harness.config import (
    FIELD_HELP,
    ConfigError,
    RunSpec,
    build_spec,
    load_spec_file,
    method_config_names,
    parse_overrides,
)


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
    p.add_argument(
        "-o", "--option", dest="method_options", action="append", default=[], metavar="NAME=VALUE", help="method option"
    )
    defaults = RunSpec()
    for f in dataclasses.fields(RunSpec):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "config":
            flag = "--method-config"
        default = getattr(defaults, f.name)
        p.add_argument(
            flag,
            dest=f"field_{f.name}",
            default=None,
            metavar="VALUE",
            help=f"{FIELD_HELP[f.name]} (default: {default!r})",
        )
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
        print(
            json.dumps(
                {k: r[k] for k in ("job", "dataset", "subsample")} | {"accuracy": round(r["metrics"]["accuracy"], 2)}
            )
        )
    return 0


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiment",
        help="experiment name under experiments/ (base2new, crossdataset, domaingen, ablations) or a YAML path",
    )
    p.add_argument("--data-root", default="", help="folder holding the datasets; empty: the profile's generated data")
    p.add_argument("--profile", default=None, help="named overrides from the experiment file, e.g. demo")
    p.add_argument("--out", default="output", help="output folder: results.jsonl, runs/, feature_cache/, <experiment>/")
    p.add_argument("--datasets", default="", help="comma-separated subset of the experiment's datasets (or targets)")
    p.add_argument("--seeds", default="", help="comma-separated seeds, e.g. 1,2")
    p.add_argument("--methods", default="", help="comma-separated subset of the experiment's method variants")
    p.add_argument("--backbone", default="", help="backbone for every job (e.g. ViT-B/16, tiny, a .pt path)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run key for every job (e.g. epochs=2, precision=fp32, options.n_ctx=8, tracking=none)",
    )


def _load_sweep(args):
    from harness import sweep

    experiment = sweep.load_experiment(args.experiment, profile=args.profile)
    split = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    experiment = sweep.narrow(experiment, split(args.datasets), split(args.seeds), split(args.methods))
    run_overrides = parse_overrides(args.overrides)
    if args.backbone:
        run_overrides["backbone"] = args.backbone
    out = os.path.abspath(args.out)
    data_root = sweep.prepare_data(experiment, args.data_root, out)
    return experiment, sweep.expand(experiment, data_root, out, run_overrides), out


def _cmd_sweep(args) -> int:
    from harness import launcher

    experiment, jobs, out = _load_sweep(args)
    # launcher: {name: local, max_parallel: 1, slurm: {partition: ..., gpus_per_node: 1, ...}}
    section = dict(experiment.get("launcher") or {})
    name = args.launcher or section.get("name", "local")
    if name == "slurm":
        launcher_cfg = dict(section.get("slurm") or {})
        launcher_cfg.update(parse_overrides(args.slurm))
    else:
        launcher_cfg = {k: v for k, v in section.items() if k in ("max_parallel", "timeout_min")}
        if args.max_parallel:
            launcher_cfg["max_parallel"] = args.max_parallel
    if args.dry_run:
        launcher.print_plan(jobs, launcher.plan(jobs, args.force))
        return 0
    from harness.sweep import check_data_folders, prepare_backbones

    todo = [j for j, s in zip(jobs, launcher.plan(jobs, args.force)) if s.state != "skipped"]
    if todo:
        check_data_folders(todo)
        prepare_backbones(todo)
    states = launcher.launch(jobs, experiment["name"], out, name, launcher_cfg, force=args.force, wait=not args.no_wait)
    return 1 if any(s.state in ("failed", "blocked") for s in states) else 0


def _cmd_status(args) -> int:
    from harness import launcher

    experiment, jobs, out = _load_sweep(args)
    rows = launcher.status(jobs, out, experiment["name"])
    width = max((len(r["job"]) for r in rows), default=10)
    for r in rows:
        print(f"{r['job']:<{width}}  {r['state']:<11} results {r['results']}  {r.get('detail', '')}")
    counts: dict = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print("total: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness", description="prompt-harness: zero-shot CLIP, CoOp and CoCoOp as published."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    sub.add_parser("configs", help="list the published method configs")
    sweep_p = sub.add_parser(
        "sweep",
        help="run an experiment: every method x dataset x seed",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _sweep_args(sweep_p)
    sweep_p.add_argument(
        "--launcher",
        default="",
        choices=["", "local", "slurm", "debug"],
        help="where jobs run (default: the experiment's, else local)",
    )
    sweep_p.add_argument("--max-parallel", type=int, default=0, help="local launcher: jobs at once")
    sweep_p.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="slurm option: partition, account, qos, gpus_per_node, cpus_per_task, mem_gb, timeout_min, "
        "array_parallelism, constraint",
    )
    sweep_p.add_argument("--dry-run", action="store_true", help="print the job plan and exit")
    sweep_p.add_argument("--force", action="store_true", help="redo jobs whose results exist")
    sweep_p.add_argument(
        "--no-wait", action="store_true", help="slurm: submit and exit; follow with the status command"
    )
    status_p = sub.add_parser(
        "status", help="progress of an experiment's jobs", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    _sweep_args(status_p)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "status":
            return _cmd_status(args)
        if args.command == "configs":
            print("\n".join(method_config_names()))
            return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
