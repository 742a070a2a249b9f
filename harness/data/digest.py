"""A short digest of a dataset's split: what a result depends on in the data, not where the data lies.

The digest covers the three lists the dataset reader returns (each image's path relative to the
dataset folder, its label and class name, in order), so it is the same for every dataset type (split
JSON, list files, folder listings) and the same after the data root moves. A few-shot draw is
determined by this split, K and the seed (``fewshot.draw_few_shot``); its cache records the digest of
the split it was drawn from, so a draw from other data is never reused.

The split digest does not see the images themselves: ``harness.data.stamps`` stamps them.
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


def forget() -> None:
    """Drop the digests and stamps this process remembers (a folder changed in place)."""
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


def remembered(key: tuple, name: str, root: str, compute) -> str:
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


def data_fingerprint(name: str, root: str) -> str:
    """The split digest of dataset ``name`` under ``root`` (read once per process while the split file,
    or the folders of a dataset without one, are unchanged); "unreadable: ..." when the folder cannot be
    read (the job itself then fails)."""

    def compute(ddir):
        return split_digest(*read_dataset(get_info(name), ddir), ddir)

    return remembered(("split", name), name, root, compute)
