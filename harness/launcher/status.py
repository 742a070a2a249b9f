"""Where each job of a sweep stands: its results, its checkpoints, the last launch's state file and, for
Slurm jobs the launch did not wait for, what the cluster says now."""

from __future__ import annotations

from harness import fingerprint as fingerprints
from harness import results
from harness.launcher.slurm import refresh_from_slurm
from harness.launcher.state import JobStatus, load_state
from harness.sweep import Job


def status(jobs: list[Job], out: str, experiment: str) -> list[dict]:
    """One row per job: job, kind, results (found/expected in ``out``'s results store), state (done, failed,
    blocked, interrupted, queued, running, partial or not started), detail and job_id when known. The jobs:
    those the sweeps recorded (``harness.sweep.recorded_jobs``)."""
    from harness.checkpoint import latest_checkpoint

    done = fingerprints.finished(results.read_records(out)) if jobs else set()
    previous = {s.name: s for s in load_state(out, experiment)}
    refresh_from_slurm(previous)
    rows = []
    for job in jobs:
        missing = job.pending_targets(done)
        last = previous.get(job.name)
        row = {
            "job": job.name,
            "kind": job.kind,
            "results": f"{len(job.targets()) - len(missing)}/{len(job.targets())}",
            "fingerprint": job.fingerprint,
        }
        if not missing:
            row["state"] = "done"
        elif last and last.state == JobStatus.FAILED:
            row["state"], row["detail"] = "failed", f"{last.error}; log: {last.stderr}"
        elif last and last.state == JobStatus.BLOCKED:
            row["state"], row["detail"] = "blocked", last.error
        elif last and last.state == JobStatus.INTERRUPTED:
            found = latest_checkpoint(job.spec.output_dir) if job.kind == "train" else None
            after = f"epoch {found[1]}/{job.spec.epochs} checkpointed: the next sweep resumes it" if found else ""
            row["state"], row["detail"] = "interrupted", f"{last.error}; {after or 'the next sweep runs it again'}"
        else:
            found = latest_checkpoint(job.spec.output_dir) if job.kind == "train" else None
            live = last and last.state in (JobStatus.QUEUED, JobStatus.RUNNING)
            row["state"] = str(last.state) if live else "not started"
            if found:
                row["state"] = "partial" if row["state"] == "not started" else row["state"]
                row["detail"] = f"epoch {found[1]}/{job.spec.epochs} checkpointed"
            if last and last.error:
                row["detail"] = last.error
        if last and last.job_id:
            row["job_id"] = last.job_id
        rows.append(row)
    return rows
