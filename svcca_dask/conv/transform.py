"""The DFT path's inner loop: transform a row chunk and fold it into a lane.

:func:`_coefficients_into` computes the planned DFT coefficients of one side's
chunk (an rfft along the width, then the needed columns along the height);
:func:`dft_fold` centres them and merges them into the lane's packed
per-frequency accumulator with one ``zhfrk`` per frequency, which is exactly
the Chan/Pebay merge of :func:`svcca_dask.stats.moments_combine`.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import scipy.fft as sfft

from .._lapack import hfrk_update, packed_size
from ..io.chunks import CHUNK_READERS, read_piece
from ..stats import moments_combine, raise_non_finite
from .buffers import Recycler, fold_pool, new_complex, read_pool, release_free_memory
from .plan import FrequencyPlan, Gather

__all__: list[str] = []

#: Bytes of float64 image data transformed at once inside a task (and of the
#: gathered coefficients staged before their frequency-major write).
_FFT_BATCH_BYTES = 16 * 2**20


#: Below one needed rfft column in this many, the columns' DFT is done directly.
_DIRECT_DFT_RATIO = 2


def _coefficients_into(
    buf: np.ndarray,
    offset: int,
    block: np.ndarray,
    layout: str | None,
    shape: tuple[int, int, int],
    g: Gather,
    workers: int = 1,
) -> None:
    """Write the planned DFT coefficients of one side's row chunk into
    ``buf[:, offset:offset + C, :m]`` (frequency, channel, image)."""
    c, h, w = shape
    m = block.shape[0]
    if layout is None:  # a 2-D side: a 1x1 map, its only coefficient is itself
        buf[0, offset : offset + c, :m] = np.asarray(block, dtype=np.float64).T
        return
    hax, wax = layout.index("H"), layout.index("W")
    if g.columns.size == 1 and g.columns[0] == 0 and np.all(g.rows == 0):
        # DC only (the other side is 2-D or 1x1): the spatial sum, no FFT
        s = block.sum(axis=(hax, wax), dtype=np.float64)  # (m, C)
        buf[0, offset : offset + c, :m] = s.T
        return
    per_image = c * h * w * 8
    step = max(1, _FFT_BATCH_BYTES // per_image)
    cax = layout.index("C")
    ncols = g.columns.size
    # a narrow band of columns (a pass over part of the frequencies): the DFT
    # of just those columns as one real GEMM beats a full rfft along W
    direct = ncols * _DIRECT_DFT_RATIO < w // 2 + 1
    if direct:
        angle = (-2 * np.pi / w) * np.outer(np.arange(w), g.columns)
        # cos and sin interleaved: the product read as complex128 is cos + i sin
        cos_sin = np.stack([np.cos(angle), np.sin(angle)], axis=-1).reshape(w, 2 * ncols)
    # H and the computed columns become one axis (adjacent in both layouts)
    flat = g.rows * ncols + g.cols
    f_count = flat.size
    # The gathered coefficients come out image-major, (m, C, F) or (m, F, C);
    # they are staged for several steps and written frequency-major once per
    # group: a transposing write whose innermost run is one step's 2 images
    # costs about as much as the FFT and the GEMM together.
    group = min(m, max(step, _FFT_BATCH_BYTES // max(1, c * f_count * 16)))
    stage = np.empty((group, c, f_count) if cax == 1 else (group, f_count, c), np.complex128)
    for g0 in range(0, m, group):
        gm = min(group, m - g0)
        for s0 in range(g0, g0 + gm, step):
            b = np.asarray(block[s0 : min(s0 + step, g0 + gm)], dtype=np.float64)
            if direct:
                prod = np.moveaxis(b, wax, -1) @ cos_sin
                r = np.moveaxis(prod.view(np.complex128), -1, wax)
            else:
                r = sfft.rfft(b, axis=wax, workers=workers)
                if ncols < r.shape[wax]:
                    r = np.take(r, g.columns, axis=wax)
            r = sfft.fft(r, axis=hax, workers=workers, overwrite_x=True)
            r = np.ascontiguousarray(r)
            k = r.shape[0]
            # NCHW: (k, C, H, cols) -> (k, C, F); NHWC: (k, H, cols, C) -> (k, F, C)
            shape = (k, c, -1) if cax == 1 else (k, -1, c)
            # mode="wrap" (the indices are in range): "raise" would buffer the output
            np.take(
                r.reshape(shape),
                flat,
                axis=2 if cax == 1 else 1,
                out=stage[s0 - g0 : s0 - g0 + k],
                mode="wrap",
            )
        st = stage[:gm]
        if g.conj.any():
            sel = (slice(None), slice(None), g.conj) if cax == 1 else (slice(None), g.conj)
            st[sel] = st[sel].conj()
        # (k, C, F) -> (F, C, k); (k, F, C) -> (F, C, k)
        buf[:, offset : offset + c, g0 : g0 + gm] = (
            st.transpose(2, 1, 0) if cax == 1 else st.transpose(1, 2, 0)
        )


def _rows_of(piece: Any) -> int:
    return int(piece.rows if isinstance(piece, CHUNK_READERS) else piece.shape[0])


def dft_fold(
    acc: dict[str, Any] | None,
    xb: Any,
    yb: Any,
    *,
    plan: FrequencyPlan,
    idx: np.ndarray,
    names: tuple[str, str],
    row_start: int,
    with_scale: bool = False,
    threads: int = 1,
    last: bool = False,
    arrays: Recycler | None = None,
    owned: bool = True,
) -> dict[str, Any]:
    """Merge one row chunk into a lane's per-frequency statistics, in place
    (``owned``) or into a copy of them.

    ``xb`` and ``yb`` are the chunk of each layer, or lists of consecutive
    pieces of it (stored chunks, read one at a time and one ahead) with the
    same row counts on both sides. The chunk's DFT coefficients ``Z``
    (frequency, channel, image) are centred on the chunk mean, and one extra
    column ``sqrt(na nb / n) (mean_b - mean_a)`` is appended: then
    ``acc.m2 += Z Z^H`` per frequency is exactly the Chan/Pebay merge of
    :func:`svcca_dask.stats.moments_combine` (``M = Ma + Mb + (na nb / n)
    d d^H``), done by one ``zhfrk`` per frequency that writes into the
    accumulator: half the flops of a general product, no partial statistics
    allocated, no separate merge pass over the accumulator. ``m2`` holds
    each frequency's Hermitian matrix in rectangular full packed storage
    (half the memory of a square one, :mod:`svcca_dask._lapack`).

    With ``threads > 1`` the two layers are read and transformed in two
    threads, and the frequencies are centred and merged in ``threads``
    threads (``zhfrk`` through ctypes releases the GIL): one accumulator,
    all cores.

    On threads the accumulator is owned by its lane: each fold task is the
    only consumer of the previous one's result and the threaded scheduler
    runs every task once, so updating it in place is safe. Its coefficient
    buffer is kept for the lane's next task unless ``last``; with ``arrays``
    both come from that :class:`Recycler`. With ``owned=False`` (a
    ``distributed`` cluster, where a task can run again after its worker
    died, or its input be copied to another worker while it runs) the task
    mutates nothing it did not allocate: it folds into a copy of the
    accumulator and keeps no buffer for the next task.

    With ``with_scale``, the variance of every single activation (channel,
    position) is accumulated too, as ``P`` independent 1 x 1 problems merged
    by the same :func:`moments_combine`: it sets the dead-channel threshold
    (:attr:`DFTStats.x_scale`) in the same pass.
    """
    xs = xb if isinstance(xb, list) else [xb]
    ys = yb if isinstance(yb, list) else [yb]
    sizes = [_rows_of(p) for p in xs]
    if sizes != [_rows_of(p) for p in ys]:  # pragma: no cover - the graph aligns them
        raise ValueError("the pieces of x and y must have the same rows")
    m = sum(sizes)
    cx, cy = plan.x_shape[0], plan.y_shape[0]
    f_count, d = idx.size, cx + cy
    if acc is not None and not owned:  # a copy of our own: the input stays as it was
        acc = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in acc.items()}
    # the coefficient buffer is reused by the lane's next task (buffers this
    # large are mapped fresh by malloc and page-faulted on every use otherwise)
    buf = acc.pop("_buf", None) if acc is not None else None
    if buf is None or buf.shape[0] != f_count or buf.shape[2] < m + 1:
        buf = new_complex((f_count, d, m + 1), arrays)
    z = buf[:, :, : m + 1]
    gx, gy = plan.gather(plan.x_shape, idx), plan.gather(plan.y_shape, idx)
    positions: dict[str, list[dict[str, Any]]] = {"x_pos": [], "y_pos": []}
    sides = (
        (names[0], 0, plan.x_layout, plan.x_shape, gx, "x_pos"),
        (names[1], cx, plan.y_layout, plan.y_shape, gy, "y_pos"),
    )
    parallel = threads > 1
    fft_workers = max(1, threads // 2)

    def side(b: Any, offset: int, rows: int, spec: tuple) -> None:
        name, c0, layout, shape, g, key = spec
        if with_scale:  # checked in the first pass only: later passes read the same data
            pm = _position_moments(np.asarray(b))
            if not (np.all(np.isfinite(pm["mean"])) and np.all(np.isfinite(pm["m2"]))):
                raise_non_finite([np.asarray(b).reshape(rows, -1)], [name], row_start + offset)
            positions[key].append(pm)
        view = z[:, :, offset : offset + rows]
        _coefficients_into(view, c0, b, layout, shape, g, workers=fft_workers)

    def all_pieces(pieces: list[Any], spec: tuple) -> None:
        # with threads to spare, the next piece is read while this one is
        # transformed (a read mostly waits on the file or on Zarr's threads)
        ahead = parallel and any(isinstance(p, CHUNK_READERS) for p in pieces)
        nxt = read_pool().submit(read_piece, pieces[0]) if ahead else None
        offset = 0
        for i, rows in enumerate(sizes):
            if nxt is not None:
                b = nxt.result()
                nxt = read_pool().submit(read_piece, pieces[i + 1]) if i + 1 < len(pieces) else None
            else:
                b = read_piece(pieces[i])
            side(b, offset, rows, spec)
            del b
            offset += rows

    if parallel:  # one thread per layer, each reading its pieces in order
        other = fold_pool().submit(all_pieces, ys, sides[1])
        all_pieces(xs, sides[0])
        other.result()
    else:
        all_pieces(xs, sides[0])
        all_pieces(ys, sides[1])
    if acc is None:
        acc = {
            "n": 0,
            "mean": np.zeros((f_count, d), dtype=np.complex128),
            "m2": new_complex((f_count, packed_size(d)), arrays, zero=True),
        }
    if with_scale:
        for key, parts in positions.items():
            acc[key] = moments_combine([acc.get(key, _EMPTY), *parts])
    na = acc["n"]
    tot = na + m
    weight = np.sqrt(na * m / tot)

    def merge(sl: slice) -> None:
        zs = z[sl]
        mean_b = zs[:, :, :m].mean(axis=2)
        zs[:, :, :m] -= mean_b[:, :, None]
        delta = mean_b - acc["mean"][sl]
        zs[:, :, m] = weight * delta
        acc["mean"][sl] += delta * (m / tot)
        hfrk_update(acc["m2"][sl], zs)

    if parallel and f_count > 1:
        cuts = np.linspace(0, f_count, min(threads, f_count) + 1).astype(int)
        list(fold_pool().map(merge, [slice(a, b) for a, b in itertools.pairwise(cuts)]))
    else:
        merge(slice(0, f_count))
    acc["n"] = tot
    if not last and owned:  # the lane's next task reuses it
        acc["_buf"] = buf
    else:  # not after every task: the next one would page-fault it all back in
        release_free_memory()
    return acc


_EMPTY: dict[str, Any] = {"n": 0, "mean": np.zeros((0, 1)), "m2": np.zeros((0, 1, 1))}


def _position_moments(b: np.ndarray) -> dict[str, Any]:
    """Chunk statistics of every activation taken alone: ``P`` problems of size 1.
    A NaN or infinity anywhere makes the result non-finite (the caller checks)."""
    flat = b.reshape(b.shape[0], -1)
    mean = flat.mean(axis=0, dtype=np.float64)
    m2 = np.zeros_like(mean)
    step = max(1, _FFT_BATCH_BYTES // (8 * max(1, flat.shape[1])))
    for s0 in range(0, flat.shape[0], step):  # float64 temporaries of ~16 MiB
        dev = np.subtract(flat[s0 : s0 + step], mean, dtype=np.float64)
        m2 += np.einsum("ij,ij->j", dev, dev)
    return {"n": flat.shape[0], "mean": mean[:, None], "m2": m2[:, None, None]}
