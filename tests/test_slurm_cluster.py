"""Integration tests: submitit against a real Slurm controller.

CI starts a one-node cluster with `tools/slurm-cluster.sh start`; on a real cluster these
tests use whatever controller `sinfo` answers from (set SLURM_TEST_FOLDER to a directory
on a shared filesystem there, since pytest's tmp_path is usually node-local). Without a
controller every test is skipped with the reason.

    python -m pytest tests/test_slurm_cluster.py -q -m slurm
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fake_data import make_synthetic_dataset

submitit = pytest.importorskip("submitit")
import cloudpickle  # noqa: E402  (a submitit dependency)

pytestmark = pytest.mark.slurm

# The job functions below are pickled by value, so the worker does not need to import
# this test module (tests/ is not a package and not on the worker's sys.path).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = Path(os.environ.get("SLURM_CLUSTER_STATE", "/var/lib/prompt-harness-slurm"))
# sinfo blocks ~10 s (MessageTimeout) when no controller answers; CI, which requires the cluster,
# gives a busy machine longer before calling it absent.
SINFO_TIMEOUT_S = 30 if os.environ.get("HARNESS_REQUIRE_SLURM", "") not in ("", "0") else 5
JOB_TIMEOUT_S = 60


def _pid_alive(pidfile: Path, name: str) -> bool:
    try:
        pid = int(pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return comm == name and state not in ("Z", "X")


def _why_no_controller() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm client tools (sinfo/sbatch) on PATH; start one with tools/slurm-cluster.sh start"
    pidfile = STATE / "pid" / "slurmctld.pid"
    try:
        ours = "tools/slurm-cluster.sh" in Path("/etc/slurm/slurm.conf").read_text()
    except OSError:
        ours = False
    if (ours or pidfile.exists()) and not _pid_alive(pidfile, "slurmctld"):
        # Our local cluster is stopped: answer at once instead of letting sinfo block.
        return "the local Slurm cluster is stopped; run: sudo bash tools/slurm-cluster.sh start"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=SINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"no Slurm controller answered sinfo within {SINFO_TIMEOUT_S} s"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip() or proc.returncode}"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_controller():
    reason = _why_no_controller()
    if reason and os.environ.get("HARNESS_REQUIRE_SLURM", "") not in ("", "0"):
        pytest.fail(f"HARNESS_REQUIRE_SLURM is set (as .ci/run sets it) but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    base = os.environ.get("SLURM_TEST_FOLDER")
    root = Path(base) / f"submitit-{uuid.uuid4().hex[:8]}" if base else tmp_path
    return root / "%j"  # %j only: %A/%a raise for non-array submissions


def wait_result(job, timeout: float = JOB_TIMEOUT_S):
    """job.result() with a deadline, so a stuck job fails the test instead of hanging it."""
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {timeout} s (state {job.state})")
        time.sleep(0.5)
    return job.result()


# ---- functions run on the cluster --------------------------------------------------------
def add_on_slurm(a, b):
    return a + b, os.environ.get("SLURM_JOB_ID")


def square_in_array(x):
    return x * x, os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")


def fail_remotely(marker):
    raise ValueError(f"remote failure {marker}")


def die_without_result():
    os.kill(os.getpid(), signal.SIGKILL)


# ---- tests ---------------------------------------------------------------------------------
def test_autoexecutor_single_job(folder):
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(timeout_min=5, cpus_per_task=1, name="ph-test-add")
    job = ex.submit(add_on_slurm, 2, 3)
    total, slurm_job_id = wait_result(job)
    assert total == 5
    assert slurm_job_id == str(job.job_id)  # it really ran as that Slurm job
    assert job.paths.folder.name == str(job.job_id)


def test_slurm_executor_map_array(folder):
    ex = submitit.SlurmExecutor(folder=folder)
    ex.update_parameters(time=5, cpus_per_task=1, array_parallelism=4, job_name="ph-test-array")
    xs = [1, 2, 3, 4]
    jobs = ex.map_array(square_in_array, xs)
    assert len(jobs) == len(xs)
    results = [wait_result(j) for j in jobs]
    assert [r[0] for r in results] == [x * x for x in xs]
    array_id = jobs[0].job_id.split("_")[0]
    assert {r[1] for r in results} == {array_id}  # one Slurm job array ...
    assert sorted(int(r[2]) for r in results) == list(range(len(xs)))  # ... with tasks 0..3
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(len(xs))]


def test_failing_job_raises_with_remote_traceback(folder):
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(timeout_min=5, cpus_per_task=1, name="ph-test-fail")
    job = ex.submit(fail_remotely, "marker-7f3a")
    with pytest.raises(submitit.core.utils.FailedJobError) as excinfo:
        wait_result(job)
    message = str(excinfo.value)
    assert "Traceback (most recent call last)" in message
    assert "in fail_remotely" in message  # the frame from the remote side
    assert "ValueError: remote failure marker-7f3a" in message


def test_job_killed_without_result_does_not_hang(folder):
    # Needs a working `sacct` (the shim from tools/slurm-cluster.sh when there is no
    # slurmdbd): without it submitit never learns the job ended and result() waits forever.
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(timeout_min=5, cpus_per_task=1, name="ph-test-kill")
    job = ex.submit(die_without_result)
    job._results_timeout_s = 2  # submitit waits 15 s for a result pickle that never comes
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="has not produced any output"):
        wait_result(job, timeout=30)
    assert job.state not in ("UNKNOWN", "PENDING", "RUNNING")


# ---- the harness's own sweep through the Slurm launcher ----------------------------------------
COCOOP = "cocoop/vit_b16_c4_ep10_batch1_ctxv1"


def _tiny_sweep(
    tmp_path: Path,
    name: str,
    images_per_class: int,
    shots: int,
    batch_size: int,
    epochs: int,
    methods: dict,
    seeds: tuple = (1,),
):
    """(root folder, experiment): a base-to-new sweep on generated data and the tiny CLIP."""

    base = os.environ.get("SLURM_TEST_FOLDER")
    root = Path(base) / f"{name}-{uuid.uuid4().hex[:8]}" if base else tmp_path
    make_synthetic_dataset(
        str(root / "data"),
        num_classes=4,
        train_per_class=images_per_class,
        val_per_class=1,
        test_per_class=3,
        image_size=24,
    )
    experiment = {
        "name": name,
        "protocol": "base2new",
        "datasets": ["synthetic"],
        "seeds": list(seeds),
        "shots": shots,
        "backbone": "tiny",
        "precision": "fp32",
        "tracking": "none",
        "run": {"num_workers": 0, "batch_size": batch_size, "epochs": epochs},
        "methods": methods,
    }
    return root, experiment


def test_demo_sweep_through_the_slurm_launcher(tmp_path):
    """A small base-to-new sweep (tiny CLIP, generated data) submitted with dependencies, waited for,
    and its records checked; a second launch submits nothing."""
    from harness import results, sweep
    from harness.launcher import launch, load_state

    root, experiment = _tiny_sweep(
        tmp_path,
        "slurmdemo",
        images_per_class=4,
        shots=2,
        batch_size=4,
        epochs=2,
        methods={"zsclip": {"config": "zsclip/vit_b16"}, "cocoop": {"config": COCOOP}},
        seeds=(1, 2),
    )
    out = str(root / "out")
    jobs = sweep.expand(experiment, str(root / "data"), out)
    lines = []
    cfg = {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10, "array_parallelism": 2}
    states = launch(jobs, "slurmdemo", out, "slurm", cfg, poll_s=1.0, printer=lines.append)
    assert [s.state for s in states] == ["done"] * 5, lines
    # Two job arrays: the trainings (and zero-shot) first, then the evaluations, task i after task i.
    ids = {s.name: s.job_id.split("_") for s in states}
    trains = [ids[f"slurmdemo/cocoop/synthetic/seed{seed}/train"] for seed in (1, 2)]
    evals = [ids[f"slurmdemo/cocoop/synthetic/seed{seed}/eval"] for seed in (1, 2)]
    assert {a for a, _ in trains} == {ids["slurmdemo/zsclip/synthetic"][0]} and {a for a, _ in evals} != {trains[0][0]}
    assert len({a for a, _ in evals}) == 1 and [i for _, i in evals] == [i for _, i in trains]
    records = results.read_records(out)
    assert sorted((r["method"], r["subsample"], r["seed"]) for r in records) == [
        ("cocoop", "base", 1),
        ("cocoop", "base", 2),
        ("cocoop", "new", 1),
        ("cocoop", "new", 2),
        ("zsclip", "base", None),
        ("zsclip", "new", None),
    ]
    assert {s["state"] for s in map(vars, load_state(out, "slurmdemo"))} == {"done"}
    again = launch(jobs, "slurmdemo", out, "slurm", cfg, printer=lines.append)
    assert {s.state for s in again} == {"skipped"}


def test_preempted_training_requeues_and_resumes_to_the_same_result(tmp_path):
    """Slurm's time-out signal (USR2) mid-training: submitit checkpoints and requeues the job, the
    runner resumes from the last finished epoch, and the result equals an uninterrupted run's."""
    import json as _json

    from harness import results, sweep
    from harness.checkpoint import latest_checkpoint
    from harness.launcher import launch, load_state

    # The published per-image path keeps training slow enough to be interrupted mid-way.
    root, experiment = _tiny_sweep(
        tmp_path,
        "preempt",
        images_per_class=16,
        shots=16,
        batch_size=1,
        epochs=40,
        methods={"cocoop": {"config": COCOOP, "options": {"batched": False}}},
    )
    straight_out, slurm_out = str(root / "straight"), str(root / "slurm")
    launch(
        sweep.expand(experiment, str(root / "data"), straight_out)[:1],
        "preempt",
        straight_out,
        "debug",
        printer=lambda *_: None,
    )
    jobs = sweep.expand(experiment, str(root / "data"), slurm_out)[:1]
    signalled = {}

    def preempt_mid_training():
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            found = latest_checkpoint(jobs[0].spec.output_dir)
            if found and found[1] >= 3 and "job" not in signalled:
                signalled["job"] = _json.loads(Path(slurm_out, "preempt", "sweep.json").read_text())[0]["job_id"]
                signalled["epoch"] = found[1]
                subprocess.run(["scancel", "--signal=USR2", signalled["job"]], check=True, timeout=10)
            if "job" in signalled:  # a requeued job waits for a begin time; start it now
                state = subprocess.run(
                    ["squeue", "-h", "-j", signalled["job"], "-o", "%T %r"], capture_output=True, text=True, timeout=10
                ).stdout
                if "BeginTime" in state:
                    subprocess.run(["scontrol", "update", f"JobId={signalled['job']}", "StartTime=now"], timeout=10)
                    return
            time.sleep(0.2)

    import threading

    watcher = threading.Thread(target=preempt_mid_training, daemon=True)
    watcher.start()
    states = launch(
        jobs,
        "preempt",
        slurm_out,
        "slurm",
        {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
        poll_s=0.5,
        printer=lambda *_: None,
    )
    watcher.join(timeout=5)
    assert signalled, "training finished before it could be pre-empted"
    assert [s.state for s in states] == ["done"]
    logs = sorted(Path(jobs[0].spec.output_dir).glob("log.txt*"))
    assert len(logs) == 2 and "Resuming from" in logs[1].read_text()
    ours = results.read_records(slurm_out)
    theirs = results.read_records(straight_out)
    assert [r["metrics"] for r in ours] == [r["metrics"] for r in theirs]
    assert {s.state for s in load_state(slurm_out, "preempt")} == {"done"}


def _our_jobs(name_prefix: str) -> list[str]:
    """'<id> <state>' of every job in squeue (all states) whose name starts with the prefix."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%i %T %j"], capture_output=True, text=True, timeout=30
    )
    return [" ".join(line.split()[:2]) for line in out.stdout.splitlines() if line.split()[-1].startswith(name_prefix)]


def _until_idle(name_prefix: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while [j for j in _our_jobs(name_prefix) if "PENDING" in j or "RUNNING" in j]:
        assert time.monotonic() < deadline, _our_jobs(name_prefix)
        time.sleep(0.5)


def _launch_with_deadline(deadline_s: float, *args, **kwargs):
    """launch(...) in a thread: a sweep that does not end within the deadline fails the test instead of
    hanging it."""
    import threading

    from harness.launcher import launch

    out = {}
    worker = threading.Thread(target=lambda: out.update(states=launch(*args, **kwargs)), daemon=True)
    worker.start()
    worker.join(timeout=deadline_s)
    assert not worker.is_alive(), f"the sweep was still waiting after {deadline_s} s"
    return out["states"]


def test_a_failed_training_blocks_and_cancels_its_evaluations(tmp_path):
    """The training fails (non-finite loss); its evaluations can never start. The sweep ends, lists
    them as blocked with the reason, and leaves nothing queued."""
    from harness import results, sweep
    from harness.launcher import load_state, status

    root, experiment = _tiny_sweep(
        tmp_path,
        "failsweep",
        images_per_class=4,
        shots=2,
        batch_size=4,
        epochs=2,
        methods={"zsclip": {"config": "zsclip/vit_b16"}, "coop": {"config": "coop/vit_b16_ctxv1"}},
        seeds=(1, 2),
    )
    out = str(root / "out")
    jobs = sweep.expand(experiment, str(root / "data"), out, {"lr": 1e30, "warmup_epochs": 0})
    lines = []
    cfg = {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10}
    states = _launch_with_deadline(240, jobs, "failsweep", out, "slurm", cfg, poll_s=0.5, printer=lines.append)
    by_name = {s.name: s for s in states}
    assert by_name["failsweep/zsclip/synthetic"].state == "done", lines
    for seed in (1, 2):
        train, evaluation = (
            by_name[f"failsweep/coop/synthetic/seed{seed}/train"],
            by_name[f"failsweep/coop/synthetic/seed{seed}/eval"],
        )
        assert train.state == "failed" and "NonFiniteLossError" in train.error, lines
        assert evaluation.state == "blocked" and evaluation.error == f"not run: {train.name} failed"
    assert any(line.startswith("  blocked: failsweep/coop/synthetic/seed1/eval") for line in lines)
    assert [j for j in _our_jobs("failsweep") if "PENDING" in j] == []  # nothing left queued
    _until_idle("failsweep")  # a finished job's process may take a moment to leave the node
    rows = {r["job"]: r for r in status(jobs, out, "failsweep")}
    assert rows["failsweep/coop/synthetic/seed2/eval"]["state"] == "blocked"
    assert "seed2/train failed" in rows["failsweep/coop/synthetic/seed2/eval"]["detail"]
    assert {s.state for s in load_state(out, "failsweep")} == {"done", "failed", "blocked"}
    assert len(results.read_records(out)) == 2  # zero-shot base and new only


def test_a_request_the_cluster_refuses_names_the_option_and_queues_nothing(tmp_path):
    """This cluster has no GPUs: the default gpus_per_node=1 is refused by sbatch --test-only before
    anything is submitted, and the command line says which option to change."""
    import yaml

    root, experiment = _tiny_sweep(
        tmp_path,
        "refused",
        4,
        2,
        4,
        1,
        {"zsclip": {"config": "zsclip/vit_b16"}, "coop": {"config": "coop/vit_b16_ctxv1"}},
    )
    path = root / "refused.yaml"
    path.write_text(yaml.safe_dump(experiment))
    cli = [
        sys.executable,
        "-m",
        "harness",
        "sweep",
        str(path),
        "--data-root",
        str(root / "data"),
        "--out",
        str(root / "out"),
    ]
    out = subprocess.run(cli + ["--launcher", "slurm"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "The Slurm cluster refused the job" in out.stderr and "gpus_per_node" in out.stderr, out.stderr
    assert "Nothing was submitted" in out.stderr
    assert _our_jobs("refused") == []


def test_a_submission_refused_half_way_cancels_what_it_queued(tmp_path, monkeypatch):
    from submitit.core.utils import FailedJobError
    from submitit.slurm import slurm

    from harness import sweep
    from harness.launcher import SubmissionError, launch

    root, experiment = _tiny_sweep(
        tmp_path, "halfway", 4, 2, 4, 50, {"coop": {"config": "coop/vit_b16_ctxv1"}}, seeds=(1, 2)
    )
    out = str(root / "out")
    jobs = sweep.expand(experiment, str(root / "data"), out)
    original, calls = slurm.SlurmExecutor._submit_command, []

    def second_refused(self, command):
        calls.append(command)
        if len(calls) == 2:  # the evaluations' array: the cluster says no
            raise FailedJobError("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy")
        return original(self, command)

    monkeypatch.setattr(slurm.SlurmExecutor, "_submit_command", second_refused)
    cfg = {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10}
    with pytest.raises(SubmissionError, match=r"(?s)QOS policy.*option qos.*Cancelled the 2 job\(s\)"):
        launch(jobs, "halfway", out, "slurm", cfg, printer=lambda *_: None)
    assert [j for j in _our_jobs("halfway") if "PENDING" in j] == []
    _until_idle("halfway")


def test_status_after_a_sweep_that_did_not_wait_shows_failures_and_blocked_jobs(tmp_path):
    """`sweep --no-wait` then `status`: the failed training and its blocked evaluation are reported from
    what the cluster says, and Slurm itself cancelled the evaluation (kill-on-invalid-dep)."""
    from harness import sweep
    from harness.launcher import launch, status

    root, experiment = _tiny_sweep(tmp_path, "nowait", 4, 2, 4, 2, {"coop": {"config": "coop/vit_b16_ctxv1"}})
    out = str(root / "out")
    jobs = sweep.expand(experiment, str(root / "data"), out, {"lr": 1e30, "warmup_epochs": 0})
    cfg = {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10}
    launch(jobs, "nowait", out, "slurm", cfg, wait=False, printer=lambda *_: None)
    deadline = time.monotonic() + 240
    while True:
        rows = {r["job"]: r for r in status(jobs, out, "nowait")}
        if rows["nowait/coop/synthetic/seed1/eval"]["state"] == "blocked":
            break
        assert time.monotonic() < deadline, rows
        time.sleep(1)
    train = rows["nowait/coop/synthetic/seed1/train"]
    assert train["state"] == "failed" and "NonFiniteLossError" in train["detail"]
    assert "cancelled by Slurm" in rows["nowait/coop/synthetic/seed1/eval"]["detail"]
    _until_idle("nowait")
