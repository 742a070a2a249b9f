"""MaPLe (PROTOCOL-successors.md 3) on tiny CLIPs: the prompt text, the coupled deep prompts against a
hand-written forward, which tensors train, fp16 layout, the authors' whole-model checkpoint, and the
feature cache left alone by methods that prompt the image encoder."""

import os

import deep_reference as ref
import pytest
import torch
import torch.nn.functional as F
from fake_data import make_synthetic_dataset

import methods
from clipcore import backbone
from harness.config import build_spec
from harness.runner import run
from methods.parts import deep_prompts
from methods.parts.base import CheckpointError

NAMES = ["golden_retriever", "cat", "sea lake", "2000 AM General Hummer SUV"]


def build(clip, names=NAMES, seed=0, **options):
    torch.manual_seed(seed)
    return methods.build_method("maple", clip, names, **options)


def test_two_learnable_tokens_and_of_a_stays_fixed_words(tiny_clip):
    model = build(tiny_clip)
    pl = model.prompt_learner
    words = tiny_clip.token_embedding.weight[backbone.tokenize("a photo of a")[0, 1:5]]
    torch.testing.assert_close(pl.ctx.detach(), words[:2])  # "a photo" learnable
    torch.testing.assert_close(pl.token_suffix[:, :2], words[2:].expand(len(NAMES), -1, -1))  # "of a" fixed
    name_ids = backbone.tokenizer().encode("golden retriever")  # the prompt: "a photo of a golden retriever."
    assert pl.tokenized_prompts[0, 1 : 5 + len(name_ids)].tolist() == [320, 1125, 539, 320, *name_ids]


def test_logits_and_loss_equal_the_hand_written_coupled_forward(deep_clip, small_images):
    model = build(deep_clip, prompt_depth=3)
    ref.perturb(model)
    pl = model.prompt_learner
    labels = torch.tensor([1, 0, 3])
    model.train()
    loss = model.training_loss(small_images, labels)
    with torch.no_grad():
        v0 = F.linear(pl.ctx, pl.proj.weight, pl.proj.bias)
        v = [
            F.linear(p, layer.weight, layer.bias)
            for p, layer in zip(pl.compound_prompts_text, pl.compound_prompt_projections)
        ]
        embeddings, ids = ref.prompt_embeddings(deep_clip, NAMES, "a photo of a", pl.ctx)
        text = ref.text_features(deep_clip, embeddings, ids, list(pl.compound_prompts_text))
        image = ref.image_features(deep_clip, small_images, v0, v)
        logits = ref.cosine_logits(deep_clip, image, text)
        torch.testing.assert_close(model(small_images), logits, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits, labels), rtol=1e-5, atol=1e-5)
    assert len(pl.compound_prompts_text) == 2 and model.record_options() == {"n_ctx": 2, "prompt_depth": 3}


