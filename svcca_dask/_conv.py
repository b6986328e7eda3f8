"""Conv layers: layouts, spatial reductions, and the per-channel DFT path.

A conv layer's activations are 4-D, ``(n, C, H, W)`` ("NCHW", PyTorch) or
``(n, H, W, C)`` ("NHWC", TensorFlow/JAX). The layout comes from a Zarr
array's ``dimension_names`` (``sample``, ``channel``, ``height``, ``width``, in
any order with the sample axis first) or from ``layout=``; when neither says,
it is an error. The measures reduce 4-D layers in one of four ways (``conv=``;
2-D inputs ignore it):

``"dft"`` (the default)
    The SVCCA paper's method (Raghu et al. 2017, Sec. 3.2; google/svcca's
    ``dft_ccas.fourier_ccas``): a 2-D DFT over space per channel; when the
    spatial sizes differ, the common low-frequency band (``-s/2 <= k < s/2``
    of the smaller size ``s`` on each axis, as the reference code crops); one
    complex ``C x C`` covariance per frequency, accumulated in one pass; one
    CCA per frequency, batched; the coefficients of all frequencies pooled,
    each frequency with its multiplicity (a frequency and its conjugate carry
    conjugate coefficients and so the same correlations: only one of each
    pair is transformed, accumulated and solved), sorted descending; score =
    their mean. See :func:`dft_stats` and :func:`dft_measure`.
``"samples"``
    Every spatial position is a sample: ``(n * H * W, C)`` (Morcos et al.
    2018 do this for PWCCA). Both layers must share ``H, W``. A 2-D layer on
    the other side (class logits) is repeated for every position of its image.
``"mean"``
    Average over space: ``(n, C)``.
``"flatten"``
    Every (channel, position) is a feature: ``(n, C * H * W)``, in the stored
    order. Only for small layers, or with ``svd="randomized"``.

Why ``"dft"`` is the default: it is the method SVCCA was published with, the
only one of the four that is exact (equal to the CCA of the flattened layers
when the data is translation invariant, which image datasets nearly are)
while costing ``C x C`` problems instead of ``HWC x HWC``; it compares layers
of different spatial sizes (``"samples"`` cannot) and keeps the spatial
structure (``"mean"`` discards it, and is a lower bound). Its costs, which the
other modes avoid: per image about twice the flops of ``"samples"`` (one
Hermitian rank-n update per frequency), and statistics of ``F (Cx + Cy)^2``
complex numbers (``F ~ H W / 2`` frequencies): 6.6 GB for two 256-channel
56 x 56 layers, handled by frequency bands under a memory limit (one pass
over the data per band, :class:`DFT`). ``"mean"`` is the cheap choice for
quick layer x layer scans (and what :func:`svcca_dask.similarity_matrix`
supports in one pass).

Against a 2-D layer (class logits ``(n, k)``) the 2-D side is a 1 x 1 map with
no spatial extent: the common band is the DC frequency alone, and the result
is the CCA of the conv layer's spatial sums (equivalently means) with the
target, as the reference code does for ``(n, 1, 1, k)`` targets (its
docstring: a lower bound on the correlation of the target with the channels).

Dead features per frequency: a channel whose variance at a frequency is below
``epsilon`` times ``H * W`` times the largest variance of any single
activation of its layer (the variance a DFT coefficient of white noise that
strong would have) is dead there and dropped at that frequency, never NaN. A
frequency contributes ``min(live x channels, live y channels)``
correlations; the pooled list is completed with zeros up to ``min(Kx, Ky)``
(``K`` = live directions summed over frequencies with multiplicity), which is
what the CCA of the flattened layers gives when frequencies are
uncorrelated. A spatially constant channel, for instance, is live at DC only.

The first three are feature maps (:func:`conv_features`): a lazy 2-D Dask array
that every 2-D measure accepts. ``"dft"`` is not a feature map: it has its own
statistics (:class:`DFTStats`) and results (:class:`DFTCCAResult`, ...).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.fft as sfft
from dask.delayed import delayed

from ._input import ArrayLike, as_dask, open_source, open_zarr_array
from ._linalg import cca_from_cov, top_eigh
from ._nogil import trsm_lower
from ._rfp import hfrk_update, packed_size, unpack
from ._stats import _current_client, _raise_non_finite, compute, moments_combine
from ._svd import check_keep

__all__ = [
    "CONV_MODES",
    "FEATURE_MAP_MODES",
    "LAYOUTS",
    "conv_features",
    "resolve_layout",
]

#: The ``conv=`` values every measure accepts.
CONV_MODES = ("dft", "samples", "mean", "flatten")
#: The ``conv=`` values that are feature maps (:func:`conv_features`).
FEATURE_MAP_MODES = ("samples", "mean", "flatten")
#: The ``layout=`` values accepted as arguments.
LAYOUTS = ("NCHW", "NHWC")

# Zarr ``dimension_names`` (or xarray dims) understood for each role. The
# canonical names are the first of each set; see DESIGN.md (storage).
_ROLE_NAMES = {
    "N": ("sample", "samples", "image", "images", "batch"),
    "C": ("channel", "channels"),
    "H": ("height",),
    "W": ("width",),
}


# --------------------------------------------------------------------------- #
# layouts


def _dimension_names(x: Any) -> tuple[str, ...] | None:
    """The dimension names a Zarr array (v3 ``dimension_names``, or the v2
    ``_ARRAY_DIMENSIONS`` attribute xarray writes) or an xarray object carries."""
    meta = getattr(x, "metadata", None)
    names = getattr(meta, "dimension_names", None)
    if names is None:
        attrs = getattr(x, "attrs", None)
        if attrs is not None and not hasattr(x, "dims"):
            try:
                names = attrs.get("_ARRAY_DIMENSIONS")
            except Exception:  # pragma: no cover - exotic attrs mappings
                names = None
    if names is None and hasattr(x, "dims") and not isinstance(x, np.ndarray):
        names = getattr(x, "dims", None)
    if names is None or any(n is None for n in names):
        return None
    return tuple(str(n) for n in names)


def _layout_from_names(names: tuple[str, ...], *, name: str) -> str | None:
    """Map dimension names to a layout string such as ``"NCHW"``; None if unknown."""
    roles = []
    for dim in names:
        low = dim.lower()
        role = next((r for r, options in _ROLE_NAMES.items() if low in options), None)
        if role is None:
            return None
        roles.append(role)
    layout = "".join(roles)
    if sorted(layout) != sorted("NCHW"):
        return None
    if layout[0] != "N":
        raise ValueError(
            f"{name} has dimension_names {names}: the sample axis must come first "
            "(arrays are samples first, chunked along samples); transpose the array "
            "when writing the store"
        )
    return layout


def resolve_layout(x: Any, layout: str | None = None, *, name: str = "x") -> str:
    """The layout of a 4-D input: from its ``dimension_names`` or from ``layout``.

    Parameters
    ----------
    x : zarr.Array, xarray.DataArray or array
        The (already opened) input. A Zarr v3 array's ``dimension_names``
        (``("sample", "channel", "height", "width")`` or any order of these
        with the sample axis first) give the layout.
    layout : {"NCHW", "NHWC"}, optional
        The layout when ``x`` does not name its dimensions. When both are
        given they must agree.
    name : str
        The argument's name, for error messages.

    Returns
    -------
    str
        A permutation of ``"NCHW"`` starting with ``"N"``, naming the role of
        each axis in order.

    Raises
    ------
    ValueError
        When neither ``x`` nor ``layout`` says, when they disagree, or when
        ``layout`` is not one of :data:`LAYOUTS`.
    """
    if layout is not None:
        if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
            raise ValueError(
                f"layout for {name} must be 'NCHW' (PyTorch) or 'NHWC' (TensorFlow/JAX), "
                f"got {layout!r}"
            )
        layout = layout.upper()
    names = _dimension_names(x)
    from_names = _layout_from_names(names, name=name) if names is not None else None
    if from_names is not None:
        if layout is not None and layout != from_names:
            raise ValueError(
                f"{name} names its dimensions {names} (layout {from_names}) but "
                f"layout={layout!r} was given; drop the layout argument or fix the store"
            )
        return from_names
    if layout is not None:
        return layout
    shape = tuple(getattr(x, "shape", ()))
    known = f" (its dimension_names {names} are not understood)" if names else ""
    raise ValueError(
        f"{name} is a 4-D conv layer of shape {shape} but its layout is unknown{known}: "
        "pass layout='NCHW' (PyTorch) or layout='NHWC' (TensorFlow/JAX), or store it in "
        "Zarr with dimension_names=('sample', 'channel', 'height', 'width')"
    )


def _perm_to_nhwc(layout: str) -> tuple[int, int, int, int]:
    """Axis permutation that turns an array in ``layout`` into NHWC."""
    return (layout.index("N"), layout.index("H"), layout.index("W"), layout.index("C"))


def open_conv(
    x: ArrayLike, layout: str | None = None, *, name: str = "x"
) -> tuple[da.Array, str | None]:
    """Open one input as a Dask array chunked along samples, and its layout.

    2-D inputs come back with layout None; 4-D inputs with their resolved
    layout (see :func:`resolve_layout`). Other dimensionalities are an error.
    """
    if isinstance(x, (str, os.PathLike)):
        x = open_zarr_array(x, name=name)
    obj = x
    if hasattr(x, "dims") and hasattr(x, "data") and not isinstance(x, np.ndarray):
        x = x.data  # xarray.DataArray: its dims were read from obj
    arr = as_dask(x, name=name, ndim=(2, 4))
    if arr.ndim == 2:
        return arr, None
    return arr, resolve_layout(obj, layout, name=name)


# --------------------------------------------------------------------------- #
# feature maps


def _check_mode(conv: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(conv, str) or conv not in allowed:
        raise ValueError(f"conv must be one of {', '.join(map(repr, allowed))}; got {conv!r}")
    return conv


def _samples_block(b: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    b = np.ascontiguousarray(b.transpose(perm))  # (m, H, W, C)
    return b.reshape(-1, b.shape[-1])


def _mean_block(b: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
    return b.mean(axis=axes, dtype=np.float64)


def _flatten_block(b: np.ndarray) -> np.ndarray:
    return b.reshape(b.shape[0], -1)


def _repeat_block(b: np.ndarray, reps: int) -> np.ndarray:
    return np.repeat(b, reps, axis=0)


def spatial_shape(arr: da.Array, layout: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of a 4-D array in ``layout``."""
    return (
        int(arr.shape[layout.index("C")]),
        int(arr.shape[layout.index("H")]),
        int(arr.shape[layout.index("W")]),
    )


