"""The three methods on the tiny CLIP: the published computation, checkpoints, gradients, errors."""

import sys
import types
from typing import Annotated

import pytest
import torch
import torch.nn.functional as F

import methods
from bounds import OutOfBounds, Range
from clipcore import backbone
from methods.coop import CoOp
from methods.parts import registry


def build(name, clip, names, seed=0, **options):
    torch.manual_seed(seed)
    return methods.build_method(name, clip, names, **options)


# -- zero-shot ---------------------------------------------------------------------------------


def test_zeroshot_equals_open_clip_encode_text(tiny_clip, classnames, images):
    model = build("zsclip", tiny_clip, classnames, template="a photo of a {}, a type of pet.")
    prompts = [f"a photo of a {n.replace('_', ' ')}, a type of pet." for n in classnames]
    with torch.no_grad():
        text = F.normalize(tiny_clip.encode_text(backbone.tokenize(prompts)), dim=-1)
        image = F.normalize(tiny_clip.encode_image(images), dim=-1)
        expected = tiny_clip.logit_scale.exp() * image @ text.t()
        got = model(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_zeroshot_dataset_template_and_ensemble(tiny_clip, classnames):
    pets = build("zsclip", tiny_clip, classnames, dataset="oxford_pets")
    assert pets.templates == ["a photo of a {}, a type of pet."]
    default = build("zsclip", tiny_clip, classnames)
    assert default.templates == ["a photo of a {}."]
    ens = build("zsclip", tiny_clip, classnames, template="ensemble", dataset="dtd")
    assert len(ens.templates) == 8 and ens.templates[-1] == "{} texture."
    assert len(build("zsclip", tiny_clip, classnames, template="ensemble", dataset="imagenet").templates) == 7
    # The ensemble classifier is the renormalised mean of the per-template normalised features.
    two = ["a photo of a {}.", "art of the {}."]
    ensemble = build("zsclip", tiny_clip, classnames, template=two).text_features
    singles = [build("zsclip", tiny_clip, classnames, template=t).text_features for t in two]
    torch.testing.assert_close(ensemble, F.normalize(sum(singles) / 2, dim=-1))
    assert not ens.trainable and ens.trainable_parameters() == []


# -- CoOp ----------------------------------------------------------------------------------------


def test_ctx_init_equals_word_embeddings(tiny_clip, classnames):
    model = build("coop", tiny_clip, classnames, ctx_init="a photo of a", n_ctx=4)
    ids = backbone.tokenize("a photo of a")[0]
    assert ids[1:5].tolist() == [320, 1125, 539, 320]  # PROTOCOL.md 2.4 / 7.1
    expected = tiny_clip.token_embedding.weight[ids[1:5]]
    assert model.prompt_learner.n_ctx == 4
    with pytest.raises(ValueError, match="n_ctx 16 contradicts ctx_init 'a photo of a'"):  # the words set 4
        build("coop", tiny_clip, classnames, ctx_init="a photo of a", n_ctx=16)
    torch.testing.assert_close(model.prompt_learner.ctx.detach(), expected)
    torch.testing.assert_close(model.prompt_learner.ctx[0], model.prompt_learner.ctx[3])


def test_coop_at_init_equals_zeroshot_with_the_init_words(tiny_clip, classnames, images):
    # With ctx = the embeddings of "a photo of a", CoOp's prompt *is* "a photo of a {}.".
    coop = build("coop", tiny_clip, classnames, ctx_init="a photo of a")
    zs = build("zsclip", tiny_clip, classnames, template="a photo of a {}.")
    with torch.no_grad():
        torch.testing.assert_close(coop(images), zs(images), rtol=1e-5, atol=1e-4)


def test_random_init_statistics_and_csc_shapes(tiny_clip, classnames):
    shared = build("coop", tiny_clip, classnames, ctx_init="", n_ctx=16)
    assert shared.prompt_learner.ctx.shape == (16, backbone.text_width(tiny_clip))
    assert abs(shared.prompt_learner.ctx.std().item() - 0.02) < 0.003
    csc = build("coop", tiny_clip, classnames, ctx_init="", n_ctx=8, csc=True)
    assert csc.prompt_learner.ctx.shape == (len(classnames), 8, backbone.text_width(tiny_clip))
    # The placeholder prompt is "X X ... X <name>." (PROTOCOL.md 7.1).
    assert csc.prompt_learner.tokenized_prompts[0, 1:9].tolist() == [343] * 8


@pytest.mark.parametrize("position", ["middle", "front"])
def test_class_token_positions(tiny_clip, classnames, position):
    model = build("coop", tiny_clip, classnames, ctx_init="", n_ctx=4, class_token_position=position)
    pl = model.prompt_learner
    prompts = pl.assemble(pl.ctx)
    emb = tiny_clip.token_embedding.weight
    for i, name in enumerate(classnames):
        name_ids = backbone.tokenizer().encode(name.replace("_", " "))
        n = len(name_ids)
        assert pl.name_lens[i] == n
        if position == "front":  # [SOS | name | ctx | . EOT ...]
            name_at, ctx_at = slice(1, 1 + n), [slice(1 + n, 5 + n)]
            ctx_parts = [pl.ctx]
        else:  # [SOS | ctx[:2] | name | ctx[2:] | . EOT ...]
            name_at, ctx_at = slice(3, 3 + n), [slice(1, 3), slice(3 + n, 5 + n)]
            ctx_parts = [pl.ctx[:2], pl.ctx[2:]]
        torch.testing.assert_close(prompts[i, name_at], emb[name_ids])
        for where, part in zip(ctx_at, ctx_parts):
            torch.testing.assert_close(prompts[i, where], part)
        torch.testing.assert_close(prompts[i, 0], emb[49406])
        torch.testing.assert_close(prompts[i, 5 + n], emb[269])  # "."
        torch.testing.assert_close(prompts[i, 6 + n], emb[49407])  # EOT, where the template had it
        assert pl.tokenized_prompts[i].argmax().item() == 6 + n


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_truncated_text_encoder_equals_full_length(tiny_clip, classnames, images, method):
    fast = build(method, tiny_clip, classnames, ctx_init="", n_ctx=4)
    pl = fast.prompt_learner
    prompts = pl.assemble(pl.ctx.detach())
    full = backbone.encode_text_embeddings(tiny_clip, prompts, pl.tokenized_prompts, truncate=False)
    cut = backbone.encode_text_embeddings(tiny_clip, prompts, pl.tokenized_prompts, truncate=True)
    assert pl.prompt_length() < 77
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_prompt_parameters(tiny_clip, classnames, images):
    for name in ("coop", "cocoop"):
        model = build(name, tiny_clip, classnames)
        model.train()
        loss = F.cross_entropy(model(images), torch.tensor([0, 1, 2]))
        loss.backward()
        trainable = {id(p) for p in model.trainable_parameters()}
        for pname, p in model.named_parameters():
            if id(p) in trainable:
                assert p.grad is not None and p.grad.abs().sum() > 0, pname
            else:
                assert p.grad is None and not p.requires_grad, pname
        assert not model.clip.training  # the towers stay in eval mode


def test_trainable_parameter_names_and_counts(tiny_clip, classnames):
    coop = build("coop", tiny_clip, classnames)
    assert [n for n, _ in coop.prompt_learner.named_parameters()] == ["ctx"]
    cocoop = build("cocoop", tiny_clip, classnames)
    names = [n for n, _ in cocoop.prompt_learner.named_parameters()]
    assert names == [
        "ctx",
        "meta_net.linear1.weight",
        "meta_net.linear1.bias",
        "meta_net.linear2.weight",
        "meta_net.linear2.bias",
    ]
    vis, width = backbone.embed_dim(tiny_clip), backbone.text_width(tiny_clip)
    hidden = vis // 16
    assert cocoop.prompt_learner.meta_net.linear1.weight.shape == (hidden, vis)
    assert cocoop.prompt_learner.meta_net.linear2.weight.shape == (width, hidden)
    assert cocoop.num_trainable_parameters() == 4 * width + vis * hidden + hidden + hidden * width + width
    keys = set(cocoop.prompt_learner.state_dict())
    assert {"token_prefix", "token_suffix"} <= keys and "tokenized_prompts" not in keys


# -- CoCoOp --------------------------------------------------------------------------------------


def test_cocoop_with_zero_meta_net_equals_coop(tiny_clip, classnames, images):
    cocoop = build("cocoop", tiny_clip, classnames)
    with torch.no_grad():
        cocoop.prompt_learner.meta_net.linear2.weight.zero_()
        cocoop.prompt_learner.meta_net.linear2.bias.zero_()
    coop = build("coop", tiny_clip, classnames)
    with torch.no_grad():
        torch.testing.assert_close(cocoop(images), coop(images), rtol=1e-5, atol=1e-4)


def test_cocoop_meta_net_sees_normalised_features(tiny_clip, classnames, images):
    model = build("cocoop", tiny_clip, classnames)
    seen = {}
    model.prompt_learner.meta_net.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0].clone()))
    with torch.no_grad():
        model(images)
    torch.testing.assert_close(seen["x"].norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("batch", [1, 3])
def test_cocoop_batched_equals_per_image(tiny_clip, classnames, batch):
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    labels = torch.arange(batch) % len(classnames)
    results = []
    for batched, chunk in [(False, None), (True, None), (True, 4)]:
        model = build("cocoop", tiny_clip, classnames, batched=batched, chunk_size=chunk).train()
        logits = model(images)
        F.cross_entropy(logits, labels).backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.trainable_parameters()]))
    reference_logits, reference_grads = results[0]
    for logits, grads in results[1:]:
        torch.testing.assert_close(logits, reference_logits, rtol=1e-4, atol=1e-4)
        for g, ref in zip(grads, reference_grads):
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_checkpoint_round_trip_to_other_classes(tiny_clip, classnames, images, tmp_path, method):
    trained = build(method, tiny_clip, classnames, seed=1, ctx_init="")
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "prompt_learner" / "model.pth.tar-10"
    trained.save_prompt_checkpoint(str(path), epoch=10)
    saved = torch.load(path, weights_only=False)
    assert saved["epoch"] == 10 and {"state_dict", "optimizer", "scheduler"} <= set(saved)
    assert saved["state_dict"]["token_prefix"].shape[0] == len(classnames)

    same = build(method, tiny_clip, classnames, seed=2, ctx_init="")
    same.load_prompt_checkpoint(str(path))
    with torch.no_grad():
        torch.testing.assert_close(same(images), trained(images))

    other_names = ["zebra", "fire truck"]  # new classes: prefix/suffix rebuilt, ctx and Meta-Net loaded
    other = build(method, tiny_clip, other_names, seed=3, ctx_init="")
    other.load_prompt_checkpoint(str(path))
    for (name, p), (_, q) in zip(other.prompt_learner.named_parameters(), trained.prompt_learner.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)
    assert other.prompt_learner.token_prefix.shape[0] == 2


