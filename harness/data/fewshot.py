"""Few-shot sampling (PROTOCOL.md 4.2), base/new class split (PROTOCOL.md 4.3) and few-shot caches (PROTOCOL.md 3.6).

Sampling draws from a private ``random.Random(seed)``; since ``random.Random(s)`` and
``random.seed(s)`` put the Mersenne Twister in the same state, the draw equals what the authors'
code gets from CPython's global generator seeded with ``s`` when nothing else consumed it.

Cache files: ``<dataset folder>/split_fewshot/shot_<K>-seed_<S>.json`` holding
``{"format", "dataset", "num_shots", "seed", "train": [...], "val": [...]}`` whose items are
``[image path relative to the dataset folder, label, class name]`` (portable: moving the data root
keeps them valid), and ``"split_fingerprint"``, the digest of the split it was drawn from
(``digest.split_digest``): a cache drawn from other data (the split file changed, or the read-only
fallback cache of another data root with a dataset of the same name) is not reused, a new draw
replaces it. A cache without that record (an earlier harness's, an authors' ``.pkl``) is used only if
every training image it names is in the current training split; otherwise it is an error naming the
file and how to draw again.  An authors' ``shot_<K>-seed_<S>.pkl`` found in the same folder is read instead
(through a restricted unpickler; Dassl is not needed).  When the dataset folder is not writable the
cache goes to ``<cache_dir or $HARNESS_CACHE_DIR or ~/.cache/prompt-harness/split_fewshot>/<key>/``.
Generation happens under a ``filelock`` lock and the file is written atomically, so concurrent jobs
with the same (dataset, K, seed) draw once and all read the same sample.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

from clipcore.atomic import atomic_write_text

from .cache import dir_writable, fallback_dir, lock_for
from .errors import FewShotCacheError
from .types import Datum

logger = logging.getLogger(__name__)

CACHE_FORMAT = "prompt-harness-fewshot/1"


# ---------------------------------------------------------------------------------------------
# Sampling and subsampling
# ---------------------------------------------------------------------------------------------


def sample_few_shot(items: Sequence[Datum], num_shots: int, rng: random.Random) -> list[Datum]:
    """K-shot sample of ``items`` (PROTOCOL.md 4.2).

    Items are grouped by label in first-appearance order; each group with at least K items
    contributes ``rng.sample(group, K)`` (in the returned order), a smaller group contributes all
    its items (with a warning naming the class).  ``num_shots < 1`` returns the list unchanged.
    """
    items = list(items)
    if num_shots < 1:
        return items
    groups: OrderedDict[int, list[Datum]] = OrderedDict()
    for d in items:
        groups.setdefault(d.label, []).append(d)
    out: list[Datum] = []
    for label, group in groups.items():
        if len(group) >= num_shots:
            out.extend(rng.sample(group, num_shots))
        else:
            logger.warning(
                "few-shot sampling: class %r (label %d) has only %d images, fewer than "
                "the %d shots requested; taking all %d (published behaviour)",
                group[0].classname,
                label,
                len(group),
                num_shots,
                len(group),
            )
            out.extend(group)
    return out


def subsample_classes(*splits: Sequence[Datum], subsample: str = "base") -> tuple[list[Datum], ...]:
    """Keep the base (first ⌈n/2⌉ sorted labels) or new (the rest) classes, relabelled from 0.

    The label set comes from the first list (the training list); every list is filtered and
    relabelled with the same mapping, keeping class names and list order (PROTOCOL.md 4.3).
    ``subsample="all"`` returns the lists unchanged.  Always returns a tuple, one list per input.
    """
    if subsample not in ("all", "base", "new"):
        raise ValueError(f"subsample must be 'all', 'base' or 'new', got {subsample!r}")
    if subsample == "all" or not splits:
        return tuple(list(s) for s in splits)
    labels = sorted({d.label for d in splits[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {old: new for new, old in enumerate(selected)}
    return tuple([replace(d, label=relabel[d.label]) for d in s if d.label in relabel] for s in splits)


def draw_few_shot(train, val, num_shots: int, seed: int, sample_val: bool = True):
    """Train with K shots then val with min(K, 4), from one ``random.Random(seed)`` stream."""
    rng = random.Random(seed)
    train = sample_few_shot(train, num_shots, rng)
    if sample_val:
        val = sample_few_shot(val, min(num_shots, 4), rng)
    return train, val


# ---------------------------------------------------------------------------------------------
# Authors' pickle (Dassl Datum objects) — restricted unpickler
# ---------------------------------------------------------------------------------------------


class _DasslDatumShim:
    """Stands in for ``dassl.data.datasets.base_dataset.Datum`` while unpickling."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state or {})

    def to_datum(self) -> Datum:
        d = self.__dict__
        return Datum(
            str(d.get("_impath", d.get("impath"))),
            int(d.get("_label", d.get("label"))),
            str(d.get("_classname", d.get("classname", ""))),
            int(d.get("_domain", d.get("domain", 0)) or 0),
        )


