"""The local launcher gives each running job GPUs of its own (its CUDA_VISIBLE_DEVICES) from the GPUs the
sweep sees, and gives them back when the job ends; without GPUs the jobs run on the CPU as before."""

import re
import types

import pytest
import torch
import yaml
from fake_data import make_synthetic_dataset

from harness import sweep
from harness.config import ConfigError
from harness.launcher import JobState, JobStatus, launch, launcher_settings
from harness.launcher import local as local_launcher
from harness.launcher.local import GpuPool, gpu_pool, run_local, visible_gpu_ids

MINI = {
    "name": "mini",
    "protocol": "base2new",
    "datasets": ["synthetic"],
    "seeds": [1],
    "shots": 2,
    "class_incremental": True,
    "backbone": "tiny",
    "precision": "fp32",
    "tracking": "none",
    "run": {"num_workers": 0, "batch_size": 4, "test_batch_size": 50},
    "methods": {
        "zsclip": {"config": "zsclip/vit_b16"},
        "coop": {"config": "coop/vit_b16_ctxv1", "run": {"epochs": 1}},
    },
}


def test_pool_gives_a_free_gpu_while_there_is_one_then_shares_the_least_busy():
    pool = GpuPool([5, 7], per_job=1)
    first, second = pool.take(), pool.take()
    assert (first, second) == ((5,), (7,))
    pool.give_back(first)
    assert pool.take() == (5,)  # back in the pool, and free again
    pool.give_back(second)
    assert pool.take() == (7,)  # the free one, not the first listed
    assert pool.take() == (5,) and pool.take() == (7,)  # more jobs than GPUs: each shares, evenly
    pairs = GpuPool([0, 1, 2, 3], per_job=2)
    assert (pairs.take(), pairs.take()) == ((0, 1), (2, 3))


