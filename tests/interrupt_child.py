"""The command line with one job that pauses at a chosen moment, for the tests to send it a signal there
(no hook in production code).

    python tests/interrupt_child.py JOB MOMENT MARKER sweep|run ARGS...

runs ``harness.cli.main(["sweep"|"run", ARGS...])``; the job named JOB (its ``job`` key) pauses at
MOMENT, one of tests/crash_child.py's moments, after writing its process id into MARKER. A sweep's
local jobs run in processes of their own, which unpickle ``PausingJob`` from here: the test puts this
folder on the sweep's PYTHONPATH, which they inherit.
"""

from __future__ import annotations

import functools
import sys

import crash_child

import harness.cli
import harness.launcher.debug
import harness.launcher.local
import harness.runner
from harness.config import build_spec
from harness.launcher.jobs import HarnessJob


class PausingJob(HarnessJob):
    """A sweep's job (``HarnessJob``) that pauses at ``moment`` when it is the job named ``job``."""

    def __init__(self, threads=None, *, job: str, moment: str, marker: str):
        super().__init__(threads)
        self.job, self.moment, self.marker = job, moment, marker

    def __call__(self, spec_values: dict) -> list[dict]:
        if spec_values.get("job") == self.job:
            crash_child.arm(build_spec(spec_values), self.moment, self.marker)
        return super().__call__(spec_values)


def main() -> int:
    job, moment, marker, *argv = sys.argv[1:]
    pausing = functools.partial(PausingJob, job=job, moment=moment, marker=marker)
    harness.launcher.local.HarnessJob = harness.launcher.debug.HarnessJob = pausing
    run = harness.runner.run

    def pausing_run(spec):
        if spec.job_name == job:
            crash_child.arm(spec, moment, marker)
        return run(spec)

    harness.runner.run = pausing_run  # what `harness run` calls
    return harness.cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
