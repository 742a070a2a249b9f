"""Where the harness keeps files that outlive a run: the user's cache folder."""

from __future__ import annotations

import os

ENV_CACHE_DIR = "HARNESS_CACHE_DIR"


def cache_dir(*parts: str) -> str:
    """``$HARNESS_CACHE_DIR`` (or ``~/.cache/prompt-harness``), joined with ``parts``."""
    base = os.environ.get(ENV_CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "prompt-harness")
    return os.path.join(os.path.abspath(os.path.expanduser(base)), *parts)
