"""A miniature world: generated captioned scenes and a tiny CLIP contrastively pre-trained on them.

The random ``"tiny"`` backbone makes the demo run, but its numbers mean nothing. This module gives
the demo a world in which base-to-new generalisation is real:

* **Scenes.** One object on a background: a *shape* (circle, square, triangle, star, cross,
  heart, ring, diamond) in a *colour* (red, green, blue, yellow, purple, orange, pink, brown),
  plain, striped or dotted, at a random size, position and small rotation, on a tinted background
  (white, light, grey, dark or black, with a gradient), with pixel noise and JPEG compression.
  Rendered at 64 px with PIL (4x supersampled); the standard transforms resize to 224. Each scene
  comes with a caption drawn from varied templates ("a photo of a red star.", "a blue striped
  heart on a dark background.", "a small green cross with dots in the top left.", ...).
  Everything is a pure function of (seed, stream, index): private ``numpy`` generators only.

* **Compositional hold-out.** The demo's 16 classes are a 4 x 4 block of colours x shapes
  ({red, green, blue, yellow} x {star, cross, heart, triangle}) coloured like a checkerboard:
  the 8 "even" cells are the base classes (labels 0-7), the 8 "odd" cells the new classes
  (labels 8-15; PROTOCOL.md 4.3 makes the second half "new"). Pre-training sees every other
  colour x shape pair (56 of 64) but **never a new-class pair**: new classes are unseen
  compositions of seen attributes, and within them each colour and each shape occurs twice, so
  neither attribute alone separates them.

* **Pre-training.** The project's tiny open_clip architecture (``PRETRAIN_TINY_CONFIG``), real
  CLIP tokenizer and vocabulary, symmetric InfoNCE, AdamW with warm-up and cosine decay, on the
  CPU; each batch holds every pre-training pair once (no false negatives at the colour x shape
  level), freshly rendered. Deterministic for a seed. The weights are cached as an OpenAI-format
  state dict in ``$HARNESS_CACHE_DIR`` (or ``~/.cache/prompt-harness``) as
  ``tiny-pretrained-<version>.pt``; ``load_pretrained_tiny`` trains on first use (a few
  minutes, said loudly) under a file lock, then loads the cache.

CLI::

    python -m miniworld pretrain [--force]        train (or find) the cached weights
    python -m miniworld dataset --root DIR        write the demo dataset to DIR/miniworld
    python -m miniworld eval --root DIR           zero-shot base / new accuracy of the cache
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from harness import backbone
from harness.atomic import atomic_write_bytes
from harness.data.constants import CLIP_MEAN, CLIP_STD
from harness.paths import cache_dir

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The world's vocabulary
# ---------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 50),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (135, 55, 180),
    "orange": (245, 135, 25),
    "pink": (245, 135, 190),
    "brown": (125, 75, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "ring", "diamond")
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
PATTERN_PROBS = (0.5, 0.25, 0.25)  # when a scene's pattern is not given
# background name -> grey level (tinted and shaded per scene)
BACKGROUNDS: dict[str, int] = {"white": 240, "light": 195, "grey": 128, "dark": 60, "black": 18}

DEMO_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
DEMO_SHAPES: tuple[str, ...] = ("star", "cross", "heart", "triangle")


def _checkerboard(parity: int) -> list[tuple[str, str]]:
    return [(c, s) for i, c in enumerate(DEMO_COLORS) for j, s in enumerate(DEMO_SHAPES) if (i + j) % 2 == parity]


#: The demo's classes in label order: base (seen compositions) first, then new (held out).
DEMO_BASE_PAIRS: tuple[tuple[str, str], ...] = tuple(_checkerboard(0))
DEMO_NEW_PAIRS: tuple[tuple[str, str], ...] = tuple(_checkerboard(1))
DEMO_PAIRS: tuple[tuple[str, str], ...] = DEMO_BASE_PAIRS + DEMO_NEW_PAIRS
#: Colour x shape pairs that pre-training never shows (the demo's new classes).
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(DEMO_NEW_PAIRS)
DEMO_PER_CLASS = (16, 4, 25)  # train / val / test images per class
DEMO_TEMPLATE = "a photo of a {}."


def pretraining_pairs() -> list[tuple[str, str]]:
    """Every colour x shape pair except the held-out ones, in a fixed order."""
    return [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELDOUT_PAIRS]


def class_name(color: str, shape: str, pattern: str | None = None) -> str:
    """The class name (folder name, split-file name) of a composition: ``red_star``, ``red_striped_star``."""
    parts = [color] + ([pattern] if pattern and pattern != "plain" else []) + [shape]
    return "_".join(parts)


def parse_class_name(name: str) -> tuple[str, str, str | None]:
    """Inverse of :func:`class_name` (spaces or underscores): -> (colour, shape, pattern or None)."""
    parts = name.replace(" ", "_").split("_")
    if len(parts) == 2:
        color, shape = parts
        pattern = None
    elif len(parts) == 3:
        color, pattern, shape = parts
    else:
        raise ValueError(f"Class name {name!r} is not '<colour>_<shape>' or '<colour>_<pattern>_<shape>'.")
    if color not in COLORS or shape not in SHAPES or (pattern is not None and pattern not in PATTERNS):
        raise ValueError(
            f"Class name {name!r}: colours are {list(COLORS)}, shapes {list(SHAPES)}, patterns {list(PATTERNS)}."
        )
    return color, shape, pattern


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------

RENDER_SIZE = 64
_SUPERSAMPLE = 3

# rng streams (the second entry of every SeedSequence), so pre-training and dataset images differ
_STREAM_PRETRAIN = 1
_STREAM_DATASET = 2
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    pattern: str
    background: str
    radius: float  # fraction of the image side
    center: tuple[float, float]  # fractions of the image side
    angle: float  # degrees
    # colour jitter and rendering nuisances
    color_rgb: tuple[int, int, int]
    bg_rgb: tuple[int, int, int]
    gradient: tuple[float, float, float]  # strength, direction (radians), unused
    pattern_period: float
    pattern_angle: float
    noise: float
    jpeg_quality: int

    @property
    def size_word(self) -> str | None:
        return "small" if self.radius < 0.32 else "large" if self.radius > 0.38 else None

    @property
    def position_phrase(self) -> str:
        x, y = self.center
        col = "left" if x < 0.44 else "right" if x > 0.56 else ""
        row = "top" if y < 0.44 else "bottom" if y > 0.56 else ""
        if not col and not row:
            return "the center"
        if col and row:
            return f"the {row} {col}"
        return f"the {row or col}"


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def _key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def sample_scene(rng: np.random.Generator, color: str, shape: str, pattern: str | None = None) -> Scene:
    """Random nuisances for an object of the given colour and shape (and pattern, random if None)."""
    if pattern is None:
        pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=PATTERN_PROBS))]
    names = list(BACKGROUNDS)
    background = names[int(rng.integers(len(names)))]
    radius = float(rng.uniform(0.28, 0.42))
    jitter = min(0.12, 0.5 - radius - 0.03)  # mostly centred, always fully inside
    center = (float(0.5 + rng.uniform(-jitter, jitter)), float(0.5 + rng.uniform(-jitter, jitter)))
    angle = float(rng.uniform(-12, 12))
    scale = rng.uniform(0.85, 1.1)
    color_rgb = tuple(int(np.clip(v * scale + rng.normal(0, 10), 0, 255)) for v in COLORS[color])
    tint = rng.normal(0, 10, size=3)
    bg_rgb = tuple(int(np.clip(BACKGROUNDS[background] + t, 0, 255)) for t in tint)
    gradient = (float(rng.uniform(0, 40)), float(rng.uniform(0, 2 * math.pi)), 0.0)
    return Scene(
        color=color,
        shape=shape,
        pattern=pattern,
        background=background,
        radius=radius,
        center=center,
        angle=angle,
        color_rgb=color_rgb,  # type: ignore[arg-type]
        bg_rgb=bg_rgb,  # type: ignore[arg-type]
        gradient=gradient,
        pattern_period=float(rng.uniform(0.22, 0.34)) * radius,
        pattern_angle=float(rng.uniform(0, 180)),
        noise=float(rng.uniform(0, 10)),
        jpeg_quality=int(rng.integers(70, 96)),
    )


def _shape_polygons(shape: str) -> list[tuple[list[tuple[float, float]], bool]]:
    """Unit-radius outline(s) of a shape: [(points, filled?)], drawn in order (False = cut out)."""

    def circle(r: float, n: int = 48, dx: float = 0.0) -> list[tuple[float, float]]:
        return [(dx + r * math.cos(2 * math.pi * k / n), r * math.sin(2 * math.pi * k / n)) for k in range(n)]

    if shape == "circle":
        return [(circle(0.95), True)]
    if shape == "ring":
        return [(circle(1.0), True), (circle(0.55), False)]
    if shape == "square":
        a = 0.8
        return [([(-a, -a), (a, -a), (a, a), (-a, a)], True)]
    if shape == "diamond":
        return [([(0, -1.0), (0.6, 0), (0, 1.0), (-0.6, 0)], True)]
    if shape == "triangle":
        pts = [(math.cos(math.radians(a)), math.sin(math.radians(a)) + 0.2) for a in (-90, 30, 150)]
        return [(pts, True)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a) + 0.08))
        return [(pts, True)]
    if shape == "cross":
        w, arm = 0.32, 0.95
        return [
            (
                [
                    (-w, -arm),
                    (w, -arm),
                    (w, -w),
                    (arm, -w),
                    (arm, w),
                    (w, w),
                    (w, arm),
                    (-w, arm),
                    (-w, w),
                    (-arm, w),
                    (-arm, -w),
                    (-w, -w),
                ],
                True,
            )
        ]
    if shape == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17.0, -(y + 2.5) / 17.0))
        return [(pts, True)]
    raise ValueError(f"Unknown shape {shape!r}; choose one of {SHAPES}.")


def _mask(scene: Scene, side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = scene.center[0] * side, scene.center[1] * side
    r = scene.radius * side
    ca, sa = math.cos(math.radians(scene.angle)), math.sin(math.radians(scene.angle))
    for pts, filled in _shape_polygons(scene.shape):
        xy = [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]
        draw.polygon(xy, fill=255 if filled else 0)
    return mask


def _fill(scene: Scene, side: int) -> np.ndarray:
    """The object's texture [side, side, 3] float: plain colour, stripes or dots."""
    base = np.array(scene.color_rgb, dtype=np.float32)
    lum = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    accent = base * 0.35 if lum > 140 else base * 0.4 + 255 * 0.6
    tex = np.empty((side, side, 3), dtype=np.float32)
    tex[:] = base
    if scene.pattern == "plain":
        return tex
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    period = scene.pattern_period
    if scene.pattern == "striped":
        th = math.radians(scene.pattern_angle)
        u = (xx * math.cos(th) + yy * math.sin(th)) / period
        on = (u - np.floor(u)) < 0.45
    elif scene.pattern == "dotted":
        th = math.radians(scene.pattern_angle)
        u = (xx * math.cos(th) + yy * math.sin(th)) / period
        v = (-xx * math.sin(th) + yy * math.cos(th)) / period
        du, dv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        on = du * du + dv * dv < 0.28**2
    else:
        raise ValueError(f"Unknown pattern {scene.pattern!r}; choose one of {PATTERNS}.")
    tex[on] = accent
    return tex


