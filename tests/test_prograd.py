"""ProGrad (PROTOCOL-successors-2.md 2) on the tiny CLIP: the two loss terms, the projected update recomputed
independently (conflict and no conflict), the template initialisation and its punctuation quirk, what
trains, base/new, the authors' checkpoint layout, the precisions, and a run through the runner."""

import math
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_data import make_synthetic_dataset

import methods
from clipcore import backbone
from harness.config import build_spec
from harness.runner import run
from methods.prograd import prograd_terms, project_conflicting

PETS = "a type of pet, a photo of a {}."


def build(clip, names, seed=0, **options):
    torch.manual_seed(seed)
    return methods.build_method("prograd", clip, names, **options)


def zero_shot_logits(clip, names, template, images):
    """The teacher as the authors build it: an fp32 CLIP, normalised template features, exp(logit_scale)."""
    fp32 = backbone.build_random_clip("tiny").eval()  # the tiny CLIP's weights, fp32 (load_clip("tiny") is seed 0)
    with torch.no_grad():
        text = fp32.encode_text(backbone.tokenize([template.format(n.replace("_", " ")) for n in names]))
        text = text / text.norm(dim=-1, keepdim=True)
        image = fp32.encode_image(images.float())
        image = image / image.norm(dim=-1, keepdim=True)
        return fp32.logit_scale.exp() * image @ text.t()


# -- the objective ----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_two_terms_are_ce_and_the_soft_cross_entropy_to_the_teacher(temperature):
    generator = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    labels = torch.tensor([0, 2, 4, 1])
    ce, kl = prograd_terms(logits, teacher, labels, temperature)
    expected_ce, expected_kl = 0.0, 0.0
    for row, label in enumerate(labels.tolist()):
        z, t = logits[row].double().numpy(), teacher[row].double().numpy()
        expected_ce += -(z[label] - math.log(np.exp(z).sum())) / 4
        p = np.exp(t / temperature) / np.exp(t / temperature).sum()
        log_q = z / temperature - math.log(np.exp(z / temperature).sum())
        expected_kl += -(p * log_q).sum() * temperature**2 / 4
    assert float(ce) == pytest.approx(expected_ce, rel=1e-5)
    assert float(kl) == pytest.approx(expected_kl, rel=1e-5)


def published_update(g_ce: np.ndarray, g_kl: np.ndarray, lam: float) -> np.ndarray:
    """trainer.py:330-346 in float64: project where cos(g_ce, g_kl) < 0."""
    b = g_kl / np.linalg.norm(g_kl)
    if np.dot((g_ce / np.linalg.norm(g_ce)).ravel(), b.ravel()) < 0:
        return g_ce - lam * np.dot(g_ce.ravel(), b.ravel()) * b
    return g_ce


def test_projection_where_the_gradients_conflict_and_not_elsewhere():
    g_kl = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    conflicting = torch.tensor([[-2.0, 1.0], [0.5, -1.0]])  # dot with g_kl = -3 < 0
    agreeing = torch.tensor([[2.0, 1.0], [0.5, -1.0]])  # dot = +1
    out = project_conflicting(conflicting, g_kl, 1.0)
    np.testing.assert_allclose(out.numpy(), published_update(conflicting.numpy(), g_kl.numpy(), 1.0), rtol=1e-6)
    assert abs(float((out * g_kl).sum())) < 1e-6  # lambda = 1: orthogonal to the KL gradient
    half = project_conflicting(conflicting, g_kl, 0.5)
    np.testing.assert_allclose(half.numpy(), published_update(conflicting.numpy(), g_kl.numpy(), 0.5), rtol=1e-6)
    assert torch.equal(project_conflicting(agreeing, g_kl, 1.0), agreeing)
    # No epsilon: a zero KL gradient makes the cosine NaN, no conflict, the CE gradient unchanged.
    assert torch.equal(project_conflicting(conflicting, torch.zeros(2, 2), 1.0), conflicting)


def reference_gradients(clip, names, images, labels, teacher):
    """dCE/dctx and dKL/dctx of a fresh model (same init), from the terms written out here."""
    reference = build(clip, names, template=PETS).train()
    logits = reference(images)
    ce = F.cross_entropy(logits, labels)
    kl = (-F.softmax(teacher, -1) * F.log_softmax(logits, -1)).sum(1).mean()
    (g_ce,) = torch.autograd.grad(ce, reference.prompt_learner.ctx, retain_graph=True)
    (g_kl,) = torch.autograd.grad(kl, reference.prompt_learner.ctx)
    return g_ce.double().numpy(), g_kl.double().numpy(), logits.detach(), ce.detach(), kl.detach()


