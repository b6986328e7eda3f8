"""Anything else NumPy takes: objects with ``__array__`` (JAX on the CPU, CuPy
after ``.get()``), lists; and array-likes with a NumPy ``dtype``, ``shape``
and slicing (read per chunk)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Backend
from ..layer import Layer, Request, from_reader, from_views

__all__ = ["ArrayLikeBackend"]


class ArrayLikeBackend(Backend):
    name = "array-like"
    accepts = "objects NumPy takes (__array__, lists) and sliceable arrays with a NumPy dtype"

    def guess_can_open(self, obj: Any) -> bool:
        if isinstance(obj, (str, bytes)):
            return False
        return hasattr(obj, "__array__") or isinstance(obj, (list, tuple)) or _sliceable(obj)

    def open(self, obj: Any, request: Request) -> Layer:
        if _sliceable(obj) and not hasattr(obj, "__array__"):
            import uuid

            return Layer(
                from_reader(_Rows(obj), kind="array", token=uuid.uuid4().hex),
                request.name,
                "array-like",
                type(obj).__name__,
            )
        arr = np.asarray(obj)
        return Layer(from_views(arr, kind="array"), request.name, "array-like", type(obj).__name__)


def _sliceable(obj: Any) -> bool:
    try:
        return (
            hasattr(obj, "shape")
            and hasattr(obj, "__getitem__")
            and np.dtype(obj.dtype) is not None
        )
    except TypeError:
        return False


class _Rows:
    """An array-like without a ``copy`` method for ``dask.array.from_array``."""

    def __init__(self, obj: Any) -> None:
        self.obj, self.shape, self.dtype = obj, tuple(obj.shape), np.dtype(obj.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.obj[key])
