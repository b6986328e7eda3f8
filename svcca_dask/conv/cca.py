"""Batched CCA of many frequencies at once, with dead channels decoupled.

The same problem as :func:`svcca_dask.linalg.cca_from_cov`, solved for a block
of frequencies without a Python loop: Cholesky whitening and triangular solves
that release the GIL (:mod:`svcca_dask._lapack`), falling back to the
eigh-based whitening where a block is not numerically positive definite.
"""

from __future__ import annotations

import numpy as np

from .._lapack import trsm_lower
from ..linalg import cca_from_cov

__all__: list[str] = []


def _decouple(s: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Covariances with the dead channels of each frequency made independent
    unit-variance (relative to the frequency's scale) channels: in the CCA they
    give zero correlations and leave the live channels' correlations as they
    would be alone. A new array."""
    if live.all():
        return s.copy()
    out = np.where(live[:, :, None] & live[:, None, :], s, 0)
    diag = np.einsum("fii->fi", out)  # a writable view
    diag += (~live) * _top_diagonal(diag)[:, None]
    return out


def _top_diagonal(diag: np.ndarray) -> np.ndarray:
    """The largest diagonal entry of each positive semi-definite block (its
    largest entry, ``|s_ij| <= sqrt(s_ii s_jj)``), or 1 where it is zero."""
    top = np.max(diag.real, axis=-1, initial=0.0)
    return np.where(top > 0, top, 1.0)


def _cross(s: np.ndarray, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """The cross-covariances of the live channels (zero elsewhere). A new array."""
    if lx.all() and ly.all():
        return s.copy()
    return np.where(lx[:, :, None] & ly[:, None, :], s, 0)


def _chol_cca(
    sxx: np.ndarray,
    sxy: np.ndarray,
    syy: np.ndarray,
    *,
    epsilon: float,
    weights: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Batched CCA with Cholesky whitening; the same problem as :func:`cca_from_cov`.

    The blocks are scaled and ridged as :func:`cca_from_cov` does: ``epsilon``
    times the block's largest absolute entry is added to its diagonal (for
    these positive semi-definite blocks the largest entry is a diagonal one,
    ``|s_ij| <= sqrt(s_ii s_jj)``). Canonical correlations do not depend on
    which square root whitens, nor on the scale: with ``L L^H = Sxx + ridge``
    they are the singular values of ``L_x^{-1} Sxy L_y^{-H}`` and the weights
    are ``L_x^{-H} U``. With the ridge every eigenvalue is at least
    ``epsilon`` times the largest, so eigh-based whitening (which zeroes only
    eigenvalues below ``d * eps``) whitens the same matrix. The triangular
    solves run in place without the GIL (:func:`svcca_dask._lapack.trsm_lower`;
    NumPy's Cholesky and SVD release it too), so blocks run in parallel on
    threads. One Cholesky per side and one SVD cost a fraction of two
    ``eigh`` and a full SVD, and the finalization of the DFT path is ``F``
    such problems. Raises ``LinAlgError`` if a block is not numerically
    positive definite (``epsilon`` too small); the caller falls back.

    The blocks are overwritten if they are C-contiguous complex128 arrays.
    """
    sxx, sxy, syy = (np.ascontiguousarray(a, dtype=np.complex128) for a in (sxx, sxy, syy))
    lx, ly = _ridge_cholesky(sxx, epsilon), _ridge_cholesky(syy, epsilon)
    whitened = trsm_lower(lx, sxy, side="L")  # L_x^{-1} Sxy
    trsm_lower(ly, whitened, side="R", trans="C")  # ... L_y^{-H}
    k = min(sxx.shape[-1], syy.shape[-1])
    if not weights:
        s = np.linalg.svd(whitened, compute_uv=False)
        return np.clip(s[..., :k], 0.0, 1.0), None, None
    u, s, vh = np.linalg.svd(whitened, full_matrices=False)
    a = trsm_lower(lx, np.array(u[..., :, :k], order="C"), trans="C")  # L_x^{-H} U
    b = trsm_lower(ly, np.array(_herm(vh[..., :k, :]), order="C"), trans="C")
    return np.clip(s[..., :k], 0.0, 1.0), a, b


def _ridge_cholesky(s: np.ndarray, epsilon: float) -> np.ndarray:
    """``cholesky(s + epsilon * max|s| * I)`` of a batch; ``s`` is overwritten."""
    diag = np.einsum("fii->fi", s)  # a writable view
    diag += (epsilon * _top_diagonal(diag))[:, None]
    return np.linalg.cholesky(s)


def _herm(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a.conj(), -1, -2)


def batched_cca(
    sxx: np.ndarray,
    sxy: np.ndarray,
    syy: np.ndarray,
    lx: np.ndarray,
    ly: np.ndarray,
    epsilon: float,
    *,
    weights: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """CCA of a block of frequencies at once (no loop over frequencies).

    Returns the correlations ``(F, k)`` (zero past each frequency's count),
    the counts ``min(live x, live y)``, and, with ``weights``, the weights
    ``a (F, Cx, k)``, ``b (F, Cy, k)``.
    """

    def blocks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # new arrays each call
        return _decouple(sxx, lx), _cross(sxy, lx, ly), _decouple(syy, ly)

    try:  # _chol_cca overwrites its blocks
        rho, a, b = _chol_cca(*blocks(), epsilon=epsilon, weights=weights)
    except np.linalg.LinAlgError:  # not positive definite at this epsilon: eigh copes
        rho, a, b = cca_from_cov(*blocks(), epsilon=epsilon)
    counts = np.minimum(lx.sum(axis=1), ly.sum(axis=1))
    valid = np.arange(rho.shape[1]) < counts[:, None]
    return np.where(valid, rho, 0.0), counts, a, b


def projection_weights(s: np.ndarray, live: np.ndarray, w: np.ndarray) -> np.ndarray:
    """PWCCA's ``alpha_i = sum_c |<h_i, x_c>|`` up to a common factor, per frequency:
    ``|(S a_i)_c|`` summed over the live channels ``c``."""
    return np.abs(_cross(s, live, live) @ w).sum(axis=1)
