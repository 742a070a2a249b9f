"""Run a sweep's jobs through submitit: on this machine (``local``), on Slurm, or in process (``debug``).

Each job is a pickled callable (``HarnessJob``) that submitit can checkpoint: on preemption or
time-out it is requeued with the same arguments, and the runner resumes from the job's last
finished epoch. Nothing that finished is redone: a job whose records exist is skipped before
submission, and a requeued job skips its finished epochs and evaluations.

Dependencies: an evaluation job waits for its training job (Slurm: ``afterok``; local: started
when its dependency succeeded). The sweep's state (job ids, logs, states) is kept in
``<out>/<experiment>/sweep.json`` so ``python -m harness status`` can report on it later.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import traceback
from dataclasses import dataclass, field

import submitit

from harness import results
from harness.config import ConfigError, build_spec
from harness.sweep import Job

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm", "debug")
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
    error: str | None = None


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


def plan(jobs: list[Job], force: bool = False) -> list[JobState]:
    """Which jobs must run: those with missing records (all of them with ``force``)."""
    done = results.existing_keys(jobs[0].spec.results) if jobs else set()
    states, running = [], set()
    for job in jobs:
        needed = force or bool(job.pending_targets(done))
        deps = [d for d in job.depends_on if d in running]
        states.append(JobState(job.name, job.kind, job.spec.output_dir, deps, "pending" if needed else "skipped"))
        if needed:
            running.add(job.name)
    return states


def print_plan(jobs: list[Job], states: list[JobState], printer=print) -> None:
    todo = [s for s in states if s.state != "skipped"]
    printer(f"{len(jobs)} jobs: {len(todo)} to run, {len(jobs) - len(todo)} already have all their results")
    for job, state in zip(jobs, states):
        targets = ", ".join(f"{d}/{s}" for d, s in job.targets())
        after = f"  after {', '.join(state.depends_on)}" if state.depends_on else ""
        printer(
            f"  [{'run ' if state.state != 'skipped' else 'skip'}] {job.name:<55} {job.kind:<5} -> {targets}{after}"
        )


def _slurm_parameters(cfg: dict) -> dict:
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
    params["slurm_additional_parameters"] = dict(cfg.get("additional") or {})
    return params


def _job_failure(job) -> str:
    """'' for success, else the job's own error line (the last line of the remote traceback)."""
    try:
        job.result()
        return ""
    except Exception as exc:  # submitit re-raises the remote error with its traceback
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b.*", line)]
        return errors[-1] if errors else f"{type(exc).__name__}: {lines[0] if lines else ''}"


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
) -> list[JobState]:
    if launcher not in LAUNCHERS:
        raise ConfigError(f"Unknown launcher {launcher!r}; choose one of {LAUNCHERS}.")
    cfg = dict(launcher_cfg or {})
    states = plan(jobs, force)
    by_name = {s.name: s for s in states}
    todo = [(j, s) for j, s in zip(jobs, states) if s.state == "pending"]
    if force:
        for job, _ in todo:
            job.spec.force = True
    save_state(out, experiment, states)
    if not todo:
        printer("Nothing to do: every job's results exist.")
        return states
    folder = os.path.join(out, experiment, "submitit", "%j")

    if launcher == "debug":
        for job, state in todo:
            if any(by_name[d].state != "done" for d in state.depends_on):
                state.state = "blocked"
                continue
            printer(f"[debug] {job.name}")
            state.state = "running"
            try:
                HarnessJob()(job.spec.to_dict())
                state.state = "done"
            except Exception as exc:
                state.state, state.error = "failed", f"{type(exc).__name__}: {exc}"
                log.error("%s failed:\n%s", job.name, traceback.format_exc())
            save_state(out, experiment, states)
        return _finish(states, out, experiment, printer)

    if launcher == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        base = _slurm_parameters(cfg)
        submitted = {}
        for job, state in todo:  # jobs come in dependency order
            params = dict(base)
            deps = [submitted[d].job_id for d in state.depends_on if d in submitted]
            if deps:
                params["slurm_additional_parameters"] = {
                    **base["slurm_additional_parameters"],
                    "dependency": "afterok:" + ":".join(deps),
                }
            executor.update_parameters(name=job.name.replace("/", "."), **params)
            sj = executor.submit(HarnessJob(), job.spec.to_dict())
            submitted[job.name] = sj
            state.state, state.job_id = "queued", sj.job_id
            state.stdout, state.stderr = str(sj.paths.stdout), str(sj.paths.stderr)
        save_state(out, experiment, states)
        printer(f"Submitted {len(submitted)} Slurm jobs ({', '.join(s.job_id for s in submitted.values())}).")
        if not wait:
            printer(f"Follow them with: python -m harness status {experiment} --out {out}")
            return states
        return _wait(submitted, states, out, experiment, poll_s, printer)

    # local: at most `max_parallel` jobs at once on this machine, each in its own process.
    max_parallel = max(1, int(cfg.get("max_parallel", 1)))
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    executor = submitit.AutoExecutor(folder=folder, cluster="local")
    executor.update_parameters(timeout_min=int(cfg.get("timeout_min", 24 * 60)))
    queue = list(todo)
    active: dict[str, object] = {}
    while queue or active:
        _collect_finished(active, by_name, printer)
        for job, state in list(queue):
            if len(active) >= max_parallel:
                break
            if any(by_name[d].state in ("failed", "blocked") for d in state.depends_on):
                state.state = "blocked"
                queue.remove((job, state))
                continue
            if any(by_name[d].state != "done" for d in state.depends_on):
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
    return _finish(states, out, experiment, printer)


