"""The runner on the tiny CLIP and a synthetic dataset: schedule, training, resume, cache, records, W&B."""

import glob
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from crash_child import kill_at
from fake_data import make_synthetic_dataset

import methods
from harness import data, load_clip, results
from harness.checkpoint import latest_checkpoint
from harness.config import ConfigError, RunSpec, build_spec, parse_overrides
from harness.metrics import classification_metrics
from harness.runner import NonFiniteLossError, learning_rates, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        str(root), num_classes=6, train_per_class=8, val_per_class=2, test_per_class=6, image_size=32
    )
    return str(root)


def spec(data_root, out, **values):
    base = {
        "method": "coop",
        "dataset": "synthetic",
        "data_root": data_root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 4,
        "seed": 1,
        "subsample": "base",
        "evaluate": [{"dataset": "synthetic", "subsample": "base"}, {"dataset": "synthetic", "subsample": "new"}],
        "epochs": 3,
        "batch_size": 4,
        "lr": 0.01,
        "num_workers": 0,
        "tracking": "none",
        "experiment": "test",
        "output_dir": os.path.join(str(out), "run"),
    }
    base.update(values)
    return build_spec(base)


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
    # A second call finds every record and does nothing; force redoes the evaluation.
    assert run(s) == []
    assert len(run(build_spec({**s.to_dict(), "force": True}))) == 2


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


def test_eval_only_from_a_trained_run_and_feature_cache_reuse(data_root, tmp_path):
    trained = spec(data_root, tmp_path, epochs=2, evaluate=[{"dataset": "synthetic", "subsample": "base"}])
    base_record = run(trained)[0]
    # Evaluating the same images again (another method, another job) reuses the cached features.
    from harness.runner import Run

    zero_shot = Run(spec(data_root, tmp_path, method="zsclip", output_dir=str(tmp_path / "zs")))
    zero_shot()
    assert zero_shot.cache.hits == 1 and zero_shot.cache.misses == 1  # base cached, new computed
    evaluation = Run(
        spec(
            data_root, tmp_path, load_from=trained.output_dir, output_dir=str(tmp_path / "eval"), evaluate=["synthetic"]
        )
    )
    records = evaluation()
    assert evaluation.cache.misses == 1 and records[0]["subsample"] == "all" and records[0]["epochs"] == 2
    # The same prompt evaluated on the base classes gives the trained run's number.
    again = Run(
        spec(
            data_root,
            tmp_path,
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


def test_wandb_offline_run_has_the_expected_keys(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    s = spec(data_root, tmp_path, epochs=2, tracking="auto", evaluate=[{"dataset": "synthetic", "subsample": "base"}])
    run(s)
    files = glob.glob(os.path.join(s.output_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1
    with open(files[0], "rb") as f:
        blob = f.read()
    for key in [
        b"train/loss",
        b"train/lr",
        b"epoch/loss",
        b"eval/synthetic/base/accuracy",
        b"coop/synthetic/seed1",
        b"seed1",
        b"test",
    ]:
        assert key in blob, key


def test_nonfinite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(data_root, tmp_path):
    s = spec(data_root, tmp_path, epochs=4, warmup_epochs=0, lr=1e30, batch_size=32)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is .*model.pth.tar-1"):
        run(s)
    assert latest_checkpoint(s.output_dir)[1] == 1
    assert results.read_records(str(tmp_path)) == []


# -- the results store under concurrency ----------------------------------------------------------


def _append_many(args):
    folder, worker = args
    for i in range(50):
        record = {k: None for k in results.RECORD_FIELDS}
        record.update(job=f"w{worker}-{i}", metrics={"accuracy": float(i)}, options={"pad": "x" * 5000})
        results.append_record(folder, record)


def test_concurrent_writers_lose_no_record(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_append_many, [(str(tmp_path), w) for w in range(4)])
    records = results.read_records(str(tmp_path))
    assert len(records) == 200
    assert sorted(r["job"] for r in records) == sorted(f"w{w}-{i}" for w in range(4) for i in range(50))


def test_torn_last_line_is_skipped(tmp_path, caplog):
    record = {k: None for k in results.RECORD_FIELDS}
    results.append_record(str(tmp_path), record)
    with open(results.results_path(str(tmp_path)), "a") as f:
        f.write('{"experiment": "half')
    assert len(results.read_records(str(tmp_path))) == 1
    assert "not a complete JSON record" in caplog.text


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochz": 3}, r"Unknown run key\(s\) \['epochz'\]. Valid keys: method"),
        ({"epochs": "ten"}, r"'epochs' must be int, got 'ten'"),
        ({"method": "prograd"}, "Registered methods: cocoop, coop, kgcoop, maple, promptsrc, zsclip"),
        ({"backbone": "ViT-H/14"}, "Unknown backbone 'ViT-H/14'. Choices: RN50"),
        ({"options": {"n_ctxx": 2}}, r"no option\(s\) \['n_ctxx'\]. Options: n_ctx"),
        ({"dataset": "imagenet21k"}, "Unknown dataset 'imagenet21k'. Datasets: caltech101"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"subsample": "half"}, "subsample must be one of"),
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
