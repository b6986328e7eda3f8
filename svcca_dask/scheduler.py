"""Where the passes run: the current ``distributed`` client, else Dask's threads.

:func:`compute` and :func:`persist` run graphs on the current client when there
is one (its workers' Blosc at one thread, :mod:`svcca_dask._worker_setup`),
else on the threaded scheduler with BLAS and Blosc limited to one thread per
task; :func:`scheduler_threads` counts the threads that run tasks.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from typing import Any

import dask

from . import _config

__all__ = [
    "WORKER_SHARE",
    "cluster_workers",
    "compute",
    "current_client",
    "persist",
    "read_bytes",
    "scheduler_threads",
    "worker_limits",
    "worker_threads",
]

#: The share of a worker's memory limit a plan may fill: ``distributed`` pauses a
#: worker at 80% of its limit and its nanny restarts it at 95%, and unmanaged
#: memory (the interpreter, libraries, fragmentation) takes its part.
WORKER_SHARE = 0.5


#: Seconds a client's worker facts are reused: a plan asks for them once per
#: tile and fan-in it tries, and each ask is a round trip to the scheduler.
_FACTS_TTL = 1.0
_facts: list[Any] = [None, 0.0, []]  # weakref to the client, when asked, its workers


def cluster_workers() -> list[dict[str, Any]]:
    """The current cluster's workers as the scheduler describes them
    (``nthreads``, ``memory_limit``...), asked at most once a second; empty on
    threads."""
    client = current_client()
    if client is None:
        return []
    now = time.monotonic()
    ref, asked, workers = _facts
    if ref is None or ref() is not client or now - asked > _FACTS_TTL:
        workers = list(client.scheduler_info().get("workers", {}).values())
        _facts[:] = [weakref.ref(client), now, workers]
    return workers


def worker_threads() -> int:
    """Threads whose tasks share one process's memory: the largest worker's on a
    cluster, else the threaded scheduler's."""
    workers = cluster_workers()
    if workers:
        return max(1, max(int(w.get("nthreads") or 1) for w in workers))
    return scheduler_threads()


def scheduler_threads() -> int:
    """Threads that run tasks at once: the cluster's total on ``distributed``,
    else the threaded scheduler's (``num_workers`` or the cores)."""
    workers = cluster_workers()
    if workers:
        return max(1, sum(int(w.get("nthreads") or 1) for w in workers))
    return max(1, int(dask.config.get("num_workers", None) or _config.cpu_count()))


def worker_limits() -> list[int]:
    """The memory limits of the current cluster's workers (those that set one),
    from the scheduler; empty on threads."""
    limits = [int(w.get("memory_limit") or 0) for w in cluster_workers()]
    return [v for v in limits if v > 0]


def read_bytes() -> int:
    """Float64 bytes of the rows a statistics task reads at once: about
    ``DEFAULT_CHUNK_BYTES``, and on a cluster at most an eighth of each thread's
    share of the smallest worker (:data:`WORKER_SHARE` of its limit over its
    threads), so that a task fits its worker whatever the store's chunking
    allows (a stored chunk is never split, so it is the smallest read)."""
    limits = worker_limits()
    if not limits:
        return _config.DEFAULT_CHUNK_BYTES
    share = int(WORKER_SHARE * min(limits)) // (8 * worker_threads())
    return max(1, min(_config.DEFAULT_CHUNK_BYTES, share))


def compute(*graphs: Any) -> tuple[Any, ...]:
    """``dask.compute`` on the current distributed client or, without one,
    on threads with BLAS and Blosc limited to one thread per task.

    Dask's threads times a library's own threads oversubscribe the cores:
    for BLAS see DESIGN.md; Blosc (the stores' default codec) decodes with
    two threads of its own by default, which then compete with the other
    tasks' reads (benchmarks/RESULTS.md).
    """
    return _run(dask.compute, graphs)


def persist(*graphs: Any) -> tuple[Any, ...]:
    """``dask.persist`` as :func:`compute` runs it: the results stay lazy objects
    (held by the workers on a cluster) for a later pass that builds on them."""
    return _run(dask.persist, graphs)


def _run(fn: Any, graphs: tuple[Any, ...]) -> tuple[Any, ...]:
    client = current_client()
    if client is not None:
        from ._worker_setup import prepare

        prepare(client)
        return fn(*graphs)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), _blosc_threads(1):
        return fn(*graphs)


@contextlib.contextmanager
def _blosc_threads(n: int) -> Any:
    """Blosc's internal decoding threads set to ``n``, restored on exit."""
    try:
        from numcodecs import blosc
    except ImportError:  # pragma: no cover - numcodecs comes with zarr
        yield
        return
    before = blosc.set_nthreads(n)
    try:
        yield
    finally:
        blosc.set_nthreads(before)


def current_client() -> Any:
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None
