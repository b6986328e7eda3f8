"""Feature maps: conv layers as lazy 2-D ``(samples, features)`` Dask arrays.

``"samples"`` (every position a sample), ``"mean"`` (spatial average) and
``"flatten"`` (every channel and position a feature), built blockwise from the
input's row chunks, so every 2-D measure takes them. ``"dft"`` is not a
feature map (see :mod:`svcca_dask.conv`).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from ..inputs import ArrayLike
from .layout import open_conv, perm_to_nhwc, spatial_shape

__all__ = ["CONV_MODES", "FEATURE_MAP_MODES", "conv_features", "features_4d", "repeat_rows"]

#: The ``conv=`` values every measure accepts.
CONV_MODES = ("dft", "samples", "mean", "flatten")


#: The ``conv=`` values that are feature maps (:func:`conv_features`).
FEATURE_MAP_MODES = ("samples", "mean", "flatten")


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


def features_4d(arr: da.Array, layout: str, conv: str) -> da.Array:
    """The lazy 2-D feature map of an opened 4-D array (see :func:`conv_features`)."""
    c, h, w = spatial_shape(arr, layout)
    rows = arr.chunks[0]
    if conv == "samples":
        return arr.map_blocks(
            _samples_block,
            perm=perm_to_nhwc(layout),
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
