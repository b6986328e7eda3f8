"""CCA, SVCCA, PWCCA and linear CKA of conv layers with ``conv="dft"``.

Per-frequency results (:mod:`~svcca_dask.conv.cca`) pooled over the band with
the multiplicity of conjugate pairs; from statistics (``*_from_dft_stats``) or
from data, band by band under the memory limit (:func:`dft_measure`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dask.delayed import delayed

from ..inputs import ArrayLike
from ..linalg import top_eigh
from ..results import CKAResult, DFTCCAResult, DFTPWCCAResult, DFTSVCCAResult
from ..rules import (
    check_epsilon,
    check_keep,
    check_side,
    keep_count,
    keep_pair,
    live_mask,
    sample_size_note,
)
from .accumulate import DFTRun, DFTStats, FrequencyParts, without_statistics
from .cca import batched_cca, projection_weights
from .plan import frequency_blocks

__all__ = [
    "cca_from_dft_stats",
    "cka_from_dft_stats",
    "dft_measure",
    "pwcca_from_dft_stats",
    "svcca_from_dft_stats",
]


def _pool(
    values: np.ndarray, counts: np.ndarray, mult: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten per-frequency values (F, k) with multiplicity; return values and the
    order that sorts the first argument's pooled values descending."""
    valid = np.arange(values.shape[1]) < counts[:, None]
    rows = np.repeat(np.arange(values.shape[0]), mult)
    pooled = values[rows][valid[rows]]
    return pooled, np.argsort(-pooled, kind="stable")


def _fields(parts: FrequencyParts, names: tuple[str, str]) -> dict[str, Any]:
    """Pool per-frequency correlations into the result's fields.

    The pooled list is what the CCA of the two flattened (band-limited) layers
    gives when different frequencies are uncorrelated (exactly so for
    translation-invariant data): every frequency's correlations, counted with
    multiplicity, and zeros up to ``min(Kx, Ky)``, where ``Kx`` is the number
    of real directions of x that enter (live channels, or kept SVD directions,
    summed over frequencies with multiplicity): a direction of x at a
    frequency where y has fewer directions correlates with nothing.
    """
    a = parts.arrays
    rho, counts, mult = a["rho"], a["counts"], parts.multiplicity
    stats_like = parts
    for side, name in (("nx", names[0]), ("ny", names[1])):
        if not np.any(a[side]):
            raise ValueError(
                f"{name} has no live channel at any common frequency: every channel has "
                "zero variance over the images (a dead layer, or constant input)"
            )
    # both sides have directions; where they fall at different frequencies
    # (no frequency where both have one) they correlate with nothing: zeros
    pooled, order = _pool(rho, counts, mult)
    n_dirs = min(int(np.sum(mult * a["nx"])), int(np.sum(mult * a["ny"])))
    note = sample_size_note(stats_like.n, int(counts.max()), where=" at a frequency")
    coef = np.concatenate([pooled[order], np.zeros(max(0, n_dirs - pooled.size))])
    return {
        "score": float(np.mean(coef)),
        "coefficients": coef,
        "per_frequency": rho,
        "n_coefficients": counts,
        "frequencies": stats_like.frequencies,
        "multiplicity": stats_like.multiplicity,
        "band": stats_like.band,
        "n_samples": stats_like.n,
        "warnings": (note,) if note else (),
    }


def _cca_part(st: DFTStats, *, epsilon: float, side: str | None = None) -> dict[str, np.ndarray]:
    """Per-frequency CCA (and PWCCA weights of ``side``) of one band."""
    f_count = st.frequencies.shape[0]
    cx, cy = st.sizes
    k = min(cx, cy)
    rho = np.zeros((f_count, k))
    counts = np.zeros(f_count, dtype=int)
    nx, ny = np.zeros(f_count, dtype=int), np.zeros(f_count, dtype=int)
    alpha = np.zeros((f_count, k))
    for sl in frequency_blocks(f_count, cx + cy):
        sxx, sxy, syy = st.sxx[sl], st.sxy[sl], st.syy[sl]
        lx, ly = _live_channels(sxx, st.x_scale, epsilon), _live_channels(syy, st.y_scale, epsilon)
        r, c, a, b = batched_cca(sxx, sxy, syy, lx, ly, epsilon, weights=side is not None)
        rho[sl], counts[sl] = r, c
        nx[sl], ny[sl] = lx.sum(axis=1), ly.sum(axis=1)
        if side is not None:
            s, live, w = (sxx, lx, a) if side == "x" else (syy, ly, b)
            al = projection_weights(s, live, w)
            alpha[sl] = np.where(np.arange(k) < c[:, None], al, 0.0)
    return {"rho": rho, "counts": counts, "nx": nx, "ny": ny, "alpha": alpha}


