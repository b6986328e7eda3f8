"""Layer x layer similarity matrices from one pass over the data.

Every layer of ``xs`` against every layer of ``ys`` (two networks, two
checkpoints of one network, or one network against itself) needs each layer's
own covariance block and the cross block of every pair. All of them are blocks
of the co-moment matrix of the column-stack of the distinct layers, so one
:func:`~svcca_dask._stats.accumulate` pass (one fused task per row chunk: read
the same rows of every layer, cast into one float64 buffer, centre, one SYRK)
gives every pair's statistics. A layer that appears several times (``ys is
xs``, the same array under two names) is stacked once.

Cost of the joint SYRK
----------------------
The stacked SYRK also computes blocks no pair needs: the cross blocks between
two layers of ``xs`` (and of ``ys``) when ``xs`` and ``ys`` differ. With ``L``
layers of width ``w`` on each side, the joint SYRK does ``(2 L w)**2 / 2``
multiply-adds per row, while own SYRKs plus one cross GEMM would do
``L w**2 + (L w)**2``; for ``L = 8`` that is 1.8x fewer flops, measured 1.75x
faster in the kernel alone (``benchmarks/bench_matrix.py``, one BLAS thread),
and 3.5x smaller accumulators. When ``ys`` is ``xs`` every block is needed and
the two are the same. We keep the joint SYRK: one kernel (the one every pair
measure uses, tested once), one float64 copy per chunk, and the most common
heatmap (a network against itself or against a checkpoint of the same
architecture, the latter at the cost above). A block kernel is the next step
if two-network matrices dominate.

Memory and tiles
----------------
A partial statistic of stacked width ``D`` is ``8 D**2`` bytes and a tree
reduction holds up to ``split_every + 1`` of them per level in flight. The 16
bottleneck outputs of a ResNet-50 (3 x 256, 4 x 512, 6 x 1024, 3 x 2048
channels after a ``conv`` reduction: 15,104 features) against themselves are
``D = 15,104``: 1.7 GiB per partial; against another checkpoint ``D = 30,208``:
6.8 GiB per partial. When the stacked width exceeds ``max_width`` the matrix is
split into tiles of layers (row groups of ``xs`` x column groups of ``ys``), each
tile at most ``max_width`` wide; all tiles of one tile row are computed in one
graph that shares the chunk reads, so each layer is read once per tile row.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._input import ArrayLike, as_dask
from ._measures import (
    DEFAULT_MAX_FEATURES,
    cca_from_stats,
    cka_from_stats,
    pair_stats,
    pwcca_from_stats,
    svcca_from_stats,
)
from ._stats import accumulate_graph, compute, to_moments

__all__ = ["MATRIX_MEASURES", "SimilarityMatrix", "similarity_matrix"]

#: Measures :func:`similarity_matrix` computes, with the options each accepts.
MATRIX_MEASURES: dict[str, tuple[str, ...]] = {
    "svcca": ("keep", "epsilon"),
    "cca": ("epsilon",),
    "pwcca": ("epsilon", "side"),
    "cka": (),
    "linear_cka": (),
}

_FROM_STATS: dict[str, Callable[..., Any]] = {
    "svcca": svcca_from_stats,
    "cca": cca_from_stats,
    "pwcca": pwcca_from_stats,
    "cka": cka_from_stats,
    "linear_cka": cka_from_stats,
}

@dataclass(frozen=True)
class SimilarityMatrix:
    """A layer x layer similarity matrix.

    Attributes
    ----------
    scores : ndarray, shape (len(rows), len(columns))
        ``scores[i, j]`` is the measure's score of layer ``rows[i]`` (as x)
        against layer ``columns[j]`` (as y).
    rows : tuple
        Layer names of ``xs``, in order.
    columns : tuple
        Layer names of ``ys``, in order.
    measure : str
        The measure computed.
    results : dict
        ``results[(row, column)]`` is the full per-pair result (an
        :class:`SVCCAResult`, :class:`CCAResult`, :class:`PWCCAResult` or
        :class:`CKAResult`); empty when ``return_results=False``.
    n_samples : int
        Number of samples (rows) of every layer.
    tile_rows : int
        Number of tile rows, i.e. of passes over the data (1: each layer read once).
    tiles : int
        Number of stacked statistics accumulated.
    """

    scores: np.ndarray
    rows: tuple[Hashable, ...]
    columns: tuple[Hashable, ...]
    measure: str
    results: dict[tuple[Hashable, Hashable], Any] = field(repr=False)
    n_samples: int
    tile_rows: int = 1
    tiles: int = 1

    def __getitem__(self, pair: tuple[Hashable, Hashable]) -> Any:
        """The per-pair result of ``(row, column)``."""
        if not self.results:
            raise KeyError(
                f"{pair!r}: this matrix was computed with return_results=False; "
                "use .scores, or recompute with return_results=True"
            )
        return self.results[pair]

    def score(self, row: Hashable, column: Hashable) -> float:
        """The score of one pair, by layer names."""
        return float(self.scores[self.rows.index(row), self.columns.index(column)])


def similarity_matrix(
    xs: Mapping[Hashable, ArrayLike],
    ys: Mapping[Hashable, ArrayLike] | None = None,
    *,
    measure: str = "svcca",
    conv: str | None = None,
    layout: str | None = None,
    max_width: int = DEFAULT_MAX_FEATURES,
    split_every: int = 8,
    return_results: bool = True,
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
    measure : {"svcca", "cca", "pwcca", "cka", "linear_cka"}, default "svcca"
        The measure of each pair (see :func:`svcca`, :func:`cca`,
        :func:`pwcca`, :func:`linear_cka`).
    conv : {"samples", "mean", "flatten"}, optional
        Reduction of 4-D conv layers to 2-D features, per layer, as the
        measures' ``conv=`` does (:func:`conv_features`); 2-D layers are used as
        they are. ``"dft"`` is not supported here (see Raises).
    layout : {"NCHW", "NHWC"}, optional
        Axis order of conv layers, passed to :func:`conv_features`.
    max_width : int, default DEFAULT_MAX_FEATURES
        Largest stacked feature count of one accumulated statistic (memory is
        ``8 * max_width**2`` bytes per partial). Wider layer sets are split
        into tiles.
    split_every : int, default 8
        Fan-in of the tree reduction over row chunks.
    return_results : bool, default True
        Keep every pair's full result (weights, directions): these hold
        ``O(n_features * k)`` floats per pair. ``False`` keeps only ``scores``.
    **options
        Options of the measure: ``keep`` and ``epsilon`` (svcca), ``epsilon``
        (cca), ``epsilon`` and ``side`` (pwcca).

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
    layer of the tile, stacks them into one float64 buffer and runs one SYRK;
    the pair ``(a, b)`` then reads its blocks ``S_aa``, ``S_ab``, ``S_bb`` from
    the stacked statistics (:func:`pair_stats`), so pairs that share a layer
    share its statistics. Scores equal the pair-by-pair calls up to rounding
    (~1e-12). Runs on the current ``distributed`` client when there is one.

    Cost: the joint SYRK also computes the cross blocks between two layers of
    the same side, which no pair needs when ``xs`` and ``ys`` differ (1.75x the
    kernel time of the needed blocks for 8 + 8 layers). Memory: ``8 D**2``
    bytes per partial for stacked width ``D``; a ResNet-50's 16 bottleneck
    outputs (15,104 channels) against another checkpoint are ``D = 30,208``,
    6.8 GiB per partial: the default ``max_width`` (8192, 512 MiB) splits that
    into tiles, and each layer is then read once per tile row.
    """
    if measure not in _FROM_STATS:
        raise ValueError(
            f"unknown measure {measure!r}; choose one of {', '.join(map(repr, _FROM_STATS))}"
        )
    allowed = MATRIX_MEASURES[measure]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"measure={measure!r} takes no option {', '.join(unknown)}; "
            f"its options are: {', '.join(allowed) or 'none'}"
        )
    if max_width < 2:
        raise ValueError(f"max_width must be at least 2, got {max_width}")
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

    # distinct layers, each converted once; a layer on both sides is one layer
    arrays: list[Any] = []
    labels: list[str] = []
    by_key: dict[str, int] = {}

    def index_of(side: str, name: Hashable, value: ArrayLike) -> int:
        arr = _layer(value, name=f"{side}[{name!r}]", conv=conv, layout=layout)
        key = arr.name
        if key not in by_key:
            by_key[key] = len(arrays)
            arrays.append(arr)
            labels.append(f"{side}[{name!r}]")
        return by_key[key]

    row_idx = [index_of("xs", k, v) for k, v in xs.items()]
    col_idx = row_idx if ys is xs else [index_of("ys", k, v) for k, v in ys.items()]

    n = arrays[0].shape[0]
    for lab, a in zip(labels, arrays, strict=True):
        if a.shape[0] != n:
            raise ValueError(
                f"all layers must have the same number of samples (first axis): "
                f"{labels[0]} has {n}, {lab} has {a.shape[0]}"
            )
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

    plan = _plan_tiles(row_idx, col_idx, widths, max_width)
    from_stats = _FROM_STATS[measure]
    needs_names = measure != "cka" and measure != "linear_cka"
    results: dict[tuple[Hashable, Hashable], Any] = {}
    scores = np.empty((len(xs), len(ys)), dtype=np.float64)
    rows, cols = tuple(xs), tuple(ys)
    n_tiles = 0
    for tile_row, homes in plan:
        graphs = [
            accumulate_graph(
                [arrays[k] for k in tile], names=[labels[k] for k in tile], split_every=split_every
            )
            for tile in tile_row
        ]
        outs = compute(*graphs)
        n_tiles += len(tile_row)
        moments = [
            to_moments(out, [arrays[k] for k in tile])
            for out, tile in zip(outs, tile_row, strict=True)
        ]
        del outs
        positions = [{k: p for p, k in enumerate(tile)} for tile in tile_row]
        for r, i in enumerate(row_idx):
            for c, j in enumerate(col_idx):
                t = homes.get(frozenset((i, j)))
                if t is None:
                    continue
                p = pair_stats(moments[t], positions[t][i], positions[t][j])
                if needs_names:
                    res = from_stats(p, names=(f"xs[{rows[r]!r}]", f"ys[{cols[c]!r}]"), **options)
                else:
                    res = from_stats(p, **options)
                scores[r, c] = res.score
                if return_results:
                    results[(rows[r], cols[c])] = res
    return SimilarityMatrix(
        scores=scores,
        rows=rows,
        columns=cols,
        measure=measure,
        results=results,
        n_samples=int(n),
        tile_rows=len(plan),
        tiles=n_tiles,
    )


