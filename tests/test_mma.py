"""MMA (PROTOCOL-successors-3.md MMA) on small random CLIPs: both towers with the adapters written out block by
block (no hooks, no truncation), the logits, the loss and the update of every adapter tensor (with the two
gradient-scale layers written another way), the blocks that carry adapters, what trains and its
initialisation, the options refused, base/new through the authors' checkpoint, a killed run resumed, the
published configs, and the precisions."""

import pytest
import torch
import torch.nn.functional as F
from crash_child import kill_at
from fake_data import make_synthetic_dataset, tiny_run

import methods
from bounds import OutOfBounds
from harness import backbone, results
from harness.checkpoint import latest_checkpoint
from harness.config import build_spec
from harness.runner import run


@pytest.fixture(scope="module")
def clip12():
    """A small CLIP with 12 blocks in both towers, so the published blocks 5..12 exist."""
    return backbone.freeze(backbone.build_random_clip("tiny", text_layers=12, vision_layers=12, image_size=64))


@pytest.fixture
def images64():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def build(clip, names, seed=0, **options):
    torch.manual_seed(seed)
    return methods.build_method("mma", clip, names, **options)


def perturbed(model, size=0.5, seed=1):
    """Move every adapter tensor away from its initialisation (the biases start at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(size * torch.randn(p.shape, generator=g).to(p))
    return model


# -- the computation written out (clip/model.py:188-206, 254-298; trainers/mmadapter.py:139-147, 184-207) --


def scaled_gradient(x, scale):
    """Forward x; backward: the gradient times ``scale`` (written without a custom autograd function)."""
    return x * scale + (x - x * scale).detach()


def adapter(weights, tower, i, x):
    """up(shared(down(x))) from the authors' state-dict names."""
    w = lambda name: weights[f"{name}.weight"]  # noqa: E731
    b = lambda name: weights[f"{name}.bias"]  # noqa: E731
    h = F.relu(F.linear(x, w(f"{tower}.{i}.down.0"), b(f"{tower}.{i}.down.0")))
    h = F.relu(F.linear(h, w(f"shared_adapter.{i}.0"), b(f"shared_adapter.{i}.0")))
    return F.linear(h, w(f"{tower}.{i}.up"), b(f"{tower}.{i}.up"))


def adapted_block(block, x, weights, tower, i, s, mask=None, gradient_scaling=True):
    gs = scaled_gradient if gradient_scaling else (lambda x, scale: x)
    y = block.ln_1(gs(x, s))
    y = gs(adapter(weights, tower, i, y) * s, 1.0 / s)
    return block(x, attn_mask=mask) + y


def reference_text(clip, names, weights, blocks, s, gradient_scaling=True, template="a photo of a {}."):
    ids = backbone.tokenize([template.format(n.replace("_", " ")) for n in names])
    x = clip.token_embedding(ids)
    if 0 in blocks:
        x = x + s * adapter(weights, "text_adapter", 0, x)
    x = x + clip.positional_embedding
    for i, block in enumerate(clip.transformer.resblocks, start=1):
        if i in blocks:
            x = adapted_block(block, x, weights, "text_adapter", i, s, clip.attn_mask, gradient_scaling)
        else:
            x = block(x, attn_mask=clip.attn_mask)
    return clip.ln_final(x)[torch.arange(len(names)), ids.argmax(-1)] @ clip.text_projection


def reference_image(clip, images, weights, blocks, s, gradient_scaling=True):
    v = clip.visual
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    if 0 in blocks:
        x = x + s * adapter(weights, "visual_adapter", 0, x)
    for i, block in enumerate(v.transformer.resblocks, start=1):
        if i in blocks:
            x = adapted_block(block, x, weights, "visual_adapter", i, s, None, gradient_scaling)
        else:
            x = block(x)
    return v.ln_post(x[:, 0]) @ v.proj


def reference_logits(clip, names, images, weights, blocks, s, gradient_scaling=True):
    text = F.normalize(reference_text(clip, names, weights, blocks, s, gradient_scaling), dim=-1)
    image = F.normalize(reference_image(clip, images, weights, blocks, s, gradient_scaling), dim=-1)
    return clip.logit_scale.exp() * image @ text.t()


def learned(model):
    return dict(model.prompt_learner.named_parameters())


# -- the computation --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.001, 0.3])
def test_logits_are_both_towers_with_adapters_in_blocks_5_to_12(clip12, classnames, images64, scale):
    model = perturbed(build(clip12, classnames, adapter_scale=scale)).eval()
    assert (model.prompt_learner.start, model.prompt_learner.end) == (5, 12)
    weights = learned(model)
    with torch.no_grad():
        ours = model(images64)
        expected = reference_logits(clip12, classnames, images64, weights, range(5, 13), scale)
        without_first = reference_logits(clip12, classnames, images64, weights, range(6, 13), scale)
        without_last = reference_logits(clip12, classnames, images64, weights, range(5, 12), scale)
        plain = reference_logits(clip12, classnames, images64, weights, (), scale)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # the adapters change the logits, the first and the last of them too
    for other in (plain, without_first, without_last):
        assert (ours - other).abs().max() > 1e-3


