"""MMRL (PROTOCOL-successors-2.md "DePT (on CoOp) and MMRL" 0, 1, 5-9) on a tiny random CLIP: both towers
written out here over all 77 text positions (tokens inserted after BOS / CLS at the first rep layer,
replaced later, the causal mask over the longer text), the three logits, the loss terms, the
B2N / FS / CD switch, what trains, the per-dataset settings, the authors' whole-model checkpoint with a
new-class load, and the forward in fp32 / fp16 / bf16."""

import copy
import math
import os

import deep_reference as ref
import pytest
import torch
import torch.nn.functional as F
from fake_data import make_synthetic_dataset

import methods
from clipcore import backbone
from harness.config import RunSpec, build_spec
from harness.runner import run
from methods.parts.base import CheckpointError

BASE = ["golden_retriever", "cat", "sea lake", "2000 AM General Hummer SUV"]
NEW = ["tabby", "dog", "river"]
LAYERS = [2, 3, 4]  # 1-indexed, of 4 blocks per tower
ALPHA = 0.7


def build(clip, names=BASE, seed=0, **options):
    torch.manual_seed(seed)
    options.setdefault("subsample", "base")
    options.setdefault("rep_layers", LAYERS)
    return methods.build_method("mmrl", clip, names, **options)


@pytest.fixture(scope="module")
def clip():
    """4 blocks per tower, and a logit scale that is not 100 (the authors' fixed 100 must show)."""
    model = backbone.freeze(backbone.build_random_clip("tiny", text_layers=4, vision_layers=4, image_size=64))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    return model


def mapped(model):
    pl = model.prompt_learner
    r = pl.compound_rep_tokens
    text = [F.linear(r, p.weight, p.bias) for p in pl.compound_rep_tokens_r2tproj]
    vision = [F.linear(r, p.weight, p.bias) for p in pl.compound_rep_tokens_r2vproj]
    return text, vision


def text_reference(clip, names, template, tokens, layers):
    """All 77 positions, open_clip's blocks in a plain loop; feature at EOT + K."""
    ids = backbone.tokenize([template.format(n.replace("_", " ")) for n in names])
    x = clip.token_embedding(ids) + clip.positional_embedding
    k = tokens[0].shape[0]
    for i, block in enumerate(clip.transformer.resblocks):
        if i + 1 in layers:
            r = tokens[layers.index(i + 1)].unsqueeze(0).expand(len(names), -1, -1)
            x = torch.cat([x[:, :1], r, x[:, 1:] if i + 1 == layers[0] else x[:, 1 + k :]], dim=1)
        n = x.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
        x = block(x, attn_mask=mask)
    x = clip.ln_final(x)
    return x[torch.arange(len(names)), ids.argmax(dim=-1) + k] @ clip.text_projection


def image_reference(clip, images, tokens, layers, proj_rep):
    visual = clip.visual
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    k = tokens[0].shape[0]
    for i, block in enumerate(visual.transformer.resblocks):
        if i + 1 in layers:
            r = tokens[layers.index(i + 1)].unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], r, x[:, 1:] if i + 1 == layers[0] else x[:, 1 + k :]], dim=1)
        x = block(x)
    v_cls = visual.ln_post(x[:, 0]) @ visual.proj
    v_rep = visual.ln_post(x[:, 1 : 1 + k]).mean(dim=1) @ proj_rep
    return v_cls, v_rep


def reference(model, clip, images, names=BASE):
    text_tokens, vision_tokens = mapped(model)
    t = F.normalize(text_reference(clip, names, model.template, text_tokens, LAYERS), dim=-1)
    v_cls, v_rep = image_reference(clip, images, vision_tokens, LAYERS, model.prompt_learner.proj_rep)
    logits = 100 * F.normalize(v_cls, dim=-1) @ t.t()
    logits_rep = 100 * F.normalize(v_rep, dim=-1) @ t.t()
    return logits, logits_rep, ALPHA * logits + (1 - ALPHA) * logits_rep, v_cls, t