def _eig_part(st: DFTStats) -> dict[str, np.ndarray]:
    """Per-frequency covariance eigenvalues (descending) of each side."""
    wx = np.linalg.eigvalsh(st.sxx)[:, ::-1].clip(0.0)
    wy = np.linalg.eigvalsh(st.syy)[:, ::-1].clip(0.0)
    return {"wx": wx, "wy": wy}


def _svcca_part(
    st: DFTStats, kx: np.ndarray, ky: np.ndarray, *, epsilon: float
) -> dict[str, np.ndarray]:
    """Per-frequency CCA of the top ``kx[f]``, ``ky[f]`` eigen-directions."""
    f_count = st.frequencies.shape[0]
    cx, cy = st.sizes
    k = min(cx, cy)
    rho = np.zeros((f_count, k))
    counts = np.zeros(f_count, dtype=int)
    for sl in frequency_blocks(f_count, cx + cy):
        kx_b, ky_b = kx[sl], ky[sl]
        big_x, big_y = int(kx_b.max(initial=0)), int(ky_b.max(initial=0))
        if big_x == 0 or big_y == 0:
            continue
        wx, vx = top_eigh(st.sxx[sl])
        wy, vy = top_eigh(st.syy[sl])
        vx, vy = vx[..., :big_x], vy[..., :big_y]
        sxy = np.swapaxes(vx.conj(), -1, -2) @ st.sxy[sl] @ vy
        lx = np.arange(big_x) < kx_b[:, None]
        ly = np.arange(big_y) < ky_b[:, None]
        sxx = wx[:, :big_x, None] * np.eye(big_x)
        syy = wy[:, :big_y, None] * np.eye(big_y)
        r, c, _, _ = batched_cca(sxx, sxy, syy, lx, ly, epsilon)
        rho[sl, : r.shape[1]], counts[sl] = r, c
    return {"rho": rho, "counts": counts, "nx": kx, "ny": ky}


def _live_channels(s: np.ndarray, scale: float, epsilon: float) -> np.ndarray:
    """``(F, C)``: the live channels of each frequency of a block of covariances,
    by the dead-feature rule (:func:`svcca_dask.rules.live_mask`) with the
    layer's scale (see :attr:`DFTStats.x_scale`)."""
    return live_mask(np.diagonal(s, axis1=-2, axis2=-1), scale, epsilon)


def _keep_counts(
    w: np.ndarray,
    mult: np.ndarray,
    keep: float | int,
    scale: float,
    epsilon: float,
    name: str,
) -> tuple[np.ndarray, float]:
    """Directions kept per frequency, chosen over the whole band at once.

    The eigenvalues of all frequencies are pooled, each counted with its
    frequency's multiplicity (a conjugate pair is two real directions of the
    flattened layer with the same variance), and the largest are kept by the
    keep rule (:func:`svcca_dask.rules.keep_count`). Conjugate pairs are kept
    whole. Dead directions (by :func:`svcca_dask.rules.live_mask` with the
    layer's scale) are never kept. Returns the counts ``(F,)`` and the
    fraction explained.
    """
    check_keep(keep)
    total = float(np.sum(mult[:, None] * w))
    if not total > 0:
        raise ValueError(f"{name} has zero total variance over the common band")
    f_idx, j_idx = np.nonzero(live_mask(w, scale, epsilon))
    vals = w[f_idx, j_idx]
    order = np.argsort(-vals, kind="stable")
    weight = mult[f_idx[order]]
    n_take = keep_count(vals[order], keep, total=total, weights=weight)
    n_take = max(1, min(n_take, order.size))
    taken = f_idx[order[:n_take]]
    counts = np.bincount(taken, minlength=w.shape[0])
    explained = float(np.sum(weight[:n_take] * vals[order[:n_take]]) / total)
    return counts, explained


def _pwcca_fields(parts: FrequencyParts, side: str, names: tuple[str, str]) -> dict[str, Any]:
    """PWCCA pooled over frequencies: ``score = sum alpha rho / sum alpha`` over
    every frequency's coefficients with multiplicity (the zero padding of
    :func:`_fields` has zero weight)."""
    a = parts.arrays
    f = _fields(parts, names)
    pooled_rho, order = _pool(a["rho"], a["counts"], parts.multiplicity)
    pooled_alpha, _ = _pool(a["alpha"], a["counts"], parts.multiplicity)
    total = pooled_alpha.sum()
    if total > 0:
        weights = pooled_alpha / total
    else:  # every projection is zero (or nothing correlates): the plain mean
        weights = np.full(pooled_alpha.size, 1.0 / max(1, pooled_alpha.size))
    f["score"] = float(np.sum(weights * pooled_rho))
    pad = f["coefficients"].size - pooled_rho.size
    f.update(
        weights=np.concatenate([weights[order], np.zeros(pad)]),
        per_frequency_weights=a["alpha"] / total if total > 0 else a["alpha"],
        side=side,
    )
    return f


