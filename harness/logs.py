"""Per-run log files beside the console, as the authors' framework keeps them (PROTOCOL.md 1)."""

from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from contextlib import contextmanager

#: ``log.info(..., extra=FILE_ONLY)``: a detail for the run's log file (the spec, the fingerprint's settings),
#: never shown on a console.
FILE_ONLY = {"file_only": True}


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


@contextmanager
def console_at(level: int):
    """While jobs run in this process one after another (the debug launcher), the console shows only
    their records at ``level`` and above: the sweep prints one line per job, the details go to each
    run's log file (``run_logging`` adds no console of its own while this one is there)."""
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_not_file_only)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


@contextmanager
def run_logging(run_dir: str):
    """Log to ``<run_dir>/log.txt`` as well as the console (records marked ``FILE_ONLY`` to the file
    only); an existing log is kept and the new one gets a time suffix. Yields the log's path."""
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
        console.addFilter(_not_file_only)
        root.addHandler(console)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        if console is not None:
            root.removeHandler(console)
        root.setLevel(previous)


class Progress:
    """Progress of long work with an ETA: a tqdm bar on a terminal; otherwise (a log file, a Slurm
    job's output) one log line every ``every_percent`` percent instead of one per step.

    Use as a context manager: ``with Progress(n, "pre-training") as bar: ... bar.update(loss=x)``.
    """

    def __init__(self, total: int, desc: str, unit: str = "step", every_percent: float = 5.0, stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.monotonic()
        self.every = max(1, round(total * every_percent / 100))
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream)

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in postfix.items()})
            return
        if self.done % self.every and self.done != self.total:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        extra = "".join(f", {k} {v:.3f}" if isinstance(v, float) else f", {k} {v}" for k, v in postfix.items())
        logging.getLogger(__name__).info(
            "%s: %d/%d %ss (%.0f%%), %.0f s elapsed, ETA %.0f s%s",
            self.desc,
            self.done,
            self.total,
            self.unit,
            100 * self.done / self.total,
            elapsed,
            eta,
            extra,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