def _collect_finished(active: dict, by_name: dict, printer) -> None:
    """Move finished submitit jobs out of ``active``, recording done or failed (with the log)."""
    for name, sj in list(active.items()):
        if sj.done():
            state = by_name[name]
            error = _job_failure(sj)
            state.state, state.error = ("failed", error) if error else ("done", None)
            printer(f"[{state.state}] {name}" + (f": {error}\n  log: {state.stderr}" if error else ""))
            del active[name]


def _wait(submitted: dict, states: list[JobState], out, experiment, poll_s, printer) -> list[JobState]:
    by_name = {s.name: s for s in states}
    pending = dict(submitted)
    while pending:
        _collect_finished(pending, by_name, printer)
        save_state(out, experiment, states)
        if pending:
            time.sleep(poll_s)
    return _finish(states, out, experiment, printer)


def _finish(states, out, experiment, printer) -> list[JobState]:
    save_state(out, experiment, states)
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    printer("Sweep finished: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    for s in states:
        if s.state in ("failed", "blocked"):
            printer(f"  {s.state}: {s.name}" + (f" ({s.error}); log: {s.stderr}" if s.state == "failed" else ""))
    return states


def status(jobs: list[Job], out: str, experiment: str) -> list[dict]:
    """Each job's progress from the results store, its checkpoints and the last sweep's state."""
    from harness.checkpoint import latest_checkpoint

    done = results.existing_keys(jobs[0].spec.results) if jobs else set()
    previous = {s.name: s for s in load_state(out, experiment)}
    rows = []
    for job in jobs:
        missing = job.pending_targets(done)
        last = previous.get(job.name)
        row = {
            "job": job.name,
            "kind": job.kind,
            "results": f"{len(job.targets()) - len(missing)}/{len(job.targets())}",
        }
        if not missing:
            row["state"] = "done"
        elif last and last.state == "failed":
            row["state"], row["detail"] = "failed", f"{last.error}; log: {last.stderr}"
        else:
            found = latest_checkpoint(job.spec.output_dir) if job.kind == "train" else None
            row["state"] = last.state if last and last.state in ("queued", "running", "blocked") else "not started"
            if found:
                row["state"] = "partial" if row["state"] == "not started" else row["state"]
                row["detail"] = f"epoch {found[1]}/{job.spec.epochs} checkpointed"
        if last and last.job_id:
            row["job_id"] = last.job_id
        rows.append(row)
    return rows
