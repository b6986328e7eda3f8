"""The input layer: every kind of activations users keep, opened as lazy layers.

:func:`open_layer` turns one input (an array, a tensor, a store, a file, a
dataset, a path or URL) into a :class:`Layer`: a Dask array chunked along
samples whose chunks are views or reads (never a copy of the whole input),
its layout's dimension names when known, and what is recorded of its rows.
:func:`open_pair` opens two and checks that their rows line up
(:mod:`svcca_dask.inputs.rows`). One small module per kind of input lives in
:mod:`svcca_dask.inputs.backends` (the shape of xarray's backends).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .layer import Layer, check_shape_dtype
from .registry import BACKENDS, accepted_kinds, as_dask, open_layer
from .rows import ROWS, RowOrderError, align_rows, check_rows, rows_checked

__all__ = [
    "BACKENDS",
    "ROWS",
    "ArrayLike",
    "Layer",
    "RowOrderError",
    "accepted_kinds",
    "align_rows",
    "as_dask",
    "check_pair",
    "check_rows",
    "check_shape_dtype",
    "open_layer",
    "open_pair",
    "rows_checked",
]

#: What the measures take as a layer: anything :func:`open_layer` opens.
ArrayLike = Any


def check_pair(x: Any, y: Any, *, names: tuple[str, str] = ("x", "y")) -> None:
    """Both inputs must have the same number of samples (first axis)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of samples (first axis, "
            f"samples first): got {x.shape[0]} and {y.shape[0]}. "
            "The original google/svcca code takes (neurons, datapoints): transpose such arrays."
        )


def open_pair(
    x: Any,
    y: Any,
    *,
    names: tuple[str, str] = ("x", "y"),
    sample_ids: Any = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
) -> tuple[Layer, Layer]:
    """Both inputs of a pair opened (:func:`open_layer`), their rows checked
    against each other (:func:`~svcca_dask.inputs.rows.align_rows`).

    ``sample_ids`` is a pair ``(ids_x, ids_y)``, or one column or array name
    found beside each layer (a dataset's column, a store's array).
    """
    check_rows(rows)
    ids = sample_ids if isinstance(sample_ids, (tuple, list)) else (sample_ids, sample_ids)
    lx, ly = (
        open_layer(
            v, name=n, sample_ids=i, storage_options=storage_options, missing_chunks=missing_chunks
        )
        for v, n, i in zip((x, y), names, ids, strict=True)
    )
    check_pair(lx, ly, names=names)
    lx, ly = align_rows([lx, ly], rows=rows)
    return lx, ly
