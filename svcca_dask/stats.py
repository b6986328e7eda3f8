"""One-pass co-moment statistics: per-chunk partials and their pairwise merge.

The statistics of ``k`` arrays that share their rows (layers of one network
over the same samples) are the count, the means and the centred cross-product
matrix of their column-stack ``Z = [x_1, ..., x_k]``::

    n, mean = Z.mean(0), M = (Z - mean).T @ (Z - mean)

Every measure in this package (CCA, SVCCA, PWCCA, linear CKA) is a function of
the diagonal and off-diagonal blocks of ``M / (n - 1)``.

Each row chunk gives one partial (computed in one fused task: read, cast into a
float64 buffer, centre on the chunk mean, one SYRK); partials merge pairwise
(Chan, Golub & LeVeque 1979; Pebay 2008)::

    n = na + nb,  d = mean_b - mean_a,
    mean = mean_a + d * nb / n,
    M = Ma + Mb + (na * nb / n) * outer(d, d)

in a tree reduction shaped like :func:`dask.array.reductions._tree_reduce`.
The naive ``sum(z z^T) - n m m^T`` is never formed: activations after a ReLU
have large means and that form loses every digit.

References
----------
Chan, T. F., Golub, G. H. & LeVeque, R. J. (1979). Updating formulae and a
pairwise algorithm for computing sample variances.
Pebay, P. (2008). Formulas for robust, one-pass parallel computation of
covariances and arbitrary-order statistical moments. Sandia SAND2008-6212.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.delayed import Delayed, delayed

from . import _config
from ._config import DEFAULT_SPLIT_EVERY
from .io.chunks import load_all, task_readers
from .scheduler import compute, read_bytes, scheduler_threads

__all__ = [
    "Moments",
    "PairStats",
    "Region",
    "accumulate",
    "accumulate_graph",
    "accumulate_graphs",
    "moments_chunk",
    "moments_chunks",
    "moments_combine",
    "pair_stats",
    "row_groups",
]

#: Row-group tasks per scheduler thread in one tree: each task streams its
#: consecutive row chunks into one partial, so the partials (the bytes that
#: travel between workers, and what a reduction holds) are few, while the
#: tasks stay enough to balance the threads and to show progress.
TASKS_PER_THREAD = 4


@dataclass(frozen=True)
class Moments:
    """Co-moment statistics of column-stacked arrays.

    Attributes
    ----------
    n : int
        Number of samples (rows).
    mean : ndarray, shape (..., d)
        Column means, float64 (complex128 for complex input). Leading
        dimensions, if any, index independent problems (one per frequency on
        the DFT path, see :mod:`svcca_dask.conv`).
    comoment : ndarray, shape (..., d, d)
        Centred cross products ``(Z - mean).T @ (Z - mean)`` (conjugate
        transpose for complex input), float64.
    sizes : tuple of int
        Feature count of each stacked array, in order; ``sum(sizes) == d``.
    norms : ndarray, shape (L, L), optional
        With ``norms=True`` accumulation: ``N.T @ N`` where ``N[i, l]`` is the
        squared norm of sample ``i`` of array ``l``, centred (what debiased
        CKA needs besides the co-moment).
    """

    n: int
    mean: np.ndarray
    comoment: np.ndarray
    sizes: tuple[int, ...]
    norms: np.ndarray | None = None

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start column of each stacked array, plus the total at the end."""
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.sizes)]))

    def _slice(self, i: int) -> slice:
        o = self.offsets
        return slice(o[i], o[i + 1])

    def cov(self, i: int, j: int) -> np.ndarray:
        """Sample covariance block between stacked arrays ``i`` and ``j`` (ddof=1)."""
        return self.comoment[..., self._slice(i), self._slice(j)] / (self.n - 1)

    def block_mean(self, i: int) -> np.ndarray:
        """Column means of stacked array ``i``."""
        return self.mean[..., self._slice(i)]


