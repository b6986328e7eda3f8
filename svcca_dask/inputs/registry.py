"""Opening inputs: ask each backend in turn (xarray's ``guess_engine``).

:func:`open_layer` is the one front door: every measure, matrix, job and CLI
command opens its inputs here. A string or path is split into what exists and
a key (:func:`~svcca_dask.inputs.paths.split_path`) and recognised by what it
is; an object by its type. What no backend takes is an error that names what
it got and lists the kinds accepted.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import dask.array as da

from ..store.format import check_missing_chunks, is_url
from .backend import Backend
from .backends.arraylike import ArrayLikeBackend
from .backends.dask_ import DaskBackend
from .backends.h5py_ import H5pyBackend
from .backends.hf import HFBackend
from .backends.npy import NpyBackend
from .backends.numpy_ import NumpyBackend
from .backends.safetensors_ import SafetensorsBackend
from .backends.shards import ShardsBackend
from .backends.torch_ import TorchBackend
from .backends.xarray_ import XarrayBackend
from .backends.zarr_ import ZarrBackend
from .layer import Layer, Request, check_shape_dtype
from .paths import split_path

__all__ = ["BACKENDS", "accepted_kinds", "as_dask", "open_layer"]

#: Every kind of input, asked in this order; the catch-all array-like last.
BACKENDS: tuple[Backend, ...] = (
    DaskBackend(),
    NumpyBackend(),
    TorchBackend(),
    ZarrBackend(),
    XarrayBackend(),
    H5pyBackend(),
    NpyBackend(),
    SafetensorsBackend(),
    HFBackend(),
    ShardsBackend(),
    ArrayLikeBackend(),
)


def accepted_kinds() -> str:
    """The kinds of input accepted, one per line (for errors and the README)."""
    return "\n".join(
        f"  - {b.accepts}" + (f" [pip install 'svcca-dask[{b.extra}]']" if b.extra else "")
        for b in BACKENDS
    )


def _target(obj: Any, name: str) -> Any:
    """A string or path as a :class:`~.paths.Path` or URL; anything else as it is."""
    if not isinstance(obj, (str, os.PathLike)):
        return obj
    text = os.fspath(obj)
    if is_url(text):
        return text
    split = split_path(text)
    if split is None:
        raise FileNotFoundError(f"{name}: nothing exists at {text!r} (nor at any folder above it)")
    return split


def open_layer(
    obj: Any,
    *,
    name: str = "x",
    key: str | None = None,
    sample_ids: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
) -> Layer:
    """Open one input as a lazy :class:`~svcca_dask.inputs.layer.Layer`, without copying it.

    Parameters
    ----------
    obj : array, tensor, store, file, dataset, path or URL
        Any input :data:`BACKENDS` accepts (see :func:`accepted_kinds`): NumPy
        arrays and memmaps, CPU torch tensors (any float dtype), Dask, Zarr
        (arrays, groups with ``key``, paths, URLs), xarray, HDF5, ``.npy`` and
        ``.npz``, safetensors files and shards, Hugging Face datasets, memmap
        shard folders. A :class:`Layer` comes back as it is.
    name : str
        The argument's name, for messages.
    key : str, optional
        The array inside a container given as an object (a Zarr group, an
        ``NpzFile``, an h5py file, a ``Dataset``'s column, an xarray Dataset's
        variable, a list of safetensors shards' tensor). Paths say it
        themselves: ``"acts.safetensors/blocks.3"``.
    sample_ids : array-like or str, optional
        Each row's sample id (an array, a path, or the name of a column or
        array beside the layer in its dataset or store): compared with the
        other side's inside the pass (:func:`svcca_dask.inputs.open_pair`).
    storage_options : mapping, optional
        fsspec options (``endpoint_url``, credentials...) for URLs; without
        them the standard variables (``AWS_ENDPOINT_URL``...) apply.
    missing_chunks : {"error", "fill"}
        What a chunk a plain Zarr array never stored means: refused before
        any computation (``"error"``), or Zarr's fill value (``"fill"``:
        arrays written with ``write_empty_chunks=False`` skip chunks equal to it).

    Returns
    -------
    Layer
        Its ``data`` chunked along samples only and whole along the rest.

    Raises
    ------
    TypeError
        If no backend takes ``obj`` (the message lists the kinds accepted).
    ImportError
        If the backend's library is missing (the message names the extra).
    """
    check_missing_chunks(missing_chunks)
    if isinstance(obj, Layer):
        layer = obj
    else:
        request = Request(
            name=name, key=key, storage_options=storage_options, missing_chunks=missing_chunks
        )
        target = _target(obj, name)
        backend = next((b for b in BACKENDS if b.guess_can_open(target)), None)
        if backend is None and hasattr(target, "files") and target.key is not None:
            raise FileNotFoundError(
                f"{name}: no Zarr array at {target.text!r}, nor any file of a kind accepted: "
                f"{target.head} exists, {target.key!r} inside it does not"
            )
        if backend is None:
            got = target.text if hasattr(target, "files") else repr(type(obj).__name__)
            raise TypeError(
                f"{name}: cannot open {got} as activations. Accepted:\n{accepted_kinds()}"
            )
        layer = backend.open(target, request)
        check_shape_dtype(layer.shape, layer.dtype, name=name, allowed=(layer.ndim,))
        if any(len(c) != 1 for c in layer.data.chunks[1:]):  # whole along features
            layer = dataclasses.replace(
                layer, data=layer.data.rechunk({i: -1 for i in range(1, layer.ndim)})
            )
    if sample_ids is not None:
        layer = dataclasses.replace(
            layer, sample_ids=_ids(sample_ids, obj, layer, name, storage_options)
        )
    return layer


def _ids(ids: Any, obj: Any, layer: Layer, name: str, storage_options: Any) -> da.Array:
    """``sample_ids=`` as a lazy 1-D array of the layer's rows."""
    what = f"sample_ids of {name}"
    if isinstance(ids, str) and "/" not in ids and not os.path.exists(ids):
        # a column or array beside the layer: in its dataset, or its Zarr group
        source = getattr(obj, "source", obj)
        if layer.kind == "hf-datasets":
            ids = open_layer(source, name=what, key=ids).data
        elif layer.zarr is not None:
            import zarr

            parent = layer.zarr.path.rsplit("/", 1)[0] if "/" in layer.zarr.path else ""
            group = zarr.open_group(store=layer.zarr.store, path=parent, mode="r")
            ids = open_layer(group, name=what, key=ids).data
        else:
            raise ValueError(
                f"{what}: {ids!r} names a column, but {name} is not a dataset or store layer"
            )
    arr = (
        ids
        if isinstance(ids, da.Array)
        else open_layer(ids, name=what, storage_options=storage_options).data
    )
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != layer.rows:
        raise ValueError(
            f"{what} must be 1-D with one id per row ({layer.rows}), got shape {arr.shape}"
        )
    return arr


def as_dask(x: Any, *, name: str, ndim: int | tuple[int, ...] = 2) -> da.Array:
    """One input's data (see :func:`open_layer`), refused unless it has ``ndim`` axes."""
    layer = open_layer(x, name=name)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    check_shape_dtype(layer.shape, layer.dtype, name=name, allowed=allowed)
    return layer.data
