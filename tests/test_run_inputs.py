"""What a result depends on beyond the run keys, checked on the tiny CLIP and synthetic data: a NaN that
a method's hook writes, a loaded prompt's own training settings, the backbone's weights and the images."""

import os

import pytest
from fake_data import make_synthetic_dataset

from harness import results
from harness.config import build_spec
from harness.runner import NonFiniteLossError, RunFailedError, run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=32
    )
    return str(root)


def spec(data_root, out, **values):
    base = {
        "method": "coop",
        "dataset": "synthetic",
        "data_root": data_root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 2,
        "seed": 1,
        "subsample": "base",
        "evaluate": [{"dataset": "synthetic", "subsample": "base"}, {"dataset": "synthetic", "subsample": "new"}],
        "epochs": 2,
        "batch_size": 4,
        "lr": 0.01,
        "num_workers": 0,
        "tracking": "none",
        "experiment": "test",
        "output_dir": os.path.join(str(out), "run"),
    }
    base.update(values)
    return build_spec(base)


# -- a non-finite number is never recorded ---------------------------------------------------------


def test_a_hook_that_writes_nan_stops_the_run_naming_the_epoch_and_the_tensors(data_root, tmp_path):
    # PromptSRC's Gaussian weights underflow to 0/0 with a mean far beyond the last epoch.
    s = spec(data_root, tmp_path, method="promptsrc", warmup_epochs=0, options={"gpa_mean": 100})
    with pytest.raises(RunFailedError, match=r"After epoch 1 .*on_epoch_end.*gpa_sum.*gpa_mean") as error:
        run(s)
    assert "learning rate" not in str(error.value).replace("not the learning rate", "")
    assert results.read_records(str(tmp_path)) == []


def test_a_nan_loss_names_its_terms_and_blames_the_weight_not_the_lr(data_root, tmp_path):
    s = spec(data_root, tmp_path, method="promptsrc", warmup_epochs=0, options={"text_loss_weight": float("inf")})
    with pytest.raises(NonFiniteLossError) as error:
        run(s)
    message = str(error.value)
    assert "epoch 1, step 1" in message and "lr 0.01" in message
    assert "text_l1 inf" in message and "cross-entropy is finite" in message
    assert "Try a lower learning rate" not in message
    assert results.read_records(str(tmp_path)) == []


def test_a_diverging_lr_is_still_blamed_on_the_lr(data_root, tmp_path):
    s = spec(data_root, tmp_path, warmup_epochs=0, lr=1e30, batch_size=8)
    with pytest.raises(NonFiniteLossError, match=r"\(lr 5e\+29\)\. Not finite: ce nan\. Try a lower learning rate"):
        run(s)


# -- a loaded prompt is scored only under the settings it was trained with --------------------------


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A finished 3-epoch CoOp training on the base classes: (its spec, its records)."""
    out = tmp_path_factory.mktemp("trained")
    s = spec(data_root, out, epochs=3, evaluate=[{"dataset": "synthetic", "subsample": "base"}])
    return s, run(s)


def evaluation(data_root, out, trained_spec, **values):
    return spec(data_root, out, **{"epochs": 3, "load_from": trained_spec.output_dir, **values}, evaluate=["synthetic"])


def test_an_evaluation_at_the_training_settings_shares_its_fingerprint(data_root, tmp_path, trained):
    train_spec, train_records = trained
    records = run(evaluation(data_root, tmp_path, train_spec))
    assert [r["fingerprint"] for r in records] == [train_records[0]["fingerprint"]]
    assert records[0]["load_any"] is None and records[0]["epochs"] == 3


def test_a_prompt_trained_at_other_settings_is_refused_naming_them(data_root, tmp_path, trained):
    with pytest.raises(RunFailedError) as error:
        run(evaluation(data_root, tmp_path, trained[0], epochs=10, lr=0.5))
    message = str(error.value)
    assert "epochs: 3 -> 10" in message and "lr: 0.01 -> 0.5" in message
    assert "--set epochs=3 lr=0.01" in message and "load_any=true" in message
    assert results.read_records(str(tmp_path)) == []


def test_load_any_records_the_training_settings_marked_as_a_settings_run_of_their_own(data_root, tmp_path, trained):
    from harness.report.variants import settings_run

    train_spec, train_records = trained
    records = run(evaluation(data_root, tmp_path, train_spec, epochs=10, lr=0.5, load_any=True))
    (record,) = records
    assert record["load_any"] == "epochs: 3 -> 10, lr: 0.01 -> 0.5"
    assert record["settings"]["epochs"] == 3 and record["settings"]["lr"] == 0.01  # the training run's
    assert record["settings"]["load_any"] == record["load_any"]
    assert record["fingerprint"] != train_records[0]["fingerprint"]
    assert settings_run(record) != settings_run(train_records[0])
    # Finished: a second run finds its record.
    assert run(evaluation(data_root, tmp_path, train_spec, epochs=10, lr=0.5, load_any=True)) == []


def test_a_partial_training_is_refused(data_root, tmp_path, trained):
    import shutil

    from harness import checkpoint

    partial = tmp_path / "partial"
    shutil.copytree(trained[0].output_dir, partial)
    last, epoch = checkpoint.latest_checkpoint(str(partial))
    os.unlink(last)
    assert checkpoint.latest_checkpoint(str(partial))[1] == epoch - 1
    with pytest.raises(RunFailedError, match=r"epoch 2 of a 3-epoch training that did not finish.*finish its training"):
        run(evaluation(data_root, tmp_path, trained[0], load_from=str(partial)))
    (record,) = run(evaluation(data_root, tmp_path, trained[0], load_from=str(partial), load_any=True))
    assert record["load_any"] == "epoch 2 of 3" and record["epochs"] == 2


def test_a_checkpoint_without_a_spec_is_accepted_with_a_warning_if_its_epoch_fits(data_root, tmp_path, trained, caplog):
    import torch

    from harness import checkpoint

    path, _ = checkpoint.latest_checkpoint(trained[0].output_dir)
    contents = torch.load(path, weights_only=False)
    del contents["spec"]
    authors = str(tmp_path / "authors.pth.tar-3")
    torch.save(contents, authors)
    (record,) = run(evaluation(data_root, tmp_path / "a", trained[0], load_from=authors))
    assert record["load_any"] is None and "holds no training spec" in caplog.text
    with pytest.raises(RunFailedError, match="epochs: 3 -> 10"):
        run(evaluation(data_root, tmp_path / "b", trained[0], load_from=authors, epochs=10))