@dataclass(frozen=True)
class PairStats:
    """Covariance statistics of one pair of layers.

    Attributes
    ----------
    n : int
        Number of samples.
    x_mean, y_mean : ndarray, shape (dx,), (dy,)
    sxx, sxy, syy : ndarray
        Sample covariance blocks (ddof=1), float64.
    norms : ndarray, shape (2, 2), optional
        Sums of products of the centred samples' squared norms,
        ``[[sum a a, sum a b], [sum b a, sum b b]]`` with ``a_i = |x_i - x_mean|^2``
        and ``b_i = |y_i - y_mean|^2`` (accumulated with ``norms=True``).
    """

    n: int
    x_mean: np.ndarray
    y_mean: np.ndarray
    sxx: np.ndarray
    sxy: np.ndarray
    syy: np.ndarray
    norms: np.ndarray | None = None


def pair_stats(m: Moments, i: int = 0, j: int = 1) -> PairStats:
    """The :class:`PairStats` of stacked arrays ``i`` and ``j`` of ``m``."""
    return PairStats(
        n=m.n,
        x_mean=m.block_mean(i),
        y_mean=m.block_mean(j),
        sxx=m.cov(i, i),
        sxy=m.cov(i, j),
        syy=m.cov(j, j),
        norms=None if m.norms is None else m.norms[np.ix_([i, j], [i, j])],
    )


Region = tuple[int, int, int, int]
"""Rows ``r0:r1`` by columns ``c0:c1`` of the stacked co-moment matrix."""