def test_loads_authors_fp16_checkpoint_with_foreign_scheduler(tiny_clip, classnames, tmp_path, monkeypatch):
    """An authors'-format file: fp16 tensors, buffers of another class count, a Dassl scheduler."""
    width, vis = backbone.text_width(tiny_clip), backbone.embed_dim(tiny_clip)
    hidden = vis // 16
    g = torch.Generator().manual_seed(0)
    state = {
        "ctx": torch.randn(4, width, generator=g).half(),
        "token_prefix": torch.zeros(37, 1, width).half(),
        "token_suffix": torch.zeros(37, 72, width).half(),
        "meta_net.linear1.weight": torch.randn(hidden, vis, generator=g).half(),
        "meta_net.linear1.bias": torch.randn(hidden, generator=g).half(),
        "meta_net.linear2.weight": torch.randn(width, hidden, generator=g).half(),
        "meta_net.linear2.bias": torch.randn(width, generator=g).half(),
    }
    # A class from a package the user does not have installed, pickled into the file.
    module = types.ModuleType("dassl.optim.lr_scheduler")

    class ConstantWarmupScheduler:
        def __init__(self):
            self.last_epoch = 10

    ConstantWarmupScheduler.__module__ = module.__name__
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    module.ConstantWarmupScheduler = ConstantWarmupScheduler
    for name in ("dassl", "dassl.optim", "dassl.optim.lr_scheduler"):
        monkeypatch.setitem(sys.modules, name, module if name.endswith("scheduler") else types.ModuleType(name))
    path = tmp_path / "model.pth.tar-10"
    torch.save({"state_dict": state, "epoch": 10, "optimizer": {}, "scheduler": ConstantWarmupScheduler()}, path)
    for name in ("dassl", "dassl.optim", "dassl.optim.lr_scheduler"):
        monkeypatch.delitem(sys.modules, name)

    model = build("cocoop", tiny_clip, classnames)
    checkpoint = model.load_prompt_checkpoint(str(path))
    assert checkpoint["epoch"] == 10
    assert model.prompt_learner.ctx.dtype == torch.float32
    torch.testing.assert_close(model.prompt_learner.ctx.detach(), state["ctx"].float())
    torch.testing.assert_close(
        model.prompt_learner.meta_net.linear2.bias.detach(), state["meta_net.linear2.bias"].float()
    )
    assert model.prompt_learner.token_prefix.shape[0] == len(classnames)