@pytest.mark.parametrize("case", ["conflict", "agreement"])
def test_backward_leaves_the_published_update_in_ctx_grad(tiny_clip, classnames, images, case):
    teacher = zero_shot_logits(tiny_clip, classnames, PETS, images)
    # The first batch labelling (in a fixed order) whose two gradients conflict / agree: both branches run.
    for labels in (torch.tensor([a, b, c]) for a in range(5) for b in range(5) for c in range(5)):
        g_ce, g_kl, logits, ce, kl = reference_gradients(tiny_clip, classnames, images, labels, teacher)
        if (np.dot(g_ce.ravel(), g_kl.ravel()) < 0) == (case == "conflict"):
            break
    else:
        pytest.fail(f"no labelling gives a gradient {case}")
    model = build(tiny_clip, classnames, template=PETS).train()
    details = {}
    returned = model.backward(images, labels, details=details)
    update = model.prompt_learner.ctx.grad.double().numpy()
    np.testing.assert_allclose(update, published_update(g_ce, g_kl, 1.0), rtol=1e-4, atol=1e-7)
    if case == "conflict":
        assert (
            not np.allclose(update, g_ce, rtol=1e-3)
            and abs(np.dot(update.ravel(), g_kl.ravel()))
            < 1e-6 * (np.linalg.norm(update) * np.linalg.norm(g_kl)) + 1e-12
        )
    assert float(returned) == pytest.approx(float(ce), rel=1e-6)
    assert float(details["kl"]) == pytest.approx(float(kl), rel=1e-5)
    torch.testing.assert_close(details["logits"], logits)
    # training_loss is the CE term alone.
    assert float(model.training_loss(images, labels).detach()) == pytest.approx(float(ce), rel=1e-6)


def test_a_scaled_backward_divided_by_its_scale_is_the_update(tiny_clip, classnames, images):
    labels = torch.tensor([0, 1, 2])
    grads = []
    for scale in (1.0, 2.0**16):
        model = build(tiny_clip, classnames).train()
        model.backward(images, labels, loss_scale=scale)
        grads.append(model.prompt_learner.ctx.grad / scale)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)


# -- the learner ------------------------------------------------------------------------------------


def test_template_init_keeps_the_words_last_and_a_punctuated_templates_tail_fixed(tiny_clip, classnames):
    model = build(tiny_clip, classnames, dataset="oxford_pets")
    assert model.template == PETS
    pl = model.prompt_learner
    words = "a type of pet, a photo of a"
    tokens = backbone.tokenizer().encode(words)
    assert len(words.split(" ")) == 8 and len(tokens) == 9  # "," is a token of its own
    embedding = tiny_clip.token_embedding.weight
    assert pl.ctx.shape == (16, backbone.text_width(tiny_clip))
    assert torch.equal(pl.ctx[:8].detach(), torch.zeros(8, pl.ctx.shape[1]))
    torch.testing.assert_close(pl.ctx[8:].detach(), embedding[tokens[:8]])
    # Positions 1..16 learnable; 17 is the ninth token ("a"), fixed, then the class name.
    ids = pl.tokenized_prompts[0]
    x = backbone.tokenize("X")[0, 1]
    assert ids[1:9].tolist() == [int(x)] * 8 and ids[9:17].tolist() == tokens[:8] and int(ids[17]) == tokens[8]
    torch.testing.assert_close(pl.token_suffix[0, 0], embedding[tokens[8]])
    name = backbone.tokenizer().encode("golden retriever")
    assert ids[18 : 18 + len(name)].tolist() == name


def test_init_options(tiny_clip, classnames):
    assert build(tiny_clip, classnames).record_options()["ctx_init"] == "a photo of a"  # the default template
    random = build(tiny_clip, classnames, ctx_init="")
    assert abs(random.prompt_learner.ctx.std().item() - 0.02) < 0.004 and random.prompt_learner.n_ctx == 16
    with pytest.raises(ValueError, match="n_ctx >= 8"):
        build(tiny_clip, classnames, dataset="oxford_pets", n_ctx=4)
    assert build(tiny_clip, classnames, dataset="dtd").template == "a texture of {}."
    with pytest.raises(ValueError, match="give the init words with ctx_init"):
        build(tiny_clip, classnames, template="a photo of a {}, a type of pet.")
    assert build(tiny_clip, classnames, template="{} texture.", ctx_init="a texture").ctx_init == "a texture"


def test_only_ctx_trains_and_the_teacher_is_not_in_the_model(tiny_clip, classnames, images):
    model = build(tiny_clip, classnames).train()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    model.backward(images, torch.tensor([0, 1, 2]))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "prompt_learner.ctx")
    assert list(model.checkpoint_state_dict()) == ["ctx", "token_prefix", "token_suffix"]


def test_new_classes_load_the_base_context_and_get_their_own_teacher(tiny_clip, classnames, images, tmp_path):
    base, new = classnames[:3], classnames[3:]
    trained = build(tiny_clip, base, subsample="base")
    with torch.no_grad():
        trained.prompt_learner.ctx.add_(0.1)
    path = str(tmp_path / "prompt_learner" / "model.pth.tar-100")
    trained.save_prompt_checkpoint(path, epoch=100)
    on_new = build(tiny_clip, new, subsample="new", seed=3)
    on_new.load_prompt_checkpoint(path)
    assert torch.equal(on_new.prompt_learner.ctx, trained.prompt_learner.ctx)
    assert on_new.teacher_text.shape[0] == len(new) and on_new(images).shape == (3, len(new))


