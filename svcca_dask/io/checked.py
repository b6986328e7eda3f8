"""Reading Zarr arrays so that a damaged chunk is an error naming it.

Zarr's own decoders raise a bare message (``Stored and computed checksum do
not match``, a Blosc error) from inside a Dask task; :class:`CheckedZarr`
wraps the array so that the error names the array and the rows of the chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CheckedZarr", "damaged"]


def damaged(where: str, why: str) -> ValueError:
    """The error for a stored chunk that cannot be trusted, naming it."""
    return ValueError(
        f"the stored chunk {where} is damaged: {why}. Rewrite the layer (extract again, or "
        "copy the chunk back from a good copy); no score is computed from damaged data."
    )


class CheckedZarr:
    """A :class:`zarr.Array` for ``dask.array.from_array``: reads through Zarr
    (its codecs, its checksums), and a read that fails names the chunk."""

    def __init__(self, arr: Any, name: str) -> None:
        self.arr, self.name = arr, name
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __dask_tokenize__(self) -> Any:
        from dask.base import tokenize

        return ("checked-zarr", tokenize(self.arr))

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self.arr[key]
        except (ValueError, RuntimeError, OSError, TypeError) as err:
            rows = key[0] if isinstance(key, tuple) else key
            span = f"rows {rows.start}-{rows.stop - 1}" if isinstance(rows, slice) else "rows"
            where = f"of {self.name} ({self.arr.store}/{self.arr.path}) for {span}"
            raise damaged(where, f"{type(err).__name__}: {err}") from err
