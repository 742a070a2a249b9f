"""Run a sweep's jobs through submitit: on this machine (``local``), on Slurm, or in process (``debug``).

Each job is a pickled callable (``HarnessJob``) that submitit can checkpoint: on preemption or
time-out it is requeued with the same arguments, and the runner resumes from the job's last
finished epoch. Nothing that finished is redone: a job whose records exist is skipped before
submission, and a requeued job skips its finished epochs and evaluations.

Dependencies: an evaluation job waits for its training job. A job whose dependency failed is
*blocked*: never started, and on Slurm cancelled (``--kill-on-invalid-dep`` and by the driver), so a
sweep always ends with every job done, failed or blocked, and nothing left queued that can never
start.

Slurm: jobs go in as job arrays, at most ``array_parallelism`` tasks of an array running at once.
The first array holds the jobs that can start now (trainings first); the second their evaluations,
task i waiting for task i of the first (``aftercorr``). Before anything is submitted the request is
checked with ``sbatch --test-only``; a refusal names the option to change, and a submission refused
half-way cancels what this launch queued.

The sweep's state (job ids, logs, states, reasons) is kept in ``<out>/<experiment>/sweep.json`` so
``status`` can report on it later. Cluster defaults are in ``experiments/launcher.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import submitit
import yaml

from harness import fingerprint as fingerprints
from harness import results
from harness.config import PROJECT_ROOT, ConfigError, build_spec
from harness.sweep import Job

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm", "debug")
DEFAULTS_FILE = os.path.join(PROJECT_ROOT, "experiments", "launcher.yaml")
SLURM_KEYS = {
    "partition",
    "account",
    "qos",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "timeout_min",
    "array_parallelism",
    "constraint",
    "additional",
    "setup",
}
# local: max_parallel, timeout_min; debug: post_mortem (open the debugger on a failure at a terminal)
LOCAL_KEYS = {"max_parallel", "timeout_min", "post_mortem"}
# Pending reasons after which Slurm will never start a job (squeue %r).
NEVER_STARTS = ("DependencyNeverSatisfied", "BadConstraints", "PartitionConfig", "InvalidAccount", "InvalidQOS")
# What an sbatch refusal is about -> the launcher option that sets it.
REFUSAL_OPTIONS = (
    (r"gres|gpu", "gpus_per_node", "e.g. --slurm gpus_per_node=0 on a cluster without GPUs"),
    (r"partition", "partition", "--slurm partition=<one of sinfo's partitions>"),
    (r"qos", "qos", "--slurm qos=<an allowed QOS> (or fewer jobs: --datasets, --seeds)"),
    (r"account", "account", "--slurm account=<your account>"),
    (r"memory|mem", "mem_gb", "--slurm mem_gb=<less memory>"),
    (r"time limit|timelimit", "timeout_min", "--slurm timeout_min=<within the partition's limit>"),
    (r"feature|constraint", "constraint", "--slurm constraint=<an existing feature>"),
    (r"cpu|processor", "cpus_per_task", "--slurm cpus_per_task=<fewer CPUs>"),
)


class HarnessJob(submitit.helpers.Checkpointable):
    """``run(spec)`` as submitit's unit of work; requeued (same arguments) on preemption."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, spec_values: dict) -> list[dict]:
        import torch

        from harness.runner import run

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        if self.threads:
            torch.set_num_threads(self.threads)
        return run(build_spec(spec_values))


class SubmissionError(RuntimeError):
    """The cluster refused the jobs; the message says what it refused and which option to change."""


