"""Every result the measures return: plain frozen dataclasses of NumPy arrays.

A leaf module (it imports nothing from the package): the measures, the DFT
path and the similarity matrices all build these, and user code can type
against them without importing any machinery.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "CCAResult",
    "CKAResult",
    "DFTCCAResult",
    "DFTPWCCAResult",
    "DFTSVCCAResult",
    "PWCCAResult",
    "SVCCAResult",
    "ShapeResult",
    "SimilarityMatrix",
]


@dataclass(frozen=True)
class CCAResult:
    """Canonical correlation analysis of two layers.

    Attributes
    ----------
    score : float
        Mean of ``coefficients``.
    coefficients : ndarray, shape (k,)
        Canonical correlations, descending, in [0, 1]; ``k`` is the smaller
        number of live (reduced, for SVCCA) features of the two sides.
    x_weights : ndarray, shape (n_features_x, k)
        Canonical weights of x over its input features (rows of dropped
        features are zero): the canonical variates are
        ``(x - x_mean) @ x_weights``, with unit variance (ddof=1).
    y_weights : ndarray, shape (n_features_y, k)
        Canonical weights of y.
    x_mean, y_mean : ndarray, shape (n_features_x,), (n_features_y,)
        Feature means.
    n_samples : int
        Number of samples that went in.
    x_features, y_features : ndarray of int
        Indices of the features that went in (live features).
    x_dropped, y_dropped : ndarray of int
        Indices of dead (zero-variance) features that were dropped.
    warnings : tuple of str
        What makes the score unreliable (too few samples for the directions
        compared, :class:`svcca_dask.rules.SampleSizeWarning`); empty if nothing.
    fold_scores : ndarray, shape (folds,), optional
        With ``folds=``: each fold's held-out score (directions fit on the
        other folds); ``score`` is their mean (:mod:`svcca_dask.folds`).
    in_sample_score : float, optional
        With ``folds=``: the score fit and scored on all samples.
    """

    score: float
    coefficients: np.ndarray
    x_weights: np.ndarray
    y_weights: np.ndarray
    x_mean: np.ndarray
    y_mean: np.ndarray
    n_samples: int
    x_features: np.ndarray
    y_features: np.ndarray
    x_dropped: np.ndarray
    y_dropped: np.ndarray
    warnings: tuple[str, ...] = ()
    fold_scores: np.ndarray | None = None
    in_sample_score: float | None = None

    def transform(self, x: np.ndarray, *, side: Literal["x", "y"] = "x") -> np.ndarray:
        """Canonical variates of in-memory data ``(n, n_features)`` of one side."""
        w, m = (self.x_weights, self.x_mean) if side == "x" else (self.y_weights, self.y_mean)
        return (np.asarray(x, dtype=np.float64) - m) @ w

    def projection(self, k: int, *, side: Literal["x", "y"] = "x") -> np.ndarray:
        """Projection of one side's features on its top ``k`` canonical directions.

        ``x_hat = x_mean + (x - x_mean) @ P`` keeps the top ``k`` canonical
        variates of ``x`` unchanged (``P @ x_weights[:, :k] == x_weights[:, :k]``)
        and removes the others: the compression of Raghu et al. (2017). With
        ``W`` the side's weights, ``P = W[:, :k] @ pinv(W)[:k]``; it is
        idempotent. When the weights span the side's kept space (SVCCA with
        this side keeping no more directions than the other, or CCA with the
        smaller side), this is the least-squares reconstruction of the data
        from its top ``k`` variates.

        Parameters
        ----------
        k : int
            Number of canonical directions kept, ``1 <= k <= len(coefficients)``.
        side : {"x", "y"}, default "x"

        Returns
        -------
        ndarray, shape (n_features, n_features)
        """
        if side not in ("x", "y"):
            raise ValueError(f"side must be 'x' or 'y', got {side!r}")
        w = self.x_weights if side == "x" else self.y_weights
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= w.shape[1]:
            raise ValueError(
                f"k must be an int in [1, {w.shape[1]}] (the number of canonical directions), got {k!r}"
            )
        return w[:, :k] @ np.linalg.pinv(w)[:k]


@dataclass(frozen=True)
class SVCCAResult(CCAResult):
    """SVCCA: CCA of each layer's top singular directions.

    Attributes
    ----------
    x_directions, y_directions : ndarray, shape (n_features, kept)
        Orthonormal top singular directions (right singular vectors of the
        centred data) of each side; ``x_weights == x_directions @ (CCA weights
        of the reduced data)``.
    x_kept, y_kept : int
        Number of directions kept on each side.
    x_explained, y_explained : float
        Fraction of variance the kept directions explain.
    """

    x_directions: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    y_directions: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    x_kept: int = 0
    y_kept: int = 0
    x_explained: float = 1.0
    y_explained: float = 1.0


@dataclass(frozen=True)
class PWCCAResult(CCAResult):
    """Projection-weighted CCA (Morcos et al. 2018).

    Attributes
    ----------
    weights : ndarray, shape (k,)
        Normalized projection weights ``alpha`` (sum 1), aligned with ``coefficients``.
    side : {"x", "y"}
        The side whose neurons the weights project on.
    """

    weights: np.ndarray = field(default_factory=lambda: np.empty(0))
    side: str = "x"


@dataclass(frozen=True)
class CKAResult:
    """Linear centred kernel alignment (Kornblith et al. 2019).

    Attributes
    ----------
    score : float
        ``||Sxy||_F^2 / (||Sxx||_F ||Syy||_F)``, in [0, 1]; with ``debiased``
        the same ratio of unbiased HSIC estimates (Song et al. 2012), which
        can be slightly negative for unrelated layers (its expectation is then
        0, where the plain one is biased upwards at few samples).
    n_samples : int
    debiased : bool
        Whether ``score`` is debiased CKA.
    """

    score: float
    n_samples: int
    debiased: bool = False


@dataclass(frozen=True)
class ShapeResult:
    """A linear shape metric (Williams et al. 2021): the distance between two
    layers after the best alignment of the family ``alpha`` allows.

    Attributes
    ----------
    score : float
        The distance: angular in ``[0, pi]`` (``arccos`` of the aligned
        representations' Frobenius correlation) or euclidean (the Frobenius
        norm of their difference); 0 for layers equal up to the alignment.
        A distance, not a similarity: lower is more alike.
    alpha : float
        0: any invertible linear map (CCA), 1: rotations only (Procrustes).
    metric : {"angular", "euclidean"}
    n_samples : int
    """

    score: float
    alpha: float
    metric: str
    n_samples: int

    @property
    def distance(self) -> float:
        """The same number as ``score``, under the name of what it is."""
        return self.score


@dataclass(frozen=True)
class DFTCCAResult:
    """CCA of two conv layers with ``conv="dft"``.

    Attributes
    ----------
    score : float
        Mean of ``coefficients``.
    coefficients : ndarray, shape (K,)
        Canonical correlations of every frequency of the common band, each
        frequency counted with its multiplicity, descending, in [0, 1]. With
        all channels live, ``K = h * w * min(Cx, Cy)`` (``(h, w) = band``).
    per_frequency : ndarray, shape (F, min(Cx, Cy))
        Each row: the correlations at one frequency, descending; entries past
        ``n_coefficients[f]`` are 0 (no NaN).
    n_coefficients : ndarray of int, shape (F,)
        Coefficients of each frequency: ``min(live channels of x, of y)`` there.
    frequencies : ndarray of int, shape (F, 2)
        ``(kh, kw)`` per row of ``per_frequency``; see :class:`DFTStats`.
    multiplicity : ndarray of int, shape (F,)
        2 where a frequency stands for its conjugate too, else 1.
    band : (int, int)
        The common band (the smaller height and width).
    n_samples : int
        Number of images.
    warnings : tuple of str
        What makes the score unreliable (too few images for the directions
        compared at a frequency); empty if nothing.
    """

    score: float
    coefficients: np.ndarray
    per_frequency: np.ndarray
    n_coefficients: np.ndarray
    frequencies: np.ndarray
    multiplicity: np.ndarray
    band: tuple[int, int]
    n_samples: int
    warnings: tuple[str, ...] = ()

    @property
    def frequency_scores(self) -> np.ndarray:
        """``(F,)`` mean correlation at each frequency (0 where there is none)."""
        n = np.maximum(self.n_coefficients, 1)
        return self.per_frequency.sum(axis=1) / n


@dataclass(frozen=True)
class DFTSVCCAResult(DFTCCAResult):
    """SVCCA of two conv layers with ``conv="dft"``.

    Attributes
    ----------
    x_kept, y_kept : ndarray of int, shape (F,)
        Directions kept at each frequency (chosen globally, see :func:`svcca`).
    x_explained, y_explained : float
        Fraction of each layer's variance in the band the kept directions explain.
    """

    x_kept: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))
    y_kept: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))
    x_explained: float = 1.0
    y_explained: float = 1.0


@dataclass(frozen=True)
class DFTPWCCAResult(DFTCCAResult):
    """PWCCA of two conv layers with ``conv="dft"``.

    Attributes
    ----------
    weights : ndarray, shape (K,)
        Projection weights aligned with ``coefficients`` (sum 1).
    per_frequency_weights : ndarray, shape (F, min(Cx, Cy))
        The same weights per frequency (one member of a conjugate pair; the
        other has the same), zero past ``n_coefficients``.
    side : {"x", "y"}
    """

    weights: np.ndarray = field(default_factory=lambda: np.empty(0))
    per_frequency_weights: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    side: str = "x"


@dataclass(frozen=True)
class SimilarityMatrix:
    """A layer x layer similarity matrix.

    Attributes
    ----------
    scores : ndarray, shape (len(rows), len(columns))
        ``scores[i, j]`` is the measure's score of layer ``rows[i]`` (as x)
        against layer ``columns[j]`` (as y).
    rows : tuple
        Layer names of ``xs``, in order.
    columns : tuple
        Layer names of ``ys``, in order.
    measure : str
        The measure computed.
    results : dict
        ``results[(row, column)]`` is the full per-pair result (an
        :class:`SVCCAResult`, :class:`CCAResult`, :class:`PWCCAResult` or
        :class:`CKAResult`); empty when ``return_results=False``.
    n_samples : int
        Number of samples (rows) of every layer.
    tile_rows : int
        Number of tile rows, i.e. of passes over the data (1: each layer read once).
    tiles : int
        Number of stacked statistics accumulated.
    """

    scores: np.ndarray
    rows: tuple[Hashable, ...]
    columns: tuple[Hashable, ...]
    measure: str
    results: dict[tuple[Hashable, Hashable], Any] = field(repr=False)
    n_samples: int
    tile_rows: int = 1
    tiles: int = 1

    def __getitem__(self, pair: tuple[Hashable, Hashable]) -> Any:
        """The per-pair result of ``(row, column)``."""
        if not self.results:
            raise KeyError(
                f"{pair!r}: this matrix was computed with return_results=False; "
                "use .scores, or recompute with return_results=True"
            )
        return self.results[pair]

    def score(self, row: Hashable, column: Hashable) -> float:
        """The score of one pair, by layer names."""
        return float(self.scores[self.rows.index(row), self.columns.index(column)])
