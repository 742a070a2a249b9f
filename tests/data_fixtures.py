"""Shared helpers for the data-layer tests."""

from __future__ import annotations

import random
import sys
import types
from contextlib import contextmanager

from harness.data import Datum


def make_items(labels_per_class, seed=0, prefix="/data/x"):
    """Datum list with interleaved labels: ``labels_per_class`` = {label: count}."""
    rng = random.Random(seed)
    items = [
        Datum(f"{prefix}/{lab}/{i}.jpg", lab, f"class_{lab}") for lab, n in labels_per_class.items() for i in range(n)
    ]
    rng.shuffle(items)
    return items


def by_hand_global_random(items, k, seed=None):
    """PROTOCOL.md 4.2 written out with the *global* random module (the authors' procedure)."""
    if seed is not None:
        random.seed(seed)
    groups = {}
    for d in items:
        groups.setdefault(d.label, []).append(d)
    out = []
    for g in groups.values():
        out.extend(random.sample(g, k) if len(g) >= k else g)
    return out


@contextmanager
def fake_dassl_module():
    """Install a fake ``dassl.data.datasets.base_dataset`` with a Dassl-like ``Datum`` class."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}

    class Datum:  # mirrors the attribute names of Dassl's datum
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__ = names[-1]
    Datum.__qualname__ = "Datum"
    mods[names[-1]].Datum = Datum
    for n in names:
        sys.modules[n] = mods[n]
    try:
        yield Datum
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