def test_logits_of_both_branches_against_the_hand_written_towers(clip, small_images):
    model = build(clip)
    ref.perturb(model)
    with torch.no_grad():
        logits, logits_rep, fusion, _, _ = reference(model, clip, small_images)
        branches = model.branch_logits(model.encode_image(small_images), model.text_features())
        for got, want in zip(branches, (logits, logits_rep, fusion)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        for mode in (True, False):  # base classes, B2N: the fused logits in both modes
            torch.testing.assert_close(model.train(mode)(small_images), fusion, rtol=1e-5, atol=1e-4)
        scale = clip.logit_scale.exp()  # 20 here: the authors' 100 ignores it
        assert not torch.allclose(logits, scale * logits / 100)


def test_loss_terms(clip, small_images):
    model = build(clip, reg_weight=2.5)
    ref.perturb(model)
    labels = torch.tensor([3, 0, 3])
    details = {}
    loss = model.train().training_loss(small_images, labels, details=details)
    with torch.no_grad():
        logits, logits_rep, _, v_cls, t = reference(model, clip, small_images)
        v0 = F.normalize(clip.encode_image(small_images), dim=-1)
        ids = backbone.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in BASE])
        t0 = F.normalize(clip.encode_text(ids), dim=-1)
        image_term = 2.5 * (1 - (F.normalize(v_cls, dim=-1) * v0).sum(-1).mean())
        text_term = 2.5 * (1 - (t * t0).sum(-1).mean())
        expected = ALPHA * F.cross_entropy(logits, labels) + (1 - ALPHA) * F.cross_entropy(logits_rep, labels)
    torch.testing.assert_close(details["reg_image"], image_term, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(details["reg_text"], text_term, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss.detach(), expected + image_term + text_term, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "task, subsample, dataset, fusion",
    [
        ("B2N", "base", "dtd", True),
        ("B2N", "new", "dtd", False),
        ("B2N", "all", "dtd", False),
        ("FS", "all", "dtd", True),
        ("FS", "new", "dtd", True),
        ("CD", "all", "imagenet", True),
        ("CD", "all", "imagenetv2", False),  # the authors test DATASET.NAME == "ImageNet" exactly
        ("CD", "all", "eurosat", False),
    ],
)
def test_which_logits_are_scored(clip, small_images, task, subsample, dataset, fusion):
    model = build(clip, task=task, subsample=subsample, dataset=dataset, rep_dim=512, template="a photo of a {}.")
    ref.perturb(model)
    with torch.no_grad():
        logits, _, fused, _, _ = reference(model, clip, small_images)
        torch.testing.assert_close(model.eval()(small_images), fused if fusion else logits, rtol=1e-5, atol=1e-4)
    assert model.record_options()["scored"] == ("fusion" if fusion else "class_token")
    with pytest.raises(ValueError, match="B2N"):
        build(clip, task="XD")


def test_what_trains_and_how_it_starts(clip, small_images):
    model = build(clip)
    pl = model.prompt_learner
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"prompt_learner.proj_rep", "prompt_learner.compound_rep_tokens"}
    for tower in ("r2v", "r2t"):
        expected |= {
            f"prompt_learner.compound_rep_tokens_{tower}proj.{i}.{w}" for i in range(3) for w in ("weight", "bias")
        }
    assert trained == expected and len(model.parameter_groups()) == 1
    assert pl.compound_rep_tokens.shape == (5, 512) and abs(pl.compound_rep_tokens.std().item() - 0.02) < 0.006
    # The per-layer projections are copies of one Linear; proj_rep is new and random, not CLIP's proj.
    assert all(torch.equal(p.weight, pl.compound_rep_tokens_r2vproj[0].weight) for p in pl.compound_rep_tokens_r2vproj)
    assert all(torch.equal(p.bias, pl.compound_rep_tokens_r2tproj[0].bias) for p in pl.compound_rep_tokens_r2tproj)
    assert not torch.allclose(pl.proj_rep, clip.visual.proj)
    model.train().training_loss(small_images, torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    assert not any(p.grad is not None for p in clip.parameters())
    with pytest.raises(ValueError, match="rep_layers"):
        build(clip, rep_layers=[3, 9])


def test_per_dataset_settings_and_the_template(clip):
    eurosat = build(clip, dataset="eurosat")
    assert eurosat.prompt_learner.rep_dim == 2048 and eurosat.reg_weight == 0.01
    assert eurosat.template == "a centered satellite photo of {}."
    cars = build(clip, dataset="stanford_cars")
    assert cars.reg_weight == 7.0 and cars.prompt_learner.rep_dim == 512
    assert build(clip, dataset="miniworld_dusk").reg_weight == 1.0
    cd = build(clip, dataset="imagenet", reg_weight=0.2, rep_dim=512, task="CD", subsample="all")
    assert cd.reg_weight == 0.2 and cd.fusion
    assert build(clip, dataset="dtd").template == "{} texture."
    # The few-shot config's REG_WEIGHT 0.5 holds only where trainers/config.py lists no value (train.py:132).
    assert build(clip, dataset="miniworld_dusk", config_reg_weight=0.5, task="FS").reg_weight == 0.5
    assert build(clip, dataset="eurosat", config_reg_weight=0.5, task="FS").reg_weight == 0.01


def authors_state(model, clip):
    """The authors' whole CustomCLIP under their names (PROTOCOL-successors-2.md 8), built here."""
    pl = model.prompt_learner
    state = {"prompt_embeddings": torch.randn(len(model.classnames), 77, backbone.text_width(clip))}
    state["representation_learner.compound_rep_tokens"] = pl.compound_rep_tokens.detach().clone()
    for tower in ("r2v", "r2t"):
        for i, layer in enumerate(getattr(pl, f"compound_rep_tokens_{tower}proj")):
            for w in ("weight", "bias"):
                key = f"representation_learner.compound_rep_tokens_{tower}proj.{i}.{w}"
                state[key] = getattr(layer, w).detach().clone()
    state.update({f"image_encoder.{k}": v.clone() for k, v in clip.visual.state_dict().items()})
    state["image_encoder.proj_rep"] = pl.proj_rep.detach().clone()
    state.update({f"text_encoder.transformer.{k}": v.clone() for k, v in clip.transformer.state_dict().items()})
    state["text_encoder.positional_embedding"] = clip.positional_embedding.detach().clone()
    state["text_encoder.text_projection"] = clip.text_projection.detach().clone()
    state.update({f"text_encoder.ln_final.{k}": v.clone() for k, v in clip.ln_final.state_dict().items()})
    return state


def test_checkpoint_in_the_authors_layout_and_the_new_class_load(clip, small_images, tmp_path):
    model = build(clip)
    ref.perturb(model)
    path = str(tmp_path / "MultiModalRepresentationLearner" / "model.pth.tar-10")
    model.save_prompt_checkpoint(path, 10)
    saved = torch.load(path, weights_only=False)
    assert {"state_dict", "epoch", "optimizer", "scheduler", "val_result"} <= set(saved)
    assert set(saved["state_dict"]) == set(authors_state(model, clip))  # no logit_scale: their CustomCLIP has none
    assert model.checkpoint_folder == "MultiModalRepresentationLearner"
    other = build(clip, seed=9)
    other.load_prompt_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(small_images), model.eval()(small_images))
    # The authors' file, read by a model of the new classes: prompt_embeddings (base classes) dropped.
    torch.save({"state_dict": authors_state(model, clip), "epoch": 10, "optimizer": {}, "scheduler": {}}, path)
    new = build(clip, names=NEW, seed=3, subsample="new")
    new.load_prompt_checkpoint(path)
    with torch.no_grad():
        logits, _, _, _, _ = reference(new, clip, small_images, NEW)
        torch.testing.assert_close(new.eval()(small_images), logits, rtol=1e-5, atol=1e-4)
    for name, p in model.prompt_learner.named_parameters():
        torch.testing.assert_close(dict(new.prompt_learner.named_parameters())[name], p, msg=name)
    with pytest.raises(CheckpointError, match="shape"):
        build(clip, rep_dim=64).load_prompt_checkpoint(path)
    with pytest.raises(CheckpointError):
        build(clip, rep_layers=[3, 4]).load_prompt_checkpoint(path)


