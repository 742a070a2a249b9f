"""This machine: at most ``max_parallel`` jobs at once, each in its own process, an evaluation only
after its training is done."""

from __future__ import annotations

import os
import time

import submitit

from harness.launcher.jobs import HarnessJob, collect_finished
from harness.launcher.progress import Progress
from harness.launcher.state import JobStatus, block_dependents, save_state


def run_local(todo, states, folder, cfg, out, experiment, poll_s, printer) -> None:
    by_name = {s.name: s for s in states}
    max_parallel = max(1, int(cfg.get("max_parallel", 1)))
    # The machine's cores shared among the jobs, unless the launcher settings say how many.
    threads = int(cfg.get("threads") or max(1, (os.cpu_count() or 1) // max_parallel))
    executor = submitit.AutoExecutor(folder=folder, cluster="local")
    executor.update_parameters(timeout_min=int(cfg.get("timeout_min", 24 * 60)))
    queue = list(todo)
    active: dict[str, object] = {}
    progress = Progress([state for _, state in todo])
    while queue or active:
        for name in collect_finished(active, by_name, printer, progress):
            block_dependents(name, by_name, printer)
        for job, state in list(queue):
            if state.state == JobStatus.BLOCKED:
                queue.remove((job, state))
                continue
            if len(active) >= max_parallel or any(by_name[d].state != JobStatus.DONE for d in state.depends_on):
                continue
            executor.update_parameters(name=job.name.replace("/", "."))
            sj = executor.submit(HarnessJob(threads), job.spec.to_dict())
            state.started(sj, JobStatus.RUNNING)
            active[job.name] = sj
            queue.remove((job, state))
            printer(f"[start] {job.name}  (log {state.stderr})")
        save_state(out, experiment, states)
        if queue or active:
            time.sleep(poll_s)
