"""Image dataset and data loaders (PROTOCOL.md 5)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .errors import ImageDecodeError
from .types import Datum


def load_image(path: str) -> Image.Image:
    """Open and fully decode an image as RGB; raises :class:`ImageDecodeError` naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise ImageDecodeError(
            f"image file not found: {path}; re-download/extract the dataset "
            f"(python -m harness.data check --root DATA_ROOT lists what is "
            f"missing)"
        ) from e
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(
            f"cannot decode image {path} ({type(e).__name__}: {e}); the file is "
            f"truncated or corrupt: re-download it (or remove it from the "
            f"split)"
        ) from e


class ImageDataset(Dataset):
    """``(image_tensor, label)`` pairs for a list of :class:`Datum` (PIL decoding, RGB)."""

    def __init__(self, items: Sequence[Datum], transform: Callable | None = None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        d = self.items[index]
        img = load_image(d.impath)
        if self.transform is not None:
            img = self.transform(img)
        return img, d.label


def default_num_workers() -> int:
    return min(8, os.cpu_count() or 1)


def build_loader(
    items: Sequence[Datum],
    transform: Callable | None,
    batch_size: int,
    train: bool,
    num_workers: int | None = None,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """Train: a fresh random permutation every epoch, ``drop_last`` only if there is at least one
    full batch; test: sequential, no drop.  Pinned memory when CUDA is available."""
    items = list(items)
    if num_workers is None:
        num_workers = default_num_workers()
    return DataLoader(
        ImageDataset(items, transform),
        batch_size=batch_size,
        shuffle=bool(train),
        drop_last=bool(train) and len(items) >= batch_size,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        generator=generator if train else None,
    )
