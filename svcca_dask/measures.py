"""CCA, SVCCA and PWCCA from one pass of co-moment statistics (linear CKA: :mod:`svcca_dask.cka`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._config import DEFAULT_MAX_FEATURES, DEFAULT_SPLIT_EVERY
from .conv.features import CONV_MODES, features_4d, repeat_rows
from .conv.layout import open_conv, spatial_shape
from .conv.measures import dft_measure
from .conv.plan import DFT
from .folds import check_folds, fold_stats, held_out
from .inputs import ArrayLike, check_pair, open_pair
from .linalg import cca_from_cov, top_eigh
from .memory import plan_covariance
from .results import (
    CCAResult,
    DFTCCAResult,
    DFTPWCCAResult,
    DFTSVCCAResult,
    PWCCAResult,
    SVCCAResult,
)
from .rules import (
    check_epsilon,
    check_keep,
    check_side,
    dead_threshold,
    keep_count,
    keep_pair,
    live_features,
    sample_size_note,
    warn_notes,
)
from .stats import PairStats, accumulate, pair_stats
from .svd import SVD_METHODS, RandomizedSVD, projected_stats, reduce_pair
from .tokens import is_token_layer, prepare_tokens

__all__ = [
    "cca",
    "cca_from_stats",
    "pwcca",
    "pwcca_from_stats",
    "svcca",
    "svcca_from_stats",
]


# --------------------------------------------------------------------------- #
# from statistics


def _live(s: np.ndarray, epsilon: float | None, name: str) -> np.ndarray:
    """Live features of a covariance block by the dead-feature rule (:mod:`svcca_dask.rules`)."""
    return live_features(np.diagonal(s), dead_threshold(epsilon), name)


def _expand(w: np.ndarray, idx: np.ndarray, d: int) -> np.ndarray:
    out = np.zeros((d, w.shape[1]), dtype=w.dtype)
    out[idx] = w
    return out


def _dropped(live: np.ndarray, d: int) -> np.ndarray:
    return np.setdiff1d(np.arange(d), live)


def _cca_fields(
    p: PairStats, epsilon: float | None, names: tuple[str, str], inv_sqrt: Any = None
) -> dict[str, Any]:
    check_epsilon(epsilon)
    dx, dy = p.sxx.shape[0], p.syy.shape[0]
    lx = _live(p.sxx, epsilon, names[0])
    ly = _live(p.syy, epsilon, names[1])
    rho, a, b = cca_from_cov(
        p.sxx[np.ix_(lx, lx)],
        p.sxy[np.ix_(lx, ly)],
        p.syy[np.ix_(ly, ly)],
        epsilon=epsilon,
        inv_sqrt=inv_sqrt,
    )
    note = sample_size_note(p.n, int(rho.shape[-1]))
    return {
        "score": float(np.mean(rho)),
        "coefficients": rho,
        "x_weights": _expand(a, lx, dx),
        "y_weights": _expand(b, ly, dy),
        "x_mean": p.x_mean,
        "y_mean": p.y_mean,
        "n_samples": p.n,
        "x_features": lx,
        "y_features": ly,
        "x_dropped": _dropped(lx, dx),
        "y_dropped": _dropped(ly, dy),
        "warnings": (note,) if note else (),
    }


def _warned(result: Any) -> Any:
    """``result``, its ``warnings`` issued as :class:`SampleSizeWarning` from the user's call."""
    warn_notes(getattr(result, "warnings", ()), stacklevel=4)  # _warned, the measure, the user
    return result


def cca_from_stats(
    p: PairStats,
    *,
    epsilon: float | None = None,
    names: tuple[str, str] = ("x", "y"),
    inv_sqrt: Any = None,
) -> CCAResult:
    """CCA of a pair from its covariance statistics (see :func:`cca`).

    ``inv_sqrt`` replaces the whitening's :func:`inv_sqrt_psd` (see
    :func:`cca_from_cov`).
    """
    return CCAResult(**_cca_fields(p, epsilon, names, inv_sqrt))


