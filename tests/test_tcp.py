"""TCP (PROTOCOL-successors-2.md 3) on a small random CLIP: the text tower with the class-aware tokens recomputed
block by block, the injection point, the meta-net, the objective, the templates, what trains, base/new, the
authors' checkpoint layout, the published optimiser through the run keys, and the precisions."""

import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

import methods
from bounds import OutOfBounds
from clipcore import backbone
from harness.config import build_spec

PETS_PROMPT, PETS_TEACHER = "X X X X {}, a type of pet.", "a photo of a {}, a type of pet."


@pytest.fixture(scope="module")
def clip12():
    """A small CLIP with 12 text blocks, so the published injection at block 8 exists."""
    return backbone.freeze(backbone.build_random_clip("tiny", text_layers=12, vision_layers=1, image_size=64))


@pytest.fixture
def images64():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def build(clip, names, seed=0, **options):
    torch.manual_seed(seed)
    return methods.build_method("tcp", clip, names, **options)


def reference_text_features(clip, names, ctx, meta_net, layer, weight, prompt=PETS_PROMPT, teacher=PETS_TEACHER):
    """TCP's text encoder written out (tcp.py:82-104, 193-208; clip_text/model.py:262-287): all 77 positions,
    block by block, positions 1..4 of block ``layer``'s input replaced by w * T_c + (1 - w) * x."""
    ids = backbone.tokenize([teacher.format(n.replace("_", " ")) for n in names])
    t0 = clip.encode_text(ids)
    t0 = t0 / t0.norm(dim=-1, keepdim=True)
    h = t0 @ meta_net.linear1.weight.t() + meta_net.linear1.bias
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    tokens = (h @ meta_net.linear2.weight.t() + meta_net.linear2.bias).reshape(len(names), 4, -1)
    ids = backbone.tokenize([prompt.format(n.replace("_", " ")) for n in names])
    emb = clip.token_embedding(ids)
    x = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(names), -1, -1), emb[:, 1 + ctx.shape[0] :]], dim=1)
    x = x + clip.positional_embedding
    for i, block in enumerate(clip.transformer.resblocks):
        if i == layer:
            x = torch.cat([x[:, :1], weight * tokens + (1 - weight) * x[:, 1:5], x[:, 5:]], dim=1)
        x = block(x, attn_mask=clip.attn_mask)
    return clip.ln_final(x)[torch.arange(len(names)), ids.argmax(-1)] @ clip.text_projection, t0


def perturbed(model):
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


# -- the computation --------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_text_features_carry_the_class_tokens_at_the_input_of_block_8(clip12, classnames, weight):
    model = perturbed(build(clip12, classnames, dataset="oxford_pets", injection_weight=weight))
    assert model.injection_layer == 8
    pl = model.prompt_learner
    with torch.no_grad():
        ours = model.text_features()
        expected, _ = reference_text_features(clip12, classnames, pl.ctx, pl.meta_net, 8, weight)
        before, _ = reference_text_features(clip12, classnames, pl.ctx, pl.meta_net, 7, weight)
        after, _ = reference_text_features(clip12, classnames, pl.ctx, pl.meta_net, 9, weight)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, before, atol=1e-3) and not torch.allclose(ours, after, atol=1e-3)


