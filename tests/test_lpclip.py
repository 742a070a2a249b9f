"""Linear-probe CLIP against an independent computation of the authors' ``lpclip/linear_probe.py``."""

from __future__ import annotations

import glob
import math
import os
import warnings

import numpy as np
import pytest
import torch
from crash_child import kill_at
from sklearn.linear_model import LogisticRegression

from clipcore import backbone
from harness import data, load_clip, results
from harness.config import ConfigError, build_spec
from harness.runner import run
from methods.lpclip import linear_probe


def make_features(seed: int = 0, classes: int = 5, dim: int = 12, train: int = 20, val: int = 8, test: int = 30):
    """Noisy class clusters, float64 holding float32 values (the authors' npz features), labels
    interleaved as in a real split file (not sorted by class)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))

    def split(per_class):
        labels = np.tile(np.arange(classes), per_class)
        rng.shuffle(labels)
        features = centres[labels] + 1.6 * rng.normal(size=(len(labels), dim))
        return features.astype(np.float32).astype(np.float64), labels

    return split(train), split(val), split(test)


def reference(train, val, test, shots, seed, steps=8):
    """The authors' procedure, written out here from PROTOCOL.md 20 with the global legacy generator,
    the default (L2) penalty and fractions, as their script computes them."""
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    np.random.seed(seed)
    tr = []
    for c in np.unique(ytr):
        tr.extend(np.random.choice(np.where(ytr == c)[0], size=shots, replace=False))
    va = []
    for c in np.unique(ytr):
        va.extend(np.random.choice(np.where(yva == c)[0], size={1: 1, 2: 2, 4: 4, 8: 4, 16: 4}[shots], replace=False))

    def fit(c):
        return LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(xtr[tr], ytr[tr])

    def val_acc(clf):
        return sum(clf.predict(xva[va]) == yva[va]) / len(va)

    grid = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    scores = [val_acc(fit(c)) for c in grid]
    best = grid[scores.index(max(scores))]
    lo, hi = math.log10(best / 10), math.log10(best * 10)
    for _ in range(steps):
        left, right = fit(10**lo), fit(10**hi)
        if val_acc(left) < val_acc(right):
            c_final, clf, lo = 10**hi, right, (lo + hi) / 2
        else:
            c_final, clf, hi = 10**lo, left, (lo + hi) / 2
    pred = clf.predict(xte)
    return 100 * sum(pred == yte) / len(pred), c_final


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_linear_probe_equals_the_published_computation(shots, seed):
    train, val, test = make_features()
    expected_acc, expected_c = reference(train, val, test, shots, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated spelling of the penalty (or anything else)
        got = linear_probe(*train, *val, *test, shots=shots, seed=seed, steps=8)
    assert set(got) == {"test_acc", "C"}
    assert got["C"] == pytest.approx(expected_c, rel=1e-6)
    assert got["test_acc"] == pytest.approx(expected_acc, abs=0.01)


def test_the_search_moves_C_and_the_draw_depends_on_the_seed():
    """The cases above are not all alike: the bisection leaves the grid, and seeds give other draws."""
    train, val, test = make_features()
    results = [linear_probe(*train, *val, *test, shots=4, seed=s) for s in (1, 2, 3)]
    assert any(r["C"] not in (1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6) for r in results)
    assert len({(r["C"], r["test_acc"]) for r in results}) > 1
    few, many = (
        np.mean([linear_probe(*train, *val, *test, shots=k, seed=s)["test_acc"] for s in (1, 2, 3)]) for k in (1, 16)
    )
    assert many > few  # more shots, better probe (on these clusters)


def test_a_class_with_too_few_pictures_is_a_clear_error():
    train, val, test = make_features(train=3)
    with pytest.raises(ValueError, match="train split has 3 image"):
        linear_probe(*train, *val, *test, shots=4, seed=1)


# -- linear-probe CLIP as a method the runner runs ----------------------------------------------


def lp_spec(data_root, out, **values):
    base = {
        "method": "lpclip",
        "dataset": "synthetic",
        "data_root": data_root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 2,
        "seed": 2,
        "subsample": "all",
        "num_workers": 0,
        "tracking": "none",
        "experiment": "test",
        "output_dir": os.path.join(str(out), "run"),
    }
    base.update(values)
    return build_spec(base)


def split_features(data_root, split):
    """The tiny CLIP's image features of a split with the test transform, computed here."""
    clip = load_clip("tiny")
    splits = data.build_dataset("synthetic", data_root, num_shots=0, seed=1)
    items = getattr(splits, split)
    transform = data.build_transform(train=False, size=backbone.image_size(clip))
    loader = data.build_loader(items, transform, 100, train=False, num_workers=0)
    with torch.no_grad():
        features = torch.cat([backbone.encode_image(clip, images) for images, _ in loader])
    return features.double().numpy(), np.array([item.label for item in items])


@pytest.fixture(scope="module")
def straight_record(data_root, tmp_path_factory):
    return run(lp_spec(data_root, tmp_path_factory.mktemp("straight")))[0]


def test_the_lpclip_job_records_the_linear_probe_of_its_features(data_root, straight_record):
    expected = linear_probe(
        *split_features(data_root, "train"),
        *split_features(data_root, "val"),
        *split_features(data_root, "test"),
        shots=2,
        seed=2,
    )
    record = straight_record
    assert record["method"] == "lpclip" and record["shots"] == 2 and record["seed"] == 2
    assert record["metrics"]["accuracy"] == pytest.approx(expected["test_acc"], abs=0.01)
    assert record["options"]["C"] == pytest.approx(expected["C"], rel=1e-6)
    assert record["metrics"]["num_trainable_parameters"] == 5 * (backbone.embed_dim(load_clip("tiny")) + 1)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["checkpoint-write:0", "before-eval"])
def test_a_killed_lpclip_job_resumes_to_the_straight_run(data_root, tmp_path, straight_record, moment):
    killed = lp_spec(data_root, tmp_path / "killed")
    kill_at(killed.to_dict(), moment, tmp_path)
    assert results.read_records(str(tmp_path / "killed")) == []
    fitted = os.path.join(killed.output_dir, "linear_probe", "model.pth.tar-0")
    assert os.path.isfile(fitted) == (moment == "before-eval")
    resumed = run(killed)
    assert resumed[0]["metrics"] == straight_record["metrics"]
    assert resumed[0]["options"] == straight_record["options"]
    logs = "".join(open(p).read() for p in glob.glob(os.path.join(killed.output_dir, "log.txt*")))
    assert ("Fit already done" in logs) == (moment == "before-eval")  # a finished fit is not redone


def test_lpclip_on_new_classes_or_another_dataset_is_refused_with_the_reason(data_root, tmp_path):
    with pytest.raises(ConfigError, match="no prompt to carry to new classes"):
        lp_spec(data_root, tmp_path, subsample="base", evaluate=[{"dataset": "synthetic", "subsample": "new"}])
    with pytest.raises(ConfigError, match="shots must be >= 1"):
        lp_spec(data_root, tmp_path, shots=0)