def _n_keep(w: np.ndarray, keep: float | int, name: str) -> int:
    """Directions kept of covariance eigenvalues ``w`` (descending), by the keep rule."""
    check_keep(keep)
    total = float(w.sum())
    if not isinstance(keep, (int, np.integer)) and total <= 0:
        raise ValueError(f"{name} has zero total variance")
    k = keep_count(w, keep, total=total)
    return min(k, int(np.count_nonzero(w > 0)) or 1)


def svcca_from_stats(
    p: PairStats,
    *,
    keep: float | int | tuple[float | int, float | int] = 0.99,
    epsilon: float | None = None,
    names: tuple[str, str] = ("x", "y"),
    eigh: Any = top_eigh,
    inv_sqrt: Any = None,
) -> SVCCAResult:
    """SVCCA of a pair from its covariance statistics (see :func:`svcca`).

    ``eigh`` computes each side's :func:`top_eigh` and ``inv_sqrt`` the
    whitening (see :func:`cca_from_cov`); a layer x layer matrix passes
    memoized ones so that pairs sharing a layer share them.
    """
    keep_x, keep_y = keep_pair(keep)
    check_epsilon(epsilon)
    dx, dy = p.sxx.shape[0], p.syy.shape[0]
    lx, ly = _live(p.sxx, epsilon, names[0]), _live(p.syy, epsilon, names[1])
    # SVD of each side's centred data = eigh of its covariance (live features only)
    wx, vx = eigh(p.sxx[np.ix_(lx, lx)])
    wy, vy = eigh(p.syy[np.ix_(ly, ly)])
    kx, ky = _n_keep(wx, keep_x, names[0]), _n_keep(wy, keep_y, names[1])
    vx = _expand(vx[:, :kx], lx, dx)
    vy = _expand(vy[:, :ky], ly, dy)
    reduced = PairStats(
        n=p.n,
        x_mean=vx.T @ p.x_mean,
        y_mean=vy.T @ p.y_mean,
        sxx=np.diag(wx[:kx]),
        sxy=vx.T @ p.sxy @ vy,
        syy=np.diag(wy[:ky]),
    )
    f = _cca_fields(reduced, epsilon, names, inv_sqrt)
    f.update(
        x_weights=vx @ f["x_weights"],
        y_weights=vy @ f["y_weights"],
        x_mean=p.x_mean,
        y_mean=p.y_mean,
        x_features=lx,
        y_features=ly,
        x_dropped=_dropped(lx, dx),
        y_dropped=_dropped(ly, dy),
    )
    return SVCCAResult(
        **f,
        x_directions=vx,
        y_directions=vy,
        x_kept=kx,
        y_kept=ky,
        x_explained=float(wx[:kx].sum() / wx.sum()),
        y_explained=float(wy[:ky].sum() / wy.sum()),
    )


def pwcca_from_stats(
    p: PairStats,
    *,
    epsilon: float | None = None,
    side: Literal["x", "y", "smaller"] = "x",
    names: tuple[str, str] = ("x", "y"),
    inv_sqrt: Any = None,
) -> PWCCAResult:
    """PWCCA of a pair from its covariance statistics (see :func:`pwcca`).

    ``inv_sqrt`` replaces the whitening's :func:`inv_sqrt_psd` (see
    :func:`cca_from_cov`).
    """
    check_side(side)
    f = _cca_fields(p, epsilon, names, inv_sqrt)
    if side == "smaller":
        side = "x" if len(f["x_features"]) <= len(f["y_features"]) else "y"
    s, w = (p.sxx, f["x_weights"]) if side == "x" else (p.syy, f["y_weights"])
    # <h_i, x_j> = (n - 1) (S a_i)_j: the constant cancels in the normalization
    alpha = np.abs(s @ w).sum(axis=0)
    alpha = alpha / alpha.sum()
    f["score"] = float(np.sum(alpha * f["coefficients"]))
    return PWCCAResult(**f, weights=alpha, side=side)


# --------------------------------------------------------------------------- #
# from data


#: What ``conv=`` takes: a mode name, or :class:`DFT` options (``conv="dft"``).
ConvOption = Literal["dft", "samples", "mean", "flatten"] | DFT


