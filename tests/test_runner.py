"""The runner on the tiny CLIP and a synthetic dataset: schedule, training, resume, cache, records, W&B."""

import glob
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from crash_child import kill_at
from fake_data import make_synthetic_dataset, tiny_run

import methods
from harness import checkpoint, data, load_clip, results, tracking
from harness.checkpoint import ResumeError, latest_checkpoint
from harness.config import ConfigError, RunSpec, build_spec, parse_overrides
from harness.fingerprint import FolderMismatchError
from harness.metrics import classification_metrics
from harness.runner import NonFiniteLossError, Run, RunFailedError, learning_rates, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        str(root), num_classes=6, train_per_class=8, val_per_class=2, test_per_class=6, image_size=32
    )
    return str(root)


def spec(data_root, out, **values):
    return build_spec(tiny_run(data_root, out, **{"epochs": 3, **values}))


# -- schedule and metrics ------------------------------------------------------------------------


def test_learning_rates_match_the_protocol_table():
    rates = learning_rates(RunSpec(epochs=10))
    table = [1.0e-5, 2.000e-3, 1.951e-3, 1.809e-3, 1.588e-3, 1.309e-3, 1.000e-3, 6.910e-4, 4.122e-4, 1.910e-4]
    assert rates == pytest.approx(table, rel=1e-3)
    fifty = learning_rates(RunSpec(epochs=50))
    assert fifty[2] == pytest.approx(1.998027e-3, rel=1e-6)  # "epoch 3 of 50" in the published logs
    assert fifty[-1] == pytest.approx(7.89e-6, rel=1e-3)
    assert learning_rates(RunSpec(epochs=200))[-1] == pytest.approx(4.93e-7, rel=1e-2)


def test_classification_metrics_by_hand():
    import numpy as np

    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    m = classification_metrics(labels, predictions, 4)
    assert m["accuracy"] == pytest.approx(60.0) and m["error"] == pytest.approx(40.0)
    # F1 per present label: 0 -> P 1/2 R 1/2 = .5; 1 -> P 2/3 R 1 = .8; 2 -> 0. Mean over 3 labels.
    assert m["macro_f1"] == pytest.approx(100 * (0.5 + 0.8 + 0.0) / 3)
    assert m["per_class_accuracy"] == [50.0, 100.0, 0.0, None]
    assert m["perclass_accuracy"] == pytest.approx(50.0)


# -- training and records ------------------------------------------------------------------------


def train_loss(method_name, data_root, checkpoint=None, **options):
    """Mean CE on the 4-shot base training images (test transform), from the same initial state."""
    splits = data.build_dataset("synthetic", data_root, num_shots=4, seed=1, subsample="base")
    torch.manual_seed(1)
    model = methods.build_method(method_name, load_clip("tiny"), splits.classnames, **options)
    if checkpoint:
        model.load_prompt_checkpoint(checkpoint)
    loader = data.build_loader(splits.train, data.build_transform(train=False), 100, train=False, num_workers=0)
    images, labels = next(iter(loader))
    with torch.no_grad():
        return F.cross_entropy(model(images), labels).item()


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_training_lowers_the_loss_and_writes_records(data_root, tmp_path, method):
    s = spec(data_root, tmp_path, method=method, epochs=4, warmup_epochs=0, lr=0.05)
    records = run(s)
    assert [(r["dataset"], r["subsample"]) for r in records] == [("synthetic", "base"), ("synthetic", "new")]
    stored = results.read_records(str(tmp_path))
    assert len(stored) == 2 and set(stored[0]) == set(results.RECORD_FIELDS)
    r = stored[0]
    assert (r["method"], r["train_dataset"], r["train_subsample"], r["seed"], r["shots"], r["epochs"]) == (
        method,
        "synthetic",
        "base",
        1,
        4,
        4,
    )
    assert r["metrics"]["total"] == 18 and len(r["metrics"]["per_class_accuracy"]) == 3
    assert r["options"]["n_ctx"] == 4 and r["versions"]["torch"] == torch.__version__
    final = latest_checkpoint(s.output_dir)
    assert final[1] == 4 and final[0].endswith("prompt_learner/model.pth.tar-4")
    assert os.path.isfile(os.path.join(s.output_dir, "log.txt"))
    with open(os.path.join(s.output_dir, "log.txt")) as f:
        log = f.read()
    assert "Finish training" in log and "* accuracy:" in log
    assert train_loss(method, data_root, final[0]) < train_loss(method, data_root) - 0.05
    # A second call finds every record and does nothing; force redoes the job, training included, in a
    # fresh run folder beside the old one (which keeps its checkpoints).
    assert run(s) == []
    again = run(build_spec({**s.to_dict(), "force": True}))
    assert len(again) == 2 and {r["run_dir"] for r in again} == {s.output_dir + "-2"}
    assert latest_checkpoint(s.output_dir + "-2")[1] == 4 and latest_checkpoint(s.output_dir) == final
    assert again[0]["fingerprint"] == stored[0]["fingerprint"] and again[0]["timestamp"] >= stored[0]["timestamp"]


