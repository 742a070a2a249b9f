"""The command line: ``prompt-harness <command> --help`` (or ``python -m harness``).

    prompt-harness run --config run.yaml [--set key=value ...]      one training/evaluation job
    prompt-harness run --method coop --dataset oxford_pets --data-root DATA --output-dir out/x
    prompt-harness sweep base2new --data-root DATA [--launcher slurm] [--dry-run]
    prompt-harness sweep base2new --profile demo                     generated data, tiny CLIP
    prompt-harness status base2new [--out output]                    what finished, failed, waits
    prompt-harness report [--results output] [--out reports]          tables and figures
    prompt-harness data check --root DATA                            what a data folder lacks
    prompt-harness methods                                           the registered methods: paper, configs
    prompt-harness configs                                           the published method configs

Bad input (a config key, a data folder, a split file, an image, a checkpoint, a YAML file, a
cluster's refusal...) ends with one line saying what is wrong, where, and what to do, and a non-zero
exit status: 2 for bad input, 1 for a run that failed. So does a signal: Ctrl-C (SIGINT) 130, SIGTERM
143, SIGHUP 129, after ``run`` and ``sweep`` have stopped their jobs (``harness.launcher.interrupts``).
``--debug`` (or ``HARNESS_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

import yaml

from harness import results
from harness.config import (
    FIELD_HELP,
    ConfigError,
    RunSpec,
    build_spec,
    default_method_config,
    load_spec_file,
    method_config_names,
    method_configs,
    parse_overrides,
    parse_value,
    run_key_types,
)

BAD_INPUT, FAILED = 2, 1
INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as the shell reports a process the signal ended


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def _run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="train and/or evaluate one job",
        description="Train and/or evaluate one job. Every run key can be given as --key VALUE (VALUE parsed as "
        "YAML), in a --config YAML file, or as --set key=value; later sources win. Method options: "
        "-o NAME=VALUE or --set options.NAME=VALUE (e.g. -o n_ctx=8 -o ctx_init= : 8 random context tokens).",
    )
    p.add_argument("--config", dest="spec_file", metavar="YAML", help="run spec file (a mapping of the keys below)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override any key")
    p.add_argument(
        "-o", "--option", dest="method_options", action="append", default=[], metavar="NAME=VALUE", help="method option"
    )
    defaults = RunSpec()
    for f in dataclasses.fields(RunSpec):
        flag = "--method-config" if f.name == "config" else "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        # A yes/no key is a switch as well: --force alone means --force true (--force false still parses).
        switch = {"nargs": "?", "const": "true"} if _is_switch(run_key_types()[f.name]) else {}
        p.add_argument(
            flag,
            dest=f"field_{f.name}",
            default=None,
            metavar="VALUE",
            help=f"{FIELD_HELP[f.name]} (default: {default!r})",
            **switch,
        )
    return p


def _interrupted_run(spec: RunSpec, stop) -> str:
    from harness.checkpoint import latest_checkpoint

    found = latest_checkpoint(spec.output_dir) if spec.trains and not spec.force else None
    again = f"resumes it from its checkpoint of epoch {found[1]}/{spec.epochs}" if found else "runs it again"
    return f"Interrupted ({stop.signal_name}): stopped {spec.job_name}; the same command {again}."


def _declared(annotation):
    """The type of a run key, without its declared range."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_text(annotation) -> bool:
    """A string key, declared or not: its value is taken as typed (``off`` is not YAML's false)."""
    return _declared(annotation) is str


def _is_switch(annotation) -> bool:
    return _declared(annotation) is bool


