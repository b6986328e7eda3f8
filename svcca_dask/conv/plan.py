"""The DFT path's plan: the common frequency band, and how the work is cut.

:func:`plan_frequencies` chooses the frequencies (the common low-frequency band, one
representative per conjugate pair); the rest sizes the passes from the memory
budget: how many lanes (independent accumulators), how many bands of
frequencies (one pass over the data each), how many images per task, and the
blocks of frequencies of the finalization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from .._config import physical_memory
from .._lapack import packed_size
from ..scheduler import (
    WORKER_SHARE,
    current_client,
    scheduler_threads,
    worker_limits,
    worker_threads,
)

__all__ = ["DFT"]


@dataclass(frozen=True)
class DFT:
    """Options of ``conv="dft"`` (``conv=DFT(...)`` in any measure).

    Parameters
    ----------
    memory_limit : int or str, optional
        Bytes (or a string such as ``"2GiB"``) the per-frequency statistics
        and the tasks' buffers may take, all lanes together (the process
        itself, its libraries, the chunks being read and the memory glibc
        keeps for the next task come on top; see benchmarks/RESULTS.md). When the
        statistics of all frequencies do not fit, the frequencies are split
        into bands and each band takes one pass over the data (the data is
        read once per band). Default: the
        Dask config value ``svcca_dask.dft_memory_limit`` if set, else a
        quarter of the machine's physical memory.
    lanes : int, optional
        Number of independent accumulators (each a chain of tasks over
        consecutive row chunks, merged at the end): the parallelism of the
        pass across tasks. Default: one on the threaded scheduler, whose
        tasks then use every thread (the two layers read and transformed at
        once, the frequencies merged in parallel: the statistics are held
        once); on a ``distributed`` cluster one per thread of all workers, at
        most the number of row chunks, and at most twice the size of the
        data over the size of one accumulator (each lane writes its whole
        accumulator once, which costs about as much as processing half as
        many bytes of images), and no more than keep the number of passes of
        one lane under ``memory_limit`` (the lanes share it: past that, each
        lane more splits the frequencies into more bands, and every band
        reads all the data again for the same total work). With fewer lanes
        than threads, each task uses the spare ones (on a cluster at most
        one worker's threads).
    rows : int, optional
        Images per task. Default: stored chunks merged (never split) until a
        task's coefficients take an eighth of a lane's accumulator (at most
        512 MiB), 8 to 64 images: each task streams the whole accumulator,
        so fewer images per task make the pass bound by memory bandwidth.
        On threads a task reads its stored chunks itself, one at a time
        (the next one read ahead while one is transformed).
    """

    memory_limit: int | str | None = None
    lanes: int | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        # checked when made, before any data is read
        if self.memory_limit is not None:
            _parse_limit(self.memory_limit)
        for name in ("lanes", "rows"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
            ):
                raise ValueError(f"DFT({name}=...) must be a positive int or None, got {value!r}")


def _parse_limit(value: Any) -> int:
    """Bytes of a memory limit given as a positive number or a string like ``"2GiB"``."""
    from dask.utils import parse_bytes

    try:
        out = parse_bytes(value) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        out = 0
    if isinstance(value, bool) or out <= 0:
        raise ValueError(
            f"memory_limit must be a positive number of bytes or a string like '2GiB', "
            f"got {value!r}"
        )
    return out


def _freq_range(s: int) -> np.ndarray:
    """Integer frequencies of an s-point DFT, ``[-(s // 2), (s - 1) // 2]``
    (``numpy.fft.fftfreq(s, 1 / s)``): the reference code's band for size s."""
    return np.concatenate([np.arange(0, (s - 1) // 2 + 1), np.arange(-(s // 2), 0)]).astype(int)


def _axis_partner(k: int, s: int, sx: int, sy: int) -> int | None:
    """The frequency of the band ``_freq_range(s)`` whose coefficients are the
    conjugates of those at ``k`` for both layers (sizes ``sx``, ``sy`` on this
    axis), or None when it lies outside the band."""
    if -(s // 2) <= -k <= (s - 1) // 2:
        return -k
    # k = -s/2 (s even): its conjugate +s/2 aliases back to -s/2 only for a layer of size s
    return k if sx == s and sy == s else None


@dataclass(frozen=True)
class Gather:
    """Where one layer's coefficient at each planned frequency sits in its rfft2."""

    rows: np.ndarray  # (F,) row of the full FFT along H
    cols: np.ndarray  # (F,) position among the computed rfft columns
    conj: np.ndarray  # (F,) bool: the coefficient is the conjugate of the stored one
    columns: np.ndarray  # the rfft columns to compute (sorted, unique)


@dataclass(frozen=True)
class FrequencyPlan:
    """The common band, one representative per conjugate pair, and the gathers."""

    frequencies: np.ndarray  # (F, 2) int (kh, kw)
    multiplicity: np.ndarray  # (F,) int, 1 or 2
    band: tuple[int, int]
    x_shape: tuple[int, int, int]  # (C, H, W); a 2-D side is (d, 1, 1)
    y_shape: tuple[int, int, int]
    x_layout: str | None  # None for a 2-D side
    y_layout: str | None

    def gather(self, shape: tuple[int, int, int], idx: np.ndarray) -> Gather:
        _, h, _ = shape
        kh, kw = self.frequencies[idx, 0], self.frequencies[idx, 1]
        conj = kw < 0
        rows = np.where(conj, -kh, kh) % h
        col = np.abs(kw)
        columns = np.unique(col)
        return Gather(rows, np.searchsorted(columns, col), conj, columns)


def plan_frequencies(
    x_shape: tuple[int, int, int],
    y_shape: tuple[int, int, int],
    x_layout: str | None,
    y_layout: str | None,
) -> FrequencyPlan:
    """Frequencies of the common low-frequency band, one per conjugate pair.

    The band is the reference code's (google/svcca ``fft_resize``): along each
    axis the frequencies ``-s/2 <= k < s/2`` of the smaller size ``s``. A
    frequency and its conjugate (``-kh, -kw``) carry conjugate coefficients
    (the input is real) and so the same canonical correlations: only one is
    computed, with multiplicity 2.
    """
    (_, hx, wx), (_, hy, wy) = x_shape, y_shape
    h, w = min(hx, hy), min(wx, wy)
    seen: set[tuple[int, int]] = set()
    reps: list[tuple[int, int]] = []
    mult: list[int] = []
    for kh in _freq_range(h):
        for kw in _freq_range(w):
            f = (int(kh), int(kw))
            if f in seen:
                continue
            ph, pw = _axis_partner(f[0], h, hx, hy), _axis_partner(f[1], w, wx, wy)
            p = (ph, pw) if ph is not None and pw is not None else None
            seen.add(f)
            if p is None or p == f:
                reps.append(f)
                mult.append(1)
                continue
            seen.add(p)  # type: ignore[arg-type]
            # prefer the member stored directly in rfft2 (kw >= 0)
            reps.append(max(f, p, key=lambda t: (t[1] >= 0, t[1], t[0])))  # type: ignore[arg-type]
            mult.append(2)
    freqs = np.array(reps, dtype=int).reshape(-1, 2)
    order = np.lexsort((freqs[:, 1], freqs[:, 0], np.abs(freqs[:, 1])))
    return FrequencyPlan(
        frequencies=freqs[order],
        multiplicity=np.array(mult, dtype=int)[order],
        band=(h, w),
        x_shape=x_shape,
        y_shape=y_shape,
        x_layout=x_layout,
        y_layout=y_layout,
    )


#: A fold task's buffers, as a share of its lane's accumulator (see rows_target).
_TASK_SHARE = 0.125


#: ... and at most this many bytes.
_TASK_MAX_BYTES = 512 * 2**20


#: Bytes of one (frequencies, D, D) complex128 work array in the batched CCA.
_CCA_BLOCK_BYTES = 32 * 2**20


def memory_limit_of(opt: DFT) -> int:
    """The statistics' budget over all lanes: ``DFT(memory_limit=)``, the config
    value ``svcca_dask.dft_memory_limit``, else a quarter of physical memory; on
    a cluster at most its workers' shares (:data:`svcca_dask.scheduler.WORKER_SHARE`
    of the smallest limit, times the workers, over which the lanes spread)."""
    value = opt.memory_limit
    if value is None:
        value = dask.config.get("svcca_dask.dft_memory_limit", None)
    limit = max(256 * 2**20, physical_memory() // 4) if value is None else _parse_limit(value)
    workers = worker_limits()
    if workers:
        limit = min(limit, int(WORKER_SHARE * min(workers)) * len(workers))
    return limit


def task_threads(lanes: int) -> int:
    """Threads each fold task uses: with fewer lanes than threads, a lane's
    tasks use the spare ones (two layers transformed at once, the frequencies
    merged in parallel); on a ``distributed`` cluster at most one worker's
    threads, where the task runs (one thread per task would leave a lone
    lane's worker half idle)."""
    threads = max(1, scheduler_threads() // lanes)
    client = current_client()
    if client is not None:
        threads = min(threads, worker_threads())
    return threads


def default_lanes(
    data_bytes: int,
    stats_bytes: int,
    *,
    plan: FrequencyPlan | None = None,
    budget: int | None = None,
) -> int:
    """On threads, one lane: its tasks use every thread (two layers read and
    transformed at once, frequencies merged in parallel), so the statistics
    are held once. On a ``distributed`` cluster, one lane per thread, but
    about one lane per half accumulator of data at most: each lane's
    accumulator is written (page-faulted) in full once, which costs about as
    much as streaming half as many bytes of images through the FFT and the
    Gram. With a ``budget`` (and its ``plan``), no more lanes than keep the
    number of frequency bands that of one lane: the lanes share the budget,
    so beyond that each lane more splits the frequencies further, and every
    band reads all of the data again for the same total work."""
    if current_client() is None:
        return 1
    lanes = max(1, min(scheduler_threads(), round(2 * data_bytes / max(1, stats_bytes))))
    if plan is not None and budget is not None:
        passes = len(frequency_bands(plan, 1, budget))  # refuses a plan whose one lane cannot fit
        while lanes > 1 and _band_count(plan, lanes, budget) > passes:
            lanes -= 1
    return lanes


def dft_options(conv: Any) -> DFT:
    return conv if isinstance(conv, DFT) else DFT()


def _freq_bytes(plan: FrequencyPlan) -> int:
    """Bytes of one frequency's packed ``(Cx + Cy)^2`` Hermitian accumulator."""
    return packed_size(plan.x_shape[0] + plan.y_shape[0]) * 16


def frequency_stats_bytes(plan: FrequencyPlan) -> int:
    """Bytes of one accumulator over all planned frequencies."""
    return int(plan.frequencies.shape[0]) * _freq_bytes(plan)


def frequency_bands(plan: FrequencyPlan, lanes: int, budget: int) -> list[np.ndarray]:
    """Split the planned frequencies into bands whose statistics fit the budget.

    Each lane holds one packed accumulator of its band (two while a fold runs
    on a cluster: its input and its own copy) plus a task's buffers (up to an
    eighth of it, see :func:`rows_target`). After the pass, the
    per-frequency work runs a block of frequencies at a time, a few blocks
    at once (counted as a tenth of a lane).
    """
    per_freq = _freq_bytes(plan)
    f_total = plan.frequencies.shape[0]
    # on a cluster a fold holds its input accumulator and the copy it folds into
    copies = 1 if current_client() is None else 2
    share = lanes * (copies + _TASK_SHARE) + 0.1
    per_band = int(budget // (share * per_freq))
    if per_band < 1:  # the smallest band, one frequency, does not fit: refuse before any pass
        need = int(share * per_freq)
        raise MemoryError(
            f"conv='dft': one frequency's statistics of {plan.x_shape[0]} + {plan.y_shape[0]} "
            f"channels ({lanes} lane{'s' if lanes > 1 else ''}) need about {need / 2**20:.1f} MiB, "
            f"more than the DFT memory limit of {budget / 2**20:.1f} MiB. Raise "
            "DFT(memory_limit=...) (--dft-memory-limit), use fewer lanes (DFT(lanes=1)), or "
            "reduce the layers another way (conv='mean')."
        )
    n_bands = -(-f_total // per_band)
    return [a for a in np.array_split(np.arange(f_total), n_bands) if a.size]


def _band_count(plan: FrequencyPlan, lanes: int, budget: int) -> int | float:
    """Bands of ``lanes`` lanes under ``budget``; infinite where one frequency does not fit."""
    try:
        return len(frequency_bands(plan, lanes, budget))
    except MemoryError:
        return float("inf")


def rows_target(
    plan: FrequencyPlan, idx: np.ndarray, opt: DFT, itemsize: int, *, inputs_held: bool
) -> int:
    """Images per fold task.

    Each fold streams its lane's whole accumulator through one ``zhfrk``
    per frequency (read and write), for about ``4 m D^2`` flops per ``16
    D^2`` bytes: with few images per task it is bound by memory bandwidth and
    by the small products (benchmarks/RESULTS.md, conv). So a task takes as many images as fit in an
    eighth of the accumulator (their coefficients, and their stored values
    when a task holds all of its input at once: on ``distributed``), at most
    512 MiB, between 8 and 64 images.
    """
    if opt.rows is not None:  # checked by DFT
        return int(opt.rows)
    d = plan.x_shape[0] + plan.y_shape[0]
    per_image = idx.size * d * 16  # its coefficients
    if inputs_held:
        per_image += itemsize * sum(int(np.prod(shape)) for shape in (plan.x_shape, plan.y_shape))
    room = min(_TASK_SHARE * idx.size * _freq_bytes(plan), _TASK_MAX_BYTES)
    return int(min(64, max(8, room // per_image)))


def task_groups(chunks: tuple[int, ...], rows: int) -> list[list[int]]:
    """Consecutive stored chunks merged (never split) into tasks of at least ``rows``."""
    groups: list[list[int]] = [[]]
    count = 0
    for i, size in enumerate(chunks):
        if count >= rows:
            groups.append([])
            count = 0
        groups[-1].append(i)
        count += size
    return [g for g in groups if g]


def frequency_blocks(f_count: int, d: int) -> list[slice]:
    size = max(1, _CCA_BLOCK_BYTES // max(1, d * d * 16))
    return [slice(i, min(i + size, f_count)) for i in range(0, f_count, size)]