def test_loss_is_ce_plus_8_times_one_minus_mean_cosine_to_the_teacher(clip12, classnames, images64):
    model = perturbed(build(clip12, classnames, dataset="oxford_pets")).train()
    labels = torch.tensor([0, 1, 1])
    details = {}
    loss = model.training_loss(images64, labels, details=details)
    pl = model.prompt_learner
    with torch.no_grad():
        text, t0 = reference_text_features(clip12, classnames, pl.ctx, pl.meta_net, 8, 1.0)
        text = text / text.norm(dim=-1, keepdim=True)
        image = clip12.encode_image(images64)
        logits = clip12.logit_scale.exp() * (image / image.norm(dim=-1, keepdim=True)) @ text.t()
        ce = F.cross_entropy(logits, labels)
        kg = 8.0 * (1 - (text * t0).sum(-1).mean())  # both normalised: mean cosine over all 5 classes
    assert float(kg) > 1e-3
    torch.testing.assert_close(details["logits"], logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(details["kg"], kg, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss.detach(), ce + kg, rtol=1e-5, atol=1e-5)


def test_what_trains_the_context_and_the_meta_net(clip12, classnames, images64):
    model = build(clip12, classnames).train()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == [
        "prompt_learner.ctx",
        "prompt_learner.meta_net.linear1.weight",
        "prompt_learner.meta_net.linear1.bias",
        "prompt_learner.meta_net.linear2.weight",
        "prompt_learner.meta_net.linear2.bias",
    ]
    embed, width = backbone.embed_dim(clip12), backbone.text_width(clip12)
    pl = model.prompt_learner
    assert pl.meta_net.linear1.weight.shape == (embed // 4, embed) and pl.meta_net.linear2.weight.shape == (
        4 * width,
        embed // 4,
    )
    model.training_loss(images64, torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    assert not any(p.requires_grad for p in clip12.parameters())


# -- templates, init, options -----------------------------------------------------------------------


def test_templates_and_the_context_positions(tiny_clip, classnames):
    pets = build(tiny_clip, classnames, dataset="oxford_pets")
    assert (pets.prompt_template, pets.template) == (PETS_PROMPT, PETS_TEACHER)
    ucf = build(tiny_clip, classnames, dataset="ucf101")
    assert ucf.prompt_template == "a photo of a person doing {}." and ucf.template == "a photo of a person doing {}."
    # "a photo of a" becomes the context; "person doing" stays a fixed word after it.
    person = backbone.tokenizer().encode("person")[0]
    assert int(ucf.prompt_learner.tokenized_prompts[0, 5]) == person
    torch.testing.assert_close(ucf.prompt_learner.token_suffix[0, 0], tiny_clip.token_embedding.weight[person])
    assert build(tiny_clip, classnames, dataset="fgvc_aircraft").template == "a photo of an aircraft {}."
    assert build(tiny_clip, classnames, dataset="stanford_cars").prompt_template == "X X X X {}, a type of car"
    assert build(tiny_clip, classnames).prompt_template == "X X X X {}."  # a dataset the authors did not name


def test_context_init_random_or_a_photo_of_a(tiny_clip, classnames, caplog):
    random = build(tiny_clip, classnames)
    assert random.prompt_learner.ctx.shape == (4, backbone.text_width(tiny_clip))
    assert abs(random.prompt_learner.ctx.std().item() - 0.02) < 0.004
    words = tiny_clip.token_embedding.weight[backbone.tokenize("a photo of a")[0, 1:5]]
    for init in ("a photo of a", "something else"):
        # The authors' computation, kept in the class: any words start the context from "a photo of a".
        model = methods.method_class("tcp")(tiny_clip, classnames, ctx_init=init)
        torch.testing.assert_close(model.prompt_learner.ctx.detach(), words)
    assert "whatever ctx_init says" in caplog.text
    # Through the registry (every run), other words are refused: the record would name words not used.
    with pytest.raises(OutOfBounds, match="ctx_init 'something else' would not be used"):
        build(tiny_clip, classnames, ctx_init="something else")


def test_injection_layer_beyond_the_tower_is_refused_and_the_default_uses_its_last_block(tiny_clip, classnames):
    assert build(tiny_clip, classnames).injection_layer == 1  # the tiny CLIP has 2 text blocks
    with pytest.raises(ValueError, match=r"injection_layer 8 is not a text block of this CLIP \(0..1\)"):
        build(tiny_clip, classnames, injection_layer=8)  # run at block 1, its options would say 8
    with pytest.raises(
        ValueError, match=r"'injection_layer' of method 'tcp' must be an integer >= 0 or None \(null\), got -1"
    ):
        build(tiny_clip, classnames, injection_layer=-1)


# -- base / new -------------------------------------------------------------------------------------


def test_new_classes_get_tokens_from_their_own_names(clip12, classnames, images64, tmp_path):
    base, new = classnames[:3], classnames[3:]
    trained = perturbed(build(clip12, base, subsample="base"))
    path = str(tmp_path / "prompt_learner" / "model.pth.tar-50")
    trained.save_prompt_checkpoint(path, epoch=50)
    on_new = build(clip12, new, subsample="new", seed=4)
    on_new.load_prompt_checkpoint(path)
    pl = on_new.prompt_learner
    with torch.no_grad():
        expected, expected_teacher = reference_text_features(
            clip12, new, pl.ctx, pl.meta_net, 8, 1.0, prompt="X X X X {}.", teacher="a photo of a {}."
        )
        torch.testing.assert_close(on_new.text_features(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(on_new.teacher_text, expected_teacher, rtol=1e-5, atol=1e-6)
    for p, q in zip(on_new.trainable_parameters(), trained.trainable_parameters()):
        assert torch.equal(p, q)


# -- checkpoints ------------------------------------------------------------------------------------


def test_reads_the_authors_file_and_writes_their_layout(tiny_clip, classnames, images, tmp_path):
    fp16 = backbone.load_clip("tiny", precision="fp16")
    theirs = perturbed(build(fp16, classnames, seed=5))
    # As their trainer saves the registered prompt_learner (Dassl.ProGrad save_model): fp16, no val_result.
    state = OrderedDict((k, v.clone()) for k, v in theirs.prompt_learner.state_dict().items())
    assert list(state) == [
        "ctx",
        "token_prefix",
        "token_suffix",
        "meta_net.linear1.weight",
        "meta_net.linear1.bias",
        "meta_net.linear2.weight",
        "meta_net.linear2.bias",
    ]
    path = str(tmp_path / "prompt_learner" / "model.pth.tar-50")
    os.makedirs(os.path.dirname(path))
    adam = {"state": {}, "param_groups": [{"lr": 0.002, "eps": 0.001}]}
    torch.save({"state_dict": state, "epoch": 50, "optimizer": adam, "scheduler": {"last_epoch": 50}}, path)
    ours = build(tiny_clip, classnames)
    assert ours.load_prompt_checkpoint(path)["epoch"] == 50
    for key in ("ctx", "meta_net.linear2.bias"):
        torch.testing.assert_close(ours.prompt_learner.state_dict()[key], state[key].float())
    out = str(tmp_path / "ours" / "model.pth.tar-1")
    ours.save_prompt_checkpoint(out, epoch=1)
    saved = torch.load(out, weights_only=False)
    assert set(saved) == {"state_dict", "epoch", "optimizer", "scheduler"} and list(saved["state_dict"]) == list(state)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(images), theirs.eval()(images).float(), rtol=0.05, atol=0.05)


# -- the published run and precisions ---------------------------------------------------------------


def test_the_published_config_trains_with_adam_eps_1e_3(tmp_path):
    spec = build_spec(
        {"config": "tcp/vit_b16_ep100_ctxv1", "dataset": "oxford_pets", "data_root": "/d", "output_dir": str(tmp_path)}
    )
    assert (spec.optimizer, spec.adam_eps, spec.epochs, spec.batch_size, spec.lr) == ("adam", 1e-3, 50, 32, 0.002)
    assert spec.options == {
        "n_ctx": 4,
        "ctx_init": "",
        "kg_weight": 8.0,
        "injection_layer": 8,
        "injection_weight": 1.0,
        "n_class_tokens": 4,
    }


@pytest.mark.parametrize("precision, tolerance", [("fp16", 0.05), ("bf16", 0.3)])
def test_low_precision_forward_agrees_with_fp32(classnames, images, precision, tolerance):
    fp32 = perturbed(build(backbone.load_clip("tiny"), classnames))
    low = build(backbone.load_clip("tiny", precision=precision), classnames)
    low.load_checkpoint_state_dict(fp32.checkpoint_state_dict())
    assert low.prompt_learner.meta_net.linear1.weight.dtype == backbone.PRECISIONS[precision]
    with torch.no_grad():
        torch.testing.assert_close(low.eval()(images).float(), fp32.eval()(images), rtol=tolerance, atol=tolerance)
    low.train().training_loss(images, torch.tensor([0, 1, 2])).backward()
    assert all(torch.isfinite(p.grad).all() for p in low.trainable_parameters())