def _cmd_run(args) -> int:
    from harness.launcher.interrupts import Interrupted, stop_on_signals
    from harness.runner import run

    explicit = {}
    for f in dataclasses.fields(RunSpec):
        raw = getattr(args, f"field_{f.name}")
        if raw is not None:
            explicit[f.name] = raw if _is_text(run_key_types()[f.name]) else parse_value(raw)
    overrides = {**explicit, **parse_overrides(args.overrides)}
    if args.method_options:
        overrides.setdefault("options", {}).update(parse_overrides(args.method_options))
    spec = load_spec_file(args.spec_file, overrides) if args.spec_file else build_spec({}, overrides)
    if not spec.results:  # the store the report reads, not a folder of the run's choosing
        spec.results = results.RESULTS_HOME
    with stop_on_signals():
        try:
            records = run(spec)
        except Interrupted as stop:
            stop.message = _interrupted_run(spec, stop)
            raise
    where = os.path.abspath(results.results_path(spec.results))
    if not records:
        print(
            f"Nothing to do: the {len(spec.eval_targets())} result(s) of {spec.job_name} with these settings exist "
            f"in {where} (--force redoes the job from scratch in a fresh folder, --reevaluate re-scores "
            "its checkpoint)."
        )
    for r in records:
        fields = {k: r[k] for k in ("job", "dataset", "subsample")}
        print(json.dumps(fields | {"accuracy": round(r["metrics"]["accuracy"], 2)}))
    if records:
        print(f"Recorded in {where}; the run's log and checkpoints: {records[0]['run_dir']}")
    return 0


# ---------------------------------------------------------------------------------------------
# sweep and status
# ---------------------------------------------------------------------------------------------


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment name under experiments/ (base2new, crossdataset, ...) or a YAML path")
    p.add_argument(
        "--data-root", default="", help="folder holding the datasets (default: the profile's generated data)"
    )
    p.add_argument("--profile", default=None, help="named overrides from the experiment file, e.g. demo")
    p.add_argument(
        "--out",
        default=results.RESULTS_HOME,
        help=f"output folder: results.jsonl, runs/, feature_cache/, <experiment>/ (default: {results.RESULTS_HOME})",
    )
    p.add_argument("--datasets", default="", help="comma-separated subset of the experiment's datasets (or targets)")
    p.add_argument("--seeds", default="", help="comma-separated seeds, e.g. 1,2")
    p.add_argument(
        "--methods",
        default="",
        help="comma-separated method variants, or 'all' (default: the experiment's default_methods, the paper's)",
    )
    p.add_argument("--shots", default="", help="comma-separated subset of a few-shot study's shot counts, e.g. 1,16")
    p.add_argument("--backbone", default="", help="backbone for every job (e.g. ViT-B/16, tiny, a .pt path)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run key for every job, winning over the experiment and method configs (e.g. epochs=2, "
        "precision=fp32, tracking=none)",
    )


def _load_sweep(args):
    from harness import sweep

    experiment = sweep.load_experiment(args.experiment, profile=args.profile)
    split = lambda text: [x for x in text.split(",") if x]
    experiment = sweep.narrow(
        experiment, split(args.datasets), split(args.seeds), split(args.methods), split(args.shots)
    )
    overrides = parse_overrides(args.overrides)
    if args.backbone:
        overrides["backbone"] = args.backbone
    out = os.path.abspath(args.out)
    data_root = sweep.prepare_data(experiment, args.data_root, out)
    return experiment, sweep.expand(experiment, data_root, out, overrides), out


def _expected_experiment(args) -> dict:
    """The experiment as its file and profile define it, before --datasets/--seeds/--methods narrow it."""
    from harness import sweep

    return sweep.narrow(sweep.load_experiment(args.experiment, profile=args.profile))


