"""A minimal text progress bar on stderr, for loops the pipeline drives itself.

Dask computations use Dask's own progress (``dask.diagnostics.ProgressBar`` on
the local schedulers, ``distributed.progress`` on a cluster); this bar counts
steps the pipeline runs one by one (extraction batches, job pairs).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``desc [#####     ] 5/10 12.3s`` on one line, redrawn at most every 0.2 s.

    Parameters
    ----------
    total : int or None
        Number of steps, if known (otherwise only the count is shown).
    desc : str
        Label in front of the bar.
    enabled : bool, default True
        False makes every method a no-op.
    stream : file, default sys.stderr
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        width: int = 30,
    ) -> None:
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.count = 0
        self._start = time.monotonic()
        self._last = 0.0
        self._drawn_count = -1

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""
        self.count += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= 0.2 or (self.total is not None and self.count >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self._start
        if self.total:
            frac = min(1.0, self.count / self.total)
            fill = round(frac * self.width)
            bar = f"[{'#' * fill}{' ' * (self.width - fill)}] {self.count}/{self.total}"
        else:
            bar = f"{self.count}"
        self.stream.write(f"\r{self.desc} {bar} {elapsed:.1f}s")
        self.stream.flush()
        self._drawn_count = self.count

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            if self._drawn_count != self.count:
                self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