@dataclass(frozen=True)
class _Pair:
    """Both inputs opened; 2-D (reduced if they were conv layers) unless ``dft``."""

    x: Any
    y: Any
    dft: bool
    layouts: tuple[str | None, str | None]


def _check_conv(conv: Any) -> str:
    if isinstance(conv, DFT):
        return "dft"
    if not isinstance(conv, str) or conv not in CONV_MODES:
        raise ValueError(
            f"conv must be one of {', '.join(map(repr, CONV_MODES))} or DFT(...) options; "
            f"got {conv!r}"
        )
    return conv


def prepare_pair(
    x: ArrayLike,
    y: ArrayLike,
    *,
    conv: Any,
    layout: Any,
    mask: ArrayLike | None = None,
    sample_ids: Any = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
) -> _Pair:
    """Open both inputs (:func:`svcca_dask.inputs.open_pair`: rows checked to
    line up); reduce 4-D ones per ``conv`` (2-D inputs ignore it), and 3-D
    token layers per ``conv`` and ``mask`` (:mod:`svcca_dask.tokens`)."""
    mode = _check_conv(conv)
    lx, ly = layout if isinstance(layout, tuple) else (layout, layout)
    x, y = open_pair(
        x,
        y,
        sample_ids=sample_ids,
        rows=rows,
        storage_options=storage_options,
        missing_chunks=missing_chunks,
    )
    if is_token_layer(x) or is_token_layer(y):
        xt, yt = prepare_tokens(x, y, mode, (lx, ly), mask)
        check_pair(xt, yt)
        return _Pair(xt, yt, False, (None, None))
    if mask is not None:
        raise ValueError("mask= applies to token layers (n, T, d); neither x nor y is one")
    xd, x_layout = open_conv(x, lx, name="x")
    yd, y_layout = open_conv(y, ly, name="y")
    check_pair(xd, yd)
    if x_layout is None and y_layout is None:
        return _Pair(xd, yd, False, (None, None))
    if mode == "dft":  # the layers: the DFT path reads a Zarr layer's stored chunks itself
        return _Pair(x, y, True, (x_layout, y_layout))
    if mode == "samples":
        sx = spatial_shape(xd, x_layout)[1:] if x_layout else None
        sy = spatial_shape(yd, y_layout)[1:] if y_layout else None
        if sx is not None and sy is not None and sx != sy:
            raise ValueError(
                f"conv='samples' makes every spatial position a sample, so both layers must "
                f"have the same height and width; got {sx} and {sy}. Use conv='dft' (the "
                "common low-frequency band) or conv='mean' (spatial average) instead."
            )
    xr = features_4d(xd, x_layout, mode) if x_layout else xd
    yr = features_4d(yd, y_layout, mode) if y_layout else yd
    if mode == "samples":  # a 2-D side (e.g. logits) holds for every position of its image
        if x_layout is None:
            xr = _repeated(xr, int(np.prod(spatial_shape(yd, y_layout)[1:])), "x")  # type: ignore[arg-type]
        if y_layout is None:
            yr = _repeated(yr, int(np.prod(spatial_shape(xd, x_layout)[1:])), "y")  # type: ignore[arg-type]
    return _Pair(xr, yr, False, (x_layout, y_layout))


def _repeated(side: Any, reps: int, name: str) -> Any:
    """A 2-D side against ``conv="samples"``: each image's row at each of the
    other layer's ``reps`` positions, said in a warning (the samples are then
    not independent, and the sample-size check counts every position)."""
    n = int(side.shape[0])
    warnings.warn(
        f"conv='samples' against a 2-D {name}: its row for each of the {n} images is "
        f"repeated at each of the other layer's {reps} spatial positions, so the {n * reps} "
        f"samples hold only {n} distinct rows of {name} and the score says how well single "
        "positions match a per-image target. conv='dft' (its DC frequency: spatial sums) or "
        "conv='mean' compares per image.",
        UserWarning,
        stacklevel=4,  # _repeated, prepare_pair, the measure, the user
    )
    return repeat_rows(side, reps)


