"""PromptSRC (PROTOCOL-successors.md 4) on tiny CLIPs: the teacher templates, each loss term recomputed
independently, what trains, the precision layout, the authors' whole-model checkpoint, and Gaussian
prompt aggregation against its formula over a real run (and an exact resume after a kill)."""

import math
import os
import re

import deep_reference as ref
import pytest
import torch
import torch.nn.functional as F
from crash_child import kill_at
from fake_data import make_synthetic_dataset

import methods
from clipcore import backbone
from harness.checkpoint import checkpoint_path, latest_checkpoint
from harness.config import build_spec
from harness.runner import run
from methods.parts import deep_prompts
from methods.promptsrc import PROMPTSRC_TEMPLATES, PromptSRC, gpa_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["golden_retriever", "cat", "sea lake", "2000 AM General Hummer SUV"]


def build(clip, names=NAMES, seed=0, **options):
    torch.manual_seed(seed)
    return methods.build_method("promptsrc", clip, names, **options)


def test_teacher_templates_are_the_60_of_the_protocol_in_order():
    with open(os.path.join(ROOT, "docs", "PROTOCOL-successors.md")) as f:
        text = f.read()
    block = text.split("The 60 teacher templates", 1)[1].split("- fp16:", 1)[0]
    listed = re.findall(r"'([^']*\{\}[^']*)'", block)
    assert len(listed) == 60 and list(PROMPTSRC_TEMPLATES) == listed


def test_each_loss_term_recomputed_independently(deep_clip, small_images):
    templates = PROMPTSRC_TEMPLATES[::10]  # 6 of the 60 keep this test fast; the mean is the same code
    model = build(deep_clip, prompt_depth_text=3, prompt_depth_vision=3, templates=templates)
    ref.perturb(model)
    pl = model.prompt_learner
    labels = torch.tensor([2, 0, 1])
    model.train()
    details = {}
    loss = model.training_loss(small_images, labels, details=details)
    with torch.no_grad():
        # prompted features, written out from the placement facts
        embeddings, ids = ref.prompt_embeddings(deep_clip, NAMES, "a photo of a", pl.ctx)
        text = F.normalize(ref.text_features(deep_clip, embeddings, ids, list(pl.deep_text)), dim=-1)
        image = F.normalize(ref.image_features(deep_clip, small_images, pl.vision_ctx, list(pl.deep_vision)), dim=-1)
        scale = deep_clip.logit_scale.exp()
        logits = scale * image @ text.t()
        # the frozen teacher: mean of un-normalised features over the templates, then normalised
        per_template = [
            deep_clip.encode_text(backbone.tokenize([t.format(n.replace("_", " ")) for n in NAMES])) for t in templates
        ]
        teacher_text = F.normalize(torch.stack(per_template).mean(0), dim=-1)
        teacher_image = F.normalize(deep_clip.encode_image(small_images), dim=-1)
        zs_logits = scale * teacher_image @ teacher_text.t()
        ce = F.cross_entropy(logits, labels)
        text_l1 = 25 * (text - teacher_text).abs().mean()  # over all classes and dimensions
        image_l1 = 10 * (image - teacher_image).abs().mean()
        p_zs, log_p = zs_logits.softmax(-1), logits.log_softmax(-1)
        kl = (p_zs * (p_zs.log() - log_p)).sum() / (len(labels) * len(NAMES))  # sum / numel, not batch mean
    torch.testing.assert_close(details["logits"], logits, rtol=1e-5, atol=1e-4)
    for key, value in (("ce", ce), ("text_l1", text_l1), ("image_l1", image_l1), ("kl", kl)):
        torch.testing.assert_close(details[key], value, rtol=1e-4, atol=1e-6, msg=key)
    torch.testing.assert_close(loss.detach(), ce + kl + text_l1 + image_l1, rtol=1e-5, atol=1e-5)
    assert float(kl) > 1e-4 and float(text_l1) > 1e-3 and float(image_l1) > 1e-4


