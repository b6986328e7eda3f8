"""Progress on stderr: tqdm for the steps the pipeline runs, Dask's bar for a pass.

``enabled=None`` (the default everywhere) shows progress only when stderr is a
terminal, so logs and pipes stay clean; ``True`` forces it (``--progress``),
``False`` turns it off (``--no-progress``). On a ``distributed`` cluster the
dashboard (its address is printed at start) shows the tasks of a pass.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

__all__ = ["dask_progress", "progress_bar", "wanted"]


def wanted(enabled: bool | None) -> bool:
    """Whether to show progress: ``enabled``, or by default whether stderr is a terminal."""
    if enabled is not None:
        return bool(enabled)
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(total: int | None, desc: str, *, enabled: bool | None = None) -> Any:
    """A :class:`tqdm.tqdm` bar of ``total`` steps (count, rate, ETA) on stderr.

    Use ``update(n)`` and ``close()`` (or ``with``); a disabled bar does nothing.
    """
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        disable=not wanted(enabled),
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def dask_progress(enabled: bool | None = None, *, minimum: float = 1.0) -> Any:
    """Dask's progress bar for each pass of at least ``minimum`` seconds on the
    threaded scheduler (a context manager; a no-op when progress is off)."""
    if not wanted(enabled):
        return contextlib.nullcontext()
    from dask.diagnostics import ProgressBar

    return ProgressBar(minimum=minimum, out=sys.stderr)
