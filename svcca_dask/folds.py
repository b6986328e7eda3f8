"""Held-out scores: canonical directions fit on k - 1 folds, scored on the last.

Canonical correlations fit and scored on the same samples overfit: with few
samples per direction, unrelated layers correlate near 1. ``folds=k`` (on
:func:`svcca_dask.cca`, :func:`~svcca_dask.svcca` and :func:`~svcca_dask.pwcca`)
splits the samples into ``k`` contiguous blocks and accumulates each block's
statistics in the same single pass (one tree per fold, one ``compute``). For
each fold, the other folds' statistics are merged (the Chan/Pebay update), the
measure is fit on them, and its canonical variates are correlated on the
held-out fold, from that fold's covariance blocks alone::

    rho_i = a_i^T S_xy b_i / sqrt(a_i^T S_xx a_i * b_i^T S_yy b_i)

(``S`` the held-out fold's covariances, ``a_i, b_i`` the weights fit on the
others). A held-out correlation may be negative: unrelated layers average
near 0. The fold's score is the mean of ``rho`` (PWCCA: weighted by the
projection weights fit on the others); the result's ``score`` is the mean of
the fold scores, ``fold_scores`` each, ``in_sample_score`` the score fit and
scored on all samples, and every other field the fit on all samples (the merge
of the folds: no more passes).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .memory import plan_covariance
from .scheduler import compute
from .stats import PairStats, accumulate_graph, moments_combine, pair_stats, to_moments

__all__ = ["check_folds", "fold_bounds", "fold_stats", "held_out"]


def check_folds(folds: Any, n: int | None = None) -> None:
    """Refuse a ``folds`` that is not ``None`` or an int >= 2 (with ``n``: at most
    ``n // 4``, so that every fold holds 4 samples or more)."""
    if folds is None:
        return
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be None or an int >= 2, got {folds!r}")
    if n is not None and n < 4 * folds:
        raise ValueError(f"folds={folds} needs at least {4 * folds} samples (4 per fold), got {n}")


def fold_bounds(n: int, folds: int) -> list[tuple[int, int]]:
    """Contiguous sample blocks ``[start, stop)``, as equal as ``n`` allows."""
    edges = np.linspace(0, n, folds + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def fold_stats(
    x: Any, y: Any, *, folds: int, split_every: int, what: str, remedies: str
) -> tuple[PairStats, list[tuple[PairStats, PairStats]]]:
    """Each fold's statistics in one pass: the whole data's, and per fold the
    (train, held-out) pair, train being the merge of the other folds."""
    n = int(x.shape[0])
    check_folds(folds, n)
    trees = [[x[a:b], y[a:b]] for a, b in fold_bounds(n, folds)]
    split_every = plan_covariance(trees, split_every=split_every, what=what, remedies=remedies)
    graphs = [accumulate_graph(t, names=["x", "y"], split_every=split_every) for t in trees]
    parts = list(compute(*graphs))

    def as_pair(out: dict[str, Any]) -> PairStats:
        return pair_stats(to_moments(out, [x, y]))

    splits = [
        (as_pair(moments_combine([p for j, p in enumerate(parts) if j != i])), as_pair(parts[i]))
        for i in range(folds)
    ]
    return as_pair(moments_combine(parts)), splits


def _correlations(fit: Any, test: PairStats) -> np.ndarray:
    """Held-out correlation of each pair of canonical variates of ``fit``."""
    a, b = fit.x_weights, fit.y_weights
    num = np.einsum("ik,ij,jk->k", a, test.sxy, b)
    vx = np.einsum("ik,ij,jk->k", a, test.sxx, a)
    vy = np.einsum("ik,ij,jk->k", b, test.syy, b)
    den = np.sqrt(np.maximum(vx, 0.0) * np.maximum(vy, 0.0))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def held_out(
    fit: Callable[[PairStats], Any],
    full: PairStats,
    splits: Sequence[tuple[PairStats, PairStats]],
) -> Any:
    """The result of ``fit`` on all samples, scored on held-out folds (see the
    module docstring); the in-sample warnings do not apply to a held-out score."""
    scores = []
    for train, test in splits:
        r = fit(train)
        rho = _correlations(r, test)
        weights = getattr(r, "weights", None)
        scores.append(float(np.sum(weights * rho)) if weights is not None else float(np.mean(rho)))
    whole = fit(full)
    return dataclasses.replace(
        whole,
        score=float(np.mean(scores)),
        fold_scores=np.asarray(scores),
        in_sample_score=whole.score,
        warnings=(),
    )
