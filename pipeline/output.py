"""The results folder of a run: the tidy table, the coefficient arrays, atomic writes.

A run writes into its output folder:

- ``results.csv`` and ``results.parquet`` (when pyarrow is installed): the tidy
  table, one row per (pair, measure), columns :data:`COLUMNS`;
- ``coefficients.zarr``: a Zarr group with one subgroup per result (named by
  its ``result_id``) holding ``coefficients`` (and ``weights`` for PWCCA),
  its pair, measure and options in the attributes;
- ``job.json``: the job's parameters, the versions, and the run's state.

Every file and result group is written under a temporary name and renamed
into place (files by :func:`_atomic`, result groups by :func:`write_arrays`),
so a killed run leaves no half-written file. The
temporary names start with :data:`TMP_PREFIX`, and a run removes nothing else:
the folder may hold the user's own files. A run holds :func:`output_lock` on
the folder, so two runs never write into it at once; the lock is the kernel's
(``flock``), so a run that dies releases it and the next one takes it over.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import datetime as _dt
import errno
import fcntl
import io
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "COLUMNS",
    "LOCK_NAME",
    "RESULTS_FORMAT",
    "TMP_PREFIX",
    "OutputLockedError",
    "atomic_json",
    "has_arrays",
    "output_lock",
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
    "against",
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
    "warnings",
    "rows",
)
_INT_COLUMNS = ("n_samples", "n_coefficients", "x_kept", "y_kept")
RESULTS_FORMAT = 1


#: Start of every temporary name a run writes in its output folder: the only
#: names it ever removes there (besides the result groups in ``coefficients.zarr``).
TMP_PREFIX = ".svcca-dask-tmp-"
#: The lock file of an output folder (see :func:`output_lock`).
LOCK_NAME = ".svcca-dask.lock"


class OutputLockedError(RuntimeError):
    """Another run holds the output folder."""


@contextlib.contextmanager
def output_lock(output: str) -> Iterator[None]:
    """Hold the output folder for one run (an exclusive ``flock`` on its lock file).

    The lock file records the holder (pid, host, start time) for the message
    a second run gets. A lock whose process died is released by the kernel,
    so a stale lock file is simply taken over.

    Raises
    ------
    OutputLockedError
        If another run holds the folder; the message names it.
    """
    path = os.path.join(output, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise OutputLockedError(
                f"{output} is in use by another run ({holder}); wait for it to finish, "
                "or give this job another output folder"
            ) from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock


def _replace(src: str, dst: str) -> None:
    """Rename ``src`` over ``dst`` (atomic on POSIX file systems)."""
    os.replace(src, dst)


@contextlib.contextmanager
def _atomic(path: str) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; rename it over ``path`` if
    the block succeeds, remove it if not. Every file of the folder is written
    through it (result groups, folders, by :func:`write_arrays`)."""
    tmp = _tmp_name(os.path.dirname(path), os.path.basename(path))
    try:
        yield tmp
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _tmp_name(folder: str, what: str) -> str:
    return os.path.join(folder, f"{TMP_PREFIX}{what}-{uuid.uuid4().hex[:12]}")


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - not glibc >= 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # pragma: no cover
        return False
    raise OSError(code, os.strerror(code), b)


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
    """Write one result's arrays as ``group_path/result_id``, atomically.

    A new group is renamed into place; a group that exists (a forced rerun) is
    swapped with the new one in one step, so a row in the table never points
    to a missing group, even for a moment.
    """
    import zarr

    final = os.path.join(group_path, result_id)
    tmp = _tmp_name(os.path.dirname(group_path), result_id)
    try:
        g = zarr.open_group(tmp, mode="w", zarr_format=3, attributes=attrs)
        for name, value in arrays.items():
            g.create_array(name, data=np.ascontiguousarray(value, dtype=np.float64))
        if not os.path.exists(final):
            _replace(tmp, final)
        elif not _exchange(tmp, final):  # pragma: no cover - no RENAME_EXCHANGE here
            aside = _tmp_name(os.path.dirname(group_path), f"old-{result_id}")
            _replace(final, aside)
            _replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the old group after a swap, or a failed write


def has_arrays(group_path: str, row: dict[str, Any]) -> bool:
    """Whether the result group of ``row`` is in place."""
    return os.path.isfile(os.path.join(group_path, str(row["result_id"]), "zarr.json"))


def prune(output: str, group_path: str, keep: set[str]) -> None:
    """Remove result groups no row refers to (stale parameters or inputs), and the
    temporaries of runs that were killed (names starting with :data:`TMP_PREFIX`;
    the caller holds :func:`output_lock`, so no other run is writing them)."""
    for name in os.listdir(output):
        full = os.path.join(output, name)
        if not name.startswith(TMP_PREFIX):
            continue
        if os.path.isdir(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)
    for name in os.listdir(group_path):
        full = os.path.join(group_path, name)
        if name in keep or not os.path.isdir(full):
            continue
        if len(name) == 24 and all(c in "0123456789abcdef" for c in name):
            shutil.rmtree(full, ignore_errors=True)
