"""xarray ``DataArray`` objects (and a ``Dataset`` with key=): their data and dims."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from ..backend import Backend, module_of
from ..layer import Layer, Request, from_views
from .arraylike import ArrayLikeBackend

__all__ = ["XarrayBackend"]


class XarrayBackend(Backend):
    name = "xarray"
    accepts = "xarray DataArrays (their dims give the layout), a Dataset with key="

    def guess_can_open(self, obj: Any) -> bool:
        return module_of(obj) == "xarray" and hasattr(obj, "dims")

    def open(self, obj: Any, request: Request) -> Layer:
        if hasattr(obj, "data_vars"):  # a Dataset
            if request.key is None or request.key not in obj.data_vars:
                raise KeyError(
                    f"{request.name} is an xarray Dataset: name one of its variables "
                    f"with key= ({', '.join(map(str, obj.data_vars))})"
                )
            obj = obj[request.key]
        data = obj.data
        if isinstance(data, da.Array):
            arr = data
        elif isinstance(data, np.ndarray):
            arr = from_views(data, kind="xarray")
        else:  # e.g. a lazily indexed backend array: read per chunk
            arr = ArrayLikeBackend().open(data, request).data
        return Layer(
            arr, request.name, "xarray", "an xarray DataArray", dims=tuple(map(str, obj.dims))
        )
