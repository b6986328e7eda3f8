"""Input checks and conversion: NumPy, Dask, Zarr or a store path to a Dask array."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import dask.array as da
import numpy as np

from ._config import rows_per_chunk
from .io.checked import CheckedZarr
from .store.format import (
    _STORAGE_OPTIONS,
    check_complete,
    missing_chunks_mode,
    storage_kwargs,
)

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["ArrayLike", "as_dask", "check_pair", "is_zarr_array", "open_source", "open_zarr_array"]

ArrayLike = Any  # numpy.ndarray | dask.array.Array | zarr.Array | str | os.PathLike


def open_zarr_array(
    path: str | os.PathLike[str],
    *,
    name: str = "array",
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Open ``"path/to/store.zarr/array"`` (or an fsspec URL such as
    ``"s3://bucket/store.zarr/array"``) read-only as a :class:`zarr.Array`.

    Raises
    ------
    FileNotFoundError
        If nothing is at the path, or what is there is not a Zarr array.
    """
    import zarr

    path = os.fspath(path)
    try:
        node = zarr.open(store=path, mode="r", **storage_kwargs(path, storage_options))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{name}: no Zarr array at {path!r}; give 'path/to/store.zarr/layer' "
            "with an existing store and layer name"
        ) from err
    if not isinstance(node, zarr.Array):
        members = sorted(k for k, _ in node.arrays()) if isinstance(node, zarr.Group) else []
        raise FileNotFoundError(
            f"{name}: {path!r} is a Zarr group, not an array; name one of its arrays "
            f"as {path.rstrip('/')}/<array>" + (f" (arrays: {', '.join(members)})" if members else "")
        )
    return node


def open_source(x: ArrayLike, name: str) -> ArrayLike:
    """A path opened as its :class:`zarr.Array` (see :func:`open_zarr_array`);
    anything else as it is."""
    return open_zarr_array(x, name=name) if isinstance(x, (str, os.PathLike)) else x


def as_dask(x: ArrayLike, *, name: str, ndim: int | tuple[int, ...] = 2) -> da.Array:
    """Convert one input to a Dask array, samples first, whole along features.

    Parameters
    ----------
    x : array-like, str or path
        The activations, shape ``(n_samples, n_features)``: a NumPy, Dask or
        Zarr array, an ``xarray.DataArray`` (its data), a PyTorch tensor on
        the CPU (its memory, not copied), or anything NumPy can take (JAX
        arrays, lists, objects with ``__array__``). A string or path names a
        Zarr array (``"store.zarr/layer"``).
    name : str
        The argument's name, used in error messages.
    ndim : int or tuple of int
        Accepted numbers of dimensions.

    Returns
    -------
    dask.array.Array
        Chunked along samples only.

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        With a message that names ``name``; a tensor on a GPU is a TypeError
        (move it with ``.cpu()``: the pass reads from host memory).
    """
    if isinstance(x, (str, os.PathLike)):
        x = open_zarr_array(x, name=name)
    x = _host_array(x, name=name)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if isinstance(x, da.Array):
        arr = x
    elif is_zarr_array(x):
        check_complete(x, name=name)
        arr = da.from_array(CheckedZarr(x, name), chunks=x.chunks, asarray=False, fancy=False)
    else:
        _check_shape_dtype(x.shape, x.dtype, name=name, allowed=allowed)
        n_feat = int(np.prod(x.shape[1:])) if len(x.shape) > 1 else 1
        arr = da.from_array(x, chunks=(rows_per_chunk(n_feat), *x.shape[1:]))
    _check_shape_dtype(arr.shape, arr.dtype, name=name, allowed=allowed)
    if any(len(c) != 1 for c in arr.chunks[1:]):
        arr = arr.rechunk({i: -1 for i in range(1, arr.ndim)})
    return arr


