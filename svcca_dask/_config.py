"""Defaults shared by every path: chunk sizes, feature limits, the machine's size.

A leaf module: it imports nothing from the package, so any module may use it.
"""

from __future__ import annotations

import os

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_FEATURES",
    "cpu_count",
    "memory_budget",
    "physical_memory",
    "rows_per_chunk",
]

#: Target size of one row chunk as a float64 buffer, for inputs that have no
#: chunking of their own (NumPy arrays) and for the stores' chunks: buffers of
#: 32 MiB and more are mapped fresh by malloc and page-fault on every use, so
#: tasks work on pieces of about this size (DESIGN.md, performance principles).
DEFAULT_CHUNK_BYTES = 16 * 2**20

#: Fan-in of the statistics' tree reductions (``split_every``): the row-group
#: tasks make trees of a few leaves per thread, so a small fan-in costs no more
#: merge work, and holds fewer partials at once (benchmarks/RESULTS.md, cluster).
DEFAULT_SPLIT_EVERY = 4

#: Largest total feature count (x and y together) whose ``(d, d)`` float64
#: co-moment the covariance path accumulates: 8192 features is 512 MiB per
#: partial statistic, and a tree reduction holds ``split_every + 1`` of them.
DEFAULT_MAX_FEATURES = 8192


def rows_per_chunk(n_features: int) -> int:
    """Rows of ``n_features`` float64 values that make about :data:`DEFAULT_CHUNK_BYTES`."""
    return max(1, DEFAULT_CHUNK_BYTES // (8 * max(1, n_features)))


def cpu_count() -> int:
    """Cores this process may run on (Dask's own count: affinity and cgroup limits)."""
    from dask.system import CPU_COUNT

    return max(1, int(CPU_COUNT))


def physical_memory() -> int:
    """Bytes of physical memory of the machine (16 GiB where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


def memory_budget() -> int:
    """Bytes a computation may hold at its peak before it is refused up front: the
    Dask config value ``svcca_dask.memory_limit`` (bytes or a size like ``"8GiB"``)
    if set, else half of the machine's physical memory: the rest is the operating
    system's, the inputs' and other processes' (see :mod:`svcca_dask.memory`)."""
    import dask
    from dask.utils import parse_bytes

    value = dask.config.get("svcca_dask.memory_limit", None)
    if value is None:
        return physical_memory() // 2
    return int(parse_bytes(value) if isinstance(value, str) else value)