def test_everything_in_the_learner_trains_and_vision_gradients_reach_the_text_prompts(deep_clip, small_images):
    model = build(deep_clip, prompt_depth=3)
    pl = model.prompt_learner
    learner = {f"prompt_learner.{n}" for n, _ in pl.named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == learner
    # The coupling: a loss of the image features alone reaches ctx (through proj) and every deep text prompt.
    model.encode_image(small_images).sum().backward()
    for name, p in pl.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any(p.grad is not None for p in deep_clip.parameters())
    # The projections are copies of one Linear: they start equal.
    fresh = build(deep_clip, prompt_depth=4).prompt_learner.compound_prompt_projections
    assert len(fresh) == 3 and all(torch.equal(fresh[0].weight, layer.weight) for layer in fresh)
    w = backbone.text_width(deep_clip)
    assert pl.proj.weight.shape == (deep_prompts.vision_width(deep_clip), w)
    assert model.num_trainable_parameters() == sum(p.numel() for p in pl.parameters())


def test_depth_is_limited_by_the_deeper_tower(small_images):
    clip = backbone.freeze(backbone.build_random_clip("tiny", text_layers=2, vision_layers=3, image_size=64))
    refused = "prompt_depth 9 is more than the 3 blocks of this CLIP: give prompt_depth <= 3"
    with pytest.raises(ValueError, match=refused):
        build(clip, prompt_depth=9)  # run at 3, its options would say 9
    model = build(clip, prompt_depth=None)  # the published 9, or every block of a smaller CLIP
    assert model.prompt_learner.depth == 3 and len(model.prompt_learner.compound_prompts_text) == 2
    model.encode_image(small_images).sum().backward()  # both deep prompts serve the 3-block vision tower
    assert all(p.grad is not None for p in model.prompt_learner.compound_prompts_text)
    with pytest.raises(
        ValueError, match=r"'prompt_depth' of method 'maple' must be an integer >= 1 or None \(null\), got 0"
    ):
        build(clip, prompt_depth=0)


def test_fp16_layout_as_published(small_images):
    clip = backbone.freeze(backbone.build_random_clip("tiny", precision="fp16", image_size=64))
    model = build(clip, prompt_depth=2)
    pl = model.prompt_learner
    assert pl.ctx.dtype == pl.proj.weight.dtype == torch.float16  # proj.half() (maple.py:104)
    assert pl.compound_prompts_text[0].dtype == pl.compound_prompt_projections[0].weight.dtype == torch.float32
    seen = {}
    handle = clip.visual.transformer.resblocks[1].register_forward_hook(lambda m, a, o: seen.update(x=a[0]))
    try:
        model.train()
        loss = model.training_loss(small_images, torch.tensor([0, 1, 2]))
    finally:
        handle.remove()
    deep = pl.compound_prompt_projections[0](pl.compound_prompts_text[0]).detach()
    assert seen["x"].dtype == torch.float16
    torch.testing.assert_close(seen["x"][:, -2:], deep.half().expand(3, -1, -1), rtol=0, atol=0)  # .half() at entry
    loss.backward()
    assert pl.compound_prompts_text[0].grad.dtype == torch.float32 and pl.ctx.grad.dtype == torch.float16


def authors_keys(clip, depth, n_ctx=2):
    learner = {"ctx", "proj.weight", "proj.bias", "token_prefix", "token_suffix"}
    for i in range(depth - 1):
        learner |= {f"compound_prompts_text.{i}", f"compound_prompt_projections.{i}.weight"}
        learner |= {f"compound_prompt_projections.{i}.bias"}
    keys = {f"prompt_learner.{k}" for k in learner}
    keys |= {f"image_encoder.{k}" for k in clip.visual.state_dict()}
    keys |= {f"text_encoder.transformer.{k}" for k in clip.transformer.state_dict()}
    keys |= {"text_encoder.positional_embedding", "text_encoder.ln_final.weight", "text_encoder.ln_final.bias"}
    return keys | {"text_encoder.text_projection", "logit_scale"}


def test_checkpoint_is_the_authors_whole_model_and_round_trips(deep_clip, small_images, tmp_path):
    model = build(deep_clip, prompt_depth=3)
    ref.perturb(model)
    path = tmp_path / "MultiModalPromptLearner" / "model.pth.tar-5"
    model.save_prompt_checkpoint(str(path), epoch=5)
    saved = torch.load(path, weights_only=False)
    assert set(saved) >= {"state_dict", "epoch", "optimizer", "scheduler", "val_result"}
    assert set(saved["state_dict"]) == authors_keys(deep_clip, 3)
    assert "token_embedding.weight" not in saved["state_dict"]  # their CustomCLIP does not hold it
    torch.testing.assert_close(saved["state_dict"]["image_encoder.conv1.weight"], deep_clip.visual.conv1.weight)

    other = build(deep_clip, ["zebra", "fire truck"], seed=5, prompt_depth=3)
    other.load_prompt_checkpoint(str(path))
    for (name, p), (_, q) in zip(other.prompt_learner.named_parameters(), model.prompt_learner.named_parameters()):
        assert torch.equal(p, q), name
    same = build(deep_clip, seed=6, prompt_depth=3)
    same.load_prompt_checkpoint(str(path))
    with torch.no_grad():
        torch.testing.assert_close(same(small_images), model(small_images), rtol=0, atol=0)


def test_authors_fp16_file_loads_frozen_copies_ignored_other_shapes_refused(deep_clip, tmp_path):
    model = build(deep_clip, prompt_depth=3)
    ref.perturb(model, seed=2)
    state = model.checkpoint_state_dict()
    state = {
        k: (v.half() if k.startswith("prompt_learner.") and v.is_floating_point() else v) for k, v in state.items()
    }
    state = {k: (v + 1.0 if k == "image_encoder.ln_post.weight" else v) for k, v in state.items()}  # a different copy
    state["prompt_learner.token_prefix"] = torch.zeros(37, 1, backbone.text_width(deep_clip)).half()
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": state, "epoch": 5, "optimizer": None, "scheduler": None, "val_result": None}, path)
    before = deep_clip.visual.ln_post.weight.clone()
    fresh = build(deep_clip, seed=3, prompt_depth=3)
    fresh.load_prompt_checkpoint(str(path))
    assert torch.equal(deep_clip.visual.ln_post.weight, before)  # the run's backbone is the one used
    assert fresh.prompt_learner.ctx.dtype == torch.float32
    torch.testing.assert_close(fresh.prompt_learner.ctx, model.prompt_learner.ctx.half().float())
    assert fresh.prompt_learner.token_prefix.shape[0] == len(NAMES)

    wrong = dict(state, **{"image_encoder.conv1.weight": torch.zeros(3, 3)})
    torch.save({"state_dict": wrong, "epoch": 5}, path)
    with pytest.raises(CheckpointError, match="another backbone"):
        fresh.load_prompt_checkpoint(str(path))
    shallow = build(deep_clip, prompt_depth=2)
    torch.save({"state_dict": state, "epoch": 5}, path)
    with pytest.raises(CheckpointError, match="does not have"):
        shallow.load_prompt_checkpoint(str(path))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24
    )
    return str(root)


def test_methods_that_prompt_the_image_encoder_never_touch_the_feature_cache(data_root, tmp_path):
    def job(method, name):
        return build_spec(
            {
                "method": method,
                "dataset": "synthetic",
                "data_root": data_root,
                "backbone": "tiny",
                "precision": "fp32",
                "shots": 2,
                "subsample": "base",
                "epochs": 1,
                "batch_size": 2,
                "num_workers": 0,
                "tracking": "none",
                "output_dir": str(tmp_path / name),
                "results": str(tmp_path / "results.jsonl"),
                "feature_cache": str(tmp_path / "cache"),
            }
        )

    for method in ("maple", "promptsrc"):
        assert run(job(method, method))[0]["metrics"]["total"] == 6
        assert not os.path.exists(tmp_path / "cache"), method
    run(job("coop", "coop"))
    entries = os.listdir(tmp_path / "cache")
    run(job("kgcoop", "kgcoop"))  # the frozen tower's features: the same entry, read back
    assert os.listdir(tmp_path / "cache") == entries
