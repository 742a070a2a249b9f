"""Where generated files (few-shot caches, generated split files) go, and locking helpers."""

from __future__ import annotations

import logging
import os
import uuid

from clipcore import paths

logger = logging.getLogger(__name__)


def fallback_dir(key: str, cache_dir: str | None = None) -> str:
    """Writable folder used when the dataset folder is read-only.

    ``<cache_dir>/<key>/`` if ``cache_dir`` is given, else ``$HARNESS_CACHE_DIR/<key>/``, else
    ``~/.cache/prompt-harness/split_fewshot/<key>/``.
    """
    if cache_dir:
        return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), key)
    if os.environ.get(paths.ENV_CACHE_DIR):
        return paths.cache_dir(key)
    return paths.cache_dir("split_fewshot", key)


def dir_writable(path: str) -> bool:
    """True if ``path`` exists or can be created, and a file can be created inside it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    if not os.access(path, os.W_OK | os.X_OK):
        return False
    probe = os.path.join(path, f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(probe, "w"):
            pass
        os.unlink(probe)
        return True
    except OSError:
        return False


def lock_for(path: str, timeout: float = 600.0):
    """A ``filelock.FileLock`` guarding the generation of ``path`` (lock file next to it)."""
    from filelock import FileLock

    return FileLock(path + ".lock", timeout=timeout)