def test_prompts_train_the_teacher_does_not(deep_clip, small_images):
    model = build(deep_clip, prompt_depth_text=3, prompt_depth_vision=3).train()
    pl = model.prompt_learner
    names = [n for n, p in pl.named_parameters() if p.requires_grad]
    assert names == ["ctx", "vision_ctx", "deep_text.0", "deep_text.1", "deep_vision.0", "deep_vision.1"]
    text_w, vision_w = backbone.text_width(deep_clip), deep_prompts.vision_width(deep_clip)
    assert model.num_trainable_parameters() == 3 * 4 * text_w + 3 * 4 * vision_w
    model.training_loss(small_images, torch.tensor([0, 1, 2])).backward()
    for name, p in pl.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any(p.grad is not None for p in deep_clip.parameters())
    assert not model.teacher_text.requires_grad
    no_vision = build(deep_clip, prompt_depth_vision=0)
    assert no_vision.prompt_learner.vision_ctx is None and len(no_vision.prompt_learner.deep_vision) == 0
    with torch.no_grad():
        torch.testing.assert_close(no_vision.encode_image(small_images), backbone.encode_image(deep_clip, small_images))


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_precision_layout(precision, small_images):
    clip = backbone.freeze(backbone.build_random_clip("tiny", precision=precision, image_size=64))
    model = build(clip, prompt_depth_vision=2).train()
    pl = model.prompt_learner
    low = torch.float16 if precision == "fp16" else torch.float32
    assert pl.ctx.dtype == low and model.teacher_text.dtype == torch.float32  # the text teacher: fp32 CLIP
    assert pl.vision_ctx.dtype == pl.deep_vision[0].dtype == pl.deep_text[0].dtype == torch.float32  # VPT: fp32
    seen = {}
    # the first pass through the block is the prompted one (the teacher's un-prompted pass follows)
    handle = clip.visual.transformer.resblocks[1].register_forward_hook(lambda m, a, o: seen.setdefault("x", a[0]))
    try:
        details = {}
        loss = model.training_loss(small_images, torch.tensor([0, 1, 2]), details=details)
    finally:
        handle.remove()
    assert seen["x"].dtype == low
    torch.testing.assert_close(seen["x"][:, -4:], pl.deep_vision[0].detach().to(low).expand(3, -1, -1), rtol=0, atol=0)
    # zero-shot logits / image consistency in the (fp16) model dtype; text consistency against the fp32 teacher
    assert details["kl"].dtype == details["image_l1"].dtype == low and details["text_l1"].dtype == torch.float32
    loss.backward()
    assert pl.vision_ctx.grad.dtype == torch.float32 and pl.ctx.grad.dtype == low


def authors_keys(clip, depth_text, depth_vision):
    keys = {"prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix", "logit_scale"}
    keys |= {f"prompt_learner.ZS_image_encoder.{k}" for k in clip.visual.state_dict()}
    keys |= {f"image_encoder.{k}" for k in clip.visual.state_dict()} | {"image_encoder.VPT"}
    keys |= {f"image_encoder.transformer.resblocks.{i}.VPT_shallow" for i in range(1, depth_vision)}
    keys |= {f"text_encoder.transformer.{k}" for k in clip.transformer.state_dict()}
    keys |= {f"text_encoder.transformer.resblocks.{i}.VPT_shallow" for i in range(1, depth_text)}
    return (
        keys
        | {"text_encoder.positional_embedding", "text_encoder.ln_final.weight", "text_encoder.ln_final.bias"}
        | {"text_encoder.text_projection"}
    )


def test_checkpoint_is_the_authors_whole_model_and_round_trips(deep_clip, small_images, tmp_path):
    model = build(deep_clip, prompt_depth_text=3, prompt_depth_vision=2)
    ref.perturb(model)
    path = tmp_path / "VLPromptLearner" / "model.pth.tar-20"
    model.save_prompt_checkpoint(str(path), epoch=20)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert set(state) == authors_keys(deep_clip, 3, 2)
    torch.testing.assert_close(state["image_encoder.VPT"], model.prompt_learner.vision_ctx.detach())
    torch.testing.assert_close(
        state["text_encoder.transformer.resblocks.2.VPT_shallow"], model.prompt_learner.deep_text[1].detach()
    )
    torch.testing.assert_close(state["prompt_learner.ZS_image_encoder.conv1.weight"], deep_clip.visual.conv1.weight)
    # An fp16-run file: ctx in fp16, VPT in fp32, frozen copies slightly off (the authors' GPA rounds them).
    state = {k: (v.half() if k == "prompt_learner.ctx" else v) for k, v in state.items()}
    state["text_encoder.ln_final.bias"] = state["text_encoder.ln_final.bias"] + 1e-3
    torch.save({"state_dict": state, "epoch": 20, "optimizer": None, "scheduler": None, "val_result": None}, path)
    other = build(deep_clip, ["zebra", "fire truck"], seed=9, prompt_depth_text=3, prompt_depth_vision=2)
    other.load_prompt_checkpoint(str(path))
    torch.testing.assert_close(other.prompt_learner.ctx, model.prompt_learner.ctx.half().float())
    for name in ("vision_ctx", "deep_text.0", "deep_text.1", "deep_vision.0"):
        assert torch.equal(other.prompt_learner.get_parameter(name), model.prompt_learner.get_parameter(name)), name
    deeper = build(deep_clip, prompt_depth_text=2, prompt_depth_vision=2)
    with pytest.raises(ValueError, match="does not have"):
        deeper.load_prompt_checkpoint(str(path))


