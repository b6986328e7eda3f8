"""Rows that line up: two layers are compared only when their rows are the same samples.

Two stores extracted in different orders give plausible, wrong scores. What
is known of each layer's rows is checked before or during the pass:

- both layers record the order they were extracted in (an activation store's
  ``data_order`` digest): the digests must be equal, checked before the pass;
- both layers have sample ids (a store's ``sample_id`` array, or
  ``sample_ids=``): the ids are compared chunk by chunk inside the pass that
  reads the data (the first layer's chunks carry the check), so nothing is
  read twice.

``rows="trust"`` skips both. :func:`rows_checked` says which check applies,
for results to record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from .layer import Layer

__all__ = ["ROWS", "RowOrderError", "align_rows", "check_rows", "rows_checked"]

#: What ``rows=`` takes.
ROWS = ("check", "trust")


class RowOrderError(ValueError):
    """Two layers' rows are not the same samples in the same order."""


def check_rows(rows: Any) -> None:
    if rows not in ROWS:
        raise ValueError(f"rows must be 'check' or 'trust', got {rows!r}")


def rows_checked(layers: Sequence[Layer], rows: str = "check") -> str:
    """How the rows of ``layers`` are known to line up: ``"sample_id"`` (ids
    compared in the pass), ``"order"`` (extraction digests equal),
    ``"trusted"`` (``rows="trust"``) or ``"unchecked"`` (nothing recorded)."""
    if rows == "trust":
        return "trusted"
    if len(layers) > 1 and all(v.sample_ids is not None for v in layers):
        return "sample_id"
    if len(layers) > 1 and all(v.order is not None for v in layers):
        return "order"
    return "unchecked"


def _where(layer: Layer) -> str:
    return f"{layer.name} ({layer.origin})"


def _first_batch_difference(a: Layer, b: Layer) -> str:
    where = ""
    if a.order_batches and b.order_batches:
        pairs = zip(a.order_batches, b.order_batches, strict=False)
        first = next(((ra, rb) for ra, rb in pairs if ra != rb), None)
        if first is not None:
            where = f": their rows first differ in the batch starting at row {min(first[0][0], first[1][0])}"
    return f"{_where(a)} and {_where(b)} were extracted in different data orders{where}"


def _same_ids(
    block: np.ndarray,
    ids: np.ndarray,
    ref: np.ndarray,
    *,
    names: tuple[str, str],
    block_info: Any = None,
) -> np.ndarray:
    """``block`` as it is where its rows' ids equal the reference's; else the error."""
    ids, ref = np.asarray(ids).reshape(-1), np.asarray(ref).reshape(-1)
    if ids.shape != ref.shape or not np.array_equal(ids, ref):
        start = int(block_info[0]["array-location"][0][0]) if block_info else 0
        diff = np.flatnonzero(ids != ref) if ids.shape == ref.shape else np.array([0])
        row = start + int(diff[0])
        raise RowOrderError(
            f"{names[0]} and {names[1]} do not hold the same samples in the same order: row "
            f"{row} is sample {ids.flat[diff[0]].item()!r} in {names[0]} and "
            f"{ref.flat[diff[0]].item()!r} in "
            f"{names[1]}. Compare activations extracted in one order (a DataLoader without "
            "shuffle), or pass rows='trust' if the rows are known to line up."
        )
    return block


def _checked(layer: Layer, ref: Layer) -> Layer:
    """``layer`` whose chunks compare its sample ids with ``ref``'s as they are read."""
    data = layer.data
    shape = (-1,) + (1,) * (data.ndim - 1)
    chunks = (data.chunks[0],)
    ids = layer.sample_ids.rechunk(chunks).reshape(shape)
    ref_ids = ref.sample_ids.rechunk(chunks).reshape(shape)
    checked = da.map_blocks(
        _same_ids,
        data,
        ids,
        ref_ids,
        names=(_where(layer), _where(ref)),
        dtype=data.dtype,
        meta=np.empty((0,) * data.ndim, dtype=data.dtype),
    )
    # the direct stored-chunk reader would skip the check: read through the graph
    return dataclasses.replace(layer, data=checked, zarr=None)


def align_rows(layers: Sequence[Layer], *, rows: str = "check") -> list[Layer]:
    """``layers`` with their rows checked against the first's (see the module docstring).

    Raises
    ------
    RowOrderError
        Before the pass, if two layers' extraction orders differ; during it,
        from the first chunk whose sample ids differ, naming the row.
    """
    check_rows(rows)
    layers = list(layers)
    if rows == "trust" or len(layers) < 2:
        return layers
    # sample ids, where every layer has them, say more than the order digests
    # (which differ under random augmentation although the samples agree)
    all_ids = all(v.sample_ids is not None for v in layers)
    with_order = [] if all_ids else [v for v in layers if v.order is not None]
    for v in with_order[1:]:
        if v.order != with_order[0].order:
            raise RowOrderError(
                _first_batch_difference(with_order[0], v) + ". Extract both in one order (a "
                "DataLoader without shuffle), or pass rows='trust' if the rows are known to line up."
            )
    with_ids = [i for i, v in enumerate(layers) if v.sample_ids is not None]
    if len(with_ids) > 1:
        ref = layers[with_ids[0]]
        for i in with_ids[1:]:  # layers of the reference's own store share its ids
            if layers[i].sample_ids.name != ref.sample_ids.name:
                layers[i] = _checked(layers[i], ref)
    return layers
