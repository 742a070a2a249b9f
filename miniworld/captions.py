"""Captions of pre-training pictures.

Every caption names what a classifier of the demo needs (an object's colour and shape, a
texture's name and its colours) in one of many phrasings, as web alt-text does. None of them is
phrased like the zero-shot template "a photo of a {}.": a hand-written prompt is then a guess of
the right wording, as it is for real CLIP, and a learned prompt can find a better one.
"""

from __future__ import annotations

import numpy as np

from miniworld.render import Scene

# Captions that leave the colour out, so that shapes and textures must be seen to be matched
# (otherwise colour, the easiest cue, carries most of the contrastive loss).
WITHOUT_COLOR = 0.4
FILL_WITH = {"striped": "with stripes", "dotted": "with dots"}


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def object_caption(scene: Scene, rng: np.random.Generator) -> str:
    c, s, bg = scene.color, scene.shape, scene.background
    if rng.random() < WITHOUT_COLOR:
        return _pick(rng, [s, f"{_a(s)} {s}", f"{_a(s)} {s} on {bg}", f"{s} shape", f"the shape of {_a(s)} {s}"])
    adjectives = [scene.size_word] if scene.size_word and rng.random() < 0.3 else []
    if scene.fill != "plain" and rng.random() < 0.5:
        thing = " ".join(adjectives + [scene.fill, c, s])
    elif scene.fill != "plain" and rng.random() < 0.5:
        thing = " ".join(adjectives + [c, s, FILL_WITH[scene.fill]])
    else:
        thing = " ".join(adjectives + [c, s])
    return _pick(
        rng,
        [
            thing,
            f"{thing} on {bg}",
            f"{_a(thing)} {thing} on a {bg} background",
            f"{s} , {c}",
            f"the {s} is {c}",
            f"{c} coloured {s}",
            f"{bg} background with {_a(thing)} {thing}",
            f"there is {_a(thing)} {thing}",
            f"{s} drawn in {c}",
            f"{c} {s} , {bg} backdrop",
        ],
    )


def texture_caption(scene: Scene, rng: np.random.Generator) -> str:
    t, c, p = scene.texture, scene.color, scene.paper
    if rng.random() < WITHOUT_COLOR:
        return _pick(rng, [t, f"{t} pattern", f"{t} texture", f"pattern of {t}", f"seamless {t}"])
    return _pick(
        rng,
        [
            f"{t} pattern",
            f"{c} and {p} {t}",
            f"{t} in {c} on {p}",
            f"{_a(c)} {c} {t} texture",
            f"{t} texture , {c} and {p}",
            f"background of {c} {t}",
            f"{p} fabric with {c} {t}",
            f"seamless {t} pattern in {c}",
        ],
    )


def caption(scene: Scene, rng: np.random.Generator) -> str:
    return texture_caption(scene, rng) if scene.kind == "texture" else object_caption(scene, rng)
