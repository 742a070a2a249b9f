"""A short digest of a dataset's split: what a result depends on in the data, not where the data lies.

The digest covers the three lists the dataset reader returns (each image's path relative to the
dataset folder, its label and class name, in order), so it is the same for every dataset type (split
JSON, list files, folder listings) and the same after the data root moves. A few-shot draw is
determined by this split, K and the seed (``fewshot.draw_few_shot``); its cache records the digest of
the split it was drawn from, so a draw from other data is never reused.

The split digest does not see the images themselves: a resized copy of a dataset has the same split.
``images_stamp`` covers them: each image's path relative to the dataset folder and its size in bytes,
in order. Not its modification time: a moved or copied data root (``cp`` without ``-p``, a fresh
download) must not by itself change a result, and a resized or re-encoded image changes its size. An
edit that keeps the byte count exactly is not seen (the feature cache, keyed by modification time,
does see it). Only the images a result reads are stamped (``training_images``: the few-shot draw a
prompt learns from, and seed 1's draw, which the seeds of a settings run share, or the full train
and val splits a feature-fitted method draws from itself;
``evaluated_images``: an evaluated test split), never a whole ImageNet training split: one stat per image,
about 16,000 for ImageNet at 16 shots and 50,000 for its test split. The stamps of one folder are
computed once per process while its split file is unchanged (a sweep's driver derives the settings
of hundreds of jobs from the same images; each job is a process of its own), so an image replaced in
place during one process is seen by the next (``forget`` clears them).
"""

from __future__ import annotations

import hashlib
import os

from .readers import read_dataset
from .registry import get_info

DIGEST_CHARS = 16
_memo: dict = {}


def split_digest(train, val, test, ddir: str) -> str:
    h = hashlib.sha256()
    for name, items in (("train", train), ("val", val), ("test", test)):
        h.update(name.encode() + b"\n")
        for d in items:
            rel = os.path.relpath(d.impath, ddir).replace(os.sep, "/") if os.path.isabs(d.impath) else d.impath
            h.update(f"{rel}\t{d.label}\t{d.classname}\n".encode())
    return h.hexdigest()[:DIGEST_CHARS]


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


def forget() -> None:
    """Drop the stamps and digests this process remembers (a folder changed in place)."""
    _memo.clear()


def _watch(name: str, root: str):
    """(dataset folder, the stat of what its split is read from, or None)."""
    info = get_info(name)
    ddir = os.path.join(os.path.abspath(os.path.expanduser(str(root))), info.folder)
    split = os.path.join(ddir, info.split_file) if info.split_file else None
    watched = [split] if split and os.path.isfile(split) else [ddir, os.path.join(ddir, info.image_dir)]
    try:
        return ddir, tuple((st.st_size, st.st_mtime_ns, st.st_ino) for st in map(os.stat, watched))
    except OSError:
        return ddir, None


def _remembered(key: tuple, name: str, root: str, compute) -> str:
    """``compute()`` once per process while ``name``'s split under ``root`` is unchanged; "unreadable:
    ..." when the data cannot be read (the job itself then fails, naming the problem)."""
    from .errors import DatasetError

    try:
        ddir, stamp = _watch(name, root)
        key = (*key, ddir)
        if stamp is not None and _memo.get(key, (None,))[0] == stamp:
            return _memo[key][1]
        value = compute(ddir)
    except (DatasetError, OSError) as exc:
        return f"unreadable: {type(exc).__name__}"
    if stamp is not None:
        _memo[key] = (stamp, value)
    return value


def training_images(name: str, root: str, shots: int, seed: int | None, subsample: str, full: bool) -> str:
    """``images_stamp`` of what training reads: the few-shot draw of (``shots``, ``seed``) on the
    ``subsample`` classes, or (``full``: a method that draws its own shots from features) the full train
    and val splits."""
    from .build import build_dataset

    seed = seed if seed is not None else 1

    def compute(ddir):
        splits = build_dataset(name, root, num_shots=0 if full else shots, seed=seed, subsample=subsample)
        items = splits.train + splits.val if full else splits.train
        return images_stamp([d.impath for d in items], ddir)

    return _remembered(("train", name, shots, seed, subsample, full), name, root, compute)


def evaluated_images(name: str, root: str, subsample: str) -> str:
    """``images_stamp`` of the test split of ``name``'s ``subsample`` classes."""
    from .build import build_dataset

    def compute(ddir):
        splits = build_dataset(name, root, num_shots=0, seed=1, subsample=subsample)
        return images_stamp([d.impath for d in splits.test], ddir)

    return _remembered(("test", name, subsample), name, root, compute)


def data_fingerprint(name: str, root: str) -> str:
    """The split digest of dataset ``name`` under ``root`` (read once per process while the split file,
    or the folders of a dataset without one, are unchanged); "unreadable: ..." when the folder cannot be
    read (the job itself then fails)."""

    def compute(ddir):
        return split_digest(*read_dataset(get_info(name), ddir), ddir)

    return _remembered(("split", name), name, root, compute)