def render_scene(scene: Scene, rng: np.random.Generator, size: int = RENDER_SIZE) -> Image.Image:
    """The scene as an RGB image of ``size`` pixels (supersampled, noised, JPEG-compressed)."""
    side = size * _SUPERSAMPLE
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    strength, direction, _ = scene.gradient
    shade = strength * ((xx - 0.5) * math.cos(direction) + (yy - 0.5) * math.sin(direction))
    bg = np.array(scene.bg_rgb, dtype=np.float32)[None, None, :] + shade[..., None]
    alpha = np.asarray(_mask(scene, side), dtype=np.float32)[..., None] / 255.0
    img = bg * (1 - alpha) + _fill(scene, side) * alpha
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.BOX)
    arr = np.asarray(small, dtype=np.float32) + rng.normal(0, scene.noise, size=(size, size, 3))
    noisy = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG", quality=scene.jpeg_quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming the colour and shape, and sometimes the pattern, size, background, position."""
    c, s = scene.color, scene.shape
    pat_adj = {"striped": "striped", "dotted": "dotted"}.get(scene.pattern)
    pat_with = {"striped": "with stripes", "dotted": "with dots"}.get(scene.pattern)
    size = scene.size_word
    bg = f"on a {scene.background} background"
    pos = f"in {scene.position_phrase}"

    # the object phrase: colour + shape with optional adjectives
    adjs = []
    if size and rng.random() < 0.4:
        adjs.append(size)
    phrase_pattern_after = False
    if pat_adj and rng.random() < 0.5:
        if rng.random() < 0.5:
            adjs.append(c)
            adjs.append(pat_adj)
        else:
            adjs.append(c)
            phrase_pattern_after = True
    else:
        if scene.pattern == "plain" and rng.random() < 0.15:
            adjs.append("plain")
        adjs.append(c)
    obj = " ".join(adjs + [s])
    if phrase_pattern_after:
        obj = f"{obj} {pat_with}"
    extras = []
    if rng.random() < 0.3:
        extras.append(bg)
    if rng.random() < 0.2:
        extras.append(pos)
    tail = (" " + " ".join(extras)) if extras else ""

    k = int(rng.integers(8))
    if k == 0:
        text = f"a photo of a {obj}{tail}."  # "a" always, like the evaluation template
    elif k == 1:
        text = f"{_article(obj)} {obj}{tail}."
    elif k == 2:
        text = f"an image of {_article(obj)} {obj}{tail}."
    elif k == 3:
        text = f"a picture of {_article(obj)} {obj}{tail}."
    elif k == 4:
        text = f"a drawing of {_article(obj)} {obj}{tail}."
    elif k == 5:
        text = f"there is {_article(obj)} {obj}{tail}."
    elif k == 6:
        text = f"a {s} that is {c}{tail}."
    else:
        text = f"a photo of the {obj}{tail}."
    return text


