"""Every registered method keeps the contract the runner relies on (methods/parts/base.py).

Parametrised over ``methods.list_methods()``: a new method is checked the moment it is registered.
"""

import json

import pytest
import torch

import methods
from clipcore import backbone

NAMES = ["golden retriever", "tabby_cat", "sea lake", "fire truck"]


def build(name, clip, seed=0, **options):
    torch.manual_seed(seed)
    model = methods.build_method(name, clip, NAMES, **options)
    if model.fits_features:  # fitted on frozen features (linear probe): fit it on random ones
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(len(NAMES) * 8, backbone.embed_dim(clip), generator=generator)
        labels = torch.arange(len(NAMES)).repeat_interleave(8)
        model.fit(features[::2], labels[::2], features[1::2], labels[1::2], seed=seed + 1, shots=2)
    elif not any(p.requires_grad for p in model.parameters()) and model.trainable:
        pytest.fail(f"{name} is trainable but has no parameter that requires a gradient")
    return model


def perturb(model, seed=1):
    """Move every trainable parameter away from its initial value (a model that has learned something)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator).to(p))


@pytest.fixture(params=methods.list_methods())
def name(request):
    return request.param


def test_the_builtin_methods_are_registered():
    assert {"zsclip", "coop", "cocoop", "kgcoop", "maple", "promptsrc"} <= set(methods.list_methods())


def test_logits_in_train_and_eval_mode(name, tiny_clip, images):
    model = build(name, tiny_clip)
    for mode in (True, False):
        model.train(mode)
        logits = model(images)
        assert logits.shape == (len(images), len(NAMES)) and torch.isfinite(logits).all()
        assert not tiny_clip.training  # the frozen towers stay in eval mode
    # The forward is split at the image tower; the two halves chain to the same logits.
    with torch.no_grad():
        torch.testing.assert_close(model.logits_from_features(model.encode_image(images)), model(images))


def test_training_loss_reaches_exactly_the_trainable_parameters(name, tiny_clip, images):
    model = build(name, tiny_clip)
    if any(not p.any() for p in model.trainable_parameters()):
        perturb(model)  # a tensor that starts at zero (LoRA's B) gives its partner no first gradient
    model.train()
    details = {}
    loss = model.training_loss(images, torch.tensor([0, 1, 2]), details=details)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert details["logits"].shape == (len(images), len(NAMES))
    terms = [v for k, v in details.items() if k != "logits"]
    assert terms and float(sum(terms)) == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-6)
    trainable = {id(p) for p in model.trainable_parameters()}
    if not model.trainable or model.fits_features:  # no gradient: nothing to train by it
        assert not trainable and not loss.requires_grad
        return
    loss.backward()
    for pname, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} gets no gradient"
        else:
            assert p.grad is None, f"gradient reached the frozen {pname}"
    assert not any(p.requires_grad for p in tiny_clip.parameters())
    grouped = [id(p) for group in model.parameter_groups() for p in group["params"]]
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter in exactly one group


def test_checkpoint_round_trip(name, tiny_clip, images, tmp_path):
    model = build(name, tiny_clip, seed=0)
    perturb(model)
    path = str(tmp_path / "prompt_learner" / "model.pth.tar-3")
    model.save_prompt_checkpoint(path, epoch=3)
    other = build(name, tiny_clip, seed=7)
    loaded = other.load_prompt_checkpoint(path)
    assert loaded["epoch"] == 3 and set(loaded) >= {"state_dict", "epoch", "optimizer", "scheduler"}
    model.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(images), model(images))
    for p, q in zip(model.trainable_parameters(), other.trainable_parameters()):
        assert torch.equal(p, q)


def test_cacheable_features_do_not_depend_on_what_the_method_learns(name, tiny_clip, images):
    model = build(name, tiny_clip).eval()
    with torch.no_grad():
        before = model.encode_image(images)
        perturb(model)
        after = model.encode_image(images)
    if model.features_cacheable:
        torch.testing.assert_close(after, before, rtol=0, atol=0)
        assert json.dumps(model.feature_key(), sort_keys=True)
    elif model.trainable:
        assert not torch.allclose(after, before)


def test_training_state_and_record_options_round_trip(name, tiny_clip):
    model = build(name, tiny_clip)
    perturb(model)  # a model that has learned something before its end-of-epoch hook
    model.on_epoch_end(1, 2)
    state = model.training_state()
    other = build(name, tiny_clip, seed=7)
    other.load_training_state(state)
    torch.testing.assert_close(other.training_state(), state, rtol=0, atol=0)  # the same state, exactly
    json.dumps(model.record_options())  # stored in every result record


def test_methods_run_in_bf16(name, images):
    # The contract holds in the low-precision layout too (OpenAI's mixed fp16/bf16, PROTOCOL.md 2.2).
    clip = backbone.load_clip("tiny", precision="bf16")
    model = build(name, clip)
    model.train()
    loss = model.training_loss(images.to(torch.bfloat16), torch.tensor([0, 1, 2]))
    assert torch.isfinite(loss.float())
    if model.trainable and not model.fits_features:
        loss.backward()
        assert all(p.grad is not None for p in model.trainable_parameters())
