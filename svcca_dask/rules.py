"""The rules every path applies the same way: dead features, and how many directions to keep.

Dense measures, the SVD step of SVCCA and the per-frequency DFT path all call
these, so that a feature is dead, and a ``keep`` is read, by one definition.

Dead features
    A feature is dead when its variance is below ``epsilon`` times a scale:
    the largest variance of its layer (dense paths; google/svcca divides each
    covariance block by its largest entry, which for a covariance is the
    largest variance), or on the DFT path the variance a DFT coefficient of
    white noise as strong as the layer's strongest activation would have.
    Scaling by the layer makes the rule independent of units: ``cca(1e-6 *
    x, y) == cca(x, y)``. Dead features are dropped, never turned into NaN.
Keep
    ``keep`` is a float in (0, 1], the fraction of the variance the kept
    directions must explain (the fewest directions that reach it, forgiving
    the last ulp of the sum), or an int >= 1, a number of directions.
Sample size
    Canonical correlations fit on the samples they are scored on are near 1
    by chance when the samples are not many more than the directions
    compared: fewer than :data:`MIN_SAMPLES_PER_DIRECTION` per direction is
    flagged (:class:`SampleSizeWarning`, and the result's ``warnings``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_EPSILON",
    "MIN_SAMPLES_PER_DIRECTION",
    "SampleSizeWarning",
    "check_epsilon",
    "check_keep",
    "check_side",
    "dead_threshold",
    "keep_count",
    "keep_pair",
    "live_features",
    "live_mask",
    "sample_size_note",
    "warn_notes",
]

#: Fewest samples per canonical direction before a result is flagged.
MIN_SAMPLES_PER_DIRECTION = 10


class SampleSizeWarning(UserWarning):
    """Too few samples for the directions compared: canonical correlations are
    near 1 by chance alone, whatever the layers."""


def sample_size_note(n: int, directions: int, *, where: str = "") -> str | None:
    """The warning text when ``n`` samples are too few for ``directions``, else None."""
    if directions < 1 or n >= MIN_SAMPLES_PER_DIRECTION * directions:
        return None
    return (
        f"{n} samples for {directions} canonical directions{where} (fewer than "
        f"{MIN_SAMPLES_PER_DIRECTION} per direction): canonical correlations come out "
        "near 1 with so few samples, even for unrelated layers. Use more samples, "
        "compare fewer directions (svcca with a smaller keep; conv='mean' for conv layers), "
        "or score held out (folds=5: directions fit on other samples than they are scored on)."
    )


def warn_notes(notes: Iterable[str], *, stacklevel: int = 3) -> None:
    """Issue each note as a :class:`SampleSizeWarning` (from the caller's caller)."""
    for note in notes:
        warnings.warn(note, SampleSizeWarning, stacklevel=stacklevel)


def live_mask(variances: np.ndarray, scale: float, epsilon: float) -> np.ndarray:
    """Boolean mask of the live features: variance at least ``epsilon * scale``.

    ``variances`` may have leading batch axes (one row per frequency); with a
    scale that is not positive (a constant layer) every feature is dead.
    """
    variances = np.real(np.asarray(variances))
    if not scale > 0:
        return np.zeros(variances.shape, dtype=bool)
    return variances >= epsilon * scale


def live_features(variances: np.ndarray, epsilon: float, name: str) -> np.ndarray:
    """Indices of the live features of one layer, scaled by its largest variance.

    Raises
    ------
    ValueError
        If no feature is live (a dead layer, or constant input).
    """
    variances = np.real(np.asarray(variances))
    top = float(np.max(variances)) if variances.size else 0.0
    live = np.flatnonzero(live_mask(variances, top, epsilon))
    if live.size == 0:
        raise ValueError(
            f"{name} has no live feature: every feature has zero variance over the "
            "samples (a dead layer, or constant input)"
        )
    return live


def check_keep(keep: Any) -> None:
    """``keep`` must be a float in (0, 1] (fraction of variance) or an int >= 1 (directions)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise TypeError(f"keep must be a float in (0, 1] or a positive int, got {keep!r}")
    if isinstance(keep, (int, np.integer)) and keep < 1:
        raise ValueError(f"keep as an int is a number of directions, at least 1; got {keep}")
    if isinstance(keep, (float, np.floating)) and not 0.0 < keep <= 1.0:
        raise ValueError(
            f"keep as a float is a fraction of variance in (0, 1], got {keep}; "
            "pass an int for a number of directions"
        )


def keep_pair(keep: Any) -> tuple[Any, Any]:
    """``keep`` for x and for y (one value for both, or a pair), each checked."""
    pair = keep if isinstance(keep, tuple) else (keep, keep)
    if len(pair) != 2:
        raise ValueError(f"keep as a tuple gives x's and y's: two values, got {keep!r}")
    for k in pair:
        check_keep(k)
    return pair[0], pair[1]


#: The dead-feature threshold (relative to the largest variance) when ``epsilon``
#: is None, the default; also the ridge of ``conv="dft"`` then (google/svcca's).
DEFAULT_EPSILON = 1e-10


def dead_threshold(epsilon: float | None) -> float:
    """The dead-feature threshold ``epsilon`` stands for (:data:`DEFAULT_EPSILON` for None)."""
    return DEFAULT_EPSILON if epsilon is None else float(epsilon)


def check_epsilon(epsilon: Any) -> None:
    """``epsilon`` must be None (the default: no ridge, rank-revealing whitening) or
    a finite number >= 0 (google/svcca's dead-feature threshold and ridge)."""
    if epsilon is None:
        return
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.integer, np.floating)):
        raise TypeError(f"epsilon must be a number >= 0 or None (the default), got {epsilon!r}")
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(
            f"epsilon must be finite and >= 0 (google/svcca's 1e-10; 0: no ridge, only "
            f"exactly constant features dropped) or None (the default), got {epsilon!r}"
        )


def check_side(side: Any) -> None:
    """PWCCA's ``side``: whose neurons the weights project on."""
    if side not in ("x", "y", "smaller"):
        raise ValueError(f"side must be 'x', 'y' or 'smaller', got {side!r}")


def keep_count(
    variances: np.ndarray,
    keep: float | int,
    *,
    total: float,
    weights: np.ndarray | None = None,
) -> int:
    """How many of the leading directions ``keep`` asks for.

    Parameters
    ----------
    variances : ndarray, shape (k,)
        Variances along the directions, descending.
    keep : float or int
        See :func:`check_keep` (checked here).
    total : float
        The layer's total variance (a float ``keep`` is a fraction of it; it
        may exceed ``variances.sum()`` when only the leading directions are known).
    weights : ndarray of int, shape (k,), optional
        How many real directions each entry stands for (2 for a conjugate pair
        of DFT frequencies); default 1 each.

    Returns
    -------
    int
        The smallest count of leading entries whose weighted variances reach
        ``keep * total`` (a float ``keep``) or whose weights reach ``keep`` (an
        int); ``len(variances) + 1`` when ``variances`` do not reach it.
    """
    check_keep(keep)
    w = np.ones(len(variances)) if weights is None else np.asarray(weights, dtype=np.float64)
    if isinstance(keep, (int, np.integer)):
        return int(np.searchsorted(np.cumsum(w), keep, side="left")) + 1
    cum = np.cumsum(w * variances) / total
    return int(np.searchsorted(cum, keep * (1.0 - 1e-12), side="left")) + 1
