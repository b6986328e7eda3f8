"""Zarr arrays, groups (with a key), ``"store.zarr/layer"`` paths and fsspec URLs.

An array read through Zarr (its codecs and checksums; a failed read names the
chunk). A layer of an activation store also brings what the store recorded of
its rows: the extraction's data-order digest and the ``sample_id`` array.
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da

from ...io.checked import CheckedZarr
from ...store.format import (
    SAMPLE_ID,
    check_complete,
    dims_of,
    is_activation_store,
    is_url,
    storage_kwargs,
)
from ..backend import Backend, module_of
from ..layer import Layer, Request
from ..paths import Path

__all__ = ["ZarrBackend"]

_MARKERS = ("zarr.json", ".zarray", ".zgroup")


class ZarrBackend(Backend):
    name = "zarr"
    accepts = (
        "Zarr arrays, Zarr groups with key=, 'store.zarr/layer' paths and fsspec URLs "
        "('s3://bucket/store.zarr/layer')"
    )

    def guess_can_open(self, obj: Any) -> bool:
        if isinstance(obj, str):
            return is_url(obj)
        if isinstance(obj, Path):
            return os.path.isdir(obj.head) and any(
                os.path.exists(os.path.join(obj.head, m)) for m in _MARKERS
            )
        return module_of(obj) == "zarr" and hasattr(obj, "attrs")

    def open(self, obj: Any, request: Request) -> Layer:
        import zarr

        name = request.name
        if isinstance(obj, (str, Path)):
            text = obj.text if isinstance(obj, Path) else obj
            obj = _store_layer(text, request.storage_options) or open_zarr_array(
                text, name=name, storage_options=request.storage_options
            )
        if isinstance(obj, zarr.Group):
            if request.key is None:
                raise ValueError(
                    f"{name} is a Zarr group: name one of its arrays with key= "
                    f"({', '.join(_members(obj)) or 'it has none'})"
                )
            if request.key not in obj or not isinstance(obj[request.key], zarr.Array):
                raise KeyError(
                    f"{name}: the Zarr group has no array {request.key!r} "
                    f"(arrays: {', '.join(_members(obj))})"
                )
            obj = obj[request.key]
        check_complete(obj, name=name, missing_chunks=request.missing_chunks)
        data = da.from_array(CheckedZarr(obj, name), chunks=obj.chunks, asarray=False, fancy=False)
        where = f"{obj.store}{'/' + obj.path if obj.path else ''}"
        order, batches, ids = _recorded_rows(obj)
        return Layer(
            data,
            name,
            "zarr",
            where,
            dims=dims_of(obj),
            zarr=obj,
            sample_ids=ids,
            order=order,
            order_batches=batches,
        )


def _store_layer(path: str, storage_options: Any) -> Any:
    """``"store.zarr/layer"`` opened through its activation store's group (so
    that what the store recorded of the rows is found), or None for anything else."""
    import zarr

    parent, _, leaf = path.rstrip("/").rpartition("/")
    if not parent or not leaf:
        return None
    try:
        group = zarr.open_group(store=parent, mode="r", **storage_kwargs(parent, storage_options))
        node = group[leaf] if is_activation_store(group) and leaf in group else None
    except (FileNotFoundError, ValueError, TypeError, KeyError, OSError):
        return None
    return node if isinstance(node, zarr.Array) else None


def _members(group: Any) -> list[str]:
    return sorted(k for k, _ in group.arrays())


def open_zarr_array(
    path: str | os.PathLike[str], *, name: str = "array", storage_options: Any = None
) -> Any:
    """Open ``"path/to/store.zarr/array"`` (or an fsspec URL such as
    ``"s3://bucket/store.zarr/array"``) read-only as a :class:`zarr.Array`.

    Raises
    ------
    FileNotFoundError
        If nothing is at the path, or what is there is not a Zarr array.
    """
    import zarr

    path = os.fspath(path)
    try:
        node = zarr.open(store=path, mode="r", **storage_kwargs(path, storage_options))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{name}: no Zarr array at {path!r}; give 'path/to/store.zarr/layer' "
            "with an existing store and layer name"
        ) from err
    if not isinstance(node, zarr.Array):
        members = _members(node) if isinstance(node, zarr.Group) else []
        raise FileNotFoundError(
            f"{name}: {path!r} is a Zarr group, not an array; name one of its arrays "
            f"as {path.rstrip('/')}/<array>"
            + (f" (arrays: {', '.join(members)})" if members else "")
        )
    return node


def _recorded_rows(arr: Any) -> tuple[str | None, Any, Any]:
    """What the activation store holding ``arr`` recorded of its rows: the data
    order digest, each batch's first row and digest, and the ``sample_id``
    array (lazy); each None when absent."""
    import zarr

    if not arr.path:
        return None, None, None
    parent = arr.path.rsplit("/", 1)[0] if "/" in arr.path else ""
    try:
        group = zarr.open_group(store=arr.store, path=parent, mode="r")
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None, None, None
    if not is_activation_store(group):
        return None, None, None
    prov = group.attrs.get("provenance")
    prov = prov if isinstance(prov, dict) else {}
    order = prov.get("data_order")
    batches = prov.get("data_order_batches")
    batches = tuple((int(r), str(d)) for r, d in batches) if isinstance(batches, list) else None
    ids = None
    if SAMPLE_ID in group and arr.path.rsplit("/", 1)[-1] != SAMPLE_ID:
        id_arr = group[SAMPLE_ID]
        if isinstance(id_arr, zarr.Array) and id_arr.shape[:1] == arr.shape[:1]:
            ids = da.from_array(
                CheckedZarr(id_arr, SAMPLE_ID), chunks=id_arr.chunks, asarray=False, fancy=False
            )
    return order, batches, ids
