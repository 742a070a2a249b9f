"""A signal ends a sweep or a run cleanly: its jobs stopped with all their processes, one line, the
shell's status for the signal, the sweep's state saying what was interrupted, and a re-run that finishes
the rest with the numbers of an uninterrupted sweep."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from fake_data import make_synthetic_dataset

from harness import results, sweep
from harness.launcher import JobState, launch, load_state, status
from harness.launcher.driver import interrupted_line
from harness.launcher.interrupts import Interrupted, deferred, stop_on_signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
CHILD = os.path.join(TESTS, "interrupt_child.py")

# One CoOp training (2 epochs of 2 steps) and its evaluation; a data-loader worker, so that the job has
# a child process to leave behind; one thread, so that a job's numbers do not depend on the launcher.
EXPERIMENT = {
    "name": "stop",
    "protocol": "base2new",
    "datasets": ["synthetic"],
    "seeds": [1],
    "shots": 2,
    "backbone": "tiny",
    "precision": "fp32",
    "tracking": "none",
    "run": {"num_workers": 1, "batch_size": 2, "test_batch_size": 50},
    "launcher": {"threads": 1, "post_mortem": False},
    "methods": {"coop": {"config": "coop/vit_b16_ctxv1", "run": {"epochs": 2}}},
}
TRAIN, EVAL = "stop/coop/synthetic/seed1/train", "stop/coop/synthetic/seed1/eval"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("interruptdata")
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24
    )
    return str(root)


@pytest.fixture(scope="module")
def experiment_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("interruptexp") / "stop.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT))
    return str(path)


def jobs_of(experiment_file, data_root, out):
    return sweep.expand(sweep.load_experiment(experiment_file), data_root, out)


def numbers(out) -> dict:
    """{(job, dataset, subsample): metrics} of a results store."""
    return {(r["job"], r["dataset"], r["subsample"]): r["metrics"] for r in results.read_records(out)}


@pytest.fixture(scope="module")
def straight(experiment_file, data_root, tmp_path_factory):
    """The numbers of the sweep run without interruption (in this process: the debug launcher)."""
    out = str(tmp_path_factory.mktemp("straight") / "out")
    jobs = jobs_of(experiment_file, data_root, out)
    states = launch(jobs, "stop", out, "debug", EXPERIMENT["launcher"], printer=lambda *_: None)
    assert [s.state for s in states] == ["done", "done"]
    return numbers(out)


@pytest.fixture
def groups():
    """Process groups to kill when the test ends, whatever its outcome: a paused job outlives a failed
    test otherwise."""
    started = []
    yield started
    for group in started:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_paused(tmp_path, groups, job, command, moment="mid-epoch:2"):
    """The command line (tests/interrupt_child.py) in a session of its own, as a terminal runs a
    command, with ``job`` paused at ``moment`` (tests/crash_child.py): (process, job's pid, log)."""
    marker, log = tmp_path / "paused", tmp_path / "command.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS]), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the command
        child = subprocess.Popen(
            [sys.executable, CHILD, job, moment, str(marker), *command],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    groups.append(child.pid)
    deadline = time.time() + 240
    while not marker.exists() or not marker.read_text():
        assert child.poll() is None, f"the command ended before the pause: {log.read_text()[-3000:]}"
        assert time.time() < deadline, "the job never reached the pause"
        time.sleep(0.05)
    job_pid = int(marker.read_text())
    groups.append(os.getpgid(job_pid))
    return child, job_pid, log


def group_members(pid: int) -> list[int]:
    """The processes of ``pid``'s process group (Linux's /proc)."""
    group, members = os.getpgid(pid), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry))
    return members


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ended_with_one_line(child, log, exit_status: int) -> str:
    child.wait(timeout=120)
    text = log.read_text()
    assert child.returncode == exit_status, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    said = [line for line in text.splitlines() if line.startswith("Interrupted")]
    assert len(said) == 1 and text.rstrip().endswith(said[0]), text[-3000:]
    return said[0]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds a job's processes in /proc")