class _RestrictedUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("dassl.data.datasets.base_dataset", "Datum"): _DasslDatumShim,
        ("copyreg", "_reconstructor"): None,
        ("copy_reg", "_reconstructor"): None,  # protocols 0/1 spell it the Python 2 way
        ("builtins", "object"): None,
        ("__builtin__", "object"): None,
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            shim = self._ALLOWED[(module, name)]
            return shim if shim is not None else super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a few-shot cache")


def read_authors_pickle(path: str) -> dict[str, list[Datum]]:
    """Read an authors' ``shot_K-seed_S.pkl`` (or ``preprocessed.pkl``): dict of Datum lists."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(io.BytesIO(f.read())).load()
    except Exception as e:  # noqa: BLE001 - any failure means an unusable cache
        raise FewShotCacheError(f"cannot read the few-shot cache {path}: {e}; delete it to draw a new sample") from e
    if not isinstance(obj, dict) or "train" not in obj:
        raise FewShotCacheError(f"{path} is not a dict with a 'train' list; delete it")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, list) or not all(isinstance(x, _DasslDatumShim) for x in v):
            raise FewShotCacheError(f"{path}: {k!r} is not a list of Datum objects; delete it")
        out[k] = [x.to_datum() for x in v]
    return out


def _remap_abs(path: str, ddir: str, folder: str) -> str:
    """Map an absolute path from another machine onto ``ddir`` via the dataset folder name."""
    if os.path.exists(path):
        return path
    parts = path.replace("\\", "/").split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == folder:
            cand = os.path.join(ddir, *parts[i + 1 :])
            if os.path.exists(cand):
                return cand
            break
    return path


# ---------------------------------------------------------------------------------------------
# Our JSON cache
# ---------------------------------------------------------------------------------------------


def _rel(p: str, ddir: str) -> str:
    rel = os.path.relpath(p, ddir)
    if rel.startswith(".."):
        return p  # outside the dataset folder: keep absolute
    return rel.replace(os.sep, "/")


def write_cache(path: str, data: dict[str, list[Datum]], ddir: str, meta: dict) -> None:
    obj = {"format": CACHE_FORMAT, **meta}
    for k, items in data.items():
        obj[k] = [[_rel(d.impath, ddir), d.label, d.classname] for d in items]
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def read_cache(path: str, ddir: str) -> dict[str, list[Datum]]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        if obj.get("format") != CACHE_FORMAT or "train" not in obj:
            raise ValueError(f"not a {CACHE_FORMAT} file")
        return {
            k: [Datum(os.path.join(ddir, p) if not os.path.isabs(p) else p, int(lab), str(c)) for p, lab, c in obj[k]]
            for k in ("train", "val")
            if k in obj
        }
    except Exception as e:  # noqa: BLE001
        raise FewShotCacheError(f"cannot read the few-shot cache {path}: {e}; delete it to draw a new sample") from e


def cache_name(num_shots: int, seed: int, ext: str = "json") -> str:
    return f"shot_{num_shots}-seed_{seed}.{ext}"


def cache_candidates(key: str, ddir: str, num_shots: int, seed: int, cache_dir: str | None = None) -> list[str]:
    """Cache files looked for, in order (our JSON, authors' pickle; dataset folder first)."""
    dirs = [os.path.join(ddir, "split_fewshot"), fallback_dir(key, cache_dir)]
    return [os.path.join(d, cache_name(num_shots, seed, ext)) for d in dirs for ext in ("json", "pkl")]


def recorded_split(path: str) -> str | None:
    """The split digest a JSON cache was drawn from (None: not recorded, or an authors' pickle)."""
    if not path.endswith(".json"):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("split_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def check_drawn_from(path: str, drawn: list[Datum], train: list[Datum]) -> None:
    """A cached draw may only name images of the current training split (else it trains on others)."""
    known = {d.impath for d in train}
    stale = sum(1 for d in drawn if d.impath not in known)
    if stale:
        raise FewShotCacheError(
            f"the few-shot cache {path} names {stale} of its {len(drawn)} training images that are not in the "
            "current training split (the split changed since the draw?); delete it to draw a new sample from "
            "the current split"
        )


def _load_any(path: str, ddir: str, folder: str) -> dict[str, list[Datum]]:
    if path.endswith(".pkl"):
        data = read_authors_pickle(path)
        return {
            k: [replace(d, impath=_remap_abs(d.impath, ddir, folder)) for d in v]
            for k, v in data.items()
            if k in ("train", "val")
        }
    return read_cache(path, ddir)


def load_or_draw(
    key: str,
    folder: str,
    ddir: str,
    train,
    val,
    num_shots: int,
    seed: int,
    cache_dir: str | None = None,
    sample_val: bool = True,
    split_fingerprint: str | None = None,
):
    """Few-shot train/val for (K, seed): from a cache drawn from this split if one exists, else drawn
    and cached (``split_fingerprint``: the split's digest, recorded in the cache and compared).

    Returns ``(train, val, cache_path, source)`` with source ``"cache"``, ``"authors-pkl"`` or
    ``"drawn"``.
    """

    def existing():
        for p in cache_candidates(key, ddir, num_shots, seed, cache_dir):
            if not os.path.isfile(p):
                continue
            recorded = recorded_split(p)
            if split_fingerprint and recorded and recorded != split_fingerprint:
                logger.info(
                    "%s: few-shot cache %s was drawn from other data (split %s, now %s); not reused",
                    key,
                    p,
                    recorded,
                    split_fingerprint,
                )
                continue
            data = _load_any(p, ddir, folder)
            check_drawn_from(p, data["train"], train)
            return p, data
        return None

    def finish(p, data, source):
        v = data.get("val", val) if sample_val else val
        return data["train"], v, p, source

    found = existing()
    if found:
        return finish(*found, "authors-pkl" if found[0].endswith(".pkl") else "cache")

    primary_dir = os.path.join(ddir, "split_fewshot")
    if dir_writable(primary_dir):
        target_dir = primary_dir
    else:
        target_dir = fallback_dir(key, cache_dir)
        logger.warning(
            "%s: dataset folder %s is not writable; few-shot cache goes to %s instead", key, ddir, target_dir
        )
        os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, cache_name(num_shots, seed))
    with lock_for(target):
        found = existing()  # someone else may have written it while we waited for the lock
        if found:
            return finish(*found, "authors-pkl" if found[0].endswith(".pkl") else "cache")
        ftrain, fval = draw_few_shot(train, val, num_shots, seed, sample_val=sample_val)
        data = {"train": ftrain, "val": fval} if sample_val else {"train": ftrain}
        meta = {"dataset": key, "num_shots": num_shots, "seed": seed, "split_fingerprint": split_fingerprint}
        write_cache(target, data, ddir, meta)
    logger.info("%s: drew a %d-shot sample with seed %d, cached at %s", key, num_shots, seed, target)
    return ftrain, fval, target, "drawn"
