"""Dense linear algebra on covariance blocks: whitening and CCA.

Every function here works on small ``(d, d)`` statistics, never on data, and
accepts leading batch dimensions (``(..., d, d)``) and complex Hermitian
input, so the per-frequency CCA of the DFT path is the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

__all__ = ["RANK_RTOL", "cca_from_cov", "inv_sqrt_psd", "top_eigh", "whitening"]

#: Whitening without a ridge (``epsilon=None``, the default) drops the directions
#: whose eigenvalue is below this fraction of the largest: rank-revealing, so a
#: layer against itself or an invertible map of itself scores 1 to rounding.
RANK_RTOL = 1e-10


def inv_sqrt_psd(c: np.ndarray, *, rtol: float | None = None) -> np.ndarray:
    """Inverse square root of Hermitian positive semi-definite matrices via ``eigh``.

    Eigenvalues below ``max(d * eps, rtol) * max(eigenvalue)`` are treated as
    zero and get a zero inverse (as ``pinv`` does), so the result is finite for
    singular input.

    Parameters
    ----------
    c : ndarray, shape (..., d, d)
    rtol : float, optional
        A relative tolerance above rounding (``RANK_RTOL`` when no ridge is added).

    Returns
    -------
    ndarray, shape (..., d, d)
    """
    w, v = np.linalg.eigh(c)
    top = np.max(w, axis=-1, keepdims=True)
    rel = max(c.shape[-1] * np.finfo(np.float64).eps, rtol or 0.0)
    tol = rel * np.maximum(top, 0.0)
    safe = np.where(w > tol, w, 1.0)
    inv = np.where(w > tol, 1.0 / np.sqrt(safe), 0.0)
    return (v * inv[..., None, :]) @ np.swapaxes(v.conj(), -1, -2)


def top_eigh(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a covariance.

    For a covariance ``S = X_c^T X_c / (n - 1)`` these are the squared singular
    values (over ``n - 1``) and right singular vectors of the centred data:
    the SVD step of SVCCA without a second pass over the data.
    """
    w, v = np.linalg.eigh(c)
    return np.clip(w[..., ::-1], 0.0, None), v[..., ::-1]


def whitening(epsilon: float | None) -> Callable[[np.ndarray], np.ndarray]:
    """The inverse square root :func:`cca_from_cov` whitens with: rank-revealing
    (:data:`RANK_RTOL`) without a ridge, else :func:`inv_sqrt_psd` as it is."""
    if epsilon is None:
        return functools.partial(inv_sqrt_psd, rtol=RANK_RTOL)
    return inv_sqrt_psd


def cca_from_cov(
    sxx: np.ndarray,
    sxy: np.ndarray,
    syy: np.ndarray,
    *,
    epsilon: float | None = None,
    inv_sqrt: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical correlations and weights from covariance blocks.

    Follows the original SVCCA code (Raghu et al. 2017): each block is divided
    by its largest absolute entry (the cross block by the geometric mean of the
    two), ``epsilon`` is added to the diagonals, each side is whitened with an
    eigh-based inverse square root, and the SVD of the whitened cross-covariance
    gives the correlations. Dead features must be dropped by the caller.

    Parameters
    ----------
    sxx : ndarray, shape (..., dx, dx)
    sxy : ndarray, shape (..., dx, dy)
    syy : ndarray, shape (..., dy, dy)
    epsilon : float, optional
        Ridge added to the scaled diagonals (google/svcca: 1e-10). None (the
        default): no ridge; directions below :data:`RANK_RTOL` of the largest
        eigenvalue are dropped instead, so ``cca(x, x)`` is 1 to rounding.
    inv_sqrt : callable, optional
        Replaces :func:`whitening` of ``epsilon`` (a layer x layer matrix passes
        a memoized one, so that pairs sharing a layer share its whitening).

    Returns
    -------
    rho : ndarray, shape (..., k)
        Canonical correlations, descending, clipped to [0, 1]; ``k = min(dx, dy)``.
    a : ndarray, shape (..., dx, k)
        Weights of x: the variates ``(x - mean_x) @ a`` have unit variance
        (up to the ridge) and correlate pairwise with ``(y - mean_y) @ b`` by ``rho``.
    b : ndarray, shape (..., dy, k)
        Weights of y.
    """
    xmax = np.max(np.abs(sxx), axis=(-2, -1), keepdims=True)
    ymax = np.max(np.abs(syy), axis=(-2, -1), keepdims=True)
    xmax = np.where(xmax > 0, xmax, 1.0)
    ymax = np.where(ymax > 0, ymax, 1.0)
    eye_x = np.eye(sxx.shape[-1])
    eye_y = np.eye(syy.shape[-1])
    isq = inv_sqrt or whitening(epsilon)
    ridge = 0.0 if epsilon is None else epsilon
    ix = isq(sxx / xmax + ridge * eye_x)
    iy = isq(syy / ymax + ridge * eye_y)
    whitened = ix @ (sxy / np.sqrt(xmax * ymax)) @ iy
    u, s, vh = np.linalg.svd(whitened, full_matrices=False)
    k = min(sxx.shape[-1], syy.shape[-1])
    rho = np.clip(s[..., :k], 0.0, 1.0)
    a = ix @ u[..., :, :k] / np.sqrt(xmax)
    b = iy @ np.swapaxes(vh[..., :k, :].conj(), -1, -2) / np.sqrt(ymax)
    return rho, a, b
