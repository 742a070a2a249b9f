"""Linear-probe CLIP against an independent computation of the authors' ``lpclip/linear_probe.py``."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

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
    with pytest.raises(ValueError, match="train split has 3 item"):
        linear_probe(*train, *val, *test, shots=4, seed=1)
