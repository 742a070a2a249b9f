"""The world's pictures as data: pre-training pairs and the demo's classification datasets.

Every picture is a pure function of (seed, stream, keys, index): the same bytes on every run, in
any order, in any process. The demo datasets are written in the authors' split-file layout
(PROTOCOL.md 3.3) with the harness's own writer; a folder whose split file exists is complete
(the split file is written last) and is left as it is.
"""

from __future__ import annotations

import io
import os
import zlib

from PIL import Image

from clipcore.atomic import atomic_write_bytes
from harness.data.splitfile import write_split_json
from harness.data.types import Datum
from miniworld import captions, render, vocab
from miniworld.vocab import DemoDataset, demo_dataset

# the second key of every generator, so that pre-training and dataset pictures never coincide
STREAM_PRETRAIN = 1
STREAM_DATASET = 2
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
OBJECT_SHARE = 0.6  # of pre-training groups; the rest are textures
GROUP = 8  # consecutive pre-training pictures of one colour


def _key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def pretraining_sample(
    seed: int, index: int, size: int = render.RENDER_SIZE
) -> tuple[Image.Image, str, tuple[int, int]]:
    """The ``index``-th pre-training picture, its caption and its labels (thing, colour): the thing
    is a shape's index, or a texture's index after the shapes.

    Pictures come in groups of ``GROUP`` consecutive indices that share their colours and differ in
    shape (or texture): within a group colour cannot tell captions apart, so the contrastive loss
    has to learn shapes and textures, which a small ViT otherwise learns last."""
    group = render.rng_for(seed, STREAM_PRETRAIN, index // GROUP)
    is_object = group.random() < OBJECT_SHARE
    names = vocab.SHAPES if is_object else vocab.TEXTURES
    members = group.permutation(len(names))[:GROUP]
    color = list(vocab.COLORS)[int(group.integers(len(vocab.COLORS)))]
    rng = render.rng_for(seed, STREAM_PRETRAIN, index // GROUP, index % GROUP)
    name = names[int(members[index % GROUP])]
    if is_object:
        scene = render.sample_object(rng, color=color, shape=name)
    else:
        scene = render.sample_texture(rng, texture=name, color=color)
    image = render.render(scene, rng, size)
    thing = int(members[index % GROUP]) + (0 if is_object else len(vocab.SHAPES))
    return image, captions.caption(scene, rng), (thing, list(vocab.COLORS).index(color))


def dataset_sample(seed: int, dataset: DemoDataset, classname: str, split: str, index: int) -> Image.Image:
    """Picture ``index`` of class ``classname`` in ``split`` (independent of the class order)."""
    rng = render.rng_for(seed, STREAM_DATASET, _key(dataset.key), _key(classname), SPLIT_IDS[split], index)
    if dataset.kind == "shape":
        scene = render.sample_object(rng, shape=classname)
    elif dataset.kind == "color":
        scene = render.sample_object(rng, color=classname)
    elif dataset.kind == "texture":
        scene = render.sample_texture(rng, texture=classname)
    elif dataset.kind == "background":
        scene = render.sample_object(rng, background=classname)
    else:
        raise ValueError(f"Unknown dataset kind {dataset.kind!r}")
    scene = render.light_scene(scene, dataset.light, rng)
    return render.render(scene, rng, render.RENDER_SIZE)


def write_dataset(
    root: str, dataset: DemoDataset | str, seed: int = 0, per_class: tuple[int, int, int] | None = None
) -> str:
    """Write ``<root>/<key>/images/<class>/<split>_<i>.jpg`` and the split file; returns the folder.

    A folder that already holds its split file is returned untouched (its pictures are the same
    function of the seed, so there is nothing to redo)."""
    ds = demo_dataset(dataset) if isinstance(dataset, str) else dataset
    per_class = per_class or ds.per_class
    folder = os.path.join(os.path.abspath(os.path.expanduser(root)), ds.folder)
    split_path = os.path.join(folder, ds.split_file)
    if os.path.isfile(split_path):
        return folder
    image_dir = os.path.join(folder, "images")
    items: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(ds.classes):
        os.makedirs(os.path.join(image_dir, name), exist_ok=True)
        for split, count in zip(("train", "val", "test"), per_class):
            for i in range(count):
                path = os.path.join(image_dir, name, f"{split}_{i:04d}.jpg")
                buf = io.BytesIO()
                dataset_sample(seed, ds, name, split, i).save(buf, format="JPEG", quality=95)
                atomic_write_bytes(path, buf.getvalue())
                items[split].append(Datum(path, label, name))
    write_split_json(split_path, items["train"], items["val"], items["test"], image_dir)
    return folder


def generator(key: str):
    """The harness's ``DatasetInfo.generate`` for one demo dataset: ``generate(root) -> folder``."""

    def generate(root: str) -> str:
        return write_dataset(root, key)

    generate.__name__ = f"generate_{key}"
    return generate
