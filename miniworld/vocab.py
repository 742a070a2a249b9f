"""The miniature world's vocabulary and its datasets, as plain data.

Two kinds of thing exist in the world: *objects* (a shape in a colour, plain, striped or dotted,
on a background) and *textures* (a pattern in two colours filling the picture). Pre-training sees
them all in daylight. A dataset names a kind of class (an object's shape or colour, a texture's
pattern), its classes in label order, and a ``Light``: the domain its pictures are taken in,
which pre-training never saw.

Every class of every dataset is seen in pre-training; base and new classes differ only in that the
few-shot training sees the base half (PROTOCOL.md 4.3: the first half of the labels). The demo's
three datasets are the colours of objects under three lights, and are built so that the paper's
effects have their causes here too:

- a prompt has something to learn on the base classes: the dataset's light turns every hue
  towards its neighbour, so the zero-shot prompt's colour names point a little off, and the
  pre-training captions never say "a photo of a ..." (``captions.py``);
- the new classes are new in kind: base are the warm colours, new the cool ones, so that a context
  fitted to tell warm colours apart under one light has no reason to suit the cool ones (the
  paper's datasets split their labels in an arbitrary order; with the colours interleaved, in
  trials under stronger lights, CoCoOp's H did not beat CoOp's);
- the light's strength varies from picture to picture, and the stage and sea lights also tint the
  background, so an instance-conditional prompt (CoCoOp) has something to condition on.

Only colours: the published training crops (RandomResizedCrop down to 8 % of the area) cut the one
object of a 48-pixel picture apart, and a ViT this small recognises a shape only whole and centred,
so on ``miniworld_shapes`` every prompt learner falls below zero-shot; on ``miniworld_textures``
16 shots do not beat zero-shot either (both stay registered for experiments).

The transfer demos (Tables 2 and 3) learn on all ten colours of ``miniworld_lamp``, under a light
of its own, and evaluate what they learned elsewhere, as the paper does from ImageNet:

- cross-dataset: on other kinds of classes, never learned from, only evaluated (as DTD's textures
  or SUN397's scenes are for an ImageNet prompt): ``miniworld_shapes``, ``miniworld_textures`` and
  ``miniworld_backdrops`` (the background behind an object, which captions name: "on dark");
- domain generalisation: on the same ten colours under the base-to-new demo's three lights, which
  bend hues the same way as the lamp but by other amounts and with other casts.
"""

from __future__ import annotations

from dataclasses import dataclass

# name -> RGB. Ten colours that CLIP's tokenizer spells as one word each.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 40),
    "lime": (160, 220, 40),
    "green": (30, 130, 45),
    "cyan": (40, 200, 215),
    "blue": (40, 70, 210),
    "purple": (130, 50, 175),
    "pink": (245, 130, 190),
    "brown": (120, 70, 30),
}
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "ring",
    "diamond",
    "hexagon",
    "arrow",
)
# how an object is filled
FILLS: tuple[str, ...] = ("plain", "striped", "dotted")
FILL_PROBS = (0.5, 0.25, 0.25)
# full-picture patterns (the texture dataset's classes)
TEXTURES: tuple[str, ...] = (
    "stripes",
    "dots",
    "checks",
    "zigzag",
    "waves",
    "grid",
    "rings",
    "crosshatch",
    "bricks",
    "spiral",
)
# background name -> grey level (tinted and shaded per scene)
BACKGROUNDS: dict[str, int] = {"white": 240, "light": 195, "grey": 128, "dark": 60, "black": 18}


@dataclass(frozen=True)
class Light:
    """How a dataset's pictures are lit and shot: every colour of the scene (object, background,
    ink, paper) goes through it before rendering. Each channel takes a share of the next one
    (R from G, G from B, B from R): ``bleed`` /256, drawn per picture from this range, which turns
    every hue towards its neighbour by a picture-dependent amount and leaves greys grey; ``cast``
    then adds (r, g, b) per 256 of bleed, which tints greys too (the light shows in the
    background). Integer arithmetic only: the same pixels on every machine."""

    name: str
    bleed: tuple[int, int] = (0, 0)
    cast: tuple[int, int, int] = (0, 0, 0)
    casts: tuple[tuple[int, int, int], ...] = ()  # when given, each picture's cast is drawn from these

    @property
    def is_daylight(self) -> bool:
        return self.bleed == (0, 0) and self.cast == (0, 0, 0) and not self.casts