def pretraining_sample(seed: int, index: int, size: int = RENDER_SIZE) -> tuple[Image.Image, str, tuple[str, str]]:
    """The ``index``-th pre-training scene for ``seed``: (image, caption, (colour, shape)).

    Step t of pre-training shows samples t*P ... t*P+P-1 (P = number of pre-training pairs): the
    pair of sample i is pair i mod P, so every batch holds each pair exactly once.
    """
    pairs = pretraining_pairs()
    color, shape = pairs[index % len(pairs)]
    rng = _rng(seed, _STREAM_PRETRAIN, index)
    scene = sample_scene(rng, color, shape)
    image = render_scene(scene, rng, size)
    return image, caption(scene, rng), (color, shape)


def dataset_sample(
    seed: int, classname: str, split: str, index: int, size: int = RENDER_SIZE
) -> tuple[Image.Image, str]:
    """The ``index``-th image of class ``classname`` in ``split`` (independent of the class order)."""
    color, shape, pattern = parse_class_name(classname)
    rng = _rng(seed, _STREAM_DATASET, _key(classname), _SPLIT_IDS[split], index)
    scene = sample_scene(rng, color, shape, pattern)
    image = render_scene(scene, rng, size)
    return image, caption(scene, rng)


# ---------------------------------------------------------------------------------------------
# Classification datasets (the authors' split-file layout, PROTOCOL.md 3.3)
# ---------------------------------------------------------------------------------------------

