"""A short digest of a dataset's split: what a result depends on in the data, not where the data lies.

The digest covers the three lists the dataset reader returns (each image's path relative to the
dataset folder, its label and class name, in order), so it is the same for every dataset type (split
JSON, list files, folder listings) and the same after the data root moves. A few-shot draw is
determined by this split, K and the seed (``fewshot.draw_few_shot``); its cache records the digest of
the split it was drawn from, so a draw from other data is never reused.
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


def data_fingerprint(name: str, root: str) -> str:
    """The split digest of dataset ``name`` under ``root`` (read once per process while the split file,
    or the folders of a dataset without one, are unchanged); "unreadable: ..." when the folder cannot be
    read (the job itself then fails)."""
    from .errors import DatasetError

    info = get_info(name)
    ddir = os.path.join(os.path.abspath(os.path.expanduser(str(root))), info.folder)
    split = os.path.join(ddir, info.split_file) if info.split_file else None
    watched = [split] if split and os.path.isfile(split) else [ddir, os.path.join(ddir, info.image_dir)]
    try:
        stamp = tuple((st.st_size, st.st_mtime_ns, st.st_ino) for st in map(os.stat, watched))
    except OSError:
        stamp = None
    key = (name, ddir)
    if stamp is not None and _memo.get(key, (None,))[0] == stamp:
        return _memo[key][1]
    try:
        train, val, test = read_dataset(info, ddir)
    except (DatasetError, OSError) as exc:
        return f"unreadable: {type(exc).__name__}"
    digest = split_digest(train, val, test, ddir)
    if stamp is not None:
        _memo[key] = (stamp, digest)
    return digest