@dataclass
class JobState:
    name: str
    kind: str
    run_dir: str
    depends_on: list = field(default_factory=list)
    state: str = "pending"  # skipped | pending | queued | running | done | failed | blocked
    job_id: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None  # failed: the job's own error line; blocked: why it never ran
    fingerprint: str | None = None  # of the job's settings (harness.fingerprint)
    changed: str | None = None  # why it runs again: "epochs: 100 -> 2" (its earlier records stay)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def launcher_settings(experiment: dict, name: str = "", slurm: dict | None = None, max_parallel: int = 0):
    """(launcher name, its options): ``experiments/launcher.yaml`` < the experiment's ``launcher``
    section < the command line."""
    with open(DEFAULTS_FILE) as f:
        defaults = yaml.safe_load(f) or {}
    section = dict(experiment.get("launcher") or {})
    name = name or section.get("name") or defaults.get("name", "local")
    if name not in LAUNCHERS:
        raise ConfigError(f"Unknown launcher {name!r}; choose one of {LAUNCHERS}.")
    if name == "slurm":
        cfg = {**(defaults.get("slurm") or {}), **(section.get("slurm") or {}), **(slurm or {})}
        unknown = sorted(set(cfg) - SLURM_KEYS)
        if unknown:
            raise ConfigError(f"Unknown slurm launcher key(s) {unknown}. Keys: {', '.join(sorted(SLURM_KEYS))}.")
        return name, cfg
    local = {**(defaults.get("local") or {}), **{k: v for k, v in section.items() if k in LOCAL_KEYS}}
    if max_parallel:
        local["max_parallel"] = max_parallel
    return name, local


def slurm_parameters(cfg: dict) -> dict:
    """submitit's executor parameters for the launcher options."""
    unknown = sorted(set(cfg) - SLURM_KEYS)
    if unknown:
        raise ConfigError(f"Unknown slurm launcher key(s) {unknown}. Keys: {', '.join(sorted(SLURM_KEYS))}.")
    params = {
        "timeout_min": int(cfg.get("timeout_min", 24 * 60)),
        "gpus_per_node": int(cfg.get("gpus_per_node", 1)),
        "cpus_per_task": int(cfg.get("cpus_per_task", 8)),
        "slurm_array_parallelism": int(cfg.get("array_parallelism", 64)),
        "slurm_signal_delay_s": 120,
    }
    if cfg.get("mem_gb"):
        params["mem_gb"] = int(cfg["mem_gb"])
    for key in ("partition", "account", "qos", "constraint"):
        if cfg.get(key):
            params[f"slurm_{key}"] = cfg[key]
    if cfg.get("setup"):
        params["slurm_setup"] = list(cfg["setup"])
    # A job whose dependency can never be satisfied is cancelled by Slurm instead of waiting forever.
    params["slurm_additional_parameters"] = {"kill-on-invalid-dep": "yes", **dict(cfg.get("additional") or {})}
    return params


# ---------------------------------------------------------------------------------------------
# State file and plan
# ---------------------------------------------------------------------------------------------


def state_path(out: str, experiment: str) -> str:
    return os.path.join(out, experiment, "sweep.json")


def save_state(out: str, experiment: str, states: list[JobState]) -> None:
    path = state_path(out, experiment)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump([s.__dict__ for s in states], f, indent=1)
    os.replace(path + ".tmp", path)


def load_state(out: str, experiment: str) -> list[JobState]:
    path = state_path(out, experiment)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [JobState(**s) for s in json.load(f)]


def plan(jobs: list[Job], force: bool = False, reevaluate: bool = False) -> list[JobState]:
    """Which jobs must run: those without records of their identity and fingerprint (all of them with
    ``force`` or ``reevaluate``); a job whose identity has records of other settings says what changed."""
    records = results.read_records(jobs[0].spec.results) if jobs else []
    done = fingerprints.finished(records)
    states, running = [], set()
    for job in jobs:
        needed = force or reevaluate or bool(job.pending_targets(done))
        deps = [d for d in job.depends_on if d in running]
        state = JobState(job.name, job.kind, job.spec.output_dir, deps, "pending" if needed else "skipped")
        state.fingerprint = job.fingerprint
        if needed:
            running.add(job.name)
            earlier = fingerprints.superseded(records, job.spec.identity(), job.targets(), job.fingerprint)
            if earlier is not None:
                changes = fingerprints.differences(earlier.get("settings"), job.settings)
                state.changed = fingerprints.describe(changes) or "the data"
        states.append(state)
    return states


