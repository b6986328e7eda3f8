"""What every input becomes: a :class:`Layer`, and the no-copy ways to make one.

A layer's data is a Dask array chunked along samples only, whose chunks are
views of memory the user already holds (:func:`from_views`) or reads of a
file or store made inside the task that needs them (:func:`from_reader`).
Nothing here copies a whole input: ``dask.array.from_array`` starts with
``x = x.copy()`` for anything array-like with a ``copy`` method (dask >=
2025.5), which doubles an in-memory layer and reads a memory-mapped file whole.

Half-precision inputs are widened per chunk (:func:`widened`): ``float16`` and
``bfloat16`` (which NumPy has no dtype for; stored as its 16 raw bits) become
``float32`` one chunk at a time, so the pass sees ordinary floats.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from .._config import rows_per_chunk

__all__ = [
    "BF16",
    "Layer",
    "MemmapFile",
    "Request",
    "check_shape_dtype",
    "from_reader",
    "from_views",
    "numpy_dtype",
    "widened",
]

#: The dtype name a backend gives raw bfloat16 bits (stored as ``uint16``).
BF16 = "bfloat16"


@dataclass(frozen=True)
class Request:
    """What :func:`~svcca_dask.inputs.open_layer` was asked, handed to a backend.

    Attributes
    ----------
    name : str
        The argument's name, for messages (``"x"``, ``"xs['fc1']"``).
    key : str, optional
        The array inside a container: a Zarr group's array, an ``.npz``
        member, a safetensors tensor, an HDF5 dataset, a dataset's column.
    storage_options : mapping, optional
        fsspec options for URLs.
    missing_chunks : {"error", "fill"}
        What a chunk a plain Zarr array never stored means.
    """

    name: str = "x"
    key: str | None = None
    storage_options: Mapping[str, Any] | None = None
    missing_chunks: str = "error"


@dataclass(frozen=True, eq=False)
class Layer:
    """One opened input: lazy data and what is known about its rows.

    Attributes
    ----------
    data : dask.array.Array, shape (n_samples, ...)
        Chunked along samples only; each chunk a view or a read, never a
        copy of the whole input.
    name : str
        The argument's name, for messages.
    kind : str
        The backend that opened it (``"numpy"``, ``"zarr"``, ``"safetensors"``...).
    origin : str
        Where it came from (a path, a URL, ``"in memory"``), for messages.
    dims : tuple of str, optional
        Dimension roles when the input names them (Zarr ``dimension_names``,
        xarray dims): they give a conv or token layer's layout.
    zarr : zarr.Array, optional
        The Zarr array itself, when the input is one: its stored chunks can be
        read directly (:func:`svcca_dask.io.chunks.stored_chunk_readers`).
    sample_ids : dask.array.Array, shape (n_samples,), optional
        Each row's sample id, when the input records it (a store's
        ``sample_id`` array) or the caller gave ``sample_ids=``: two layers'
        ids are compared chunk by chunk inside the pass.
    order : str, optional
        A digest of the order the rows were extracted in (an activation
        store's provenance): two layers whose digests differ are refused.
    order_batches : tuple of (int, str), optional
        Each extracted batch's first row and digest, to name the first
        differing row.
    """

    data: da.Array
    name: str
    kind: str
    origin: str
    dims: tuple[str, ...] | None = None
    zarr: Any = None
    sample_ids: Any = None
    order: str | None = None
    order_batches: tuple[tuple[int, str], ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def ndim(self) -> int:
        return int(self.data.ndim)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def rows(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Layer({self.name!r}, {self.kind}, shape={self.shape}, dtype={self.dtype}, from {self.origin})"


def numpy_dtype(name: str) -> np.dtype | str:
    """A dtype named as NumPy, PyTorch (``torch.float16``) or safetensors
    (``F16``, ``BF16``) name it; :data:`BF16` for bfloat16."""
    low = str(name).lower().removeprefix("torch.")
    table = {
        "bf16": BF16,
        "bfloat16": BF16,
        "f16": "float16",
        "half": "float16",
        "f32": "float32",
        "float": "float32",
        "f64": "float64",
        "double": "float64",
        "i8": "int8",
        "i16": "int16",
        "i32": "int32",
        "i64": "int64",
        "u8": "uint8",
        "u16": "uint16",
        "u32": "uint32",
        "u64": "uint64",
        "bool": "bool",
    }
    low = table.get(low, low)
    return BF16 if low == BF16 else np.dtype(low)


def _bf16_block(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values (their 16 raw bits) as float32: the same number, exactly."""
    out = np.asarray(bits).astype(np.uint32)
    out <<= 16
    return out.view(np.float32)


def widened(arr: da.Array, dtype: np.dtype | str) -> da.Array:
    """``arr`` (chunks of ``dtype``: raw bits for :data:`BF16`) as float32 where
    ``dtype`` is a half-precision float, one chunk at a time; else as it is."""
    if isinstance(dtype, str) and dtype == BF16:
        return arr.map_blocks(_bf16_block, dtype=np.float32)
    if np.dtype(dtype) == np.float16:
        return arr.astype(np.float32)
    return arr


def _meta(ndim: int, dtype: Any) -> np.ndarray:
    return np.empty((0,) * ndim, dtype=dtype)


def _row_chunks(n: int, shape: tuple[int, ...], rows: int | None) -> tuple[tuple[int, ...], ...]:
    step = rows or rows_per_chunk(int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1)
    step = max(1, min(step, max(n, 1)))
    first = tuple(min(step, n - a) for a in range(0, n, step)) or (0,)
    return (first, *((int(s),) for s in shape[1:]))


def from_views(x: np.ndarray, *, kind: str, rows: int | None = None) -> da.Array:
    """A Dask array whose chunks are row views of ``x``: no copy.

    On threads the tasks read ``x``'s memory; on a cluster each task carries
    only its own rows (a view pickles its own data, not the base array's).
    """
    chunks = _row_chunks(int(x.shape[0]), tuple(x.shape), rows)
    name = f"{kind}-{uuid.uuid4().hex}"  # not tokenize(x): that hashes every byte
    dsk: dict[Any, Any] = {}
    start = 0
    rest = (0,) * (x.ndim - 1)
    for i, r in enumerate(chunks[0]):
        dsk[(name, i, *rest)] = x[start : start + r]
        start += r
    return da.Array(dsk, name, chunks, meta=_meta(x.ndim, x.dtype))


def from_reader(source: Any, *, kind: str, token: str, rows: int | None = None) -> da.Array:
    """A Dask array over a row reader ``source`` (``shape``, ``dtype``, ``ndim``
    and ``source[rows_slice]``), read inside each task.

    ``source`` must be small to pickle (a path and offsets, a lazily opened
    handle): it travels with every task. It must have no ``copy`` method
    (``dask.array.from_array`` would call it). ``token`` names the content
    (a path and its modification time), so equal inputs get equal keys.
    """
    chunks = _row_chunks(int(source.shape[0]), tuple(source.shape), rows)
    return da.from_array(
        source,
        chunks=chunks,
        name=f"{kind}-{token}",
        asarray=False,
        fancy=False,
        inline_array=True,
        meta=_meta(source.ndim, source.dtype),
    )


class MemmapFile:
    """Rows of a C-ordered array stored raw in a file at ``offset``, read by
    mapping the file inside each task (a ``.npy`` file, an uncompressed
    ``.npz`` member, a safetensors tensor, a memmap shard). Pickles as its
    path: a worker on a shared disk maps the file itself.
    """

    def __init__(self, path: str, *, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.offset = os.fspath(path), int(offset)
        self.dtype, self.shape, self.ndim = (
            np.dtype(dtype),
            tuple(int(s) for s in shape),
            len(shape),
        )

    def _map(self) -> np.ndarray:
        if 0 in self.shape:
            return np.empty(self.shape, dtype=self.dtype)
        return np.memmap(
            self.path, mode="r", dtype=self.dtype, offset=self.offset, shape=self.shape
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._map()[key]

    def token(self) -> str:
        st = os.stat(self.path)
        from dask.base import tokenize

        return tokenize(
            os.path.realpath(self.path),
            st.st_mtime_ns,
            st.st_size,
            self.offset,
            str(self.dtype),
            self.shape,
        )

    def as_dask(self, *, kind: str) -> da.Array:
        return from_reader(self, kind=kind, token=self.token())


def check_shape_dtype(
    shape: tuple[int, ...], dtype: Any, *, name: str, allowed: tuple[int, ...]
) -> None:
    """Refuse what no measure takes: non-real dtypes, a wrong number of axes, fewer than 2 rows."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers, got dtype {dtype}; convert it, e.g. x.astype('float32')"
        )
    if len(shape) not in allowed:
        if len(shape) == 1:
            hint = "reshape it to (n_samples, 1) for a single neuron"
        elif len(shape) == 4:
            hint = "conv activations need a conv= reduction"
        else:
            hint = "activations are (n_samples, n_features)"
            if 4 in allowed:
                hint += ", or conv layers (n, C, H, W) / (n, H, W, C)"
        what = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name} must be {what}, got shape {tuple(shape)}: {hint}")
    if shape[0] < 2:
        raise ValueError(f"{name} has {shape[0]} sample(s); at least 2 are needed")
