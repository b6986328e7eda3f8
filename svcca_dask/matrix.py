"""Layer x layer similarity matrices from one pass over the data.

Every layer of ``xs`` against every layer of ``ys`` (two networks, two
checkpoints of one network, or one network against itself) needs each layer's
own covariance block and the cross block of every pair. One pass computes all
of them: one fused task per row chunk reads the same rows of every layer, casts
them into one float64 buffer and centres it; partials merge with the Chan/Pebay
update in a tree. Pairs that share a layer share its statistics, and a layer
that appears several times (``ys is xs``, the same array under two names) is
stacked once.

Which blocks: joint SYRK or the needed blocks only
--------------------------------------------------
When ``xs`` and ``ys`` share their layers (a network against itself) every
block of the stacked co-moment is needed: the task runs the core's single SYRK
(:func:`~svcca_dask.stats.accumulate_graphs`). When the two sides are disjoint
(two networks, two checkpoints) the joint SYRK would also compute the x-x and
y-y cross blocks that no pair needs: with ``L`` layers of width ``w`` per side
it does ``(2 L w)**2 / 2`` multiply-adds per row, against ``L w**2 + (L w)**2``
for each layer's own SYRK plus one x-by-y GEMM. For the 8 + 8 layers of
``benchmarks/bench_matrix.py`` (widths 32 ... 256) the joint SYRK takes
several times the flops of the needed blocks ("a GEMM of two buffers is
slower" holds per pair, where the flops are equal, not for a matrix). So disjoint sides
restrict the core's chunk to those blocks (``regions=`` of
:func:`~svcca_dask.stats.moments_chunk`): the same buffer, one SYRK per
layer and one GEMM, and accumulators of ``d_x d_y + sum d_i**2`` instead of
``(d_x + d_y)**2``. Sides that only partly overlap use the joint SYRK.

Memory and tiles
----------------
Float64 partials, and a tree reduction holds up to ``split_every + 1`` of them
per level in flight. The 16 bottleneck outputs of a ResNet-50 (3 x 256,
4 x 512, 6 x 1024, 3 x 2048 channels after a ``conv`` reduction: 15,104
features) against themselves: ``15,104**2`` floats, 1.7 GiB per partial;
against another checkpoint: 1.7 GiB cross block + 2 x 0.15 GiB own blocks =
2.0 GiB per partial (6.8 GiB with the joint SYRK). When the stacked width of
the distinct layers exceeds ``max_width`` (default 8192: 512 MiB partials at
most) the matrix is split into tiles of layers (row groups of ``xs`` x column
groups of ``ys``), each at most ``max_width`` wide; all tiles of one tile row
are computed in one graph that shares the chunk reads, so each layer is read
once per tile row.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.delayed import delayed
from threadpoolctl import threadpool_limits

from ._config import DEFAULT_MAX_FEATURES, DEFAULT_SPLIT_EVERY, cpu_count
from .cka import cka_from_stats
from .conv.features import conv_features
from .conv.plan import DFT
from .inputs import ArrayLike, Layer, align_rows, as_dask, open_layer
from .linalg import top_eigh, whitening
from .measures import cca_from_stats, pwcca_from_stats, svcca_from_stats
from .memory import check_peak, covariance_bytes, fan_in, fits
from .results import SimilarityMatrix
from .rules import check_epsilon, check_side, keep_pair, warn_notes
from .scheduler import compute, current_client
from .shape import check_shape, shape_from_stats
from .stats import Moments, PairStats, Region, accumulate_graphs, pair_stats

__all__ = ["FROM_STATS", "MATRIX_MEASURES", "similarity_matrices", "similarity_matrix"]

#: Measures :func:`similarity_matrix` computes, with the options each accepts.
MATRIX_MEASURES: dict[str, tuple[str, ...]] = {
    "svcca": ("keep", "epsilon"),
    "cca": ("epsilon",),
    "pwcca": ("epsilon", "side"),
    "cka": ("debiased",),
    "linear_cka": ("debiased",),
    "shape": ("alpha", "metric"),
}

#: Each measure's function of a pair's statistics (:class:`~svcca_dask.stats.PairStats`).
FROM_STATS: dict[str, Callable[..., Any]] = {
    "svcca": svcca_from_stats,
    "cca": cca_from_stats,
    "pwcca": pwcca_from_stats,
    "cka": cka_from_stats,
    "linear_cka": cka_from_stats,
    "shape": shape_from_stats,
}


def similarity_matrix(
    xs: Mapping[Hashable, ArrayLike],
    ys: Mapping[Hashable, ArrayLike] | None = None,
    *,
    measure: str = "svcca",
    conv: str | None = None,
    layout: str | None = None,
    max_width: int = DEFAULT_MAX_FEATURES,
    split_every: int = DEFAULT_SPLIT_EVERY,
    return_results: bool = True,
    on_pair: Callable[[Hashable, Hashable], None] | None = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
    **options: Any,
) -> SimilarityMatrix:
    """Every layer of ``xs`` against every layer of ``ys``, reading each layer once.

    Parameters
    ----------
    xs : mapping of name to array-like, each shape (n_samples, n_features)
        The row layers: NumPy, Dask or Zarr arrays or ``"store.zarr/layer"``
        paths (as the pair measures take them), all over the same samples.
    ys : mapping of name to array-like, optional
        The column layers; ``None`` or ``xs`` itself compares ``xs`` with
        itself. A layer present on both sides (the same array, path or Dask
        array) is read and stacked once.
    measure : {"svcca", "cca", "pwcca", "cka", "linear_cka", "shape"}, default "svcca"
        The measure of each pair (see :func:`svcca`, :func:`cca`,
        :func:`pwcca`, :func:`linear_cka`, :func:`shape_distance`: a distance). For several measures from the same
        pass, use :func:`similarity_matrices`.
    conv : {"samples", "mean", "flatten"}, optional
        Reduction of 4-D conv layers to 2-D features, per layer, as the
        measures' ``conv=`` does (:func:`conv_features`); 2-D layers are used as
        they are. ``"dft"`` is not supported here (see Raises).
    layout : {"NCHW", "NHWC"}, optional
        Axis order of conv layers, passed to :func:`conv_features`.
    max_width : int, default DEFAULT_MAX_FEATURES
        Largest stacked feature count of one accumulated statistic (memory is
        at most ``8 * max_width**2`` bytes per partial). Wider layer sets are
        split into tiles.
    split_every : int, default DEFAULT_SPLIT_EVERY (4)
        Fan-in of the tree reduction over row chunks.
    return_results : bool, default True
        Keep every pair's full result (weights, directions): these hold
        ``O(n_features * k)`` floats per pair. ``False`` keeps only ``scores``.
    on_pair : callable, optional
        Called as ``on_pair(row, column)`` when a pair is done, tile row by
        tile row (a progress hook).
    rows, storage_options, missing_chunks
        As for :func:`svcca_dask.cca`: every layer's rows are checked against
        the first's (stores' recorded orders and sample ids).
    **options
        Options of the measure: ``keep`` and ``epsilon`` (svcca), ``epsilon``
        (cca), ``epsilon`` and ``side`` (pwcca), ``debiased`` (cka: then the
        whole co-moment of each tile is accumulated, with the per-sample norms),
        ``alpha`` and ``metric`` (shape).

    Returns
    -------
    SimilarityMatrix
        ``scores`` (rows in ``xs`` order, columns in ``ys`` order) and the
        per-pair ``results``.

    Raises
    ------
    NotImplementedError
        For ``conv="dft"``: the per-frequency statistics depend on the pair
        (the crop to the common frequency band), so they cannot come from one
        stacked pass. Call the measure per pair instead:
        ``{(a, b): svcca(xs[a], ys[b], conv="dft") for a in xs for b in ys}``.
    ValueError, TypeError
        For an unknown measure or option, layers with different sample counts,
        or a pair wider than ``max_width``.

    Notes
    -----
    One pass per tile row: each row chunk task reads the same rows of every
    layer of the tile and stacks them into one centred float64 buffer; the
    pair ``(a, b)`` then takes its blocks ``S_aa``, ``S_ab``, ``S_bb`` from the
    accumulated statistics, so pairs that share a layer share its statistics.
    Scores equal the pair-by-pair calls up to rounding (~1e-12). Runs on the
    current ``distributed`` client when there is one.

    Cost: with disjoint sides only the needed blocks are accumulated (each
    layer's own SYRK and one x-by-y GEMM); with shared layers, one joint SYRK. Memory: a ResNet-50's 16
    bottleneck outputs (15,104 channels) against another checkpoint need
    2.0 GiB per partial: the default ``max_width`` (8192) splits that into
    tiles, and each layer is then read once per tile row.
    """
    _check_measure(measure)
    allowed = MATRIX_MEASURES[measure]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"measure={measure!r} takes no option {', '.join(unknown)}; "
            f"its options are: {', '.join(allowed) or 'none'}"
        )
    return similarity_matrices(
        xs,
        ys,
        measures=(measure,),
        conv=conv,
        layout=layout,
        max_width=max_width,
        split_every=split_every,
        return_results=return_results,
        on_pair=on_pair,
        rows=rows,
        storage_options=storage_options,
        missing_chunks=missing_chunks,
        **options,
    )[measure]


def _check_measure(measure: Any) -> None:
    if measure not in FROM_STATS:
        raise ValueError(
            f"unknown measure {measure!r}; choose one of {', '.join(map(repr, FROM_STATS))}"
        )


def similarity_matrices(
    xs: Mapping[Hashable, ArrayLike],
    ys: Mapping[Hashable, ArrayLike] | None = None,
    *,
    measures: Sequence[str] = ("svcca",),
    conv: str | None = None,
    layout: str | None = None,
    max_width: int = DEFAULT_MAX_FEATURES,
    split_every: int = DEFAULT_SPLIT_EVERY,
    return_results: bool = True,
    on_pair: Callable[[Hashable, Hashable], None] | None = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
    **options: Any,
) -> dict[str, SimilarityMatrix]:
    """Several measures' layer x layer matrices from the same single pass.

    The statistics of :func:`similarity_matrix` serve every measure: a job
    asking for SVCCA, PWCCA and CKA of the same layers reads the data once.

    Parameters
    ----------
    xs, ys, conv, layout, max_width, split_every, return_results
        As for :func:`similarity_matrix`. ``max_width`` is an upper bound: where
        the memory plan (:mod:`svcca_dask.memory`) needs it, tiles are narrower.
    measures : sequence of str, default ("svcca",)
        Measures to compute (names as :func:`similarity_matrix`'s ``measure``).
    on_pair : callable, optional
        Called as ``on_pair(row, column)`` when every measure of that pair is
        done: after the pass of its tile row, so that a progress bar advances
        tile row by tile row rather than once at the end.
    **options
        Options of the measures; each measure receives those it takes
        (``keep``: svcca; ``epsilon``: svcca, cca, pwcca; ``side``: pwcca;
        ``debiased``: cka; ``alpha``, ``metric``: shape).

    Returns
    -------
    dict of str to SimilarityMatrix
        One matrix per measure, in the order given.
    """
    measures = tuple(dict.fromkeys([measures] if isinstance(measures, str) else measures))
    if not measures:
        raise ValueError("measures is empty: give at least one measure")
    for m in measures:
        _check_measure(m)
    taken = {o for m in measures for o in MATRIX_MEASURES[m]}
    unknown = sorted(set(options) - taken)
    if unknown:
        raise TypeError(
            f"no measure of {', '.join(measures)} takes option {', '.join(unknown)}; "
            f"their options are: {', '.join(sorted(taken)) or 'none'}"
        )
    if max_width < 2:
        raise ValueError(f"max_width must be at least 2, got {max_width}")
    # options are checked before any layer is read
    if "epsilon" in options:
        check_epsilon(options["epsilon"])
    if "keep" in options:
        keep_pair(options["keep"])
    if "side" in options:
        check_side(options["side"])
    if "alpha" in options or "metric" in options:
        check_shape(options.get("alpha", 1.0), options.get("metric", "angular"))
    debiased = options.get("debiased", False)
    if not isinstance(debiased, bool):
        raise TypeError(f"debiased must be True or False, got {debiased!r}")
    if ys is None:
        ys = xs
    for side, layers in (("xs", xs), ("ys", ys)):
        if not isinstance(layers, Mapping):
            raise TypeError(
                f"{side} must map layer names to arrays, e.g. {{'conv1': x1, 'fc': x2}}; "
                f"got {type(layers).__name__}"
            )
        if len(layers) == 0:
            raise ValueError(f"{side} is empty: give at least one layer")

    # distinct layers, each opened once; a layer on both sides is one layer
    opened: list[Layer] = []
    labels: list[str] = []
    by_key: dict[str, int] = {}

    def index_of(side: str, name: Hashable, value: ArrayLike) -> int:
        layer = open_layer(
            value,
            name=f"{side}[{name!r}]",
            storage_options=storage_options,
            missing_chunks=missing_chunks,
        )
        key = layer.data.name
        if key not in by_key:
            by_key[key] = len(opened)
            opened.append(layer)
            labels.append(f"{side}[{name!r}]")
        return by_key[key]

    row_idx = [index_of("xs", k, v) for k, v in xs.items()]
    col_idx = row_idx if ys is xs else [index_of("ys", k, v) for k, v in ys.items()]
    for lab, v in zip(labels, opened, strict=True):
        if v.rows != opened[0].rows:
            raise ValueError(
                f"all layers must have the same number of samples (first axis): "
                f"{labels[0]} has {opened[0].rows}, {lab} has {v.rows}"
            )
    opened = align_rows(opened, rows=rows)  # every layer's rows against the first's
    arrays = [
        _layer(v, name=lab, conv=conv, layout=layout) for v, lab in zip(opened, labels, strict=True)
    ]
    n = arrays[0].shape[0]
    widths = [int(a.shape[1]) for a in arrays]
    for i in dict.fromkeys(row_idx):
        for j in dict.fromkeys(col_idx):
            w = widths[i] + (widths[j] if j != i else 0)
            if w > max_width:
                raise ValueError(
                    f"{labels[i]} and {labels[j]} have {widths[i]} + {widths[j]} features, "
                    f"more than max_width={max_width} (a {w} x {w} float64 statistic is "
                    f"{w * w * 8 / 2**30:.1f} GiB per partial). Raise max_width if memory "
                    "allows, or reduce the layers first (conv= for conv layers)."
                )

    # disjoint sides (two networks, two checkpoints): accumulate only the needed
    # blocks; otherwise every block of the joint co-moment is needed or nearly
    row_set = set(row_idx)
    # debiased CKA's per-sample norms are merged with the whole co-moment
    blockwise = not (row_set & set(col_idx)) and not debiased
    plan, split_every = _memory_plan(
        row_idx,
        col_idx,
        arrays,
        row_set if blockwise else None,
        max_width=max_width,
        split_every=split_every,
    )
    on_cluster = current_client() is not None
    # on threads, pairs that share a layer share its eigendecomposition and
    # whitening across tile rows; on a cluster each tile row's task has its own
    shared = None if on_cluster else _shared_options(measures, options)
    results: dict[str, dict[tuple[Hashable, Hashable], Any]] = {m: {} for m in measures}
    scores = {m: np.empty((len(xs), len(ys)), dtype=np.float64) for m in measures}
    rows, cols = tuple(xs), tuple(ys)
    n_tiles = 0
    flagged: dict[str, list[str]] = {}  # measure -> the notes of its flagged pairs
    for tile_row, homes in plan:
        tile_arrays = [[arrays[k] for k in tile] for tile in tile_row]
        names = [[labels[k] for k in tile] for tile in tile_row]
        if blockwise:  # tiles hold their row layers first (see _plan_tiles)
            regions = [
                _cross_regions([int(a.shape[1]) for a in ta], sum(k in row_set for k in tile))
                for ta, tile in zip(tile_arrays, tile_row, strict=True)
            ]
        # one task per row group reads each layer of the tile row once, for every tile
        graphs = accumulate_graphs(
            tile_arrays,
            names=names,
            split_every=split_every,
            regions=regions if blockwise else None,
            norms=debiased,
        )
        n_tiles += len(tile_row)
        jobs = [
            (r, c, homes[frozenset((i, j))], i, j)
            for r, i in enumerate(row_idx)
            for c, j in enumerate(col_idx)
            if frozenset((i, j)) in homes
        ]
        finish = functools.partial(
            _finish_tile_row,
            tile_row=tile_row,
            widths=widths,
            jobs=jobs,
            names=(rows, cols),
            blockwise=blockwise,
            measures=measures,
            options=options,
        )
        if on_cluster:  # the eigendecompositions and CCAs run where the statistics are
            (done,) = compute(delayed(finish, pure=True)(graphs, shared=None))
        else:
            done = finish(list(compute(*graphs)), shared=shared)
        for (r, c, *_), out in zip(jobs, done, strict=True):
            for m, res in zip(measures, out, strict=True):
                scores[m][r, c] = res.score
                notes = getattr(res, "warnings", ())
                if notes:
                    flagged.setdefault(m, []).append(notes[0])
                if return_results:
                    results[m][(rows[r], cols[c])] = res
            if on_pair is not None:
                on_pair(rows[r], cols[c])
    for m, notes in flagged.items():  # one warning per measure, not one per pair
        warn_notes([f"{m}: {len(notes)} of {len(xs) * len(ys)} pairs, e.g. {notes[0]}"])
    return {
        m: SimilarityMatrix(
            scores=scores[m],
            rows=rows,
            columns=cols,
            measure=m,
            results=results[m],
            n_samples=int(n),
            tile_rows=len(plan),
            tiles=n_tiles,
        )
        for m in measures
    }


def _shared_options(
    measures: Sequence[str], options: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each measure's options, with the eigendecomposition and whitening that pairs
    sharing a layer share (:class:`_Shared`; the whitening of a layer's live
    covariance is the same for every measure)."""
    shared_eigh, shared_inv_sqrt = _Shared(top_eigh), _Shared(whitening(options.get("epsilon")))
    per_measure: dict[str, dict[str, Any]] = {}
    for m in measures:
        opts = {k: v for k, v in options.items() if k in MATRIX_MEASURES[m]}
        if m == "svcca":
            opts.update(eigh=shared_eigh, inv_sqrt=shared_inv_sqrt)
        elif m in ("cca", "pwcca"):
            opts["inv_sqrt"] = shared_inv_sqrt
        per_measure[m] = opts
    return per_measure


def _finish_tile_row(
    outs: Sequence[dict[str, Any]],
    *,
    tile_row: Sequence[Sequence[int]],
    widths: Sequence[int],
    jobs: Sequence[tuple[int, int, int, int, int]],
    names: tuple[Sequence[Hashable], Sequence[Hashable]],
    blockwise: bool,
    measures: Sequence[str],
    options: Mapping[str, Any],
    shared: dict[str, dict[str, Any]] | None,
) -> list[list[Any]]:
    """Every measure's result of each pair of a tile row (``jobs``: row, column,
    home tile, layer indices) from the tiles' computed statistics ``outs``: on a
    cluster a task of its own, so only results reach the client."""
    per_measure = _shared_options(measures, options) if shared is None else shared
    if blockwise:
        stats: list[Any] = [_CrossBlocks.from_out(out) for out in outs]
    else:
        stats = [
            Moments(
                n=int(out["n"]),
                mean=out["mean"],
                comoment=out["m2"],
                sizes=tuple(widths[k] for k in tile),
                norms=out.get("q"),
            )
            for out, tile in zip(outs, tile_row, strict=True)
        ]
    positions = [{k: p for p, k in enumerate(tile)} for tile in tile_row]
    rows, cols = names

    def measure_pair(job: tuple[int, int, int, int, int]) -> list[Any]:
        r, c, t, i, j = job
        pi, pj = positions[t][i], positions[t][j]
        p = stats[t].pair(pi, pj) if blockwise else pair_stats(stats[t], pi, pj)
        pair_names = (f"xs[{rows[r]!r}]", f"ys[{cols[c]!r}]")
        return [FROM_STATS[m](p, names=pair_names, **per_measure[m]) for m in measures]

    return _map_pairs(measure_pair, jobs)


def _layer(x: ArrayLike, *, name: str, conv: str | None, layout: str | None) -> Any:
    """One layer as a 2-D Dask array, conv layers reduced per ``conv``."""
    if conv is None:
        return as_dask(x, name=name)
    if conv == "dft" or isinstance(conv, DFT):
        raise NotImplementedError(
            "similarity_matrix does not support conv='dft': the per-frequency statistics "
            "depend on the pair (crop to the common frequency band), so one stacked pass "
            "cannot serve every pair. Call the measure per pair instead, e.g. "
            "{(a, b): svcca(xs[a], ys[b], conv='dft').score for a in xs for b in ys}, "
            "or use conv='mean', 'samples' or 'flatten' here."
        )
    # conv_features checks the mode, reads the layout from Zarr dimension_names
    # when it is not given, and returns 2-D layers unchanged
    return as_dask(conv_features(x, conv=conv, layout=layout, name=name), name=name)


def _map_pairs(f: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
    """``[f(job) for job in jobs]`` on a thread per core with BLAS at one thread.

    The per-pair linear algebra (eigh, whitening, SVD of ``d x d`` blocks) is
    small and many: one BLAS thread per pair and pairs in parallel beat
    multi-threaded BLAS on one pair at a time, which on a busy machine spins
    (benchmarks/RESULTS.md, matrix).
    """
    cores = cpu_count()
    with threadpool_limits(limits=1, user_api="blas"):
        if len(jobs) < 2 or cores < 2:
            return [f(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=min(cores, len(jobs))) as pool:
            return list(pool.map(f, jobs))


class _Shared:
    """``fn`` memoized on its matrix argument's content, computed once per
    distinct input even when pairs run in threads.

    A layer's (live) covariance is the same in every pair it is in, so over
    ``L x L`` pairs its eigendecomposition (SVCCA) and its whitening (every
    CCA measure) run ``2 L`` times instead of ``2 L**2``: the O(d**3) steps
    that dominate the matrix for wide layers. Same input, same output: sharing
    changes no number.
    """

    def __init__(self, fn: Callable[[np.ndarray], Any]) -> None:
        self._fn = fn
        self._cache: dict[tuple[tuple[int, ...], bytes], Any] = {}
        self._locks: dict[tuple[tuple[int, ...], bytes], threading.Lock] = {}
        self._lock = threading.Lock()

    def __call__(self, c: np.ndarray) -> Any:
        c = np.ascontiguousarray(c)
        key = (c.shape, hashlib.blake2b(c.view(np.uint8), digest_size=20).digest())
        with self._lock:
            once = self._locks.setdefault(key, threading.Lock())
        with once:  # the first thread computes, the others wait
            if key not in self._cache:
                out = self._fn(c)
                for a in out if isinstance(out, tuple) else (out,):
                    a.flags.writeable = False  # shared by several results
                self._cache[key] = out
        return self._cache[key]


# --------------------------------------------------------------------------- #
# the needed blocks only: own blocks of every layer, one cross block x-side by y-side


def _cross_regions(sizes: Sequence[int], n_x: int) -> list[Region]:
    """Each layer's own block, then the block of the first ``n_x`` layers
    (stacked) against the others: no x-x or y-y cross blocks."""
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    own = [(a, e, a, e) for a, e in itertools.pairwise(edges)]
    return [*own, (0, edges[n_x], edges[n_x], edges[-1])]


@dataclass(frozen=True)
class _CrossBlocks:
    """Computed statistics of a tile's needed blocks (:func:`_cross_regions`), as
    :class:`PairStats` per pair."""

    n: int
    mean: np.ndarray
    own: list[np.ndarray]
    cross: np.ndarray
    edges: np.ndarray
    n_x: int

    @classmethod
    def from_out(cls, out: dict[str, Any]) -> _CrossBlocks:
        regions = out["regions"]
        edges = np.array([r[0] for r in regions[:-1]] + [regions[-2][1]], dtype=int)
        n_x = int(np.searchsorted(edges, regions[-1][1]))
        return cls(int(out["n"]), out["mean"], out["m2"][:-1], out["m2"][-1], edges, n_x)

    def pair(self, i: int, j: int) -> PairStats:
        """Statistics of stacked layer ``i`` (x side) against ``j`` (y side)."""
        e, split, dof = self.edges, int(self.edges[self.n_x]), self.n - 1
        xs = slice(e[i], e[i + 1])
        ys = slice(e[j] - split, e[j + 1] - split)
        return PairStats(
            n=self.n,
            x_mean=self.mean[e[i] : e[i + 1]],
            y_mean=self.mean[e[j] : e[j + 1]],
            sxx=self.own[i] / dof,
            sxy=self.cross[xs, ys] / dof,
            syy=self.own[j] / dof,
        )


def _pack(ids: Sequence[int], widths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of layers whose widths sum to at most ``budget``
    (a layer wider than ``budget`` forms a group of its own)."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for k in ids:
        if current and used + widths[k] > budget:
            groups.append(current)
            current, used = [], 0
        current.append(k)
        used += widths[k]
    if current:
        groups.append(current)
    return groups


def _fit(
    g: list[int], h: list[int], widths: Sequence[int], max_width: int
) -> list[tuple[list[int], list[int]]]:
    """Split the tile ``g + h`` into sub-tiles at most ``max_width`` wide.

    Groups fit their budgets, but a single layer wider than its budget (over
    half of ``max_width``) next to a group may not: split the other side.
    Every pair of single layers fits (checked before planning).
    """
    if h is g:
        return [(g, h)]

    def width(ids: list[int]) -> int:
        return sum(widths[k] for k in dict.fromkeys(ids))

    if width(g + h) <= max_width:
        return [(g, h)]
    out = []
    for part in _pack(g, widths, max(max_width - width(h), 1)):
        for h_part in _pack(h, widths, max(max_width - width(part), 1)):
            out.append((part, h_part))
    return out


def _tile_row_bytes(
    tiles: list[list[int]], arrays: Sequence[Any], row_set: set[int] | None, split_every: int
) -> int:
    """Peak bytes of one tile row's graph: a tree per tile, computed together.
    With ``row_set`` (disjoint sides) a tile's partial holds only its own
    blocks and the cross block (:func:`_cross_regions`)."""
    partials = None
    if row_set is not None:
        partials = []
        for tile in tiles:
            w = [int(arrays[k].shape[1]) for k in tile]
            wx = sum(v for k, v in zip(tile, w, strict=True) if k in row_set)
            partials.append(8 * (sum(v * v for v in w) + wx * (sum(w) - wx)))
    return covariance_bytes(
        [[arrays[k] for k in tile] for tile in tiles], split_every=split_every, partials=partials
    )


def _memory_plan(
    row_idx: Sequence[int],
    col_idx: Sequence[int],
    arrays: Sequence[Any],
    row_set: set[int] | None,
    *,
    max_width: int,
    split_every: int,
) -> tuple[list[tuple[list[list[int]], dict[frozenset[int], int]]], int]:
    """Tiles and fan-in that fit the memory budget (:mod:`svcca_dask.memory`).

    The widest tile row under ``max_width`` if it fits; else narrower tiles
    (halving the width down to the widest pair: more tile rows, each layer read
    once per row), then a smaller fan-in; :class:`MemoryError` before any pass
    where even the narrowest plan does not fit.
    """
    widths = [int(a.shape[1]) for a in arrays]
    pair_width = max(
        widths[i] + (widths[j] if j != i else 0) for i in set(row_idx) for j in set(col_idx)
    )

    def peak(plan: list[Any], fan: int) -> int:
        return max(_tile_row_bytes(tiles, arrays, row_set, fan) for tiles, _ in plan)

    width = max_width
    while True:
        plan = _plan_tiles(row_idx, col_idx, widths, width)
        if fits(peak(plan, split_every)) or width <= pair_width:
            break
        width = max(pair_width, width // 2)
    split_every = fan_in(lambda fan: peak(plan, fan), split_every)
    check_peak(
        peak(plan, split_every),
        what=f"a similarity matrix of {len(set(row_idx))} x {len(set(col_idx))} layers "
        f"(tiles at most {width} features wide, the widest pair {pair_width})",
        remedies="Reduce the layers first (conv='dft' or 'mean' for conv layers), compare "
        "fewer layers at once, or raise the budget.",
    )
    return plan, split_every


def _plan_tiles(
    row_idx: Sequence[int], col_idx: Sequence[int], widths: Sequence[int], max_width: int
) -> list[tuple[list[list[int]], dict[frozenset[int], int]]]:
    """Tile rows: for each, the tiles (lists of distinct layer indices) and the
    home tile (index in the row) of every pair first computed in that row."""
    rows = list(dict.fromkeys(row_idx))
    cols = list(dict.fromkeys(col_idx))
    union = list(dict.fromkeys(rows + cols))
    needed = {frozenset((i, j)) for i in rows for j in cols}
    if sum(widths[k] for k in union) <= max_width:
        return [([union], dict.fromkeys(needed, 0))]
    row_groups = _pack(rows, widths, max_width // 2)
    if set(rows) == set(cols):
        col_groups = row_groups
    else:
        widest = max(sum(widths[k] for k in g) for g in row_groups)
        col_groups = _pack(cols, widths, max(max_width - widest, 1))
    plan = []
    covered: set[frozenset[int]] = set()
    for g in row_groups:
        tiles: list[list[int]] = []
        homes: dict[frozenset[int], int] = {}
        # g against itself last: a tile g + h already holds g's own blocks
        for h in [h for h in col_groups if h is not g] + [h for h in col_groups if h is g]:
            for part, h_part in _fit(g, h, widths, max_width):
                fresh = {frozenset((i, j)) for i in part for j in h_part} & needed
                if not fresh - covered:
                    continue
                tile = list(dict.fromkeys(part + h_part))
                inside = {frozenset((i, j)) for i in tile for j in tile} & needed
                for pair in inside - covered:
                    homes[pair] = len(tiles)
                covered |= inside
                tiles.append(tile)
        if tiles:
            plan.append((tiles, homes))
    return plan
