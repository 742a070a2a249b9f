"""Exceptions raised by the data layer.

Every error raised for bad input is a subclass of :class:`DatasetError` (itself a ``ValueError``)
and its message names the offending file, the layout that was expected and how to fix it.
All classes can be built from a single message string, so they survive being re-raised by
``torch.utils.data.DataLoader`` worker processes.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """Base class of every data-layer error caused by bad input or an incomplete data folder."""


class UnknownDatasetError(DatasetError, KeyError):
    """The dataset key is not in the registry (the message lists the valid keys)."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset folder (or a folder inside it that the reader needs) does not exist."""


class SplitFileError(DatasetError):
    """A split file is missing, unreadable or has the wrong structure."""


class MissingImagesError(DatasetError, FileNotFoundError):
    """Images listed by a split are not on disk."""


class FewShotCacheError(DatasetError):
    """A few-shot cache file exists but cannot be read, or refers to images that are gone."""


class ImageDecodeError(DatasetError, OSError):
    """An image file could not be opened or decoded (missing, truncated or corrupt)."""


class ClassCoverageError(DatasetError):
    """A class lacks training images, or the splits disagree on which classes exist."""
