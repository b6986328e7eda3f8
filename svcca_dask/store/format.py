"""The activation-store format: markers, dimension names, and the completeness rule.

A leaf module (NumPy only): :mod:`svcca_dask.input` applies
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

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ATTR",
    "FORMAT",
    "FORMAT_VERSION",
    "LABELS",
    "MASK",
    "IncompleteLayerError",
    "check_complete",
    "default_dims",
    "dims_of",
    "is_activation_store",
    "meta_of",
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


def dims_of(arr: Any) -> tuple[str, ...]:
    """A Zarr array's ``dimension_names``, or :func:`default_dims` where it names none."""
    names = getattr(arr.metadata, "dimension_names", None)
    if names is None or any(n is None for n in names):
        return default_dims(arr.ndim)
    return tuple(str(n) for n in names)



def is_activation_store(group: Any) -> bool:
    """Whether a :class:`zarr.Group` carries the activation-store marker."""
    meta = group.attrs.get(ATTR)
    return isinstance(meta, Mapping) and meta.get("format") == FORMAT


def check_complete(arr: Any, *, name: str = "array") -> None:
    """Refuse a store layer that an interrupted write or missing chunks left incomplete.

    Arrays without the activation-store layer attributes pass unchecked.

    Parameters
    ----------
    arr : zarr.Array
    name : str
        The argument's or layer's name, for the message.

    Raises
    ------
    IncompleteLayerError
        If the layer has fewer complete samples than rows, an extraction is
        still writing it (or was interrupted), or chunks are missing.
    """
    meta = meta_of(arr)
    if meta.get("kind") not in ("layer", "labels", "mask"):
        return
    where = f"{name} ({arr.store}{'/' + arr.path if arr.path else ''})"
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

