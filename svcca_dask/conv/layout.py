"""Conv-layer layouts: which axis is samples, channels, height and width.

A conv layer's activations are 4-D, ``(n, C, H, W)`` ("NCHW", PyTorch) or
``(n, H, W, C)`` ("NHWC", TensorFlow/JAX). The layout comes from a Zarr
array's ``dimension_names`` (``sample``, ``channel``, ``height``, ``width``, in
any order with the sample axis first), an xarray object's dims, or
``layout=``; when none says, it is an error.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from ..inputs import ArrayLike, Layer, as_dask, open_layer
from ..store.format import role_dims

__all__ = ["LAYOUTS", "open_conv", "resolve_layout", "spatial_shape"]

#: The ``layout=`` values accepted as arguments.
LAYOUTS = ("NCHW", "NHWC")


_ROLE_NAMES = {
    "N": ("sample", "samples", "image", "images", "batch"),
    "C": ("channel", "channels"),
    "H": ("height",),
    "W": ("width",),
}


def stored_dimension_names(x: Any) -> tuple[str, ...] | None:
    """The dimension names a Zarr array (v3 ``dimension_names``, or the v2
    ``_ARRAY_DIMENSIONS`` attribute xarray writes) or an xarray object carries."""
    if isinstance(x, Layer):
        return role_dims(x.dims) if x.dims is not None else None
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
    return role_dims(tuple(str(n) for n in names))


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
    names = stored_dimension_names(x)
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


def perm_to_nhwc(layout: str) -> tuple[int, int, int, int]:
    """Axis permutation that turns an array in ``layout`` into NHWC."""
    return (layout.index("N"), layout.index("H"), layout.index("W"), layout.index("C"))


def open_conv(
    x: ArrayLike, layout: str | None = None, *, name: str = "x"
) -> tuple[da.Array, str | None]:
    """Open one input as a Dask array chunked along samples, and its layout.

    2-D inputs come back with layout None; 4-D inputs with their resolved
    layout (see :func:`resolve_layout`). Other dimensionalities are an error.
    """
    layer = open_layer(x, name=name)
    arr = as_dask(layer, name=name, ndim=(2, 4))
    if arr.ndim == 2:
        return arr, None
    return arr, resolve_layout(layer, layout, name=name)


def spatial_shape(arr: da.Array, layout: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of a 4-D array in ``layout``."""
    return (
        int(arr.shape[layout.index("C")]),
        int(arr.shape[layout.index("H")]),
        int(arr.shape[layout.index("W")]),
    )


def layer_shape(arr: da.Array, layout: str | None) -> tuple[int, int, int]:
    return (int(arr.shape[1]), 1, 1) if layout is None else spatial_shape(arr, layout)


def open_conv_pair(
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