def _layer(x: ArrayLike, *, name: str, conv: str | None, layout: str | None) -> Any:
    """One layer as a 2-D Dask array, conv layers reduced per ``conv``."""
    if conv is None:
        return as_dask(x, name=name)
    from . import _conv

    dft_options = getattr(_conv, "DFT", None)  # the measures' conv=DFT(...) options
    if conv == "dft" or (dft_options is not None and isinstance(conv, dft_options)):
        raise NotImplementedError(
            "similarity_matrix does not support conv='dft': the per-frequency statistics "
            "depend on the pair (crop to the common frequency band), so one stacked pass "
            "cannot serve every pair. Call the measure per pair instead, e.g. "
            "{(a, b): svcca(xs[a], ys[b], conv='dft').score for a in xs for b in ys}, "
            "or use conv='mean', 'samples' or 'flatten' here."
        )
    # conv_features checks the mode, reads the layout from Zarr dimension_names
    # when it is not given, and returns 2-D layers unchanged
    return as_dask(_conv.conv_features(x, conv=conv, layout=layout, name=name), name=name)


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
            fresh = {frozenset((i, j)) for i in g for j in h} & needed
            if not fresh - covered:
                continue
            tile = list(dict.fromkeys(g + h))
            inside = {frozenset((i, j)) for i in tile for j in tile} & needed
            for pair in inside - covered:
                homes[pair] = len(tiles)
            covered |= inside
            tiles.append(tile)
        if tiles:
            plan.append((tiles, homes))
    return plan
