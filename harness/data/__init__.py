"""Data side of the benchmark: datasets, few-shot sampling, base/new split, transforms, loaders.

See PROTOCOL.md 3–5.  Torch-dependent names (``build_transform``, ``ImageDataset``,
``build_loader``) are imported lazily so that ``python -m harness.data check`` stays fast.
"""

from .build import build_dataset
from .constants import CLIP_MEAN, CLIP_STD
from .errors import (
    ClassCoverageError,
    DatasetError,
    DatasetNotFoundError,
    FewShotCacheError,
    ImageDecodeError,
    MissingImagesError,
    SplitFileError,
    UnknownDatasetError,
)
from .fewshot import sample_few_shot, subsample_classes
from .registry import DATASETS, DatasetInfo, get_info, list_datasets, register_dataset
from .types import DatasetSplits, Datum

_LAZY = {
    "build_transform": "transforms",
    "with_views": "transforms",
    "ImageDataset": "loader",
    "build_loader": "loader",
    "load_image": "images",
}

__all__ = [
    "build_dataset",
    "DatasetSplits",
    "Datum",
    "DATASETS",
    "DatasetInfo",
    "get_info",
    "list_datasets",
    "register_dataset",
    "sample_few_shot",
    "subsample_classes",
    "CLIP_MEAN",
    "CLIP_STD",
    "ClassCoverageError",
    "DatasetError",
    "DatasetNotFoundError",
    "FewShotCacheError",
    "ImageDecodeError",
    "MissingImagesError",
    "SplitFileError",
    "UnknownDatasetError",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
