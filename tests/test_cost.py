"""The cost block every record carries, measured by the runner on the tiny CLIP and synthetic data."""

import dataclasses
import importlib
import math
import os
import sys

import pytest
import torch
from crash_child import kill_at
from fake_data import make_synthetic_dataset, tiny_run
from torch.utils.flop_counter import FlopCounterMode

import methods
from clipcore import backbone
from clipcore.checkpoint_file import load_checkpoint_file
from harness import cost, results
from harness.checkpoint import latest_checkpoint
from harness.config import build_spec
from harness.fingerprint import fingerprint_of
from harness.runner import run

FIELDS = {
    "train_s",
    "epoch_s",
    "train_starts",
    "resumed",
    "eval_s",
    "eval_images_per_s",
    "eval_features_cached",
    "peak_mem_mb",
    "peak_mem_kind",
    "gflops_per_image",
    "device",
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        str(root), num_classes=6, train_per_class=8, val_per_class=2, test_per_class=6, image_size=32
    )
    return str(root)


def spec(data_root, out, **values):
    return build_spec(tiny_run(data_root, out, **values))


def test_a_training_and_a_zero_shot_job_record_every_cost_field(data_root, tmp_path):
    trained = run(spec(data_root, tmp_path))
    zero_shot = run(spec(data_root, tmp_path, method="zsclip", output_dir=str(tmp_path / "zs")))
    assert results.read_records(str(tmp_path)) == trained + zero_shot
    for record in trained + zero_shot:
        c = record["cost"]
        assert set(c) == FIELDS
        for name in ("eval_s", "eval_images_per_s", "peak_mem_mb", "gflops_per_image"):
            assert math.isfinite(c[name]) and c[name] > 0, name
        total, seconds = record["metrics"]["total"], c["eval_s"]  # eval_s is rounded to the millisecond
        assert total / (seconds + 5e-4) - 0.01 <= c["eval_images_per_s"] <= total / (seconds - 5e-4) + 0.01
        assert c["peak_mem_kind"] == "cpu_max_rss" and c["device"] == cost.device_name(torch.device("cpu"))
        assert c["device"]
        # The cost is no setting: the fingerprint hashes the settings alone, and none of them is a cost.
        assert not set(record["settings"]) & (FIELDS | {"cost"})
        assert record["fingerprint"] == fingerprint_of(record["settings"])
    for record in trained:
        c = record["cost"]
        assert (c["train_starts"], c["resumed"]) == (1, False)
        assert math.isfinite(c["train_s"]) and 0 < c["epoch_s"] <= c["train_s"] < record["wall_time_s"]
    # Both evaluations of one training job carry its one training time.
    assert trained[0]["cost"]["train_s"] == trained[1]["cost"]["train_s"]
    for record in zero_shot:  # evaluation only: no training time
        assert (record["cost"]["train_s"], record["cost"]["epoch_s"], record["cost"]["train_starts"]) == (None, None, 0)
    # CoOp's test features come from CLIP's frozen image tower: zero-shot CLIP's evaluation read them
    # from the cache the CoOp job filled, and says so.
    assert [r["cost"]["eval_features_cached"] for r in trained + zero_shot] == [False, False, True, True]


def test_a_resumed_job_sums_the_training_time_of_its_starts(data_root, tmp_path):
    killed = spec(data_root, tmp_path, evaluate=[{"dataset": "synthetic", "subsample": "base"}])
    kill_at(killed.to_dict(), "mid-epoch:2", tmp_path)
    path, epoch = latest_checkpoint(killed.output_dir)
    first = load_checkpoint_file(path)["cost"]
    assert epoch == 1 and first["starts"] == 1 and len(first["epoch_seconds"]) == 1
    (record,) = run(killed)
    final = load_checkpoint_file(latest_checkpoint(killed.output_dir)[0])["cost"]
    # The first start's epoch is kept as it was measured; the second start adds its own.
    assert final["epoch_seconds"][0] == first["epoch_seconds"][0] and len(final["epoch_seconds"]) == 2
    c = record["cost"]
    assert (c["train_starts"], c["resumed"]) == (2, True)
    assert c["train_s"] == pytest.approx(sum(final["epoch_seconds"]), abs=1e-3)
    assert c["train_s"] > first["epoch_seconds"][0] > 0
    # Scored again later (reevaluate), its records still say what the prompt cost to learn.
    (again,) = run(dataclasses.replace(killed, reevaluate=True))
    assert {k: again["cost"][k] for k in ("train_s", "epoch_s", "train_starts", "resumed")} == {
        k: c[k] for k in ("train_s", "epoch_s", "train_starts", "resumed")
    }