def print_plan(jobs: list[Job], states: list[JobState], printer=print) -> None:
    todo = [s for s in states if s.state != "skipped"]
    printer(f"{len(jobs)} jobs: {len(todo)} to run, {len(jobs) - len(todo)} already have all their results")
    for job, state in zip(jobs, states):
        targets = ", ".join(f"{d}/{s}" for d, s in job.targets())
        after = f"  after {', '.join(state.depends_on)}" if state.depends_on else ""
        changed = f"  settings changed: {state.changed}" if state.changed else ""
        printer(
            f"  [{'run ' if state.state != 'skipped' else 'skip'}] {job.name:<55} {job.kind:<5} -> {targets}{after}"
            f"{changed}"
        )


def fresh_folders(todo: list[tuple[Job, JobState]]) -> None:
    """``force``: each job into a fresh run folder beside its old one, each evaluation loading the
    prompt its training job learns now (not the old folder's)."""
    moved = {}
    for job, state in todo:
        if job.kind == "train":
            fresh = fingerprints.fresh_run_dir(job.spec.output_dir)
            moved[job.spec.output_dir] = fresh
            job.spec.output_dir = state.run_dir = fresh
    for job, _ in todo:
        if job.spec.load_from in moved:
            job.spec.load_from = moved[job.spec.load_from]


def _job_failure(job) -> str:
    """'' for success, else the job's own error line (the last line of the remote traceback)."""
    try:
        job.result()
        return ""
    except Exception as exc:  # submitit re-raises the remote error with its traceback
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b.*", line)]
        return errors[-1] if errors else f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _block_dependents(name: str, by_name: dict[str, JobState], printer) -> list[JobState]:
    """Mark every job that (transitively) waits for ``name`` as blocked; return those newly blocked."""
    blocked = []
    for state in by_name.values():
        if name in state.depends_on and state.state in ("pending", "queued"):
            state.state = "blocked"
            state.error = f"not run: {name} {by_name[name].state}"
            printer(f"[blocked] {state.name} ({state.error})")
            blocked += [state, *_block_dependents(state.name, by_name, printer)]
    return blocked


# ---------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------


def launch(
    jobs: list[Job],
    experiment: str,
    out: str,
    launcher: str = "local",
    launcher_cfg: dict | None = None,
    force: bool = False,
    wait: bool = True,
    poll_s: float = 2.0,
    printer=print,
    reevaluate: bool = False,
) -> list[JobState]:
    if launcher not in LAUNCHERS:
        raise ConfigError(f"Unknown launcher {launcher!r}; choose one of {LAUNCHERS}.")
    cfg = dict(launcher_cfg or {})
    states = plan(jobs, force, reevaluate)
    todo = [(j, s) for j, s in zip(jobs, states) if s.state == "pending"]
    if force:
        fresh_folders(todo)
    for job, state in todo:
        job.spec.force, job.spec.reevaluate = force, reevaluate and not force
        if state.changed:
            printer(f"[changed] {job.name}: {state.changed} (a run folder of its own; the earlier records stay)")
    save_state(out, experiment, states)
    if not todo:
        printer("Nothing to do: every job's results exist.")
        return states
    folder = os.path.join(out, experiment, "submitit", "%j")
    if launcher == "debug":
        _run_debug(todo, states, folder, out, experiment, printer, bool(cfg.get("post_mortem", True)))
    elif launcher == "slurm":
        submitted = _submit_slurm(todo, states, folder, cfg, printer)
        save_state(out, experiment, states)
        if not wait:
            printer(f"Follow them with: python -m harness status {experiment} --out {out}")
            return states
        _wait_slurm(submitted, states, out, experiment, poll_s, printer)
    else:
        _run_local(todo, states, folder, cfg, out, experiment, poll_s, printer)
    return _finish(states, out, experiment, printer)


def _run_debug(todo, states, folder, out, experiment, printer, post_mortem: bool = True) -> None:
    """submitit's debug executor: each job in this process, one after the other. On a terminal a
    failure opens the debugger (post-mortem) unless ``post_mortem`` is false; otherwise it is
    recorded and the sweep goes on."""
    by_name = {s.name: s for s in states}
    executor = submitit.AutoExecutor(folder=folder, cluster="debug")
    for job, state in todo:
        if state.state == "blocked":
            continue
        printer(f"[debug] {job.name}")
        sj = executor.submit(HarnessJob(), job.spec.to_dict())
        state.state, state.job_id = "running", sj.job_id
        state.stdout, state.stderr = str(sj.paths.stdout), str(sj.paths.stderr)
        try:
            sj.result() if post_mortem and sys.stdin.isatty() else sj.submission().result()
            state.state = "done"
        except Exception as exc:
            state.state, state.error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.exception("%s failed", job.name)
            _block_dependents(job.name, by_name, printer)
        save_state(out, experiment, states)


