"""Conv layers: layouts, spatial reductions, and the per-channel DFT path.

A conv layer's activations are 4-D, ``(n, C, H, W)`` ("NCHW", PyTorch) or
``(n, H, W, C)`` ("NHWC", TensorFlow/JAX). The measures reduce them in one of
four ways (the ``conv=`` option):

``"samples"``
    Every spatial position is a sample: ``(n * H * W, C)``. Both layers must
    share ``H, W``. A 2-D layer on the other side (class logits) is repeated
    for every position of its image.
``"mean"``
    Average over space: ``(n, C)``.
``"flatten"``
    Every (channel, position) is a feature: ``(n, C * H * W)``, in the stored
    order. Only for small layers (or with ``svd="randomized"``).
``"dft"`` (the default)
    The SVCCA paper's method (Raghu et al. 2017, Sec. 3.2): a 2-D DFT over
    space per channel, one complex ``C x C`` covariance per frequency, a CCA
    per frequency, and the coefficients of all frequencies pooled. See
    :func:`dft_stats`.

The first three are feature maps (:func:`conv_features`): a lazy 2-D Dask array
that every 2-D measure accepts. ``"dft"`` is not a feature map: it has its own
statistics (:class:`DFTStats`) and results (:class:`DFTCCAResult`, ...).
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np

from ._input import ArrayLike, as_dask, open_zarr_array

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
