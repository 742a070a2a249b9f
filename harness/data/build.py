"""``build_dataset``: the whole dataset-construction sequence of PROTOCOL.md 4.1."""

from __future__ import annotations

import logging
import os

from .digest import split_digest
from .errors import ClassCoverageError, MissingImagesError
from .fewshot import load_or_draw, subsample_classes
from .readers import read_dataset
from .registry import get_info
from .types import DatasetSplits, Datum

logger = logging.getLogger(__name__)

# Image-existence check: every path listed by a split file / text file is checked once per
# build with os.path.exists (about 100k stat calls for the largest JSON dataset, Food101: well under
# a second on a local disk).  Folder-scanned datasets (the ImageNet family) need no check.  Set
# HARNESS_SKIP_IMAGE_CHECK=1 to skip it (e.g. on a slow network file system).
ENV_SKIP_CHECK = "HARNESS_SKIP_IMAGE_CHECK"
MAX_LISTED_MISSING = 5


def find_missing(items: list[Datum]) -> list[str]:
    seen, missing = set(), []
    for d in items:
        if d.impath not in seen:
            seen.add(d.impath)
            if not os.path.exists(d.impath):
                missing.append(d.impath)
    return missing


def missing_images_error(missing: list[str], what: str, fix: str) -> MissingImagesError:
    head = "\n  ".join(missing[:MAX_LISTED_MISSING])
    more = f"\n  … and {len(missing) - MAX_LISTED_MISSING} more" if len(missing) > MAX_LISTED_MISSING else ""
    return MissingImagesError(f"{len(missing)} image(s) listed by {what} are missing, e.g.:\n  {head}{more}\n{fix}")


def check_class_coverage(info, ddir: str, train: list[Datum], val: list[Datum], test: list[Datum]) -> None:
    """Every class has training images, and the test (and validation) split holds no class the
    training split lacks: otherwise a prompt learned for K - 1 classes would be scored on K
    (silently, when the missing class is the last) or training would fail on an unknown label."""
    labels = {name: {d.label for d in items} for name, items in (("train", train), ("val", val), ("test", test))}
    names = {d.label: d.classname for d in train + val + test}
    every = set(range(max(names) + 1)) if names else set()
    source = os.path.join(ddir, info.split_file) if info.split_file else os.path.join(ddir, info.image_dir)
    lacking = sorted(every - labels["train"])
    if lacking:
        shown = ", ".join(f"{names.get(lab, '?')!r} (label {lab})" for lab in lacking[:5])
        raise ClassCoverageError(
            f"{source}: {len(lacking)} class(es) have no training images: {shown}. Every class needs training "
            "images: restore them, or remove the class from every split (labels 0..K-1 with no gap)."
        )
    extra = sorted(labels["test"] - labels["train"])
    absent = sorted(labels["train"] - labels["test"])
    if extra or absent:
        raise ClassCoverageError(
            f"{source}: the test split's classes differ from the training split's (only in test: {extra}, "
            f"only in train: {absent}); the split file does not describe one set of classes."
        )


def build_dataset(
    name: str, root: str, num_shots: int = 16, seed: int = 1, subsample: str = "all", cache_dir: str | None = None
) -> DatasetSplits:
    """Build one dataset: read splits, few-shot sample (cached per (K, seed)), subsample classes.

    ``name`` is a registry key (see :func:`list_datasets`), ``root`` the data root holding the
    dataset folders.  ``num_shots < 1`` keeps the full training set.  ``subsample`` is ``"all"``,
    ``"base"`` or ``"new"``.  The test-only ImageNet variants ignore ``num_shots`` and
    ``subsample`` (published behaviour) and return ``train == test`` and an empty ``val``.
    """
    info = get_info(name)
    if subsample not in ("all", "base", "new"):
        raise ValueError(f"subsample must be 'all', 'base' or 'new', got {subsample!r}")
    num_shots = int(num_shots) if num_shots is not None else 0
    seed = int(seed)
    root = os.path.abspath(os.path.expanduser(str(root)))
    ddir = os.path.join(root, info.folder)
    train, val, test = read_dataset(info, ddir, seed=seed, cache_dir=cache_dir)

    if info.source in ("json", "fgvc_txt") and os.environ.get(ENV_SKIP_CHECK, "") in ("", "0"):
        missing = find_missing(train + val + test)
        if missing:
            src = info.split_file or "the variant list files"
            raise missing_images_error(
                missing,
                f"{info.paper_name}'s {src}",
                f"expected the images under {os.path.join(ddir, info.image_dir)}/ as PROTOCOL.md 3.2 "
                f"describes; re-download/extract them ({info.download}); "
                f"`python -m harness.data check --root {root} --dataset {info.key}` reports what "
                f"is missing",
            )

    if not info.test_only:
        check_class_coverage(info, ddir, train, val, test)
    kw = dict(root=root, dataset_dir=ddir, seed=seed, info=info)
    if info.test_only:
        if num_shots >= 1 or subsample != "all":
            logger.info("%s is test-only: num_shots=%s and subsample=%r are ignored", info.key, num_shots, subsample)
        return DatasetSplits.from_lists(info.key, train, val, test, num_shots=0, subsample="all", **kw)

    cache_path = source = None
    if num_shots >= 1:
        is_imagenet = info.key == "imagenet"
        ftrain, fval, cache_path, source = load_or_draw(
            info.key,
            info.folder,
            ddir,
            train,
            val,
            num_shots,
            seed,
            cache_dir=cache_dir,
            sample_val=not is_imagenet,
            split_fingerprint=split_digest(train, val, test, ddir),
        )
        missing = find_missing(ftrain + (fval if not is_imagenet else []))
        if missing:
            raise missing_images_error(
                missing,
                f"the few-shot cache {cache_path}",
                f"the cache refers to images that are gone; delete "
                f"{cache_path} to draw a new sample, or restore the images",
            )
        train, val = ftrain, (test if is_imagenet else fval)

    train, val, test = subsample_classes(train, val, test, subsample=subsample)
    return DatasetSplits.from_lists(
        info.key,
        train,
        val,
        test,
        num_shots=max(num_shots, 0),
        subsample=subsample,
        fewshot_cache=cache_path,
        fewshot_source=source,
        **kw,
    )
