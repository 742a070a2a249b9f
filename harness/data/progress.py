"""Progress of long data work (downloads, extraction, decoding every image): a tqdm bar with sizes and time
left on a terminal, and a line every few percent in the log (a file, a batch job's output)."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

STEP_PERCENT = 5


class Progress:
    def __init__(self, total: int | None, desc: str, logger: logging.Logger, unit: str = "B", initial: int = 0):
        self.total, self.desc, self.logger, self.unit = total, desc, logger, unit
        self.n, self.start, self.next_step = initial, time.monotonic(), STEP_PERCENT
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, leave=False
            )

    def _size(self, n: float) -> str:
        return tqdm.format_sizeof(n, "B") if self.unit == "B" else f"{int(n):,}"

    def update_to(self, n: int, total: int | None = None) -> None:
        if total and total != self.total:
            self.total = total
            if self.bar is not None:
                self.bar.total = total
        if self.bar is not None:
            self.bar.update(n - self.n)
        self.n = n
        if not self.total:
            return
        pct = 100 * n / self.total
        if pct >= self.next_step:
            self.next_step = (int(pct) // STEP_PERCENT + 1) * STEP_PERCENT
            elapsed = time.monotonic() - self.start
            left = elapsed * (self.total - n) / n if n else 0
            # on a terminal the bar shows it; the line goes to the log file only (DEBUG)
            level = logging.DEBUG if self.bar is not None else logging.INFO
            self.logger.log(
                level,
                "%s: %d%%, %s of %s, %s left",
                self.desc,
                int(pct),
                self._size(n),
                self._size(self.total),
                tqdm.format_interval(left),
            )

    def update(self, k: int = 1) -> None:
        self.update_to(self.n + k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