def test_loss_and_the_update_of_every_adapter_tensor(clip12, classnames, images64):
    model = perturbed(build(clip12, classnames, adapter_scale=0.01)).train()
    labels = torch.tensor([0, 3, 1])
    details = {}
    loss = model.training_loss(images64, labels, details=details)
    loss.backward()
    weights = learned(model)
    expected_logits = reference_logits(clip12, classnames, images64, weights, range(5, 13), 0.01)
    expected = F.cross_entropy(expected_logits, labels)
    torch.testing.assert_close(details["logits"], expected_logits.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-4, atol=1e-6)
    names = list(weights)
    grads = torch.autograd.grad(expected, [weights[n] for n in names])
    for name, grad in zip(names, grads):
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(weights[name].grad, grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item())
    # the gradient-scale layers make the update another one than the plain gradient of the same loss
    plain = F.cross_entropy(reference_logits(clip12, classnames, images64, weights, range(5, 13), 0.01, False), labels)
    (plain_grad,) = torch.autograd.grad(plain, [weights["text_adapter.12.up.weight"]])
    ratio = weights["text_adapter.12.up.weight"].grad.norm() / plain_grad.norm()
    assert ratio == pytest.approx(100.0, rel=1e-3)  # 1 / s: the adapter's own update is not scaled by s


def test_block_zero_adapts_the_token_embeddings_and_ln_pre(deep_clip, classnames, small_images):
    model = perturbed(build(deep_clip, classnames, adapter_start=0, adapter_end=2, adapter_scale=0.2)).train()
    labels = torch.tensor([4, 0, 2])
    loss = model.training_loss(small_images, labels)
    loss.backward()
    weights = learned(model)
    assert "text_adapter.0.down.0.weight" in weights and "visual_adapter.3.up.weight" not in weights
    expected = F.cross_entropy(reference_logits(deep_clip, classnames, small_images, weights, range(0, 3), 0.2), labels)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-4, atol=1e-6)
    for name, grad in zip(weights, torch.autograd.grad(expected, list(weights.values()))):
        torch.testing.assert_close(weights[name].grad, grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item())


# -- what trains, initialisation, options -----------------------------------------------------------


def test_what_trains_and_its_initialisation(clip12, classnames):
    model = build(clip12, classnames)
    text, vision, dim = backbone.text_width(clip12), 128, 32
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    expected = {}
    for tower, width in (("text_adapter", text), ("visual_adapter", vision)):
        for i in range(5, 13):
            expected[f"prompt_learner.{tower}.{i}.down.0.weight"] = (dim, width)
            expected[f"prompt_learner.{tower}.{i}.down.0.bias"] = (dim,)
            expected[f"prompt_learner.{tower}.{i}.up.weight"] = (width, dim)
            expected[f"prompt_learner.{tower}.{i}.up.bias"] = (width,)
    for i in range(5, 13):
        expected[f"prompt_learner.shared_adapter.{i}.0.weight"] = (dim, dim)
        expected[f"prompt_learner.shared_adapter.{i}.0.bias"] = (dim,)
    assert shapes == expected
    assert not any(p.requires_grad for p in clip12.parameters())
    # Kaiming normal, fan_out, relu: std sqrt(2 / out_features); biases 0 (mmadapter.py:128-131)
    ups = torch.cat([learned(model)[f"visual_adapter.{i}.up.weight"].flatten() for i in range(5, 13)])
    assert ups.std().item() == pytest.approx((2 / vision) ** 0.5, rel=0.05)
    assert all(p.abs().sum() == 0 for n, p in learned(model).items() if n.endswith("bias"))
    assert model.record_options() == {
        "template": "a photo of a {}.",
        "adapter_start": 5,
        "adapter_end": 12,
        "adapter_dim": 32,
        "adapter_scale": 0.001,
    }


def test_a_smaller_clip_gets_adapters_in_every_block(tiny_clip, classnames):
    model = build(tiny_clip, classnames)
    assert (model.prompt_learner.start, model.prompt_learner.end) == (1, 2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"adapter_end": 3}, r"need adapter_start <= adapter_end <= 2"),
        ({"adapter_start": 2, "adapter_end": 1}, r"adapter_start 2 is after adapter_end 1"),
        ({"adapter_start": -1}, r"'adapter_start' of method 'mma' must be an integer >= 0"),
        ({"adapter_scale": 0.0}, r"'adapter_scale' of method 'mma' must be a finite number > 0, got 0.0"),
        ({"adapter_dim": 64}, r"adapter_dim 64 equals a tower's width"),
        ({"template": "a photo"}, r"'template' of method 'mma'"),
    ],
)
def test_options_out_of_range_are_refused(tiny_clip, classnames, options, message):
    with pytest.raises((OutOfBounds, ValueError), match=message):
        build(tiny_clip, classnames, **options)