def _host_array(x: Any, *, name: str) -> Any:
    """``x`` as something Dask can wrap: Dask and Zarr arrays as they are, an
    xarray object's data, a CPU tensor's memory, anything else through NumPy
    unless it already has a NumPy dtype (then it is sliced lazily)."""
    if isinstance(x, (np.ndarray, da.Array)) or is_zarr_array(x):
        return x
    if hasattr(x, "dims") and hasattr(x, "data") and hasattr(x, "coords"):  # xarray
        return _host_array(x.data, name=name)
    device = getattr(x, "device", None)
    if hasattr(x, "detach") and device is not None:  # a PyTorch tensor
        if getattr(device, "type", str(device)) != "cpu":
            raise TypeError(
                f"{name} is a tensor on {device}: move it to the CPU first ({name}.cpu()); "
                "the one-pass statistics are computed from host memory"
            )
        return x.detach().numpy()
    try:
        if hasattr(x, "shape") and np.dtype(x.dtype) is not None:
            return x  # an array with a NumPy dtype (h5py, JAX, ...): sliced per chunk
    except TypeError:
        pass
    return np.asarray(x)


def is_zarr_array(x: Any) -> bool:
    try:
        import zarr
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, zarr.Array)


def _check_shape_dtype(shape: tuple[int, ...], dtype: Any, *, name: str, allowed: tuple[int, ...]) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers, got dtype {dtype}; convert it, e.g. x.astype('float32')"
        )
    if len(shape) not in allowed:
        if len(shape) == 1:
            hint = "reshape it to (n_samples, 1) for a single neuron"
        elif len(shape) == 4:
            hint = "conv activations need a conv= reduction"
        else:
            hint = "activations are (n_samples, n_features)"
            if 4 in allowed:
                hint += ", or conv layers (n, C, H, W) / (n, H, W, C)"
        what = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name} must be {what}, got shape {tuple(shape)}: {hint}")
    if shape[0] < 2:
        raise ValueError(f"{name} has {shape[0]} sample(s); at least 2 are needed")


def check_pair(x: da.Array, y: da.Array, *, names: tuple[str, str] = ("x", "y")) -> None:
    """Both inputs must have the same number of samples (first axis)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of samples (first axis, "
            f"samples first): got {x.shape[0]} and {y.shape[0]}. "
            "The original google/svcca code takes (neurons, datapoints): transpose such arrays."
        )


def reads_inputs(fn: _F) -> _F:
    """Give a measure the keyword-only option ``missing_chunks="error" | "fill"``:
    what a chunk a plain Zarr input never stored means, for every input the call
    opens (:func:`svcca_dask.store.format.missing_chunks_mode`). ``"error"`` (what
    None means, unless an enclosing call set it) refuses such an input before any
    computation, naming the rows;
    ``"fill"`` reads Zarr's fill value there, as Zarr does (arrays written with
    ``write_empty_chunks=False`` skip chunks equal to it). Also
    ``storage_options=``: fsspec options (``endpoint_url``, credentials...) for
    the inputs given as URLs (``"s3://bucket/store.zarr/layer"``); without them
    the standard variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...) apply."""
    sig = inspect.signature(fn)
    options = [
        inspect.Parameter(
            "missing_chunks", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation="str | None",
        ),
        inspect.Parameter(
            "storage_options", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation="Mapping[str, Any] | None",
        ),
    ]  # fmt: skip

    @functools.wraps(fn)
    def measure(
        *args: Any,
        missing_chunks: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        with contextlib.ExitStack() as stack:  # None: "error", or what an enclosing call set
            if missing_chunks is not None:
                stack.enter_context(missing_chunks_mode(missing_chunks))
            if storage_options is not None:
                token = _STORAGE_OPTIONS.set(dict(storage_options))
                stack.callback(_STORAGE_OPTIONS.reset, token)
            return fn(*args, **kwargs)

    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    measure.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*params[:at], *options, *params[at:]]
    )
    return measure  # type: ignore[return-value]