def _run_local(todo, states, folder, cfg, out, experiment, poll_s, printer) -> None:
    """At most ``max_parallel`` jobs at once on this machine, each in its own process."""
    by_name = {s.name: s for s in states}
    max_parallel = max(1, int(cfg.get("max_parallel", 1)))
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    executor = submitit.AutoExecutor(folder=folder, cluster="local")
    executor.update_parameters(timeout_min=int(cfg.get("timeout_min", 24 * 60)))
    queue = list(todo)
    active: dict[str, object] = {}
    while queue or active:
        for name in _collect_finished(active, by_name, printer):
            _block_dependents(name, by_name, printer)
        for job, state in list(queue):
            if state.state == "blocked":
                queue.remove((job, state))
                continue
            if len(active) >= max_parallel or any(by_name[d].state != "done" for d in state.depends_on):
                continue
            executor.update_parameters(name=job.name.replace("/", "."))
            sj = executor.submit(HarnessJob(threads), job.spec.to_dict())
            state.state, state.job_id = "running", sj.job_id
            state.stdout, state.stderr = str(sj.paths.stdout), str(sj.paths.stderr)
            active[job.name] = sj
            queue.remove((job, state))
            printer(f"[start] {job.name}  (log {state.stderr})")
        save_state(out, experiment, states)
        if queue or active:
            time.sleep(poll_s)


def _collect_finished(active: dict, by_name: dict, printer) -> list[str]:
    """Move finished submitit jobs out of ``active``, recording done or failed (with the log);
    return the names of those that failed."""
    failed = []
    for name, sj in list(active.items()):
        if sj.done():
            state = by_name[name]
            error = _job_failure(sj)
            state.state, state.error = ("failed", error) if error else ("done", None)
            printer(f"[{state.state}] {name}" + (f": {error}\n  log: {state.stderr}" if error else ""))
            del active[name]
            if error:
                failed.append(name)
    return failed


# -- Slurm ----------------------------------------------------------------------------------------


def _waves(todo: list[tuple[Job, JobState]]) -> tuple[list, list, bool]:
    """(first array, second array, aligned): jobs that can start now, trainings with waiting
    evaluations first; then those evaluations, task i after task i of the first array (aligned),
    or, for other dependency shapes, each after its own dependencies (not aligned)."""
    waiting = [(j, s) for j, s in todo if s.depends_on]
    now = [(j, s) for j, s in todo if not s.depends_on]
    deps = [s.depends_on for _, s in waiting]
    aligned = all(len(d) == 1 for d in deps) and len({d[0] for d in deps}) == len(deps)
    if aligned:
        order = {d[0]: i for i, d in enumerate(deps)}
        first = sorted(now, key=lambda js: order.get(js[1].name, len(order)))
        aligned = [s.name for _, s in first[: len(waiting)]] == [d[0] for d in deps]
        if aligned:
            return first, waiting, True
    return now, waiting, False


def _refusal(message: str, cfg: dict) -> str:
    """An sbatch refusal, with the option that most likely caused it."""
    text = message.strip().splitlines()
    reason = next((line for line in text if "error" in line.lower()), text[-1] if text else message)
    for pattern, option, hint in REFUSAL_OPTIONS:
        if re.search(pattern, reason, re.I):
            value = cfg.get(option, "(default)")
            change = f"Change the launcher option {option} (now {value!r}): {hint}."
            return f"The Slurm cluster refused the job: {reason}\n{change}"
    return f"The Slurm cluster refused the job: {reason}\nCheck the launcher options: {cfg}."


