"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A crash, a kill or a full disk leaves either the old file or the new one, never half of one.
Every file the harness writes that another job may read (checkpoints, split caches, the feature
cache, generated datasets, cached weights) goes through here.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_open(path: str, mode: str = "wb", encoding: str | None = None):
    """``with atomic_open(path, "w") as f: f.write(...)``: the file appears only once complete."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_torch_save(obj, path: str) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
