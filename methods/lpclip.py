"""Linear-probe CLIP: logistic regression on frozen image features (PROTOCOL.md 20; CoOp's ``lpclip/``).

The published computation (KaiyangZhou/CoOp, ``lpclip/linear_probe.py``), for K shots and seed S:

    draw        numpy's legacy generator seeded with S; for each label (sorted) K training and
                min(K, 4) validation features, ``choice(indices of the label, K, replace=False)``,
                training labels first, then validation, from the same stream
    fit(C)      multinomial logistic regression, L2 penalty 1/(2C) ||W||^2, L-BFGS, 1000 iterations
    search      C in 1e6, 1e4, ..., 1e-6 (seven decades): the first best few-shot val accuracy gives c;
                then ``steps`` bisections on log10 C in [c/10, 10c]: fit both ends, keep the right one
                only if its val accuracy is strictly higher, halve the interval towards it
    result      the test accuracy of the last step's kept classifier, and its C

The probe keeps its own draw (numpy's, per shots and seed), not the prompt methods' ``split_fewshot``
files: that is how the published numbers were made.

As a method, ``LinearProbeCLIP`` is fitted once (``fit``, the runner gives it features of the full
train and val splits) and then scores images like every method: ``logits = f W^T + b``, in float64 as
scikit-learn predicts, so its test accuracy is the published one.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bounds import OutOfBounds, Range
from clipcore import backbone
from methods.parts.base import CheckpointError, CLIPMethod
from methods.parts.registry import register_method

# The initial grid of C, strongest regularisation last (linear_probe.py:54).
C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
MAX_ITER = 1000


class NoTransferError(ValueError):
    """The linear probe is asked for classes it was not fitted on."""


def validation_shots(shots: int) -> int:
    """Validation pictures per class: {1: 1, 2: 2, 4: 4, 8: 4, 16: 4} (linear_probe.py:25), i.e. min(K, 4)."""
    return min(shots, 4)


def draw_fewshot(
    labels: np.ndarray, classes: np.ndarray, shots: int, rng: np.random.RandomState, split: str = "train"
) -> np.ndarray:
    """Indices of ``shots`` items of each label in ``classes`` (in that order), drawn without replacement."""
    members = [np.where(labels == label)[0] for label in classes]
    fewest = min(range(len(classes)), key=lambda i: len(members[i]), default=None)
    if fewest is not None and len(members[fewest]) < shots:
        raise OutOfBounds(
            f"the {split} split has {len(members[fewest])} image(s) of class {classes[fewest]} (its fewest), fewer "
            f"than the {shots} per class the linear probe draws: give shots <= {len(members[fewest])}"
            + (" (it draws min(shots, 4) validation images)" if split == "val" else "")
            + ", or a dataset with more images per class."
        )
    chosen = []
    for found in members:
        chosen.extend(rng.choice(found, size=shots, replace=False))
    return np.asarray(chosen, dtype=np.int64)


# Below this many multiply-adds per gradient (samples x features x classes) the fit runs on one BLAS
# thread: the few-shot problems are tiny, and threads that wait for each other cost more than they
# bring (measured 12x slower on a busy 2-core machine). The thread count does not change the fit.
SINGLE_THREAD_WORK = 10_000_000


def fit_logistic(features: np.ndarray, labels: np.ndarray, C: float) -> LogisticRegression:
    # l1_ratio=0 is the L2 penalty: scikit-learn >= 1.8 spells it so (``penalty="l2"`` is deprecated
    # there, same fit); lbfgs on several classes is the multinomial loss, as in the published script.
    classifier = LogisticRegression(solver="lbfgs", max_iter=MAX_ITER, l1_ratio=0.0, C=C)
    small = features.size * len(np.unique(labels)) < SINGLE_THREAD_WORK
    with threadpool_limits(1) if small else nullcontext():
        return classifier.fit(features, labels)


def accuracy(classifier: LogisticRegression, features: np.ndarray, labels: np.ndarray) -> float:
    """Percent of ``features`` whose predicted label is ``labels``."""
    return 100.0 * float(np.mean(classifier.predict(features) == labels))


def search_C(
    train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray, steps: int
) -> tuple[float, LogisticRegression, float]:
    """(C, the classifier fitted with it, its val accuracy): the published grid, then ``steps`` bisections."""
    grid_acc = [accuracy(fit_logistic(train_features, train_labels, c), val_features, val_labels) for c in C_GRID]
    peak = C_GRID[int(np.argmax(grid_acc))]  # first best
    left, right = 0.1 * peak, 10.0 * peak
    chosen = None
    for _ in range(steps):
        fits = [fit_logistic(train_features, train_labels, c) for c in (left, right)]
        acc_left, acc_right = (accuracy(f, val_features, val_labels) for f in fits)
        # The bisection runs on log10 C; the kept end becomes one bound, the log-midpoint the other.
        middle = 0.5 * (np.log10(right) + np.log10(left))
        if acc_left < acc_right:
            chosen = (right, fits[1], acc_right)
            left, right = np.power(10, middle), np.power(10, np.log10(right))
        else:
            chosen = (left, fits[0], acc_left)
            left, right = np.power(10, np.log10(left)), np.power(10, middle)
    if chosen is None:  # no bisection asked: the grid's best
        chosen = (peak, fit_logistic(train_features, train_labels, peak), max(grid_acc))
    return float(chosen[0]), chosen[1], chosen[2]


def fit_fewshot(
    train_features, train_labels, val_features, val_labels, *, shots: int, seed: int, steps: int = 8
) -> tuple[float, LogisticRegression, float]:
    """Draw (shots, seed) as published, search C, return (C, classifier, few-shot val accuracy)."""
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    if shots < 1:
        raise ValueError(f"The linear probe needs shots >= 1, got {shots}.")
    rng = np.random.RandomState(seed)  # the legacy generator that np.random.seed(seed) seeds
    classes = np.unique(train_labels)  # the training labels, sorted, for both draws (linear_probe.py:33)
    train_idx = draw_fewshot(train_labels, classes, shots, rng, "train")
    val_idx = draw_fewshot(val_labels, classes, validation_shots(shots), rng, "val")
    return search_C(
        np.asarray(train_features)[train_idx],
        train_labels[train_idx],
        np.asarray(val_features)[val_idx],
        val_labels[val_idx],
        steps,
    )


def linear_probe(
    train_features,
    train_labels,
    val_features,
    val_labels,
    test_features,
    test_labels,
    *,
    shots: int,
    seed: int,
    steps: int = 8,
) -> dict:
    """The published linear probe for one (shots, seed): ``{"test_acc": percent, "C": float}``.

    Arrays in split order: features [N, E] (float64, as the authors' npz files, which hold fp16 values: their
    extractor runs CLIP on CUDA, where it stays fp16, PROTOCOL.md 20.2), integer labels [N].
    """
    C, classifier, _ = fit_fewshot(
        train_features, train_labels, val_features, val_labels, shots=shots, seed=seed, steps=steps
    )
    return {"test_acc": accuracy(classifier, np.asarray(test_features), np.asarray(test_labels)), "C": C}


@register_method("lpclip")
class LinearProbeCLIP(CLIPMethod):
    """Linear-probe CLIP as a method: ``fit`` once on frozen features, then ``logits = f W^T + b``.

    ``W`` [K, E] and ``b`` [K] are scikit-learn's ``coef_`` and ``intercept_`` (float64), kept as
    buffers of ``prompt_learner`` with the chosen ``C``, so the checkpoint holds the whole classifier.
    """

    label = "Linear probe"
    paper = "Radford et al., ICML"
    year = 2021
    source = "KaiyangZhou/CoOp@ff61507 lpclip/"
    color = "#000000"
    default_config = "lpclip/vit_b16"
    checkpoint_folder = "linear_probe"
    fits_features = True
    transfers_to_other_classes = False

    # Past ~60 halvings the bisection of a float64 C changes nothing; 8 is published.
    def __init__(self, clip_model, classnames, *, steps: Annotated[int, Range(0, 64)] = 8, dataset: str | None = None):
        """steps: bisection steps of the C search after the seven-decade grid (``--num_step``, published 8);
        dataset: the dataset's key, for the error when it has fewer images per class than the shots."""
        super().__init__(clip_model, classnames)
        self.steps = int(steps)
        self.dataset = dataset
        dim = backbone.embed_dim(clip_model)
        learner = self.prompt_learner
        learner.register_buffer("weight", torch.zeros(self.num_classes, dim, dtype=torch.float64))
        learner.register_buffer("bias", torch.zeros(self.num_classes, dtype=torch.float64))
        learner.register_buffer("C", torch.tensor(float("nan"), dtype=torch.float64))
        learner.register_buffer("val_acc", torch.tensor(float("nan"), dtype=torch.float64))

    def fit(self, train_features, train_labels, val_features, val_labels, seed: int, shots: int) -> None:
        """The published draw and C search on features of the full train and val splits."""
        try:
            C, classifier, val_acc = fit_fewshot(
                as_float64(train_features),
                np.asarray(train_labels),
                as_float64(val_features),
                np.asarray(val_labels),
                shots=shots,
                seed=seed,
                steps=self.steps,
            )
        except OutOfBounds as error:  # too few images for the shots: known only now, with the data
            raise OutOfBounds(f"{self.dataset or 'This dataset'}: {error}") from None
        coef, intercept = classifier.coef_, classifier.intercept_
        if len(classifier.classes_) == 2:  # scikit-learn keeps one row, for the second class: d > 0 -> class 1
            coef, intercept = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        learner = self.prompt_learner
        device = learner.weight.device
        learner.weight.zero_()
        # A class absent from the training features can never be predicted (as scikit-learn's).
        learner.bias.fill_(-float("inf"))
        rows = torch.as_tensor(classifier.classes_, dtype=torch.long, device=device)
        learner.weight[rows] = torch.as_tensor(coef, dtype=torch.float64, device=device)
        learner.bias[rows] = torch.as_tensor(intercept, dtype=torch.float64, device=device)
        learner.C.fill_(C)
        learner.val_acc.fill_(val_acc)

    @property
    def fitted(self) -> bool:
        return not bool(torch.isnan(self.prompt_learner.C))

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("The linear probe is not fitted: call fit(...) or load its checkpoint first.")
        learner = self.prompt_learner
        # float64, as scikit-learn's decision function: the same predictions, ties included
        return image_features.to(torch.float64) @ learner.weight.T + learner.bias

    def num_trainable_parameters(self) -> int:
        return self.prompt_learner.weight.numel() + self.prompt_learner.bias.numel()

    def record_options(self) -> dict:
        learner = self.prompt_learner
        return {"steps": self.steps, "C": float(learner.C), "val_acc": float(learner.val_acc)}

    def load_checkpoint_state_dict(self, state: dict, path: str = "<state dict>") -> None:
        super().load_checkpoint_state_dict(state, path)
        if not self.fitted:
            raise CheckpointError(f"{path} holds an unfitted linear probe (C is NaN): fit it again.")


def as_float64(features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().to(torch.float64).numpy()
    return np.asarray(features, dtype=np.float64)