def test_gflops_are_counted_once_and_read_from_the_cache(tmp_path, tiny_clip, classnames, monkeypatch):
    model = methods.build_method("coop", tiny_clip, classnames).eval()
    size = backbone.image_size(tiny_clip)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.logits_from_features(model.encode_image(torch.zeros(1, 3, size, size)))
    expected = counter.get_total_flops() / 1e9

    calls = []
    count = cost.count_gflops
    monkeypatch.setattr(cost, "count_gflops", lambda *a: calls.append(a) or count(*a))
    key = {"method": "coop", "backbone": "tiny", "classes": len(classnames)}
    first = cost.gflops_per_image(model, size, torch.device("cpu"), str(tmp_path), key)
    second = cost.gflops_per_image(model, size, torch.device("cpu"), str(tmp_path), key)
    assert first == second == pytest.approx(expected) and expected > 0
    assert len(calls) == 1 and len(os.listdir(tmp_path / cost.FLOPS_FOLDER)) == 1
    # Another class count is another model: counted anew, and its text side costs more.
    more = methods.build_method("coop", tiny_clip, classnames + ["dog", "tree"]).eval()
    wider = cost.gflops_per_image(more, size, torch.device("cpu"), str(tmp_path), {**key, "classes": 7})
    assert len(calls) == 2 and wider > first


PLUGIN = """from methods.coop import CoOp


class Plugin(CoOp):
    def logits_from_features(self, image_features):
        logits = super().logits_from_features(image_features)
        return {returned}
"""


def test_a_method_whose_code_changed_is_counted_anew(tmp_path, tiny_clip, classnames, monkeypatch):
    """The same key (method, backbone, class count) after an edit of the method's forward: the cached count
    is not reused, and the fresh one counts the edited forward."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    source = tmp_path / "flops_plugin.py"
    source.write_text(PLUGIN.format(returned="logits"))
    monkeypatch.delitem(sys.modules, "flops_plugin", raising=False)
    plugin = importlib.import_module("flops_plugin")
    calls = []
    count = cost.count_gflops
    monkeypatch.setattr(cost, "count_gflops", lambda *a: calls.append(a) or count(*a))
    size, cpu, folder = backbone.image_size(tiny_clip), torch.device("cpu"), str(tmp_path / "cache")
    key = {"method": "plugin", "backbone": "tiny", "classes": len(classnames)}

    def gflops():
        return cost.gflops_per_image(plugin.Plugin(tiny_clip, classnames).eval(), size, cpu, folder, key)

    before = gflops()
    assert gflops() == before and len(calls) == 1  # unchanged code: read from the cache
    source.write_text(PLUGIN.format(returned="logits @ logits.new_ones(logits.shape[-1], 64)"))
    plugin = importlib.reload(plugin)
    after = gflops()
    assert len(calls) == 2 and after > before
    assert len(os.listdir(os.path.join(folder, cost.FLOPS_FOLDER))) == 2


def test_on_cuda_the_peak_is_the_devices_allocated_memory_and_the_device_its_name(monkeypatch):
    """The CUDA branches, with torch.cuda's answers stood in (no GPU here): the peak is the device's
    allocated memory in MiB, not the process's resident memory, and the device is the GPU's name."""
    gpu = torch.device("cuda", 1)
    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: asked.append(d) or 3 * 2**30 + 2**19)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: asked.append(d) or "NVIDIA H100 80GB HBM3")
    assert cost.peak_memory(gpu) == {"peak_mem_mb": 3072.5, "peak_mem_kind": "cuda_max_allocated"}
    assert cost.device_name(gpu) == "NVIDIA H100 80GB HBM3"
    assert asked == [gpu, gpu]  # the job's own device, not device 0


def _process_high_water_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux's resident high-water mark")
def test_on_cpu_a_jobs_peak_is_its_own_not_the_peak_of_what_ran_before_in_the_process(data_root, tmp_path):
    """Jobs run one after another in one process (the debug executor): a job must not report the resident
    peak an earlier one (here a 600 MiB buffer, freed) left in the process."""
    buffer = bytearray(600 * 2**20)
    buffer[:: 2**12] = b"x" * len(buffer[:: 2**12])  # touch every page: resident
    del buffer
    before = _process_high_water_mb()
    (record, *_) = run(spec(data_root, tmp_path))
    c = record["cost"]
    assert c["peak_mem_kind"] == "cpu_max_rss"
    assert 0 < c["peak_mem_mb"] < before - 300, (c["peak_mem_mb"], before)


def test_where_the_peak_cannot_be_reset_the_record_says_it_is_the_processs(monkeypatch, tmp_path):
    import resource

    monkeypatch.setattr(cost, "_CLEAR_REFS", str(tmp_path / "absent" / "clear_refs"))
    cost.reset_peak_memory(torch.device("cpu"))
    peak = cost.peak_memory(torch.device("cpu"))
    assert peak["peak_mem_kind"] == "cpu_max_rss_process"
    assert peak["peak_mem_mb"] == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, abs=0.1)
