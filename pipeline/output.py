"""The results folder of a run: the tidy table, the coefficient arrays, atomic writes.

A run writes into its output folder:

- ``results.csv`` and ``results.parquet`` (when pyarrow is installed): the tidy
  table, one row per (pair, measure), columns :data:`COLUMNS`;
- ``coefficients.zarr``: a Zarr group with one subgroup per result (named by
  its ``result_id``) holding ``coefficients`` (and ``weights`` for PWCCA),
  its pair, measure and options in the attributes;
- ``job.json``: the job's parameters, the versions, and the run's state.

Every file and result group is written under a temporary name and renamed
into place (:func:`_atomic`), so a killed run leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "COLUMNS",
    "RESULTS_FORMAT",
    "atomic_json",
    "has_arrays",
    "prune",
    "read_table",
    "write_arrays",
    "write_table",
]

log = logging.getLogger(__name__)

#: Columns of the results table, in order.
COLUMNS = (
    "x_store",
    "x_layer",
    "y_store",
    "y_layer",
    "measure",
    "score",
    "n_samples",
    "n_coefficients",
    "x_kept",
    "y_kept",
    "options",
    "result_id",
    "x_path",
    "y_path",
    "computed_at",
)
_INT_COLUMNS = ("n_samples", "n_coefficients", "x_kept", "y_kept")
RESULTS_FORMAT = 1


def _replace(src: str, dst: str) -> None:
    """Rename ``src`` over ``dst`` (atomic on POSIX file systems)."""
    os.replace(src, dst)


@contextlib.contextmanager
def _atomic(path: str, *, tmp: str | None = None) -> Iterator[str]:
    """Yield a temporary name beside ``path``; rename it over ``path`` if the
    block succeeds, remove it (file or folder) if not. The one atomic write
    of this module: every file and result group goes through it."""
    tmp = tmp or f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        yield tmp
        _replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def _atomic_bytes(path: str, data: bytes) -> None:
    with _atomic(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path``, atomically."""
    _atomic_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_table(output: str, rows: list[dict[str, Any]]) -> None:
    """Write the tidy table (CSV, and Parquet when pyarrow is installed), atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    _atomic_bytes(os.path.join(output, "results.csv"), buf.getvalue().encode())
    parquet = os.path.join(output, "results.parquet")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(parquet)  # never leave a table that disagrees with the CSV
        return
    types = {
        "score": pa.float64(),
        **{c: pa.int64() for c in _INT_COLUMNS},
    }
    schema = pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=schema)
    with _atomic(parquet) as tmp:
        pq.write_table(table, tmp)


def read_table(output: str) -> list[dict[str, Any]]:
    """The rows of ``results.csv`` in ``output`` (none if there is no table yet)."""
    path = os.path.join(output, "results.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        try:
            row: dict[str, Any] = {k: (r.get(k) or None) for k in COLUMNS}
            row["score"] = float(r["score"])
            for c in _INT_COLUMNS:
                row[c] = int(r[c]) if r.get(c) else None
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring an unreadable row of %s: %r", path, r)
            continue
        out.append(row)
    return out


def write_arrays(
    group_path: str, result_id: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]
) -> None:
    """Write one result's arrays as ``group_path/result_id``, atomically (rename into place)."""
    import zarr

    final = os.path.join(group_path, result_id)
    tmp = os.path.join(os.path.dirname(group_path), f".tmp-{result_id}-{uuid.uuid4().hex[:8]}")
    with _atomic(final, tmp=tmp):
        g = zarr.open_group(tmp, mode="w", zarr_format=3, attributes=attrs)
        for name, value in arrays.items():
            g.create_array(name, data=np.ascontiguousarray(value, dtype=np.float64))
        if os.path.exists(final):
            shutil.rmtree(final)


def has_arrays(group_path: str, row: dict[str, Any]) -> bool:
    """Whether the result group of ``row`` is in place."""
    return os.path.isfile(os.path.join(group_path, str(row["result_id"]), "zarr.json"))


def prune(output: str, group_path: str, keep: set[str]) -> None:
    """Remove result groups no row refers to (stale parameters or inputs), and leftovers of kills."""
    for name in os.listdir(output):
        full = os.path.join(output, name)
        if name.startswith(".tmp-") and os.path.isdir(full):
            shutil.rmtree(full, ignore_errors=True)
        elif name.endswith(".tmp") and os.path.isfile(full):
            os.unlink(full)
    for name in os.listdir(group_path):
        full = os.path.join(group_path, name)
        if name in keep or not os.path.isdir(full):
            continue
        if name.startswith(".tmp-") or (
            len(name) == 24 and all(c in "0123456789abcdef" for c in name)
        ):
            shutil.rmtree(full, ignore_errors=True)
