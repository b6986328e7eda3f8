"""The DFT path's passes: per-frequency statistics accumulated in lanes, band by band.

:class:`DFTRun` opens a pair, plans it (:mod:`~svcca_dask.conv.plan`) and
runs one Dask graph per band of frequencies: lanes of fold tasks
(:mod:`~svcca_dask.conv.transform`) accumulate the statistics, then per block
of frequencies one task merges the lanes and reduces the block to
per-frequency results, so only those reach the client. :func:`dft_stats`
returns the statistics themselves (:class:`DFTStats`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import dask.array as da
import numpy as np
from dask.delayed import delayed

from .._lapack import unpack
from ..inputs import ArrayLike, open_layer
from ..io.chunks import StoredChunk, stored_chunk_readers, task_readers
from ..scheduler import compute, current_client, persist
from ..stats import moments_combine
from .buffers import Recycler, release_free_memory
from .layout import layer_shape, open_conv_pair
from .plan import (
    DFT,
    FrequencyPlan,
    default_lanes,
    dft_options,
    frequency_bands,
    frequency_blocks,
    frequency_stats_bytes,
    memory_limit_of,
    plan_frequencies,
    rows_target,
    task_groups,
    task_threads,
)
from .transform import dft_fold

__all__ = ["DFTStats", "dft_stats"]


@dataclass(frozen=True)
class DFTStats:
    """Per-frequency covariance statistics of a pair of (conv) layers.

    Attributes
    ----------
    n : int
        Number of images.
    frequencies : ndarray of int, shape (F, 2)
        ``(kh, kw)`` of each frequency, in cycles per map of the common band
        (``-h/2 <= kh < h/2``, same for ``kw``); one of each conjugate pair.
    multiplicity : ndarray of int, shape (F,)
        2 for a frequency that stands for itself and its conjugate, else 1.
        ``multiplicity.sum() == band[0] * band[1]``.
    band : (int, int)
        The common band ``(h, w)``: the smaller height and width.
    sizes : (int, int)
        Channels of x and y.
    mean : ndarray, complex128, shape (F, Cx + Cy)
        Mean DFT coefficient of each channel (x's channels first).
    cov : ndarray, complex128, shape (F, Cx + Cy, Cx + Cy)
        Hermitian covariance (ddof=1) of the coefficients at each frequency.
    x_shape, y_shape : (int, int, int)
        ``(C, H, W)`` of each layer; a 2-D layer is ``(d, 1, 1)``.
    x_scale, y_scale : float
        ``H * W`` times the largest variance of a single activation (channel,
        position) of each layer: the variance of a DFT coefficient of white
        noise that strong. Channels whose variance at a frequency is below
        ``epsilon`` times this are dead at that frequency.
    """

    n: int
    frequencies: np.ndarray
    multiplicity: np.ndarray
    band: tuple[int, int]
    sizes: tuple[int, int]
    mean: np.ndarray
    cov: np.ndarray
    x_shape: tuple[int, int, int]
    y_shape: tuple[int, int, int]
    x_scale: float
    y_scale: float

    @property
    def sxx(self) -> np.ndarray:
        """``(F, Cx, Cx)`` covariance of x's coefficients."""
        return self.cov[:, : self.sizes[0], : self.sizes[0]]

    @property
    def sxy(self) -> np.ndarray:
        """``(F, Cx, Cy)`` cross-covariance."""
        return self.cov[:, : self.sizes[0], self.sizes[0] :]

    @property
    def syy(self) -> np.ndarray:
        """``(F, Cy, Cy)`` covariance of y's coefficients."""
        return self.cov[:, self.sizes[0] :, self.sizes[0] :]

    @property
    def x_mean(self) -> np.ndarray:
        return self.mean[:, : self.sizes[0]]

    @property
    def y_mean(self) -> np.ndarray:
        return self.mean[:, self.sizes[0] :]


def without_statistics(st: DFTStats) -> DFTStats:
    """The band's description without its (large) statistics."""
    return replace(st, mean=np.empty((0, 0)), cov=np.empty((0, 0, 0)))


@dataclass
class FrequencyParts:
    """Per-frequency results of bands, concatenated."""

    n: int
    band: tuple[int, int]
    frequencies: np.ndarray
    multiplicity: np.ndarray
    arrays: dict[str, np.ndarray]

    @classmethod
    def join(cls, parts: list[tuple[DFTStats, dict[str, np.ndarray]]]) -> FrequencyParts:
        st0 = parts[0][0]
        keys = parts[0][1].keys()
        return cls(
            n=st0.n,
            band=st0.band,
            frequencies=np.concatenate([s.frequencies for s, _ in parts]),
            multiplicity=np.concatenate([s.multiplicity for s, _ in parts]),
            arrays={k: np.concatenate([a[k] for _, a in parts]) for k in keys},
        )


def _lane_graph(
    xd: da.Array,
    yd: da.Array,
    plan: FrequencyPlan,
    idx: np.ndarray,
    *,
    opt: DFT,
    lanes: int,
    names: tuple[str, str],
    with_scale: bool,
    arrays: Recycler | None = None,
    stored: tuple[list[StoredChunk] | None, list[StoredChunk] | None] = (None, None),
) -> list[Any]:
    """The lanes of one pass: each a chain of fold tasks over consecutive row chunks.

    ``stored`` holds, per side, the direct readers of its stored chunks
    (:func:`stored_chunk_readers`), or None (then :func:`task_readers`), ``y``'s
    only when ``y`` needs no rechunking to ``x``'s chunks.

    On threads a fold updates its lane's accumulator in place (the threaded
    scheduler never runs a task twice); on a cluster it folds into a copy it
    allocates (``owned=False``), so a fold retried after a worker dies, or
    whose input was replicated while it ran, cannot count a chunk twice.
    """
    if xd.chunks[0] != yd.chunks[0]:
        yd = yd.rechunk({0: xd.chunks[0]})
        stored = (stored[0], None)
    on_threads = current_client() is None
    itemsize = max(xd.dtype.itemsize, yd.dtype.itemsize)
    rows = rows_target(plan, idx, opt, itemsize, inputs_held=False)
    # each fold task reads its own chunks, in order (io.chunks): on threads, reads
    # that were tasks of their own would run ahead of the sequential lanes and hold
    # the data; on a cluster they would travel between workers
    xs = stored[0] or task_readers(xd)
    ys = stored[1] or task_readers(yd)
    starts = np.concatenate([[0], np.cumsum(xd.chunks[0])])[:-1]
    tasks = task_groups(xd.chunks[0], rows)
    fold = delayed(dft_fold, pure=False)
    accs = []
    n_lanes = max(1, min(lanes, len(tasks)))
    threads = task_threads(n_lanes)
    for lane in np.array_split(np.arange(len(tasks)), n_lanes):
        acc = None
        for t in lane:
            group = tasks[t]
            acc = fold(
                acc,
                [xs[i] for i in group],
                [ys[i] for i in group],
                plan=plan,
                idx=idx,
                names=names,
                row_start=int(starts[group[0]]),
                with_scale=with_scale,
                threads=threads,
                last=bool(t == lane[-1]),
                arrays=arrays if on_threads else None,
                owned=on_threads,
            )
        accs.append(acc)
    return accs


def _scale_of(*accs: dict[str, Any], plan: FrequencyPlan) -> tuple[float, float]:
    """``H * W`` times the largest single-activation variance, per side."""
    out = []
    for key, shape in (("x_pos", plan.x_shape), ("y_pos", plan.y_shape)):
        m = moments_combine([a[key] for a in accs])
        top = float(np.max(m["m2"], initial=0.0)) / (m["n"] - 1)
        out.append(top * shape[1] * shape[2])
    return out[0], out[1]


def _block_stats(
    sl: slice,
    scale: tuple[float, float],
    *accs: dict[str, Any],
    plan: FrequencyPlan,
    idx: np.ndarray,
) -> DFTStats:
    """Merge the lanes' statistics of a block of frequencies (Chan/Pebay) and finish them."""
    d = plan.x_shape[0] + plan.y_shape[0]
    parts = [
        {"n": a["n"], "mean": a["mean"][sl].copy(), "m2": unpack(a["m2"][sl], d)} for a in accs
    ]
    # new arrays (copied, unpacked or merged): the lanes stay untouched
    out = parts[0] if len(parts) == 1 else moments_combine(parts)
    n = int(out["n"])
    cov = out["m2"]
    cov *= 1.0 / (n - 1)  # a multiply: complex division is several times slower
    return DFTStats(
        n=n,
        frequencies=plan.frequencies[idx[sl]],
        multiplicity=plan.multiplicity[idx[sl]],
        band=plan.band,
        sizes=(plan.x_shape[0], plan.y_shape[0]),
        mean=out["mean"],
        cov=cov,
        x_shape=plan.x_shape,
        y_shape=plan.y_shape,
        x_scale=scale[0],
        y_scale=scale[1],
    )


def _concat_stats(blocks: list[DFTStats]) -> DFTStats:
    if len(blocks) == 1:
        return blocks[0]
    return replace(
        blocks[0],
        frequencies=np.concatenate([b.frequencies for b in blocks]),
        multiplicity=np.concatenate([b.multiplicity for b in blocks]),
        mean=np.concatenate([b.mean for b in blocks]),
        cov=np.concatenate([b.cov for b in blocks]),
    )


class DFTRun:
    """The opened pair, its plan and bands, and the passes over the data.

    Each pass (one band of frequencies) is one Dask graph: the lanes fold the
    row chunks; then, per block of frequencies, one task merges the lanes'
    statistics of the block and the next reduces them to per-frequency
    results, so that only those (small) results reach the client and the
    blocks run in parallel on the scheduler (threads, or the workers of a
    ``distributed`` cluster that hold the lanes).
    """

    def __init__(
        self,
        x: ArrayLike,
        y: ArrayLike,
        *,
        conv: Any,
        layout: Any,
        names: tuple[str, str],
        single_band: bool = False,
    ) -> None:
        self.opt = dft_options(conv)
        self.names = names
        x, y = open_layer(x, name=names[0]), open_layer(y, name=names[1])
        self.xd, self.yd, xl, yl = open_conv_pair(x, y, layout, names)
        self.stored = (stored_chunk_readers(x, self.xd), stored_chunk_readers(y, self.yd))
        self.plan = plan_frequencies(layer_shape(self.xd, xl), layer_shape(self.yd, yl), xl, yl)
        data_bytes = int(self.xd.nbytes + self.yd.nbytes)
        budget = None if single_band else memory_limit_of(self.opt)
        self.lanes = self.opt.lanes or default_lanes(
            data_bytes, frequency_stats_bytes(self.plan), plan=self.plan, budget=budget
        )
        f_total = self.plan.frequencies.shape[0]
        if budget is None:
            self.bands = [np.arange(f_total)]
        else:
            self.bands = frequency_bands(self.plan, self.lanes, budget)
        self.scale: tuple[float, float] | None = None
        self.arrays = Recycler()

    def _graph(self, band: np.ndarray) -> tuple[list[Any], Any]:
        """The lazy lane accumulators of one band, and the (lazy or known) scales."""
        accs = _lane_graph(
            self.xd,
            self.yd,
            self.plan,
            band,
            opt=self.opt,
            lanes=self.lanes,
            names=self.names,
            with_scale=self.scale is None,
            arrays=self.arrays,
            stored=self.stored,
        )
        scale: Any = self.scale
        if scale is None:
            scale = delayed(_scale_of, pure=False)(*accs, plan=self.plan)
        return accs, scale

    def _blocks(self, band: np.ndarray) -> list[slice]:
        return frequency_blocks(band.size, self.plan.x_shape[0] + self.plan.y_shape[0])

    def _apply(
        self, accs: list[Any], scale: Any, band: np.ndarray, sl: slice, fn: Any, *args: Any
    ) -> Any:
        """A task: the merged statistics of one block of frequencies, then ``fn`` on them
        (the full matrices of a block live only inside that task)."""
        return delayed(_block_apply, pure=False)(
            fn, sl, scale, accs, args, plan=self.plan, idx=band
        )

    def _pass(self, band: np.ndarray) -> tuple[list[Any], Any]:
        """The pass over the data for one band: its lane accumulators and the
        scales, held (on the workers of a cluster) for the per-frequency work.
        Two ``compute`` calls rather than one, so that progress shows the pass
        (images) and the per-frequency phase (blocks of frequencies) each as its
        own bar; the accumulators are held through both either way."""
        accs, scale = self._graph(band)
        try:
            accs, scale = persist(accs, scale)
        except BaseException:
            self.arrays = Recycler()
            raise
        return accs, scale

    def _run(self, tasks: Any, scale: Any, *, last: bool) -> Any:
        """The per-frequency work of one band; its arrays are then free for the
        next band (or dropped)."""
        try:
            out, scale_value = compute(tasks, scale)
        finally:
            if last:
                self.arrays = Recycler()
            else:
                self.arrays.release()
        if self.scale is None:
            self.scale = tuple(scale_value)  # type: ignore[assignment]
        return out

    def map(self, fn: Any, *args: Any) -> FrequencyParts:
        """``fn(block_stats, *args)`` on every block of every band (one pass per band)."""
        collected = []
        for i, band in enumerate(self.bands):
            accs, scale = self._pass(band)
            tasks = [self._apply(accs, scale, band, sl, fn, *args) for sl in self._blocks(band)]
            collected += self._run(tasks, scale, last=i == len(self.bands) - 1)
        return FrequencyParts.join(collected)

    def map_split(self, fn: Any, per_freq: dict[str, np.ndarray], *args: Any) -> FrequencyParts:
        """Like :meth:`map`, passing each block its slice of per-frequency arrays."""
        collected = []
        start = 0
        for i, band in enumerate(self.bands):
            accs, scale = self._pass(band)
            tasks = []
            for sl in self._blocks(band):
                part = {k: v[start + sl.start : start + sl.stop] for k, v in per_freq.items()}
                tasks.append(self._apply(accs, scale, band, sl, fn, part, *args))
            collected += self._run(tasks, scale, last=i == len(self.bands) - 1)
            start += band.size
        return FrequencyParts.join(collected)

    def stats(self) -> DFTStats:
        """All statistics in one pass (one band), gathered on the client."""
        (band,) = self.bands
        accs, scale = self._pass(band)
        block = delayed(_block_stats, pure=False)
        tasks = [block(sl, scale, *accs, plan=self.plan, idx=band) for sl in self._blocks(band)]
        return _concat_stats(self._run(tasks, scale, last=True))


def _block_apply(
    fn: Any,
    sl: slice,
    scale: tuple[float, float],
    accs: list[dict[str, Any]],
    args: tuple,
    *,
    plan: FrequencyPlan,
    idx: np.ndarray,
) -> tuple[DFTStats, dict[str, np.ndarray]]:
    st = _block_stats(sl, scale, *accs, plan=plan, idx=idx)
    out = without_statistics(st), fn(st, *args)
    del st
    release_free_memory()
    return out


def dft_stats(
    x: ArrayLike,
    y: ArrayLike,
    *,
    layout: str | tuple[str | None, str | None] | None = None,
    lanes: int | None = None,
    rows: int | None = None,
) -> DFTStats:
    """Per-frequency covariance statistics of two conv layers, in one pass.

    Every row chunk is transformed (``scipy.fft``: an rfft along the width,
    the needed columns only along the height, in float64), its coefficients
    at the planned frequencies are centred, and they are merged into a lane
    accumulator with one ZHERK per frequency (see :func:`dft_fold`); the
    lanes merge with :func:`svcca_dask.stats.moments_combine`.

    Parameters
    ----------
    x, y : array-like, shape (n, C, H, W) or (n, H, W, C), or (n, d)
        Conv layers (a 2-D layer is a 1 x 1 map: against it only the DC
        frequency, the spatial sum, is common). NumPy, Dask, Zarr, xarray or a
        ``"store.zarr/layer"`` path.
    layout : str or (str, str), optional
        ``"NCHW"`` or ``"NHWC"`` for both or each layer; needed unless the
        arrays name their dimensions (Zarr ``dimension_names``).
    lanes, rows : int, optional
        See :class:`DFT`.

    Returns
    -------
    DFTStats

    Notes
    -----
    Memory: ``lanes`` accumulators of ``F * D (D + 1) / 2 * 16`` bytes (``D =
    Cx + Cy``; Hermitian matrices in packed storage), plus one task's
    coefficients per lane, plus the gathered result on the client (``F * D**2
    * 16`` bytes); nothing scales with ``n``. For two 256-channel 56 x 56
    layers (F = 1570) that is 3.3 GB per lane: the measures split such layers into
    frequency bands under :attr:`DFT.memory_limit` and reduce each band to
    per-frequency results on the workers; this function does neither.
    """
    run = DFTRun(
        x, y, conv=DFT(lanes=lanes, rows=rows), layout=layout, names=("x", "y"), single_band=True
    )
    return run.stats()
