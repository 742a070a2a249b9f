"""Tip-Adapter and Tip-Adapter-F against an independent computation of gaopengcuhk/Tip-Adapter's ``main.py`` and
``utils.py`` (docs/PROTOCOL-successors-3-fewshot.md "Tip-Adapter"), written out here line by line."""

from __future__ import annotations

import glob
import math
import os

import pytest
import torch
import torch.nn.functional as F
from crash_child import kill_at

from bounds import OutOfBounds
from harness import backbone, load_clip, results
from harness.config import build_spec
from harness.runner import run
from methods import build_method
from methods.parts.base import CheckpointError

NAMES = ["cat", "dog", "red_car", "tree", "boat"]
SHOTS = 2


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("tiny")


def fake_pass(seed: int, n: int, dim: int) -> torch.Tensor:
    """Unnormalised 'image features' of one augmented pass, a function of its seed."""
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, dim, generator=g) + 0.5


def world(clip, n_val: int = 40):
    """Training labels (interleaved, as a split file), a recording ``augmented``, val features and labels."""
    dim = backbone.embed_dim(clip)
    labels = torch.arange(len(NAMES)).repeat(SHOTS)
    calls: list[int] = []

    def augmented(seed):
        calls.append(seed)
        return fake_pass(seed, len(labels), dim)

    g = torch.Generator().manual_seed(99)
    val_y = torch.randint(0, len(NAMES), (n_val,), generator=g)
    val_f = 3.0 * torch.randn(n_val, dim, generator=g)
    return labels, augmented, calls, val_f, val_y


# -- the authors' computation, written out ------------------------------------------------------------


def ref_text(clip, names, templates):
    """utils.py:18-35: per class, each template normalised, the mean normalised; stacked [D, C]."""
    rows = []
    with torch.no_grad():
        for name in names:
            e = backbone.encode_texts(clip, [t.format(name.replace("_", " ")) for t in templates]).float()
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(dim=0)
            rows.append(m / m.norm())
    return torch.stack(rows, dim=1)


def ref_cache(passes, labels, classes):
    """utils.py:46-62: stack the passes, mean, normalise, permute; one-hot values."""
    keys = torch.cat([p.unsqueeze(0) for p in passes], dim=0).mean(dim=0)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    return keys.permute(1, 0), F.one_hot(labels, classes).float()


def ref_logits(f, clip_weights, keys, values, beta, alpha):
    """main.py:32-42 (f normalised as utils.py:83)."""
    f = f / f.norm(dim=-1, keepdim=True)
    clip_logits = 100.0 * f @ clip_weights
    affinity = f @ keys
    cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
    return clip_logits + cache_logits * alpha


