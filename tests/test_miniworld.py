"""The miniature world: pictures, captions, demo datasets, pre-training, its cache and its hash."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from clipcore import backbone
from harness import data, sweep
from harness.logs import Progress
from miniworld import datasets, pretrain, render, vocab

SMALL = pretrain.PretrainConfig(
    model=backbone.CLIPShape(
        embed_dim=32, vision_width=64, vision_layers=1, text_width=64, text_layers=1, patch_size=8, image_size=48
    ),
    steps=6,
    batch_size=16,
    lr=2e-3,
    warmup=1,
)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_pictures_are_a_function_of_seed_and_index():
    a = [datasets.pretraining_sample(0, i) for i in range(6)]
    b = [datasets.pretraining_sample(0, i) for i in reversed(range(6))][::-1]
    c = [datasets.pretraining_sample(1, i) for i in range(6)]
    assert [_png(x[0]) for x in a] == [_png(x[0]) for x in b] and [x[1] for x in a] == [x[1] for x in b]
    assert [_png(x[0]) for x in a] != [_png(x[0]) for x in c]
    shapes = vocab.demo_dataset("miniworld_shapes")
    img = datasets.dataset_sample(0, shapes, "star", "test", 0)
    assert img.size == (render.RENDER_SIZE, render.RENDER_SIZE) and img.mode == "RGB"
    assert _png(img) == _png(datasets.dataset_sample(0, shapes, "star", "test", 0))
    assert _png(img) != _png(datasets.dataset_sample(0, shapes, "star", "train", 0))


def test_a_light_bleeds_each_channel_into_the_next_and_casts_exactly():
    # pure bleed: each channel takes bleed/256 of the next (R<-G, G<-B, B<-R), floored; greys stay
    assert render._lit((200, 0, 0), 64, (0, 0, 0)) == (150, 0, 50)
    assert render._lit((0, 100, 0), 64, (0, 0, 0)) == (25, 75, 0)
    assert render._lit((90, 90, 90), 77, (0, 0, 0)) == (90, 90, 90)
    # the cast adds its share of the bleed, rounded towards zero on both sides, then clips
    assert render._lit((128, 128, 128), 60, vocab.STAGE.cast) == (128 + 15, 128 - 7, 128 + 15)
    assert render._lit((128, 128, 128), 60, vocab.SEA.cast) == (128 - 7, 128 + 7, 128 + 15)
    assert render._lit((250, 250, 250), 60, vocab.STAGE.cast) == (255, 243, 255)
    assert render._lit((5, 5, 5), 60, vocab.SEA.cast) == (0, 12, 20)


def test_a_dataset_light_changes_colours_only_and_varies_per_picture():
    rng = np.random.default_rng(0)
    scene = render.sample_object(rng, color="red")
    state = rng.bit_generator.state
    assert render.light_scene(scene, vocab.DAYLIGHT, rng) is scene and rng.bit_generator.state == state
    bleeds = set()
    for seed in range(200):
        lit = render.light_scene(scene, vocab.DUSK, np.random.default_rng(seed))
        assert dataclasses.replace(lit, color_rgb=scene.color_rgb, back_rgb=scene.back_rgb) == scene
        bleed = round((scene.color_rgb[0] - lit.color_rgb[0]) * 256 / (scene.color_rgb[0] - scene.color_rgb[1]))
        bleeds.add(bleed)
    low, high = vocab.DUSK.bleed
    assert low - 1 <= min(bleeds) < low + 5 and high - 5 < max(bleeds) <= high + 2  # the whole range, per picture
    # the same picture of a lit dataset differs from its daylight twin, and is reproducible
    dusk = vocab.demo_dataset("miniworld_dusk")
    daylight = dataclasses.replace(dusk, light=vocab.DAYLIGHT)
    pic = _png(datasets.dataset_sample(0, dusk, "red", "test", 3))
    assert pic == _png(datasets.dataset_sample(0, dusk, "red", "test", 3))
    assert pic != _png(datasets.dataset_sample(0, daylight, "red", "test", 3))


def test_a_light_with_several_casts_tints_each_picture_with_one_of_them():
    scene = dataclasses.replace(render.sample_object(np.random.default_rng(0)), back_rgb=(128, 128, 128))
    tints = set()
    for seed in range(60):
        r, g, b = render.light_scene(scene, vocab.LAMP, np.random.default_rng(seed)).back_rgb
        tints.add("warm" if r > g > b else "green" if g > b > r else "none" if r == g == b else (r, g, b))
    assert tints == {"warm", "green", "none"}  # vocab.LAMP's three casts, and nothing else


def test_the_demo_datasets_base_classes_are_the_warm_colours():
    demo = sweep.load_experiment("base2new", profile="demo")
    warm = {"red", "orange", "yellow", "pink", "brown"}
    for key in demo["datasets"]:
        ds = vocab.demo_dataset(key)
        assert set(ds.classes[:5]) == warm and set(ds.classes) == set(vocab.COLORS), key
        assert not ds.light.is_daylight, key


def test_the_transfer_demos_share_a_source_and_shift_classes_or_domains():
    """Cross-dataset: other kinds of classes than the source's; domain generalisation: the source's
    classes under other lights; one source, so the two studies share their trainings."""
    cross = sweep.load_experiment("crossdataset", profile="demo")
    shifted = sweep.load_experiment("domaingen", profile="demo")
    assert cross["source"] == shifted["source"]
    source = vocab.demo_dataset(cross["source"])
    assert set(source.classes) == set(vocab.COLORS) and not source.light.is_daylight
    for key in cross["targets"]:
        target = vocab.demo_dataset(key)
        assert target.kind != source.kind and not set(target.classes) & set(source.classes), key
    lights = {source.light}
    for key in shifted["targets"]:
        target = vocab.demo_dataset(key)
        assert set(target.classes) == set(source.classes) and target.light not in lights, key
        lights.add(target.light)
    keys = ("backbone", "seeds", "precision", "run", "launcher", "data")
    assert {k: cross[k] for k in keys} == {k: shifted[k] for k in keys}
    for method in ("coop", "cocoop"):
        assert cross["methods"][method] == shifted["methods"][method]


def test_a_backdrop_picture_shows_its_class_as_the_background():
    backdrops = vocab.demo_dataset("miniworld_backdrops")
    assert set(backdrops.classes) == set(vocab.BACKGROUNDS)
    for name in ("black", "white"):
        pixels = np.asarray(datasets.dataset_sample(0, backdrops, name, "test", 0), dtype=float)
        corner = pixels[:4, :4].mean()  # the background shows in the corners
        assert (corner < 60) if name == "black" else (corner > 190), (name, corner)


def test_every_texture_and_shape_draws_differently():
    side = 48
    inks = {t: render.texture_ink(t, side, 0.2, 0.0, (0.5, 0.5)) for t in vocab.TEXTURES}
    for name, ink in inks.items():
        assert 0.1 < ink.mean() < 0.9, name  # both colours show
    names = list(inks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (inks[a] != inks[b]).mean() > 0.1, (a, b)
    rng = np.random.default_rng(0)
    masks = {}
    for s in vocab.SHAPES:
        scene = dataclasses.replace(render.sample_object(rng, shape=s), center=(0.5, 0.5), angle=0.0, radius=0.4)
        masks[s] = render._object_mask(scene, side)[..., 0] > 0.5
    for i, a in enumerate(vocab.SHAPES):
        for b in vocab.SHAPES[i + 1 :]:
            assert (masks[a] != masks[b]).mean() > 0.03, (a, b)


def test_captions_name_what_the_classes_need_and_never_the_template():
    seen = {"shape": set(), "texture": set(), "color": set(), "background": set()}
    things = list(vocab.SHAPES) + list(vocab.TEXTURES)
    colors = list(vocab.COLORS)
    previous = (-1, -1)
    for i in range(400):
        _, text, (thing, color) = datasets.pretraining_sample(0, i)
        backbone.tokenize(text)  # fits CLIP's context
        assert not text.startswith("a photo of"), text  # the zero-shot template is never seen
        words = text.split()
        assert things[thing] in words, text  # the shape or texture is always named
        kind = "shape" if thing < len(vocab.SHAPES) else "texture"
        seen[kind].add(things[thing])
        if colors[color] in words:
            seen["color"].add(colors[color])
        seen["background"] |= set(words) & set(vocab.BACKGROUNDS)
        # a group of consecutive pictures shares its colour, never its thing
        if i % datasets.GROUP:
            assert (color, thing != previous[1]) == (previous[0], True)
        previous = (color, thing)
    for ds in vocab.DEMO_DATASETS:  # every class of every demo dataset is seen in pre-training
        names = {n for c in ds.classes for n in c.split("_")}
        assert names <= set().union(*seen.values()), ds.key


def test_demo_datasets_are_written_once_in_the_authors_layout(tmp_path):
    per_class = (2, 1, 3)
    for ds in vocab.DEMO_DATASETS:
        folder = datasets.write_dataset(str(tmp_path), ds, per_class=per_class)
        assert folder == os.path.join(str(tmp_path), ds.key)
        with open(os.path.join(folder, ds.split_file)) as f:
            split = json.load(f)
        assert [len(split[k]) for k in ("train", "val", "test")] == [n * len(ds.classes) for n in per_class]
        for items in split.values():
            for rel, label, name in items:
                assert ds.classes[label] == name and rel.startswith(name + "/")
                assert os.path.isfile(os.path.join(folder, "images", rel))
        built = data.build_dataset(ds.key, str(tmp_path))  # the harness reads it as any dataset
        assert built.classnames == list(ds.classes) and len(built.test) == 3 * len(ds.classes)
    # a complete folder is not written again; another root gets the same bytes
    shapes = vocab.demo_dataset("miniworld_shapes")
    first = os.path.join(str(tmp_path), shapes.key, "images", "circle", "test_0000.jpg")
    stamp = os.stat(first).st_mtime_ns
    datasets.write_dataset(str(tmp_path), shapes, per_class=per_class)
    assert os.stat(first).st_mtime_ns == stamp
    other = datasets.write_dataset(str(tmp_path / "again"), shapes, per_class=per_class)
    with open(first, "rb") as f, open(os.path.join(other, "images", "circle", "test_0000.jpg"), "rb") as g:
        assert f.read() == g.read()


def _loss(model, images, ids) -> float:
    with torch.no_grad():
        return float(pretrain.contrastive_loss(model, images, ids))


def test_short_pretraining_lowers_the_contrastive_loss():
    images, ids = next(pretrain.batches(SMALL, workers=0))
    before = _loss(pretrain.init_model(SMALL), images, ids)
    model, losses = pretrain.pretrain(SMALL, workers=0)
    assert len(losses) == SMALL.steps and all(math.isfinite(x) for x in losses)
    assert _loss(model, images, ids) < before - 0.05
    assert not any(p.requires_grad for p in model.parameters())
    # the rendering worker process gives the same batches as this process
    again, _ = pretrain.pretrain(SMALL, workers=1)
    assert pretrain.weights_sha256(again) == pretrain.weights_sha256(model)


def _pinned_hash(tmp_path, name: str, env: dict) -> str:
    out = str(tmp_path / f"{name}.pt")
    cmd = [
        sys.executable,
        "-m",
        "miniworld",
        "pretrain",
        "--out",
        out,
        "--config",
        json.dumps(dataclasses.asdict(SMALL)),
    ]
    full_env = {**os.environ, **env, **pretrain.PINNED_ENV}
    for key, value in env.items():  # what the test varies wins over the pinning where it says so
        if key.startswith("MKL_ENABLE") or key.endswith("NUM_THREADS"):
            full_env[key] = value
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("weights sha256 ")][-1]
    with open(out + ".json") as f:
        assert json.load(f)["weights_sha256"] == line.split()[-1]
    return line.split()[-1]


@pytest.mark.slow
def test_pinned_pretraining_is_bit_identical_across_threads_and_instruction_sets(tmp_path):
    """Emulates other machines on this one: MKL limited to AVX2 (as on a CPU without AVX-512),
    two threads instead of one, and the caller's own ATen kernel choice."""
    reference = _pinned_hash(tmp_path, "reference", {})
    assert _pinned_hash(tmp_path, "avx2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}) == reference
    assert _pinned_hash(tmp_path, "threads", {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}) == reference
    assert _pinned_hash(tmp_path, "aten", {"ATEN_CPU_CAPABILITY": "avx2"}) == reference


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    config = dataclasses.replace(SMALL, steps=2)
    path = pretrain.cache_path(config)
    assert path.startswith(str(tmp_path / "cache")) and f"-v{pretrain.WORLD_VERSION}-" in os.path.basename(path)
    calls = []

    def train_here(cfg, out, extra_env=None):  # the pinned subprocess, in process (its test is above)
        calls.append(out)
        pretrain.train_and_save(cfg, out)

    monkeypatch.setattr(pretrain, "pretrain_in_subprocess", train_here)
    first = pretrain.load_pretrained_tiny(config=config)
    second = pretrain.load_pretrained_tiny(config=config)  # from the cache: no second training
    assert calls == [path] and os.path.isfile(path)
    with open(path + ".json") as f:
        facts = json.load(f)
    assert facts["weights_sha256"] == pretrain.weights_sha256(first)
    # The file the cache promises (what a result's fingerprint leaves out, backbone.weights_identity).
    assert facts["file_sha256"] == backbone.file_sha256(path) == pretrain.published_sha256(config)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(backbone.load_clip(path).visual.conv1.weight, first.visual.conv1.weight)
    assert not any(p.requires_grad for p in second.parameters())
    assert backbone.model_dtype(pretrain.load_pretrained_tiny(precision="fp16", config=config)) == torch.float16


def test_progress_logs_every_few_percent_when_not_a_terminal(caplog):
    stream = io.StringIO()  # not a terminal: no bar, log lines instead
    with caplog.at_level(logging.INFO, logger="harness.logs"):
        with Progress(200, "pre-training", every_percent=5, stream=stream) as bar:
            for _ in range(200):
                bar.update(loss=1.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "harness.logs"]
    assert len(lines) == 20 and stream.getvalue() == ""
    assert "200/200" in lines[-1] and "ETA" in lines[0] and "loss 1.000" in lines[0]


def test_pretrain_prints_the_hash_of_cached_weights(tmp_path, monkeypatch, capsys):
    """``python -m miniworld pretrain`` with the weights already cached trains nothing and still prints the
    hash to compare with the README's reference; from a sidecar without it (an earlier harness's), the file's."""
    from miniworld.__main__ import main

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    config = dataclasses.replace(SMALL, steps=2)
    path = pretrain.cache_path(config)
    os.makedirs(os.path.dirname(path))
    facts = pretrain.train_and_save(config, path)

    def no_training(*args, **kwargs):
        raise AssertionError("the weights are cached: nothing to train")

    monkeypatch.setattr(pretrain, "pretrain_in_subprocess", no_training)
    capsys.readouterr()
    argv = ["pretrain", "--config", json.dumps(dataclasses.asdict(config))]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [path, f"weights sha256 {facts['weights_sha256']}"]
    with open(path + ".json") as f:
        sidecar = json.load(f)
    del sidecar["weights_sha256"]
    with open(path + ".json", "w") as f:
        json.dump(sidecar, f)
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"weights sha256 {facts['weights_sha256']}"