DAYLIGHT = Light("daylight")
# The demo's lights, chosen by trying bleed ranges and casts on the tiny CLIP: strong enough that
# zero-shot misnames some colours, mild enough that ten epochs of CoCoOp learn them.
DUSK = Light("dusk", bleed=(20, 90))
STAGE = Light("stage", bleed=(0, 60), cast=(64, -32, 64))
SEA = Light("sea", bleed=(0, 60), cast=(-32, 32, 64))
# The transfer demos' source domain: a lamp whose tint changes from picture to picture (warm, green
# or none), so that the source, like ImageNet, holds many looks of each class. With one warm tint,
# CoCoOp's target average fell below CoOp's in both transfer studies.
LAMP = Light("lamp", bleed=(10, 70), casts=((48, 16, -48), (-48, 48, -16), (0, 0, 0)))


@dataclass(frozen=True)
class DemoDataset:
    """One generated dataset: its harness key, the split file's name and its classes in label order
    (the first half are the base classes). ``kind`` says what a class name is (a shape, a texture
    or a colour); the other attributes of each picture are drawn at random; ``light`` is the
    dataset's domain."""

    key: str
    paper_name: str
    kind: str  # "shape" | "texture" | "color" | "background"
    classes: tuple[str, ...]
    per_class: tuple[int, int, int] = (16, 4, 40)  # train / val / test pictures per class
    light: Light = DAYLIGHT

    @property
    def folder(self) -> str:
        return self.key

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.paper_name}.json"


# The daylight datasets interleave easy and hard classes so that base and new are equally hard;
# the demo's lit ones put the warm colours first (base) and the cool ones second (new).
COLOR_CLASSES = ("red", "yellow", "green", "blue", "pink", "orange", "lime", "cyan", "purple", "brown")
WARM_THEN_COOL = ("red", "orange", "yellow", "pink", "brown", "lime", "green", "cyan", "blue", "purple")
DEMO_DATASETS: tuple[DemoDataset, ...] = (
    DemoDataset(
        "miniworld_shapes",
        "MiniShapes",
        "shape",
        ("circle", "star", "heart", "square", "arrow", "ring", "cross", "triangle", "hexagon", "diamond"),
    ),
    DemoDataset(
        "miniworld_textures",
        "MiniTextures",
        "texture",
        ("stripes", "dots", "zigzag", "rings", "bricks", "checks", "waves", "grid", "spiral", "crosshatch"),
    ),
    DemoDataset("miniworld_colors", "MiniColors", "color", COLOR_CLASSES),
    # The demo's three: the colours of objects at dusk, under a magenta stage light, under water.
    DemoDataset("miniworld_dusk", "MiniDusk", "color", WARM_THEN_COOL, light=DUSK),
    DemoDataset("miniworld_stage", "MiniStage", "color", WARM_THEN_COOL, light=STAGE),
    DemoDataset("miniworld_sea", "MiniSea", "color", WARM_THEN_COOL, light=SEA),
    # The transfer demos' source (all ten classes are learned) and a cross-dataset target.
    DemoDataset("miniworld_lamp", "MiniLamp", "color", COLOR_CLASSES, light=LAMP),
    DemoDataset("miniworld_backdrops", "MiniBackdrops", "background", tuple(BACKGROUNDS)),
    # The few-shot demo's three: the same lights, all ten colours, 32 training pictures per class so
    # that 16-shot draws differ between seeds (with 16, every seed would draw every picture).
    DemoDataset("miniworld_dusk_fs", "MiniDuskFewShot", "color", WARM_THEN_COOL, (32, 8, 40), DUSK),
    DemoDataset("miniworld_stage_fs", "MiniStageFewShot", "color", WARM_THEN_COOL, (32, 8, 40), STAGE),
    DemoDataset("miniworld_sea_fs", "MiniSeaFewShot", "color", WARM_THEN_COOL, (32, 8, 40), SEA),
)
DEMO_KEYS: tuple[str, ...] = tuple(d.key for d in DEMO_DATASETS)


def demo_dataset(key: str) -> DemoDataset:
    for d in DEMO_DATASETS:
        if d.key == key:
            return d
    raise KeyError(f"No miniature-world dataset {key!r}; they are {', '.join(DEMO_KEYS)}.")
