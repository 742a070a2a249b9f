"""A sweep's jobs as the launcher tracks them, and the file that keeps them (``<out>/<experiment>/sweep.json``).

A job's status moves pending -> queued (Slurm) -> running -> done | failed, or to blocked when a job it
waits for failed, or to interrupted when a signal stopped its sweep while it ran (``launcher.interrupts``;
the next sweep runs it again, resuming from its last checkpoint); skipped jobs already had all their
results. The statuses are strings in the file, so
it stays readable and files written before ``JobStatus`` existed still load.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field


class JobStatus(str, enum.Enum):
    SKIPPED = "skipped"  # every result existed: not submitted
    PENDING = "pending"  # to run, not handed to an executor yet
    QUEUED = "queued"  # submitted to Slurm, not started
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"  # never ran: a job it waits for failed, or Slurm will never start it
    INTERRUPTED = "interrupted"  # stopped, running, by a signal to its sweep: the next sweep runs it again

    # Compared, hashed, formatted and written as the plain string, on every Python version.
    __str__ = str.__str__
    __format__ = str.__format__
    __hash__ = str.__hash__


@dataclass
class JobState:
    name: str
    kind: str
    run_dir: str
    depends_on: list = field(default_factory=list)
    state: JobStatus = JobStatus.PENDING
    job_id: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None  # failed: the job's own error line; blocked: why it never ran; interrupted: by what
    fingerprint: str | None = None  # of the job's settings (harness.fingerprint)
    changed: str | None = None  # why it runs again: "epochs: 100 -> 2" (its earlier records stay)

    def __post_init__(self):
        self.state = JobStatus(self.state)

    def started(self, handle, status: JobStatus) -> None:
        """Handed to an executor as submitit job ``handle``: running (or queued), with its id and logs."""
        self.state, self.job_id = status, handle.job_id
        self.stdout, self.stderr = str(handle.paths.stdout), str(handle.paths.stderr)


def state_path(out: str, experiment: str) -> str:
    return os.path.join(out, experiment, "sweep.json")


# Fields added later, left out of sweep.json while unset, so that a file of an earlier launch is written
# back as it was.
OPTIONAL_FIELDS = ("fingerprint", "changed")


def _plain(state: JobState) -> dict:
    return {k: v for k, v in state.__dict__.items() if not (k in OPTIONAL_FIELDS and v is None)}


def save_state(out: str, experiment: str, states: list[JobState]) -> None:
    path = state_path(out, experiment)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump([_plain(s) for s in states], f, indent=1)
    os.replace(path + ".tmp", path)


def load_state(out: str, experiment: str) -> list[JobState]:
    path = state_path(out, experiment)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [JobState(**s) for s in json.load(f)]


def block_dependents(name: str, by_name: dict[str, JobState], printer) -> list[JobState]:
    """Mark every job that (transitively) waits for ``name`` as blocked; return those newly blocked."""
    blocked = []
    for state in by_name.values():
        if name in state.depends_on and state.state in (JobStatus.PENDING, JobStatus.QUEUED):
            state.state = JobStatus.BLOCKED
            state.error = f"not run: {name} {by_name[name].state}"
            printer(f"[blocked] {state.name} ({state.error})")
            blocked += [state, *block_dependents(state.name, by_name, printer)]
    return blocked