def _check_width(xd: Any, yd: Any, max_features: int) -> None:
    d = xd.shape[1] + yd.shape[1]
    if d > max_features:
        raise ValueError(
            f"x and y have {xd.shape[1]} + {yd.shape[1]} = {d} features, more than "
            f"max_features={max_features} for the covariance path (a {d} x {d} float64 "
            f"matrix is {d * d * 8 / 2**30:.1f} GiB per partial statistic). Raise "
            "max_features if memory allows, or reduce the layers first (conv= for conv "
            "layers; svcca(..., svd='randomized') for wide ones)."
        )


_WIDE_REMEDIES = (
    "Reduce the layers first (conv='dft' or 'mean' for conv layers; svcca(..., "
    "svd='randomized') for wide ones), or raise the budget if the machine has the memory."
)


def pair_statistics(
    pair: _Pair, *, split_every: int, max_features: int, norms: bool = False
) -> PairStats:
    _check_width(pair.x, pair.y, max_features)
    split_every = plan_covariance(
        [[pair.x, pair.y]],
        split_every=split_every,
        what=f"the covariance path of {int(pair.x.shape[0])} samples x "
        f"({int(pair.x.shape[1])} + {int(pair.y.shape[1])}) features",
        remedies=_WIDE_REMEDIES,
    )
    m = accumulate([pair.x, pair.y], names=["x", "y"], split_every=split_every, norms=norms)
    return pair_stats(m)


def cca(
    x: ArrayLike,
    y: ArrayLike,
    *,
    epsilon: float | None = None,
    conv: ConvOption = "dft",
    layout: str | tuple[str | None, str | None] | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    max_features: int = DEFAULT_MAX_FEATURES,
    folds: int | None = None,
    mask: ArrayLike | None = None,
    sample_ids: Any = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
) -> CCAResult | DFTCCAResult:
    """Canonical correlation analysis of two layers in one pass over the data.

    Parameters
    ----------
    x : array-like, shape (n_samples, n_features_x)
        Activations of the first layer, samples first: a NumPy, Dask or Zarr
        array, or a ``"path/to/store.zarr/layer"`` string. (The original
        google/svcca code takes ``(neurons, datapoints)``: transpose those.)
    y : array-like, shape (n_samples, n_features_y)
        Activations of the second layer over the same samples.
    epsilon : float, optional
        None (the default): features whose variance is below 1e-10 of the
        largest are dropped as dead, no ridge is added, and whitening drops the
        directions below 1e-10 of the largest eigenvalue (rank-revealing), so
        a layer against itself or an invertible map of itself scores 1 to
        rounding. A number: google/svcca's rule, that threshold and also a
        ridge added to the scaled covariance diagonals (``epsilon=1e-10``
        reproduces google/svcca). ``conv="dft"`` always adds the ridge (1e-10
        for None) for its batched Cholesky factorizations.
    conv : {"dft", "samples", "mean", "flatten"} or DFT, default "dft"
        How 4-D conv layers ``(n, C, H, W)`` / ``(n, H, W, C)`` are compared;
        ignored when both inputs are 2-D. ``"dft"``: the SVCCA paper's per-channel
        2-D DFT, a CCA per spatial frequency of the common low-frequency band,
        the coefficients of all frequencies pooled (returns a ``DFT*Result``
        with per-frequency coefficients); ``DFT(memory_limit=..., lanes=...)``
        tunes it. ``"samples"``: every position a sample (same ``H, W`` on both
        sides). ``"mean"``: spatial average. ``"flatten"``: every (channel,
        position) a feature. See :mod:`svcca_dask.conv` and the README.
    layout : {"NCHW", "NHWC"} or a pair of them, optional
        Axis order of 4-D inputs (one for both, or ``(x_layout, y_layout)``);
        not needed for Zarr arrays whose ``dimension_names`` say it.
    split_every : int, default DEFAULT_SPLIT_EVERY (4)
        Fan-in of the tree reduction over row chunks.
    max_features : int, default DEFAULT_MAX_FEATURES
        Largest ``n_features_x + n_features_y`` accepted (memory is ``d**2``).
    folds : int, optional
        Held-out scores (:mod:`svcca_dask.folds`): ``score`` becomes the mean
        over ``folds`` contiguous sample blocks of the held-out correlations of
        directions fit on the other blocks (``fold_scores`` each,
        ``in_sample_score`` the usual score), from the same single pass. Not
        with ``conv="dft"``.
    mask : array-like of bool, shape (n_samples, n_tokens), optional
        Token layers ``(n, T, d)`` (layout ``"NTC"``; ``conv="samples"`` or
        ``"mean"``): the tokens kept, e.g. an attention mask; padding is
        excluded from both sides (:mod:`svcca_dask.tokens`).

    Returns
    -------
    CCAResult or DFTCCAResult
        ``score`` is the mean canonical correlation.

    Notes
    -----
    One pass: each row chunk yields the count, means and centred cross products
    of ``[x y]`` in float64; chunks merge with the Chan/Pebay update in a Dask
    tree reduction, on the current ``distributed`` client if there is one.
    Memory is one chunk plus ``(dx + dy)**2`` float64 per partial, whatever
    ``n_samples``.
    """
    check_epsilon(epsilon)
    check_folds(folds)
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
    )
    if pair.dft:
        return _warned(_dft("cca", pair, conv, epsilon, folds))
    if folds is not None:
        return _held_out(
            pair, folds, split_every, max_features, lambda p: cca_from_stats(p, epsilon=epsilon)
        )
    return _warned(
        cca_from_stats(
            pair_statistics(pair, split_every=split_every, max_features=max_features),
            epsilon=epsilon,
        )
    )


