"""KgCoOp (PROTOCOL-successors.md 2) on the tiny CLIP: the objective recomputed independently, the
context initialisation, the teacher's template, what trains, the authors' checkpoint layout."""

import pytest
import torch
import torch.nn.functional as F

import methods
from bounds import OutOfBounds
from clipcore import backbone

PETS = "a photo of a {}, a type of pet."


def build(clip, names, seed=0, **options):
    torch.manual_seed(seed)
    return methods.build_method("kgcoop", clip, names, **options)


def full_text_features(clip, names, ctx):
    """CoOp's prompt "[SOS] ctx name . [EOT]" through open_clip's text tower, all 77 positions."""
    ids = backbone.tokenize([f"X X X X {n.replace('_', ' ')}." for n in names])
    emb = clip.token_embedding(ids)
    x = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(names), -1, -1), emb[:, 5:]], dim=1)
    x = clip.transformer(x + clip.positional_embedding, attn_mask=clip.attn_mask)
    return clip.ln_final(x)[torch.arange(len(names)), ids.argmax(-1)] @ clip.text_projection


def test_loss_is_ce_plus_w_times_one_minus_mean_cosine_over_all_classes(tiny_clip, classnames, images):
    model = build(tiny_clip, classnames, template=PETS, kg_weight=8.0)
    with torch.no_grad():
        model.prompt_learner.ctx.add_(0.3 * torch.randn_like(model.prompt_learner.ctx))
    labels = torch.tensor([0, 1, 1])  # the batch holds 2 of the 5 classes
    details = {}
    loss = model.training_loss(images, labels, details=details)

    ctx = model.prompt_learner.ctx.detach()
    with torch.no_grad():
        text = F.normalize(full_text_features(tiny_clip, classnames, ctx), dim=-1)
        teacher = F.normalize(
            tiny_clip.encode_text(backbone.tokenize([PETS.format(n.replace("_", " ")) for n in classnames])), dim=-1
        )
        image = F.normalize(tiny_clip.encode_image(images), dim=-1)
        logits = tiny_clip.logit_scale.exp() * image @ text.t()
        ce = F.cross_entropy(logits, labels)
        cosines = (text * teacher).sum(-1) / (text.norm(dim=-1) * teacher.norm(dim=-1))
        kg = 8.0 * (1 - cosines.mean())
        kg_batch_classes = 8.0 * (1 - cosines[labels.unique()].mean())
    assert float(kg) > 1e-3 and abs(float(kg) - float(kg_batch_classes)) > 1e-4  # the two readings differ here
    torch.testing.assert_close(details["logits"], logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(details["ce"], ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(details["kg"], kg, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss.detach(), ce + kg, rtol=1e-5, atol=1e-5)


def test_at_its_init_with_the_same_words_the_knowledge_term_is_zero(tiny_clip, classnames, images):
    # ctx = "a photo of a" and teacher "a photo of a {}.": the learned prompt *is* the hand-made one.
    model = build(tiny_clip, classnames, template="a photo of a {}.")
    details = {}
    model.training_loss(images, torch.tensor([0, 1, 2]), details=details)
    assert abs(float(details["kg"])) < 1e-5


def test_context_always_starts_from_a_photo_of_a(tiny_clip, classnames, caplog):
    words = tiny_clip.token_embedding.weight[backbone.tokenize("a photo of a")[0, 1:5]]
    for init in ("a photo of a", "a_cute_photo", "X"):
        # The authors' computation, kept in the class: any words start the context from "a photo of a".
        torch.manual_seed(0)
        model = methods.method_class("kgcoop")(tiny_clip, classnames, ctx_init=init)
        torch.testing.assert_close(model.prompt_learner.ctx.detach(), words)
        assert model.prompt_learner.tokenized_prompts[0, 1:5].tolist() == [320, 1125, 539, 320]
    assert "whatever ctx_init says" in caplog.text
    # Through the registry (every run), other words are refused: the record would name words not used.
    with pytest.raises(OutOfBounds, match="ctx_init 'a_cute_photo' would not be used"):
        build(tiny_clip, classnames, ctx_init="a_cute_photo")
    random = build(tiny_clip, classnames, ctx_init="", n_ctx=8)
    assert random.prompt_learner.ctx.shape == (8, backbone.text_width(tiny_clip))
    assert abs(random.prompt_learner.ctx.std().item() - 0.02) < 0.004


def test_teacher_template_from_the_dataset_dtd_differs_from_coop(tiny_clip, classnames):
    assert build(tiny_clip, classnames, dataset="dtd").template == "a photo of a {}, a type of texture."
    assert build(tiny_clip, classnames, dataset="oxford_pets").template == PETS
    assert build(tiny_clip, classnames, dataset="eurosat").template == "a centered satellite photo of {}."
    assert build(tiny_clip, classnames).template == "a photo of a {}."
    assert build(tiny_clip, classnames, dataset="dtd", template="{} texture.").template == "{} texture."
    assert "dataset" in methods.method_options("kgcoop")  # the runner passes the run's dataset
    model = build(tiny_clip, classnames, dataset="dtd")
    expected = F.normalize(
        backbone.encode_texts(
            tiny_clip, [f"a photo of a {n.replace('_', ' ')}, a type of texture." for n in classnames]
        ),
        dim=-1,
    )
    torch.testing.assert_close(model.teacher_text, expected)


def test_only_ctx_trains_and_the_checkpoint_is_the_authors(tiny_clip, classnames, images, tmp_path):
    model = build(tiny_clip, classnames, template=PETS).train()
    assert [n for n, p in model.prompt_learner.named_parameters() if p.requires_grad] == ["ctx"]
    assert model.num_trainable_parameters() == 4 * backbone.text_width(tiny_clip)
    model.training_loss(images, torch.tensor([0, 3, 4])).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name == "prompt_learner.ctx"), name
    state = model.checkpoint_state_dict()
    assert set(state) == {
        "ctx",
        "bias_vectors",
        "meta_net.linear1.weight",
        "meta_net.linear1.bias",
        "token_prefix",
        "token_suffix",
    }
    assert state["bias_vectors"].shape == (1, 512) and state["meta_net.linear1.weight"].shape == (512, 512)
    # features come from the frozen tower: shared with CoOp's cache entries
    assert (
        model.features_cacheable
        and model.feature_key() == methods.build_method("coop", tiny_clip, classnames).feature_key()
    )


def test_loads_an_authors_fp16_checkpoint_of_other_classes(tiny_clip, classnames, images, tmp_path):
    width = backbone.text_width(tiny_clip)
    g = torch.Generator().manual_seed(1)
    state = {
        "ctx": torch.randn(4, width, generator=g).half(),
        "bias_vectors": torch.randn(1, 512, generator=g).half(),
        "meta_net.linear1.weight": torch.randn(512, 512, generator=g).half(),
        "meta_net.linear1.bias": torch.randn(512, generator=g).half(),
        "token_prefix": torch.zeros(37, 1, width).half(),
        "token_suffix": torch.zeros(37, 72, width).half(),
    }
    path = tmp_path / "prompt_learner" / "model.pth.tar-100"
    path.parent.mkdir()
    torch.save({"state_dict": state, "epoch": 100, "optimizer": None, "scheduler": None}, path)
    model = build(tiny_clip, classnames, seed=3, template=PETS)
    assert model.load_prompt_checkpoint(str(path))["epoch"] == 100
    pl = model.prompt_learner
    assert pl.ctx.dtype == torch.float32 and pl.token_prefix.shape[0] == len(classnames)
    torch.testing.assert_close(pl.ctx.detach(), state["ctx"].float())
    torch.testing.assert_close(pl.bias_vectors.detach(), state["bias_vectors"].float())
    # and our file, written after training, loads back into a fresh model
    model.save_prompt_checkpoint(str(path), epoch=100)
    assert set(torch.load(str(path), weights_only=False)) == {"state_dict", "epoch", "optimizer", "scheduler"}
    other = build(tiny_clip, ["zebra", "fire truck"], seed=4, template=PETS)
    other.load_prompt_checkpoint(str(path))
    torch.testing.assert_close(other.prompt_learner.ctx, pl.ctx)


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("fp32", torch.float32)])
def test_precision_layout(precision, dtype, classnames, images):
    clip = backbone.load_clip("tiny", precision=precision)
    model = build(clip, classnames, template=PETS).train()
    pl = model.prompt_learner
    assert pl.ctx.dtype == pl.bias_vectors.dtype == pl.meta_net.linear1.weight.dtype == dtype
    assert model.teacher_text.dtype == dtype
    details = {}
    loss = model.training_loss(images, torch.tensor([0, 1, 2]), details=details)
    assert details["kg"].dtype == dtype and torch.isfinite(loss)
    loss.backward()
    assert pl.ctx.grad.dtype == dtype
