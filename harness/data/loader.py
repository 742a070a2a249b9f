"""Image dataset and data loaders (PROTOCOL.md 5)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .images import load_image
from .types import Datum


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