def _pick_side(side: str, sizes: tuple[int, int]) -> str:
    check_side(side)
    if side == "smaller":
        return "x" if sizes[0] <= sizes[1] else "y"
    return side


def cca_from_dft_stats(
    stats: DFTStats, *, epsilon: float = 1e-10, names: tuple[str, str] = ("x", "y")
) -> DFTCCAResult:
    """CCA per frequency, pooled (see :func:`svcca_dask.cca` with ``conv="dft"``)."""
    parts = FrequencyParts.join([(without_statistics(stats), _cca_part(stats, epsilon=epsilon))])
    return DFTCCAResult(**_fields(parts, names))


def svcca_from_dft_stats(
    stats: DFTStats,
    *,
    keep: float | int | tuple[float | int, float | int] = 0.99,
    epsilon: float = 1e-10,
    names: tuple[str, str] = ("x", "y"),
) -> DFTSVCCAResult:
    """SVCCA per frequency with a global ``keep`` (see :func:`svcca_dask.svcca`)."""
    eig = FrequencyParts.join([(without_statistics(stats), _eig_part(stats))])
    kx, ky, ex, ey = _global_keep(eig, keep, stats.x_scale, stats.y_scale, epsilon, names)
    parts = FrequencyParts.join(
        [(without_statistics(stats), _svcca_part(stats, kx, ky, epsilon=epsilon))]
    )
    return DFTSVCCAResult(
        **_fields(parts, names),
        x_kept=kx,
        y_kept=ky,
        x_explained=ex,
        y_explained=ey,
    )


def pwcca_from_dft_stats(
    stats: DFTStats,
    *,
    epsilon: float = 1e-10,
    side: str = "x",
    names: tuple[str, str] = ("x", "y"),
) -> DFTPWCCAResult:
    """PWCCA per frequency, weights pooled (see :func:`svcca_dask.pwcca`)."""
    side = _pick_side(side, stats.sizes)
    parts = FrequencyParts.join(
        [(without_statistics(stats), _cca_part(stats, epsilon=epsilon, side=side))]
    )
    return DFTPWCCAResult(**_pwcca_fields(parts, side, names))


def _cka_part(st: DFTStats) -> dict[str, np.ndarray]:
    """Per-frequency squared norms of the blocks, each side divided by its scale
    (the ratio does not change, and the squares stay in float64's range)."""

    def sq(s: np.ndarray, scale: float) -> np.ndarray:
        return np.sum(np.abs(s / scale) ** 2, axis=(1, 2))

    sx = st.x_scale if st.x_scale > 0 else 1.0
    sy = st.y_scale if st.y_scale > 0 else 1.0
    return {"xy": sq(st.sxy, np.sqrt(sx) * np.sqrt(sy)), "xx": sq(st.sxx, sx), "yy": sq(st.syy, sy)}


def _cka_result(parts: FrequencyParts, names: tuple[str, str]) -> Any:
    m = parts.multiplicity
    a = parts.arrays
    nx, ny = np.sqrt(np.sum(m * a["xx"])), np.sqrt(np.sum(m * a["yy"]))
    for norm, name in ((nx, names[0]), (ny, names[1])):
        if norm == 0:
            raise ValueError(
                f"{name} has no live feature: every channel has zero variance at every "
                "common frequency, and linear CKA is undefined for a constant layer"
            )
    score = float(np.sum(m * a["xy"]) / (nx * ny))
    return CKAResult(score=min(max(score, 0.0), 1.0), n_samples=parts.n)


def cka_from_dft_stats(stats: DFTStats, *, names: tuple[str, str] = ("x", "y")) -> Any:
    """Linear CKA from per-frequency statistics (see :func:`svcca_dask.linear_cka`)."""
    return _cka_result(FrequencyParts.join([(without_statistics(stats), _cka_part(stats))]), names)


