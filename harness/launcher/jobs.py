"""A sweep job as submitit's unit of work, and what a finished one says about itself."""

from __future__ import annotations

import logging
import os
import re

import submitit

from harness.config import build_spec
from harness.launcher.state import JobState, JobStatus


class HarnessJob(submitit.helpers.Checkpointable):
    """``run(spec)`` as submitit's unit of work; requeued (same arguments) on preemption."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, spec_values: dict) -> list[dict]:
        import torch

        from harness.runner import resolve_device, run

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        if self.threads:
            torch.set_num_threads(self.threads)
        spec = build_spec(spec_values)
        # The job's log says where it ran: the local launcher gives each job its GPUs by this variable.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        logging.getLogger(__name__).info("Device %s (CUDA_VISIBLE_DEVICES=%r)", resolve_device(spec.device), visible)
        return run(spec)


def job_failure(job) -> str:
    """'' for success, else the job's own error line (the last line of the remote traceback)."""
    try:
        job.result()
        return ""
    except Exception as exc:  # submitit re-raises the remote error with its traceback
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b.*", line)]
        return errors[-1] if errors else f"{type(exc).__name__}: {lines[0] if lines else ''}"


def scores(records: list[dict] | None) -> str:
    """What a finished job scored, for its one line: ``dtd/base 81.20, dtd/new 74.05``."""
    shown = [f"{r['dataset']}/{r['subsample']} {r['metrics']['accuracy']:.2f}" for r in records or []]
    return ", ".join(shown) if shown else "no new result"


def collect_finished(active: dict, by_name: dict[str, JobState], printer, progress=None) -> list[str]:
    """Move finished submitit jobs out of ``active``, recording done or failed (with the log);
    return the names of those that failed. ``progress`` (``launcher.progress.Progress``): how far the
    sweep has come, after each job's line."""
    failed = []
    for name, sj in list(active.items()):
        if sj.done():
            state = by_name[name]
            error = job_failure(sj)
            state.state, state.error = (JobStatus.FAILED, error) if error else (JobStatus.DONE, None)
            where = f"  ({progress.text()})" if progress is not None else ""
            outcome = f": {error}\n  log: {state.stderr}" if error else f": {scores(sj.result())}"
            printer(f"[{state.state}] {name}{where}{outcome}")
            del active[name]
            if error:
                failed.append(name)
    return failed
