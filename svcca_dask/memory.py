"""Memory plans: what a computation holds at its peak, counted before any pass.

Every path counts its peak from the shapes and chunkings alone, before it reads
any data, against one budget (:func:`budget`: the Dask config value
``svcca_dask.memory_limit``, else half of physical memory; on a cluster at most
its smallest worker's memory limit). Over
budget, a path that has a mode that fits runs in it (a matrix splits into
narrower tiles, the DFT path into more frequency bands); one that has not is
refused up front with :class:`MemoryError`, the numbers and what to change.

The counts are models fitted to peak RSS measured on the threaded scheduler
(``python benchmarks/bench_memory.py`` prints each path's measured peak beside
its estimate; the figures are in ``benchmarks/RESULTS.md``):

- a tree reduction of ``(w, w)`` float64 partial statistics (the covariance
  path, a matrix's tiles) holds ``min(tasks, split_every) + 1`` partials per
  tree in flight, :data:`_TASK_PARTIALS` more per thread (a task's running
  partial and its chunk piece's), and :data:`_FINAL_PARTIALS` more
  while the statistics are finalized; each thread's task also holds
  :data:`_CHUNK_COPIES` float64 copies of the chunk it is at;
- the randomized SVD: see :func:`svcca_dask.svd.randomized_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask

from ._config import memory_budget
from .scheduler import WORKER_SHARE, scheduler_threads, worker_limits, worker_threads
from .stats import task_grid

__all__ = [
    "budget",
    "check_peak",
    "covariance_bytes",
    "fan_in",
    "fits",
    "plan_covariance",
    "reduction_bytes",
    "scheduler_threads",
]

#: Partials of the largest statistic held while it is finalized (the merged one,
#: its covariance, the blocks cut from it, eigendecompositions): measured.
_FINAL_PARTIALS = 5

#: Float64 copies of its rows a statistics task holds (stacked, centred).
_CHUNK_COPIES = 2

#: Partials a row-group task holds at once: its running one and its chunk piece's
#: (merged in place: :func:`svcca_dask.stats.moments_combine` with ``inplace``).
_TASK_PARTIALS = 2


def budget() -> int:
    """The memory budget of a plan: :func:`~svcca_dask._config.memory_budget`, and
    on a cluster at most :data:`WORKER_SHARE` of the smallest worker's memory limit.

    On a cluster a plan counts what one worker holds (its threads' tasks, a
    tree's partials in flight, and the finalization, which runs as a task
    there too) against that share of the smallest worker's limit."""
    limit = memory_budget()
    limits = worker_limits()
    if limits:
        limit = min(limit, int(WORKER_SHARE * min(limits)))
    return limit


def reduction_bytes(
    partials: Sequence[int], *, tasks: int, split_every: int, chunk_bytes: int
) -> int:
    """Peak bytes of the tree reductions of one graph, one tree per statistic.

    Parameters
    ----------
    partials : sequence of int
        Bytes of each tree's partial statistic.
    tasks : int
        Row-chunk tasks per tree.
    split_every : int
        The trees' fan-in.
    chunk_bytes : int
        Float64 bytes of the largest chunk a task reads at once (all its columns).
    """
    if not partials:
        return 0
    in_flight = min(tasks, split_every) + 1
    threads = worker_threads()
    largest = max(partials)
    return int(
        sum(partials) * in_flight
        + (_TASK_PARTIALS * threads + _FINAL_PARTIALS) * largest
        + threads * _CHUNK_COPIES * chunk_bytes
    )


def covariance_bytes(
    trees: Sequence[Sequence[Any]],
    *,
    split_every: int,
    partials: Sequence[int] | None = None,
) -> int:
    """Peak bytes of the co-moments of each group of 2-D dask arrays (one tree
    per group, :func:`svcca_dask.stats.accumulate_graph`), in one graph.

    ``partials`` gives each group's partial statistic in bytes: by default the
    whole ``(d, d)`` float64 co-moment (a matrix's disjoint sides need less)."""
    sizes, tasks, chunk = [], 1, 0
    for i, arrays in enumerate(trees):
        d = sum(int(a.shape[1]) for a in arrays)
        t, rows = task_grid(arrays)
        sizes.append(8 * d * d if partials is None else int(partials[i]))
        tasks, chunk = max(tasks, t), max(chunk, 8 * rows * d)
    return reduction_bytes(sizes, tasks=tasks, split_every=split_every, chunk_bytes=chunk)


def fits(peak: int) -> bool:
    """Whether ``peak`` bytes fit the memory budget (:func:`budget`)."""
    return peak <= budget()


def fan_in(peak_of: Callable[[int], int], split_every: int) -> int:
    """``split_every`` where ``peak_of(split_every)`` fits the budget, else the
    largest smaller fan-in that does: a narrower tree holds fewer partials at
    once, for more merge steps. ``split_every`` where none does (the caller's
    :func:`check_peak` then refuses, with the numbers)."""
    for s in range(split_every, 1, -1):
        if fits(peak_of(s)):
            return s
    return split_every


def check_peak(peak: int, *, what: str, remedies: str) -> None:
    """Refuse, before any pass, a computation whose counted ``peak`` exceeds the budget.

    Raises
    ------
    MemoryError
        Naming ``what``, the peak, the budget, where the budget comes from, and
        the ``remedies``.
    """
    from dask.utils import format_bytes

    limit = budget()
    if peak <= limit:
        return
    if limit < memory_budget():
        source = (
            f"{WORKER_SHARE:.0%} of the smallest worker memory limit of the cluster; start "
            "workers with a larger --memory-limit"
        )
    elif dask.config.get("svcca_dask.memory_limit", None) is not None:
        source = "the Dask config value svcca_dask.memory_limit"
    else:
        source = "half of physical memory; the Dask config value svcca_dask.memory_limit sets it"
    raise MemoryError(
        f"{what} would hold about {format_bytes(peak)} at its peak, more than the memory "
        f"budget of {format_bytes(limit)} ({source}). {remedies}"
    )


def plan_covariance(
    trees: Sequence[Sequence[Any]], *, split_every: int, what: str, remedies: str
) -> int:
    """The memory plan of co-moments accumulated in one graph (one tree per group
    of arrays): the fan-in to use (:func:`fan_in`), or :class:`MemoryError`
    before any pass where none fits."""
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    split_every = fan_in(lambda s: covariance_bytes(trees, split_every=s), split_every)
    check_peak(covariance_bytes(trees, split_every=split_every), what=what, remedies=remedies)
    return split_every