def test_checkpoint_shape_mismatch_is_explained(tiny_clip, classnames, tmp_path):
    csc = build("coop", tiny_clip, classnames, ctx_init="", csc=True)
    path = tmp_path / "csc.pth"
    csc.save_prompt_checkpoint(str(path), epoch=1)
    shared = build("coop", tiny_clip, classnames[:2], ctx_init="")
    with pytest.raises(ValueError, match="ctx has shape"):
        shared.load_prompt_checkpoint(str(path))
    with pytest.raises(FileNotFoundError):
        shared.load_prompt_checkpoint(str(tmp_path / "nope.pth"))


# -- errors ----------------------------------------------------------------------------------------


def test_unknown_method_and_option_errors(tiny_clip, classnames):
    with pytest.raises(ValueError, match="Registered methods: .*cocoop, coop, .*kgcoop, .*maple, .*zsclip"):
        methods.build_method("no_such_method", tiny_clip, classnames)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['nctx'\].*n_ctx=4"):
        methods.build_method("coop", tiny_clip, classnames, nctx=4)
    with pytest.raises(ValueError, match="class_token_position"):
        methods.build_method("coop", tiny_clip, classnames, class_token_position="back")
    with pytest.raises(ValueError, match="'\\{\\}'"):
        methods.build_method("zsclip", tiny_clip, classnames, template="a photo")
    with pytest.raises(ValueError, match="at least one class"):
        methods.build_method("coop", tiny_clip, [])
    assert {"cocoop", "coop", "zsclip"} <= set(methods.list_methods())


