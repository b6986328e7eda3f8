"""Memory of the DFT path's threaded runs: reused arrays, thread pools, ``malloc_trim``.

The accumulators and coefficient buffers are large (up to GBs); mapping them
fresh for every task or band makes the kernel zero every page on first touch,
and glibc keeps freed memory of many threads in its arenas. This module holds
the three remedies, used by :mod:`~svcca_dask.conv.transform` and
:mod:`~svcca_dask.conv.accumulate`.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._config import cpu_count

__all__ = ["release_free_memory"]


def new_complex(
    shape: tuple[int, ...], arrays: Recycler | None, *, zero: bool = False
) -> np.ndarray:
    """A complex128 array of ``shape``, from ``arrays`` when given."""
    if arrays is not None:
        return arrays.take(shape, zero=zero)
    return (np.zeros if zero else np.empty)(shape, dtype=np.complex128)


class Recycler:
    """The large arrays of one run's passes, handed on from band to band.

    A pass's accumulator (often a GB or more) would otherwise be freed after
    its band and mapped fresh for the next one, and the kernel zeroes every
    page of fresh memory on first touch, which costs several times more than
    zeroing a reused array. Arrays taken during a band are kept (they are alive until
    the band's results are computed anyway) and become free for the next
    band's tasks after it (:meth:`release`). Only on the threaded scheduler:
    workers of a cluster would each get a copy. Pickled (Dask's local
    ``processes`` scheduler), it travels empty.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []  # flat complex128 buffers
        self._used: list[np.ndarray] = []

    def __reduce__(self) -> tuple:
        return (Recycler, ())

    def take(self, shape: tuple[int, ...], *, zero: bool = False) -> np.ndarray:
        size = int(np.prod(shape))
        with self._lock:
            fits = [b for b in self._free if b.size >= size]
            flat = min(fits, key=lambda b: b.size) if fits else None
            self._free = [b for b in self._free if b is not flat]
            if flat is None:  # fresh: zeroed pages come from the kernel as they are touched
                flat = (np.zeros if zero else np.empty)(size, dtype=np.complex128)
                zero = False
            self._used.append(flat)
        out = flat[:size].reshape(shape)
        if zero:
            out.fill(0)
        return out

    def release(self) -> None:
        """Every array taken so far is free again (the caller no longer uses them)."""
        with self._lock:
            self._free += self._used
            self._used = []


@functools.lru_cache(maxsize=1)
def read_pool() -> ThreadPoolExecutor:
    """Threads that read the next stored chunk of a fold task ahead (see :func:`dft_fold`)."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="svcca-dft-read")


@functools.lru_cache(maxsize=1)
def fold_pool() -> ThreadPoolExecutor:
    """Threads of the fold tasks that use more than one (see :func:`dft_fold`)."""
    return ThreadPoolExecutor(max_workers=max(2, cpu_count()), thread_name_prefix="svcca-dft")


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None


def release_free_memory() -> None:
    """Give memory that glibc's allocator keeps after ``free`` back to the system.

    The DFT path's tasks allocate many temporaries of a few to 32 MiB in
    several threads (Zarr's among them: a stored chunk's bytes, its decoded
    values, the array returned); glibc keeps them in per-thread arenas
    (arrays under its dynamic mmap threshold, up to 32 MiB, are not
    unmapped when freed). Called after a lane's last task and after each
    block of the per-frequency work, not after every task: the next task
    reuses that memory, and once given back it is page-faulted in again, a
    large share of a pass for little memory (benchmarks/RESULTS.md, conv).
    A no-op where the C library is not glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
