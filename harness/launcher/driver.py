"""What a sweep must run (its plan), handing it to the chosen executor, and the closing summary (or, when a
signal stops the sweep, its one line: ``interrupted_line``)."""

from __future__ import annotations

import os

from harness import fingerprint as fingerprints
from harness import results
from harness.launcher.debug import run_debug
from harness.launcher.interrupts import Interrupted, stop_on_signals
from harness.launcher.local import run_local
from harness.launcher.settings import check_launcher
from harness.launcher.slurm import submit_slurm, wait_slurm
from harness.launcher.state import JobState, JobStatus, save_state
from harness.sweep import Job


def plan(jobs: list[Job], force: bool = False, reevaluate: bool = False) -> list[JobState]:
    """Which jobs must run: those without records of their identity and fingerprint (all of them with
    ``force`` or ``reevaluate``); a job whose identity has records of other settings says what changed."""
    records = results.read_records(jobs[0].spec.results) if jobs else []
    done = fingerprints.finished(records)
    states, running = [], set()
    for job in jobs:
        needed = force or reevaluate or bool(job.pending_targets(done))
        deps = [d for d in job.depends_on if d in running]
        status = JobStatus.PENDING if needed else JobStatus.SKIPPED
        state = JobState(job.name, job.kind, job.spec.output_dir, deps, status, fingerprint=job.fingerprint)
        if needed:
            running.add(job.name)
            earlier = fingerprints.superseded(records, job.spec.identity(), job.targets(), job.fingerprint)
            if earlier is not None:
                changes = fingerprints.differences(earlier.get("settings"), job.settings)
                state.changed = fingerprints.describe(changes) or "the data"
        states.append(state)
    return states


def print_plan(jobs: list[Job], states: list[JobState], printer=print) -> None:
    todo = [s for s in states if s.state != JobStatus.SKIPPED]
    printer(f"{len(jobs)} jobs: {len(todo)} to run, {len(jobs) - len(todo)} already have all their results")
    for job, state in zip(jobs, states):
        targets = ", ".join(f"{d}/{s}" for d, s in job.targets())
        after = f"  after {', '.join(state.depends_on)}" if state.depends_on else ""
        run = "run " if state.state != JobStatus.SKIPPED else "skip"
        changed = f"  settings changed: {state.changed}" if state.changed else ""
        printer(f"  [{run}] {job.name:<55} {job.kind:<5} -> {targets}{after}{changed}")


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


def check_devices(jobs: list[Job], launcher: str) -> None:
    """A job's device that this machine lacks is a ``ConfigError`` before anything is written, for the
    launchers whose jobs run here (local, debug); a Slurm job runs on a GPU node, whatever the login node has."""
    if launcher not in ("local", "debug"):
        return
    from harness.runner import resolve_device

    for device in sorted({job.spec.device for job in jobs}):
        resolve_device(device)


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
    check_launcher(launcher)
    cfg = dict(launcher_cfg or {})
    states = plan(jobs, force, reevaluate)
    todo = [(j, s) for j, s in zip(jobs, states) if s.state == JobStatus.PENDING]
    check_devices([job for job, _ in todo], launcher)
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
    with stop_on_signals():
        try:
            if launcher == "debug":
                post_mortem, threads = bool(cfg.get("post_mortem", True)), cfg.get("threads")
                run_debug(
                    todo, states, folder, out, experiment, printer, post_mortem, int(threads) if threads else None
                )
            elif launcher == "slurm":
                submitted = submit_slurm(todo, states, folder, cfg, printer)
                save_state(out, experiment, states)
                if not wait:
                    printer(f"Follow them with: python -m harness status {experiment} --out {out}")
                    return states
                wait_slurm(submitted, states, out, experiment, poll_s, printer)
            else:
                run_local(todo, states, folder, cfg, out, experiment, poll_s, printer)
        except Interrupted as stop:
            save_state(out, experiment, states)
            stop.message = interrupted_line(stop, states, out, experiment)
            raise
    return _finish(states, out, experiment, printer)


def interrupted_line(stop: Interrupted, states: list[JobState], out: str, experiment: str) -> str:
    """The one line of a sweep a signal stopped: the jobs it stopped, those done, failed, blocked or not
    started, and, on Slurm, the jobs left to the cluster (still queued or running: the sweep only stops
    waiting for them, as a lost login session must not cancel a study) with their ``scancel``."""
    count = lambda status: sum(s.state == status for s in states)
    plural = lambda n, what: f"{n} {what}{'' if n == 1 else 's'}"
    tally = ", ".join(
        [f"{count(JobStatus.DONE)} done"]
        + [f"{count(status)} {status}" for status in (JobStatus.FAILED, JobStatus.BLOCKED) if count(status)]
        + [f"{count(JobStatus.PENDING)} not started"]
    )
    left = [s for s in states if s.state in (JobStatus.QUEUED, JobStatus.RUNNING) and s.job_id]
    if left:
        arrays = " ".join(sorted({s.job_id.split("_")[0] for s in left}))
        return (
            f"Interrupted ({stop.signal_name}): stopped waiting; {tally}; {plural(len(left), 'Slurm job')} left to "
            f"the cluster (follow: python -m harness status {experiment} --out {out}; cancel: scancel {arrays}). "
            "Re-run the same command once they have ended to finish the rest."
        )
    stopped = plural(count(JobStatus.INTERRUPTED), "running job")
    return f"Interrupted ({stop.signal_name}): stopped {stopped}; {tally}. Re-run the same command to finish the rest."


def _finish(states, out, experiment, printer) -> list[JobState]:
    save_state(out, experiment, states)
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    printer("Sweep finished: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    for s in states:
        if s.state == JobStatus.FAILED:
            printer(f"  failed: {s.name} ({s.error}); log: {s.stderr}")
        elif s.state == JobStatus.BLOCKED:
            printer(f"  blocked: {s.name} ({s.error})")
    return states
