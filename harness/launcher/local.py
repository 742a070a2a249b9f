"""This machine: at most ``max_parallel`` jobs at once, each in its own process, an evaluation only
after its training is done.

Each job runs in a process group of its own (submitit's controller, the training process it starts,
that process's data-loader workers), so a Ctrl-C at the terminal reaches the sweep alone, and the sweep,
on any signal that stops it (``launcher.interrupts``), kills every process of each running job at once
and waits for them to end: as for a pre-empted job, the next sweep resumes it from its last checkpoint.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
import types

import submitit
from submitit.local import local as submitit_local

from harness.launcher.interrupts import Interrupted, deferred
from harness.launcher.jobs import HarnessJob, collect_finished
from harness.launcher.progress import Progress
from harness.launcher.state import JobStatus, block_dependents, save_state

# How long the sweep waits for a killed job's processes to be gone (they are reaped by their parents or,
# orphaned, by the system's init) before it reports the rest as stopped anyway.
STOP_WAIT_S = 30.0


class GroupLocalExecutor(submitit.LocalExecutor):
    """submitit's local executor, each job's controller started in a session (and process group) of
    its own."""

    def _submit_command(self, command: str):
        # submitit starts the controller with its module's subprocess.Popen and no way to ask for a
        # session: the same call, with start_new_session, for the time of this one submission.
        popen = functools.partial(subprocess.Popen, start_new_session=True)
        original = submitit_local.subprocess
        submitit_local.subprocess = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})
        try:
            return super()._submit_command(command)
        finally:
            submitit_local.subprocess = original


def run_local(todo, states, folder, cfg, out, experiment, poll_s, printer) -> None:
    by_name = {s.name: s for s in states}
    max_parallel = max(1, int(cfg.get("max_parallel", 1)))
    # The machine's cores shared among the jobs, unless the launcher settings say how many.
    threads = int(cfg.get("threads") or max(1, (os.cpu_count() or 1) // max_parallel))
    executor = GroupLocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=int(cfg.get("timeout_min", 24 * 60)))
    queue = list(todo)
    active: dict[str, object] = {}
    progress = Progress([state for _, state in todo])
    try:
        while queue or active:
            for name in collect_finished(active, by_name, printer, progress):
                block_dependents(name, by_name, printer)
            for job, state in list(queue):
                if state.state == JobStatus.BLOCKED:
                    queue.remove((job, state))
                    continue
                if len(active) >= max_parallel or any(by_name[d].state != JobStatus.DONE for d in state.depends_on):
                    continue
                with deferred():  # started and tracked, or neither
                    sj = executor.submit(HarnessJob(threads), job.spec.to_dict())
                    state.started(sj, JobStatus.RUNNING)
                    active[job.name] = sj
                    queue.remove((job, state))
                printer(f"[start] {job.name}  (log {state.stderr})")
            save_state(out, experiment, states)
            if queue or active:
                time.sleep(poll_s)
    except Interrupted as stop:
        collect_finished(active, by_name, lambda *_: None)  # those that ended before the signal keep their state
        stop_jobs(list(active.values()))
        for name in active:
            by_name[name].state, by_name[name].error = JobStatus.INTERRUPTED, f"stopped by {stop.signal_name}"
        raise


def stop_jobs(handles: list, wait_s: float = STOP_WAIT_S) -> None:
    """Kill each job's process group (SIGKILL: a training process ignores SIGTERM under submitit, and
    needs no more notice than a pre-empted one) and wait until no process of any of them is left."""
    groups = [int(sj.job_id) for sj in handles]  # the controller's pid, its group's id
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while groups and time.monotonic() < deadline:
        for sj in handles:
            sj.done()  # reaps the controller, our child
        groups = [g for g in groups if _group_alive(g)]
        if groups:
            time.sleep(0.05)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