def _cmd_sweep(args) -> int:
    from harness import launcher, sweep
    from harness.sweep import check_data_folders, prepare_backbones, record_expectation

    experiment, jobs, out = _load_sweep(args)
    expected = _expected_experiment(args)
    name, cfg = launcher.launcher_settings(experiment, args.launcher, parse_overrides(args.slurm), args.max_parallel)
    if args.dry_run:
        launcher.print_plan(jobs, launcher.plan(jobs, args.force, args.reevaluate))
        return 0
    todo = [j for j, s in zip(jobs, launcher.plan(jobs, args.force, args.reevaluate)) if s.state != "skipped"]
    if todo:
        launcher.check_devices(todo, name)  # launch checks it too: here before the expectation is written
        check_data_folders(todo)
        prepare_backbones(todo)
    if experiment.get("data") != "generated":  # a real study can be hours of GPU time: say what starts
        listed = list(sweep.load_experiment(args.experiment, profile=args.profile).get("methods") or {})
        print(_roster_line(experiment, listed, len(jobs), len(todo)))
    record_expectation(out, experiment, expected, jobs)
    states = launcher.launch(
        jobs, experiment["name"], out, name, cfg, force=args.force, wait=not args.no_wait, reevaluate=args.reevaluate
    )
    return FAILED if any(s.state in ("failed", "blocked") for s in states) else 0


def _roster_line(experiment: dict, listed: list[str], jobs: int, todo: int) -> str:
    """Before a real sweep: how many jobs, of which methods, and how to ask for the others of ``listed``."""
    ran = list(experiment.get("methods") or {})
    line = f"{experiment['name']}: {jobs} jobs ({todo} to run) of {len(ran)} method(s): {', '.join(ran)}"
    others = [m for m in listed if m not in ran]
    if others:
        line += f".\n  Not run: {', '.join(others)} (--methods all, or METHODS=all with make, runs all {len(listed)})"
    return line + "."


