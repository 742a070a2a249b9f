"""Split files (PROTOCOL.md 3.3) and the two generic split-generation routines (PROTOCOL.md 3.4).

Documented deviations from the published code (PROTOCOL.md 18.8):

* Directory listings are **sorted** wherever the published code used the raw (unsorted,
  file-system dependent) listing — within-class image order of the three-way folder split and of
  the ImageNet family.  With the authors' split JSON files this changes nothing.
* The routines that generate a split when the JSON is missing draw from a private
  ``random.Random(seed)`` instead of Python's global generator, so generating a split never shifts
  the few-shot draw that follows (the published code continued the global stream).
"""

from __future__ import annotations

import json
import os
import random
from collections import OrderedDict
from collections.abc import Sequence

from clipcore.atomic import atomic_write_text

from .errors import SplitFileError
from .types import Datum


def listdir_nohidden(path: str, dirs_only: bool = False, sort: bool = True) -> list[str]:
    """Entries of ``path`` whose names do not start with a dot (sorted by default)."""
    names = [n for n in os.listdir(path) if not n.startswith(".")]
    if dirs_only:
        names = [n for n in names if os.path.isdir(os.path.join(path, n))]
    return sorted(names) if sort else names


def _relpath(impath: str, image_dir: str) -> str:
    rel = os.path.relpath(impath, image_dir) if os.path.isabs(impath) else impath
    return rel.replace(os.sep, "/")


def write_split_json(path: str, train, val, test, image_dir: str) -> None:
    """Write a split JSON in the authors' format: {"train","val","test"} of [relpath, label, name]."""
    out = OrderedDict()
    for name, items in (("train", train), ("val", val), ("test", test)):
        out[name] = [[_relpath(d.impath, image_dir), int(d.label), d.classname] for d in items]
    atomic_write_text(path, json.dumps(out, indent=4) + "\n")


def _escapes(rel: str) -> bool:
    """Whether a split file's image path is absolute or climbs out of the image folder."""
    norm = os.path.normpath(rel.replace("\\", "/"))
    return os.path.isabs(rel) or norm == ".." or norm.startswith("../")


def _layout_hint(image_dir: str) -> str:
    return (
        f'expected a JSON object {{"train": [...], "val": [...], "test": [...]}} whose items '
        f"are [path relative to {image_dir}, integer label, class name]"
    )


def read_split_json(path: str, image_dir: str, fix: str = "") -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Read a split JSON (PROTOCOL.md 3.3), preserving list order; validates its structure."""
    fix = fix or "re-download the authors' split file (PROTOCOL.md 3.2) and put it at that path"
    if not os.path.isfile(path):
        raise SplitFileError(f"split file not found: {path}; {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SplitFileError(f"cannot read split file {path}: {e}; {_layout_hint(image_dir)}; {fix}") from e
    if not isinstance(obj, dict) or not all(k in obj for k in ("train", "val", "test")):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise SplitFileError(f"split file {path} has the wrong structure (got {got}); {_layout_hint(image_dir)}; {fix}")
    out = []
    for split in ("train", "val", "test"):
        items = obj[split]
        if not isinstance(items, list):
            raise SplitFileError(
                f"split file {path}: {split!r} is a {type(items).__name__}, not a "
                f"list; {_layout_hint(image_dir)}; {fix}"
            )
        data = []
        for i, it in enumerate(items):
            ok = (
                isinstance(it, (list, tuple))
                and len(it) == 3
                and isinstance(it[0], str)
                and isinstance(it[2], str)
                and not isinstance(it[1], bool)
            )
            if ok:
                try:
                    label = int(it[1])
                    ok = label >= 0 and float(it[1]) == label
                except (TypeError, ValueError):
                    ok = False
            if not ok:
                raise SplitFileError(
                    f"split file {path}: item {i} of {split!r} is {it!r}, expected "
                    f"[relative path, integer label >= 0, class name]; "
                    f"{_layout_hint(image_dir)}; {fix}"
                )
            if _escapes(it[0]):
                # a run would read (and a check would vouch for) a file outside the dataset folder
                raise SplitFileError(
                    f"split file {path}: item {i} of {split!r} has path {it[0]!r}, which leads outside {image_dir}; "
                    f"expected a path relative to {image_dir} without '..'; {fix}"
                )
            data.append(Datum(os.path.join(image_dir, it[0]), label, it[2]))
        out.append(data)
    return out[0], out[1], out[2]


# ---------------------------------------------------------------------------------------------
# Generic split-generation routines (used only when a split JSON is missing).
# ---------------------------------------------------------------------------------------------


def split_three_way(
    image_dir: str,
    rng: random.Random,
    ignored: Sequence[str] = (),
    new_cnames: dict[str, str] | None = None,
    p_train: float = 0.5,
    p_val: float = 0.2,
):
    """The "DTD routine": sorted class folders, per class shuffle then 50/20/30 with round()."""
    new_cnames = new_cnames or {}
    classes = [c for c in listdir_nohidden(image_dir, dirs_only=True) if c not in ignored]
    train, val, test = [], [], []
    for label, cname in enumerate(classes):
        cdir = os.path.join(image_dir, cname)
        ims = listdir_nohidden(cdir)  # sorted: documented deviation (module docstring)
        rng.shuffle(ims)
        n = len(ims)
        n_train, n_val = round(n * p_train), round(n * p_val)
        n_test = n - n_train - n_val
        if not (n_train > 0 and n_val > 0 and n_test > 0):
            raise SplitFileError(
                f"class folder {cdir} has only {n} images, too few for a "
                f"train/val/test split; use the authors' split JSON instead"
            )
        name = new_cnames.get(cname, cname)
        items = [Datum(os.path.join(cdir, im), label, name) for im in ims]
        train += items[:n_train]
        val += items[n_train : n_train + n_val]
        test += items[n_train + n_val :]
    return train, val, test


def split_trainval(trainval: list[Datum], rng: random.Random, p_val: float = 0.2):
    """The "80/20 routine": per label (first-appearance order) shuffle, first round(0.2n) -> val."""
    groups: dict[int, list[int]] = OrderedDict()
    for idx, d in enumerate(trainval):
        groups.setdefault(d.label, []).append(idx)
    train, val = [], []
    for idxs in groups.values():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise SplitFileError(
                f"class {trainval[idxs[0]].classname!r} has only {len(idxs)} "
                f"train+val images, too few for a validation split; use the "
                f"authors' split JSON instead"
            )
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val