def test_visible_gpus_are_those_cuda_visible_devices_lists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpu_ids() == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1,9")  # CUDA found two of the three: GPU 9 does not exist
    assert visible_gpu_ids() == [3, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a,GPU-11c0")
    with pytest.raises(ConfigError, match=r"CUDA_VISIBLE_DEVICES='GPU-8f2a,GPU-11c0'.*gpus_per_job: 0"):
        visible_gpu_ids()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_ids() == []


def test_gpu_settings_choose_the_pool_and_refuse_bad_values(monkeypatch):
    monkeypatch.setattr(local_launcher, "visible_gpu_ids", lambda: [2, 3])
    lines = []
    assert gpu_pool({}, 2, lines.append).jobs_on == {2: 0, 3: 0}
    assert gpu_pool({"gpu_ids": [3]}, 1, lines.append).jobs_on == {3: 0}
    assert gpu_pool({"gpus_per_job": 0}, 1, lines.append) is None
    assert gpu_pool({"gpus_per_job": 2}, 1, lines.append).jobs_on == {2: 0, 3: 0}
    assert lines == [
        "[gpus] each job on 1 of GPU(s) 2,3",
        "[gpus] each job on 1 of GPU(s) 3",
        "[gpus] each job on 2 of GPU(s) 2,3",
    ]
    gpu_pool({}, 1, lines.append)
    assert lines[-1] == "[gpus] each job on 1 of GPU(s) 2,3; max_parallel 2 would use them all"
    gpu_pool({}, 3, lines.append)
    assert lines[-1] == (
        "[gpus] each job on 1 of GPU(s) 2,3; 3 jobs at once share them, the least busy first "
        "(max_parallel 2: each its own)"
    )
    for cfg, message in [
        ({"gpus_per_job": -1}, r"gpus_per_job=-1: expected a whole number >= 0"),
        ({"gpus_per_job": "one"}, r"gpus_per_job='one'"),
        ({"gpus_per_job": 3}, r"gpus_per_job=3: more than the 2 GPU\(s\) \[2, 3\]"),
        ({"gpu_ids": [2, 2]}, r"gpu_ids=\[2, 2\]: expected a list of distinct GPU indices"),
        ({"gpu_ids": "2"}, r"gpu_ids='2'"),
        ({"gpu_ids": [0, 2]}, r"gpu_ids=\[0, 2\]: GPU 0 is not among those the sweep sees \(\[2, 3\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            gpu_pool(cfg, 1, lines.append)
    monkeypatch.setattr(local_launcher, "visible_gpu_ids", lambda: [])
    assert gpu_pool({}, 2, lines.append) is None  # no GPU: the CPU, as before
    with pytest.raises(ConfigError, match=r"GPU 0 is not among those the sweep sees \(none"):
        gpu_pool({"gpu_ids": [0]}, 1, lines.append)


def test_the_experiments_launcher_section_sets_the_gpus():
    _, cfg = launcher_settings({"launcher": {"gpus_per_job": 0, "gpu_ids": [1]}})
    assert (cfg["gpus_per_job"], cfg["gpu_ids"]) == (0, [1])
    _, defaults = launcher_settings({})
    assert (defaults["gpus_per_job"], defaults["gpu_ids"]) == (1, None)


class ScriptedExecutor:
    """Stands in for submitit's local executor: records the GPUs each job is given; job i ends after
    ``polls[i]`` looks at it."""

    polls: list[int] = []
    given: list[tuple[int, ...]] = []

    def __init__(self, folder):
        self.parameters = {}

    def update_parameters(self, **values):
        self.parameters.update(values)

    def submit(self, function, spec):
        n, gpus = len(self.given), self.parameters.get("gpus_per_node", 0)
        self.given.append(tuple(self.parameters.get("visible_gpus", ())[:gpus]))
        looks = iter(range(self.polls[n], 0, -1))
        return types.SimpleNamespace(
            job_id=str(n),
            paths=types.SimpleNamespace(stdout=f"{n}.out", stderr=f"{n}.err"),
            done=lambda: next(looks, 0) <= 1,
            result=lambda: [],
        )


def test_a_job_takes_a_free_gpu_and_gives_it_back_when_it_ends(monkeypatch, tmp_path):
    monkeypatch.setattr(local_launcher, "visible_gpu_ids", lambda: [5, 7])
    monkeypatch.setattr(local_launcher, "GroupLocalExecutor", ScriptedExecutor)
    # The job on GPU 5 runs long; the one on GPU 7 ends first, and the third job starts on the GPU it gave back.
    monkeypatch.setattr(ScriptedExecutor, "polls", [4, 1, 1])
    monkeypatch.setattr(ScriptedExecutor, "given", [])
    todo = []
    for name in ("a", "b", "c"):
        job = types.SimpleNamespace(name=name, spec=types.SimpleNamespace(to_dict=dict))
        todo.append((job, JobState(name, "train", str(tmp_path / name))))
    lines = []
    cfg = {"max_parallel": 2}
    run_local(todo, [s for _, s in todo], str(tmp_path), cfg, str(tmp_path), "mini", 0, lines.append)
    assert ScriptedExecutor.given == [(5,), (7,), (7,)]
    assert [s.state for _, s in todo] == [JobStatus.DONE] * 3
    starts = [line.split("  (")[1].split(";")[0] for line in lines if line.startswith("[start]")]
    assert starts == ["GPU 5", "GPU 7", "GPU 7"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpudata")
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24
    )
    return str(root)


def job_device(state: JobState) -> tuple[str, str]:
    """(device, CUDA_VISIBLE_DEVICES) from the line the job writes into its log."""
    with open(state.stderr) as f:
        found = re.search(r"^Device (\S+) \(CUDA_VISIBLE_DEVICES=(.*)\)$", f.read(), re.M)
    assert found, f"no device line in {state.stderr}"
    return found[1], yaml.safe_load(found[2])


def sweep_jobs(tmp_path, data_root, methods):
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(MINI))
    out = str(tmp_path / "out")
    return sweep.expand(sweep.narrow(sweep.load_experiment(str(path)), methods=methods), data_root, out), out


@pytest.mark.slow
def test_local_sweep_jobs_see_the_gpus_they_were_given(monkeypatch, tmp_path, data_root):
    monkeypatch.setattr(local_launcher, "visible_gpu_ids", lambda: [5, 7])
    jobs, out = sweep_jobs(tmp_path, data_root, ["zsclip", "coop"])
    lines = []
    states = launch(jobs, "mini", out, "local", {"max_parallel": 2}, poll_s=0.2, printer=lines.append)
    assert [s.state for s in states] == ["done"] * 3, lines
    given = {
        found[1]: found[2] for found in (re.match(r"\[start\] (\S+)  \(GPU (\d+);", line) for line in lines) if found
    }
    assert given.keys() == {s.name for s in states}
    for state in states:  # no GPU here: the job runs on the CPU, but with the GPU it was given visible
        assert job_device(state) == ("cpu", given[state.name])
    # The zero-shot job and the training start together, each on a GPU of its own.
    assert {given[s.name] for s in states if s.kind == "train" or "zsclip" in s.name} == {"5", "7"}


@pytest.mark.slow
def test_local_sweep_jobs_without_gpus_see_none_as_before(monkeypatch, tmp_path, data_root):
    monkeypatch.setattr(local_launcher, "visible_gpu_ids", lambda: [])
    jobs, out = sweep_jobs(tmp_path, data_root, ["zsclip"])
    lines = []
    states = launch(jobs, "mini", out, "local", {"max_parallel": 2}, poll_s=0.2, printer=lines.append)
    assert [s.state for s in states] == ["done"], lines
    assert job_device(states[0]) == ("cpu", "")
    assert not any(line.startswith("[gpus]") or "GPU" in line for line in lines)
