"""Row chunks read inside the task that needs them: one mechanism for every pass.

Every row-chunk task (the covariance path's and a matrix's statistics, the DFT
path's folds) reads the rows it needs of every input itself, so no activation
chunk is a task result of its own: on a cluster none travels between workers
(only partial statistics do), and on threads reads cannot run ahead of the
tasks and hold the data. :func:`task_readers` gives one reader per row chunk;
:class:`_ChunkGetter` computes the chunk's culled graph synchronously inside the
task (a Zarr read, or the stored chunks a coarser task row group spans, and any
reduction applied to them); :class:`StoredChunk` reads a stored Zarr chunk's
file and decodes it directly, for the arrays :func:`stored_chunk_readers` accepts
(where that equals Zarr's read). An in-memory (NumPy) input's chunk is inlined
in its reader's graph by Dask: it travels once, from the client, with its task.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import dask.array as da
import numpy as np

from ..inputs import ArrayLike, Layer
from .checked import damaged

__all__: list[str] = []


class _ChunkGetter:
    """One row chunk's (culled) graph, computed synchronously inside the task that needs it."""

    def __init__(self, block: Any, rows: int) -> None:
        from dask.optimization import cull

        self.key = block.key
        self.rows = int(rows)
        self.graph, _ = cull(dict(block.__dask_graph__()), [self.key])

    def __call__(self) -> np.ndarray:
        from dask.local import get_sync

        return np.asarray(get_sync(self.graph, self.key))

    def __dask_tokenize__(self) -> tuple[str, Any]:
        return ("chunk-getter", self.key)  # the block's key names its content


class StoredChunk:
    """One stored chunk of a Zarr array in a local folder, its file read and
    Blosc-decoded directly (for the arrays :func:`stored_chunk_readers` accepts).

    Zarr's own read of a stored chunk adds its event loop, and buffers copied
    and freshly allocated in its threads, to the file read and the decode
    (benchmarks/RESULTS.md, conv). Every pass of the DFT path reads every chunk.
    """

    def __init__(
        self,
        path: str,
        shape: tuple[int, ...],
        rows: int,
        dtype: np.dtype,
        fill: Any,
        *,
        crc: bool = False,
    ) -> None:
        self.path, self.shape, self.rows = path, shape, int(rows)
        self.dtype, self.fill, self.crc = dtype, fill, crc

    def __call__(self) -> np.ndarray:
        from numcodecs import blosc

        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:  # never written: Zarr reads the fill value
            return np.full((self.rows, *self.shape[1:]), self.fill, dtype=self.dtype)
        if self.crc:  # the crc32c codec: the data, then its CRC32C as little-endian uint32
            import google_crc32c

            body, stored = raw[:-4], raw[-4:]
            if len(raw) < 4 or google_crc32c.value(body) != int.from_bytes(stored, "little"):
                raise damaged(self.path, "its CRC32C checksum does not match its bytes")
            raw = body
        out = np.empty(self.shape, dtype=self.dtype)
        try:
            blosc.decompress(raw, out)
        except Exception as err:
            raise damaged(self.path, f"it does not decode ({err})") from err
        return out[: self.rows]


def task_readers(arr: da.Array) -> list[_ChunkGetter]:
    """One reader per row chunk of ``arr``, called inside the task that needs the rows."""
    blocks = arr.to_delayed(optimize_graph=True).reshape(-1)
    return [_ChunkGetter(b, r) for b, r in zip(blocks, arr.chunks[0], strict=True)]


#: Pieces of a fold task that read their chunk when called.
CHUNK_READERS = (_ChunkGetter, StoredChunk)


def read_piece(piece: Any) -> Any:
    return piece() if isinstance(piece, CHUNK_READERS) else piece


def load_all(pieces: Any) -> tuple[Any, ...]:
    """Each piece read (:func:`read_piece`), a reader that appears twice (a layer
    against itself) read once."""
    done: dict[int, Any] = {}
    for p in pieces:
        if id(p) not in done:
            done[id(p)] = read_piece(p)
    return tuple(done[id(p)] for p in pieces)


def stored_chunk_readers(source: ArrayLike, arr: da.Array) -> list[StoredChunk] | None:
    """Direct readers of the stored chunks of ``arr`` (opened from the Zarr
    array ``source``), one per Dask chunk, or None where Zarr must read.

    Only where the direct read is exactly Zarr's: format 3 in a
    :class:`zarr.storage.LocalStore`, the codecs ``bytes`` (native byte
    order) then ``blosc``, then optionally ``crc32c`` (checked here as Zarr
    checks it), and nothing else, a regular grid whole along every
    axis but the first, and Dask chunks equal to the stored ones.
    """
    if isinstance(source, Layer):
        source = source.zarr
    try:
        import zarr
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr is a dependency
        return None
    if not isinstance(source, zarr.Array) or source.metadata.zarr_format != 3:
        return None
    meta = source.metadata
    codecs = tuple(meta.codecs)
    crc = len(codecs) == 3 and isinstance(codecs[2], Crc32cCodec)
    if crc:
        codecs = codecs[:2]
    dtype = np.dtype(source.dtype)
    if (
        not isinstance(source.store, LocalStore)
        or getattr(meta, "storage_transformers", ())
        or len(codecs) != 2
        or not isinstance(codecs[0], BytesCodec)
        or not isinstance(codecs[1], BloscCodec)
        or dtype.kind not in "fiu"
        or (dtype.itemsize > 1 and getattr(codecs[0].endian, "value", None) != sys.byteorder)
        or tuple(source.shape) != tuple(arr.shape)
        or np.dtype(arr.dtype) != dtype
    ):
        return None
    chunks = tuple(int(c) for c in source.chunks)
    n = int(source.shape[0])
    grid = tuple(min(chunks[0], n - i) for i in range(0, n, chunks[0]))
    if chunks[1:] != tuple(source.shape[1:]) or tuple(arr.chunks[0]) != grid:
        return None
    root = os.path.join(str(source.store.root), source.path)
    rest = (0,) * (len(chunks) - 1)
    return [
        StoredChunk(
            os.path.join(root, meta.encode_chunk_key((i, *rest))),
            chunks,
            rows,
            dtype,
            source.fill_value,
            crc=crc,
        )
        for i, rows in enumerate(grid)
    ]