# -- checkpoints ------------------------------------------------------------------------------------


def test_reads_the_authors_file_and_writes_their_layout(tiny_clip, classnames, images, tmp_path):
    fp16 = backbone.load_clip("tiny", precision="fp16")
    theirs = build(fp16, classnames, seed=5)
    with torch.no_grad():
        theirs.prompt_learner.ctx.normal_(0, 0.1)
    # As Dassl.ProGrad's save_model writes it (trainer.py:119-143): no val_result; an fp16 prompt learner.
    state = OrderedDict((k, v.clone()) for k, v in theirs.prompt_learner.state_dict().items())
    path = str(tmp_path / "prompt_learner" / "model.pth.tar-100")
    os.makedirs(os.path.dirname(path))
    torch.save({"state_dict": state, "epoch": 100, "optimizer": {"state": {}}, "scheduler": {"last_epoch": 100}}, path)
    ours = build(tiny_clip, classnames)
    assert ours.load_prompt_checkpoint(path)["epoch"] == 100
    torch.testing.assert_close(ours.prompt_learner.ctx.detach(), state["ctx"].float())
    out = str(tmp_path / "ours" / "model.pth.tar-1")
    ours.save_prompt_checkpoint(out, epoch=1)
    saved = torch.load(out, weights_only=False)
    assert set(saved) == {"state_dict", "epoch", "optimizer", "scheduler"}  # Dassl.ProGrad writes no val_result
    assert list(saved["state_dict"]) == list(state)


# -- precisions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision, tolerance", [("fp16", 0.05), ("bf16", 0.3)])
def test_low_precision_forward_and_update_agree_with_fp32(classnames, images, precision, tolerance):
    labels = torch.tensor([0, 1, 2])
    fp32 = build(backbone.load_clip("tiny"), classnames).train()
    low = build(backbone.load_clip("tiny", precision=precision), classnames).train()
    assert low.prompt_learner.ctx.dtype == backbone.PRECISIONS[precision]
    with torch.no_grad():
        torch.testing.assert_close(low(images).float(), fp32(images), rtol=tolerance, atol=tolerance)
    fp32.backward(images, labels)
    low.backward(images, labels)
    # The teacher computes in fp32 in every precision (prograd.py:225).
    assert low.teacher_text.dtype == torch.float32
    cosine = F.cosine_similarity(
        low.prompt_learner.ctx.grad.float().flatten(), fp32.prompt_learner.ctx.grad.flatten(), 0
    )
    assert float(cosine) > 0.95


def test_an_amp_step_keeps_the_teacher_in_fp32(classnames, images):
    # A fresh CLIP object: its teacher cache is empty, so the first step inside autocast computes it.
    labels = torch.tensor([0, 1, 2])
    amp = build(backbone.load_clip("tiny"), classnames).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp.backward(images, labels)
    assert amp.teacher_text.dtype == torch.float32
    fp32 = build(backbone.load_clip("tiny"), classnames).train()
    fp32.backward(images, labels)
    cosine = F.cosine_similarity(amp.prompt_learner.ctx.grad.flatten(), fp32.prompt_learner.ctx.grad.flatten(), 0)
    assert float(cosine) > 0.99


# -- through the runner -----------------------------------------------------------------------------


def test_a_run_trains_through_backward(tmp_path, monkeypatch):
    root = str(tmp_path / "data")
    make_synthetic_dataset(root, num_classes=4, train_per_class=4, val_per_class=1, test_per_class=2, image_size=32)
    calls = []
    backward = methods.prograd.ProGrad.backward
    monkeypatch.setattr(
        methods.prograd.ProGrad, "backward", lambda self, *a, **k: calls.append(1) or backward(self, *a, **k)
    )
    values = {
        "method": "prograd",
        "options": {"n_ctx": 4},
        "dataset": "synthetic",
        "data_root": root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 2,
        "subsample": "base",
        "evaluate": [{"dataset": "synthetic", "subsample": "base"}, {"dataset": "synthetic", "subsample": "new"}],
        "epochs": 2,
        "batch_size": 2,
        "num_workers": 0,
        "tracking": "none",
        "output_dir": str(tmp_path / "run"),
    }
    records = run(build_spec(values))
    assert len(calls) == 4 and [r["subsample"] for r in records] == ["base", "new"]
    assert records[0]["options"]["ctx_init"] == "a photo of a"
    saved = torch.load(str(tmp_path / "run" / "prompt_learner" / "model.pth.tar-2"), weights_only=False)
    assert "val_result" not in saved and set(saved["state_dict"]) == {"ctx", "token_prefix", "token_suffix"}
