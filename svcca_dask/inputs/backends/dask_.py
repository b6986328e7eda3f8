"""Dask arrays, as they are (rechunked whole along features by the caller)."""

from __future__ import annotations

from typing import Any

import dask.array as da

from ..backend import Backend
from ..layer import Layer, Request

__all__ = ["DaskBackend"]


class DaskBackend(Backend):
    name = "dask"
    accepts = "Dask arrays"

    def guess_can_open(self, obj: Any) -> bool:
        return isinstance(obj, da.Array)

    def open(self, obj: Any, request: Request) -> Layer:
        return Layer(obj, request.name, "dask", "a Dask array")
