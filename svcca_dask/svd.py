"""The SVD step of SVCCA for layers of any width: covariance, TSQR or randomized.

SVCCA keeps each layer's top right singular vectors of the centred data. Three
ways to get them, chosen by ``svd=`` in :func:`svcca_dask.svcca`:

``"covariance"``
    ``eigh`` of the ``d x d`` covariance accumulated in the one pass that also
    gives the cross-covariance: exact, one pass, ``(dx + dy)**2`` memory. The
    fastest whenever it fits (one SYRK pass against three or more passes).
``"tsqr"``
    Dask's exact tall-skinny QR then SVD of ``R`` (``dask.array.linalg.tsqr``) on
    the lazily centred data: ``d x d`` per block and per merge, better
    conditioned than the covariance (no squared condition number), slower.
``"randomized"``
    Halko, Martinsson & Tropp's randomized range finder
    (``dask.array.linalg.svd_compressed``) on the lazily centred data: memory
    ``n x (k + oversamples)`` plus ``d x (k + oversamples)``, never ``d x d``;
    for layers too wide for a covariance (a flattened conv layer: 256 x 14 x 14
    = 50,176 features would need a 20 GB covariance).
``"auto"`` (default)
    ``"covariance"`` when ``dx + dy <= max_features`` (the covariance path's
    own limit, :data:`svcca_dask.DEFAULT_MAX_FEATURES` = 8192 by default,
    512 MiB per partial statistic); otherwise each side on its own: its own
    ``d x d`` covariance when ``d <= max_features``, else randomized.

After the SVD step of the "tsqr" and "randomized" paths, each side is projected
lazily on its kept directions and the projected statistics (``k x k``) are
accumulated with :func:`svcca_dask.stats.accumulate` in one more pass; the CCA runs
on those.

Passes over the data: "covariance" 1; "tsqr" 3 (mean and total variance, TSQR,
projection); "randomized" ``4 + 2 * n_power_iter`` (mean and total variance,
``1 + 2 n_power_iter`` for the range finder, one for ``Q^T A``, projection),
and ``2 + 2 n_power_iter`` more for each doubling of ``n_components`` a float
``keep`` needs.

``keep`` as a fraction works on every path: the total variance is the trace of
the covariance, i.e. the sum of the column variances, accumulated with the
means in the first pass.

References
----------
Halko, N., Martinsson, P. G. & Tropp, J. A. (2011). Finding structure with
randomness: probabilistic algorithms for constructing approximate matrix
decompositions. SIAM Review 53(2), 217-288.
Benson, A. R., Gleich, D. F. & Demmel, J. (2013). Direct QR factorizations for
tall-and-skinny matrices in MapReduce architectures (TSQR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from ._config import DEFAULT_SPLIT_EVERY
from .linalg import top_eigh
from .memory import check_peak, plan_covariance
from .rules import check_keep, dead_threshold, keep_count, live_features
from .scheduler import compute, current_client
from .stats import accumulate, accumulate_graph, to_moments

__all__ = ["SVD_METHODS", "RandomizedSVD", "SideSVD", "projected_stats", "reduce_pair"]

#: The ``svd=`` strings :func:`svcca_dask.svcca` accepts.
SVD_METHODS = ("auto", "covariance", "randomized", "tsqr")


@dataclass(frozen=True)
class RandomizedSVD:
    """Options of ``svd="randomized"`` (pass ``svd=RandomizedSVD(...)``).

    Parameters
    ----------
    n_components : int, optional
        Directions computed first for a float ``keep`` (default
        ``min(d, 128)``); doubled, with a new run, until the kept fraction of
        the total variance is reached. An int ``keep`` computes ``keep``.
    n_power_iter : int, default 2
        Power iterations (two passes each); the error shrinks like
        ``(s_{k+1} / s_k) ** (2 q + 1)``. Raise it for slowly decaying spectra.
    n_oversamples : int, default 10
        Extra random directions of the range finder.
    seed : int, optional, default 0
        Seed of the random test matrix (results are reproducible by default).
    """

    n_components: int | None = None
    n_power_iter: int = 2
    n_oversamples: int = 10
    seed: int | None = 0


@dataclass(frozen=True)
class SideSVD:
    """The SVD step of one side.

    Attributes
    ----------
    method : str
        "covariance", "tsqr" or "randomized".
    mean : ndarray, shape (d,)
    directions : ndarray, shape (d, k)
        Orthonormal kept directions (right singular vectors of the centred data).
    variances : ndarray, shape (k,)
        Variance along each kept direction (squared singular value / (n - 1)).
    total_variance : float
        Trace of the covariance (sum of the column variances).
    live : ndarray of int
        Features with variance at least ``epsilon`` times the largest.
    explained : float
        ``variances.sum() / total_variance``.
    """

    method: str
    mean: np.ndarray
    directions: np.ndarray
    variances: np.ndarray
    total_variance: float
    live: np.ndarray
    explained: float


def _n_keep(w: np.ndarray, total: float, keep: float | int) -> int | None:
    """Directions needed for ``keep`` from the leading variances ``w`` (the keep
    rule), or None when a float ``keep`` is not reached within ``w``."""
    k = keep_count(w, keep, total=total)
    if isinstance(keep, (int, np.integer)):
        return int(min(k, np.count_nonzero(w > 0) or 1))
    return k if k <= w.size else None


def _svd_compute(*arrays: Any) -> tuple[Any, ...]:
    return compute(*arrays)


def _centred(x: da.Array, mean: np.ndarray) -> da.Array:
    return x.astype(np.float64) - mean


def _top_from(s: np.ndarray, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Variances (descending) and directions (d, k) from singular values / right vectors."""
    order = np.argsort(-s, kind="stable")
    return (s[order] ** 2) / (n - 1), v[order].T


