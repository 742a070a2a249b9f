"""Stamps of the images a result reads: what its split digest (``harness.data.digest``) does not see.

A resized copy of a dataset has the same split, so the split digest does not tell it apart.
``images_stamp`` covers the images: each one's path relative to the dataset folder and its size in
bytes, in order. Not its modification time: a moved or copied data root (``cp`` without ``-p``, a fresh
download) must not by itself change a result, and a resized or re-encoded image changes its size. An
edit that keeps the byte count exactly is not seen (the feature cache, keyed by modification time,
does see it). Only the images a result reads are stamped (``training_images``: the few-shot draw a
prompt learns from, and seed 1's draw, which the seeds of a settings run share, or the full train
and val splits a feature-fitted method draws from itself; ``evaluated_images``: an evaluated test
split), never a whole ImageNet training split: one stat per image, about 16,000 for ImageNet at 16
shots and 50,000 for its test split. The stamps of one folder are
computed once per process while its split file is unchanged (a sweep's driver derives the settings
of hundreds of jobs from the same images; each job is a process of its own), so an image replaced in
place during one process is seen by the next (``harness.data.digest.forget`` clears them).
"""

from __future__ import annotations

import hashlib
import os

from .build import build_dataset
from .digest import DIGEST_CHARS, remembered


def images_stamp(paths, ddir: str) -> str:
    """Digest of (path relative to ``ddir``, size in bytes) of each image, in order ("absent" for a
    missing file)."""
    h = hashlib.sha256()
    for path in paths:
        rel = os.path.relpath(path, ddir).replace(os.sep, "/") if os.path.isabs(path) else path
        try:
            size = str(os.stat(path).st_size)
        except OSError:
            size = "absent"
        h.update(f"{rel}\t{size}\n".encode())
    return h.hexdigest()[:DIGEST_CHARS]


def training_images(name: str, root: str, shots: int, seed: int | None, subsample: str, full: bool) -> str:
    """``images_stamp`` of what training reads: the few-shot draw of (``shots``, ``seed``) on the
    ``subsample`` classes, or (``full``: a method that draws its own shots from features) the full train
    and val splits."""
    seed = seed if seed is not None else 1

    def compute(ddir):
        splits = build_dataset(name, root, num_shots=0 if full else shots, seed=seed, subsample=subsample)
        items = splits.train + splits.val if full else splits.train
        return images_stamp([d.impath for d in items], ddir)

    return remembered(("train", name, shots, seed, subsample, full), name, root, compute)


def evaluated_images(name: str, root: str, subsample: str) -> str:
    """``images_stamp`` of the test split of ``name``'s ``subsample`` classes."""

    def compute(ddir):
        splits = build_dataset(name, root, num_shots=0, seed=1, subsample=subsample)
        return images_stamp([d.impath for d in splits.test], ddir)

    return remembered(("test", name, subsample), name, root, compute)
