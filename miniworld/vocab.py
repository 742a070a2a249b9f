"""The miniature world's vocabulary and its demo datasets, as plain data.

Three kinds of thing exist in the world: *objects* (a shape in a colour, plain, striped or dotted,
on a background), *textures* (a pattern in two colours filling the picture) and the *colours*
themselves. The demo has one dataset per kind, so that its Average row is taken over datasets of
different domains, as the paper's is (a coarse object dataset like Caltech101, a texture dataset
like DTD, a fine-grained one where neighbouring classes differ by a shade, like Flowers).

Every class of every dataset is seen in pre-training; base and new classes differ only in that the
few-shot training sees the base half (PROTOCOL.md 4.3: the first half of the labels). What makes
the zero-shot template a poor prompt is how pre-training captions are phrased: they never say
"a photo of a ..." (see ``captions.py``), so a prompt has something to learn on the base classes.
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
class DemoDataset:
    """One generated dataset: its harness key, the split file's name and its classes in label order
    (the first half are the base classes). ``kind`` says what a class name is (a shape, a texture
    or a colour); the other attributes of each picture are drawn at random."""

    key: str
    paper_name: str
    kind: str  # "shape" | "texture" | "color"
    classes: tuple[str, ...]
    per_class: tuple[int, int, int] = (16, 4, 40)  # train / val / test pictures per class

    @property
    def folder(self) -> str:
        return self.key

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.paper_name}.json"


# Class orders interleave easy and hard classes so that base and new are equally hard.
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
    DemoDataset(
        "miniworld_colors",
        "MiniColors",
        "color",
        ("red", "yellow", "green", "blue", "pink", "orange", "lime", "cyan", "purple", "brown"),
    ),
)
DEMO_KEYS: tuple[str, ...] = tuple(d.key for d in DEMO_DATASETS)


def demo_dataset(key: str) -> DemoDataset:
    for d in DEMO_DATASETS:
        if d.key == key:
            return d
    raise KeyError(f"No miniature-world dataset {key!r}; they are {', '.join(DEMO_KEYS)}.")
