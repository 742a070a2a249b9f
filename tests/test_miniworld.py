"""The miniature world: scene generator, dataset writer, contrastive pre-training and its cache."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os

import torch

from harness import backbone
from miniworld import world as mw

SMALL = mw.PretrainConfig(
    model=backbone.CLIPShape(embed_dim=32, vision_width=64, vision_layers=1, text_width=64, text_layers=1),
    seed=0,
    steps=6,
    lr=2e-3,
    warmup=1,
    batch_pairs=8,
    render_size=32,
)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_generator_is_deterministic_for_a_seed():
    a = [mw.pretraining_sample(0, i) for i in range(6)]
    b = [mw.pretraining_sample(0, i) for i in range(6)]
    c = [mw.pretraining_sample(1, i) for i in range(6)]
    assert [_png(x[0]) for x in a] == [_png(x[0]) for x in b]
    assert [x[1] for x in a] == [x[1] for x in b]
    assert [_png(x[0]) for x in a] != [_png(x[0]) for x in c]
    assert [x[1] for x in a] != [x[1] for x in c]
    # the same seed in another stream (dataset images) differs too
    img, cap = mw.dataset_sample(0, "red_star", "test", 0)
    assert img.size == (mw.RENDER_SIZE, mw.RENDER_SIZE) and img.mode == "RGB"
    assert _png(img) == _png(mw.dataset_sample(0, "red_star", "test", 0)[0])
    assert _png(img) != _png(mw.dataset_sample(0, "red_star", "train", 0)[0])


def test_captions_name_colour_and_shape_and_tokenize():
    for i in range(40):
        _, text, (colour, shape) = mw.pretraining_sample(0, i)
        assert colour in text and shape in text, text
        backbone.tokenize(text)  # fits the context
    pairs = [mw.pretraining_sample(0, i)[2] for i in range(len(mw.pretraining_pairs()))]
    assert sorted(pairs) == sorted(mw.pretraining_pairs())  # one batch = every pair once


def test_demo_split_holds_out_new_compositions():
    base, new = mw.DEMO_PAIRS[:8], mw.DEMO_PAIRS[8:]
    assert len(mw.DEMO_PAIRS) == 16 and len(set(mw.DEMO_PAIRS)) == 16
    seen = set(mw.pretraining_pairs())
    assert not seen & set(new)  # pre-training never shows a new-class composition
    assert set(base) <= seen
    assert set(new) == mw.HELDOUT_PAIRS
    # ... but every attribute of a new class is seen in pre-training, and within the new classes
    # neither attribute alone identifies the class
    for colour, shape in new:
        assert any(c == colour for c, _ in seen) and any(s == shape for _, s in seen)
    assert all(sum(c == colour for c, _ in new) == 2 for colour, _ in new)
    assert all(sum(s == shape for _, s in new) == 2 for _, shape in new)


def test_write_classification_dataset_layout(tmp_path):
    out = mw.write_classification_dataset(
        str(tmp_path), ["red_star", ("blue", "heart"), ("green", "cross", "striped")], per_class=(3, 1, 2), seed=5
    )
    assert out == os.path.join(str(tmp_path), "miniworld")
    with open(os.path.join(out, "split_zhou_MiniWorld.json")) as f:
        split = json.load(f)
    assert set(split) == {"train", "val", "test"}
    assert [len(split[k]) for k in ("train", "val", "test")] == [9, 3, 6]
    names = {"red_star": 0, "blue_heart": 1, "green_striped_cross": 2}
    for items in split.values():
        for rel, label, name in items:
            assert isinstance(rel, str) and isinstance(label, int) and names[name] == label
            assert rel.startswith(name + "/") and rel.endswith(".jpg")
            path = os.path.join(out, "images", rel)
            assert os.path.isfile(path)
    assert sorted(os.listdir(os.path.join(out, "images"))) == sorted(names)
    # rewriting with the same seed gives the same bytes
    first = open(os.path.join(out, "images", split["test"][0][0]), "rb").read()
    mw.write_classification_dataset(str(tmp_path), ["red_star", "blue_heart", "green_striped_cross"], (3, 1, 2), seed=5)
    assert open(os.path.join(out, "images", split["test"][0][0]), "rb").read() == first


def test_demo_dataset_order_and_harness_reader(tmp_path):
    out = mw.make_demo_dataset(str(tmp_path), per_class=(1, 1, 1))
    split = mw.read_split(out)
    names = [n for _, n in sorted({(lab, n) for _, lab, n in split["train"]})]
    assert names == [mw.class_name(c, s) for c, s in mw.DEMO_PAIRS]
    m = math.ceil(len(names) / 2)
    assert all(mw.parse_class_name(n)[:2] not in mw.HELDOUT_PAIRS for n in names[:m])
    assert all(mw.parse_class_name(n)[:2] in mw.HELDOUT_PAIRS for n in names[m:])
    from harness import data

    ds = data.build_dataset("miniworld", str(tmp_path))
    assert len(ds.test) == 16 and ds.classnames == names


def _loss(model, batch):
    images, ids, _ = batch
    with torch.no_grad():
        return float(mw.contrastive_loss(model, images, ids))


def test_short_pretraining_lowers_the_contrastive_loss():
    batch = mw.pretraining_batch(SMALL, 0)
    before = _loss(mw.init_model(SMALL), batch)
    model, losses = mw.pretrain(SMALL, progress=False)
    after = _loss(model, batch)
    assert len(losses) == SMALL.steps and all(math.isfinite(x) for x in losses)
    assert after < before - 0.05, (before, after)
    assert not any(p.requires_grad for p in model.parameters())


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    config = dataclasses.replace(SMALL, steps=2)
    path = mw.cache_path(config)
    assert path.startswith(str(tmp_path / "cache")) and os.path.basename(path).startswith("tiny-pretrained-")
    trained, _ = mw.pretrain(config, progress=False)
    first = mw.load_pretrained_tiny(config=config)  # trains (same seed -> same weights) and caches
    assert os.path.isfile(path)

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded the cache")

    monkeypatch.setattr(mw, "pretrain", no_training)
    second = mw.load_pretrained_tiny(config=config)
    ref = trained.state_dict()
    for sd in (first.state_dict(), second.state_dict()):
        assert sd.keys() == ref.keys()
        for k in ref:
            assert torch.equal(sd[k], ref[k]), k
    # what load_clip(path) reads is the same model
    assert torch.equal(backbone.load_clip(path).visual.conv1.weight, ref["visual.conv1.weight"])
    assert not any(p.requires_grad for p in second.parameters())
    fp16 = mw.load_pretrained_tiny(precision="fp16", config=config)
    assert backbone.model_dtype(fp16) == torch.float16