@pytest.fixture(scope="module")
def straight_runs(data_root, tmp_path_factory):
    """{num_workers: (metrics, final prompt tensors)} of uninterrupted 4-epoch CoCoOp runs."""
    out = {}
    for workers in (0, None):
        s = spec(
            data_root, tmp_path_factory.mktemp("straight"), method="cocoop", epochs=4, batch_size=3, num_workers=workers
        )
        metrics = [r["metrics"] for r in run(s)]
        out[workers] = (metrics, torch.load(latest_checkpoint(s.output_dir)[0], weights_only=False)["state_dict"])
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment, workers, epochs_done",
    [
        ("first-step", 0, None),
        ("mid-epoch:3", 0, 2),
        ("checkpoint-write:2", 0, 1),
        ("before-eval", 0, 4),
        ("mid-epoch:2", None, 1),  # with the default data-loader workers (processes)
    ],
)
def test_killed_at_any_moment_resumes_to_the_straight_run(
    data_root, tmp_path, straight_runs, moment, workers, epochs_done
):
    killed = spec(data_root, tmp_path / "killed", method="cocoop", epochs=4, batch_size=3, num_workers=workers)
    kill_at(killed.to_dict(), moment, tmp_path)
    found = latest_checkpoint(killed.output_dir)
    assert (found[1] if found else None) == epochs_done
    if moment.startswith("checkpoint-write"):  # the half-written file never took the checkpoint's name
        leftovers = os.listdir(os.path.join(killed.output_dir, "prompt_learner"))
        assert any(name.endswith(".tmp") for name in leftovers), leftovers
    assert results.read_records(str(tmp_path / "killed")) == []
    resumed = run(killed)
    logs = sorted(glob.glob(os.path.join(killed.output_dir, "log.txt*")))
    assert len(logs) == 2  # the first run's log is kept; the second gets a time suffix
    if epochs_done:
        with open([p for p in logs if p != os.path.join(killed.output_dir, "log.txt")][0]) as f:
            assert "Resuming from" in f.read() or epochs_done == 4
    metrics, final = straight_runs[workers]
    assert [r["metrics"] for r in resumed] == metrics
    final_b = torch.load(latest_checkpoint(killed.output_dir)[0], weights_only=False)["state_dict"]
    for key in final:
        assert torch.equal(final[key], final_b[key]), key


# Methods trained by gradient; one fitted on frozen features (lpclip) has its own resume test (test_lpclip.py).
TRAINING_METHODS = [
    name
    for name in methods.list_methods()
    if methods.method_class(name).trainable and not methods.method_class(name).fits_features
]


def synthetic_options(method: str, data_root: str, folder) -> dict:
    """What a method needs beyond its defaults on the synthetic dataset: class descriptions (CoPrompt's), of
    which none ship for it, written into ``folder``."""
    if "descriptions" not in methods.method_options(method):
        return {}
    names = data.build_dataset("synthetic", data_root, num_shots=0, seed=1).classnames
    path = folder / "descriptions.json"
    path.write_text(json.dumps({n.replace("_", " "): [f"a {n}."] for n in names}))
    return {"descriptions": str(path)}


