"""How far a sweep has come: of the jobs it runs, how many have ended, the time so far and an estimate
of the time left (the mean time of an ended job times the jobs left: jobs differ, so it is a guide)."""

from __future__ import annotations

import time
from collections.abc import Callable

from harness.launcher.state import JobState, JobStatus

ENDED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.BLOCKED)


def duration(seconds: float) -> str:
    """45s, 3m05s, 1h02m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """The states of the jobs a sweep hands to its executor, read each time ``text`` is asked for."""

    def __init__(self, states: list[JobState], clock: Callable[[], float] = time.monotonic):
        self.states, self.clock, self.start = states, clock, clock()

    def text(self) -> str:
        ended = sum(s.state in ENDED for s in self.states)
        total, elapsed = len(self.states), self.clock() - self.start
        if ended == 0 or ended >= total:
            return f"{ended}/{total} ended, {duration(elapsed)}"
        left = elapsed / ended * (total - ended)
        return f"{ended}/{total} ended, {duration(elapsed)} so far, about {duration(left)} left"
