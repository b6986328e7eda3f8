"""The activation-store format: markers, dimension names, and the completeness rule.

A leaf module (NumPy only): :mod:`svcca_dask.inputs` applies
:func:`check_complete` to every Zarr array it opens, and the store classes in
:mod:`svcca_dask.store.activation` write what it checks.

Each array of a store records in its attributes how many of its samples are
complete. Appending writes the data first and bumps that count afterwards
(each metadata write is atomic), so an interrupted append is never counted:
the array is then longer than its complete count and the measures refuse it.
Missing chunks are refused too (Zarr would read them as the fill value, which
is NaN here).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ATTR",
    "FORMAT",
    "FORMAT_VERSION",
    "LABELS",
    "MASK",
    "MISSING_CHUNKS",
    "SAMPLE_ID",
    "IncompleteLayerError",
    "check_complete",
    "check_missing_chunks",
    "default_dims",
    "dims_of",
    "is_activation_store",
    "is_url",
    "meta_of",
    "missing_chunk_rows",
    "storage_kwargs",
]

#: Format marker in the group's attributes (``attrs["svcca_dask"]["format"]``).
FORMAT = "svcca-dask-activation-store"
FORMAT_VERSION = 1
#: Attribute key of the store's (group) and layers' (array) own metadata.
ATTR = "svcca_dask"
#: Name of the optional labels array.
LABELS = "labels"
#: Name of the optional token mask (an extraction whose batches carry an
#: ``attention_mask``): ``(n, T)`` booleans, True for a real token.
MASK = "attention_mask"
#: Name of the optional ``(n,)`` array of each row's sample id (an extraction
#: whose dataset yields ids): measures compare two stores' ids row by row.
SAMPLE_ID = "sample_id"


class IncompleteLayerError(ValueError):
    """A layer has unfinished writes or missing chunks, so reading it would give wrong data."""


def default_dims(ndim: int) -> tuple[str, ...]:
    """Dimension names of a layer with ``ndim`` axes, samples first.

    ``(sample, neuron)`` for dense layers, ``(sample, channel, length)`` for 1-D
    conv layers, ``(sample, channel, height, width)`` for 2-D conv layers (the
    PyTorch layout), ``(sample, channel, depth, height, width)`` for 3-D ones.
    """
    table = {
        1: ("sample",),
        2: ("sample", "neuron"),
        3: ("sample", "channel", "length"),
        4: ("sample", "channel", "height", "width"),
        5: ("sample", "channel", "depth", "height", "width"),
    }
    if ndim in table:
        return table[ndim]
    return ("sample", *(f"dim_{i}" for i in range(1, ndim)))


def meta_of(arr: Any) -> dict[str, Any]:
    """The project's own attributes of a store array or group (empty for plain Zarr)."""
    meta = arr.attrs.get(ATTR)
    return dict(meta) if isinstance(meta, Mapping) else {}


def qualified_dims(layer: str, dims: tuple[str, ...]) -> tuple[str, ...]:
    """The ``dimension_names`` a store writes: ``sample`` as it is (every layer
    shares it), every other axis prefixed with the layer's name
    (``("sample", "conv1.channel", "conv1.height", "conv1.width")``), so that
    ``xarray.open_zarr`` opens a store whose layers' axes differ in size."""
    return (dims[0], *(f"{layer}.{d}" for d in dims[1:]))


def role_dims(names: tuple[str, ...]) -> tuple[str, ...]:
    """Dimension names without a layer prefix (see :func:`qualified_dims`): the
    axes' roles, as the measures read them. The prefix is what all axes but
    the first share up to a ``.`` (``"layer1.0.conv1."``); names written before,
    or by other tools without such a prefix, come back as they are."""
    rest = names[1:]
    if not rest or not all("." in n for n in rest):
        return names
    prefix = os.path.commonprefix(list(rest))  # noqa: RUF071 - characters, cut at a "." below
    prefix = prefix[: prefix.rfind(".") + 1]
    if not prefix:
        return names
    return (names[0], *(n[len(prefix) :] for n in rest))


def dims_of(arr: Any) -> tuple[str, ...]:
    """A Zarr array's dimension roles (``dimension_names`` without the layer
    prefix), or :func:`default_dims` where it names none."""
    names = getattr(arr.metadata, "dimension_names", None)
    if names is None or any(n is None for n in names):
        return default_dims(arr.ndim)
    return role_dims(tuple(str(n) for n in names))


def is_activation_store(group: Any) -> bool:
    """Whether a :class:`zarr.Group` carries the activation-store marker."""
    meta = group.attrs.get(ATTR)
    return isinstance(meta, Mapping) and meta.get("format") == FORMAT


#: What a chunk a plain Zarr array never stored means (``missing_chunks=``):
#: ``"error"`` (the default: refused before any computation, naming the rows) or
#: ``"fill"`` (Zarr's fill value, as Zarr reads it: arrays written with
#: ``write_empty_chunks=False``, Zarr's default, skip chunks equal to it).
MISSING_CHUNKS = ("error", "fill")