def _dft(
    measure: str, pair: _Pair, conv: Any, epsilon: float | None, folds: int | None, **kw: Any
) -> Any:
    """``measure`` of a pair of conv layers with ``conv="dft"`` (its ridge and
    dead-feature threshold are ``epsilon``'s, 1e-10 for None; no ``folds``)."""
    if folds is not None:
        raise ValueError(
            "folds= is not available with conv='dft'; use conv='mean', 'samples' or 'flatten'"
        )
    return dft_measure(
        measure,
        pair.x,
        pair.y,
        conv=conv,
        layout=pair.layouts,
        epsilon=dead_threshold(epsilon),
        **kw,
    )


def _held_out(pair: _Pair, folds: int, split_every: int, max_features: int, fit: Any) -> Any:
    """A measure with held-out scores (:mod:`svcca_dask.folds`), one pass."""
    _check_width(pair.x, pair.y, max_features)
    full, splits = fold_stats(
        pair.x,
        pair.y,
        folds=folds,
        split_every=split_every,
        what=f"the covariance path of {int(pair.x.shape[0])} samples x "
        f"({int(pair.x.shape[1])} + {int(pair.y.shape[1])}) features in {folds} folds",
        remedies=_WIDE_REMEDIES,
    )
    return held_out(fit, full, splits)


