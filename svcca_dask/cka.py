"""Linear CKA (Kornblith et al. 2019), plain and debiased, from one pass of
covariance statistics (and, debiased, the samples' squared norms)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._config import DEFAULT_MAX_FEATURES, DEFAULT_SPLIT_EVERY
from .conv.measures import dft_measure
from .inputs import ArrayLike
from .measures import ConvOption, pair_statistics, prepare_pair
from .results import CKAResult
from .stats import PairStats

__all__ = ["cka_from_stats", "linear_cka"]


def cka_from_stats(
    p: PairStats, *, names: tuple[str, str] = ("x", "y"), debiased: bool = False
) -> CKAResult:
    """Linear CKA of a pair from its covariance statistics (see :func:`linear_cka`).

    Each block is divided by its side's largest variance first (CKA does not
    change, and the squared norms stay in float64's range for any scale of
    the activations). ``debiased`` needs ``p.norms`` (accumulated with
    ``norms=True``).
    """
    ax = float(np.max(np.diagonal(p.sxx), initial=0.0))
    ay = float(np.max(np.diagonal(p.syy), initial=0.0))
    for top, name in ((ax, names[0]), (ay, names[1])):
        if not top > 0:
            raise ValueError(
                f"{name} has no live feature: every feature has zero variance, and linear "
                "CKA is undefined for a constant layer"
            )
    if debiased:
        return CKAResult(score=_debiased_cka(p, ax, ay, names), n_samples=p.n, debiased=True)
    nx, ny = np.linalg.norm(p.sxx / ax), np.linalg.norm(p.syy / ay)
    score = float(np.linalg.norm(p.sxy / np.sqrt(ax) / np.sqrt(ay)) ** 2 / (nx * ny))
    return CKAResult(score=min(max(score, 0.0), 1.0), n_samples=p.n)


def _debiased_cka(p: PairStats, ax: float, ay: float, names: tuple[str, str]) -> float:
    """Debiased linear CKA from feature-space statistics.

    With centred data, ``K = X X^T`` and ``a_i = K_ii``, the unbiased HSIC of
    Song et al. (2012) is, times ``n (n - 3)``: ``||X^T Y||_F^2 - n / (n - 2)
    sum_i a_i b_i + tr(K) tr(L) / ((n - 1)(n - 2))`` (the diagonal-free Gram
    terms reduce to these because ``K 1 = 0``), which is the form of Kornblith
    et al.'s ``feature_space_linear_cka(debiased=True)``; no ``n x n`` matrix.
    Each side is scaled by its largest variance first, as the plain CKA.
    """
    if p.norms is None:
        raise ValueError("debiased CKA needs the per-sample norms (accumulate with norms=True)")
    n = p.n
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 samples, got {n}")
    s = (n - 1) / np.array([ax, np.sqrt(ax * ay), ay])  # co-moment blocks, each side scaled
    cxx, cxy, cyy = p.sxx * s[0], p.sxy * s[1], p.syy * s[2]
    q = p.norms / np.outer([ax, ay], [ax, ay])
    tx, ty = float(np.trace(cxx)), float(np.trace(cyy))

    def hsic(c: np.ndarray, qab: float, ta: float, tb: float) -> float:
        return float(np.sum(c * c) - n / (n - 2) * qab + ta * tb / ((n - 1) * (n - 2)))

    hxy = hsic(cxy, q[0, 1], tx, ty)
    hxx, hyy = hsic(cxx, q[0, 0], tx, tx), hsic(cyy, q[1, 1], ty, ty)
    for h, name in ((hxx, names[0]), (hyy, names[1])):
        if not h > 0:
            raise ValueError(
                f"the unbiased HSIC of {name} with itself is {h:.3g}, not positive: "
                f"{n} samples are too few for debiased CKA of this layer"
            )
    return hxy / np.sqrt(hxx * hyy)


def linear_cka(
    x: ArrayLike,
    y: ArrayLike,
    *,
    conv: ConvOption = "dft",
    layout: str | tuple[str | None, str | None] | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    max_features: int = DEFAULT_MAX_FEATURES,
    debiased: bool = False,
    mask: ArrayLike | None = None,
    sample_ids: Any = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
) -> CKAResult:
    """Linear CKA (Kornblith et al. 2019) from one pass of covariance statistics.

    ``CKA = ||S_xy||_F^2 / (||S_xx||_F ||S_yy||_F)`` with the centred
    covariance blocks (the feature-space form of the HSIC ratio with linear kernels).
    ``debiased=True``: the same ratio of unbiased HSIC estimates (Song et al.
    2012; Kornblith et al.'s debiased CKA), from the same one pass, which also
    accumulates each sample's centred squared norm (products of those, and with
    the features, merged exactly as the means move): no ``n x n`` Gram matrix.

    Parameters
    ----------
    x, y : array-like, shape (n_samples, n_features)
        As for :func:`cca`.
    conv, layout, split_every, max_features, mask
        As for :func:`cca`. With ``conv="dft"``: ``sum_f m_f ||S_xy(f)||^2 /
        sqrt(sum_f m_f ||S_xx(f)||^2 sum_f m_f ||S_yy(f)||^2)`` over the
        frequencies of the band with multiplicity ``m_f``: the CKA of the
        flattened (band-limited) layers without the covariances between
        different frequencies, which vanish for translation-invariant data
        (then it equals ``conv="flatten"``, by Parseval).

    debiased : bool, default False
        Debiased CKA: unbiased where the plain one is biased upwards at few
        samples (unrelated layers score near 0, possibly below). Not with
        ``conv="dft"`` (use ``"mean"``, ``"samples"`` or ``"flatten"``).

    Returns
    -------
    CKAResult
    """
    if not isinstance(debiased, bool):
        raise TypeError(f"debiased must be True or False, got {debiased!r}")
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
    if debiased and pair.dft:
        raise ValueError(
            "debiased=True is not available with conv='dft' (its per-frequency "
            "statistics have no per-sample norms); use conv='mean', 'samples' or 'flatten'"
        )
    if pair.dft:
        return dft_measure("cka", pair.x, pair.y, conv=conv, layout=pair.layouts)  # type: ignore[no-any-return]
    p = pair_statistics(pair, split_every=split_every, max_features=max_features, norms=debiased)
    return cka_from_stats(p, debiased=debiased)
