"""Activation stores: one Zarr v3 group per model run, one array per layer.

An activation store is a Zarr v3 group. Each layer is one array, samples
first, chunked along samples only and whole along every other axis, with
``dimension_names`` set (``sample, channel, height, width`` for conv layers,
``sample, neuron`` for dense ones) so that xarray opens it as is. An optional
``labels`` array holds one label per sample. The group's attributes hold the
format marker and the provenance (model, layers, dataset size, versions).
Nothing is pickled. The completeness rule (what an interrupted write leaves,
and what the measures refuse) is in :mod:`svcca_dask.store.format`.
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dask.array as da
import numpy as np

from .._config import rows_per_chunk
from .format import (
    ATTR,
    FORMAT,
    FORMAT_VERSION,
    LABELS,
    MASK,
    SAMPLE_ID,
    check_complete,
    default_dims,
    dims_of,
    is_activation_store,
    is_url,
    meta_of,
    qualified_dims,
    storage_kwargs,
)

__all__ = [
    "ActivationStore",
    "LayerData",
    "LayerInfo",
    "create_store",
    "list_layers",
    "open_store",
    "read_layer",
]

_WRITE_CONFIG = {"write_empty_chunks": True}


@dataclass(frozen=True)
class LayerInfo:
    """What a store holds for one layer.

    Attributes
    ----------
    name : str
    shape : tuple of int
        Samples first.
    dims : tuple of str
        Dimension names (``sample`` first).
    chunks : tuple of int
        Chunk shape (chunked along samples only).
    dtype : str
    nbytes : int
        Uncompressed size of the complete array.
    nbytes_stored : int
        Bytes on disk (compressed), metadata included.
    complete_samples : int
        Samples whose write finished.
    expected_samples : int or None
        Samples the writer announced (the dataset's size), if it knew.
    writing : bool
        True while an extraction that has not finished owns the layer.
    missing_chunks : int
        Chunks never stored (Zarr would read fill values there): 0 for a
        complete layer.
    """

    name: str
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    chunks: tuple[int, ...]
    dtype: str
    nbytes: int
    nbytes_stored: int
    complete_samples: int
    expected_samples: int | None
    writing: bool
    missing_chunks: int = 0

    @property
    def complete(self) -> bool:
        """Whether every sample and chunk is written and no writer is still at work."""
        return (
            not self.writing
            and self.missing_chunks == 0
            and self.complete_samples == self.shape[0]
            and (self.expected_samples is None or self.expected_samples == self.shape[0])
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with ``complete`` added."""
        d = asdict(self)
        d.update(shape=list(self.shape), dims=list(self.dims), chunks=list(self.chunks))
        d["complete"] = self.complete
        return d

    def summary(self) -> str:
        """One line: name, shape, dims, chunks, dtype, sizes, state."""
        shape = "x".join(map(str, self.shape))
        chunks = "x".join(map(str, self.chunks))
        state = (
            "complete"
            if self.complete
            else f"INCOMPLETE ({self.missing_chunks} chunks missing)"
            if self.missing_chunks and not self.writing
            else (
                f"INCOMPLETE ({self.complete_samples} of "
                f"{self.expected_samples if self.expected_samples is not None else self.shape[0]}"
                f" samples{', writing' if self.writing else ''})"
            )
        )
        return (
            f"{self.name}  shape={shape}  dims=({', '.join(self.dims)})  chunks={chunks}  "
            f"{self.dtype}  {_human(self.nbytes)} ({_human(self.nbytes_stored)} stored)  {state}"
        )


@dataclass(frozen=True)
class LayerData:
    """A layer read as a Dask array, with its dimension names.

    Attributes
    ----------
    data : dask.array.Array
        Samples first, chunked along samples as stored.
    dims : tuple of str
        ``dimension_names`` of the array.
    name : str
    """

    data: da.Array
    dims: tuple[str, ...]
    name: str


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover


def _stored_version(arr: Any) -> str:
    """What changes when a plain array's stored chunks do: in a local folder the
    latest modification time and the total size of its files; elsewhere the
    stored bytes and chunk count (a same-size rewrite there needs ``--force``)."""
    from zarr.storage import LocalStore

    if isinstance(arr.store, LocalStore):
        root = os.path.join(str(arr.store.root), arr.path)
        latest = size = 0
        for folder, _, files in os.walk(root):
            for f in files:
                st = os.stat(os.path.join(folder, f))
                latest, size = max(latest, st.st_mtime_ns), size + st.st_size
        return f"{latest}-{size}"
    return f"{arr.nbytes_stored()}-{arr.nchunks_initialized}"


class ActivationStore:
    """An activation store: a Zarr v3 group with one array per layer.

    Create one with :func:`create_store`, open one with :func:`open_store`.

    Attributes
    ----------
    path : str
        Where the store lives.
    group : zarr.Group
    """

    def __init__(
        self, group: Any, path: str, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.group = group
        self.path = path
        self.storage_options = dict(storage_options) if storage_options else None

    def __repr__(self) -> str:
        return f"ActivationStore({self.path!r}, layers={self.layer_names()!r})"

    # ------------------------------------------------------------------ #
    # metadata

    @property
    def plain(self) -> bool:
        """True for a plain Zarr group (not made by :func:`create_store`): opened
        read-only, every array a layer, completeness read from its chunks."""
        return not is_activation_store(self.group)

    @property
    def store_id(self) -> str:
        """A random id given at creation; it changes when a store is recreated
        (empty for a plain group)."""
        meta = self.group.attrs.get(ATTR)
        return str(meta.get("store_id", "")) if isinstance(meta, Mapping) else ""

    @property
    def provenance(self) -> dict[str, Any]:
        """Provenance in the group attributes (model, layers, dataset size, versions)."""
        prov = self.group.attrs.get("provenance")
        return dict(prov) if isinstance(prov, Mapping) else {}

    def update_provenance(self, **items: Any) -> None:
        """Merge JSON-serializable ``items`` into the provenance attributes."""
        prov = self.provenance
        prov.update(items)
        self.group.attrs.update({"provenance": prov})

    def layer_names(self) -> list[str]:
        """Names of the layer arrays (``labels``, the token mask and the sample
        ids excluded), sorted."""
        return sorted(
            k
            for k, a in self.group.arrays()
            if k not in (LABELS, MASK, SAMPLE_ID)
            and meta_of(a).get("kind") not in ("labels", "mask", "sample_id")
        )

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.group

    def __iter__(self) -> Iterator[str]:
        return iter(self.layer_names())

    def _array(self, name: str, *, write: bool = False) -> Any:
        import zarr

        if name not in self.group:
            raise KeyError(
                f"store {self.path!r} has no layer {name!r}; layers: "
                f"{', '.join(self.layer_names()) or '(none)'}"
            )
        arr = self.group[name]
        if not isinstance(arr, zarr.Array):
            raise KeyError(f"{name!r} in store {self.path!r} is a group, not a layer array")
        return arr.with_config(_WRITE_CONFIG) if write else arr

    def info(self, name: str) -> LayerInfo:
        """The :class:`LayerInfo` of one layer (or of ``labels``)."""
        arr = self._array(name)
        meta = meta_of(arr)
        expected = meta.get("expected_samples")
        return LayerInfo(
            name=name,
            shape=tuple(int(s) for s in arr.shape),
            dims=dims_of(arr),
            chunks=tuple(int(c) for c in arr.chunks),
            dtype=str(arr.dtype),
            nbytes=int(arr.nbytes),
            nbytes_stored=int(arr.nbytes_stored()),
            complete_samples=int(meta.get("complete_samples", arr.shape[0])),
            expected_samples=None if expected is None else int(expected),
            writing=bool(meta.get("writing", False)),
            missing_chunks=int(arr.nchunks - arr.nchunks_initialized) if arr.shape[0] else 0,
        )

    def layers(self) -> list[LayerInfo]:
        """:class:`LayerInfo` of every layer, sorted by name (``labels`` excluded)."""
        return [self.info(n) for n in self.layer_names()]

    def complete_samples(self, name: str) -> int:
        """Samples of ``name`` whose write finished (0 for a layer not yet created)."""
        if name not in self.group:
            return 0
        arr = self._array(name)
        return int(meta_of(arr).get("complete_samples", arr.shape[0]))

    def fingerprint(self, name: str) -> str:
        """A token that changes whenever the layer's content may have changed.

        Made of the store's id (new when the store is recreated), the layer's
        name, shape, dtype and write id (new at every append or truncation).
        """
        arr = self._array(name)
        meta = meta_of(arr)
        parts = [
            self.store_id,
            name,
            "x".join(map(str, arr.shape)),
            str(arr.dtype),
            str(meta.get("write_id", "")),
            str(meta.get("complete_samples", "")),
        ]
        if self.plain:  # no write id: what changes when its chunks do
            parts.append(_stored_version(arr))
        return ":".join(parts)

    def layer_path(self, name: str) -> str:
        """``"store.zarr/layer"``, the path the measures accept."""
        self._array(name)
        return f"{self.path.rstrip('/')}/{name}"

    # ------------------------------------------------------------------ #
    # reading

    def read(self, name: str, *, check: bool = True) -> LayerData:
        """A layer as a Dask array with its dims.

        Parameters
        ----------
        name : str
        check : bool, default True
            Refuse an incomplete layer (:func:`check_complete`). With False,
            only the complete samples are returned.
        """
        arr = self._array(name)
        if check:
            check_complete(arr, name=f"layer {name!r}")
        data = da.from_zarr(arr)
        if not check:
            data = data[: self.complete_samples(name)]
        return LayerData(data=data, dims=dims_of(arr), name=name)

    def labels(self) -> da.Array | None:
        """The labels as a Dask array, or None when the store has none."""
        if LABELS not in self.group:
            return None
        return self.read(LABELS).data

    # ------------------------------------------------------------------ #
    # writing

    def create_layer(
        self,
        name: str,
        *,
        sample_shape: Sequence[int],
        dtype: Any = "float32",
        dims: Sequence[str] | None = None,
        chunk_samples: int | None = None,
        expected_samples: int | None = None,
        compressors: Any = "auto",
        kind: str = "layer",
    ) -> Any:
        """Create an empty layer (0 samples) of ``sample_shape`` per sample.

        Parameters
        ----------
        name : str
            Layer name (no ``/``; dots are fine: ``layer1.0.conv1``).
        sample_shape : sequence of int
            Shape of one sample, e.g. ``(C, H, W)`` or ``(n_neurons,)``.
        dtype : dtype, default "float32"
            ``float32`` or ``float16`` for activations.
        dims : sequence of str, optional
            Dimension names, ``sample`` first; :func:`default_dims` if omitted.
        chunk_samples : int, optional
            Samples per chunk; by default chunks of about 16 MiB as float64
            (the size the one-pass statistics run fastest on), at most
            ``expected_samples``.
        expected_samples : int, optional
            The dataset's size, when known: the layer is incomplete until it
            holds that many samples.
        compressors : optional
            Zarr v3 compressors; default Blosc-LZ4 with byte shuffle (several
            times faster to decode than Zarr's default Zstd).
        """
        from zarr.codecs import BloscCodec, Crc32cCodec

        if "/" in name or not name or name.startswith("__"):
            raise ValueError(
                f"layer name {name!r} is not a valid array name (no '/', no '__' prefix)"
            )
        if name in self.group:
            raise ValueError(f"store {self.path!r} already has a layer {name!r}")
        sample_shape = tuple(int(s) for s in sample_shape)
        dims = default_dims(1 + len(sample_shape)) if dims is None else tuple(dims)
        if len(dims) != 1 + len(sample_shape):
            raise ValueError(
                f"layer {name!r}: dims {dims} must name {1 + len(sample_shape)} axes "
                f"(sample first, then {sample_shape})"
            )
        if dims[0] != "sample":
            raise ValueError(f"layer {name!r}: the first dim must be 'sample', got {dims[0]!r}")
        dtype = np.dtype(dtype)
        if kind == "layer" and dtype.kind != "f":
            raise TypeError(
                f"layer {name!r}: activations are stored as float32 or float16, got {dtype}"
            )
        if chunk_samples is None:  # about 16 MiB, and no larger than the dataset
            chunk_samples = rows_per_chunk(int(np.prod(sample_shape, dtype=np.int64)))
            if expected_samples:
                chunk_samples = min(chunk_samples, int(expected_samples))
        if compressors == "auto":  # a CRC32C of every chunk: damage is an error, never data
            compressors = [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()]
        meta: dict[str, Any] = {
            "kind": kind,
            "complete_samples": 0,
            "expected_samples": expected_samples,
            "writing": False,
            "write_id": uuid.uuid4().hex,
        }
        return self.group.create_array(
            name,
            shape=(0, *sample_shape),
            dtype=dtype,
            chunks=(max(1, int(chunk_samples)), *sample_shape),
            compressors=compressors,
            fill_value=np.nan if dtype.kind == "f" else 0,
            dimension_names=qualified_dims(name, dims),
            attributes={ATTR: meta},
            config=_WRITE_CONFIG,
        )

    def _set_meta(self, arr: Any, **items: Any) -> None:
        meta = meta_of(arr)
        meta.update(items, write_id=uuid.uuid4().hex)
        arr.attrs.update({ATTR: meta})  # one atomic write of the array's zarr.json

    def append(
        self,
        name: str,
        batch: Any,
        *,
        dtype: Any = None,
        dims: Sequence[str] | None = None,
        chunk_samples: int | None = None,
        expected_samples: int | None = None,
    ) -> int:
        """Append a batch ``(b, *sample_shape)`` to a layer, creating it on first use.

        The rows go after the layer's complete samples (overwriting what an
        interrupted write left there); the complete count is bumped only after
        the data is written.

        Parameters
        ----------
        name : str
        batch : array-like, shape (b, ...)
        dtype, dims, chunk_samples, expected_samples
            Used when the layer is created (see :meth:`create_layer`); ``dtype``
            defaults to the batch's float dtype (float32 for other dtypes).

        Returns
        -------
        int
            The layer's complete samples after the append.
        """
        batch = np.asarray(batch)
        if batch.ndim < 1:
            raise ValueError(f"layer {name!r}: a batch needs a sample axis, got a scalar")
        if name not in self.group:
            if dtype is None:
                dtype = batch.dtype if batch.dtype in (np.float16, np.float32) else np.float32
            self.create_layer(
                name,
                sample_shape=batch.shape[1:],
                dtype=dtype,
                dims=dims,
                chunk_samples=chunk_samples,
                expected_samples=expected_samples,
            )
        arr = self._array(name, write=True)
        if tuple(batch.shape[1:]) != tuple(arr.shape[1:]):
            raise ValueError(
                f"layer {name!r}: batch samples have shape {tuple(batch.shape[1:])}, the layer's "
                f"have {tuple(arr.shape[1:])}"
            )
        if dims is not None and tuple(dims) != dims_of(arr):
            raise ValueError(
                f"layer {name!r}: dims {tuple(dims)} differ from the stored {dims_of(arr)}"
            )
        with np.errstate(over="ignore"):
            data = batch.astype(arr.dtype, copy=False)
        if arr.dtype.kind == "f" and data.dtype.itemsize < batch.dtype.itemsize:
            if not np.all(np.isfinite(data)) and np.all(np.isfinite(batch)):
                raise ValueError(
                    f"layer {name!r}: activations overflow {arr.dtype} (largest |value| "
                    f"{np.abs(batch).max():.3g}); store this layer as float32"
                )
        done = int(meta_of(arr).get("complete_samples", arr.shape[0]))
        end = done + data.shape[0]
        if arr.shape[0] != end:
            arr.resize((end, *arr.shape[1:]))
        if data.shape[0]:
            arr[done:end] = data
        self._set_meta(arr, complete_samples=end)
        return end

    def truncate(self, name: str, n_samples: int) -> None:
        """Cut a layer back to its first ``n_samples`` complete samples."""
        arr = self._array(name, write=True)
        done = int(meta_of(arr).get("complete_samples", arr.shape[0]))
        if n_samples > done:
            raise ValueError(
                f"layer {name!r} has {done} complete samples; cannot truncate to {n_samples}"
            )
        arr.resize((n_samples, *arr.shape[1:]))
        self._set_meta(arr, complete_samples=n_samples)

    def append_labels(self, labels: Any) -> int:
        """Append a batch of labels (one per sample) to the ``labels`` array."""
        labels = np.asarray(labels)
        if labels.ndim == 0:
            labels = labels[None]
        if LABELS not in self.group:
            dtype = labels.dtype if labels.dtype.kind in "biuf" else np.dtype("int64")
            self.create_layer(
                LABELS,
                sample_shape=labels.shape[1:],
                dtype=dtype,
                dims=("sample", *(f"dim_{i}" for i in range(1, labels.ndim))),
                chunk_samples=4096,
                kind="labels",
            )
        return self.append(LABELS, labels)

    def create_mask(self, tokens: int, *, expected_samples: int | None = None) -> None:
        """Create the ``(n, tokens)`` boolean token mask (:data:`MASK`); fill it
        with :meth:`append` like a layer (the measures take it as ``mask=``)."""
        self.create_layer(
            MASK,
            sample_shape=(int(tokens),),
            dtype=np.dtype(bool),
            dims=("sample", "token"),
            expected_samples=expected_samples,
            kind="mask",
        )

    def create_sample_ids(self, *, expected_samples: int | None = None) -> None:
        """Create the ``(n,)`` int64 array of each row's sample id (:data:`SAMPLE_ID`);
        fill it with :meth:`append` like a layer. Measures compare two stores'
        ids row by row (:mod:`svcca_dask.inputs.rows`)."""
        self.create_layer(
            SAMPLE_ID,
            sample_shape=(),
            dtype=np.dtype("int64"),
            dims=("sample",),
            chunk_samples=65536,
            expected_samples=expected_samples,
            kind="sample_id",
        )

    def set_writing(
        self, names: Sequence[str], writing: bool, *, expected_samples: Any = ...
    ) -> None:
        """Mark layers as owned by a running writer (``writing=True``) or finished.

        While marked, the measures refuse the layers; a writer that is
        interrupted leaves them marked until it is resumed and finishes.
        ``expected_samples`` (when given) updates the announced total.
        """
        for name in names:
            items: dict[str, Any] = {"writing": bool(writing)}
            if expected_samples is not ...:
                items["expected_samples"] = expected_samples
            self._set_meta(self._array(name, write=True), **items)


# ---------------------------------------------------------------------- #
# module-level API


def create_store(
    path: str | os.PathLike[str],
    *,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> ActivationStore:
    """Create an empty activation store (a Zarr v3 group) at ``path``.

    Parameters
    ----------
    path : str or path
        Directory of the store, e.g. ``"acts.zarr"``, or an fsspec URL
        (``"s3://bucket/acts.zarr"``; the client is an extra: ``[s3]``, ``[gcs]``).
    provenance : mapping, optional
        JSON-serializable provenance to record in the group attributes.
    overwrite : bool, default False
        Replace whatever is at ``path``.
    storage_options : mapping, optional
        fsspec options for a URL (``endpoint_url``, credentials); without
        them the standard variables (``AWS_ENDPOINT_URL``, ...) apply.

    Raises
    ------
    FileExistsError
        If something is at ``path`` and ``overwrite`` is False.
    """
    import zarr

    path = os.fspath(path)
    if not overwrite and not is_url(path) and os.path.exists(path) and os.listdir(path):
        raise FileExistsError(
            f"{path!r} exists; open it with open_store({path!r}, mode='r+') to add to it, or "
            "pass overwrite=True to replace it"
        )
    attrs = {
        ATTR: {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "store_id": uuid.uuid4().hex,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
        "provenance": dict(provenance or {}),
    }
    group = zarr.open_group(
        path,
        mode="w" if overwrite else "w-",
        zarr_format=3,
        attributes=attrs,
        **storage_kwargs(path, storage_options),
    )
    return ActivationStore(group, path, storage_options)


def open_store(
    path: str | os.PathLike[str] | ActivationStore,
    *,
    mode: str = "r",
    storage_options: Mapping[str, Any] | None = None,
) -> ActivationStore:
    """Open an activation store, or any Zarr group read-only.

    A plain Zarr group (v3, or v2 where zarr reads it), written by other
    tools, opens with ``mode="r"``: every array is a layer, and a layer is
    complete when all its chunks are stored (:attr:`ActivationStore.plain`).

    Parameters
    ----------
    path : str, path or ActivationStore
    mode : {"r", "r+"}, default "r"
        ``"r+"`` to append (activation stores only).
    storage_options : mapping, optional
        fsspec options for a URL path (see :func:`create_store`).

    Raises
    ------
    FileNotFoundError
        If no store is at ``path``.
    ValueError
        If the Zarr node there is an array, or a plain group opened with "r+".
    """
    import zarr

    if isinstance(path, ActivationStore):
        return path
    path = os.fspath(path)
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
    try:
        node = zarr.open(store=path, mode=mode, **storage_kwargs(path, storage_options))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no activation store at {path!r}; create one with create_store() or svcca-dask extract"
        ) from err
    if not isinstance(node, zarr.Group):
        raise ValueError(f"{path!r} is a Zarr array, not an activation store (a group)")
    if not is_activation_store(node) and mode != "r":
        raise ValueError(
            f"{path!r} is a plain Zarr group (without the activation-store marker "
            f"attributes[{ATTR!r}]['format'] == {FORMAT!r}): it opens read-only (mode='r'); "
            "write activations with create_store()"
        )
    return ActivationStore(node, path, storage_options)


def list_layers(
    store: str | os.PathLike[str] | ActivationStore,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[LayerInfo]:
    """:class:`LayerInfo` (shape, dims, chunking, size) of every layer of ``store``."""
    return open_store(store, storage_options=storage_options).layers()


def read_layer(
    store: str | os.PathLike[str] | ActivationStore,
    layer: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> LayerData:
    """One layer of ``store`` as a Dask array with its dims; refuses an incomplete layer."""
    return open_store(store, storage_options=storage_options).read(layer)
