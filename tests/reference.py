"""Plain in-memory NumPy/SciPy implementations the tests compare against.

Written from the definitions, independently of the package: ``np.cov`` of the
stacked data, an eigh inverse square root, an SVD.
"""

from __future__ import annotations

import numpy as np


def _blocks(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.cov(np.hstack([x, y]).astype(np.float64), rowvar=False)
    dx = x.shape[1]
    return c[:dx, :dx], c[:dx, dx:], c[dx:, dx:]


def _isqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v / np.sqrt(w)) @ v.T


def cca(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical correlations (descending) and unit-variance weights of x and y."""
    sxx, sxy, syy = _blocks(x, y)
    ix, iy = _isqrt(sxx), _isqrt(syy)
    u, s, vt = np.linalg.svd(ix @ sxy @ iy)
    k = min(x.shape[1], y.shape[1])
    return s[:k], ix @ u[:, :k], iy @ vt[:k].T


def svd_reduce(x: np.ndarray, keep: float | int) -> np.ndarray:
    """Project centred x on its top right singular vectors (google/svcca's SVD step)."""
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    if isinstance(keep, int):
        k = keep
    else:
        frac = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(frac, keep)) + 1
    return xc @ vt[:k].T


def svcca(x: np.ndarray, y: np.ndarray, keep: float | int = 0.99) -> np.ndarray:
    return cca(svd_reduce(x, keep), svd_reduce(y, keep))[0]


def pwcca(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Morcos et al. (2018): alpha_i = sum_j |<h_i, x_j>|, h_i unit-variance variates of x."""
    rho, a, _ = cca(x, y)
    xc = x - x.mean(axis=0)
    h = xc @ a  # (n, k) canonical variates
    alpha = np.abs(h.T @ xc).sum(axis=1)
    alpha /= alpha.sum()
    return float(alpha @ rho), alpha


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), the Gram-matrix (HSIC) form over samples."""
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    kx, ky = xc @ xc.T, yc @ yc.T
    return float(np.sum(kx * ky) / (np.linalg.norm(kx) * np.linalg.norm(ky)))


def debiased_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased linear CKA from the ``n x n`` Gram matrices: the unbiased HSIC
    estimator of Song et al. (2012) with linear kernels, as anatome and
    torch_cka compute it (features centred first: the estimator is invariant
    to a shift of the features, and centring keeps the Gram entries small)."""

    def hsic(k: np.ndarray, g: np.ndarray) -> float:
        n = k.shape[0]
        k, g = k.copy(), g.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(g, 0)
        one = np.ones(n)
        return float(
            np.sum(k * g)
            + (one @ k @ one) * (one @ g @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ (g @ one))
        ) / (n * (n - 3))

    x = np.asarray(x, dtype=np.float64) - np.mean(x, axis=0)
    y = np.asarray(y, dtype=np.float64) - np.mean(y, axis=0)
    k, g = x @ x.T, y @ y.T
    return hsic(k, g) / np.sqrt(hsic(k, k) * hsic(g, g))


def shape_distance(x: np.ndarray, y: np.ndarray, alpha: float, metric: str) -> float:
    """Williams et al.'s (2021) linear shape metric in data space, by its
    definition: centre, zero-pad the narrower layer, partially whiten each
    (``Z = V diag(alpha + (1 - alpha) lam^-1/2) V^T`` of ``X^T X``, eigenvalues
    clipped at 1e-7, rescaled to keep the total variance), rotate onto each other
    (orthogonal Procrustes), and take the angle or the distance between them."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x, axis=0)
    y = np.asarray(y, dtype=np.float64) - np.mean(y, axis=0)
    width = max(x.shape[1], y.shape[1])
    x = np.pad(x, ((0, 0), (0, width - x.shape[1])))
    y = np.pad(y, ((0, 0), (0, width - y.shape[1])))

    def whiten(a: np.ndarray) -> np.ndarray:
        if alpha > 1 - 1e-7:
            return a
        lam, v = np.linalg.eigh(a.T @ a)
        lam = np.maximum(lam, 1e-7)
        d = alpha + (1 - alpha) * lam**-0.5
        new = np.sum(alpha**2 * lam + 2 * alpha * (1 - alpha) * lam**0.5 + (1 - alpha) ** 2)
        d *= np.sqrt(np.sum(lam) / new)
        return a @ ((v * d) @ v.T)

    xw, yw = whiten(x), whiten(y)
    u, _, vt = np.linalg.svd(xw.T @ yw)
    tx, ty = xw @ u, yw @ vt.T
    if metric == "angular":
        c = np.sum(tx * ty) / (np.linalg.norm(tx) * np.linalg.norm(ty))
        return float(np.arccos(np.clip(c, -1.0, 1.0)))
    return float(np.linalg.norm(tx - ty))


def google_cca(x: np.ndarray, y: np.ndarray, epsilon: float) -> np.ndarray:
    """The canonical correlations as google/svcca's ``cca_core.get_cca_similarity``
    computes them (its algorithm, written here from its description): ``np.cov``
    of the stacked data, each block divided by its largest absolute entry (the
    cross block by the geometric mean), features whose scaled variance is below
    ``epsilon`` removed, ``epsilon`` added to the diagonals, ``pinv`` then an
    eigh square root, the SVD of the whitened cross-covariance."""
    sxx, sxy, syy = _blocks(x, y)
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    kx, ky = np.abs(np.diagonal(sxx)) >= epsilon, np.abs(np.diagonal(syy)) >= epsilon
    sxx, syy, sxy = sxx[np.ix_(kx, kx)], syy[np.ix_(ky, ky)], sxy[np.ix_(kx, ky)]

    def sqrt_psd(a: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(a)
        return (v * np.sqrt(w)) @ v.T

    ix = sqrt_psd(np.linalg.pinv(sxx + epsilon * np.eye(len(sxx))))
    iy = sqrt_psd(np.linalg.pinv(syy + epsilon * np.eye(len(syy))))
    s = np.linalg.svd(ix @ sxy @ iy, compute_uv=False)
    return s[: min(len(sxx), len(syy))]