@pytest.mark.parametrize(
    "to, moment, processes",
    [
        # in the middle of epoch 2: submitit's controller, the training process and its data-loader worker
        ("the terminal's process group", "mid-epoch:2", 3),
        # while the checkpoint of epoch 2 is half written (the loader's worker gone with its epoch)
        ("the sweep alone", "checkpoint-write:2", 2),
    ],
)
def test_sigint_stops_a_local_sweep_and_a_rerun_finishes_it(
    experiment_file, data_root, straight, tmp_path, groups, to, moment, processes
):
    out = str(tmp_path / "out")
    command = ["sweep", experiment_file, "--data-root", data_root, "--out", out, "--launcher", "local"]
    sweep_process, job_pid, log = start_paused(tmp_path, groups, TRAIN, command, moment)
    job_processes = group_members(job_pid)
    assert len(job_processes) >= processes and os.getpgid(job_pid) != os.getpgid(sweep_process.pid)
    if to == "the sweep alone":  # as a scheduler or `timeout` does: the job gets no signal of its own
        os.kill(sweep_process.pid, signal.SIGINT)
    else:
        os.killpg(sweep_process.pid, signal.SIGINT)
    line = ended_with_one_line(sweep_process, log, 130)
    assert line == (
        "Interrupted (SIGINT): stopped 1 running job; 0 done, 1 not started. "
        "Re-run the same command to finish the rest."
    )
    assert [pid for pid in job_processes if alive(pid)] == []
    assert {s.name: s.state for s in load_state(out, "stop")} == {TRAIN: "interrupted", EVAL: "pending"}
    jobs = jobs_of(experiment_file, data_root, out)
    rows = {r["job"]: r for r in status(jobs, out, "stop")}
    assert rows[TRAIN]["state"] == "interrupted" and "epoch 1/2 checkpointed" in rows[TRAIN]["detail"]
    assert results.read_records(out) == []
    if moment.startswith("checkpoint-write"):
        half_written = os.listdir(os.path.join(jobs[0].spec.output_dir, "prompt_learner"))
        assert any(name.endswith(".tmp") for name in half_written), half_written
    # The re-run resumes the training from its checkpoint of epoch 1 (the killed job's run-folder lock
    # and the half-written file it left) and ends with the numbers of the uninterrupted sweep.
    states = launch(jobs, "stop", out, "debug", EXPERIMENT["launcher"], printer=lambda *_: None)
    assert [s.state for s in states] == ["done", "done"]
    assert numbers(out) == straight
    log_files = os.listdir(jobs[0].spec.output_dir)
    assert sum(name.startswith("log.txt") for name in log_files) == 2  # the killed run's, the resumed run's


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the sweep's processes in /proc")
def test_sigterm_stops_a_debug_sweep_with_its_own_status(experiment_file, data_root, tmp_path, groups):
    out = str(tmp_path / "out")
    command = ["sweep", experiment_file, "--data-root", data_root, "--out", out, "--launcher", "debug"]
    sweep_process, job_pid, log = start_paused(tmp_path, groups, TRAIN, command)
    assert job_pid == sweep_process.pid  # the debug launcher runs its jobs in the sweep's process
    processes = group_members(job_pid)  # the sweep and its job's data-loader worker
    assert len(processes) >= 2
    sweep_process.terminate()
    line = ended_with_one_line(sweep_process, log, 143)
    assert [pid for pid in processes if alive(pid)] == []
    assert line.startswith("Interrupted (SIGTERM): stopped 1 running job; 0 done, 1 not started.")
    assert {s.name: (s.state, s.error) for s in load_state(out, "stop")} == {
        TRAIN: ("interrupted", "stopped by SIGTERM"),
        EVAL: ("pending", None),
    }


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the run's processes in /proc")
def test_ctrl_c_on_a_run_says_where_it_resumes(data_root, tmp_path, groups):
    run_dir = tmp_path / "run"
    command = [
        "run", "--method", "coop", "--method-config", "coop/vit_b16_ctxv1", "--dataset", "synthetic",
        "--data-root", data_root, "--subsample", "base", "--shots", "2", "--epochs", "2", "--batch-size", "2",
        "--num-workers", "1", "--backbone", "tiny", "--precision", "fp32", "--tracking", "none",
        "--output-dir", str(run_dir), "--results", str(tmp_path), "--job", "coop-run",
    ]  # fmt: skip
    run_process, job_pid, log = start_paused(tmp_path, groups, "coop-run", command)
    processes = group_members(job_pid)  # the run and its data-loader worker
    assert job_pid == run_process.pid and len(processes) >= 2
    os.killpg(run_process.pid, signal.SIGINT)  # Ctrl-C at a terminal
    line = ended_with_one_line(run_process, log, 130)
    assert line == (
        "Interrupted (SIGINT): stopped coop-run; the same command resumes it from its checkpoint of epoch 1/2."
    )
    assert [pid for pid in processes if alive(pid)] == []


def test_the_interrupted_line_counts_the_jobs_and_names_the_slurm_jobs_left_to_the_cluster():
    def states(*spec):
        return [JobState(f"x/{i}", "train", "", state=state, job_id=job_id) for i, (state, job_id) in enumerate(spec)]

    local = states(("done", "1"), ("failed", "2"), ("interrupted", "3"), ("interrupted", "4"), ("pending", None))
    assert interrupted_line(Interrupted(signal.SIGINT), local + states(("skipped", None)), "/o", "x") == (
        "Interrupted (SIGINT): stopped 2 running jobs; 1 done, 1 failed, 1 not started. "
        "Re-run the same command to finish the rest."
    )
    cluster = states(("done", "7_0"), ("running", "7_1"), ("queued", "7_2"), ("queued", "9"), ("blocked", None))
    assert interrupted_line(Interrupted(signal.SIGHUP), cluster, "/o", "x") == (
        "Interrupted (SIGHUP): stopped waiting; 1 done, 1 blocked, 0 not started; 3 Slurm jobs left to the cluster "
        "(follow: python -m harness status x --out /o; cancel: scancel 7 9). "
        "Re-run the same command once they have ended to finish the rest."
    )
    assert Interrupted(signal.SIGTERM).exit_status == 143 and Interrupted().exit_status == 130


def test_a_signal_waits_for_a_deferred_step_and_a_second_one_does_not_break_off_the_stop():
    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(Interrupted) as raised:
        with stop_on_signals():
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("the step went on")
            steps.append("not reached")
    assert steps == ["the step went on"] and raised.value.signum == signal.SIGTERM
    stopping = []
    with pytest.raises(Interrupted):
        with stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGINT)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # pressed again while the jobs are being stopped
                stopping.append("stopped")
    assert stopping == ["stopped"] and signal.getsignal(signal.SIGTERM) is before


def test_a_signal_the_command_was_started_ignoring_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a command
    try:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