DATASET_KEY = "miniworld"
DATASET_DIR = "miniworld"
SPLIT_FILE = "split_zhou_MiniWorld.json"


def write_classification_dataset(
    root: str,
    classes: Sequence[str | tuple[str, str] | tuple[str, str, str]],
    per_class: tuple[int, int, int] = DEMO_PER_CLASS,
    seed: int = 0,
    size: int = RENDER_SIZE,
) -> str:
    """Write ``<root>/synthetic/images/<class>/<split>_<i>.jpg`` and ``split_zhou_Synthetic.json``.

    classes: class names such as ``"red_star"`` / ``"red_striped_star"`` or (colour, shape[,
    pattern]) tuples; label = position in ``classes``. A class without a pattern gets random
    patterns. per_class: (train, val, test) images per class. Returns ``<root>/synthetic``.
    """
    names = [c if isinstance(c, str) else class_name(*c) for c in classes]
    names = [n.replace(" ", "_") for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate class names in {names}.")
    for n in names:
        parse_class_name(n)
    out_dir = os.path.join(os.path.abspath(os.path.expanduser(root)), DATASET_DIR)
    image_dir = os.path.join(out_dir, "images")
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        os.makedirs(os.path.join(image_dir, name), exist_ok=True)
        for split_name, count in zip(("train", "val", "test"), per_class):
            for i in range(count):
                image, _ = dataset_sample(seed, name, split_name, i, size)
                rel = f"{name}/{split_name}_{i:04d}.jpg"
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=95)
                atomic_write_bytes(os.path.join(image_dir, rel), buf.getvalue())
                split[split_name].append([rel, label, name])
    atomic_write_bytes(os.path.join(out_dir, SPLIT_FILE), (json.dumps(split, indent=4) + "\n").encode("utf-8"))
    return out_dir