def sbatch_flags(cfg: dict) -> list[str]:
    """The sbatch options a job of these launcher options asks for (what submitit's script sets)."""
    params = slurm_parameters(cfg)
    flags = [f"--time={params['timeout_min']}", f"--cpus-per-task={params['cpus_per_task']}"]
    if params["gpus_per_node"]:
        flags.append(f"--gpus-per-node={params['gpus_per_node']}")
    if "mem_gb" in params:
        flags.append(f"--mem={params['mem_gb']}GB")
    for key in ("partition", "account", "qos", "constraint"):
        if f"slurm_{key}" in params:
            flags.append(f"--{key}={params[f'slurm_{key}']}")
    for key, value in params["slurm_additional_parameters"].items():
        flags.append(f"--{key.replace('_', '-')}" + ("" if value is True else f"={value}"))
    return flags


def preflight(cfg: dict) -> None:
    """``sbatch --test-only`` with the jobs' options: the cluster's refusal, before anything is queued."""
    command = ["sbatch", "--test-only", *sbatch_flags(cfg), "--wrap=true"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SubmissionError(
            f"Cannot reach Slurm ({' '.join(command[:2])}): {exc}. Is this a cluster login node?"
        ) from exc
    if out.returncode != 0:
        raise SubmissionError(_refusal(out.stderr or out.stdout, cfg) + "\nNothing was submitted.")


def _cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)


def _submit_slurm(todo, states, folder, cfg, printer) -> dict:
    preflight(cfg)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = slurm_parameters(cfg)
    first, second, aligned = _waves(todo)
    submitted: dict[str, object] = {}

    def submit(batch, dependency: str | None, name: str):
        extra = dict(params["slurm_additional_parameters"])
        if dependency:
            extra["dependency"] = dependency
        executor.update_parameters(name=name, **{**params, "slurm_additional_parameters": extra})
        with executor.batch():
            handles = [executor.submit(HarnessJob(), job.spec.to_dict()) for job, _ in batch]
        for (job, state), sj in zip(batch, handles):
            submitted[job.name] = sj
            state.state, state.job_id = "queued", sj.job_id
            state.stdout, state.stderr = str(sj.paths.stdout), str(sj.paths.stderr)
        return handles

    try:
        experiment = todo[0][0].name.split("/")[0]
        handles = submit(first, None, f"{experiment}.jobs")
        if second and aligned and len(first) > 1 and len(second) > 1:  # two arrays, task i after task i
            array = handles[0].job_id.split("_")[0]
            submit(second, f"aftercorr:{array}", f"{experiment}.evals")
        else:
            for job, state in second:
                ids = [submitted[d].job_id for d in state.depends_on]
                submit([(job, state)], "afterok:" + ":".join(ids), job.name.replace("/", "."))
    except Exception as exc:
        _cancel([sj.job_id for sj in submitted.values()])
        for _, state in todo:
            state.state, state.job_id = "pending", None
        message = str(exc.__cause__ or exc) if not isinstance(exc, SubmissionError) else str(exc)
        raise SubmissionError(
            _refusal(message, cfg) + f"\nCancelled the {len(submitted)} job(s) this launch had queued."
        ) from exc
    ids = sorted({sj.job_id.split("_")[0] for sj in submitted.values()})
    printer(f"Submitted {len(submitted)} Slurm jobs as array(s) {', '.join(ids)}.")
    return submitted


def slurm_pending_reasons(job_ids: list[str]) -> dict[str, str]:
    """{job id: squeue's reason} for jobs still pending."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "PD", "-o", "%i %r", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def _wait_slurm(submitted: dict, states: list[JobState], out, experiment, poll_s, printer) -> None:
    """Until every job is done, failed or blocked: a failure blocks (and cancels) its dependents, and a
    job Slurm will never start is cancelled and reported with Slurm's reason."""
    by_name = {s.name: s for s in states}
    pending = dict(submitted)
    while pending:
        for name in _collect_finished(pending, by_name, printer):
            for state in _block_dependents(name, by_name, printer):
                if state.name in pending:
                    _cancel([pending.pop(state.name).job_id])
        stuck = slurm_pending_reasons([sj.job_id for sj in pending.values()])
        for name, sj in list(pending.items()):
            reason = stuck.get(sj.job_id, "")
            if any(r in reason for r in NEVER_STARTS):
                _cancel([sj.job_id])
                del pending[name]
                by_name[name].state, by_name[name].error = "blocked", f"Slurm will never start it: {reason}"
                printer(f"[blocked] {name} ({by_name[name].error}; cancelled)")
                for state in _block_dependents(name, by_name, printer):
                    if state.name in pending:
                        _cancel([pending.pop(state.name).job_id])
        save_state(out, experiment, states)
        if pending:
            time.sleep(poll_s)


def _finish(states, out, experiment, printer) -> list[JobState]:
    save_state(out, experiment, states)
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    printer("Sweep finished: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    for s in states:
        if s.state == "failed":
            printer(f"  failed: {s.name} ({s.error}); log: {s.stderr}")
        elif s.state == "blocked":
            printer(f"  blocked: {s.name} ({s.error})")
    return states


# ---------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------


def status(jobs: list[Job], out: str, experiment: str) -> list[dict]:
    """Each job's progress from the results store, its checkpoints and the last sweep's state; for
    Slurm jobs the sweep did not wait for (``--no-wait``), what the cluster says now."""
    from harness.checkpoint import latest_checkpoint

    done = fingerprints.finished(results.read_records(jobs[0].spec.results)) if jobs else set()
    previous = {s.name: s for s in load_state(out, experiment)}
    refresh_from_slurm(previous)
    rows = []
    for job in jobs:
        missing = job.pending_targets(done)
        last = previous.get(job.name)
        row = {
            "job": job.name,
            "kind": job.kind,
            "results": f"{len(job.targets()) - len(missing)}/{len(job.targets())}",
            "fingerprint": job.fingerprint,
        }
        if not missing:
            row["state"] = "done"
        elif last and last.state == "failed":
            row["state"], row["detail"] = "failed", f"{last.error}; log: {last.stderr}"
        elif last and last.state == "blocked":
            row["state"], row["detail"] = "blocked", last.error
        else:
            found = latest_checkpoint(job.spec.output_dir) if job.kind == "train" else None
            row["state"] = last.state if last and last.state in ("queued", "running") else "not started"
            if found:
                row["state"] = "partial" if row["state"] == "not started" else row["state"]
                row["detail"] = f"epoch {found[1]}/{job.spec.epochs} checkpointed"
            if last and last.error:
                row["detail"] = last.error
        if last and last.job_id:
            row["job_id"] = last.job_id
        rows.append(row)
    return rows


def refresh_from_slurm(states: dict[str, JobState]) -> None:
    """Update queued/running Slurm jobs of a sweep that did not wait: failed (with the job's own error
    line), blocked (cancelled because a dependency failed), or still pending (with Slurm's reason)."""
    live = {n: s for n, s in states.items() if s.state in ("queued", "running") and s.job_id and s.stdout}
    if not live or not _has_slurm():
        return
    from submitit.slurm.slurm import SlurmJob

    handles = {n: SlurmJob(folder=os.path.dirname(s.stdout), job_id=s.job_id) for n, s in live.items()}
    reasons = slurm_pending_reasons([s.job_id for s in live.values()])
    for name, handle in handles.items():
        state, slurm_state = live[name], handle.state
        if slurm_state in ("RUNNING", "COMPLETING"):
            state.state = "running"
        elif slurm_state.startswith("CANCELLED") and any(
            states[d].state in ("failed", "blocked") for d in state.depends_on
        ):
            state.state, state.error = "blocked", f"not run: {', '.join(state.depends_on)} failed (cancelled by Slurm)"
        elif slurm_state == "FAILED":  # the job's result file holds its exception
            state.state, state.error = "failed", _job_failure(handle)
        elif slurm_state.startswith("CANCELLED") or slurm_state in (
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "BOOT_FAIL",
        ):
            state.state, state.error = "failed", f"Slurm state {slurm_state} (see the log)"
        elif state.job_id in reasons:
            state.error = f"Slurm: pending ({reasons[state.job_id]})"


def _has_slurm() -> bool:
    import shutil

    return shutil.which("squeue") is not None
