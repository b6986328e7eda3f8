"""Class sensitivity: each layer against each class, in one pass.

The paper's class-sensitivity analysis compares a layer with the logit of
each class. Here the target of each class is one column: the indicator
``labels == c`` (one-hot) or one column of a ``(n, n_classes)`` array (logits
or any per-class score). Every layer x class pair is a width-1 column of a
layer x column product, so :func:`svcca_dask.similarity_matrices` computes
all of them from the statistics of one pass over the layers.

A conv layer meets a target that has no spatial extent: the target's DFT is
its DC term alone, so the per-frequency (DFT) comparison reduces exactly to
the DC term, the channels' spatial means (``conv="mean"``; a test checks
this against ``conv="dft"`` on a pair).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np

from .inputs import ArrayLike, align_rows, as_dask, open_layer
from .matrix import similarity_matrices
from .results import SimilarityMatrix

__all__ = ["class_sensitivity", "target_columns"]


def target_columns(
    target: ArrayLike, *, classes: Sequence[Hashable] | None = None, name: str = "target"
) -> dict[Hashable, da.Array]:
    """One ``(n, 1)`` float64 column per class of ``target``.

    Parameters
    ----------
    target : array-like, str or path
        ``(n,)`` class labels (one indicator column per class) or
        ``(n, n_classes)`` per-class scores such as logits (its columns).
    classes : sequence, optional
        Labels: the classes to keep, in order (default: the sorted distinct
        labels, which reads the labels once). Scores: a name per column
        (default ``0 .. n_classes - 1``).
    name : str
        The argument's name, for messages.

    Returns
    -------
    dict of class -> dask.array.Array
    """
    arr = as_dask(target, name=name, ndim=(1, 2))
    if arr.ndim == 1:
        if np.issubdtype(arr.dtype, np.floating):
            raise TypeError(
                f"{name}: 1-D labels must be integers or strings, got {arr.dtype}; per-class "
                "scores are a 2-D (n_samples, n_classes) array"
            )
        values = list(np.unique(arr.compute())) if classes is None else list(classes)
        if not values:
            raise ValueError(f"{name}: no classes (the labels are empty)")
        return {_plain(c): (arr == c).astype(np.float64)[:, None] for c in values}
    names = list(range(arr.shape[1])) if classes is None else list(classes)
    if len(names) != arr.shape[1]:
        raise ValueError(
            f"{name}: {arr.shape[1]} columns but {len(names)} class names; give one per column"
        )
    return {c: arr[:, j : j + 1].astype(np.float64) for j, c in enumerate(names)}


def _plain(value: Any) -> Hashable:
    """A NumPy scalar label as the Python value it prints as."""
    return value.item() if isinstance(value, np.generic) else value


def class_sensitivity(
    xs: Mapping[Hashable, ArrayLike] | ArrayLike,
    target: ArrayLike,
    *,
    measures: Sequence[str] | str = ("svcca",),
    classes: Sequence[Hashable] | None = None,
    conv: str | None = "dft",
    layout: str | None = None,
    on_pair: Callable[[Hashable, Hashable], None] | None = None,
    rows: str = "check",
    storage_options: Mapping[str, Any] | None = None,
    missing_chunks: str = "error",
    **options: Any,
) -> dict[str, SimilarityMatrix]:
    """How strongly each layer represents each class: a layer x class matrix per measure.

    Parameters
    ----------
    xs : mapping of name -> layer, or one layer
        The layers (arrays, Zarr arrays or ``"store.zarr/layer"`` paths);
        one layer is the row ``"x"``.
    target : array-like, str or path
        ``(n,)`` class labels, compared as one-hot indicators, or
        ``(n, n_classes)`` per-class scores (a logits layer): see
        :func:`target_columns`. Same samples, in the same order, as ``xs``.
    measures : sequence of str, default ("svcca",)
        As for :func:`svcca_dask.similarity_matrices`.
    classes : sequence, optional
        The classes (labels) or column names (scores): see :func:`target_columns`.
    conv : str or None, default "dft"
        Conv layers: ``"dft"`` is exactly their DC term against a target
        without spatial extent, i.e. ``"mean"``; ``"flatten"`` and
        ``"mean"`` as for the matrices.
    layout : str, optional
        Conv layers' layout when the input does not say (``"NCHW"``...).
    on_pair : callable, optional
        ``on_pair(layer, class)`` as each pair is done (progress).
    rows, storage_options, missing_chunks
        As for :func:`svcca_dask.cca` (the target's rows are checked with the layers').
    **options
        The measures' options (``keep``, ``epsilon``, ``debiased``...).

    Returns
    -------
    dict of str to SimilarityMatrix
        Rows are the layers, columns the classes; ``m[(layer, c)]`` a result.

    Notes
    -----
    A score near 1 is no finding where the target is computed from the layer:
    the logits are an affine map of the last hidden layer, so that layer's
    SVCCA with each logit is 1 by construction.
    """
    if not isinstance(xs, Mapping):
        xs = {"x": xs}
    if conv == "samples":
        raise ValueError(
            "conv='samples' would repeat each sample's class once per position; a target "
            "without spatial extent takes conv='dft' (its DC term, the default) or 'mean'"
        )
    opts = {"storage_options": storage_options, "missing_chunks": missing_chunks}
    layers = {k: open_layer(v, name=f"xs[{k!r}]", **opts) for k, v in xs.items()}
    *checked, target_layer = align_rows(
        [*layers.values(), open_layer(target, name="target", **opts)], rows=rows
    )
    columns = target_columns(target_layer, classes=classes)
    return similarity_matrices(
        dict(zip(layers, checked, strict=True)),
        columns,
        measures=measures,
        conv="mean" if conv == "dft" else conv,
        layout=layout,
        on_pair=on_pair,
        rows="trust",
        **options,
    )
