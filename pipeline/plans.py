"""Which pairs a job computes: store globs, ``against`` plans, class-sensitivity targets.

:func:`expand` turns a store entry into stores (a glob: one per match, ordered
naturally), :func:`store_pairs` plans the store pairs (every pair, or
``against = "last" | "previous" | "<store>"``), and :func:`target_pairs` the
layer x class pairs of a ``target`` job. The rules are in
:mod:`pipeline.jobs`' docstring; a spec they refuse is a ValueError that
:func:`pipeline.jobs.parse_job` reports as its ``JobError``.
"""

from __future__ import annotations

import difflib
import glob
import itertools
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["expand", "store_pairs", "target_pairs"]


def _natural(text: str) -> list[Any]:
    """Sort key that orders numbers by value: step-100 before step-1000."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def expand(name: str, path: str, where: str) -> list[tuple[str, str]]:
    """``(store name, path)`` of a job's store entry: itself, or for a glob
    (``ckpt/step-*.zarr``) one store per match, named by the match and ordered
    naturally; matched again at every run, so new checkpoints join."""
    from svcca_dask.store.format import is_url

    if is_url(path) or not any(c in path for c in "*?["):
        return [(name, path)]
    matches = sorted(glob.glob(path), key=lambda m: _natural(os.path.basename(m.rstrip("/"))))
    if not matches:
        raise ValueError(f"{where}: stores.{name} = {path!r} matches no store")
    return [(os.path.splitext(os.path.basename(m.rstrip("/")))[0], m) for m in matches]


def store_pairs(
    names: list[str], against: Any, *, all_pairs: bool, where: str
) -> list[tuple[str, str]]:
    """The ``(x store, y store)`` pairs of a job: every pair in order, or
    ``against``'s plan (see the module docstring)."""
    if against is None:
        if len(names) == 1 and all_pairs:
            return [(names[0], names[0])]
        return list(itertools.combinations(names, 2))
    if not isinstance(against, str) or not against:
        raise ValueError(
            f"{where}: against must be 'last', 'previous' or a store name, got {against!r}"
        )
    if against == "previous":
        return list(zip(names[1:], names[:-1], strict=True))
    ref = names[-1] if against == "last" else against
    if ref not in names:
        close = difflib.get_close_matches(ref, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{where}: against = {against!r} is neither 'last', 'previous' nor a store{hint} "
            f"(stores: {', '.join(names)})"
        )
    return [(n, ref) for n in names if n != ref or all_pairs]


def target_pairs(
    target: Any, opened: Mapping[str, Any], layers: Mapping[str, list[str]], where: str
) -> tuple[list[tuple[str, str, str, str]], dict[tuple[str, str], tuple[str, Any]]]:
    """Class sensitivity's pairs ``(x_store, x_layer, y_store, column)``: each
    selected layer of each store against each class column of ``target``, and
    the columns (``(store, column)`` -> ``(target layer, class)``)."""
    import numpy as np

    from svcca_dask.store import LABELS

    from .analysis import class_column

    if not isinstance(target, str) or not target:
        raise ValueError(
            f"{where}: target must be 'labels', a layer or 'store/layer', got {target!r}"
        )
    fixed, sep, name = target.rpartition("/")
    if sep and fixed not in opened:
        raise ValueError(f"{where}: target {target!r}: no store {fixed!r} ({', '.join(opened)})")
    pairs, columns = [], {}
    for store in opened:
        if store == fixed:
            continue
        t_store = fixed or store
        s = opened[t_store]
        if name not in s:
            raise ValueError(
                f"{where}: target {target!r}: store {t_store!r} has no "
                + ("labels" if name == LABELS else f"layer {name!r}")
                + f" (layers: {', '.join(s.layer_names())})"
            )
        info = s.info(name)
        if name == LABELS or len(info.shape) == 1:
            values = np.asarray(s.read(name).data.compute())
            if np.issubdtype(values.dtype, np.floating):
                raise ValueError(
                    f"{where}: target {t_store}/{name} is 1-D float: labels are integers"
                )
            classes = [v.item() for v in np.unique(values)]
        elif len(info.shape) == 2:
            classes = list(range(info.shape[1]))
        else:
            raise ValueError(
                f"{where}: target {t_store}/{name} has dims {info.dims}: a target is labels "
                "(n,) or per-class scores (n, n_classes)"
            )
        for layer in layers[store]:
            if t_store == store and layer == name:
                continue  # the logits against themselves
            for c in classes:
                column = class_column(name, c)
                pairs.append((store, layer, t_store, column))
                columns[(t_store, column)] = (name, c)
    if not pairs:
        raise ValueError(f"{where}: target {target!r} leaves no layer to compare")
    return pairs, columns