def svcca(
    x: ArrayLike,
    y: ArrayLike,
    *,
    keep: float | int | tuple[float | int, float | int] = 0.99,
    epsilon: float | None = None,
    svd: Literal["auto", "covariance", "randomized", "tsqr"] | RandomizedSVD = "auto",
    conv: ConvOption = "dft",
    layout: str | tuple[str | None, str | None] | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    max_features: int = DEFAULT_MAX_FEATURES,
    folds: int | None = None,
    mask: ArrayLike | None = None,
    sample_ids: Any = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
) -> SVCCAResult | DFTSVCCAResult:
    """SVCCA (Raghu et al. 2017): CCA of each layer's top singular directions.

    Parameters
    ----------
    x, y : array-like, shape (n_samples, n_features)
        As for :func:`cca`.
    keep : float, int, or a pair of them, default 0.99
        Directions kept per side. A float in (0, 1] is the fraction of variance
        (sum of the covariance eigenvalues, i.e. squared singular values of the
        centred data) the kept directions must explain: the smallest number of
        directions that reaches it is kept. An int is the number of directions.
        A tuple gives x's and y's separately. With ``conv="dft"`` ``keep`` is
        read over the whole layer, not per frequency: the covariance
        eigenvalues of all frequencies are pooled (a conjugate pair counted
        twice, as the two real directions it is) and the largest are kept, so
        that ``keep=0.99`` keeps the directions that explain 99% of the
        layer's variance in the band, as SVCCA of the flattened layer would
        for translation-invariant data; conjugate pairs are kept whole.
    svd : {"auto", "covariance", "randomized", "tsqr"} or RandomizedSVD, default "auto"
        How the top singular directions are found (see :mod:`svcca_dask.svd`).
        ``"covariance"``: eigh of the covariance of the single pass (exact,
        ``(dx + dy)**2`` memory). ``"tsqr"``: Dask's exact tall-skinny SVD of
        the centred data (3 passes). ``"randomized"``: Dask's
        ``svd_compressed`` (Halko et al.) on the centred data, never a ``d x d``
        matrix (``4 + 2 * n_power_iter`` passes); ``RandomizedSVD(...)`` sets
        its options. ``"auto"``: ``"covariance"`` when ``dx + dy <=
        max_features``, else per side: its own covariance when its width is
        at most ``max_features``, else randomized. ``conv="dft"`` always uses
        the per-frequency covariances (``"auto"`` or ``"covariance"``).
    epsilon, conv, layout, split_every, max_features, folds, mask
        As for :func:`cca`. ``max_features`` is also the threshold of ``svd="auto"``;
        ``folds`` needs the covariance path (each fold's SVD fit on the others).

    Returns
    -------
    SVCCAResult or DFTSVCCAResult
        ``score`` is the mean of the canonical correlations of the reduced layers.

    Notes
    -----
    On the covariance path the SVD needs no second pass: the eigendecomposition
    of each side's covariance gives the right singular vectors and squared
    singular values of its centred data, and the reduced covariance blocks are
    projections of the accumulated ones. The other paths project the data
    lazily on the kept directions and accumulate the projected statistics in
    one more pass.
    """
    keep_pair(keep)
    check_epsilon(epsilon)
    check_folds(folds)
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
    )
    methods = _svd_methods(svd, pair, max_features)
    if pair.dft:
        return _warned(_dft("svcca", pair, conv, epsilon, folds, keep=keep))
    if folds is not None:
        if methods is not None:
            raise ValueError(
                "folds= fits each fold's SVD from the covariance of one pass: it needs the "
                f"covariance path (dx + dy <= max_features={max_features}, svd='auto' or "
                "'covariance')"
            )
        return _held_out(
            pair,
            folds,
            split_every,
            max_features,
            lambda p: svcca_from_stats(p, keep=keep, epsilon=epsilon),
        )
    if methods is None:
        p = pair_statistics(pair, split_every=split_every, max_features=max_features)
        return _warned(svcca_from_stats(p, keep=keep, epsilon=epsilon))
    return _warned(
        _svcca_two_stage(
            pair,
            methods=methods,
            keep=keep,
            epsilon=epsilon,
            split_every=split_every,
            options=svd if isinstance(svd, RandomizedSVD) else RandomizedSVD(),
            max_features=max_features,
        )
    )


def _svd_methods(svd: Any, pair: _Pair, max_features: int) -> tuple[str, str] | None:
    """Per-side SVD methods, or None for the joint covariance path."""
    if isinstance(svd, RandomizedSVD):
        method = "randomized"
    elif isinstance(svd, str) and svd in SVD_METHODS:
        method = svd
    else:
        raise ValueError(
            f"svd must be one of {', '.join(map(repr, SVD_METHODS))} or RandomizedSVD(...); "
            f"got {svd!r}"
        )
    if pair.dft:
        if method not in ("auto", "covariance"):
            raise ValueError(
                f"svd={method!r} does not apply to conv='dft': each frequency's SVD step is "
                "the eigh of its C x C covariance. Use svd='auto', or a feature map "
                "(conv='flatten', 'samples' or 'mean') with a randomized SVD."
            )
        return None
    if method == "covariance":
        return None
    dx, dy = int(pair.x.shape[1]), int(pair.y.shape[1])
    if method == "auto":
        if dx + dy <= max_features:
            return None
        return tuple("covariance" if d <= max_features else "randomized" for d in (dx, dy))  # type: ignore[return-value]
    return (method, method)


