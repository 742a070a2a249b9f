"""This machine: at most ``max_parallel`` jobs at once, each in its own process, an evaluation only
after its training is done.

Each job runs in a process group of its own (submitit's controller, the training process it starts,
that process's data-loader workers), so a Ctrl-C at the terminal reaches the sweep alone, and the sweep,
on any signal that stops it (``launcher.interrupts``), kills every process of each running job at once
and waits for them to end: as for a pre-empted job, the next sweep resumes it from its last checkpoint.

GPUs: when the sweep sees CUDA GPUs, each job gets ``gpus_per_job`` of them (default 1) from a pool, through
submitit's ``gpus_per_node``/``visible_gpus`` (the job's ``CUDA_VISIBLE_DEVICES``): the least busy ones,
so its own while ``max_parallel`` jobs fit on them, shared evenly beyond that; it gives them back when it
ends. Without GPUs, or with ``gpus_per_job: 0``, a job's ``CUDA_VISIBLE_DEVICES`` is empty: the CPU.
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

from harness.config import ConfigError
from harness.launcher.interrupts import Interrupted, deferred
from harness.launcher.jobs import HarnessJob, collect_finished
from harness.launcher.progress import Progress
from harness.launcher.settings import WHERE_LOCAL, gpu_settings
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


def visible_gpu_ids() -> list[int]:
    """The GPUs this process may use, as its jobs' ``CUDA_VISIBLE_DEVICES`` must name them: the ids its own
    ``CUDA_VISIBLE_DEVICES`` lists (those CUDA finds), else 0..n-1; none without CUDA."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return list(range(count))
    entries = [entry.strip() for entry in listed.split(",")][:count]
    if not all(entry.isdigit() for entry in entries):
        raise ConfigError(
            f"CUDA_VISIBLE_DEVICES={listed!r} names GPUs other than by index; the local launcher hands each job "
            f"its GPUs by index: list indices (e.g. CUDA_VISIBLE_DEVICES=0,1), or set gpus_per_job: 0 (the CPU) "
            f"in {WHERE_LOCAL}."
        )
    return [int(entry) for entry in entries]


class GpuPool:
    """The GPUs the running jobs share: a job takes the ``per_job`` least busy (ties: the first listed),
    so one of its own while any is free, and gives them back when it ends."""

    def __init__(self, ids: list[int], per_job: int):
        self.per_job = per_job
        self.jobs_on = dict.fromkeys(ids, 0)  # GPU id -> running jobs on it

    def take(self) -> tuple[int, ...]:
        chosen = sorted(self.jobs_on, key=self.jobs_on.__getitem__)[: self.per_job]
        for gpu in chosen:
            self.jobs_on[gpu] += 1
        return tuple(gpu for gpu in self.jobs_on if gpu in chosen)

    def give_back(self, gpus: tuple[int, ...]) -> None:
        for gpu in gpus:
            self.jobs_on[gpu] -= 1


def gpu_pool(cfg: dict, max_parallel: int, printer) -> GpuPool | None:
    """The pool the jobs take their GPUs from; None to run them on the CPU (no GPU seen, or asked)."""
    per_job, chosen = gpu_settings(cfg)
    if not per_job:
        return None
    seen = visible_gpu_ids()
    if chosen is None and not seen:
        return None  # a machine without GPUs: the CPU, as the jobs always ran there
    ids = seen if chosen is None else chosen
    unseen = [gpu for gpu in ids if gpu not in seen]
    if unseen:
        limit = os.environ.get("CUDA_VISIBLE_DEVICES")
        limited = f", CUDA_VISIBLE_DEVICES={limit!r}" if limit is not None else ""
        raise ConfigError(
            f"Launcher option gpu_ids={chosen}: GPU {unseen[0]} is not among those the sweep sees "
            f"({seen or 'none'}{limited}); choose among them, or set gpus_per_job: 0 (the CPU) in {WHERE_LOCAL}."
        )
    if per_job > len(ids):
        raise ConfigError(
            f"Launcher option gpus_per_job={per_job}: more than the {len(ids)} GPU(s) {ids} the jobs may use; "
            f"set gpus_per_job to at most {len(ids)} (0: the CPU) in {WHERE_LOCAL}."
        )
    line = f"[gpus] each job on {per_job} of GPU(s) {','.join(map(str, ids))}"
    own = len(ids) // per_job  # the jobs at once that each have GPUs of their own
    if max_parallel > own:
        line += f"; {max_parallel} jobs at once share them, the least busy first (max_parallel {own}: each its own)"
    elif max_parallel < own:
        line += f"; max_parallel {own} would use them all"
    printer(line)
    return GpuPool(ids, per_job)


def run_local(todo, states, folder, cfg, out, experiment, poll_s, printer) -> None:
    by_name = {s.name: s for s in states}
    max_parallel = max(1, int(cfg.get("max_parallel", 1)))
    # The machine's cores shared among the jobs, unless the launcher settings say how many.
    threads = int(cfg.get("threads") or max(1, (os.cpu_count() or 1) // max_parallel))
    executor = GroupLocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=int(cfg.get("timeout_min", 24 * 60)))
    pool = gpu_pool(cfg, max_parallel, printer)
    queue = list(todo)
    active: dict[str, object] = {}
    gpus_of: dict[str, tuple[int, ...]] = {}  # running job -> the GPUs it holds
    progress = Progress([state for _, state in todo])
    try:
        while queue or active:
            for name in collect_finished(active, by_name, printer, progress):
                block_dependents(name, by_name, printer)
            for name in [name for name in gpus_of if name not in active]:
                pool.give_back(gpus_of.pop(name))
            for job, state in list(queue):
                if state.state == JobStatus.BLOCKED:
                    queue.remove((job, state))
                    continue
                if len(active) >= max_parallel or any(by_name[d].state != JobStatus.DONE for d in state.depends_on):
                    continue
                with deferred():  # started and tracked, or neither
                    gpus = pool.take() if pool else ()
                    executor.update_parameters(gpus_per_node=len(gpus), visible_gpus=gpus)
                    sj = executor.submit(HarnessJob(threads), job.spec.to_dict())
                    state.started(sj, JobStatus.RUNNING)
                    active[job.name] = sj
                    if gpus:
                        gpus_of[job.name] = gpus
                    queue.remove((job, state))
                on = f"GPU {','.join(map(str, gpus))}; " if gpus else ""
                printer(f"[start] {job.name}  ({on}log {state.stderr})")
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
