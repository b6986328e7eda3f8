"""NumPy arrays and ``np.memmap``: row views, never a copy."""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

from ..backend import Backend
from ..layer import Layer, MemmapFile, Request, from_views

__all__ = ["NumpyBackend"]


class NumpyBackend(Backend):
    name = "numpy"
    accepts = "NumPy arrays and np.memmap (row views; a memmap is mapped by each task)"

    def guess_can_open(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def open(self, obj: Any, request: Request) -> Layer:
        mapped = _whole_memmap(obj)
        if mapped is not None:  # tasks map the file themselves: a worker reads it from disk
            return Layer(mapped.as_dask(kind="memmap"), request.name, "memmap", mapped.path)
        return Layer(from_views(obj, kind="numpy"), request.name, "numpy", "in memory")


def _whole_memmap(x: np.ndarray) -> MemmapFile | None:
    """The file behind a memmap that maps it whole and C-ordered, else None
    (a sliced memmap is read through its views)."""
    if not isinstance(x, np.memmap) or not getattr(x, "filename", None):
        return None
    if not isinstance(x.base, mmap.mmap) or not x.flags.c_contiguous:
        return None
    return MemmapFile(x.filename, offset=int(x.offset), dtype=x.dtype, shape=x.shape)