def check_missing_chunks(mode: str) -> None:
    """Refuse a ``missing_chunks=`` that is not one of :data:`MISSING_CHUNKS`."""
    if mode not in MISSING_CHUNKS:
        raise ValueError(f"missing_chunks must be 'error' or 'fill', got {mode!r}")


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://``, ``gs://``, ``https://``, ...)."""
    return "://" in path and not path.startswith("file://")


def storage_kwargs(path: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Zarr's ``storage_options=`` for ``path``: the given ones, for URLs only
    (the standard ``AWS_*`` variables apply as well)."""
    return {"storage_options": dict(storage_options)} if storage_options and is_url(path) else {}


def missing_chunk_rows(arr: Any) -> list[tuple[int, int]] | None:
    """Row ranges ``[start, stop)`` of a Zarr array where a chunk was never
    stored (empty when none is missing; None where some are but which cannot be
    told: sharded arrays). One listing of the array's keys."""
    if arr.nchunks_initialized >= arr.nchunks:
        return []
    if getattr(arr, "shards", None) is not None:
        return None
    from zarr.core.sync import sync

    async def listed() -> set[str]:
        return {k async for k in arr.store.list_prefix(arr.path)}

    present = sync(listed())
    prefix = f"{arr.path}/" if arr.path else ""
    grid = [range(-(-int(s) // int(c))) for s, c in zip(arr.shape, arr.chunks, strict=True)]
    missing = sorted(
        {
            coords[0]
            for coords in itertools.product(*grid)
            if prefix + arr.metadata.encode_chunk_key(coords) not in present
        }
    )
    step, rows = int(arr.chunks[0]), int(arr.shape[0])
    ranges: list[tuple[int, int]] = []
    for i in missing:
        a, b = i * step, min((i + 1) * step, rows)
        if ranges and ranges[-1][1] == a:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((a, b))
    return ranges


def _check_plain(arr: Any, where: str, missing_chunks: str) -> None:
    if missing_chunks == "fill" or not arr.shape or not arr.shape[0]:
        return
    ranges = missing_chunk_rows(arr)
    if ranges == []:
        return
    shown = (
        "some rows"
        if ranges is None
        else "rows "
        + ", ".join(f"{a}-{b - 1}" for a, b in ranges[:5])
        + (" ..." if len(ranges) > 5 else "")
    )
    raise IncompleteLayerError(
        f"{where} has no stored chunk for {shown} ({arr.nchunks - arr.nchunks_initialized} "
        f"of {arr.nchunks} chunks): Zarr would read its fill value ({arr.fill_value}) there "
        "and the score would be wrong. Write those chunks, or, if the array was written "
        "with write_empty_chunks=False (Zarr skips chunks equal to the fill value), pass "
        "missing_chunks='fill'."
    )


def check_complete(arr: Any, *, name: str = "array", missing_chunks: str = "error") -> None:
    """Refuse a store layer that an interrupted write or missing chunks left incomplete.

    A plain Zarr array (without the activation-store layer attributes) is
    refused where a chunk was never stored, unless ``missing_chunks="fill"``.

    Parameters
    ----------
    arr : zarr.Array
    name : str
        The argument's or layer's name, for the message.
    missing_chunks : {"error", "fill"}
        What a chunk a plain array never stored means (:data:`MISSING_CHUNKS`).

    Raises
    ------
    IncompleteLayerError
        If the layer has fewer complete samples than rows, an extraction is
        still writing it (or was interrupted), or chunks are missing.
    """
    meta = meta_of(arr)
    where = f"{name} ({arr.store}{'/' + arr.path if arr.path else ''})"
    if meta.get("kind") not in ("layer", "labels", "mask", "sample_id"):
        check_missing_chunks(missing_chunks)
        _check_plain(
            arr, where, missing_chunks
        )  # a plain Zarr array: only its chunks can be checked
        return
    rows = int(arr.shape[0])
    done = int(meta.get("complete_samples", 0))
    expected = meta.get("expected_samples")
    if done != rows:
        raise IncompleteLayerError(
            f"{where} is incomplete: {done} of its {rows} samples are complete (a write was "
            "interrupted). Rerun the extraction to resume it, or append again: the unfinished "
            "rows are overwritten."
        )
    if meta.get("writing") or (expected is not None and done < int(expected)):
        of = f" of {expected}" if expected is not None else ""
        raise IncompleteLayerError(
            f"{where} is incomplete: an extraction wrote {done}{of} samples and has not "
            "finished (it is running, or was interrupted). Rerun it to resume."
        )
    if rows and arr.nchunks_initialized < arr.nchunks:
        raise IncompleteLayerError(
            f"{where} is missing {arr.nchunks - arr.nchunks_initialized} of its "
            f"{arr.nchunks} chunks; Zarr would read them as fill values. Rewrite the layer "
            "(extract again with overwrite) or copy the missing chunks back."
        )