def cls_acc(output, target):
    pred = output.topk(1, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return 100 * float(correct[:1].reshape(-1).float().sum(0)) / target.shape[0]


def ref_search(scale, step, f, labels, clip_weights, keys, values):
    """utils.py:103-129."""
    beta_list = [i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]
    alpha_list = [i * (scale[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            acc = cls_acc(ref_logits(f, clip_weights, keys, values, beta, alpha), labels)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha, best_acc


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# -- Tip-Adapter -----------------------------------------------------------------------------------


def test_cache_logits_and_search_equal_the_authors_computation(clip):
    labels, augmented, calls, val_f, val_y = world(clip)
    opts = dict(init_beta=1.0, init_alpha=1.17, search_scale=[7.0, 3.0], search_step=[30, 10], augment_epoch=4)
    model = build_method("tip_adapter", clip, NAMES, **opts)
    model.fit(None, labels.numpy(), val_f, val_y.numpy(), seed=3, shots=SHOTS, augmented=augmented)
    assert len(calls) == 4 and len(set(calls)) == 4  # one pass per augment epoch, each its own crops
    W = ref_text(clip, NAMES, ["a photo of a {}."])
    keys, values = ref_cache([fake_pass(s, len(labels), W.shape[0]) for s in calls], labels, len(NAMES))
    assert rel(model.prompt_learner.cache_keys, keys) < 1e-5
    assert torch.equal(model.prompt_learner.cache_values, values)
    beta, alpha, acc = ref_search([7.0, 3.0], [30, 10], val_f, val_y, W, keys, values)
    learner = model.prompt_learner
    assert (float(learner.beta), float(learner.alpha)) == pytest.approx((beta, alpha), rel=1e-9)
    assert float(learner.val_acc) == pytest.approx(acc)
    assert 0 < acc < 100  # the search had something to choose
    test_f = 2.0 * torch.randn(16, W.shape[0], generator=torch.Generator().manual_seed(5))
    ours = model.logits_from_features(test_f)
    assert rel(ours, ref_logits(test_f, W, keys, values, beta, alpha)) < 1e-4
    # the cache moves the logits away from zero-shot CLIP's
    assert rel(ours, 100.0 * F.normalize(test_f, dim=-1) @ W) > 1e-3


def test_the_search_keeps_the_first_best_and_search_false_keeps_the_initial_values(clip):
    labels, augmented, _, val_f, val_y = world(clip)
    # a one-value grid: beta 0.1, alpha 0.1 whatever the scale
    model = build_method("tip_adapter", clip, NAMES, search_step=[1, 1], augment_epoch=1)
    model.fit(None, labels, val_f, val_y, seed=1, shots=SHOTS, augmented=augmented)
    assert (float(model.prompt_learner.beta), float(model.prompt_learner.alpha)) == pytest.approx((0.1, 0.1))
    kept = build_method("tip_adapter", clip, NAMES, search=False, init_beta=2.5, init_alpha=0.7, augment_epoch=1)
    kept.fit(None, labels, val_f, val_y, seed=1, shots=SHOTS, augmented=augmented)
    assert (float(kept.prompt_learner.beta), float(kept.prompt_learner.alpha)) == (2.5, pytest.approx(0.7))


def test_a_search_that_scores_nothing_turns_the_cache_off_and_says_so(clip, caplog):
    """The authors' search keeps (0, 0) when no pair classifies a validation image: the cache is then off and
    the scores are zero-shot CLIP's, which a warning says (a number that looks like Tip-Adapter's otherwise)."""
    labels, augmented, _, val_f, _ = world(clip)
    # the one pair of a one-value grid (beta 0.1, alpha 0.1), and validation labels it gets all wrong
    probe = build_method("tip_adapter", clip, NAMES, search=False, init_beta=0.1, init_alpha=0.1, augment_epoch=1)
    probe.fit(None, labels, val_f, torch.zeros(len(val_f), dtype=torch.long), seed=1, shots=SHOTS, augmented=augmented)
    with torch.no_grad():
        predicted = probe.tip_logits(F.normalize(val_f, dim=-1), 0.1, 0.1).argmax(-1)
    wrong = (predicted + 1) % len(NAMES)
    model = build_method("tip_adapter", clip, NAMES, search_step=[1, 1], augment_epoch=1)
    with caplog.at_level("WARNING"):
        model.fit(None, labels, val_f, wrong, seed=1, shots=SHOTS, augmented=augmented)
    assert (float(model.prompt_learner.beta), float(model.prompt_learner.alpha)) == (0.0, 0.0)
    assert "the cache is off" in caplog.text and f"{len(val_f)} validation images" in caplog.text
    caplog.clear()
    model.fit(None, labels, val_f, predicted, seed=1, shots=SHOTS, augmented=augmented)  # every one right
    assert float(model.prompt_learner.alpha) == pytest.approx(0.1) and "cache is off" not in caplog.text


def test_published_values_per_dataset(clip):
    eurosat = build_method("tip_adapter_f", clip, NAMES, dataset="eurosat")
    assert (eurosat.init_alpha, eurosat.search_scale, eurosat.train_epoch) == (2.0, (12.0, 10.0), 100)
    assert eurosat.templates == ["a centered satellite photo of {}."]
    flowers = build_method("tip_adapter", clip, NAMES, dataset="oxford_flowers")
    assert (flowers.init_beta, flowers.init_alpha, flowers.search_scale) == (1.0, 10.0, (50.0, 50.0))
    imagenet = build_method("tip_adapter_f", clip, NAMES, dataset="imagenet")
    assert len(imagenet.templates) == 7 and imagenet.train_epoch == 20
    assert build_method("tip_adapter", clip, NAMES, dataset="imagenet", init_alpha=4.0).init_alpha == 4.0


@pytest.mark.parametrize(
    "method, options",
    [
        ("tip_adapter", {"search_scale": [0.05, 3.0]}),
        ("tip_adapter", {"search_scale": [7.0]}),
        ("tip_adapter", {"search_step": [0, 20]}),
        ("tip_adapter", {"augment_epoch": 0}),
        ("tip_adapter", {"init_alpha": -1.0}),
        ("tip_adapter_f", {"lr": -0.001}),
        ("tip_adapter_f", {"batch_size": 0}),
        ("tip_adapter_f", {"augment_epoch": 0}),  # Tip-Adapter's options, passed on, keep their ranges
    ],
)
def test_options_out_of_range_are_refused(clip, method, options):
    with pytest.raises(OutOfBounds, match=next(iter(options))):
        build_method(method, clip, NAMES, **options)


def test_the_training_free_method_has_no_training_options(clip):
    with pytest.raises(TypeError, match="train_epoch"):
        build_method("tip_adapter", clip, NAMES, train_epoch=5)


# -- Tip-Adapter-F ----------------------------------------------------------------------------------


def test_fine_tuning_loss_and_update_equal_the_authors_step(clip, monkeypatch):
    """One epoch of one batch (batch 256 > N): main.py:91-106 with AdamW(lr, eps 1e-4, wd 0.01). The gradient
    handed to AdamW equals the authors' within 1e-4; the step is AdamW's first on that gradient."""
    labels, augmented, calls, val_f, val_y = world(clip)
    lr = 0.01
    handed = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        handed.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    model = build_method(
        "tip_adapter_f", clip, NAMES, train_epoch=1, lr=lr, augment_epoch=3, search_step=[5, 5], init_alpha=2.0
    )
    model.fit(None, labels, val_f, val_y, seed=7, shots=SHOTS, augmented=augmented)
    assert len(handed) == 1 and len(handed[0]) == 1  # one step, of the keys alone
    assert len(calls) == 4 and len(set(calls)) == 4  # 3 cache passes, then the epoch's own crops
    W = ref_text(clip, NAMES, ["a photo of a {}."])
    dim = W.shape[0]
    keys, values = ref_cache([fake_pass(s, len(labels), dim) for s in calls[:3]], labels, len(NAMES))
    f = fake_pass(calls[3], len(labels), dim)
    f = f / f.norm(dim=-1, keepdim=True)
    weight = keys.t().clone().requires_grad_(True)  # main.py:69-70
    affinity = f @ weight.t()
    tip_logits = 100.0 * f @ W + ((-1) * (1.0 - 1.0 * affinity)).exp() @ values * 2.0
    loss = F.cross_entropy(tip_logits, labels)
    (grad,) = torch.autograd.grad(loss, weight)
    (ours,) = handed[0]
    assert rel(ours, grad) < 1e-4
    # AdamW's first step: decay, then m_hat / (sqrt(v_hat) + eps) with m_hat = g, v_hat = g^2 (near eps, g / (|g| +
    # eps) magnifies fp32 rounding of g, so the step is checked on the gradient it was handed)
    expected = keys.t() * (1 - lr * 0.01) - lr * ours / (ours.abs() + 1e-4)
    update = model.prompt_learner.adapter_weight - keys.t()
    assert rel(update, expected - keys.t()) < 1e-4
    assert update.abs().max() > 1e-4  # it moved
    fresh = build_method("tip_adapter_f", clip, NAMES, init_alpha=2.0)
    fresh.prompt_learner.cache_values = values
    fresh.prompt_learner.adapter_weight = torch.nn.Parameter(keys.t().clone())
    details: dict = {}
    our_loss = fresh.step_loss(fake_pass(calls[3], len(labels), dim), labels, details)
    assert float(our_loss) == pytest.approx(float(loss), rel=1e-5)
    assert rel(details["logits"], tip_logits.detach()) < 1e-4
    # the search then runs with the fine-tuned keys
    beta, alpha, _ = ref_search(
        model.search_scale, [5, 5], val_f, val_y, W, model.prompt_learner.adapter_weight.detach().t(), values
    )
    assert (float(model.prompt_learner.beta), float(model.prompt_learner.alpha)) == pytest.approx((beta, alpha))


def test_the_schedule_is_a_cosine_over_every_step(clip):
    model = build_method("tip_adapter_f", clip, NAMES, lr=0.001)
    model.prompt_learner.adapter_weight = torch.nn.Parameter(torch.zeros(4, 3))
    optimizer, scheduler = model.build_optimizer(steps=6)
    assert optimizer.defaults["eps"] == 1e-4 and optimizer.defaults["weight_decay"] == 0.01
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.001 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6)])


# -- through the runner: a job, its checkpoint, kill and resume --------------------------------------


def tip_spec(data_root, out, **values):
    base = {
        "method": "tip_adapter_f",
        "config": "tip_adapter_f/vit_b16",
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
        "options": {"train_epoch": 3, "batch_size": 4, "augment_epoch": 2, "search_step": [20, 10]},
        "output_dir": os.path.join(str(out), "run"),
    }
    base.update(values)
    return build_spec(base)


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    spec = tip_spec(data_root, tmp_path_factory.mktemp("straight"))
    return spec, run(spec)[0]


def test_the_job_records_the_fitted_model_and_its_checkpoint_scores_the_same(data_root, straight, clip):
    spec, record = straight
    assert record["method"] == "tip_adapter_f" and record["options"]["train_epoch"] == 3
    assert record["options"]["search_scale"] == [7.0, 3.0]  # ImageNet's: the synthetic set has no config
    saved = os.path.join(spec.output_dir, "tip_adapter_f", "model.pth.tar-0")
    model = build_method("tip_adapter_f", load_clip("tiny"), [f"c{i}" for i in range(5)])
    model.load_prompt_checkpoint(saved)
    learner = model.prompt_learner
    assert learner.adapter_weight.shape == (10, backbone.embed_dim(load_clip("tiny")))  # 2 shots x 5 classes
    assert float(learner.beta) == pytest.approx(record["options"]["beta"])
    # the authors' bare tensors beside it, where their main.py (load_cache: True) run in that folder reads them
    caches = os.path.join(spec.output_dir, "tip_adapter_f", "caches", "synthetic")
    assert sorted(os.listdir(caches)) == ["best_F_2shots.pt", "keys_2shots.pt", "values_2shots.pt"]
    keys, values, best_f = (torch.load(os.path.join(caches, f"{n}_2shots.pt")) for n in ("keys", "values", "best_F"))
    assert torch.equal(keys, learner.cache_keys) and torch.equal(best_f, learner.adapter_weight)
    assert keys.shape == (backbone.embed_dim(load_clip("tiny")), 10) and values.shape == (10, 5)
    assert torch.equal(values, learner.cache_values) and set(values.sum(1).tolist()) == {1.0}  # one-hot rows
    other = build_method("tip_adapter_f", load_clip("tiny"), ["a", "b", "c"])
    with pytest.raises(CheckpointError, match="other classes"):
        other.load_prompt_checkpoint(saved)
    again = run(tip_spec(data_root, os.path.dirname(spec.output_dir) + "-again"))[0]
    assert again["metrics"] == record["metrics"] and again["options"] == record["options"]  # deterministic


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["checkpoint-write:0", "before-eval"])
def test_a_killed_job_resumes_to_the_straight_run(data_root, tmp_path, straight, moment):
    _, record = straight
    killed = tip_spec(data_root, tmp_path / "killed")
    kill_at(killed.to_dict(), moment, tmp_path)
    assert results.read_records(str(tmp_path / "killed")) == []
    resumed = run(killed)
    assert resumed[0]["metrics"] == record["metrics"]
    assert resumed[0]["options"] == record["options"]
    logs = "".join(open(p).read() for p in glob.glob(os.path.join(killed.output_dir, "log.txt*")))
    assert ("Fit already done" in logs) == (moment == "before-eval")
