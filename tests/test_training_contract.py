"""The training contract's later extensions: per-group learning rates under the warm-up and cosine
schedule, the optimiser and crop run keys (left out of existing identities at their defaults), the
``subsample`` build argument, and a method's own ``backward``."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from fake_data import make_synthetic_dataset

import methods
from harness import data
from harness.checkpoint import spec_differences
from harness.config import LATER_TRAINING_KEYS, TRAINING_KEYS, ConfigError, RunSpec, build_spec
from harness.runner import build_optimizer, build_scheduler, run
from methods.coop import CoOp
from methods.parts.registry import METHODS, register_method

# -- learning-rate groups -------------------------------------------------------------------------


def test_every_group_warms_up_at_warmup_lr_then_follows_its_own_cosine():
    scaled, plain, absolute = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    groups = [{"params": [scaled], "lr_scale": 6.5}, {"params": [plain]}, {"params": [absolute], "lr": 0.1}]
    epochs, lr, warmup_lr = 10, 0.0035, 1e-5
    spec = RunSpec(epochs=epochs, lr=lr, warmup_lr=warmup_lr)
    optimizer = build_optimizer(groups, spec)
    scheduler = build_scheduler(optimizer, spec)
    seen = []
    for _ in range(epochs):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    # Dassl: ConstantWarmupScheduler returns cons_lr for every group during the warm-up epoch; then
    # CosineAnnealingLR (T_max = epochs) restarted at 0, from each group's own base rate.
    for e, rates in enumerate(seen, start=1):
        for rate, base in zip(rates, (lr * 6.5, lr, 0.1)):
            expected = warmup_lr if e == 1 else base * (1 + math.cos(math.pi * (e - 2) / epochs)) / 2
            assert rate == pytest.approx(expected, rel=1e-12, abs=1e-15), (e, base)
    assert "lr_scale" not in optimizer.param_groups[0]


def test_a_group_with_lr_and_lr_scale_is_an_error():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="both 'lr' and 'lr_scale'"):
        build_optimizer([{"params": [p], "lr": 0.1, "lr_scale": 2.0}], RunSpec())


def test_adam_is_dasslss_with_the_runs_eps_and_weight_decay():
    p0 = torch.tensor([0.5, -1.0, 2.0])
    grad = torch.tensor([0.1, 0.2, -0.3])
    spec = RunSpec(optimizer="adam", adam_eps=1e-3, lr=0.002, weight_decay=5e-4)
    p = torch.nn.Parameter(p0.clone())
    optimizer = build_optimizer([{"params": [p]}], spec)
    assert isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW)
    p.grad = grad.clone()
    optimizer.step()
    # One Adam step with L2 weight decay in the gradient (torch.optim.Adam, as Dassl's optimizer.py builds it).
    g = grad + 5e-4 * p0
    m_hat, v_hat = (1 - 0.9) * g / (1 - 0.9), (1 - 0.999) * g * g / (1 - 0.999)
    assert torch.allclose(p.detach(), p0 - 0.002 * m_hat / (v_hat.sqrt() + 1e-3), atol=1e-7)
    adamw = build_optimizer([{"params": [torch.nn.Parameter(p0.clone())]}], RunSpec(optimizer="adamw"))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["eps"] == 1e-8


# -- the run keys ---------------------------------------------------------------------------------


def test_new_keys_stay_out_of_the_training_identity_at_their_defaults():
    default = RunSpec(method="coop", dataset="x")
    assert list(default.training_identity()) == list(TRAINING_KEYS)  # as before the keys existed
    assert {k: getattr(default, k) for k in LATER_TRAINING_KEYS} == LATER_TRAINING_KEYS
    changed = RunSpec(method="coop", dataset="x", optimizer="adam", adam_eps=1e-3, crop_scale=[0.5, 1.0])
    assert changed.training_identity() == {
        **default.training_identity(),
        "optimizer": "adam",
        "adam_eps": 1e-3,
        "crop_scale": [0.5, 1.0],
    }
    # A checkpoint written before the keys existed matches a default spec, not a changed one.
    assert spec_differences(default.training_identity(), default.training_identity()) == {}
    assert spec_differences(default.training_identity(), changed.training_identity())["optimizer"] == ("sgd", "adam")


def test_new_keys_are_in_a_fingerprint_only_when_set_and_only_for_what_trains():
    from harness.fingerprint import settings_of

    base = {"dataset": "x", "data_root": "/d", "output_dir": "/o"}
    assert set(settings_of(RunSpec(method="coop", **base), data="d")).isdisjoint(LATER_TRAINING_KEYS)
    adam = settings_of(RunSpec(method="coop", optimizer="adam", adam_eps=1e-3, **base), data="d")
    assert (adam["optimizer"], adam["adam_eps"]) == ("adam", 1e-3)
    zero_shot = settings_of(RunSpec(method="zsclip", optimizer="adam", crop_scale=[0.5, 1.0], **base), data="d")
    assert set(zero_shot).isdisjoint(LATER_TRAINING_KEYS)  # zero-shot CLIP trains nothing


@pytest.mark.parametrize(
    "change, message",
    [
        ({"optimizer": "rmsprop"}, r"'optimizer' must be a string one of sgd \| adam \| adamw, got 'rmsprop'"),
        ({"adam_eps": 0.0}, r"'adam_eps' must be a finite number > 0, got 0.0"),
        ({"crop_scale": [0.5]}, r"'crop_scale' must be .* \[min, max\] with 0 < min <= max <= 1"),
        ({"crop_scale": [0.9, 0.5]}, r"'crop_scale' must be .* \[min, max\]"),
        ({"crop_scale": "0.5"}, "crop_scale"),
    ],
)
def test_bad_new_keys_are_clear_errors(tmp_path, change, message):
    values = {"method": "coop", "dataset": "synthetic", "data_root": "/d", "output_dir": str(tmp_path), **change}
    with pytest.raises(ConfigError, match=message):
        build_spec(values)


def test_crop_scale_reaches_the_training_crop():
    crop = data.build_transform(train=True, size=32, crop_scale=(0.5, 1.0)).transforms[0]
    assert crop.scale == (0.5, 1.0)
    assert data.build_transform(train=True, size=32).transforms[0].scale == (0.08, 1.0)


# -- subsample ------------------------------------------------------------------------------------


@pytest.fixture
def subsample_method():
    @register_method("_test_subsample")
    class Recorder(CoOp):
        def __init__(self, clip_model, classnames, *, n_ctx: int = 4, subsample: str = "all"):
            super().__init__(clip_model, classnames, n_ctx=n_ctx)
            self.subsample = subsample

    yield "_test_subsample"
    del METHODS["_test_subsample"]


def test_subsample_goes_to_methods_that_take_it_and_no_others(tiny_clip, classnames, subsample_method):
    assert methods.build_method(subsample_method, tiny_clip, classnames, subsample="new").subsample == "new"
    assert methods.build_method(subsample_method, tiny_clip, classnames).subsample == "all"
    assert "subsample" not in methods.method_options(subsample_method)  # an argument, not a user option
    methods.build_method("coop", tiny_clip, classnames, subsample="base")  # ignored
    with pytest.raises(ValueError, match="subsample must be one of"):
        methods.build_method("coop", tiny_clip, classnames, subsample="novel")


# -- a method's own backward, in a run ------------------------------------------------------------


@pytest.fixture
def doubled_gradient_method():
    """CoOp whose update is twice its loss's gradient, through ``backward``; counts its calls."""
    calls = []

    @register_method("_test_backward")
    class Doubled(CoOp):
        def backward(self, images, labels, details=None, *, loss_scale=1.0):
            calls.append(loss_scale)
            loss = self.training_loss(images, labels, details=details)
            (2.0 * loss * loss_scale).backward()
            return loss

    yield "_test_backward", calls
    del METHODS["_test_backward"]