def features_4d(arr: da.Array, layout: str, conv: str) -> da.Array:
    """The lazy 2-D feature map of an opened 4-D array (see :func:`conv_features`)."""
    c, h, w = spatial_shape(arr, layout)
    rows = arr.chunks[0]
    if conv == "samples":
        return arr.map_blocks(
            _samples_block,
            perm=_perm_to_nhwc(layout),
            dtype=arr.dtype,
            drop_axis=[2, 3],
            chunks=(tuple(r * h * w for r in rows), (c,)),
        )
    if conv == "mean":
        axes = (layout.index("H"), layout.index("W"))
        return arr.map_blocks(
            _mean_block, axes=axes, dtype=np.float64, drop_axis=[2, 3], chunks=(rows, (c,))
        )
    return arr.map_blocks(
        _flatten_block, dtype=arr.dtype, drop_axis=[2, 3], chunks=(rows, (c * h * w,))
    )


def repeat_rows(arr: da.Array, reps: int) -> da.Array:
    """Repeat every row ``reps`` times (a 2-D side against ``conv="samples"``)."""
    return arr.map_blocks(
        _repeat_block,
        reps=reps,
        dtype=arr.dtype,
        chunks=(tuple(r * reps for r in arr.chunks[0]), arr.chunks[1]),
    )


def conv_features(
    x: ArrayLike,
    *,
    conv: str,
    layout: str | None = None,
    name: str = "x",
) -> da.Array:
    """A conv layer as a lazy 2-D ``(samples, features)`` Dask array.

    Parameters
    ----------
    x : array-like, shape (n, C, H, W) or (n, H, W, C)
        NumPy, Dask, Zarr or xarray array, or a ``"store.zarr/layer"`` path.
        A 2-D ``(n, d)`` input is returned as a Dask array, unchanged (``conv``
        is ignored for 2-D inputs everywhere in this package).
    conv : {"samples", "mean", "flatten"}
        ``"samples"``: ``(n * H * W, C)``, every position a sample (rows of one
        image are consecutive, row-major over ``H, W``). ``"mean"``: ``(n, C)``,
        the spatial mean, in float64. ``"flatten"``: ``(n, C * H * W)``, the
        features in the stored order. ``"dft"`` is not a feature map; the
        measures take ``conv="dft"`` directly.
    layout : {"NCHW", "NHWC"}, optional
        Needed unless ``x`` is a Zarr array with ``dimension_names`` (or an
        xarray object with dims) that say it.
    name : str
        The argument's name, for error messages.

    Returns
    -------
    dask.array.Array, shape (n_rows, n_features)
        Built blockwise from ``x``'s row chunks (one output chunk per input
        chunk, whole along features): nothing is computed or read.

    Raises
    ------
    ValueError
        For an unknown mode or layout, or an input that is neither 2-D nor 4-D.

    Examples
    --------
    >>> import numpy as np, svcca_dask as sd
    >>> x = np.zeros((10, 3, 4, 4), dtype="float32")
    >>> sd.conv_features(x, conv="samples", layout="NCHW").shape
    (160, 3)
    """
    if isinstance(conv, str) and conv == "dft":
        raise ValueError(
            "conv='dft' is not a feature map: it yields one covariance per spatial "
            "frequency. Pass conv='dft' to the measures (cca, svcca, pwcca, linear_cka), "
            "or use 'samples', 'mean' or 'flatten' here"
        )
    mode = _check_mode(conv, FEATURE_MAP_MODES)
    arr, lay = open_conv(x, layout, name=name)
    if lay is None:
        return arr
    return features_4d(arr, lay, mode)


# --------------------------------------------------------------------------- #
# the DFT path: options and frequency plan


@dataclass(frozen=True)
class DFT:
    """Options of ``conv="dft"`` (``conv=DFT(...)`` in any measure).

    Parameters
    ----------
    memory_limit : int or str, optional
        Bytes (or a string such as ``"2GiB"``) the per-frequency statistics
        and the tasks' buffers may take, all lanes together (the process
        itself, its libraries, the chunks being read and the memory glibc
        keeps for the next task come on top: 0.35-0.45 GiB here). When the
        statistics of all frequencies do not fit, the frequencies are split
        into bands and each band takes one pass over the data (the data is
        read once per band). Default: the
        Dask config value ``svcca_dask.dft_memory_limit`` if set, else a
        quarter of the machine's physical memory.
    lanes : int, optional
        Number of independent accumulators (each a chain of tasks over
        consecutive row chunks, merged at the end): the parallelism of the
        pass across tasks. Default: one on the threaded scheduler, whose
        tasks then use every thread (the two layers read and transformed at
        once, the frequencies merged in parallel: the statistics are held
        once); on a ``distributed`` cluster one per thread of all workers, at
        most the number of row chunks, and at most twice the size of the
        data over the size of one accumulator (each lane writes its whole
        accumulator once, which costs about as much as processing half as
        many bytes of images), and no more than keep the number of passes of
        one lane under ``memory_limit`` (the lanes share it: past that, each
        lane more splits the frequencies into more bands, and every band
        reads all the data again for the same total work). With fewer lanes
        than threads, each task uses the spare ones (on a cluster at most
        one worker's threads).
    rows : int, optional
        Images per task. Default: stored chunks merged (never split) until a
        task's coefficients take an eighth of a lane's accumulator (at most
        512 MiB), 8 to 64 images: each task streams the whole accumulator,
        so fewer images per task make the pass bound by memory bandwidth.
        On threads a task reads its stored chunks itself, one at a time
        (the next one read ahead while one is transformed).
    """

    memory_limit: int | str | None = None
    lanes: int | None = None
    rows: int | None = None


