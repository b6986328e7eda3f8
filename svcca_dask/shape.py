"""Linear shape metrics (Williams et al. 2021) from one pass of covariance statistics.

``shape_distance(x, y, alpha=...)`` is netrep's ``LinearMetric(alpha,
center_columns=True, zero_pad=True, score_method=...)``: each centred layer is
partially whitened, ``Z = V diag(alpha + (1 - alpha) lam^(-1/2)) V^T`` from the
eigendecomposition ``C = X^T X = V diag(lam) V^T`` (eigenvalues clipped at
1e-7, rescaled so the total variance is kept), then the two are aligned by the
best rotation (orthogonal Procrustes) and their distance read off. alpha=0
allows any invertible linear map (whitened: CCA), alpha=1 rotations only.

Everything is a function of the covariance blocks: with ``M = Zx Cxy Zy``, the
aligned inner product is the nuclear norm ``||M||_*`` (the singular values of
the Procrustes problem), and the aligned squared norms are ``tr(Zx Cxx Zx)``
and ``tr(Zy Cyy Zy)``. So the distance needs no second pass and no ``n x n``
matrix. Unequal widths are zero-padded as netrep does: the padded zero
eigenvalues (clipped to 1e-7) enter only the variance-preserving rescaling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._config import DEFAULT_MAX_FEATURES, DEFAULT_SPLIT_EVERY
from .inputs import ArrayLike
from .measures import ConvOption, pair_statistics, prepare_pair
from .results import ShapeResult
from .stats import PairStats

__all__ = ["SHAPE_METRICS", "check_shape", "shape_distance", "shape_from_stats"]

#: The ``metric=`` strings :func:`shape_distance` takes.
SHAPE_METRICS = ("angular", "euclidean")

#: netrep's ``whiten(eigval_tol=...)``: eigenvalues of ``X^T X`` are clipped
#: to this, and ``alpha`` above ``1 - _TOL`` means no whitening.
_TOL = 1e-7


def check_shape(alpha: Any, metric: Any) -> None:
    """Refuse an ``alpha`` outside [0, 1] or an unknown ``metric``, before any pass."""
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float, np.floating))
        or not (0.0 <= float(alpha) <= 1.0)
    ):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if metric not in SHAPE_METRICS:
        raise ValueError(f"metric must be 'angular' or 'euclidean', got {metric!r}")


def _partial_whitening(c: np.ndarray, alpha: float, padded: int) -> np.ndarray:
    """netrep's ``whiten(X, alpha, preserve_variance=True)`` as a function of
    ``C = X^T X``, for ``X`` with ``padded`` zero columns appended (which only
    add clipped eigenvalues to the rescaling: the zero data they multiply
    contributes nothing else)."""
    if alpha > 1 - _TOL:
        return np.eye(c.shape[0])
    lam, v = np.linalg.eigh(c)
    lam = np.maximum(lam, _TOL)
    d = alpha + (1 - alpha) * lam ** (-0.5)
    every = np.concatenate([lam, np.full(padded, _TOL)])
    new_var = np.sum(alpha**2 * every + 2 * alpha * (1 - alpha) * np.sqrt(every) + (1 - alpha) ** 2)
    d = d * np.sqrt(np.sum(every) / new_var)
    return (v * d) @ v.T


def shape_from_stats(
    p: PairStats,
    *,
    alpha: float = 1.0,
    metric: str = "angular",
    names: tuple[str, str] = ("x", "y"),
) -> ShapeResult:
    """The shape distance of a pair from its covariance statistics (see
    :func:`shape_distance`)."""
    check_shape(alpha, metric)
    alpha = float(alpha)
    n1 = p.n - 1
    cxx, cxy, cyy = p.sxx * n1, p.sxy * n1, p.syy * n1  # X^T X of the centred data
    dx, dy = cxx.shape[0], cyy.shape[0]
    width = max(dx, dy)
    zx = _partial_whitening(cxx, alpha, width - dx)
    zy = _partial_whitening(cyy, alpha, width - dy)
    inner = float(np.sum(np.linalg.svd(zx @ cxy @ zy, compute_uv=False)))
    nx2 = float(np.trace(zx @ cxx @ zx))
    ny2 = float(np.trace(zy @ cyy @ zy))
    for value, name in ((nx2, names[0]), (ny2, names[1])):
        if not value > 0:
            raise ValueError(f"{name} is constant: a shape distance needs some variance")
    if metric == "angular":
        score = float(np.arccos(np.clip(inner / np.sqrt(nx2 * ny2), -1.0, 1.0)))
    else:
        score = float(np.sqrt(max(nx2 + ny2 - 2 * inner, 0.0)))
    return ShapeResult(score=score, alpha=alpha, metric=metric, n_samples=p.n)


def shape_distance(
    x: ArrayLike,
    y: ArrayLike,
    *,
    alpha: float = 1.0,
    metric: str = "angular",
    conv: ConvOption = "mean",
    layout: str | tuple[str | None, str | None] | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    max_features: int = DEFAULT_MAX_FEATURES,
    mask: ArrayLike | None = None,
    sample_ids: Any = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
) -> ShapeResult:
    """Linear shape distance (Williams et al. 2021), netrep's ``LinearMetric``.

    The distance between the two layers after the best alignment that
    ``alpha`` allows, from the covariance statistics of one pass (see
    :mod:`svcca_dask.shape`): equal to ``netrep.metrics.LinearMetric(alpha,
    center_columns=True, zero_pad=True, score_method=metric).fit_score(x, y)``.

    Parameters
    ----------
    x, y : array-like, shape (n_samples, n_features)
        As for :func:`svcca_dask.cca`; widths may differ (zero-padded).
    alpha : float in [0, 1], default 1.0
        1: rotations only (orthogonal Procrustes, the default), 0: any
        invertible linear map (then the angular distance is ``arccos`` of the
        mean canonical correlation), in between: partial whitening.
    metric : {"angular", "euclidean"}, default "angular"
        ``arccos`` of the aligned representations' correlation, in [0, pi], or
        the Frobenius norm of their difference (in the data's units).
    conv : {"mean", "samples", "flatten"}, default "mean"
        Reduction of conv layers (``"dft"`` is not available: a shape metric
        of the pooled frequencies is not netrep's).
    layout, split_every, max_features, mask
        As for :func:`svcca_dask.cca` (token layers: ``conv="samples"`` or ``"mean"``).

    Returns
    -------
    ShapeResult
        ``score`` is the distance: lower is more alike.
    """
    check_shape(alpha, metric)
    pair = prepare_pair(
        x,
        y,
        conv=conv,
        layout=layout,
        mask=mask,
        sample_ids=sample_ids,
        rows=rows,
        storage_options=storage_options,
        missing_chunks=missing_chunks,
    )  # lazy: nothing read yet
    if pair.dft:
        raise ValueError(
            "shape_distance takes conv='mean' (the default), 'samples' or 'flatten', not 'dft'"
        )
    p = pair_statistics(pair, split_every=split_every, max_features=max_features)
    return shape_from_stats(p, alpha=alpha, metric=metric)