def test_the_runner_uses_a_methods_backward_its_optimizer_and_crop(tmp_path, doubled_gradient_method, monkeypatch):
    name, calls = doubled_gradient_method
    root = str(tmp_path / "data")
    make_synthetic_dataset(root, num_classes=4, train_per_class=4, val_per_class=1, test_per_class=2, image_size=32)
    crops = []
    build_transform = data.build_transform
    monkeypatch.setattr(
        data, "build_transform", lambda *a, **k: crops.append(k.get("crop_scale")) or build_transform(*a, **k)
    )
    values = {
        "method": name,
        "dataset": "synthetic",
        "data_root": root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 2,
        "epochs": 2,
        "warmup_epochs": 0,
        "batch_size": 4,
        "num_workers": 0,
        "tracking": "none",
        "optimizer": "adam",
        "adam_eps": 1e-3,
        "crop_scale": [0.5, 1.0],
        "output_dir": os.path.join(str(tmp_path), "run"),
    }
    run(build_spec(values))
    assert calls == [1.0] * 4  # 8 images, batch 4, 2 epochs; no scaler: factor 1
    assert (0.5, 1.0) in crops
    saved = torch.load(os.path.join(values["output_dir"], "prompt_learner", "model.pth.tar-2"), weights_only=False)
    assert set(saved["optimizer"]["state"][0]) >= {"exp_avg", "exp_avg_sq"}  # Adam's state
    assert saved["spec"]["optimizer"] == "adam" and saved["spec"]["crop_scale"] == [0.5, 1.0]


def test_a_scaled_backward_then_unscaled_is_the_update(tiny_clip, classnames, doubled_gradient_method):
    # What the runner's GradScaler does with a method's backward: factor in, divided out before the step.
    name, _ = doubled_gradient_method
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3])
    grads = []
    for scale in (1.0, 1024.0):
        model = methods.build_method(name, tiny_clip, classnames).train()
        torch.manual_seed(0)
        model.backward(images, labels, loss_scale=scale)
        grads.append(model.prompt_learner.ctx.grad / scale)
    model = methods.build_method(name, tiny_clip, classnames).train()
    (2.0 * F.cross_entropy(model(images), labels)).backward()
    assert torch.equal(grads[0], grads[1]) and torch.allclose(grads[0], model.prompt_learner.ctx.grad)