def _global_keep(
    eig: FrequencyParts,
    keep: Any,
    x_scale: float,
    y_scale: float,
    epsilon: float,
    names: tuple[str, str],
) -> tuple[np.ndarray, np.ndarray, float, float]:
    keep_x, keep_y = keep_pair(keep)
    kx, ex = _keep_counts(eig.arrays["wx"], eig.multiplicity, keep_x, x_scale, epsilon, names[0])
    ky, ey = _keep_counts(eig.arrays["wy"], eig.multiplicity, keep_y, y_scale, epsilon, names[1])
    return kx, ky, ex, ey


def _decide_keep(
    eig: FrequencyParts,
    keep: Any,
    scale: tuple[float, float],
    epsilon: float,
    names: tuple[str, str],
) -> dict[str, Any]:
    kx, ky, ex, ey = _global_keep(eig, keep, scale[0], scale[1], epsilon, names)
    return {"kx": kx, "ky": ky, "x_explained": ex, "y_explained": ey}


def _svcca_block(
    st: DFTStats, part: dict[str, np.ndarray], epsilon: float
) -> dict[str, np.ndarray]:
    return _svcca_part(st, part["kx"], part["ky"], epsilon=epsilon)


def dft_measure(
    measure: str,
    x: ArrayLike,
    y: ArrayLike,
    *,
    conv: Any = "dft",
    layout: Any = None,
    epsilon: float = 1e-10,
    keep: Any = 0.99,
    side: str = "x",
    names: tuple[str, str] = ("x", "y"),
) -> Any:
    """One measure with ``conv="dft"``, band by band under the memory limit.

    Each band of frequencies takes one pass over the data; its statistics are
    reduced to per-frequency results by tasks on the scheduler and dropped
    before the next band. SVCCA chooses its kept directions from the
    eigenvalues of every frequency: with one band the choice is a task in the
    same graph (one pass); with several, one pass per band gathers the
    eigenvalues and one more per band computes the CCA.
    """
    check_epsilon(epsilon)
    run = DFTRun(x, y, conv=conv, layout=layout, names=names)
    if measure == "svcca":
        keep_pair(keep)
        if len(run.bands) == 1:
            return _svcca_one_pass(run, keep=keep, epsilon=epsilon, names=names)
        eig = run.map(_eig_part)
        assert run.scale is not None
        dec = _decide_keep(eig, keep, run.scale, epsilon, names)
        parts = run.map_split(_svcca_block, {"kx": dec["kx"], "ky": dec["ky"]}, epsilon)
        return DFTSVCCAResult(
            **_fields(parts, names),
            x_kept=dec["kx"],
            y_kept=dec["ky"],
            x_explained=dec["x_explained"],
            y_explained=dec["y_explained"],
        )
    if measure == "pwcca":
        side = _pick_side(side, (run.plan.x_shape[0], run.plan.y_shape[0]))
        parts = run.map(_cca_part_fn, epsilon, side)
        return DFTPWCCAResult(**_pwcca_fields(parts, side, names))
    if measure == "cka":
        return _cka_result(run.map(_cka_part_fn), names)
    parts = run.map(_cca_part_fn, epsilon, None)
    return DFTCCAResult(**_fields(parts, names))


def _cca_part_fn(st: DFTStats, epsilon: float, side: str | None) -> dict[str, np.ndarray]:
    return _cca_part(st, epsilon=epsilon, side=side)


def _cka_part_fn(st: DFTStats) -> dict[str, np.ndarray]:
    return _cka_part(st)


def _svcca_one_pass(
    run: DFTRun, *, keep: Any, epsilon: float, names: tuple[str, str]
) -> DFTSVCCAResult:
    """SVCCA in one graph: eigenvalues per block, the global choice, the CCA per block."""
    (band,) = run.bands
    accs, scale = run._pass(band)
    blocks = run._blocks(band)
    eig = [run._apply(accs, scale, band, sl, _eig_part) for sl in blocks]
    joined = delayed(FrequencyParts.join, pure=False)(eig)
    dec = delayed(_decide_keep, pure=False)(joined, keep, scale, epsilon, names)
    sv = [
        run._apply(accs, scale, band, sl, _svcca_block, delayed(_slice_keep)(dec, sl), epsilon)
        for sl in blocks
    ]
    parts_list, dec_value = run._run([sv, dec], scale, last=True)
    parts = FrequencyParts.join(parts_list)
    return DFTSVCCAResult(
        **_fields(parts, names),
        x_kept=dec_value["kx"],
        y_kept=dec_value["ky"],
        x_explained=dec_value["x_explained"],
        y_explained=dec_value["y_explained"],
    )


def _slice_keep(dec: dict[str, Any], sl: slice) -> dict[str, np.ndarray]:
    return {"kx": dec["kx"][sl], "ky": dec["ky"][sl]}