def moments_chunk(
    *blocks: np.ndarray,
    names: Sequence[str] | None = None,
    row_start: int = 0,
    regions: Sequence[Region] | None = None,
    chunk_starts: Sequence[Sequence[int]] | None = None,
    norms: bool = False,
) -> dict[str, Any]:
    """Partial statistics of one row chunk of several arrays.

    Parameters
    ----------
    *blocks : ndarray, shape (m, d_i), or readers
        The same rows of each array, or readers that read them
        (:func:`svcca_dask.io.chunks.task_readers`).
    names : sequence of str, optional
        Names of the arrays, for error messages.
    row_start : int
        Index of the chunk's first row in the whole array, for error messages.
    regions : sequence of (r0, r1, c0, c1), optional
        Only these blocks of the stacked co-moment (a diagonal block is a
        SYRK, an off-diagonal one a GEMM): a layer x layer matrix between two
        networks needs each layer's own block and the x-by-y cross block, not
        the x-x and y-y cross blocks. Default: the whole ``(d, d)`` matrix in
        one SYRK.
    chunk_starts : sequence of sequence of int, optional
        Per array, the first rows of its stored chunks that overlap these rows
        (a task may read several): error messages name the stored chunk.
    norms : bool
        Also the sums of products of each array's centred per-sample squared
        norms (``"q"``, ``(L, L)``) and of those norms with the centred
        features (``"v"``, ``(L, d)``, what moving the centre needs): the
        statistics of debiased CKA. Not with ``regions``.

    Returns
    -------
    dict
        ``{"n": m, "mean": (d,), "m2": (d, d)}`` in float64; with ``regions``,
        ``"m2"`` is a list of blocks and ``"regions"`` the regions; with
        ``norms``, ``"q"``, ``"v"`` and ``"edges"`` (the arrays' column ranges).

    Raises
    ------
    ValueError
        If any value is NaN or infinite (the message names the array, the rows
        and the chunk), or if an array's values are so large that their
        squares overflow float64, or vary so little that they underflow (the
        message names the array and says to rescale it: every measure is
        invariant to a layer's scale).

    Notes
    -----
    A chunk whose float64 buffer would exceed about ``DEFAULT_CHUNK_BYTES``
    is processed in row pieces merged with :func:`moments_combine` as they
    come (so a task holds two partials at a time, however many pieces):
    buffers of 32 MiB and more are mapped fresh by malloc and page-fault on
    every use.
    """
    blocks = load_all(blocks)  # readers (task_readers) read here, each once
    m = blocks[0].shape[0]
    width = sum(b.shape[1] for b in blocks)
    step = max(1, _config.DEFAULT_CHUNK_BYTES // (8 * max(width, 1)))
    if norms and regions is not None:
        raise ValueError("norms=True needs the whole co-moment (no regions)")
    if m > 1.5 * step:
        acc = None
        for a in range(0, m, step):  # merged as they come: two partials at a time, not all
            part = _piece_moments(
                [b[a : a + step] for b in blocks],
                names,
                row_start + a,
                regions,
                chunk_starts,
                norms,
            )
            acc = part if acc is None else moments_combine([acc, part], inplace=True)
        return acc
    return _piece_moments(blocks, names, row_start, regions, chunk_starts, norms)


def _piece_moments(
    blocks: Sequence[np.ndarray],
    names: Sequence[str] | None,
    row_start: int,
    regions: Sequence[Region] | None,
    chunk_starts: Sequence[Sequence[int]] | None = None,
    norms: bool = False,
) -> dict[str, Any]:
    m = blocks[0].shape[0]
    widths = [b.shape[1] for b in blocks]
    # One float64 buffer: the cast and the stack in a single copy, then SYRK/GEMM.
    buf = np.empty((m, sum(widths)), dtype=np.float64)
    start = 0
    for b, w in zip(blocks, widths, strict=True):
        buf[:, start : start + w] = b
        start += w
    with np.errstate(over="ignore", invalid="ignore"):
        col_sum = buf.sum(axis=0)
    if not np.all(np.isfinite(col_sum)):
        raise_non_finite(blocks, names, row_start, chunk_starts)
    mean = col_sum / m
    buf -= mean
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        if regions is None:
            m2 = buf.T @ buf  # A.T @ A on one buffer runs as SYRK
            diag = np.diagonal(m2)
        else:
            m2 = []
            for r0, r1, c0, c1 in regions:
                rows = buf[:, r0:r1]
                m2.append(rows.T @ rows if (r0, r1) == (c0, c1) else rows.T @ buf[:, c0:c1])
            diag = np.ones(buf.shape[1])  # columns no own block covers are not checked
            for block, (r0, r1, c0, c1) in zip(m2, regions, strict=True):
                if (r0, r1) == (c0, c1):
                    diag[r0:r1] = np.diagonal(block)
    _check_range(diag, buf, blocks, names)
    out = {"n": m, "mean": mean, "m2": m2}
    if regions is not None:
        out["regions"] = tuple(regions)
    if norms:
        out.update(_norm_moments(buf, widths, blocks, names))
    return out


def _norm_moments(
    buf: np.ndarray,
    widths: Sequence[int],
    blocks: Sequence[np.ndarray],
    names: Sequence[str] | None,
) -> dict[str, Any]:
    """The per-sample squared norms' statistics of a centred chunk (see
    :func:`moments_chunk`); fourth powers that overflow are an error."""
    edges = tuple(itertools.pairwise(np.cumsum([0, *widths]).tolist()))
    sq = np.empty((buf.shape[0], len(edges)))
    for k, (a, b) in enumerate(edges):
        sq[:, k] = np.einsum("ij,ij->i", buf[:, a:b], buf[:, a:b])
    with np.errstate(over="ignore", invalid="ignore"):
        q = sq.T @ sq
    if not np.all(np.isfinite(q)):
        k = int(np.flatnonzero(~np.isfinite(q).all(axis=0))[0])
        name = names[k] if names is not None else f"array {k}"
        top = float(np.max(np.abs(np.asarray(blocks[k], dtype=np.float64)), initial=0.0))
        raise ValueError(
            f"{name} has values up to {top:.3g}: the squares of its per-sample squared norms "
            "(debiased CKA's statistics) overflow float64. Divide the activations by a "
            "constant first (every measure is invariant to a layer's scale)."
        )
    return {"q": q, "v": sq.T @ buf, "edges": edges}


def _shift_norms(part: dict[str, Any], delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A part's ``q`` and ``v`` about its mean moved by ``-delta`` (the merged
    mean is ``part mean - delta``).

    With ``Z`` the part's centred rows, ``N`` its per-sample squared norms,
    ``D`` the ``(d, L)`` block-diagonal matrix of ``delta``'s array blocks,
    ``e_l = |delta_l|^2`` and ``t_l`` the traces of the own co-moment blocks:
    ``N' = N + 2 Z D + 1 e^T``, so ``q' = q + 2 (v D + (v D)^T) + 4 D^T M2 D +
    t e^T + e t^T + n e e^T`` and ``v' = v + t delta^T + 2 (M2 D)^T + n e delta^T``
    (``Z`` sums to zero). Exact; ``delta`` is small next to the spread, so it
    stays accurate where raw fourth moments would cancel.
    """
    edges, m2, n = part["edges"], part["m2"], part["n"]
    dm = np.zeros((delta.shape[0], len(edges)))
    for k, (a, b) in enumerate(edges):
        dm[a:b, k] = delta[a:b]
    e = np.sum(dm * dm, axis=0)
    t = np.array([np.trace(m2[a:b, a:b]) for a, b in edges])
    m2d = m2 @ dm
    vd = part["v"] @ dm
    q = part["q"] + 2 * (vd + vd.T) + 4 * (dm.T @ m2d) + np.outer(t, e) + np.outer(e, t)
    q += n * np.outer(e, e)
    v = part["v"] + np.outer(t, delta) + 2 * m2d.T + n * np.outer(e, delta)
    return q, v


def _check_range(
    diag: np.ndarray, buf: np.ndarray, blocks: Sequence[np.ndarray], names: Sequence[str] | None
) -> None:
    """Refuse values whose squares leave float64's range (the caller checked that
    the values themselves are finite): sums of squares that overflow, or
    variation whose squares underflow, which would read as a dead layer."""
    tiny = np.finfo(np.float64).tiny
    over = ~np.isfinite(diag)
    low = np.flatnonzero(diag < tiny)
    under = np.zeros(diag.shape, dtype=bool)
    if low.size:  # exactly constant columns (dead features) are fine
        under[low] = np.any(buf[:, low] != 0, axis=0)
    if not (over.any() or under.any()):
        return
    edges = np.cumsum([0] + [b.shape[1] for b in blocks])
    for i, b in enumerate(blocks):
        name = names[i] if names is not None else f"array {i}"
        sl = slice(edges[i], edges[i + 1])
        top = float(np.max(np.abs(np.asarray(b, dtype=np.float64)), initial=0.0))
        if over[sl].any():
            raise ValueError(
                f"{name} has values up to {top:.3g}: their squares overflow float64. "
                "Divide the activations by a constant first (every measure is invariant to "
                "a layer's scale)."
            )
        if under[sl].any():
            raise ValueError(
                f"{name} has values that vary so little (largest |value| {top:.3g}) that "
                "their squares underflow float64 and would read as zero variance. Multiply "
                "the activations by a constant first (every measure is invariant to a "
                "layer's scale)."
            )


def raise_non_finite(
    blocks: Sequence[np.ndarray],
    names: Sequence[str] | None,
    row_start: int,
    chunk_starts: Sequence[Sequence[int]] | None = None,
) -> None:
    for i, b in enumerate(blocks):
        bad = ~np.isfinite(np.asarray(b, dtype=np.float64))
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1)) + row_start
            name = names[i] if names is not None else f"array {i}"
            shown = ", ".join(str(r) for r in rows[:5]) + (" ..." if rows.size > 5 else "")
            starts = np.asarray(chunk_starts[i] if chunk_starts is not None else [row_start])
            first = int(starts[starts <= rows[0]].max(initial=row_start))
            raise ValueError(
                f"{name} contains NaN or infinite values in rows {shown} "
                f"(chunk starting at row {first}); clean or mask these samples first."
            )
    tops = [float(np.max(np.abs(np.asarray(b, dtype=np.float64)), initial=0.0)) for b in blocks]
    i = int(np.argmax(tops))
    name = names[i] if names is not None else f"array {i}"
    raise ValueError(
        f"{name} has values up to {tops[i]:.3g}: their sums overflow float64. Divide the "
        "activations by a constant first (every measure is invariant to a layer's scale)."
    )


def moments_combine(parts: Sequence[dict[str, Any]], *, inplace: bool = False) -> dict[str, Any]:
    """Merge partial statistics pairwise (Chan / Pebay update).

    Parameters
    ----------
    parts : sequence of dict
        Outputs of :func:`moments_chunk` or of this function. ``mean`` may
        have leading batch dimensions ``(..., d)`` and ``m2`` ``(..., d, d)``
        (independent problems merged elementwise, e.g. one per frequency),
        real or complex (the outer product is ``d d^H``).
    inplace : bool
        Merge into the first part's co-moment rather than a copy: only for a
        caller that allocated it (a task's running partial). No task mutates
        an input it did not allocate, so a task run again after a worker died
        cannot count rows twice.

    Returns
    -------
    dict
        The statistics of the union of the rows.
    """
    acc = parts[0]
    regions = acc.get("regions")
    n, mean, m2 = acc["n"], acc["mean"], acc["m2"] if inplace else _copy(acc["m2"])
    norms = "q" in acc
    if norms:
        q, v, edges = acc["q"], acc["v"], acc["edges"]
    for p in parts[1:]:
        nb = p["n"]
        if nb == 0:
            continue
        if n == 0:
            n, mean, m2 = nb, p["mean"], _copy(p["m2"])
            if norms:
                q, v = p["q"], p["v"]
            continue
        tot = n + nb
        d = p["mean"] - mean
        f = n * nb / tot
        if norms:  # both parts' norms about the merged mean, before m2 changes
            qa, va = _shift_norms(
                {"q": q, "v": v, "m2": m2, "n": n, "edges": edges}, -d * (nb / tot)
            )
            qb, vb = _shift_norms(p, d * (n / tot))
            q, v = qa + qb, va + vb
        if regions is None:
            m2 += p["m2"]
            _rank_one(m2, f, d, d)
        else:
            for block, pb, (r0, r1, c0, c1) in zip(m2, p["m2"], regions, strict=True):
                block += pb
                _rank_one(block, f, d[..., r0:r1], d[..., c0:c1])
        mean = mean + d * (nb / tot)
        n = tot
    out = {"n": n, "mean": mean, "m2": m2}
    if regions is not None:
        out["regions"] = regions
    if norms:
        out.update(q=q, v=v, edges=edges)
    return out


def _rank_one(m2: np.ndarray, f: float, a: np.ndarray, b: np.ndarray) -> None:
    """``m2 += f * outer(a, conj(b))`` in place: BLAS ``dger`` for a real 2-D block
    (no ``(d, d)`` temporaries, which for wide layers are a partial's size each),
    else NumPy per leading batch index (one per frequency on the DFT path)."""
    if m2.ndim == 2 and m2.dtype == np.float64 and m2.flags.c_contiguous and m2.size:
        from scipy.linalg.blas import dger

        # a C-ordered m2 is the Fortran-ordered m2.T: m2.T += f * outer(b, a)
        dger(f, b, a, a=m2.T, overwrite_a=True)
        return
    m2 += f * (a[..., :, None] * b[..., None, :].conj())


def _copy(m2: Any) -> Any:
    return [b.copy() for b in m2] if isinstance(m2, list) else m2.copy()


def _tree(parts: list[Delayed], split_every: int) -> Delayed:
    combine = delayed(moments_combine, pure=True)
    while len(parts) > 1:
        parts = [combine(parts[i : i + split_every]) for i in range(0, len(parts), split_every)]
    return parts[0]


def accumulate_graph(
    arrays: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    regions: Sequence[Region] | None = None,
    norms: bool = False,
) -> Delayed:
    """The lazy statistics of column-stacked dask arrays (one task per row group,
    which reads its rows of every array itself: :mod:`svcca_dask.io.chunks`).

    See :func:`accumulate`; this returns the :class:`~dask.delayed.Delayed`
    dict so that several statistics can be computed in one ``dask.compute``.
    ``regions`` restricts the co-moment to some blocks, ``norms`` adds the
    per-sample norms' statistics (see :func:`moments_chunk`).
    """
    (graph,) = accumulate_graphs(
        [arrays],
        names=None if names is None else [names],
        split_every=split_every,
        regions=None if regions is None else [regions],
        norms=norms,
    )
    return graph


def accumulate_graphs(
    groups: Sequence[Sequence[Any]],
    *,
    names: Sequence[Sequence[str] | None] | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    regions: Sequence[Sequence[Region] | None] | None = None,
    norms: bool = False,
) -> list[Delayed]:
    """The lazy statistics of several groups of column-stacked dask arrays (a
    matrix's tiles), one tree per group, from one task per row group
    (:func:`row_groups`).

    Each task reads its rows of every distinct array once (an array
    in several groups is read once per task, not once per group) and returns
    every group's partial; the groups' trees then merge their own. Arguments
    as :func:`accumulate_graph`, one entry per group.
    """
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    distinct: dict[str, Any] = {}
    for arrays in groups:
        for a in arrays:
            distinct.setdefault(a.name, a)
    # before any merging: each array's stored chunks, for error messages
    stored = {k: np.cumsum([0, *a.chunks[0]])[:-1] for k, a in distinct.items()}
    unified = dict(zip(distinct, _unify_rows(list(distinct.values())), strict=True))
    row_chunks = next(iter(unified.values())).chunks[0]
    starts = np.concatenate([[0], np.cumsum(row_chunks)])[:-1]
    # each task reads its own rows: no chunk is a task result that could travel
    readers = {k: task_readers(a) for k, a in unified.items()}
    layout = [[list(distinct).index(a.name) for a in arrays] for arrays in groups]
    task = delayed(moments_chunks, pure=True)
    pick = delayed(operator.getitem, pure=True)
    per_group: list[list[Any]] = [[] for _ in groups]
    for chunks in row_groups(len(row_chunks)):
        rows, row_starts, starts_of = [], [], []
        for i in chunks:
            s0, s1 = int(starts[i]), int(starts[i]) + int(row_chunks[i])
            # each array's stored chunks that overlap the rows, for error messages
            own = {
                k: [int(st[st <= s0].max(initial=0)), *(int(v) for v in st[(st > s0) & (st < s1)])]
                for k, st in stored.items()
            }
            rows.append([readers[k][i] for k in distinct])
            row_starts.append(s0)
            starts_of.append([[own[a.name] for a in arrays] for arrays in groups])
        out = task(
            rows,
            layout=layout,
            names=names,
            row_starts=row_starts,
            regions=regions,
            chunk_starts=starts_of,
            norms=norms,
            single=len(groups) == 1,
        )
        for g in range(len(groups)):
            per_group[g].append(out if len(groups) == 1 else pick(out, g))
    return [_tree(parts, split_every) for parts in per_group]


def row_groups(n_chunks: int) -> list[range]:
    """Consecutive row chunks per task of one tree: :data:`TASKS_PER_THREAD` tasks
    per scheduler thread (fewer where there are fewer chunks)."""
    tasks = max(1, min(n_chunks, TASKS_PER_THREAD * scheduler_threads()))
    cuts = np.linspace(0, n_chunks, tasks + 1).round().astype(int)
    return [range(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def moments_chunks(
    rows: Sequence[Sequence[Any]],
    *,
    layout: Sequence[Sequence[int]],
    names: Sequence[Sequence[str] | None] | None,
    row_starts: Sequence[int],
    regions: Sequence[Sequence[Region] | None] | None,
    chunk_starts: Sequence[Sequence[Sequence[Sequence[int]]]],
    norms: bool,
    single: bool = False,
) -> Any:
    """A row-group task (:func:`accumulate_graphs`): each of its row chunks read
    (every distinct array once), its partial per group (:func:`moments_chunk`)
    merged into the running one, then dropped; so a task holds one chunk at a
    time, whatever its rows. Every group's partial, or with ``single`` the one."""
    acc: list[dict[str, Any]] | None = None
    for j, pieces in enumerate(rows):
        blocks = load_all(pieces)
        parts = [
            moments_chunk(
                *[blocks[k] for k in idx],
                names=None if names is None else names[g],
                row_start=row_starts[j],
                regions=None if regions is None else regions[g],
                chunk_starts=chunk_starts[j][g],
                norms=norms,
            )
            for g, idx in enumerate(layout)
        ]
        del blocks
        if acc is None:
            acc = parts
        else:  # into the running partials, which this task allocated
            acc = [moments_combine([a, p], inplace=True) for a, p in zip(acc, parts, strict=True)]
    assert acc is not None  # a task has at least one chunk
    return acc[0] if single else acc


def accumulate(
    arrays: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    norms: bool = False,
) -> Moments:
    """Statistics of column-stacked 2-D dask arrays in one pass.

    Parameters
    ----------
    arrays : sequence of dask.array.Array, shape (n, d_i)
        Arrays over the same ``n`` samples; each must be whole along features
        (one column of chunks). Row chunkings may differ: they are unified.
    names : sequence of str, optional
        Names for error messages.
    split_every : int
        Fan-in of the tree reduction.
    norms : bool
        Also :attr:`Moments.norms` (debiased CKA's statistics).

    Returns
    -------
    Moments

    Notes
    -----
    Memory: each task holds one row chunk of every array as a float64 buffer
    plus a ``(d, d)`` float64 co-moment; the reduction holds ``split_every``
    co-moments at a time per tree level. Nothing scales with ``n``.

    Runs on the current ``distributed`` client when there is one, else on the
    threaded scheduler with BLAS limited to one thread per task (Dask threads
    times BLAS threads would oversubscribe the cores).
    """
    graph = accumulate_graph(arrays, names=names, split_every=split_every, norms=norms)
    (out,) = compute(graph)
    return to_moments(out, arrays)


def to_moments(out: dict[str, Any], arrays: Sequence[Any]) -> Moments:
    """Wrap a computed statistics dict of :func:`accumulate_graph` as :class:`Moments`."""
    sizes = tuple(int(a.shape[1]) for a in arrays)
    return Moments(
        n=int(out["n"]), mean=out["mean"], comoment=out["m2"], sizes=sizes, norms=out.get("q")
    )


def _row_target(arrays: Sequence[Any]) -> int | None:
    """Rows per task of :func:`_unify_rows`, or None where the stored row chunks stay.

    Row chunks smaller than the target (a stacked float64 buffer of
    :func:`~svcca_dask.scheduler.read_bytes`) are merged to a multiple of the largest stored
    chunk, so that each task does a real SYRK rather than Python overhead;
    chunks are never split (a split Zarr chunk would be decoded twice).
    """
    width = sum(int(a.shape[1]) for a in arrays)
    base = max(max(a.chunks[0]) for a in arrays)
    target = max(base, (read_bytes() // (8 * max(width, 1))) // base * base)
    rows = arrays[0].chunks[0]
    if target > base or any(a.chunks[0] != rows for a in arrays[1:]):
        return int(target)
    return None


def task_grid(arrays: Sequence[Any]) -> tuple[int, int]:
    """Row-group tasks of :func:`accumulate_graph` over ``arrays``, and the rows of
    the largest chunk a task reads at once: what a memory plan counts, without
    building the graph."""
    target = _row_target(arrays)
    if target is None:
        rows = arrays[0].chunks[0]
        return len(row_groups(len(rows))), int(max(rows))
    n = int(arrays[0].shape[0])
    return len(row_groups(max(1, -(-n // target)))), min(target, n)


def _unify_rows(arrays: Sequence[Any]) -> list[Any]:
    """One column of chunks per array, and the same row chunks for all (see
    :func:`_row_target`)."""
    out = []
    for a in arrays:
        if a.ndim != 2:
            raise ValueError(f"expected 2-D arrays, got shape {a.shape}")
        if len(a.chunks[1]) != 1:
            a = a.rechunk({1: -1})
        out.append(a)
    target = _row_target(out)
    if target is not None:
        out = [a.rechunk({0: target}) for a in out]
    return out