def _cmd_status(args) -> int:
    from harness import launcher, sweep

    out = os.path.abspath(args.out)
    name = sweep.load_experiment(args.experiment)["name"] if os.path.isfile(args.experiment) else args.experiment
    rows = launcher.status(sweep.recorded_jobs(out, name), out, name)
    width = max((len(r["job"]) for r in rows), default=10)
    for r in rows:
        print(
            f"{r['job']:<{width}}  {r['state']:<11} results {r['results']}  fingerprint {r['fingerprint']}  "
            f"{r.get('detail', '')}".rstrip()
        )
    counts: dict = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print("total: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------


def method_lines() -> list[str]:
    """One line per registered method: its name, label and paper (year), its configs (the default marked)."""
    import methods

    rows = []
    for name in methods.list_methods():
        info = methods.method_info(name)
        try:
            default = default_method_config(name)
        except ConfigError:
            default = None
        configs = [c + (" (default)" if c == default else "") for c in method_configs(name)]
        paper = f"{info.label}: {info.citation}" if info.citation else info.label
        rows.append((name, paper, ", ".join(configs) or "no config in experiments/methods/" + name))
    widths = [max((len(r[i]) for r in rows), default=0) for i in (0, 1)]
    return [f"{n:<{widths[0]}}  {p:<{widths[1]}}  {c}" for n, p, c in rows]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _error_types() -> tuple[tuple[type, int], ...]:
    """(exception type, exit status) of the errors that end a command with one line. Only modules
    already imported are asked: an exception of a module never imported cannot have been raised."""
    wanted = (
        ("harness.config", "ConfigError", BAD_INPUT),
        ("bounds", "OutOfBounds", BAD_INPUT),
        ("harness.data.errors", "DatasetError", BAD_INPUT),
        ("clipcore.backbone", "BackboneError", BAD_INPUT),
        ("methods.parts.registry", "UnknownMethodError", BAD_INPUT),
        ("methods.parts.base", "CheckpointError", BAD_INPUT),
        ("harness.checkpoint", "ResumeError", BAD_INPUT),
        ("harness.fingerprint", "FolderMismatchError", BAD_INPUT),
        ("harness.results", "ResultsError", BAD_INPUT),
        ("harness.report", "ReportError", BAD_INPUT),
        ("harness.launcher.slurm", "SubmissionError", BAD_INPUT),
        ("harness.runner", "RunFailedError", FAILED),
    )
    found = [(getattr(sys.modules[m], name), code) for m, name, code in wanted if m in sys.modules]
    return (*found, (yaml.YAMLError, BAD_INPUT), (OSError, BAD_INPUT))


def describe(exc: BaseException) -> str:
    """One line (or a few) for the user: the error's own message, without a worker's traceback."""
    text = str(exc) or type(exc).__name__
    if "Original Traceback" in text:  # re-raised from a data-loader worker: keep the error's own line
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    if isinstance(exc, PermissionError):
        text += (
            ". The folder is not writable: choose another output folder (--out / output_dir) or fix its permissions."
        )
    elif isinstance(exc, yaml.YAMLError):
        text = f"YAML syntax error: {text}"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="prompt-harness",
        description="prompt-harness: prompt learning for CLIP (zero-shot CLIP, CoOp, CoCoOp and successors), "
        "trained and evaluated as published.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also HARNESS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    sub.add_parser("methods", help="list the registered methods: paper (year) and configs")
    sub.add_parser("configs", help="list the published method configs")
    sweep_p = sub.add_parser("sweep", help="run an experiment: every method x dataset x seed")
    _sweep_args(sweep_p)
    sweep_p.add_argument(
        "--launcher", default="", choices=["", "local", "slurm", "debug"], help="where jobs run (default: local)"
    )
    sweep_p.add_argument("--max-parallel", type=int, default=0, help="local launcher: jobs at once")
    sweep_p.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="slurm option (defaults: experiments/launcher.yaml): partition, account, qos, gpus_per_node, "
        "cpus_per_task, mem_gb, timeout_min, array_parallelism, constraint",
    )
    sweep_p.add_argument("--dry-run", action="store_true", help="print the job plan and exit")
    sweep_p.add_argument(
        "--force",
        action="store_true",
        help="redo every job from scratch, training included, in fresh run folders beside the old ones",
    )
    sweep_p.add_argument(
        "--reevaluate", action="store_true", help="score the jobs' existing checkpoints again (no training)"
    )
    sweep_p.add_argument("--no-wait", action="store_true", help="slurm: submit and exit; follow with `status`")
    status_p = sub.add_parser(
        "status",
        help="progress of an experiment's jobs",
        description="Where each job the sweeps of an experiment ran stands, read from what they recorded in "
        "the output folder (<out>/<experiment>/expected.json, results.jsonl): no need to repeat their flags.",
    )
    status_p.add_argument("experiment", help="experiment name (base2new, crossdataset, ...) or its YAML path")
    status_p.add_argument(
        "--out", default=results.RESULTS_HOME, help=f"the sweep's output folder (default: {results.RESULTS_HOME})"
    )
    sub.add_parser("report", help="tables and figures from a results store (see: report --help)", add_help=False)
    sub.add_parser("data", help="check data folders, list datasets (see: data --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    debug = args.debug or os.environ.get("HARNESS_DEBUG", "") not in ("", "0")
    try:
        if args.command == "report":
            from harness.report.__main__ import main as report_main

            return report_main(rest)  # its --results defaults to the results' home
        if args.command == "data":
            from harness.data.check import main as data_main

            return data_main(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "status":
            return _cmd_status(args)
        if args.command == "methods":
            print("\n".join(method_lines()))
            return 0
        print("\n".join(method_config_names()))
        return 0
    except KeyboardInterrupt as exc:  # Ctrl-C, or a signal a command stops on (harness.launcher.interrupts)
        if debug:
            raise
        print(str(exc) or "Interrupted.", file=sys.stderr)
        return getattr(exc, "exit_status", INTERRUPTED)
    except Exception as exc:
        for kind, code in _error_types():
            if isinstance(exc, kind) and not debug:
                print(f"error: {describe(exc)}", file=sys.stderr)
                print("(run with --debug or HARNESS_DEBUG=1 for the traceback)", file=sys.stderr)
                return code
        raise
