"""Run a sweep's jobs through submitit: on this machine (``local``), on Slurm, or in process (``debug``).

Each job is a pickled callable (``HarnessJob``) that submitit can checkpoint: on preemption or
time-out it is requeued with the same arguments, and the runner resumes from the job's last
finished epoch. Nothing that finished is redone: a job whose records exist is skipped before
submission, and a requeued job skips its finished epochs and evaluations.

Dependencies: an evaluation job waits for its training job. A job whose dependency failed is
*blocked*: never started, and on Slurm cancelled, so a sweep always ends with every job done, failed
or blocked, and nothing left queued that can never start.

The sweep's state (job ids, logs, states, reasons) is kept in ``<out>/<experiment>/sweep.json`` so
``status`` can report on it later. Cluster defaults are in ``experiments/launcher.yaml``.

Ctrl-C, SIGTERM or SIGHUP stops a sweep cleanly: its running local jobs killed with all their processes
(debug: the job unwound), marked interrupted, one line, exit 130 / 143 / 129; Slurm jobs are left to the
cluster, the line naming their ``scancel``. A re-run resumes each interrupted job from its checkpoint.

    settings.py   which launcher, with which options
    state.py      a job's status (``JobStatus``) and record (``JobState``); the state file
    driver.py     plan, launch (hands the jobs to an executor), the closing summary or the interrupted line
    interrupts.py a signal as ``Interrupted``, raised where the executors can stop their jobs
    jobs.py       the submitit job (``HarnessJob``) and what a finished one reports
    debug.py, local.py, slurm.py   the executors; slurm.py also preflight, arrays, asking the cluster
    status.py     where each job stands
"""

from harness.launcher.driver import check_devices, launch, plan, print_plan
from harness.launcher.interrupts import Interrupted
from harness.launcher.jobs import HarnessJob
from harness.launcher.settings import LAUNCHERS, launcher_settings
from harness.launcher.slurm import SubmissionError, preflight, sbatch_flags, slurm_parameters
from harness.launcher.state import JobState, JobStatus, load_state, save_state, state_path
from harness.launcher.status import status

__all__ = [
    "LAUNCHERS",
    "HarnessJob",
    "Interrupted",
    "JobState",
    "JobStatus",
    "SubmissionError",
    "check_devices",
    "launch",
    "launcher_settings",
    "load_state",
    "plan",
    "preflight",
    "print_plan",
    "save_state",
    "sbatch_flags",
    "slurm_parameters",
    "state_path",
    "status",
]
