"""Per-run log files beside the console, as the authors' framework keeps them (PROTOCOL.md 1)."""

from __future__ import annotations

import datetime
import logging
import os
from contextlib import contextmanager


@contextmanager
def run_logging(run_dir: str):
    """Log to ``<run_dir>/log.txt`` as well as the console; an existing log is kept and the new one
    gets a time suffix. Yields the log's path."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "log.txt")
    if os.path.exists(path):
        path += datetime.datetime.now().strftime("-%Y-%m-%d-%H-%M-%S")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    console = None
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(console)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        if console is not None:
            root.removeHandler(console)
        root.setLevel(previous)
