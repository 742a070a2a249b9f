"""submitit's debug executor: each job in this process, one after the other. A signal that stops the sweep
(``launcher.interrupts``) unwinds the job it runs, as Ctrl-C does ``harness run``."""

from __future__ import annotations

import logging
import os
import sys

import submitit

from harness.launcher.interrupts import Interrupted
from harness.launcher.jobs import HarnessJob, scores
from harness.launcher.progress import Progress
from harness.launcher.state import JobStatus, block_dependents, save_state
from harness.logs import console_at


def run_debug(
    todo, states, folder, out, experiment, printer, post_mortem: bool = True, threads: int | None = None
) -> None:
    """On a terminal a failure opens the debugger (post-mortem) unless ``post_mortem`` is false;
    otherwise it is recorded and the sweep goes on. ``threads``: torch's threads (default: its own)."""
    import torch

    threads_before = torch.get_num_threads()  # the jobs run in this process: give its threads back after
    try:
        _in_turn(todo, states, folder, out, experiment, printer, post_mortem, threads)
    finally:
        torch.set_num_threads(threads_before)


def _in_turn(todo, states, folder, out, experiment, printer, post_mortem, threads) -> None:
    by_name = {s.name: s for s in states}
    executor = submitit.AutoExecutor(folder=folder, cluster="debug")
    progress = Progress([state for _, state in todo])
    for job, state in todo:
        if state.state == JobStatus.BLOCKED:
            continue
        sj = executor.submit(HarnessJob(threads), job.spec.to_dict())
        state.started(sj, JobStatus.RUNNING)
        # submitit's debug executor writes no log files of its own: the job's log is its run's log.txt
        state.stdout = state.stderr = os.path.join(job.spec.output_dir, "log.txt")
        try:
            # One line per job on the console; its details (spec, epochs, traceback) in its run's log.txt.
            with console_at(logging.WARNING):
                records = sj.result() if post_mortem and sys.stdin.isatty() else sj.submission().result()
            state.state = JobStatus.DONE
            printer(f"[done] {job.name}  ({progress.text()}): {scores(records)}")
        except Interrupted as stop:
            state.state, state.error = JobStatus.INTERRUPTED, f"stopped by {stop.signal_name}"
            raise
        except Exception as exc:
            state.state, state.error = JobStatus.FAILED, f"{type(exc).__name__}: {exc}".splitlines()[0]
            printer(f"[failed] {job.name}  ({progress.text()}): {state.error}\n  log: {state.stderr}")
            block_dependents(job.name, by_name, printer)
        save_state(out, experiment, states)