# -- base / new, checkpoints ------------------------------------------------------------------------


def test_new_classes_load_the_base_checkpoint_in_the_authors_layout(deep_clip, classnames, small_images, tmp_path):
    base, new = classnames[:3], classnames[3:]
    trained = perturbed(build(deep_clip, base, subsample="base", adapter_scale=0.2))
    path = str(tmp_path / "adapter_learner" / "model.pth.tar-5")
    trained.save_prompt_checkpoint(path, epoch=5)
    saved = torch.load(path, weights_only=False)
    assert set(saved) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result"}
    keys = list(saved["state_dict"])
    assert keys[:2] == ["token_embedding", "tokenized_prompts"] and keys[2] == "text_adapter.1.down.0.weight"
    assert saved["state_dict"]["token_embedding"].shape[0] == 3
    on_new = build(deep_clip, new, subsample="new", seed=7, adapter_scale=0.2)
    assert on_new.load_prompt_checkpoint(path)["epoch"] == 5
    for name, p in learned(on_new).items():
        assert torch.equal(p, learned(trained)[name]), name
    with torch.no_grad():
        expected = reference_logits(deep_clip, new, small_images, learned(on_new), range(1, 5), 0.2)
        torch.testing.assert_close(on_new.eval()(small_images), expected, rtol=1e-4, atol=1e-4)
    # a resume state leaves out the fixed prompts
    assert not {"token_embedding", "tokenized_prompts"} & set(trained.checkpoint_state_dict(full=False))


def test_a_checkpoint_of_other_blocks_is_refused(deep_clip, classnames, tmp_path):
    path = str(tmp_path / "model.pth.tar-1")
    build(deep_clip, classnames, adapter_start=2, adapter_end=4).save_prompt_checkpoint(path, epoch=1)
    with pytest.raises(ValueError, match="lacks"):
        build(deep_clip, classnames, adapter_start=1, adapter_end=4).load_prompt_checkpoint(path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmadata")
    make_synthetic_dataset(str(root), num_classes=4, train_per_class=6, val_per_class=1, test_per_class=3)
    return str(root)


def test_killed_mid_training_resumes_to_the_same_adapters_and_numbers(data_root, tmp_path):
    values = {"method": "mma", "options": {"adapter_scale": 0.1}, "epochs": 3, "lr": 0.05, "warmup_epochs": 0}
    straight = build_spec(tiny_run(data_root, tmp_path / "straight", **values))
    expected = run(straight)
    killed = tiny_run(data_root, tmp_path / "killed", **values)
    kill_at(killed, "mid-epoch:3", tmp_path)
    assert latest_checkpoint(killed["output_dir"])[1] == 2
    resumed = run(build_spec(killed))
    assert [r["metrics"] for r in resumed] == [r["metrics"] for r in expected]
    assert {r["subsample"] for r in resumed} == {"base", "new"}
    a = torch.load(latest_checkpoint(straight.output_dir)[0], weights_only=False)["state_dict"]
    b = torch.load(latest_checkpoint(killed["output_dir"])[0], weights_only=False)["state_dict"]
    assert all(a[k].abs().sum() > 0 for k in a if k.endswith("bias"))  # they start at 0: the adapters trained
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert results.read_records(str(tmp_path / "killed")) == resumed


# -- the published run and precisions ---------------------------------------------------------------


@pytest.mark.parametrize(
    "config, batch",
    [("mma/vit_b16_ep5", 16), ("mma/vit_b16_ep5_imnet", 128)],
)
def test_the_published_configs(tmp_path, config, batch):
    spec = build_spec({"config": config, "dataset": "oxford_pets", "data_root": "/d", "output_dir": str(tmp_path)})
    assert (spec.optimizer, spec.lr, spec.epochs, spec.batch_size, spec.warmup_epochs, spec.precision) == (
        "sgd",
        0.0015,
        5,
        batch,
        0,
        "amp",
    )
    assert spec.options == {
        "template": "a photo of a {}.",
        "adapter_start": 5,
        "adapter_end": 12,
        "adapter_dim": 32,
        "adapter_scale": 0.001,
    }


@pytest.mark.parametrize("precision, tolerance", [("fp16", 0.05), ("bf16", 0.3)])
def test_low_precision_forward_agrees_with_fp32(classnames, images, precision, tolerance):
    fp32 = perturbed(build(backbone.load_clip("tiny"), classnames, adapter_scale=0.1))
    low = build(backbone.load_clip("tiny", precision=precision), classnames, adapter_scale=0.1)
    low.load_checkpoint_state_dict(fp32.checkpoint_state_dict())
    assert low.prompt_learner.text_adapter[1].up.weight.dtype == backbone.PRECISIONS[precision]
    with torch.no_grad():
        torch.testing.assert_close(low.eval()(images).float(), fp32.eval()(images), rtol=tolerance, atol=tolerance)
    low.train().training_loss(images, torch.tensor([0, 1, 2])).backward()
    assert all(torch.isfinite(p.grad).all() for p in low.trainable_parameters())