def test_a_variant_passing_options_on_takes_its_parents_options_with_their_ranges(tiny_clip, classnames, monkeypatch):
    class Variant(CoOp):
        def __init__(self, clip_model, classnames, *, extra: Annotated[int, Range(1)] = 1, **coop_options):
            super().__init__(clip_model, classnames, **coop_options)
            self.extra = extra

    monkeypatch.setitem(registry.METHODS, "variant", Variant)
    assert methods.method_options("variant") == {"extra": 1, **methods.method_options("coop")}
    assert registry.option_types("variant")["n_ctx"] == registry.option_types("coop")["n_ctx"]
    with pytest.raises(OutOfBounds, match="'class_token_position'"):
        methods.build_method("variant", tiny_clip, classnames, class_token_position="back")
    with pytest.raises(OutOfBounds, match="'extra'"):
        methods.build_method("variant", tiny_clip, classnames, extra=0)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['nctx'\]"):
        methods.build_method("variant", tiny_clip, classnames, nctx=4)
    model = methods.build_method("variant", tiny_clip, classnames, extra=3, ctx_init="", n_ctx=2)
    assert model.extra == 3 and model.prompt_learner.ctx.shape[0] == 2


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"ctx_init": "", "n_ctx": 8},
        {"csc": True, "ctx_init": ""},
        {"class_token_position": "front", "ctx_init": ""},
    ],
)
def test_coop_fast_text_path_equals_the_published_77_positions(tiny_clip, classnames, images, options):
    fast = build("coop", tiny_clip, classnames, **options).train()
    slow = build("coop", tiny_clip, classnames, truncate=False, **options).train()
    labels = torch.tensor([0, 3, 4])
    results = []
    for model in (fast, slow):
        logits = model(images)
        F.cross_entropy(logits, labels).backward()
        results.append((logits.detach(), model.prompt_learner.ctx.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-4)
    fast_grad, slow_grad = results[0][1], results[1][1]
    assert ((fast_grad - slow_grad).norm() / slow_grad.norm()).item() < 1e-4  # fp32 summation order differs


def test_every_registered_method_has_a_colour_of_its_own_and_a_taken_one_is_refused(monkeypatch):
    """A figure tells methods apart by colour: the registry refuses a method whose colour another method has
    (in any case of its hex digits), and accepts one without a colour (the report gives it a free one)."""
    colors = [methods.method_info(m).color for m in methods.list_methods()]
    colors = [c.lower() for c in colors if c]
    assert len(colors) == len(set(colors))
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))  # registrations below are undone

    class SameAsCoop(CoOp):
        color = methods.method_info("coop").color.upper()

    with pytest.raises(ValueError, match=r"'same_as_coop'.*#1f77b4 \('#1F77B4'\), which method 'coop' already has"):
        registry.register_method("same_as_coop")(SameAsCoop)

    class Uncoloured(CoOp):
        pass

    registry.register_method("uncoloured")(Uncoloured)  # no colour of its own: nothing to clash with
    assert "uncoloured" in registry.METHODS


@pytest.mark.parametrize("spelling", ["tab:blue", "#1f77b4ff", "#1F77B4FF"])
def test_a_taken_colour_in_another_spelling_is_refused(monkeypatch, spelling):
    """What a figure draws is the colour, not its spelling: CoOp's #1f77b4 by its matplotlib name or as an
    opaque RGBA is the same blue."""
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    assert methods.method_info("coop").color == "#1f77b4"

    class Disguised(CoOp):
        color = spelling

    with pytest.raises(ValueError, match=rf"'disguised'.*{spelling}.*which method 'coop' already has"):
        registry.register_method("disguised")(Disguised)


def test_a_colour_a_figure_cannot_draw_is_refused_at_registration(monkeypatch):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))

    class Misspelt(CoOp):
        color = "#12345g"

    with pytest.raises(ValueError, match=r"'misspelt'.*#12345g.*'#rrggbb'"):
        registry.register_method("misspelt")(Misspelt)