def _freq_range(s: int) -> np.ndarray:
    """Integer frequencies of an s-point DFT, ``[-(s // 2), (s - 1) // 2]``
    (``numpy.fft.fftfreq(s, 1 / s)``): the reference code's band for size s."""
    return np.concatenate([np.arange(0, (s - 1) // 2 + 1), np.arange(-(s // 2), 0)]).astype(int)


def _axis_partner(k: int, s: int, sx: int, sy: int) -> int | None:
    """The frequency of the band ``_freq_range(s)`` whose coefficients are the
    conjugates of those at ``k`` for both layers (sizes ``sx``, ``sy`` on this
    axis), or None when it lies outside the band."""
    if -(s // 2) <= -k <= (s - 1) // 2:
        return -k
    # k = -s/2 (s even): its conjugate +s/2 aliases back to -s/2 only for a layer of size s
    return k if sx == s and sy == s else None


@dataclass(frozen=True)
class _Gather:
    """Where one layer's coefficient at each planned frequency sits in its rfft2."""

    rows: np.ndarray  # (F,) row of the full FFT along H
    cols: np.ndarray  # (F,) position among the computed rfft columns
    conj: np.ndarray  # (F,) bool: the coefficient is the conjugate of the stored one
    columns: np.ndarray  # the rfft columns to compute (sorted, unique)


@dataclass(frozen=True)
class _Plan:
    """The common band, one representative per conjugate pair, and the gathers."""

    frequencies: np.ndarray  # (F, 2) int (kh, kw)
    multiplicity: np.ndarray  # (F,) int, 1 or 2
    band: tuple[int, int]
    x_shape: tuple[int, int, int]  # (C, H, W); a 2-D side is (d, 1, 1)
    y_shape: tuple[int, int, int]
    x_layout: str | None  # None for a 2-D side
    y_layout: str | None

    def gather(self, shape: tuple[int, int, int], idx: np.ndarray) -> _Gather:
        _, h, _ = shape
        kh, kw = self.frequencies[idx, 0], self.frequencies[idx, 1]
        conj = kw < 0
        rows = np.where(conj, -kh, kh) % h
        col = np.abs(kw)
        columns = np.unique(col)
        return _Gather(rows, np.searchsorted(columns, col), conj, columns)


def _dft_plan(
    x_shape: tuple[int, int, int],
    y_shape: tuple[int, int, int],
    x_layout: str | None,
    y_layout: str | None,
) -> _Plan:
    """Frequencies of the common low-frequency band, one per conjugate pair.

    The band is the reference code's (google/svcca ``fft_resize``): along each
    axis the frequencies ``-s/2 <= k < s/2`` of the smaller size ``s``. A
    frequency and its conjugate (``-kh, -kw``) carry conjugate coefficients
    (the input is real) and so the same canonical correlations: only one is
    computed, with multiplicity 2.
    """
    (_, hx, wx), (_, hy, wy) = x_shape, y_shape
    h, w = min(hx, hy), min(wx, wy)
    seen: set[tuple[int, int]] = set()
    reps: list[tuple[int, int]] = []
    mult: list[int] = []
    for kh in _freq_range(h):
        for kw in _freq_range(w):
            f = (int(kh), int(kw))
            if f in seen:
                continue
            ph, pw = _axis_partner(f[0], h, hx, hy), _axis_partner(f[1], w, wx, wy)
            p = (ph, pw) if ph is not None and pw is not None else None
            seen.add(f)
            if p is None or p == f:
                reps.append(f)
                mult.append(1)
                continue
            seen.add(p)  # type: ignore[arg-type]
            # prefer the member stored directly in rfft2 (kw >= 0)
            reps.append(max(f, p, key=lambda t: (t[1] >= 0, t[1], t[0])))  # type: ignore[arg-type]
            mult.append(2)
    freqs = np.array(reps, dtype=int).reshape(-1, 2)
    order = np.lexsort((freqs[:, 1], freqs[:, 0], np.abs(freqs[:, 1])))
    return _Plan(
        frequencies=freqs[order],
        multiplicity=np.array(mult, dtype=int)[order],
        band=(h, w),
        x_shape=x_shape,
        y_shape=y_shape,
        x_layout=x_layout,
        y_layout=y_layout,
    )


# --------------------------------------------------------------------------- #
# the DFT path: one fused task per row chunk, folded into a lane accumulator

#: Bytes of float64 image data transformed at once inside a task (and of the
#: gathered coefficients staged before their frequency-major write).
_FFT_BATCH_BYTES = 16 * 2**20
#: A fold task's buffers, as a share of its lane's accumulator (see _rows_target).
_TASK_SHARE = 0.125
#: ... and at most this many bytes.
_TASK_MAX_BYTES = 512 * 2**20
#: Below one needed rfft column in this many, the columns' DFT is done directly.
_DIRECT_DFT_RATIO = 2


def _coefficients_into(
    buf: np.ndarray,
    offset: int,
    block: np.ndarray,
    layout: str | None,
    shape: tuple[int, int, int],
    g: _Gather,
    workers: int = 1,
) -> None:
    """Write the planned DFT coefficients of one side's row chunk into
    ``buf[:, offset:offset + C, :m]`` (frequency, channel, image)."""
    c, h, w = shape
    m = block.shape[0]
    if layout is None:  # a 2-D side: a 1x1 map, its only coefficient is itself
        buf[0, offset : offset + c, :m] = np.asarray(block, dtype=np.float64).T
        return
    hax, wax = layout.index("H"), layout.index("W")
    if g.columns.size == 1 and g.columns[0] == 0 and np.all(g.rows == 0):
        # DC only (the other side is 2-D or 1x1): the spatial sum, no FFT
        s = block.sum(axis=(hax, wax), dtype=np.float64)  # (m, C)
        buf[0, offset : offset + c, :m] = s.T
        return
    per_image = c * h * w * 8
    step = max(1, _FFT_BATCH_BYTES // per_image)
    cax = layout.index("C")
    ncols = g.columns.size
    # a narrow band of columns (a pass over part of the frequencies): the DFT
    # of just those columns as one real GEMM beats a full rfft along W
    direct = ncols * _DIRECT_DFT_RATIO < w // 2 + 1
    if direct:
        angle = (-2 * np.pi / w) * np.outer(np.arange(w), g.columns)
        # cos and sin interleaved: the product read as complex128 is cos + i sin
        cos_sin = np.stack([np.cos(angle), np.sin(angle)], axis=-1).reshape(w, 2 * ncols)
    # H and the computed columns become one axis (adjacent in both layouts)
    flat = g.rows * ncols + g.cols
    f_count = flat.size
    # The gathered coefficients come out image-major, (m, C, F) or (m, F, C);
    # they are staged for several steps and written frequency-major once per
    # group: a transposing write whose innermost run is one step's 2 images
    # cost about as much as the FFT and the GEMM together (1.3-1.9 ms per
    # 256-channel image and 393 frequencies, against 0.5-0.9 with 8 at a time).
    group = min(m, max(step, _FFT_BATCH_BYTES // max(1, c * f_count * 16)))
    stage = np.empty((group, c, f_count) if cax == 1 else (group, f_count, c), np.complex128)
    for g0 in range(0, m, group):
        gm = min(group, m - g0)
        for s0 in range(g0, g0 + gm, step):
            b = np.asarray(block[s0 : min(s0 + step, g0 + gm)], dtype=np.float64)
            if direct:
                prod = np.moveaxis(b, wax, -1) @ cos_sin
                r = np.moveaxis(prod.view(np.complex128), -1, wax)
            else:
                r = sfft.rfft(b, axis=wax, workers=workers)
                if ncols < r.shape[wax]:
                    r = np.take(r, g.columns, axis=wax)
            r = sfft.fft(r, axis=hax, workers=workers, overwrite_x=True)
            r = np.ascontiguousarray(r)
            k = r.shape[0]
            # NCHW: (k, C, H, cols) -> (k, C, F); NHWC: (k, H, cols, C) -> (k, F, C)
            shape = (k, c, -1) if cax == 1 else (k, -1, c)
            # mode="wrap" (the indices are in range): "raise" would buffer the output
            np.take(r.reshape(shape), flat, axis=2 if cax == 1 else 1,
                    out=stage[s0 - g0 : s0 - g0 + k], mode="wrap")  # fmt: skip
        st = stage[:gm]
        if g.conj.any():
            sel = (slice(None), slice(None), g.conj) if cax == 1 else (slice(None), g.conj)
            st[sel] = st[sel].conj()
        # (k, C, F) -> (F, C, k); (k, F, C) -> (F, C, k)
        buf[:, offset : offset + c, g0 : g0 + gm] = (
            st.transpose(2, 1, 0) if cax == 1 else st.transpose(1, 2, 0)
        )


def _rows_of(piece: Any) -> int:
    return int(piece.rows if isinstance(piece, _READERS) else piece.shape[0])


def _dft_fold(
    acc: dict[str, Any] | None,
    xb: Any,
    yb: Any,
    *,
    plan: _Plan,
    idx: np.ndarray,
    names: tuple[str, str],
    row_start: int,
    with_scale: bool = False,
    threads: int = 1,
    last: bool = False,
    arrays: _Recycler | None = None,
) -> dict[str, Any]:
    """Merge one row chunk into a lane's per-frequency statistics, in place.

    ``xb`` and ``yb`` are the chunk of each layer, or lists of consecutive
    pieces of it (stored chunks, read one at a time and one ahead) with the
    same row counts on both sides. The chunk's DFT coefficients ``Z``
    (frequency, channel, image) are centred on the chunk mean, and one extra
    column ``sqrt(na nb / n) (mean_b - mean_a)`` is appended: then
    ``acc.m2 += Z Z^H`` per frequency is exactly the Chan/Pebay merge of
    :func:`svcca_dask._stats.moments_combine` (``M = Ma + Mb + (na nb / n)
    d d^H``), done by one ``zhfrk`` per frequency that writes into the
    accumulator: half the flops of a general product, no partial statistics
    allocated, no separate merge pass over the accumulator. ``m2`` holds
    each frequency's Hermitian matrix in rectangular full packed storage
    (half the memory of a square one, :mod:`svcca_dask._rfp`).

    With ``threads > 1`` the two layers are read and transformed in two
    threads, and the frequencies are centred and merged in ``threads``
    threads (``zhfrk`` through ctypes releases the GIL): one accumulator,
    all cores.

    The accumulator is owned by its lane: each fold task is the only consumer
    of the previous one's result, so updating it in place is safe. Its
    coefficient buffer is kept for the lane's next task unless ``last``; with
    ``arrays`` (threads) both come from that :class:`_Recycler`.

    With ``with_scale``, the variance of every single activation (channel,
    position) is accumulated too, as ``P`` independent 1 x 1 problems merged
    by the same :func:`moments_combine`: it sets the dead-channel threshold
    (:attr:`DFTStats.x_scale`) in the same pass.
    """
    xs = xb if isinstance(xb, list) else [xb]
    ys = yb if isinstance(yb, list) else [yb]
    sizes = [_rows_of(p) for p in xs]
    if sizes != [_rows_of(p) for p in ys]:  # pragma: no cover - the graph aligns them
        raise ValueError("the pieces of x and y must have the same rows")
    m = sum(sizes)
    cx, cy = plan.x_shape[0], plan.y_shape[0]
    f_count, d = idx.size, cx + cy
    # the coefficient buffer is reused by the lane's next task (buffers this
    # large are mapped fresh by malloc and page-faulted on every use otherwise)
    buf = acc.pop("_buf", None) if acc is not None else None
    if buf is None or buf.shape[0] != f_count or buf.shape[2] < m + 1:
        buf = _new((f_count, d, m + 1), arrays)
    z = buf[:, :, : m + 1]
    gx, gy = plan.gather(plan.x_shape, idx), plan.gather(plan.y_shape, idx)
    positions: dict[str, list[dict[str, Any]]] = {"x_pos": [], "y_pos": []}
    sides = (
        (names[0], 0, plan.x_layout, plan.x_shape, gx, "x_pos"),
        (names[1], cx, plan.y_layout, plan.y_shape, gy, "y_pos"),
    )
    parallel = threads > 1
    fft_workers = max(1, threads // 2)

    def side(b: Any, offset: int, rows: int, spec: tuple) -> None:
        name, c0, layout, shape, g, key = spec
        if with_scale:  # checked in the first pass only: later passes read the same data
            pm = _position_moments(np.asarray(b))
            if not (np.all(np.isfinite(pm["mean"])) and np.all(np.isfinite(pm["m2"]))):
                _raise_non_finite([np.asarray(b).reshape(rows, -1)], [name], row_start + offset)
            positions[key].append(pm)
        view = z[:, :, offset : offset + rows]
        _coefficients_into(view, c0, b, layout, shape, g, workers=fft_workers)

    def all_pieces(pieces: list[Any], spec: tuple) -> None:
        # with threads to spare, the next piece is read while this one is
        # transformed (a read mostly waits on the file or on Zarr's threads)
        ahead = parallel and any(isinstance(p, _READERS) for p in pieces)
        nxt = _read_pool().submit(_load, pieces[0]) if ahead else None
        offset = 0
        for i, rows in enumerate(sizes):
            if nxt is not None:
                b = nxt.result()
                nxt = _read_pool().submit(_load, pieces[i + 1]) if i + 1 < len(pieces) else None
            else:
                b = _load(pieces[i])
            side(b, offset, rows, spec)
            del b
            offset += rows

    if parallel:  # one thread per layer, each reading its pieces in order
        other = _fold_pool().submit(all_pieces, ys, sides[1])
        all_pieces(xs, sides[0])
        other.result()
    else:
        all_pieces(xs, sides[0])
        all_pieces(ys, sides[1])
    if acc is None:
        acc = {
            "n": 0,
            "mean": np.zeros((f_count, d), dtype=np.complex128),
            "m2": _new((f_count, packed_size(d)), arrays, zero=True),
        }
    if with_scale:
        for key, parts in positions.items():
            acc[key] = moments_combine([acc.get(key, _EMPTY), *parts])
    na = acc["n"]
    tot = na + m
    weight = np.sqrt(na * m / tot)

    def merge(sl: slice) -> None:
        zs = z[sl]
        mean_b = zs[:, :, :m].mean(axis=2)
        zs[:, :, :m] -= mean_b[:, :, None]
        delta = mean_b - acc["mean"][sl]
        zs[:, :, m] = weight * delta
        acc["mean"][sl] += delta * (m / tot)
        hfrk_update(acc["m2"][sl], zs)

    if parallel and f_count > 1:
        cuts = np.linspace(0, f_count, min(threads, f_count) + 1).astype(int)
        list(_fold_pool().map(merge, [slice(a, b) for a, b in itertools.pairwise(cuts)]))
    else:
        merge(slice(0, f_count))
    acc["n"] = tot
    if not last:  # the lane's next task reuses it
        acc["_buf"] = buf
    else:  # not after every task: the next one would page-fault it all back in
        release_free_memory()
    return acc


def _new(shape: tuple[int, ...], arrays: _Recycler | None, *, zero: bool = False) -> np.ndarray:
    """A complex128 array of ``shape``, from ``arrays`` when given."""
    if arrays is not None:
        return arrays.take(shape, zero=zero)
    return (np.zeros if zero else np.empty)(shape, dtype=np.complex128)


class _Recycler:
    """The large arrays of one run's passes, handed on from band to band.

    A pass's accumulator (~1 GB here) would otherwise be freed after its
    band and mapped fresh for the next one, and the kernel zeroes every page
    of fresh memory on first touch: measured here, ~1.1 s more for a pass's
    first fold (0.24 s for the steady merge), against ~0.15 s to zero a
    reused array. Arrays taken during a band are kept (they are alive until
    the band's results are computed anyway) and become free for the next
    band's tasks after it (:meth:`release`). Only on the threaded scheduler:
    workers of a cluster would each get a copy. Pickled (Dask's local
    ``processes`` scheduler), it travels empty.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []  # flat complex128 buffers
        self._used: list[np.ndarray] = []

    def __reduce__(self) -> tuple:
        return (_Recycler, ())

    def take(self, shape: tuple[int, ...], *, zero: bool = False) -> np.ndarray:
        size = int(np.prod(shape))
        with self._lock:
            fits = [b for b in self._free if b.size >= size]
            flat = min(fits, key=lambda b: b.size) if fits else None
            self._free = [b for b in self._free if b is not flat]
            if flat is None:  # fresh: zeroed pages come from the kernel as they are touched
                flat = (np.zeros if zero else np.empty)(size, dtype=np.complex128)
                zero = False
            self._used.append(flat)
        out = flat[:size].reshape(shape)
        if zero:
            out.fill(0)
        return out

    def release(self) -> None:
        """Every array taken so far is free again (the caller no longer uses them)."""
        with self._lock:
            self._free += self._used
            self._used = []


def _load(piece: Any) -> Any:
    return piece() if isinstance(piece, _READERS) else piece


@functools.lru_cache(maxsize=1)
def _read_pool() -> ThreadPoolExecutor:
    """Threads that read the next stored chunk of a fold task ahead (see :func:`_dft_fold`)."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="svcca-dft-read")


@functools.lru_cache(maxsize=1)
def _fold_pool() -> ThreadPoolExecutor:
    """Threads of the fold tasks that use more than one (see :func:`_dft_fold`)."""
    return ThreadPoolExecutor(
        max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="svcca-dft"
    )


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None


def release_free_memory() -> None:
    """Give memory that glibc's allocator keeps after ``free`` back to the system.

    The DFT path's tasks allocate many temporaries of a few to 32 MiB in
    several threads (Zarr's among them: a stored chunk's bytes, its decoded
    values, the array returned); glibc keeps them in per-thread arenas
    (arrays under its dynamic mmap threshold, up to 32 MiB, are not
    unmapped when freed). Called after a lane's last task and after each
    block of the per-frequency work, not after every task: the next task
    reuses that memory, and once given back it is page-faulted in again
    (measured here, with 256 + 256 channels and four bands: 9-17% of the
    pass's time, for 0.05-0.1 GiB less at the peak). A no-op where the C
    library is not glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_EMPTY: dict[str, Any] = {"n": 0, "mean": np.zeros((0, 1)), "m2": np.zeros((0, 1, 1))}


def _position_moments(b: np.ndarray) -> dict[str, Any]:
    """Chunk statistics of every activation taken alone: ``P`` problems of size 1.
    A NaN or infinity anywhere makes the result non-finite (the caller checks)."""
    flat = b.reshape(b.shape[0], -1)
    mean = flat.mean(axis=0, dtype=np.float64)
    m2 = np.zeros_like(mean)
    step = max(1, _FFT_BATCH_BYTES // (8 * max(1, flat.shape[1])))
    for s0 in range(0, flat.shape[0], step):  # float64 temporaries of ~16 MiB
        dev = np.subtract(flat[s0 : s0 + step], mean, dtype=np.float64)
        m2 += np.einsum("ij,ij->j", dev, dev)
    return {"n": flat.shape[0], "mean": mean[:, None], "m2": m2[:, None, None]}


@dataclass(frozen=True)
class DFTStats:
    """Per-frequency covariance statistics of a pair of (conv) layers.

    Attributes
    ----------
    n : int
        Number of images.
    frequencies : ndarray of int, shape (F, 2)
        ``(kh, kw)`` of each frequency, in cycles per map of the common band
        (``-h/2 <= kh < h/2``, same for ``kw``); one of each conjugate pair.
    multiplicity : ndarray of int, shape (F,)
        2 for a frequency that stands for itself and its conjugate, else 1.
        ``multiplicity.sum() == band[0] * band[1]``.
    band : (int, int)
        The common band ``(h, w)``: the smaller height and width.
    sizes : (int, int)
        Channels of x and y.
    mean : ndarray, complex128, shape (F, Cx + Cy)
        Mean DFT coefficient of each channel (x's channels first).
    cov : ndarray, complex128, shape (F, Cx + Cy, Cx + Cy)
        Hermitian covariance (ddof=1) of the coefficients at each frequency.
    x_shape, y_shape : (int, int, int)
        ``(C, H, W)`` of each layer; a 2-D layer is ``(d, 1, 1)``.
    x_scale, y_scale : float
        ``H * W`` times the largest variance of a single activation (channel,
        position) of each layer: the variance of a DFT coefficient of white
        noise that strong. Channels whose variance at a frequency is below
        ``epsilon`` times this are dead at that frequency.
    """

    n: int
    frequencies: np.ndarray
    multiplicity: np.ndarray
    band: tuple[int, int]
    sizes: tuple[int, int]
    mean: np.ndarray
    cov: np.ndarray
    x_shape: tuple[int, int, int]
    y_shape: tuple[int, int, int]
    x_scale: float
    y_scale: float

    @property
    def sxx(self) -> np.ndarray:
        """``(F, Cx, Cx)`` covariance of x's coefficients."""
        return self.cov[:, : self.sizes[0], : self.sizes[0]]

    @property
    def sxy(self) -> np.ndarray:
        """``(F, Cx, Cy)`` cross-covariance."""
        return self.cov[:, : self.sizes[0], self.sizes[0] :]

    @property
    def syy(self) -> np.ndarray:
        """``(F, Cy, Cy)`` covariance of y's coefficients."""
        return self.cov[:, self.sizes[0] :, self.sizes[0] :]

    @property
    def x_mean(self) -> np.ndarray:
        return self.mean[:, : self.sizes[0]]

    @property
    def y_mean(self) -> np.ndarray:
        return self.mean[:, self.sizes[0] :]


# --------------------------------------------------------------------------- #
# the DFT path: passes, bands, lanes


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


def _memory_limit(opt: DFT) -> int:
    from dask.utils import parse_bytes

    value = opt.memory_limit
    if value is None:
        value = dask.config.get("svcca_dask.dft_memory_limit", None)
    if value is None:
        return max(256 * 2**20, _physical_memory() // 4)
    out = parse_bytes(value) if isinstance(value, str) else int(value)
    if out <= 0:
        raise ValueError(f"memory_limit must be positive, got {value!r}")
    return out


def _scheduler_threads() -> int:
    client = _current_client()
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


def _task_threads(lanes: int) -> int:
    """Threads each fold task uses: with fewer lanes than threads, a lane's
    tasks use the spare ones (two layers transformed at once, the frequencies
    merged in parallel); on a ``distributed`` cluster at most one worker's
    threads, where the task runs. (One lane on a worker of two threads ran a
    pass on one of them: 256 images of 256 + 256 channels at 56 x 56 took
    73 s there against 39 s on the threaded scheduler.)"""
    threads = max(1, _scheduler_threads() // lanes)
    client = _current_client()
    if client is not None:
        threads = min(threads, max(client.nthreads().values(), default=1))
    return threads


def _default_lanes(
    data_bytes: int, stats_bytes: int, *, plan: _Plan | None = None, budget: int | None = None
) -> int:
    """On threads, one lane: its tasks use every thread (two layers read and
    transformed at once, frequencies merged in parallel), so the statistics
    are held once. On a ``distributed`` cluster, one lane per thread, but
    about one lane per half accumulator of data at most: each lane's
    accumulator is written (page-faulted) in full once, which costs about as
    much as streaming half as many bytes of images through the FFT and the
    Gram. With a ``budget`` (and its ``plan``), no more lanes than keep the
    number of frequency bands that of one lane: the lanes share the budget,
    so beyond that each lane more splits the frequencies further, and every
    band reads all of the data again for the same total work."""
    if _current_client() is None:
        return 1
    lanes = max(1, min(_scheduler_threads(), round(2 * data_bytes / max(1, stats_bytes))))
    if plan is not None and budget is not None:
        passes = len(_bands(plan, 1, budget))
        while lanes > 1 and len(_bands(plan, lanes, budget)) > passes:
            lanes -= 1
    return lanes


def _as_options(conv: Any) -> DFT:
    return conv if isinstance(conv, DFT) else DFT()


def _freq_bytes(plan: _Plan) -> int:
    """Bytes of one frequency's packed ``(Cx + Cy)^2`` Hermitian accumulator."""
    return packed_size(plan.x_shape[0] + plan.y_shape[0]) * 16


def _stats_bytes(plan: _Plan) -> int:
    """Bytes of one accumulator over all planned frequencies."""
    return int(plan.frequencies.shape[0]) * _freq_bytes(plan)


def _bands(plan: _Plan, lanes: int, budget: int) -> list[np.ndarray]:
    """Split the planned frequencies into bands whose statistics fit the budget.

    Each lane holds one packed accumulator of its band plus a task's buffers
    (up to an eighth of it, see :func:`_rows_target`). After the pass, the
    per-frequency work runs a block of frequencies at a time, a few blocks
    at once (counted as a tenth of a lane).
    """
    per_freq = _freq_bytes(plan)
    f_total = plan.frequencies.shape[0]
    share = lanes * (1 + _TASK_SHARE) + 0.1
    per_band = max(1, int(budget // (share * per_freq)))
    n_bands = -(-f_total // per_band)
    return [a for a in np.array_split(np.arange(f_total), n_bands) if a.size]


def _rows_target(
    plan: _Plan, idx: np.ndarray, opt: DFT, itemsize: int, *, inputs_held: bool
) -> int:
    """Images per fold task.

    Each fold streams its lane's whole accumulator through one ``zhfrk``
    per frequency (read and write), for about ``4 m D^2`` flops per ``16
    D^2`` bytes: with few images per task it is bound by memory bandwidth and
    by the small products (measured here, 8 images per update ran at 58 ms
    per image, 32 at 40 ms). So a task takes as many images as fit in an
    eighth of the accumulator (their coefficients, and their stored values
    when a task holds all of its input at once: on ``distributed``), at most
    512 MiB, between 8 and 64 images.
    """
    if opt.rows is not None:
        if opt.rows < 1:
            raise ValueError(f"rows must be a positive number of images, got {opt.rows}")
        return int(opt.rows)
    d = plan.x_shape[0] + plan.y_shape[0]
    per_image = idx.size * d * 16  # its coefficients
    if inputs_held:
        per_image += itemsize * sum(int(np.prod(shape)) for shape in (plan.x_shape, plan.y_shape))
    room = min(_TASK_SHARE * idx.size * _freq_bytes(plan), _TASK_MAX_BYTES)
    return int(min(64, max(8, room // per_image)))


def _task_groups(chunks: tuple[int, ...], rows: int) -> list[list[int]]:
    """Consecutive stored chunks merged (never split) into tasks of at least ``rows``."""
    groups: list[list[int]] = [[]]
    count = 0
    for i, size in enumerate(chunks):
        if count >= rows:
            groups.append([])
            count = 0
        groups[-1].append(i)
        count += size
    return [g for g in groups if g]


def _lane_graph(
    xd: da.Array,
    yd: da.Array,
    plan: _Plan,
    idx: np.ndarray,
    *,
    opt: DFT,
    lanes: int,
    names: tuple[str, str],
    with_scale: bool,
    arrays: _Recycler | None = None,
    stored: tuple[list[_StoredChunk] | None, list[_StoredChunk] | None] = (None, None),
) -> list[Any]:
    """The lanes of one pass: each a chain of fold tasks over consecutive row chunks.

    ``stored`` holds, per side, the direct readers of its stored chunks
    (:func:`_stored_chunks`), or None; on threads they replace the Dask
    chunks, ``y``'s only when ``y`` needs no rechunking to ``x``'s chunks.
    """
    if xd.chunks[0] != yd.chunks[0]:
        yd = yd.rechunk({0: xd.chunks[0]})
        stored = (stored[0], None)
    on_threads = _current_client() is None
    itemsize = max(xd.dtype.itemsize, yd.dtype.itemsize)
    rows = _rows_target(plan, idx, opt, itemsize, inputs_held=not on_threads)
    xs = list(xd.to_delayed(optimize_graph=True).reshape(-1))
    ys = list(yd.to_delayed(optimize_graph=True).reshape(-1))
    if on_threads:
        # On threads, chunk reads that are separate tasks all become ready at
        # once and idle threads run them ahead of the (sequential) lanes, which
        # would hold up to the whole data in memory. Each fold task reads its
        # own chunks, in order, instead. (distributed queues root tasks itself.)
        xs = stored[0] or [_ChunkGetter(b, r) for b, r in zip(xs, xd.chunks[0], strict=True)]
        ys = stored[1] or [_ChunkGetter(b, r) for b, r in zip(ys, yd.chunks[0], strict=True)]
    starts = np.concatenate([[0], np.cumsum(xd.chunks[0])])[:-1]
    tasks = _task_groups(xd.chunks[0], rows)
    fold = delayed(_dft_fold, pure=False)
    accs = []
    n_lanes = max(1, min(lanes, len(tasks)))
    threads = _task_threads(n_lanes)
    for lane in np.array_split(np.arange(len(tasks)), n_lanes):
        acc = None
        for t in lane:
            group = tasks[t]
            acc = fold(
                acc, [xs[i] for i in group], [ys[i] for i in group], plan=plan, idx=idx,
                names=names, row_start=int(starts[group[0]]), with_scale=with_scale,
                threads=threads, last=bool(t == lane[-1]), arrays=arrays if on_threads else None,
            )  # fmt: skip
        accs.append(acc)
    return accs


class _ChunkGetter:
    """One row chunk's (culled) graph, computed synchronously inside the task that needs it."""

    def __init__(self, block: Any, rows: int) -> None:
        from dask.optimization import cull

        self.key = block.key
        self.rows = int(rows)
        self.graph, _ = cull(dict(block.__dask_graph__()), [self.key])

    def __call__(self) -> np.ndarray:
        from dask.local import get_sync

        return np.asarray(get_sync(self.graph, self.key))


class _StoredChunk:
    """One stored chunk of a Zarr array in a local folder, its file read and
    Blosc-decoded directly (for the arrays :func:`_stored_chunks` accepts).

    Zarr's own read of a stored chunk (8 images of 256 x 56 x 56 float32)
    took 2.1-2.6 ms per image here, the file read and the decode alone
    1.3-1.5: Zarr adds its event loop, and buffers copied and freshly
    allocated in its threads. Every pass of the DFT path reads every chunk.
    """

    def __init__(
        self, path: str, shape: tuple[int, ...], rows: int, dtype: np.dtype, fill: Any
    ) -> None:
        self.path, self.shape, self.rows = path, shape, int(rows)
        self.dtype, self.fill = dtype, fill

    def __call__(self) -> np.ndarray:
        from numcodecs import blosc

        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:  # never written: Zarr reads the fill value
            return np.full((self.rows, *self.shape[1:]), self.fill, dtype=self.dtype)
        out = np.empty(self.shape, dtype=self.dtype)
        blosc.decompress(raw, out)
        return out[: self.rows]


#: Pieces of a fold task that read their chunk when called.
_READERS = (_ChunkGetter, _StoredChunk)


def _stored_chunks(source: ArrayLike, arr: da.Array) -> list[_StoredChunk] | None:
    """Direct readers of the stored chunks of ``arr`` (opened from the Zarr
    array ``source``), one per Dask chunk, or None where Zarr must read.

    Only where the direct read is exactly Zarr's: format 3 in a
    :class:`zarr.storage.LocalStore`, the codecs ``bytes`` (native byte
    order) then ``blosc`` and nothing else, a regular grid whole along every
    axis but the first, and Dask chunks equal to the stored ones.
    """
    try:
        import zarr
        from zarr.codecs import BloscCodec, BytesCodec
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr is a dependency
        return None
    if not isinstance(source, zarr.Array) or source.metadata.zarr_format != 3:
        return None
    meta = source.metadata
    codecs = tuple(meta.codecs)
    dtype = np.dtype(source.dtype)
    if (
        not isinstance(source.store, LocalStore)
        or getattr(meta, "storage_transformers", ())
        or len(codecs) != 2
        or not isinstance(codecs[0], BytesCodec)
        or not isinstance(codecs[1], BloscCodec)
        or dtype.kind not in "fiu"
        or (dtype.itemsize > 1 and getattr(codecs[0].endian, "value", None) != sys.byteorder)
        or tuple(source.shape) != tuple(arr.shape)
        or np.dtype(arr.dtype) != dtype
    ):
        return None
    chunks = tuple(int(c) for c in source.chunks)
    n = int(source.shape[0])
    grid = tuple(min(chunks[0], n - i) for i in range(0, n, chunks[0]))
    if chunks[1:] != tuple(source.shape[1:]) or tuple(arr.chunks[0]) != grid:
        return None
    root = os.path.join(str(source.store.root), source.path)
    rest = (0,) * (len(chunks) - 1)
    return [
        _StoredChunk(
            os.path.join(root, meta.encode_chunk_key((i, *rest))), chunks, rows, dtype,
            source.fill_value,
        )
        for i, rows in enumerate(grid)
    ]  # fmt: skip


def _scale_of(*accs: dict[str, Any], plan: _Plan) -> tuple[float, float]:
    """``H * W`` times the largest single-activation variance, per side."""
    out = []
    for key, shape in (("x_pos", plan.x_shape), ("y_pos", plan.y_shape)):
        m = moments_combine([a[key] for a in accs])
        top = float(np.max(m["m2"], initial=0.0)) / (m["n"] - 1)
        out.append(top * shape[1] * shape[2])
    return out[0], out[1]


def _block_stats(
    sl: slice,
    scale: tuple[float, float],
    *accs: dict[str, Any],
    plan: _Plan,
    idx: np.ndarray,
) -> DFTStats:
    """Merge the lanes' statistics of a block of frequencies (Chan/Pebay) and finish them."""
    d = plan.x_shape[0] + plan.y_shape[0]
    parts = [
        {"n": a["n"], "mean": a["mean"][sl].copy(), "m2": unpack(a["m2"][sl], d)} for a in accs
    ]
    # new arrays (copied, unpacked or merged): the lanes stay untouched
    out = parts[0] if len(parts) == 1 else moments_combine(parts)
    n = int(out["n"])
    cov = out["m2"]
    cov *= 1.0 / (n - 1)  # a multiply: complex division is several times slower
    return DFTStats(
        n=n,
        frequencies=plan.frequencies[idx[sl]],
        multiplicity=plan.multiplicity[idx[sl]],
        band=plan.band,
        sizes=(plan.x_shape[0], plan.y_shape[0]),
        mean=out["mean"],
        cov=cov,
        x_shape=plan.x_shape,
        y_shape=plan.y_shape,
        x_scale=scale[0],
        y_scale=scale[1],
    )


def _concat_stats(blocks: list[DFTStats]) -> DFTStats:
    if len(blocks) == 1:
        return blocks[0]
    return replace(
        blocks[0],
        frequencies=np.concatenate([b.frequencies for b in blocks]),
        multiplicity=np.concatenate([b.multiplicity for b in blocks]),
        mean=np.concatenate([b.mean for b in blocks]),
        cov=np.concatenate([b.cov for b in blocks]),
    )


def _open_pair(
    x: ArrayLike, y: ArrayLike, layout: Any, names: tuple[str, str]
) -> tuple[da.Array, da.Array, str | None, str | None]:
    lx, ly = layout if isinstance(layout, tuple) else (layout, layout)
    xd, x_layout = open_conv(x, lx, name=names[0])
    yd, y_layout = open_conv(y, ly, name=names[1])
    if xd.shape[0] != yd.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of samples (first axis, "
            f"samples first): got {xd.shape[0]} and {yd.shape[0]}"
        )
    return xd, yd, x_layout, y_layout


def _shape_of(arr: da.Array, layout: str | None) -> tuple[int, int, int]:
    return (int(arr.shape[1]), 1, 1) if layout is None else spatial_shape(arr, layout)


class _DFTRun:
    """The opened pair, its plan and bands, and the passes over the data.

    Each pass (one band of frequencies) is one Dask graph: the lanes fold the
    row chunks; then, per block of frequencies, one task merges the lanes'
    statistics of the block and the next reduces them to per-frequency
    results, so that only those (small) results reach the client and the
    blocks run in parallel on the scheduler (threads, or the workers of a
    ``distributed`` cluster that hold the lanes).
    """

    def __init__(
        self,
        x: ArrayLike,
        y: ArrayLike,
        *,
        conv: Any,
        layout: Any,
        names: tuple[str, str],
        single_band: bool = False,
    ) -> None:
        self.opt = _as_options(conv)
        self.names = names
        x, y = open_source(x, names[0]), open_source(y, names[1])
        self.xd, self.yd, xl, yl = _open_pair(x, y, layout, names)
        self.stored = (_stored_chunks(x, self.xd), _stored_chunks(y, self.yd))
        self.plan = _dft_plan(_shape_of(self.xd, xl), _shape_of(self.yd, yl), xl, yl)
        data_bytes = int(self.xd.nbytes + self.yd.nbytes)
        budget = None if single_band else _memory_limit(self.opt)
        self.lanes = self.opt.lanes or _default_lanes(
            data_bytes, _stats_bytes(self.plan), plan=self.plan, budget=budget
        )
        if self.lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {self.lanes}")
        f_total = self.plan.frequencies.shape[0]
        if budget is None:
            self.bands = [np.arange(f_total)]
        else:
            self.bands = _bands(self.plan, self.lanes, budget)
        self.scale: tuple[float, float] | None = None
        self.arrays = _Recycler()

    def _graph(self, band: np.ndarray) -> tuple[list[Any], Any]:
        """The lazy lane accumulators of one band, and the (lazy or known) scales."""
        accs = _lane_graph(
            self.xd, self.yd, self.plan, band, opt=self.opt, lanes=self.lanes,
            names=self.names, with_scale=self.scale is None, arrays=self.arrays,
            stored=self.stored,
        )  # fmt: skip
        scale: Any = self.scale
        if scale is None:
            scale = delayed(_scale_of, pure=False)(*accs, plan=self.plan)
        return accs, scale

    def _blocks(self, band: np.ndarray) -> list[slice]:
        return _freq_blocks(band.size, self.plan.x_shape[0] + self.plan.y_shape[0])

    def _apply(
        self, accs: list[Any], scale: Any, band: np.ndarray, sl: slice, fn: Any, *args: Any
    ) -> Any:
        """A task: the merged statistics of one block of frequencies, then ``fn`` on them
        (the full matrices of a block live only inside that task)."""
        return delayed(_block_apply, pure=False)(
            fn, sl, scale, accs, args, plan=self.plan, idx=band
        )

    def _run(self, graphs: Any, scale: Any, *, last: bool) -> Any:
        """Compute one band; its arrays are then free for the next band (or dropped)."""
        try:
            out, scale_value = compute(graphs, scale)
        finally:
            if last:
                self.arrays = _Recycler()
            else:
                self.arrays.release()
        if self.scale is None:
            self.scale = tuple(scale_value)  # type: ignore[assignment]
        return out

    def map(self, fn: Any, *args: Any) -> _Parts:
        """``fn(block_stats, *args)`` on every block of every band (one pass per band)."""
        collected = []
        for i, band in enumerate(self.bands):
            accs, scale = self._graph(band)
            tasks = [self._apply(accs, scale, band, sl, fn, *args) for sl in self._blocks(band)]
            collected += self._run(tasks, scale, last=i == len(self.bands) - 1)
        return _Parts.join(collected)

    def map_split(self, fn: Any, per_freq: dict[str, np.ndarray], *args: Any) -> _Parts:
        """Like :meth:`map`, passing each block its slice of per-frequency arrays."""
        collected = []
        start = 0
        for i, band in enumerate(self.bands):
            accs, scale = self._graph(band)
            tasks = []
            for sl in self._blocks(band):
                part = {k: v[start + sl.start : start + sl.stop] for k, v in per_freq.items()}
                tasks.append(self._apply(accs, scale, band, sl, fn, part, *args))
            collected += self._run(tasks, scale, last=i == len(self.bands) - 1)
            start += band.size
        return _Parts.join(collected)

    def stats(self) -> DFTStats:
        """All statistics in one pass (one band), gathered on the client."""
        (band,) = self.bands
        accs, scale = self._graph(band)
        block = delayed(_block_stats, pure=False)
        tasks = [block(sl, scale, *accs, plan=self.plan, idx=band) for sl in self._blocks(band)]
        return _concat_stats(self._run(tasks, scale, last=True))


def _block_apply(
    fn: Any, sl: slice, scale: tuple[float, float], accs: list[dict[str, Any]], args: tuple,
    *, plan: _Plan, idx: np.ndarray,
) -> tuple[DFTStats, dict[str, np.ndarray]]:  # fmt: skip
    st = _block_stats(sl, scale, *accs, plan=plan, idx=idx)
    out = _light(st), fn(st, *args)
    del st
    release_free_memory()
    return out


def dft_stats(
    x: ArrayLike,
    y: ArrayLike,
    *,
    layout: str | tuple[str | None, str | None] | None = None,
    lanes: int | None = None,
    rows: int | None = None,
) -> DFTStats:
    """Per-frequency covariance statistics of two conv layers, in one pass.

    Every row chunk is transformed (``scipy.fft``: an rfft along the width,
    the needed columns only along the height, in float64), its coefficients
    at the planned frequencies are centred, and they are merged into a lane
    accumulator with one ZHERK per frequency (see :func:`_dft_fold`); the
    lanes merge with :func:`svcca_dask._stats.moments_combine`.

    Parameters
    ----------
    x, y : array-like, shape (n, C, H, W) or (n, H, W, C), or (n, d)
        Conv layers (a 2-D layer is a 1 x 1 map: against it only the DC
        frequency, the spatial sum, is common). NumPy, Dask, Zarr, xarray or a
        ``"store.zarr/layer"`` path.
    layout : str or (str, str), optional
        ``"NCHW"`` or ``"NHWC"`` for both or each layer; needed unless the
        arrays name their dimensions (Zarr ``dimension_names``).
    lanes, rows : int, optional
        See :class:`DFT`.

    Returns
    -------
    DFTStats

    Notes
    -----
    Memory: ``lanes`` accumulators of ``F * D (D + 1) / 2 * 16`` bytes (``D =
    Cx + Cy``; Hermitian matrices in packed storage), plus one task's
    coefficients per lane, plus the gathered result on the client (``F * D**2
    * 16`` bytes); nothing scales with ``n``. For two 256-channel 56 x 56
    layers (F = 1570) that is 3.3 GB per lane: the measures split such layers into
    frequency bands under :attr:`DFT.memory_limit` and reduce each band to
    per-frequency results on the workers; this function does neither.
    """
    run = _DFTRun(
        x, y, conv=DFT(lanes=lanes, rows=rows), layout=layout, names=("x", "y"), single_band=True
    )
    return run.stats()


# --------------------------------------------------------------------------- #
# the DFT path: batched per-frequency measures

#: Bytes of one (frequencies, D, D) complex128 work array in the batched CCA.
_CCA_BLOCK_BYTES = 32 * 2**20


def _freq_blocks(f_count: int, d: int) -> list[slice]:
    size = max(1, _CCA_BLOCK_BYTES // max(1, d * d * 16))
    return [slice(i, min(i + size, f_count)) for i in range(0, f_count, size)]


def _live(s: np.ndarray, scale: float, epsilon: float) -> np.ndarray:
    """``(F, C)``: channels whose variance at a frequency is at least
    ``epsilon * scale`` (see :attr:`DFTStats.x_scale`)."""
    diag = np.real(np.diagonal(s, axis1=-2, axis2=-1))
    if not scale > 0:
        return np.zeros(diag.shape, dtype=bool)
    return diag >= epsilon * scale


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
    solves run in place without the GIL (:func:`svcca_dask._nogil.trsm_lower`;
    NumPy's Cholesky and SVD release it too), so blocks run in parallel on
    threads. Per 256-channel frequency this costs ~21 ms against ~100 ms for
    two ``eigh`` and a full SVD: the finalization of the DFT path is ``F``
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


def _batched_cca(
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


def _projection_weights(s: np.ndarray, live: np.ndarray, w: np.ndarray) -> np.ndarray:
    """PWCCA's ``alpha_i = sum_c |<h_i, x_c>|`` up to a common factor, per frequency:
    ``|(S a_i)_c|`` summed over the live channels ``c``."""
    return np.abs(_cross(s, live, live) @ w).sum(axis=1)


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
    """

    score: float
    coefficients: np.ndarray
    per_frequency: np.ndarray
    n_coefficients: np.ndarray
    frequencies: np.ndarray
    multiplicity: np.ndarray
    band: tuple[int, int]
    n_samples: int

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


def _pool(
    values: np.ndarray, counts: np.ndarray, mult: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten per-frequency values (F, k) with multiplicity; return values and the
    order that sorts the first argument's pooled values descending."""
    valid = np.arange(values.shape[1]) < counts[:, None]
    rows = np.repeat(np.arange(values.shape[0]), mult)
    pooled = values[rows][valid[rows]]
    return pooled, np.argsort(-pooled, kind="stable")


def _fields(parts: _Parts, names: tuple[str, str]) -> dict[str, Any]:
    """Pool per-frequency correlations into the result's fields.

    The pooled list is what the CCA of the two flattened (band-limited) layers
    gives when different frequencies are uncorrelated (exactly so for
    translation-invariant data): every frequency's correlations, counted with
    multiplicity, and zeros up to ``min(Kx, Ky)``, where ``Kx`` is the number
    of real directions of x that enter (live channels, or kept SVD directions,
    summed over frequencies with multiplicity): a direction of x at a
    frequency where y has fewer directions correlates with nothing.
    """
    a = parts.arrays
    rho, counts, mult = a["rho"], a["counts"], parts.multiplicity
    stats_like = parts
    if counts.sum() == 0:
        raise ValueError(
            f"{names[0]} and {names[1]} have no frequency where both have a live channel: "
            "every channel has zero variance over the images at every common frequency "
            "(a dead layer, or constant input)"
        )
    pooled, order = _pool(rho, counts, mult)
    n_dirs = min(int(np.sum(mult * a["nx"])), int(np.sum(mult * a["ny"])))
    coef = np.concatenate([pooled[order], np.zeros(max(0, n_dirs - pooled.size))])
    return {
        "score": float(np.mean(coef)),
        "coefficients": coef,
        "per_frequency": rho,
        "n_coefficients": counts,
        "frequencies": stats_like.frequencies,
        "multiplicity": stats_like.multiplicity,
        "band": stats_like.band,
        "n_samples": stats_like.n,
    }


@dataclass
class _Parts:
    """Per-frequency results of bands, concatenated."""

    n: int
    band: tuple[int, int]
    frequencies: np.ndarray
    multiplicity: np.ndarray
    arrays: dict[str, np.ndarray]

    @classmethod
    def join(cls, parts: list[tuple[DFTStats, dict[str, np.ndarray]]]) -> _Parts:
        st0 = parts[0][0]
        keys = parts[0][1].keys()
        return cls(
            n=st0.n,
            band=st0.band,
            frequencies=np.concatenate([s.frequencies for s, _ in parts]),
            multiplicity=np.concatenate([s.multiplicity for s, _ in parts]),
            arrays={k: np.concatenate([a[k] for _, a in parts]) for k in keys},
        )


def _cca_part(st: DFTStats, *, epsilon: float, side: str | None = None) -> dict[str, np.ndarray]:
    """Per-frequency CCA (and PWCCA weights of ``side``) of one band."""
    f_count = st.frequencies.shape[0]
    cx, cy = st.sizes
    k = min(cx, cy)
    rho = np.zeros((f_count, k))
    counts = np.zeros(f_count, dtype=int)
    nx, ny = np.zeros(f_count, dtype=int), np.zeros(f_count, dtype=int)
    alpha = np.zeros((f_count, k))
    for sl in _freq_blocks(f_count, cx + cy):
        sxx, sxy, syy = st.sxx[sl], st.sxy[sl], st.syy[sl]
        lx, ly = _live(sxx, st.x_scale, epsilon), _live(syy, st.y_scale, epsilon)
        r, c, a, b = _batched_cca(sxx, sxy, syy, lx, ly, epsilon, weights=side is not None)
        rho[sl], counts[sl] = r, c
        nx[sl], ny[sl] = lx.sum(axis=1), ly.sum(axis=1)
        if side is not None:
            s, live, w = (sxx, lx, a) if side == "x" else (syy, ly, b)
            al = _projection_weights(s, live, w)
            alpha[sl] = np.where(np.arange(k) < c[:, None], al, 0.0)
    return {"rho": rho, "counts": counts, "nx": nx, "ny": ny, "alpha": alpha}


def _eig_part(st: DFTStats) -> dict[str, np.ndarray]:
    """Per-frequency covariance eigenvalues (descending) of each side."""
    wx = np.linalg.eigvalsh(st.sxx)[:, ::-1].clip(0.0)
    wy = np.linalg.eigvalsh(st.syy)[:, ::-1].clip(0.0)
    return {"wx": wx, "wy": wy}


def _svcca_part(
    st: DFTStats, kx: np.ndarray, ky: np.ndarray, *, epsilon: float
) -> dict[str, np.ndarray]:
    """Per-frequency CCA of the top ``kx[f]``, ``ky[f]`` eigen-directions."""
    f_count = st.frequencies.shape[0]
    cx, cy = st.sizes
    k = min(cx, cy)
    rho = np.zeros((f_count, k))
    counts = np.zeros(f_count, dtype=int)
    for sl in _freq_blocks(f_count, cx + cy):
        kx_b, ky_b = kx[sl], ky[sl]
        big_x, big_y = int(kx_b.max(initial=0)), int(ky_b.max(initial=0))
        if big_x == 0 or big_y == 0:
            continue
        wx, vx = top_eigh(st.sxx[sl])
        wy, vy = top_eigh(st.syy[sl])
        vx, vy = vx[..., :big_x], vy[..., :big_y]
        sxy = np.swapaxes(vx.conj(), -1, -2) @ st.sxy[sl] @ vy
        lx = np.arange(big_x) < kx_b[:, None]
        ly = np.arange(big_y) < ky_b[:, None]
        sxx = wx[:, :big_x, None] * np.eye(big_x)
        syy = wy[:, :big_y, None] * np.eye(big_y)
        r, c, _, _ = _batched_cca(sxx, sxy, syy, lx, ly, epsilon)
        rho[sl, : r.shape[1]], counts[sl] = r, c
    return {"rho": rho, "counts": counts, "nx": kx, "ny": ky}


def _keep_counts(
    w: np.ndarray,
    mult: np.ndarray,
    keep: float | int,
    scale: float,
    epsilon: float,
    name: str,
) -> tuple[np.ndarray, float]:
    """Directions kept per frequency, chosen over the whole band at once.

    The eigenvalues of all frequencies are pooled, each counted with its
    frequency's multiplicity (a conjugate pair is two real directions of the
    flattened layer with the same variance), and the largest are kept: a
    float ``keep`` until that fraction of the total variance is explained, an
    int until that many directions are. Conjugate pairs are kept whole.
    Eigenvalues below ``epsilon * scale`` (dead directions) are never kept.
    Returns the counts ``(F,)`` and the fraction explained.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise TypeError(f"keep must be a float in (0, 1] or a positive int, got {keep!r}")
    total = float(np.sum(mult[:, None] * w))
    if not total > 0:
        raise ValueError(f"{name} has zero total variance over the common band")
    valid = w >= epsilon * scale
    f_idx, j_idx = np.nonzero(valid)
    vals = w[f_idx, j_idx]
    order = np.argsort(-vals, kind="stable")
    weight = mult[f_idx[order]]
    if isinstance(keep, (int, np.integer)):
        if keep < 1:
            raise ValueError(f"keep as an int is a number of directions, at least 1; got {keep}")
        n_take = int(np.searchsorted(np.cumsum(weight), keep, side="left")) + 1
    else:
        if not 0.0 < keep <= 1.0:
            raise ValueError(
                f"keep as a float is a fraction of variance in (0, 1], got {keep}; "
                "pass an int for a number of directions"
            )
        cum = np.cumsum(weight * vals[order]) / total
        n_take = int(np.searchsorted(cum, keep * (1.0 - 1e-12), side="left")) + 1
    n_take = max(1, min(n_take, order.size))
    taken = f_idx[order[:n_take]]
    counts = np.bincount(taken, minlength=w.shape[0])
    explained = float(np.sum(weight[:n_take] * vals[order[:n_take]]) / total)
    return counts, explained


# --------------------------------------------------------------------------- #
# the DFT path: measures from statistics, and from data band by band


def _light(st: DFTStats) -> DFTStats:
    """The band's description without its (large) statistics."""
    return replace(st, mean=np.empty((0, 0)), cov=np.empty((0, 0, 0)))


def _pwcca_fields(parts: _Parts, side: str, names: tuple[str, str]) -> dict[str, Any]:
    """PWCCA pooled over frequencies: ``score = sum alpha rho / sum alpha`` over
    every frequency's coefficients with multiplicity (the zero padding of
    :func:`_fields` has zero weight)."""
    a = parts.arrays
    f = _fields(parts, names)
    pooled_rho, order = _pool(a["rho"], a["counts"], parts.multiplicity)
    pooled_alpha, _ = _pool(a["alpha"], a["counts"], parts.multiplicity)
    total = pooled_alpha.sum()
    if total > 0:
        weights = pooled_alpha / total
    else:  # every projection is zero: fall back to the plain mean
        weights = np.full(pooled_alpha.size, 1.0 / pooled_alpha.size)
    f["score"] = float(np.sum(weights * pooled_rho))
    pad = f["coefficients"].size - pooled_rho.size
    f.update(
        weights=np.concatenate([weights[order], np.zeros(pad)]),
        per_frequency_weights=a["alpha"] / total if total > 0 else a["alpha"],
        side=side,
    )
    return f


def _pick_side(side: str, sizes: tuple[int, int]) -> str:
    if side not in ("x", "y", "smaller"):
        raise ValueError(f"side must be 'x', 'y' or 'smaller', got {side!r}")
    if side == "smaller":
        return "x" if sizes[0] <= sizes[1] else "y"
    return side


def _keep_pair(keep: Any) -> tuple[Any, Any]:
    return keep if isinstance(keep, tuple) else (keep, keep)


def cca_from_dft_stats(
    stats: DFTStats, *, epsilon: float = 1e-10, names: tuple[str, str] = ("x", "y")
) -> DFTCCAResult:
    """CCA per frequency, pooled (see :func:`svcca_dask.cca` with ``conv="dft"``)."""
    parts = _Parts.join([(_light(stats), _cca_part(stats, epsilon=epsilon))])
    return DFTCCAResult(**_fields(parts, names))


def svcca_from_dft_stats(
    stats: DFTStats,
    *,
    keep: float | int | tuple[float | int, float | int] = 0.99,
    epsilon: float = 1e-10,
    names: tuple[str, str] = ("x", "y"),
) -> DFTSVCCAResult:
    """SVCCA per frequency with a global ``keep`` (see :func:`svcca_dask.svcca`)."""
    eig = _Parts.join([(_light(stats), _eig_part(stats))])
    kx, ky, ex, ey = _global_keep(eig, keep, stats.x_scale, stats.y_scale, epsilon, names)
    parts = _Parts.join([(_light(stats), _svcca_part(stats, kx, ky, epsilon=epsilon))])
    return DFTSVCCAResult(
        **_fields(parts, names),
        x_kept=kx, y_kept=ky, x_explained=ex, y_explained=ey,
    )  # fmt: skip


def pwcca_from_dft_stats(
    stats: DFTStats,
    *,
    epsilon: float = 1e-10,
    side: str = "x",
    names: tuple[str, str] = ("x", "y"),
) -> DFTPWCCAResult:
    """PWCCA per frequency, weights pooled (see :func:`svcca_dask.pwcca`)."""
    side = _pick_side(side, stats.sizes)
    parts = _Parts.join([(_light(stats), _cca_part(stats, epsilon=epsilon, side=side))])
    return DFTPWCCAResult(**_pwcca_fields(parts, side, names))


def _cka_part(st: DFTStats) -> dict[str, np.ndarray]:
    def sq(s: np.ndarray) -> np.ndarray:
        return np.sum(np.abs(s) ** 2, axis=(1, 2))

    return {"xy": sq(st.sxy), "xx": sq(st.sxx), "yy": sq(st.syy)}


def _cka_result(parts: _Parts, names: tuple[str, str]) -> Any:
    from ._measures import CKAResult

    m = parts.multiplicity
    a = parts.arrays
    nx, ny = np.sqrt(np.sum(m * a["xx"])), np.sqrt(np.sum(m * a["yy"]))
    for norm, name in ((nx, names[0]), (ny, names[1])):
        if norm == 0:
            raise ValueError(
                f"{name} has no live feature: every channel has zero variance at every "
                "common frequency, and linear CKA is undefined for a constant layer"
            )
    score = float(np.sum(m * a["xy"]) / (nx * ny))
    return CKAResult(score=min(max(score, 0.0), 1.0), n_samples=parts.n)


def cka_from_dft_stats(stats: DFTStats, *, names: tuple[str, str] = ("x", "y")) -> Any:
    """Linear CKA from per-frequency statistics (see :func:`svcca_dask.linear_cka`)."""
    return _cka_result(_Parts.join([(_light(stats), _cka_part(stats))]), names)


def _global_keep(
    eig: _Parts,
    keep: Any,
    x_scale: float,
    y_scale: float,
    epsilon: float,
    names: tuple[str, str],
) -> tuple[np.ndarray, np.ndarray, float, float]:
    keep_x, keep_y = _keep_pair(keep)
    kx, ex = _keep_counts(eig.arrays["wx"], eig.multiplicity, keep_x, x_scale, epsilon, names[0])
    ky, ey = _keep_counts(eig.arrays["wy"], eig.multiplicity, keep_y, y_scale, epsilon, names[1])
    return kx, ky, ex, ey


def _decide_keep(
    eig: _Parts, keep: Any, scale: tuple[float, float], epsilon: float, names: tuple[str, str]
) -> dict[str, Any]:
    kx, ky, ex, ey = _global_keep(eig, keep, scale[0], scale[1], epsilon, names)
    return {"kx": kx, "ky": ky, "x_explained": ex, "y_explained": ey}


def _svcca_block(
    st: DFTStats, part: dict[str, np.ndarray], epsilon: float
) -> dict[str, np.ndarray]:
    return _svcca_part(st, part["kx"], part["ky"], epsilon=epsilon)


def dft_measure(
    measure: str,
    x: ArrayLike,
    y: ArrayLike,
    *,
    conv: Any = "dft",
    layout: Any = None,
    epsilon: float = 1e-10,
    keep: Any = 0.99,
    side: str = "x",
    names: tuple[str, str] = ("x", "y"),
) -> Any:
    """One measure with ``conv="dft"``, band by band under the memory limit.

    Each band of frequencies takes one pass over the data; its statistics are
    reduced to per-frequency results by tasks on the scheduler and dropped
    before the next band. SVCCA chooses its kept directions from the
    eigenvalues of every frequency: with one band the choice is a task in the
    same graph (one pass); with several, one pass per band gathers the
    eigenvalues and one more per band computes the CCA.
    """
    run = _DFTRun(x, y, conv=conv, layout=layout, names=names)
    if measure == "svcca":
        for k in _keep_pair(keep):
            check_keep(k)
        if len(run.bands) == 1:
            return _svcca_one_pass(run, keep=keep, epsilon=epsilon, names=names)
        eig = run.map(_eig_part)
        assert run.scale is not None
        dec = _decide_keep(eig, keep, run.scale, epsilon, names)
        parts = run.map_split(_svcca_block, {"kx": dec["kx"], "ky": dec["ky"]}, epsilon)
        return DFTSVCCAResult(
            **_fields(parts, names), x_kept=dec["kx"], y_kept=dec["ky"],
            x_explained=dec["x_explained"], y_explained=dec["y_explained"],
        )  # fmt: skip
    if measure == "pwcca":
        side = _pick_side(side, (run.plan.x_shape[0], run.plan.y_shape[0]))
        parts = run.map(_cca_part_fn, epsilon, side)
        return DFTPWCCAResult(**_pwcca_fields(parts, side, names))
    if measure == "cka":
        return _cka_result(run.map(_cka_part_fn), names)
    parts = run.map(_cca_part_fn, epsilon, None)
    return DFTCCAResult(**_fields(parts, names))


def _cca_part_fn(st: DFTStats, epsilon: float, side: str | None) -> dict[str, np.ndarray]:
    return _cca_part(st, epsilon=epsilon, side=side)


def _cka_part_fn(st: DFTStats) -> dict[str, np.ndarray]:
    return _cka_part(st)


def _svcca_one_pass(
    run: _DFTRun, *, keep: Any, epsilon: float, names: tuple[str, str]
) -> DFTSVCCAResult:
    """SVCCA in one graph: eigenvalues per block, the global choice, the CCA per block."""
    (band,) = run.bands
    accs, scale = run._graph(band)
    blocks = run._blocks(band)
    eig = [run._apply(accs, scale, band, sl, _eig_part) for sl in blocks]
    joined = delayed(_Parts.join, pure=False)(eig)
    dec = delayed(_decide_keep, pure=False)(joined, keep, scale, epsilon, names)
    sv = [
        run._apply(accs, scale, band, sl, _svcca_block, delayed(_slice_keep)(dec, sl), epsilon)
        for sl in blocks
    ]
    parts_list, dec_value = run._run([sv, dec], scale, last=True)
    parts = _Parts.join(parts_list)
    return DFTSVCCAResult(
        **_fields(parts, names), x_kept=dec_value["kx"], y_kept=dec_value["ky"],
        x_explained=dec_value["x_explained"], y_explained=dec_value["y_explained"],
    )  # fmt: skip


def _slice_keep(dec: dict[str, Any], sl: slice) -> dict[str, np.ndarray]:
    return {"kx": dec["kx"][sl], "ky": dec["ky"][sl]}
