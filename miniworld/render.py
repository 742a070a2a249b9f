"""Pictures of the miniature world: an object on a background, or a texture filling the picture.

A scene is drawn at random from a private ``numpy`` generator, then rendered with PIL at three
times the size and box-filtered down, noised and JPEG-compressed. Only exact arithmetic touches
pixel arrays (``+ * / floor sqrt`` and comparisons, which IEEE 754 rounds the same way on every
CPU): no ``np.sin`` or ``np.arctan2``, whose vectorised versions differ in the last bit between
instruction sets. Trigonometry is done on scalars with Python's ``math``, for the geometry only.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from miniworld.vocab import BACKGROUNDS, COLORS, FILL_PROBS, FILLS, SHAPES, TEXTURES, Light

RENDER_SIZE = 48  # pixels; the pre-trained tiny CLIP sees 48 x 48 pictures
# How much objects vary in place, size and rotation (fractions of the side; degrees). Little: a
# ViT this small, trained for minutes, learns shapes only when they sit where it expects them
# (10 shapes after 150 supervised steps: 81 % centred and upright, 19 % with +-10 % jitter and
# +-15 degrees); the harness's training crops still move them.
POSITION_JITTER = 0.02
RADIUS_RANGE = (0.35, 0.42)
MAX_ANGLE = 0.0
TEXTURE_ANGLES = (0.0, 45.0, 90.0, 135.0)
_SUPERSAMPLE = 3


def rng_for(*keys: int) -> np.random.Generator:
    """A private generator for a tuple of integer keys (seed, stream, ...)."""
    return np.random.default_rng([int(k) for k in keys])


@dataclass(frozen=True)
class Scene:
    """What a picture shows (the words of its caption) and how it looks (nuisances)."""

    kind: str  # "object" | "texture"
    color: str  # the object's colour, or the texture's ink
    shape: str = ""  # objects
    fill: str = "plain"  # objects: plain | striped | dotted
    background: str = "grey"  # objects: a BACKGROUNDS name
    texture: str = ""  # textures
    paper: str = ""  # textures: the second colour
    radius: float = 0.35  # objects: fraction of the picture's side
    center: tuple[float, float] = (0.5, 0.5)
    angle: float = 0.0  # degrees
    period: float = 0.2  # stripes, dots, texture cells: fraction of the side
    pattern_angle: float = 0.0
    color_rgb: tuple[int, int, int] = (0, 0, 0)
    back_rgb: tuple[int, int, int] = (128, 128, 128)  # background, or the texture's paper
    shade: tuple[float, float] = (0.0, 0.0)  # gradient strength, direction (radians)
    noise: float = 0.0
    jpeg_quality: int = 90

    @property
    def size_word(self) -> str | None:
        return "small" if self.radius < 0.37 else "large" if self.radius > 0.4 else None


def _jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float = 8.0) -> tuple[int, int, int]:
    scale = rng.uniform(0.9, 1.08)
    return tuple(int(np.clip(round(v * scale + rng.normal(0, amount)), 0, 255)) for v in rgb)  # type: ignore[return-value]


def _nuisances(rng: np.random.Generator) -> dict:
    return dict(
        shade=(float(rng.uniform(0, 40)), float(rng.uniform(0, 2 * math.pi))),
        noise=float(rng.uniform(0, 8)),
        jpeg_quality=int(rng.integers(75, 96)),
    )


def sample_object(
    rng: np.random.Generator,
    color: str | None = None,
    shape: str | None = None,
    fill: str | None = None,
    background: str | None = None,
) -> Scene:
    """An object scene; attributes not given are drawn at random."""
    color = color or list(COLORS)[int(rng.integers(len(COLORS)))]
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    fill = fill or FILLS[int(rng.choice(len(FILLS), p=FILL_PROBS))]
    background = background or list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    radius = float(rng.uniform(*RADIUS_RANGE))
    room = min(POSITION_JITTER, 0.5 - radius - 0.03)  # mostly centred, always inside the picture
    center = (float(0.5 + rng.uniform(-room, room)), float(0.5 + rng.uniform(-room, room)))
    tint = rng.normal(0, 10, size=3)
    back = tuple(int(np.clip(round(BACKGROUNDS[background] + t), 0, 255)) for t in tint)
    return Scene(
        kind="object",
        color=color,
        shape=shape,
        fill=fill,
        background=background,
        radius=radius,
        center=center,
        angle=float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)),
        period=float(rng.uniform(0.22, 0.34)) * radius,
        pattern_angle=float(rng.uniform(0, 180)),
        color_rgb=_jitter_rgb(rng, COLORS[color]),
        back_rgb=back,  # type: ignore[arg-type]
        **_nuisances(rng),
    )


def sample_texture(rng: np.random.Generator, texture: str | None = None, color: str | None = None) -> Scene:
    """A texture scene: a pattern in ``color`` ink on a paper of another colour or a grey."""
    texture = texture or TEXTURES[int(rng.integers(len(TEXTURES)))]
    names = list(COLORS)
    color = color or names[int(rng.integers(len(names)))]
    papers = [n for n in names if n != color] + ["white", "black"]
    paper = papers[int(rng.integers(len(papers)))]
    paper_rgb = COLORS.get(paper) or ((240, 240, 240) if paper == "white" else (20, 20, 20))
    return Scene(
        kind="texture",
        color=color,
        texture=texture,
        paper=paper,
        center=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
        period=float(rng.uniform(0.2, 0.28)),
        pattern_angle=TEXTURE_ANGLES[int(rng.integers(len(TEXTURE_ANGLES)))],
        color_rgb=_jitter_rgb(rng, COLORS[color]),
        back_rgb=_jitter_rgb(rng, paper_rgb),
        **_nuisances(rng),
    )


def _lit(rgb: tuple[int, int, int], bleed: int, cast: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = rgb
    mixed = (((256 - bleed) * own + bleed * nxt) // 256 for own, nxt in ((r, g), (g, b), (b, r)))
    # the cast's share is rounded towards zero, so that a negative cast mirrors a positive one
    shifted = (m + (1 if c >= 0 else -1) * (bleed * abs(c) // 256) for m, c in zip(mixed, cast))
    return tuple(min(255, max(0, v)) for v in shifted)  # type: ignore[return-value]


def light_scene(scene: Scene, light: Light, rng: np.random.Generator) -> Scene:
    """The scene under ``light`` (``vocab.Light``); daylight returns it untouched and draws nothing."""
    if light.is_daylight:
        return scene
    bleed = int(rng.integers(light.bleed[0], light.bleed[1] + 1))
    cast = light.casts[int(rng.integers(len(light.casts)))] if light.casts else light.cast
    return dataclasses.replace(
        scene, color_rgb=_lit(scene.color_rgb, bleed, cast), back_rgb=_lit(scene.back_rgb, bleed, cast)
    )


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def _polygon_circle(r: float, n: int = 48) -> list[tuple[float, float]]:
    return [(r * math.cos(2 * math.pi * k / n), r * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _regular(n: int, r: float = 1.0, start: float = -90.0, dy: float = 0.0) -> list[tuple[float, float]]:
    return [
        (r * math.cos(math.radians(start + 360 * k / n)), r * math.sin(math.radians(start + 360 * k / n)) + dy)
        for k in range(n)
    ]


def shape_polygons(shape: str) -> list[tuple[list[tuple[float, float]], bool]]:
    """Unit-radius outline(s) of a shape: [(points, filled?)], drawn in order (False cuts out)."""
    if shape == "circle":
        return [(_polygon_circle(0.95), True)]
    if shape == "ring":
        return [(_polygon_circle(1.0), True), (_polygon_circle(0.55), False)]
    if shape == "square":
        return [([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)], True)]
    if shape == "diamond":
        return [([(0, -1.0), (0.62, 0), (0, 1.0), (-0.62, 0)], True)]
    if shape == "triangle":
        return [(_regular(3, dy=0.2), True)]
    if shape == "hexagon":
        return [(_regular(6, 0.95, start=0.0), True)]
    if shape == "star":
        outer, inner = _regular(5), _regular(5, 0.42, start=-54.0)
        return [([p for pair in zip(outer, inner) for p in pair], True)]
    if shape == "cross":
        w, a = 0.32, 0.95
        pts = [
            (-w, -a),
            (w, -a),
            (w, -w),
            (a, -w),
            (a, w),
            (w, w),
            (w, a),
            (-w, a),
            (-w, w),
            (-a, w),
            (-a, -w),
            (-w, -w),
        ]
        return [(pts, True)]
    if shape == "arrow":
        pts = [(-0.95, -0.28), (0.15, -0.28), (0.15, -0.7), (0.95, 0.0), (0.15, 0.7), (0.15, 0.28), (-0.95, 0.28)]
        return [(pts, True)]
    if shape == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17.0, -(y + 2.5) / 17.0))
        return [(pts, True)]
    raise ValueError(f"Unknown shape {shape!r}; choose one of {SHAPES}.")


def _object_mask(scene: Scene, side: int) -> np.ndarray:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = scene.center[0] * side, scene.center[1] * side, scene.radius * side
    ca, sa = math.cos(math.radians(scene.angle)), math.sin(math.radians(scene.angle))
    for pts, filled in shape_polygons(scene.shape):
        draw.polygon(
            [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts], fill=255 if filled else 0
        )
    return np.asarray(mask, dtype=np.float32)[..., None] / 255.0


# ---------------------------------------------------------------------------------------------
# Patterns: boolean "ink" masks over the picture, from rotated cell coordinates (u, v)
# ---------------------------------------------------------------------------------------------


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _cells(side: int, period: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) / side
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return (xx * c + yy * s) / period, (-xx * s + yy * c) / period


def _wave(t: np.ndarray) -> np.ndarray:
    """A smooth periodic bump in [-1, 1] made of parabolas (a sine without np.sin)."""
    f = _frac(t)
    half = f < 0.5
    g = np.where(half, f * 2, f * 2 - 1)
    return np.where(half, 1, -1) * 4 * g * (1 - g)


def texture_ink(texture: str, side: int, period: float, angle: float, center: tuple[float, float]) -> np.ndarray:
    u, v = _cells(side, period, angle)
    if texture == "stripes":
        return _frac(u) < 0.5
    if texture == "dots":
        du, dv = _frac(u) - 0.5, _frac(v) - 0.5
        return du * du + dv * dv < 0.3**2
    if texture == "checks":
        return (np.floor(u) + np.floor(v)) % 2 == 0
    if texture == "zigzag":
        return _frac(v + np.abs(_frac(u) - 0.5) * 1.6) < 0.5
    if texture == "waves":
        return _frac(v + 0.35 * _wave(u * 0.5)) < 0.5
    if texture == "grid":
        return (_frac(u) < 0.2) | (_frac(v) < 0.2)
    if texture == "crosshatch":
        return (_frac((u + v) * 0.7) < 0.16) | (_frac((u - v) * 0.7) < 0.16)
    if texture == "bricks":
        row = np.floor(v * 1.4)
        return (_frac(v * 1.4) < 0.2) | (_frac(u * 0.6 + 0.5 * (row % 2)) < 0.1)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) / side
    dx, dy = xx - center[0], yy - center[1]
    r = np.sqrt(dx * dx + dy * dy) / period
    if texture == "rings":
        return _frac(r) < 0.5
    if texture == "spiral":
        # the polar angle's turn fraction from its octant (exact arithmetic, no arctan2)
        ax, ay = np.abs(dx) + 1e-12, np.abs(dy) + 1e-12
        t = np.minimum(ax, ay) / np.maximum(ax, ay) / 8  # 0 .. 1/8 within an octant
        t = np.where(ay > ax, 0.25 - t, t)
        t = np.where(dx < 0, 0.5 - t, t)
        t = np.where(dy < 0, 1 - t, t)
        return _frac(r + 2 * t) < 0.5
    raise ValueError(f"Unknown texture {texture!r}; choose one of {TEXTURES}.")


def _fill_ink(scene: Scene, side: int) -> np.ndarray | None:
    if scene.fill == "plain":
        return None
    if scene.fill == "striped":
        return texture_ink("stripes", side, scene.period, scene.pattern_angle, scene.center)
    if scene.fill == "dotted":
        return texture_ink("dots", side, scene.period, scene.pattern_angle, scene.center)
    raise ValueError(f"Unknown fill {scene.fill!r}; choose one of {FILLS}.")


def _accent(rgb: tuple[int, int, int]) -> np.ndarray:
    base = np.array(rgb, dtype=np.float64)
    lum = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    return base * 0.35 if lum > 140 else base * 0.4 + 255 * 0.6


def render(scene: Scene, rng: np.random.Generator, size: int = RENDER_SIZE) -> Image.Image:
    """The scene as an RGB picture of ``size`` pixels (supersampled, shaded, noised, JPEG'd)."""
    side = size * _SUPERSAMPLE
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) / side
    strength, direction = scene.shade
    shade = strength * ((xx - 0.5) * math.cos(direction) + (yy - 0.5) * math.sin(direction))
    back = np.array(scene.back_rgb, dtype=np.float64)
    color = np.array(scene.color_rgb, dtype=np.float64)
    if scene.kind == "texture":
        ink = texture_ink(scene.texture, side, scene.period, scene.pattern_angle, scene.center)[..., None]
        img = np.where(ink, color, back) + shade[..., None]
    else:
        obj = np.broadcast_to(color, (side, side, 3))
        fill = _fill_ink(scene, side)
        if fill is not None:
            obj = np.where(fill[..., None], _accent(scene.color_rgb), obj)
        alpha = _object_mask(scene, side)
        img = (back + shade[..., None]) * (1 - alpha) + obj * alpha
    small = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8)).resize((size, size), Image.BOX)
    noisy = np.asarray(small, dtype=np.float64) + rng.normal(0, scene.noise, size=(size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=scene.jpeg_quality
    )
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")