PRECISIONS = [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]


@pytest.mark.parametrize("precision, dtype", PRECISIONS)
def test_forward_and_loss_in_each_precision(precision, dtype, small_images):
    low = backbone.freeze(
        backbone.build_random_clip("tiny", precision=precision, image_size=64, text_layers=4, vision_layers=4)
    )
    fp32 = backbone.freeze(backbone.build_random_clip("tiny", image_size=64, text_layers=4, vision_layers=4))
    model, exact = build(low), build(fp32)
    pl = model.prompt_learner
    assert pl.compound_rep_tokens.dtype == dtype and pl.compound_rep_tokens_r2tproj[0].weight.dtype == dtype
    assert pl.proj_rep.dtype == torch.float32  # never converted (quirk 4)
    with torch.no_grad():
        exact.prompt_learner.load_state_dict({k: v.float() for k, v in pl.state_dict().items()})
        logits = model.eval()(small_images)
        expected = exact.eval()(small_images)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(logits.float(), expected, rtol=tolerance, atol=tolerance * 100)
    loss = model.train().training_loss(small_images, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and pl.compound_rep_tokens.grad.dtype == dtype


def test_options_and_copy(clip):
    options = methods.method_options("mmrl")
    assert options["task"] == "B2N" and options["alpha"] == 0.7
    assert methods.method_class("mmrl")(clip, BASE, rep_layers=LAYERS).subsample == "all"  # Dassl's default
    assert options["rep_layers"] is None and options["n_rep_tokens"] == 5
    copy.deepcopy(build(clip))
    vit_b16_depth = methods.mmrl.default_rep_layers(12)
    assert vit_b16_depth == [6, 7, 8, 9, 10, 11, 12]  # the published REP_LAYERS
    torch.manual_seed(0)
    assert methods.build_method("mmrl", clip, BASE).prompt_learner.rep_layers == [2, 3, 4]


def run_spec(root, folder, **changes):
    make_synthetic_dataset(root, num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24)
    values = {
        "config": "mmrl/vit_b16",
        "options": {"rep_layers": [1, 2]},
        "dataset": "synthetic",
        "data_root": root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 2,
        "subsample": "base",
        "evaluate": [{"dataset": "synthetic", "subsample": "base"}, {"dataset": "synthetic", "subsample": "new"}],
        "epochs": 2,
        "num_workers": 0,
        "tracking": "none",
        "output_dir": str(folder / "run"),
        "results": str(folder / "results.jsonl"),
        "feature_cache": str(folder / "cache"),
    }
    return build_spec({**values, **changes})


NEEDS_RUN_KEYS = pytest.mark.skipif(
    not hasattr(RunSpec, "optimizer"), reason="needs the run keys optimizer / crop_scale"
)


@NEEDS_RUN_KEYS
def test_a_run_trains_on_base_and_scores_base_and_new(tmp_path):
    """The runner end to end with the published config (AdamW, crop scale 0.5-1) on the tiny CLIP: the
    authors' folder and layout, a new-class evaluation loading the file, no shared feature cache."""
    spec = run_spec(str(tmp_path / "data"), tmp_path)
    assert (spec.optimizer, spec.crop_scale, spec.lr, spec.batch_size) == ("adamw", [0.5, 1.0], 0.001, 4)
    records = run(spec)
    assert [r["subsample"] for r in records] == ["base", "new"] and all(r["metrics"]["total"] == 6 for r in records)
    path = tmp_path / "run" / "MultiModalRepresentationLearner" / "model.pth.tar-2"
    saved = torch.load(path, weights_only=False)["state_dict"]
    assert "image_encoder.proj_rep" in saved and saved["prompt_embeddings"].shape[0] == 2
    assert not os.path.exists(tmp_path / "cache")
    # The run builds each evaluation model for its classes (subsample): fused on base, class token on new.
    assert [r["options"]["scored"] for r in records] == ["fusion", "class_token"]


def test_the_text_teacher_is_computed_outside_autocast(clip, small_images):
    """amp: the authors build the teacher in fp32 before training; the first step's autocast must not lower it."""
    model = build(clip, names=NEW, template="itap of a {}.")  # a class set no other test's teacher was cached for
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        model.train().training_loss(small_images, torch.tensor([0, 1, 2]))
    ids = backbone.tokenize([f"itap of a {n}." for n in NEW])
    with torch.no_grad():
        expected = F.normalize(clip.encode_text(ids), dim=-1)
    assert model.teacher_text.dtype == torch.float32
    torch.testing.assert_close(model.teacher_text, expected, rtol=1e-5, atol=1e-5)