def test_gpa_weights_formula():
    for epochs, mean, std in ((20, 15, 1), (20, 6, 10), (4, 2.5, 1.0)):
        g = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
        expected = [x / sum(g) for x in g]
        assert gpa_weights(epochs, mean, std) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    w = gpa_weights(20, 15, 1)
    assert sum(w) == pytest.approx(1.0) and max(range(20), key=w.__getitem__) == 14  # epoch 15
    assert w[0] < 1e-40 and w[13] == pytest.approx(w[15])


# -- GPA over a real run ----------------------------------------------------------------------------

GPA = {"gpa_mean": 2.5, "gpa_std": 1.0}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpadata")
    make_synthetic_dataset(
        str(root), num_classes=6, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24
    )
    return str(root)


def gpa_spec(data_root, out) -> dict:
    return {
        "method": "promptsrc",
        "options": GPA,
        "dataset": "synthetic",
        "data_root": data_root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 4,
        "seed": 1,
        "subsample": "base",
        "evaluate": [{"dataset": "synthetic", "subsample": "base"}],
        "epochs": 4,
        "batch_size": 4,
        "lr": 0.05,
        "warmup_epochs": 0,
        "num_workers": 0,
        "tracking": "none",
        "experiment": "test",
        "output_dir": os.path.join(str(out), "run"),
    }


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory):
    """An uninterrupted 4-epoch PromptSRC run, with each epoch's learned tensors just before GPA."""
    out = tmp_path_factory.mktemp("straight")
    snapshots = []
    original = PromptSRC.on_epoch_end

    def on_epoch_end(self, epoch, epochs):
        snapshots.append({n: p.detach().clone().double() for n, p in self._learned().items()})
        original(self, epoch, epochs)

    PromptSRC.on_epoch_end = on_epoch_end
    try:
        spec = build_spec(gpa_spec(data_root, out))
        records = run(spec)
    finally:
        PromptSRC.on_epoch_end = original
    return spec, records, snapshots


def learned_in(checkpoint: dict) -> dict:
    names = {"prompt_learner.ctx": "ctx", "image_encoder.VPT": "vision_ctx"}
    names["image_encoder.transformer.resblocks.1.VPT_shallow"] = "deep_vision.0"
    names["text_encoder.transformer.resblocks.1.VPT_shallow"] = "deep_text.0"
    return {mine: checkpoint["state_dict"][theirs] for theirs, mine in names.items()}


def test_gpa_accumulates_after_each_epoch_and_the_last_checkpoint_holds_the_average(straight_run):
    spec, records, snapshots = straight_run
    assert len(snapshots) == 4 and records[0]["metrics"]["total"] == 9
    g = [math.exp(-0.5 * ((e - 2.5) / 1.0) ** 2) for e in range(1, 5)]
    w = [x / sum(g) for x in g]
    assert not torch.equal(snapshots[2]["ctx"], snapshots[3]["ctx"])  # the prompts did move
    last = torch.load(checkpoint_path(spec.output_dir, 4, "VLPromptLearner"), weights_only=False)
    before = torch.load(checkpoint_path(spec.output_dir, 3, "VLPromptLearner"), weights_only=False)
    for name in snapshots[0]:
        partial = sum(w[e] * snapshots[e][name] for e in range(3))
        full = partial + w[3] * snapshots[3][name]
        # epoch 3: the raw prompts of epoch 3 are saved, the running sum w_1 s_1 + w_2 s_2 + w_3 s_3 beside them
        assert torch.equal(learned_in(before)[name].double(), snapshots[2][name]), name
        torch.testing.assert_close(before["method_state"]["gpa_sum"][name].double(), partial, rtol=1e-6, atol=1e-7)
        # after the last epoch the model *is* the weighted sum, and that is what the last checkpoint holds
        torch.testing.assert_close(learned_in(last)[name].double(), full, rtol=1e-6, atol=1e-7)
        assert torch.equal(learned_in(last)[name], last["method_state"]["gpa_sum"][name])
        assert not torch.allclose(full, snapshots[3][name])


@pytest.mark.slow
def test_killed_mid_training_resumes_to_the_same_average(data_root, tmp_path, straight_run):
    spec, records, _ = straight_run
    values = gpa_spec(data_root, tmp_path / "killed")
    kill_at(values, "mid-epoch:3", tmp_path)
    assert latest_checkpoint(values["output_dir"])[1] == 2
    resumed = run(build_spec(values))
    assert [r["metrics"] for r in resumed] == [r["metrics"] for r in records]
    a = torch.load(latest_checkpoint(spec.output_dir)[0], weights_only=False)
    b = torch.load(latest_checkpoint(values["output_dir"])[0], weights_only=False)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in a["method_state"]["gpa_sum"]:
        assert torch.equal(a["method_state"]["gpa_sum"][key], b["method_state"]["gpa_sum"][key]), key
