"""Stopping a command cleanly on a signal: Ctrl-C (SIGINT, sent by a terminal to its whole process group
or by ``kill -INT`` to one process), SIGTERM (a job scheduler, ``timeout``) or SIGHUP (the terminal
closed).

Within ``stop_on_signals()`` each of them raises ``Interrupted`` in the main thread, so the code that
runs jobs stops them on its way out (``launcher.local`` kills each job's process group, ``launcher.debug``
unwinds the job it runs, ``launcher.slurm`` leaves queued jobs to the cluster) and the command line ends
with one line and the shell's status for that signal: 130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal stopped the command; ``message`` is the one line the command line prints for it (those
    who stop jobs on the way out set it, saying what they stopped and how to go on)."""

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_status(self) -> int:
        """The shell's status of a process the signal ended: 128 + its number."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return self.message or f"Interrupted ({self.signal_name})."


class _Signals:
    """What the handler knows: whether it is installed, whether a signal came, and whether the code now
    running asked it to wait (``deferred``)."""

    installed = False
    caught: int | None = None  # the first signal: later ones are ignored
    pending: int | None = None  # the first signal, while it waits for a ``deferred`` block to end
    deferring = 0


def _handler(signum, frame):
    if _Signals.caught is not None:
        return  # one stop: a second Ctrl-C must not break off the stopping of the jobs
    _Signals.caught = signum
    if _Signals.deferring:
        _Signals.pending = signum
    else:
        raise Interrupted(signum)


@contextmanager
def stop_on_signals():
    """Within: SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` (the first of them; later ones are
    ignored while the command stops). A signal this process was started ignoring (``nohup`` ignores
    SIGHUP) stays ignored. Outside the main thread, or nested, it changes nothing."""
    if _Signals.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _Signals.installed, _Signals.caught, _Signals.pending, _Signals.deferring = True, None, None, 0
    try:
        for s in SIGNALS:
            if previous[s] is not signal.SIG_IGN:
                signal.signal(s, _handler)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _Signals.installed, _Signals.caught, _Signals.pending = False, None, None


@contextmanager
def deferred():
    """Within: a signal waits, and raises ``Interrupted`` once the block is done. For the steps that
    must not be cut in two: a job handed to an executor is then both started and tracked, never started
    and lost (an orphan the stop would not find)."""
    _Signals.deferring += 1
    try:
        yield
    finally:
        _Signals.deferring -= 1
    if not _Signals.deferring and _Signals.pending is not None:
        signum, _Signals.pending = _Signals.pending, None
        raise Interrupted(signum)