def _svcca_two_stage(
    pair: _Pair,
    *,
    methods: tuple[str, str],
    keep: Any,
    epsilon: float | None,
    split_every: int,
    options: RandomizedSVD,
    max_features: int,
) -> SVCCAResult:
    """SVD step per side (covariance, TSQR or randomized), then the CCA of the
    lazily projected data from one more accumulated pass."""
    keep_x, keep_y = keep_pair(keep)
    names = ("x", "y")
    sx, sy = reduce_pair(
        (pair.x, pair.y),
        methods=methods,
        keep=(keep_x, keep_y),
        options=options,
        epsilon=epsilon,
        names=names,
        split_every=split_every,
    )
    _check_width(sx.directions, sy.directions, max_features)  # (d, k): k columns each
    m = projected_stats((pair.x, pair.y), (sx, sy), names=names, split_every=split_every)
    f = _cca_fields(pair_stats(m), epsilon, names)
    dx, dy = int(pair.x.shape[1]), int(pair.y.shape[1])
    f.update(
        x_weights=sx.directions @ f["x_weights"],
        y_weights=sy.directions @ f["y_weights"],
        x_mean=sx.mean,
        y_mean=sy.mean,
        x_features=sx.live,
        y_features=sy.live,
        x_dropped=_dropped(sx.live, dx),
        y_dropped=_dropped(sy.live, dy),
    )
    return SVCCAResult(
        **f,
        x_directions=sx.directions,
        y_directions=sy.directions,
        x_kept=int(sx.directions.shape[1]),
        y_kept=int(sy.directions.shape[1]),
        x_explained=sx.explained,
        y_explained=sy.explained,
    )


def pwcca(
    x: ArrayLike,
    y: ArrayLike,
    *,
    epsilon: float | None = None,
    side: Literal["x", "y", "smaller"] = "x",
    conv: ConvOption = "dft",
    layout: str | tuple[str | None, str | None] | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    max_features: int = DEFAULT_MAX_FEATURES,
    folds: int | None = None,
    mask: ArrayLike | None = None,
    sample_ids: Any = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
) -> PWCCAResult | DFTPWCCAResult:
    """Projection-weighted CCA (Morcos, Raghu & Bengio 2018).

    ``score = sum_i alpha_i rho_i`` with ``alpha_i = sum_j |<h_i, x_j>|``
    normalized to sum 1, where ``h_i`` are the unit-variance canonical variates
    of one side and ``x_j`` the centred activation vectors of that side's
    neurons. Since ``<h_i, x_j> = (n - 1) (S_xx a_i)_j``, this too comes from
    the covariance statistics of one pass.

    Parameters
    ----------
    x, y : array-like, shape (n_samples, n_features)
        As for :func:`cca`.
    side : {"x", "y", "smaller"}, default "x"
        Whose neurons the variates are projected on; ``"smaller"`` picks the
        side with fewer live features.
    epsilon, conv, layout, split_every, max_features, folds, mask
        As for :func:`cca` (with ``folds``, the held-out fold's correlations are
        weighted by the projection weights fit on the others). With ``conv="dft"`` the weights are computed per
        frequency (projections on each channel's coefficient there) and
        pooled: ``score = sum alpha_fi rho_fi / sum alpha_fi`` over all
        frequencies with multiplicity, so frequencies that carry more of the
        layer's activity weigh more; it approximates, not equals, PWCCA of
        the flattened layer.

    Returns
    -------
    PWCCAResult

    Notes
    -----
    google/svcca's ``pwcca.py`` projects on unwhitened, uncentred activations
    and so gives different numbers; this follows the paper's definition.
    """
    check_epsilon(epsilon)
    check_side(side)
    check_folds(folds)
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
    )
    if pair.dft:
        return _warned(_dft("pwcca", pair, conv, epsilon, folds, side=side))
    if folds is not None:
        return _held_out(
            pair,
            folds,
            split_every,
            max_features,
            lambda p: pwcca_from_stats(p, epsilon=epsilon, side=side),
        )
    p = pair_statistics(pair, split_every=split_every, max_features=max_features)
    return _warned(pwcca_from_stats(p, epsilon=epsilon, side=side))
