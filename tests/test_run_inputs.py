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