def make_demo_dataset(root: str, seed: int = 0, per_class: tuple[int, int, int] = DEMO_PER_CLASS) -> str:
    """The demo's 16-class dataset (8 base = seen compositions, then 8 new = held-out ones). The split
    file is written last, so a folder that has it is complete and is not written again."""
    folder = os.path.join(os.path.abspath(os.path.expanduser(root)), DATASET_DIR)
    if os.path.isfile(os.path.join(folder, SPLIT_FILE)):
        return folder
    return write_classification_dataset(root, [class_name(c, s) for c, s in DEMO_PAIRS], per_class, seed)


def read_split(dataset_dir: str) -> dict[str, list]:
    with open(os.path.join(dataset_dir, SPLIT_FILE), encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# Contrastive pre-training
# ---------------------------------------------------------------------------------------------

#: The pre-trained variant's architecture (the image side stays 224 so the standard transforms apply).
PRETRAIN_TINY_CONFIG = backbone.CLIP_SHAPES["miniworld"]


@dataclass(frozen=True)
class PretrainConfig:
    model: backbone.CLIPShape = PRETRAIN_TINY_CONFIG
    steps: int = 900
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.1
    init_temperature: float = 0.07
    seed: int = 0
    render_size: int = RENDER_SIZE
    batch_pairs: int = 0  # pairs per batch; 0 = all pre-training pairs (56)

    def fingerprint(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True) + f"|world{WORLD_VERSION}"
        return hashlib.sha256(blob.encode()).hexdigest()[:8]


WORLD_VERSION = 1  # bump when the renderer, captions or training loop change
DEFAULT_PRETRAIN = PretrainConfig()


def to_model_input(images: Sequence[Image.Image], image_size: int = 224) -> torch.Tensor:
    """The standard test transform for square images: bicubic resize to 224 + CLIP normalisation."""
    arrs = [np.asarray(im.resize((image_size, image_size), Image.BICUBIC)) for im in images]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _encode_text_train(model, ids: torch.Tensor) -> torch.Tensor:
    return backbone.encode_text_embeddings(model, model.token_embedding(ids), ids)


def contrastive_loss(model, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (image i <-> caption i)."""
    fi = F.normalize(model.encode_image(images), dim=-1)
    ft = F.normalize(_encode_text_train(model, ids), dim=-1)
    logits = model.logit_scale.exp() * fi @ ft.t()
    target = torch.arange(len(fi))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def pretraining_batch(config: PretrainConfig, step: int, context_length: int = 77):
    """(images [B, 3, 224, 224], token ids [B, 77], captions) of ``step``."""
    n_pairs = len(pretraining_pairs())
    per = config.batch_pairs or n_pairs
    images, captions = [], []
    for k in range(per):
        # sample indices keep pair = index mod n_pairs; a smaller batch walks through the pairs
        index = step * n_pairs + ((step * per + k) % n_pairs)
        image, text, _ = pretraining_sample(config.seed, index, config.render_size)
        images.append(image)
        captions.append(text)
    return to_model_input(images, config.model.image_size), backbone.tokenize(captions, context_length), captions


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def init_model(config: PretrainConfig = DEFAULT_PRETRAIN):
    """The randomly initialised model pre-training starts from (temperature 0.07, learnable)."""
    model = backbone.build_random_clip(config.model, seed=config.seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / config.init_temperature))
    return model


def pretrain(config: PretrainConfig = DEFAULT_PRETRAIN, progress: bool = True, log_every: int = 0):
    """Contrastively pre-train a tiny CLIP from scratch; returns (model in eval mode, loss history)."""
    # Single-threaded: the weights are then the same on any machine, and tiny ops gain little
    # from more threads (and lose a lot when another process holds a core).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pretrain(config, progress, log_every)
    finally:
        torch.set_num_threads(threads)


def _pretrain(config: PretrainConfig, progress: bool, log_every: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = init_model(config)
        model.train()
        opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)

        def lr_at(step: int) -> float:
            if step < config.warmup:
                return config.lr * (step + 1) / config.warmup
            t = (step - config.warmup) / max(1, config.steps - config.warmup)
            return 0.5 * config.lr * (1 + math.cos(math.pi * t))

        losses: list[float] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, desc="pre-training tiny CLIP", unit="step", file=sys.stderr)
        for step in range(config.steps):
            images, ids, _ = pretraining_batch(config, step, config.model.context_length)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = contrastive_loss(model, images, ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100.0))
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if log_every and (step + 1) % log_every == 0:
                log.info("step %d/%d loss %.4f", step + 1, config.steps, np.mean(losses[-log_every:]))
        if bar is not None:
            bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, losses


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def cache_version(config: PretrainConfig = DEFAULT_PRETRAIN) -> str:
    return f"v{WORLD_VERSION}-{config.fingerprint()}"


def cache_path(config: PretrainConfig = DEFAULT_PRETRAIN) -> str:
    return os.path.join(cache_dir(), f"tiny-pretrained-{cache_version(config)}.pt")


def ensure_pretrained(config: PretrainConfig = DEFAULT_PRETRAIN, force: bool = False, progress: bool = True) -> str:
    """Path of the cached weights for ``config``, training them first if missing (or ``force``)."""
    from filelock import FileLock

    path = cache_path(config)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(path + ".lock"):
        if os.path.isfile(path) and not force:
            return path
        log.warning(
            "Pre-training the tiny CLIP of the miniature world (%d steps, %s): this happens once and "
            "takes a few minutes on a CPU; the weights will be cached at %s.",
            config.steps,
            "forced" if force else "no cached weights",
            path,
        )
        start = time.time()
        model, losses = pretrain(config, progress=progress)
        elapsed = time.time() - start
        backbone.save_openai_state_dict(model, path)  # atomic
        log.warning(
            "Pre-trained the tiny CLIP in %.0f s (%.1f min; loss %.3f -> %.3f); cached at %s.",
            elapsed,
            elapsed / 60,
            float(np.mean(losses[:10])),
            float(np.mean(losses[-20:])),
            path,
        )
        return path


def prepare_pretrained() -> str:
    """The backbone's preparation step (run once by a sweep's driver): pre-train if not cached."""
    if not os.path.isfile(cache_path()):
        print("Pre-training the miniature world's tiny CLIP once (a few minutes on a CPU; cached for later runs)")
    return ensure_pretrained(progress=True)


def load_pretrained_tiny_for(precision: str) -> torch.nn.Module:
    return load_pretrained_tiny(precision=precision)


def load_pretrained_tiny(precision: str = "fp32", config: PretrainConfig = DEFAULT_PRETRAIN, force: bool = False):
    """The pre-trained tiny CLIP (eval mode, frozen): from the cache, or trained now on first use."""
    path = ensure_pretrained(config, force=force)
    return backbone.load_openai_file(path, precision=precision)


# ---------------------------------------------------------------------------------------------
# Zero-shot evaluation on a written dataset (uses the project's zero-shot method)
# ---------------------------------------------------------------------------------------------


def _test_transform():
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    return T.Compose(
        [
            T.Resize(224, interpolation=InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


@torch.no_grad()
def zero_shot_accuracy(
    clip, dataset_dir: str, labels: Iterable[int], template: str = DEMO_TEMPLATE, split: str = "test"
) -> float:
    """Accuracy (%) of zero-shot CLIP among the classes ``labels`` only (as in base-to-new)."""
    import methods

    labels = sorted(set(labels))
    items = [it for it in read_split(dataset_dir)[split] if it[1] in labels]
    names = {it[1]: it[2] for it in read_split(dataset_dir)["train"] + items}
    classnames = [names[lab] for lab in labels]
    relabel = {lab: j for j, lab in enumerate(labels)}
    model = methods.build_method("zsclip", clip, classnames, template=template).eval()
    tf = _test_transform()
    correct = 0
    for start in range(0, len(items), 100):
        chunk = items[start : start + 100]
        x = torch.stack([tf(Image.open(os.path.join(dataset_dir, "images", it[0])).convert("RGB")) for it in chunk])
        pred = model(x).argmax(-1)
        correct += int((pred == torch.tensor([relabel[it[1]] for it in chunk])).sum())
    return 100.0 * correct / len(items)


def demo_zero_shot(clip, dataset_dir: str, template: str = DEMO_TEMPLATE) -> dict[str, float]:
    n = len(DEMO_PAIRS)
    m = math.ceil(n / 2)
    base = zero_shot_accuracy(clip, dataset_dir, range(m), template)
    new = zero_shot_accuracy(clip, dataset_dir, range(m, n), template)
    h = 2 * base * new / (base + new) if base + new > 0 else 0.0
    return {"base": base, "new": new, "H": h, "chance_base": 100.0 / m, "chance_new": 100.0 / (n - m)}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniworld", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pretrain", help="pre-train the tiny CLIP (or find it in the cache)")
    p.add_argument("--force", action="store_true", help="train again even if cached")
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    d = sub.add_parser("dataset", help="write the demo dataset to ROOT/synthetic")
    d.add_argument("--root", required=True)
    d.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="zero-shot base/new accuracy of the pre-trained tiny CLIP on the demo dataset")
    e.add_argument("--root", required=True, help="data root (the demo dataset is written there if missing)")
    e.add_argument("--template", default=DEMO_TEMPLATE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.cmd == "pretrain":
        config = DEFAULT_PRETRAIN if args.steps is None else dataclasses.replace(DEFAULT_PRETRAIN, steps=args.steps)
        print(ensure_pretrained(config, force=args.force))
    elif args.cmd == "dataset":
        print(make_demo_dataset(args.root, seed=args.seed))
    elif args.cmd == "eval":
        dataset_dir = os.path.join(os.path.abspath(os.path.expanduser(args.root)), DATASET_DIR)
        if not os.path.isfile(os.path.join(dataset_dir, SPLIT_FILE)):
            make_demo_dataset(args.root)
        clip = load_pretrained_tiny()
        res = demo_zero_shot(clip, dataset_dir, args.template)
        print(
            f"zero-shot ({args.template!r}): base {res['base']:.1f}% (chance {res['chance_base']:.1f}%), "
            f"new {res['new']:.1f}% (chance {res['chance_new']:.1f}%), H {res['H']:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