# A method whose authors count optimiser steps (its ``step_schedule``) gets a budget of exactly these two epochs:
# CLIP-LoRA's n_iters 1 x 4 shots = 4 steps, 2 an epoch (3 base classes x 4 shots in batches of 6).
# Such a method starts its schedule at the run's lr, without the warm-up epoch (the config checker refuses one).
OWN_SCHEDULE = {"clip_lora": {"warmup_epochs": 0}}
STEP_BUDGETS = {"clip_lora": {**OWN_SCHEDULE["clip_lora"], "options": {"n_iters": 1}, "batch_size": 6}}


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_every_training_method_is_killed_resumed_evaluated_and_recorded(data_root, tmp_path, method):
    """Each registered method that trains goes the whole way: a straight run, and a run killed in the
    middle of its last epoch (a real SIGKILL) and resumed, which ends with the same tensors, the same
    numbers and the same records."""
    values = {"method": method, "epochs": 2, "evaluate": [{"dataset": "synthetic", "subsample": "base"}]}
    values.update(STEP_BUDGETS.get(method, {}))
    values["options"] = {**values.get("options", {}), **synthetic_options(method, data_root, tmp_path)}
    straight = spec(data_root, tmp_path / "straight", **values)
    expected = run(straight)
    killed = spec(data_root, tmp_path / "killed", **values)
    kill_at(killed.to_dict(), "mid-epoch:2", tmp_path)
    assert latest_checkpoint(killed.output_dir)[1] == 1 and results.read_records(str(tmp_path / "killed")) == []
    resumed = run(killed)
    with open(glob.glob(os.path.join(killed.output_dir, "log.txt-*"))[0]) as f:
        assert "Resuming from" in f.read()
    assert [r["metrics"] for r in resumed] == [r["metrics"] for r in expected]
    assert results.read_records(str(tmp_path / "killed")) == resumed
    record = resumed[0]
    assert set(record) == set(results.RECORD_FIELDS)
    assert (record["method"], record["epochs"], record["train_subsample"], record["seed"]) == (method, 2, "base", 1)
    a = torch.load(latest_checkpoint(straight.output_dir)[0], weights_only=False)
    b = torch.load(latest_checkpoint(killed.output_dir)[0], weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and set(a["state_dict"]) == set(b["state_dict"])
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert_same(a["method_state"], b["method_state"])


def assert_same(a, b, where="state"):
    """Equal values, tensors and arrays compared exactly, through dicts, lists and tuples."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(map(str, a)), sorted(map(str, b)))
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_training_state_round_trip_restores_every_part(data_root, tmp_path, method):
    """A saved TrainingState, read back into a differently initialised one, equals it: the learned
    tensors, the method's own state, optimiser, schedule, scaler, every random generator and the epoch."""
    options = synthetic_options(method, data_root, tmp_path)
    s = spec(
        data_root, tmp_path, method=method, epochs=3, batch_size=3, options=options, **OWN_SCHEDULE.get(method, {})
    )
    job = Run(s)
    job.clip = load_clip("tiny")
    splits = data.build_dataset("synthetic", data_root, num_shots=4, seed=1, subsample="base")
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    saved = job.start_training(splits.classnames)
    saved.model.train()
    saved.model.training_loss(images, torch.tensor([0, 1, 2])).backward()
    saved.optimizer.step()  # momentum buffers
    saved.scheduler.step()
    saved.model.on_epoch_end(1, s.epochs)
    torch.randperm(10, generator=saved.loader_generator)  # a shuffle drawn
    saved.epoch = 1
    checkpoint.save(s.output_dir, saved, s.training_identity(), final=False)
    expected_rng = checkpoint.capture_rng(saved.loader_generator)

    random.random(), np.random.rand(), torch.rand(1)  # the process's generators move on
    torch.manual_seed(7)
    fresh = job.start_training(splits.classnames)
    assert checkpoint.resume(s.output_dir, fresh, s.training_identity()) == 1 == fresh.epoch
    assert_same(checkpoint.capture_rng(fresh.loader_generator), expected_rng, "rng")
    assert_same(fresh.model.checkpoint_state_dict(full=False), saved.model.checkpoint_state_dict(full=False))
    assert_same(fresh.model.training_state(), saved.model.training_state(), "method_state")
    assert_same(fresh.optimizer.state_dict(), saved.optimizer.state_dict(), "optimizer")
    assert_same(fresh.scheduler.state_dict(), saved.scheduler.state_dict(), "scheduler")
    assert_same(fresh.scaler.state_dict(), saved.scaler.state_dict(), "scaler")
    assert fresh.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"]


def test_eval_only_from_a_trained_run_and_feature_cache_reuse(data_root, tmp_path):
    trained = spec(data_root, tmp_path, epochs=2, evaluate=[{"dataset": "synthetic", "subsample": "base"}])
    base_record = run(trained)[0]
    # Evaluating the same images again (another method, another job) reuses the cached features.
    zero_shot = Run(spec(data_root, tmp_path, method="zsclip", output_dir=str(tmp_path / "zs")))
    zero_shot()
    assert zero_shot.cache.hits == 1 and zero_shot.cache.misses == 1  # base cached, new computed
    evaluation = Run(
        spec(
            data_root,
            tmp_path,
            epochs=2,  # the trained run's: a prompt is scored only under the settings it was trained with
            load_from=trained.output_dir,
            output_dir=str(tmp_path / "eval"),
            evaluate=["synthetic"],
        )
    )
    records = evaluation()
    assert evaluation.cache.misses == 1 and records[0]["subsample"] == "all" and records[0]["epochs"] == 2
    # The same prompt evaluated on the base classes gives the trained run's number.
    again = Run(
        spec(
            data_root,
            tmp_path,
            epochs=2,
            load_from=trained.output_dir,
            output_dir=str(tmp_path / "eval2"),
            experiment="again",
            evaluate=[{"dataset": "synthetic", "subsample": "base"}],
        )
    )
    assert again()[0]["metrics"] == base_record["metrics"] and again.cache.hits == 1
    zs = [r for r in results.read_records(str(tmp_path)) if r["method"] == "zsclip"]
    assert {r["subsample"] for r in zs} == {"base", "new"} and all(
        r["seed"] is None and r["train_dataset"] is None for r in zs
    )
    assert zs[0]["options"]["template"] == "a photo of a {}."


def test_wandb_offline_run_holds_what_the_run_recorded(data_root, tmp_path, monkeypatch):
    """Read the offline run back with W&B's own reader and check its values, not byte substrings."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    s = spec(data_root, tmp_path, epochs=2, tracking="auto")  # trains on base, evaluates base and new
    run(s)
    (run_folder,) = tracking.offline_runs(s.output_dir)
    r = tracking.read_offline_run(run_folder)
    assert (r.name, r.group, r.job_type) == ("coop/synthetic/seed1", "test", "train")
    assert (r.exit_code, r.state) == (0, "finished")
    assert sorted(r.tags) == sorted(["test", "coop", "synthetic", "seed1", "train"])
    # Config: the spec, key for key and value for value, plus the two derived keys.
    spec_values = json.loads(json.dumps(s.to_dict()))
    assert {k: r.config.get(k) for k in spec_values} == spec_values
    assert (r.config["method_config"], r.config["job_kind"]) == ("coop", "train")

    # History: one loss and lr per step; lr follows the schedule epoch by epoch.
    train = data.build_dataset("synthetic", data_root, num_shots=s.shots, seed=s.seed, subsample="base").train
    steps_per_epoch = len(train) // s.batch_size  # drop_last (there is at least one full batch)
    steps = s.epochs * steps_per_epoch
    loss, lr = r.series("train/loss"), r.series("train/lr")
    assert [step for step, _ in loss] == list(range(1, steps + 1)) == [step for step, _ in lr]
    rates = learning_rates(s)
    assert [v for _, v in lr] == pytest.approx([rates[(k - 1) // steps_per_epoch] for k in range(1, steps + 1)])
    assert [v for _, v in r.series("epoch")][: steps_per_epoch + 1] == [1] * steps_per_epoch + [2]
    # Per epoch: the mean of that epoch's step losses, as the run's log.txt printed it.
    with open(os.path.join(s.output_dir, "log.txt")) as f:
        printed = [float(m) for m in re.findall(r"epoch \d+/\d+  loss ([0-9.]+)", f.read())]
    epoch_loss = r.series("epoch/loss")
    assert [step for step, _ in epoch_loss] == [steps_per_epoch * e for e in range(1, s.epochs + 1)]
    for e, (_, value) in enumerate(epoch_loss):
        step_losses = [v for _, v in loss[e * steps_per_epoch : (e + 1) * steps_per_epoch]]
        assert value == pytest.approx(sum(step_losses) / len(step_losses))
        assert round(value, 4) == printed[e]
    assert [v for _, v in r.series("epoch/lr")] == pytest.approx(rates)

    # Summary: the accuracies the results store holds, under the documented keys.
    records = results.read_records(str(tmp_path))
    assert sorted(rec["subsample"] for rec in records) == ["base", "new"]
    for rec in records:
        sub = rec["subsample"]
        assert r.summary[f"eval/synthetic/{sub}/accuracy"] == rec["metrics"]["accuracy"]
        assert r.summary[f"eval/synthetic/{sub}/macro_f1"] == rec["metrics"]["macro_f1"]
        assert r.summary[f"accuracy/{sub}"] == rec["metrics"]["accuracy"]
        assert r.series(f"eval/synthetic/{sub}/accuracy")[-1][1] == rec["metrics"]["accuracy"]


def test_nonfinite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(data_root, tmp_path):
    s = spec(data_root, tmp_path, epochs=4, warmup_epochs=0, lr=1e30, batch_size=32)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is .*model.pth.tar-1"):
        run(s)
    assert latest_checkpoint(s.output_dir)[1] == 1
    assert results.read_records(str(tmp_path)) == []


def test_nonfinite_advice_fits_the_precision(data_root, tmp_path):
    s = spec(data_root, tmp_path, epochs=2, warmup_epochs=0, lr=1e30, batch_size=32)
    with pytest.raises(NonFiniteLossError) as error:
        run(s)
    assert "Try a lower learning rate (lr)." in str(error.value) and "try precision fp32" not in str(error.value)


def test_nan_lr_with_amp_is_refused_not_a_result(data_root, tmp_path):
    # On a CPU amp has no gradient scaler; on CUDA the scaler would skip every step: a NaN rate is refused
    # before anything is written.
    with pytest.raises(ConfigError, match=r"'lr' must be a finite number in \(0, 1e\+30\], got nan"):
        spec(data_root, tmp_path, epochs=2, warmup_epochs=0, lr=float("nan"), precision="amp")
    assert results.read_records(str(tmp_path)) == [] and not os.path.exists(tmp_path / "run")


def test_epochs_zero_evaluates_the_initial_prompt(data_root, tmp_path):
    # CoOp initialised with "a photo of a" is zero-shot CLIP with "a photo of a {}.": the same numbers.
    coop = run(spec(data_root, tmp_path / "coop", epochs=0))
    zero_shot = run(spec(data_root, tmp_path / "zs", method="zsclip", options={"template": "a photo of a {}."}))
    assert [r["epochs"] for r in coop] == [0, 0]
    assert [r["metrics"]["accuracy"] for r in coop] == [r["metrics"]["accuracy"] for r in zero_shot]
    assert latest_checkpoint(str(tmp_path / "coop" / "run"))[1] == 0


@pytest.mark.parametrize("precision, tolerance", [("fp16", 0.02), ("bf16", 0.1), ("amp", 0.1)])
def test_low_precision_training_agrees_with_fp32(data_root, tmp_path, precision, tolerance):
    """Two epochs from the same initial prompt. bf16 keeps 8 mantissa bits (relative rounding ~4e-3 per
    operation), fp16 11 bits (~5e-4); over a few SGD steps whose updates are rounded too, the learned
    context drifts by a few percent in bf16 and a few tenths of a percent in fp16 (measured: 3 %, 0.3 %).
    The drift must also not be zero: that would mean the low-precision path was not taken."""
    contexts = {}
    for mode in ("fp32", precision):
        s = spec(
            data_root,
            tmp_path / mode,
            epochs=2,
            precision=mode,
            evaluate=[{"dataset": "synthetic", "subsample": "base"}],
        )
        record = run(s)[0]
        assert record["precision"] == mode and 0 <= record["metrics"]["accuracy"] <= 100
        contexts[mode] = torch.load(latest_checkpoint(s.output_dir)[0], weights_only=False)["state_dict"]["ctx"]
    expected = {"fp16": torch.float16, "bf16": torch.bfloat16, "amp": torch.float32}[precision]
    assert contexts[precision].dtype == expected and torch.isfinite(contexts[precision].float()).all()
    drift = (contexts[precision].float() - contexts["fp32"]).norm() / contexts["fp32"].norm()
    assert 1e-5 < drift < tolerance


def test_resume_refuses_a_checkpoint_of_another_spec(data_root, tmp_path):
    run(spec(data_root, tmp_path, epochs=3, evaluate=[{"dataset": "synthetic", "subsample": "base"}]))
    fewer = spec(
        data_root, tmp_path, epochs=1, experiment="again", evaluate=[{"dataset": "synthetic", "subsample": "base"}]
    )
    with pytest.raises(FolderMismatchError, match=r"other settings \(.*epochs: 3 -> 1\).*Use another output folder"):
        run(fewer)
    other_lr = spec(data_root, tmp_path, epochs=3, lr=0.5, experiment="again", evaluate=["synthetic"])
    with pytest.raises(FolderMismatchError, match=r"lr: 0.01 -> 0.5"):
        run(other_lr)
    # A folder of an earlier harness (no fingerprint.json): its checkpoint's spec is checked.
    os.unlink(os.path.join(str(tmp_path), "run", "fingerprint.json"))
    with pytest.raises(ResumeError, match=r"different spec \(epochs: 3 -> 1\).*Use another output folder"):
        run(fewer)
    assert len(results.read_records(str(tmp_path))) == 1


def test_a_claim_that_left_no_checkpoint_does_not_block_other_settings(data_root, tmp_path):
    from harness import fingerprint as fingerprints

    base = [{"dataset": "synthetic", "subsample": "base"}]
    one = spec(data_root, tmp_path, epochs=1, evaluate=base)
    # A run killed (SIGKILL: no cleanup) before its first epoch ended: its claim and log, no checkpoint.
    fingerprints.write_folder(one.output_dir, {"epochs": 7}, "0123456789ab", forced=False, finished=False)
    with open(os.path.join(one.output_dir, "log.txt"), "w") as f:
        f.write("killed\n")
    assert len(run(one)) == 1
    assert fingerprints.read_folder(one.output_dir)["finished"]
    # A claim that holds a checkpoint is another settings run's work: refused.
    held = fingerprints.read_folder(one.output_dir)
    fingerprints.write_folder(one.output_dir, held["settings"], held["fingerprint"], forced=False, finished=False)
    two = spec(data_root, tmp_path, epochs=2, experiment="again", evaluate=base)
    with pytest.raises(FolderMismatchError, match=r"epochs: 1 -> 2"):
        run(two)


@pytest.mark.slow
def test_truncated_checkpoint_is_set_aside_and_the_previous_one_resumed(data_root, tmp_path, straight_runs, caplog):
    killed = spec(data_root, tmp_path / "killed", method="cocoop", epochs=4, batch_size=3, num_workers=0)
    kill_at(killed.to_dict(), "mid-epoch:4", tmp_path)
    newest, epoch = latest_checkpoint(killed.output_dir)
    assert epoch == 3
    with open(newest, "r+b") as f:  # a disk that lost the end of the file
        f.truncate(os.path.getsize(newest) // 3)
    resumed = run(killed)
    assert f"Checkpoint {newest} cannot be read" in caplog.text and os.path.isfile(newest + ".corrupt")
    metrics, final = straight_runs[0]
    assert [r["metrics"] for r in resumed] == metrics  # resumed from epoch 2: the same result


def test_a_run_folder_in_use_is_refused(data_root, tmp_path):
    busy = spec(data_root, tmp_path, epochs=3)
    child_folder = tmp_path / "child"
    child_folder.mkdir()
    spec_path, marker = child_folder / "spec.json", child_folder / "paused"
    spec_path.write_text(json.dumps(busy.to_dict()))
    child = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "crash_child.py"), str(spec_path), "mid-epoch:2", str(marker)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert child.poll() is None and time.time() < deadline
            time.sleep(0.05)
        with pytest.raises(RunFailedError, match=rf"in use by another run of .* \(pid {child.pid} on "):
            run(busy)
    finally:
        child.kill()
        child.wait()
    assert results.read_records(str(tmp_path)) == []
    assert len(run(busy)) == 2  # the lock died with its process


def test_checkpoints_go_where_the_authors_tools_look_and_only_the_last_is_whole(data_root, tmp_path):
    # MaPLe's trainer registers "MultiModalPromptLearner" and saves the whole model (PROTOCOL-successors.md
    # 5); earlier epochs, kept to resume, hold the learned tensors only (a whole ViT-B/16 is ~300 MB).
    s = spec(data_root, tmp_path, method="maple", epochs=2, evaluate=[{"dataset": "synthetic", "subsample": "base"}])
    run(s)
    folder = os.path.join(s.output_dir, "MultiModalPromptLearner")
    assert sorted(os.listdir(folder)) == ["checkpoint", "model.pth.tar-1", "model.pth.tar-2"]
    with open(os.path.join(folder, "checkpoint")) as f:
        assert f.read().strip() == "model.pth.tar-2"
    last = torch.load(os.path.join(folder, "model.pth.tar-2"), weights_only=False)["state_dict"]
    earlier = torch.load(os.path.join(folder, "model.pth.tar-1"), weights_only=False)["state_dict"]
    assert any(k.startswith("image_encoder.") for k in last) and "logit_scale" in last
    assert not any(k.startswith(("image_encoder.", "text_encoder.")) for k in earlier)
    assert {k for k in last if k.startswith("prompt_learner.")} == set(earlier)
    assert latest_checkpoint(s.output_dir) == (os.path.join(folder, "model.pth.tar-2"), 2)


# -- the results store under concurrency ----------------------------------------------------------


def _append_many(folder, worker, count, start):
    start.wait()  # every writer begins at once
    for i in range(count):
        record = {k: None for k in results.RECORD_FIELDS}
        # Each record is several write chunks long (and larger than a pipe buffer), so writers that did
        # not wait for the lock would interleave pieces of their records.
        pad = chr(ord("a") + worker) * (3 * results.WRITE_CHUNK)
        record.update(job=f"w{worker}-{i}", metrics={"accuracy": float(i)}, options={"pad": pad})
        results.append_record(folder, record)


def test_concurrent_writers_lose_no_record(tmp_path):
    writers, count = 4, 10
    context = multiprocessing.get_context("fork")  # no re-import: the writers really overlap
    start = context.Barrier(writers)
    procs = [context.Process(target=_append_many, args=(str(tmp_path), w, count, start)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with open(results.results_path(str(tmp_path)), "rb") as f:
        lines = f.read().split(b"\n")
    assert lines[-1] == b"" and len(lines) == writers * count + 1  # whole lines only
    records = results.read_records(str(tmp_path))
    assert sorted(r["job"] for r in records) == sorted(f"w{w}-{i}" for w in range(writers) for i in range(count))
    for r in records:  # no record holds a piece of another's
        assert set(r["options"]["pad"]) == {chr(ord("a") + int(r["job"][1:].split("-")[0]))}


def test_an_append_waits_for_the_lock(tmp_path):
    import fcntl
    import threading

    path = results.results_path(str(tmp_path))
    record = {k: None for k in results.RECORD_FIELDS}
    results.append_record(str(tmp_path), record)
    size = os.path.getsize(path)
    with open(path, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer (on another node) holds the store
        writer = threading.Thread(target=results.append_record, args=(str(tmp_path), {**record, "job": "second"}))
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and os.path.getsize(path) == size  # it waits, writing nothing
        fcntl.flock(held, fcntl.LOCK_UN)
    writer.join(timeout=10)
    assert [r["job"] for r in results.read_records(str(tmp_path))] == [None, "second"]


def test_torn_last_line_is_skipped(tmp_path, caplog):
    record = {k: None for k in results.RECORD_FIELDS}
    results.append_record(str(tmp_path), record)
    with open(results.results_path(str(tmp_path)), "a") as f:
        f.write('{"experiment": "half')
    assert len(results.read_records(str(tmp_path))) == 1
    assert "not a complete JSON record" in caplog.text


def test_a_record_after_a_torn_line_starts_its_own_line(tmp_path, caplog):
    record = {k: None for k in results.RECORD_FIELDS}
    results.append_record(str(tmp_path), {**record, "job": "first"})
    with open(results.results_path(str(tmp_path)), "a") as f:
        f.write('{"experiment": "half')  # a writer killed mid-line
    results.append_record(str(tmp_path), {**record, "job": "after"})
    assert [r["job"] for r in results.read_records(str(tmp_path))] == ["first", "after"]
    assert "line 2 is not a complete JSON record" in caplog.text


def test_json_that_is_not_a_record_is_skipped_with_its_line(tmp_path, caplog):
    record = {k: None for k in results.RECORD_FIELDS}
    results.append_record(str(tmp_path), {**record, "job": "a"})
    with open(results.results_path(str(tmp_path)), "a") as f:
        f.write('null\n[1, 2]\n{"job": "not a record"}\n')
    results.append_record(str(tmp_path), {**record, "job": "b"})
    assert [r["job"] for r in results.read_records(str(tmp_path))] == ["a", "b"]
    for line in (2, 3, 4):
        assert f"line {line} is valid JSON but not a result record" in caplog.text
    results.existing_keys(str(tmp_path))  # what every run and sweep asks first


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochz": 3}, r"Unknown run key\(s\) \['epochz'\]. Valid keys: method"),
        ({"epochs": "ten"}, r"'epochs' must be an integer >= 0, got 'ten' \(str\)"),
        ({"method": "no_such_method"}, "Registered methods: .*cocoop, coop, .*kgcoop, .*maple, .*zsclip"),
        ({"backbone": "ViT-H/14"}, "Unknown backbone 'ViT-H/14'. Choices: RN50"),
        ({"options": {"n_ctxx": 2}}, r"no option\(s\) \['n_ctxx'\]. Options: n_ctx"),
        ({"dataset": "imagenet21k"}, "Unknown dataset 'imagenet21k'. Datasets: caltech101"),
        ({"precision": "fp8"}, r"'precision' must be a string one of fp16 \| bf16 \| fp32 \| amp, got 'fp8'"),
        ({"subsample": "half"}, r"'subsample' must be a string one of all \| base \| new, got 'half'"),
        ({"config": "coop/nope"}, r"Unknown method config 'coop/nope'.*coop/vit_b16_ctxv1"),
    ],
)
def test_bad_config_fails_before_any_work(data_root, tmp_path, change, message):
    values = {**spec(data_root, tmp_path).to_dict(), **change}
    with pytest.raises((ConfigError, ValueError), match=message):
        build_spec(values)
    assert not os.path.exists(tmp_path / "run")


def test_method_config_and_overrides_precedence(data_root, tmp_path):
    s = build_spec(
        {
            "config": "cocoop/vit_b16_c4_ep10_batch1_ctxv1",
            "dataset": "synthetic",
            "data_root": data_root,
            "output_dir": str(tmp_path),
        },
        parse_overrides(["epochs=2", "options.n_ctx=8", "options.ctx_init="]),
    )
    assert (s.method, s.epochs, s.batch_size, s.precision, s.lr) == ("cocoop", 2, 1, "fp16", 0.002)
    assert s.options == {"n_ctx": 8, "ctx_init": ""}


def test_cli_help_documents_every_key():
    out = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    for f in RunSpec.__dataclass_fields__:
        flag = "--method-config" if f == "config" else "--" + f.replace("_", "-")
        assert flag in out.stdout, flag
    bad = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--method", "coop", "--epochs", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr
