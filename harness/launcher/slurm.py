"""Slurm through submitit: job arrays, dependencies, a preflight check, waiting and asking the cluster.

Jobs go in as job arrays, at most ``array_parallelism`` tasks of an array running at once. The first
array holds the jobs that can start now (trainings first); the second their evaluations, task i
waiting for task i of the first (``aftercorr``). Before anything is submitted the request is checked
with ``sbatch --test-only``; a refusal names the option to change, and a submission refused half-way
cancels what this launch queued. A job whose dependency failed is cancelled (``--kill-on-invalid-dep``
and by the driver), as is one Slurm says it will never start. A signal that stops the sweep stops its
waiting only: the jobs queued are left to the cluster (``launcher.driver`` prints their ``scancel``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import submitit

from harness.launcher.interrupts import deferred
from harness.launcher.jobs import HarnessJob, collect_finished, job_failure
from harness.launcher.progress import Progress
from harness.launcher.settings import check_slurm_keys
from harness.launcher.state import JobState, JobStatus, block_dependents, save_state
from harness.sweep import Job

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


class SubmissionError(RuntimeError):
    """The cluster refused the jobs; the message says what it refused and which option to change."""


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def slurm_parameters(cfg: dict) -> dict:
    """submitit's executor parameters for the launcher options."""
    check_slurm_keys(cfg)
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


# ---------------------------------------------------------------------------------------------
# Submission
# ---------------------------------------------------------------------------------------------


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


def _cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)


def submit_slurm(todo, states, folder, cfg, printer) -> dict:
    """Queue ``todo`` (after the preflight check): {job name: submitit job}; the states become queued."""
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
            state.started(sj, JobStatus.QUEUED)
        return handles

    # A signal waits for the submission to end: every job queued is then in the states, whose ids the
    # sweep's last line names (the jobs are left to the cluster, see launcher.driver).
    with deferred():
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
                state.state, state.job_id = JobStatus.PENDING, None
            message = str(exc.__cause__ or exc) if not isinstance(exc, SubmissionError) else str(exc)
            raise SubmissionError(
                _refusal(message, cfg) + f"\nCancelled the {len(submitted)} job(s) this launch had queued."
            ) from exc
    ids = sorted({sj.job_id.split("_")[0] for sj in submitted.values()})
    printer(f"Submitted {len(submitted)} Slurm jobs as array(s) {', '.join(ids)}.")
    return submitted


# ---------------------------------------------------------------------------------------------
# Waiting, and asking the cluster later
# ---------------------------------------------------------------------------------------------


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


def wait_slurm(submitted: dict, states: list[JobState], out, experiment, poll_s, printer) -> None:
    """Until every job is done, failed or blocked: a failure blocks (and cancels) its dependents, and a
    job Slurm will never start is cancelled and reported with Slurm's reason."""
    by_name = {s.name: s for s in states}
    pending = dict(submitted)
    progress = Progress([by_name[name] for name in submitted])
    while pending:
        for name in collect_finished(pending, by_name, printer, progress):
            for state in block_dependents(name, by_name, printer):
                if state.name in pending:
                    _cancel([pending.pop(state.name).job_id])
        stuck = slurm_pending_reasons([sj.job_id for sj in pending.values()])
        for name, sj in list(pending.items()):
            reason = stuck.get(sj.job_id, "")
            if any(r in reason for r in NEVER_STARTS):
                _cancel([sj.job_id])
                del pending[name]
                by_name[name].state = JobStatus.BLOCKED
                by_name[name].error = f"Slurm will never start it: {reason}"
                printer(f"[blocked] {name} ({by_name[name].error}; cancelled)")
                for state in block_dependents(name, by_name, printer):
                    if state.name in pending:
                        _cancel([pending.pop(state.name).job_id])
        save_state(out, experiment, states)
        if pending:
            time.sleep(poll_s)


def refresh_from_slurm(states: dict[str, JobState]) -> None:
    """Update queued/running Slurm jobs of a sweep that did not wait: failed (with the job's own error
    line), blocked (cancelled because a dependency failed), or still pending (with Slurm's reason)."""
    live = {
        n: s for n, s in states.items() if s.state in (JobStatus.QUEUED, JobStatus.RUNNING) and s.job_id and s.stdout
    }
    if not live or shutil.which("squeue") is None:
        return
    from submitit.slurm.slurm import SlurmJob

    handles = {n: SlurmJob(folder=os.path.dirname(s.stdout), job_id=s.job_id) for n, s in live.items()}
    reasons = slurm_pending_reasons([s.job_id for s in live.values()])
    for name, handle in handles.items():
        state, slurm_state = live[name], handle.state
        if slurm_state in ("RUNNING", "COMPLETING"):
            state.state = JobStatus.RUNNING
        elif slurm_state.startswith("CANCELLED") and any(
            states[d].state in (JobStatus.FAILED, JobStatus.BLOCKED) for d in state.depends_on
        ):
            state.state = JobStatus.BLOCKED
            state.error = f"not run: {', '.join(state.depends_on)} failed (cancelled by Slurm)"
        elif slurm_state == "FAILED":  # the job's result file holds its exception
            state.state, state.error = JobStatus.FAILED, job_failure(handle)
        elif slurm_state.startswith("CANCELLED") or slurm_state in (
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "BOOT_FAIL",
        ):
            state.state, state.error = JobStatus.FAILED, f"Slurm state {slurm_state} (see the log)"
        elif state.job_id in reasons:
            state.error = f"Slurm: pending ({reasons[state.job_id]})"
