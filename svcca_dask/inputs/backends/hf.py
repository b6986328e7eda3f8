"""Hugging Face ``datasets``: a column of a ``Dataset`` (or of a ``save_to_disk``
folder), read zero-copy through pyarrow.

A column of fixed-length lists of floats (``Sequence``, ``Array2D``...) is
an ``(n, ...)`` layer. Each task takes its rows as a slice of the
memory-mapped Arrow table and views the list values as NumPy, so nothing is
converted through Python lists and nothing is copied but a slice that spans
two Arrow record batches. ``ds["column"]`` (a ``Column``) is taken as its
dataset and column name.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..backend import Backend, module_of, needs
from ..layer import Layer, Request, from_reader
from ..paths import Path

__all__ = ["HFBackend"]


class HFBackend(Backend):
    name = "hf-datasets"
    accepts = (
        "Hugging Face datasets: a Dataset with key= (the column), ds['column'], or a "
        "save_to_disk folder ('folder/column')"
    )
    extra = "hf"

    def guess_can_open(self, obj: Any) -> bool:
        if isinstance(obj, Path):
            return (
                len(obj.files) == 1
                and os.path.exists(os.path.join(obj.head, "state.json"))
                and os.path.exists(os.path.join(obj.head, "dataset_info.json"))
            )
        return module_of(obj) == "datasets"

    def open(self, obj: Any, request: Request) -> Layer:
        datasets = needs("datasets", "hf", "reading a Hugging Face dataset")
        key = request.key
        if isinstance(obj, Path):
            key = obj.key if obj.key is not None else key
            obj = datasets.load_from_disk(obj.head)
        elif hasattr(obj, "source") and hasattr(obj, "column_name"):  # ds["column"]
            obj, key = obj.source, obj.column_name
        if isinstance(obj, datasets.DatasetDict):
            raise TypeError(
                f"{request.name} is a DatasetDict: pick a split first "
                f"(one of {', '.join(obj)}), e.g. ds['train']"
            )
        if not isinstance(obj, datasets.Dataset):
            raise TypeError(
                f"{request.name}: a {type(obj).__name__} from datasets is not a "
                "Dataset; give the Dataset and key= its column"
            )
        if key is None or key not in obj.column_names:
            what = "name its column with key=" if key is None else f"it has no column {key!r}"
            raise KeyError(
                f"{request.name}: the dataset has {len(obj)} rows: {what} "
                f"(columns: {', '.join(obj.column_names)})"
            )
        source = _ArrowColumn(obj, key, name=request.name)
        data = from_reader(source, kind="hf", token=f"{obj._fingerprint}-{key}")
        return Layer(data, request.name, "hf-datasets", f"dataset column {key!r}")


def _values(col: Any) -> tuple[Any, tuple[int, ...]]:
    """The flat float values of a column of (nested) lists, and each row's shape."""
    import pyarrow as pa

    inner: list[int] = []
    n = len(col)
    while (
        pa.types.is_list(col.type)
        or pa.types.is_large_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
    ):
        if col.null_count:
            raise ValueError("null rows")
        if pa.types.is_fixed_size_list(col.type):
            width = col.type.list_size
        else:
            offsets = np.asarray(col.offsets)
            lengths = np.diff(offsets)
            width = int(lengths[0]) if len(lengths) else 0
            if np.any(lengths != width):
                raise ValueError("rows of different lengths")
        inner.append(int(width))
        col = col.flatten()
    del n
    return col, tuple(inner)


class _ArrowColumn:
    """Rows of one list column of a dataset, as NumPy (views of the Arrow buffers)."""

    def __init__(self, ds: Any, column: str, *, name: str) -> None:
        self.ds, self.column, self.name = ds, column, name
        first = self._read(slice(0, min(1, len(ds))))
        self.shape = (len(ds), *first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def _read(self, rows: slice) -> np.ndarray:
        import pyarrow as pa

        table = self.ds.with_format("arrow")[rows]
        col = table.column(self.column)
        col = col.chunk(0) if col.num_chunks == 1 else pa.concat_arrays(col.chunks)
        try:
            flat, inner = _values(col)
            values = flat.to_numpy(zero_copy_only=True)
        except (ValueError, pa.ArrowInvalid) as err:
            raise ValueError(
                f"{self.name}: column {self.column!r} must hold equal-length lists of numbers "
                f"without nulls (a fixed-shape feature such as Sequence(Value('float32'), length=d) "
                f"or Array2D); rows {rows.start}-{rows.stop - 1}: {err}"
            ) from err
        return values.reshape(len(col), *inner)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = key[0] if isinstance(key, tuple) else key
        out = self._read(rows)
        return out[(slice(None), *key[1:])] if isinstance(key, tuple) else out