def _tsqr(xc: da.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    _, s, v = da.linalg.tsqr(xc, compute_svd=True)
    s, v = _svd_compute(s, v)
    return _top_from(np.asarray(s), np.asarray(v), n)


def _randomized(xc: da.Array, k: int, opts: RandomizedSVD, n: int) -> tuple[np.ndarray, np.ndarray]:
    from threadpoolctl import threadpool_limits

    kwargs = dict(
        n_power_iter=opts.n_power_iter,
        n_oversamples=opts.n_oversamples,
        seed=opts.seed,
        iterator="QR",  # re-orthonormalize at every power step: stable in float64
        compute=True,  # persist the small n x (k + p) iterates; re-read the data each pass
        coerce_signs=True,
    )
    if current_client() is None:
        with threadpool_limits(limits=1, user_api="blas"):
            _, s, v = da.linalg.svd_compressed(xc, k, **kwargs)
            s, v = dask.compute(s, v)
    else:
        _, s, v = da.linalg.svd_compressed(xc, k, **kwargs)
        s, v = dask.compute(s, v)
    return _top_from(np.asarray(s), np.asarray(v), n)


def _raise_if_not_finite(x: da.Array, value: float, name: str) -> None:
    if np.isfinite(value):
        return
    bad_rows = da.flatnonzero(~da.isfinite(x).all(axis=1))
    (rows,) = compute(bad_rows)
    shown = ", ".join(str(r) for r in rows[:5]) + (" ..." if rows.size > 5 else "")
    raise ValueError(
        f"{name} contains NaN or infinite values in rows {shown}; clean or mask these samples first."
    )


def reduce_pair(
    arrays: tuple[da.Array, da.Array],
    *,
    methods: tuple[str, str],
    keep: tuple[float | int, float | int],
    options: RandomizedSVD,
    epsilon: float | None,
    names: tuple[str, str],
    split_every: int = DEFAULT_SPLIT_EVERY,
) -> tuple[SideSVD, SideSVD]:
    """The SVD step of both sides, sharing passes over the data where possible.

    The first pass (one ``dask.compute``) gives, per side, the full covariance
    ("covariance") or the means and column variances ("tsqr", "randomized").
    """
    for k in keep:
        check_keep(k)
    for a, method, kp, name in zip(arrays, methods, keep, names, strict=True):
        if method == "randomized":  # refused before the first pass if it cannot fit
            _check_fits(a, name, _first_k(kp, options, min(a.shape)), options)
    own = [[a] for a, method in zip(arrays, methods, strict=True) if method == "covariance"]
    if own:
        split_every = plan_covariance(
            own,
            split_every=split_every,
            what="the SVD step's covariance of "
            + " and ".join(f"{int(a.shape[1])} features" for (a,) in own),
            remedies="Use svd='randomized', or reduce the layers first (conv='dft' or "
            "'mean' for conv layers), or raise the budget.",
        )
    graphs: list[Any] = []
    for a, method in zip(arrays, methods, strict=True):
        if method == "covariance":
            graphs.append(accumulate_graph([a], split_every=split_every))
        else:
            graphs.append(
                (a.mean(axis=0, dtype=np.float64), a.var(axis=0, ddof=1, dtype=np.float64))
            )
    first = _svd_compute(*graphs)
    out = []
    for a, method, res, kp, name in zip(arrays, methods, first, keep, names, strict=True):
        n = int(a.shape[0])
        if method == "covariance":
            m = to_moments(res, [a])
            cov = m.cov(0, 0)
            mean, var = m.block_mean(0), np.real(np.diagonal(cov)).copy()
        else:
            mean, var = np.asarray(res[0]), np.asarray(res[1])
        total = float(np.sum(var))
        _raise_if_not_finite(a, total, name)
        live = live_features(var, dead_threshold(epsilon), name)
        if method == "covariance":
            sub = cov[np.ix_(live, live)]
            w, v = top_eigh(sub)
            full = np.zeros((a.shape[1], v.shape[1]))
            full[live] = v
            w_all, v_all = w, full
        else:
            xc = _centred(a, mean)
            if method == "tsqr":
                w_all, v_all = _tsqr(xc, n)
            else:
                w_all, v_all = _randomized_until(xc, kp, options, n, total, a.shape, name)
        k = _n_keep(w_all, total, kp)
        if k is None:  # float keep beyond what the computed directions explain
            k = w_all.size
        tiny = dead_threshold(epsilon) * max(float(w_all[0]), 0.0)
        k = max(1, min(k, int(np.count_nonzero(w_all > tiny)) or 1))
        out.append(
            SideSVD(
                method=method,
                mean=mean,
                directions=v_all[:, :k],
                variances=w_all[:k],
                total_variance=total,
                live=live,
                explained=float(np.sum(w_all[:k]) / total),
            )
        )
    return out[0], out[1]


#: Float64 copies of a side's data a randomized run holds at its peak; of its
#: ``(k + oversamples) x d`` iterates besides the partials of ``A^T Q``; and at
#: most that many of those partials (one per row chunk, merged four at a time by
#: Dask's tree reduction, not all at once): measured, benchmarks/RESULTS.md.
_DATA_COPIES = 1.5
_ITERATE_COPIES = 4
_PARTIAL_COPIES = 12


def randomized_bytes(n: int, d: int, k: int, opts: RandomizedSVD, *, chunks: int = 1) -> int:
    """Peak bytes of one randomized SVD of ``n x d`` data in ``chunks`` row
    chunks, with ``k`` directions."""
    iterates = _ITERATE_COPIES + min(chunks, _PARTIAL_COPIES)
    return int(8 * (_DATA_COPIES * n * d + iterates * (k + opts.n_oversamples) * (n + d)))


def _first_k(keep: float | int, opts: RandomizedSVD, cap: int) -> int:
    """Directions of the first randomized run (a float ``keep`` may double them)."""
    if isinstance(keep, (int, np.integer)):
        return min(int(keep), cap)
    return min(opts.n_components or 128, cap)


def _check_fits(a: da.Array, name: str, k: int, opts: RandomizedSVD, why: str = "") -> None:
    """Refuse, before the pass, a randomized run that would not fit the memory budget."""
    n, d = int(a.shape[0]), int(a.shape[1])
    check_peak(
        randomized_bytes(n, d, k, opts, chunks=len(a.chunks[0])),
        what=f"{name}: the randomized SVD of {n} samples x {d} features with {k} directions"
        + (f" {why}" if why else ""),
        remedies="Keep fewer directions (an int keep, or RandomizedSVD(n_components=...)), "
        "reduce the layer first (conv='dft', the default for conv layers, or conv='mean' / "
        "'samples'), or raise the budget.",
    )


def _randomized_until(
    xc: da.Array,
    keep: float | int,
    opts: RandomizedSVD,
    n: int,
    total: float,
    shape: tuple[int, ...],
    name: str = "x",
) -> tuple[np.ndarray, np.ndarray]:
    """Randomized SVD with enough directions for ``keep`` (doubling for a float);
    a doubling that would not fit the memory budget is refused before its passes."""
    cap = min(int(shape[0]), int(shape[1]))
    k = _first_k(keep, opts, cap)
    while True:
        w, v = _randomized(xc, k, opts, n)
        if isinstance(keep, (int, np.integer)) or k >= cap or _n_keep(w, total, keep) is not None:
            return w, v
        prev, k = k, min(2 * k, cap)
        _check_fits(xc, name, k, opts, f"(keep={keep} was not reached with {prev})")


def project(a: da.Array, side: SideSVD) -> da.Array:
    """The lazily centred data projected on the kept directions, ``(n, k)``."""
    return _centred(a, side.mean) @ side.directions


def projected_stats(
    arrays: tuple[da.Array, da.Array],
    sides: tuple[SideSVD, SideSVD],
    *,
    names: tuple[str, str],
    split_every: int = DEFAULT_SPLIT_EVERY,
) -> Any:
    """One more pass: the co-moments of the two projected sides."""
    xp, yp = (project(a, s) for a, s in zip(arrays, sides, strict=True))
    return accumulate([xp, yp], names=list(names), split_every=split_every)
