"""What a results folder says: score matrices, checkpoint sets, convergence, Freeze Training.

These functions read the tidy table a run writes (:mod:`pipeline.output`) and
the run's ``job.json``; they compute nothing from activations. The report
(:mod:`pipeline.results_report`), ``svcca-dask freeze`` and the demo use them.

A *checkpoint set* is what a job with ``against = "last"`` or ``against =
"<store>"`` computed: stores in training order, each compared with one
reference store (the final state). Its learning dynamics are the layer x
layer matrices of each checkpoint against the reference; a layer's
*convergence curve* is its score against its own reference state at each
checkpoint. A checkpoint's *fraction of training* comes from the last number
in its store name (``step-000300`` of ``step-001000`` is 0.3), or, when a
name has none, from its position in the set.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .output import read_table

__all__ = [
    "DEFAULT_THRESHOLD",
    "CheckpointSet",
    "Results",
    "checkpoint_set",
    "class_column",
    "class_of",
    "freeze_plan",
    "freeze_schedule",
    "load_results",
    "ordered",
    "score_matrix",
]

#: Score at which a layer counts as converged: the report's text, ``svcca-dask freeze``.
DEFAULT_THRESHOLD = 0.99

_COLUMN = re.compile(r"^(?P<layer>.+)\[(?P<cls>[^\[\]]+)\]$")


@dataclass
class Results:
    """A results folder: its rows and the parameters of the run that wrote it.

    Attributes
    ----------
    path : str
    rows : list of dict
        The table (:func:`pipeline.output.read_table`).
    params : dict
        ``job.json``'s ``params`` (stores in order, pairs, against, target...);
        empty when the folder has no ``job.json``.
    """

    path: str
    rows: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def stores(self) -> list[str]:
        """Store names in the job's order (else in the table's)."""
        named = list(self.params.get("stores", {}))
        seen = dict.fromkeys(named)
        for r in self.rows:
            seen.setdefault(r["x_store"])
            seen.setdefault(r["y_store"])
        return list(seen)

    def target_rows(self) -> list[dict[str, Any]]:
        """Class-sensitivity rows (a ``target`` job): ``y_layer`` names a class column."""
        if not self.params.get("target"):
            return []
        return [r for r in self.rows if _COLUMN.match(r["y_layer"])]

    def pair_rows(self) -> list[dict[str, Any]]:
        """Every other row: layer against layer."""
        targets = {id(r) for r in self.target_rows()}
        return [r for r in self.rows if id(r) not in targets]

    def measures(self) -> list[str]:
        return list(dict.fromkeys(r["measure"] for r in self.rows))


def load_results(path: str | os.PathLike[str]) -> Results:
    """Read a results folder (what ``svcca-dask run`` writes).

    Raises
    ------
    FileNotFoundError
        If the folder has no ``results.csv``.
    """
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "results.csv")):
        raise FileNotFoundError(
            f"{path!r} is not a results folder (no results.csv); give the output folder "
            "of a job (its 'output' key)"
        )
    params: dict[str, Any] = {}
    meta = os.path.join(path, "job.json")
    if os.path.isfile(meta):
        with open(meta) as f:
            params = json.load(f).get("params", {})
    return Results(path, read_table(path), params)


def ordered(values: Sequence[str]) -> list[str]:
    """Distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def class_column(layer: str, cls: Any) -> str:
    """The ``y_layer`` of class ``cls`` of a target layer (``labels[3]``): what a
    ``target`` job writes and :func:`class_of` reads back."""
    return f"{layer}[{cls}]"


def class_of(y_layer: str) -> str:
    """The class of a class-sensitivity column name (``labels[3]`` -> ``3``)."""
    m = _COLUMN.match(y_layer)
    return m.group("cls") if m else y_layer


def score_matrix(
    rows: Sequence[Mapping[str, Any]],
    x_store: str,
    y_store: str,
    x_layers: Sequence[str],
    y_layers: Sequence[str],
    *,
    measure: str | None = None,
) -> np.ndarray:
    """The ``len(x_layers) x len(y_layers)`` scores of one store pair (NaN where absent).

    Parameters
    ----------
    rows : sequence of mapping
        Result rows (``x_store``, ``x_layer``, ``y_store``, ``y_layer``,
        ``measure``, ``score``).
    x_store, y_store : str
    x_layers, y_layers : sequence of str
    measure : str, optional
        Only rows of this measure.
    """
    m = np.full((len(x_layers), len(y_layers)), np.nan)
    ix = {name: i for i, name in enumerate(x_layers)}
    iy = {name: j for j, name in enumerate(y_layers)}
    for r in rows:
        if r["x_store"] != x_store or r["y_store"] != y_store:
            continue
        if measure is not None and r["measure"] != measure:
            continue
        i, j = ix.get(r["x_layer"]), iy.get(r["y_layer"])
        if i is not None and j is not None:
            m[i, j] = float(r["score"])
    return m


@dataclass
class CheckpointSet:
    """Checkpoints compared with one reference (see the module docstring).

    Attributes
    ----------
    reference : str
        The reference store (the final state).
    checkpoints : list of str
        Stores compared with it, in training order (the reference last, when
        it was compared with itself).
    fractions : dict of str to float
        Each checkpoint's fraction of training; the reference's is 1.
    layers : list of str
        The layers, in the table's order.
    earlier : list of str
        References of rows an earlier run kept (``against = "last"`` before a
        newer checkpoint came): in the table, not in this set.
    """

    reference: str
    checkpoints: list[str]
    fractions: dict[str, float]
    layers: list[str]
    earlier: list[str]

    def convergence(
        self, rows: Sequence[Mapping[str, Any]], measure: str
    ) -> dict[str, dict[str, float]]:
        """Each layer's score against its own reference state: ``{layer: {checkpoint: score}}``."""
        curves: dict[str, dict[str, float]] = {layer: {} for layer in self.layers}
        for r in rows:
            if (
                r["measure"] == measure
                and r["y_store"] == self.reference
                and r["x_layer"] == r["y_layer"]
                and r["x_layer"] in curves
                and r["x_store"] in self.fractions
            ):
                curves[r["x_layer"]][r["x_store"]] = float(r["score"])
        return {
            k: dict(sorted(v.items(), key=lambda kv: self.fractions[kv[0]]))
            for k, v in curves.items()
            if v
        }


def checkpoint_set(results: Results) -> CheckpointSet | None:
    """The checkpoint set of a run with ``against = "last"`` or a store name; None otherwise."""
    against = results.params.get("against")
    stores = results.stores
    if against in (None, "previous") or not stores:
        return None
    rows = results.pair_rows()
    reference = stores[-1] if against == "last" else against
    if reference not in stores:
        return None
    current = [r for r in rows if r["y_store"] == reference]
    if not current:
        return None
    compared = set(r["x_store"] for r in current)
    checkpoints = [s for s in stores if s in compared]
    numbers = [_last_number(s) for s in checkpoints]
    ref_number = _last_number(reference)
    if ref_number and all(n is not None for n in numbers):
        fractions = {s: n / ref_number for s, n in zip(checkpoints, numbers, strict=True)}
    else:  # positions: the reference is 1
        order = [s for s in checkpoints if s != reference] + [reference]
        fractions = {
            s: i / (len(order) - 1) if len(order) > 1 else 1.0 for i, s in enumerate(order)
        }
        fractions = {s: fractions[s] for s in checkpoints}
    fractions[reference] = 1.0
    earlier = ordered(
        [r["y_store"] for r in rows if r.get("against") and r["y_store"] != reference]
    )
    layers = ordered([r["x_layer"] for r in current])
    return CheckpointSet(reference, checkpoints, fractions, layers, earlier)


def _last_number(name: str) -> int | None:
    found = re.findall(r"\d+", name)
    return int(found[-1]) if found else None


def freeze_schedule(
    convergence: Mapping[str, Mapping[float, float]],
    *,
    layers: Sequence[str],
    threshold: float,
    trainable_last: int = 1,
) -> dict[str, float | None]:
    """When each layer may stop training: the Freeze Training schedule.

    A layer has converged at the first checkpoint (fraction of training,
    after the start and before the end) where its similarity to its own final
    state reaches ``threshold``. The start is never a convergence point: the
    initialization has learned nothing, whatever its score (a layer affine in
    the input, such as a first conv layer before its nonlinearity, has SVCCA 1
    with every later state, since CCA is invariant to invertible linear maps).
    Layers freeze bottom-up: a layer is frozen no earlier than every layer
    below it (freezing a layer while one below still trains would change its
    input under it). The top ``trainable_last`` layers never freeze.

    Parameters
    ----------
    convergence : mapping of layer -> {fraction: similarity}
        Similarity (e.g. SVCCA) of each layer at checkpoint ``fraction`` with
        the same layer at the end of training. Entries at fraction 0 (the
        initialization) and 1 (the final state against itself) are ignored.
    layers : sequence of str
        Layer names, input to output.
    threshold : float
        Similarity in (0, 1] at which a layer counts as converged.
    trainable_last : int, default 1
        Number of top layers that always train (at least the logits).

    Returns
    -------
    dict of layer -> fraction or None
        Fraction of training after which the layer is frozen, or ``None`` if
        it trains to the end. Keys in ``layers`` order.

    Raises
    ------
    ValueError
        If ``threshold`` is out of range or a layer has no convergence curve.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if trainable_last < 0:
        raise ValueError(f"trainable_last must be >= 0, got {trainable_last}")
    missing = [name for name in layers if name not in convergence]
    if missing:
        raise ValueError(
            f"no convergence curve for layer(s) {missing}; convergence has {sorted(convergence)}"
        )
    schedule: dict[str, float | None] = {}
    floor = 0.0  # no layer freezes before the one below it
    blocked = False  # a layer below trains to the end: nothing above may freeze
    n_free = len(layers) - trainable_last
    for i, name in enumerate(layers):
        curve = {float(t): float(s) for t, s in convergence[name].items() if 0.0 < float(t) < 1.0}
        reached = sorted(t for t, s in curve.items() if s >= threshold)
        if blocked or i >= n_free or not reached:
            schedule[name] = None
            blocked = True
            continue
        floor = max(reached[0], floor)
        schedule[name] = floor
    return schedule


def freeze_plan(
    results: Results,
    *,
    threshold: float,
    measure: str | None = None,
    layers: Sequence[str] | None = None,
    trainable_last: int = 1,
) -> dict[str, Any]:
    """The Freeze Training schedule of a results folder, JSON-ready (``svcca-dask freeze``).

    Parameters
    ----------
    results : Results
        A run of a checkpoint set (``against = "last"`` or a store name) with
        same-name pairs.
    threshold : float
        Score in (0, 1] at which a layer counts as converged.
    measure : str, optional
        Default: ``svcca`` when the table has it, else its only measure.
    layers : sequence of str, optional
        Input to output (default: the table's order).
    trainable_last : int, default 1

    Returns
    -------
    dict
        ``reference``, ``measure``, ``threshold``, ``layers``, ``fractions``
        (each checkpoint's), ``schedule`` (layer -> fraction of training
        after which it is frozen, or null) and ``freeze_after`` (the
        checkpoint that fraction is, or null).

    Raises
    ------
    ValueError
        If the folder holds no checkpoint set, or not that measure.
    """
    cs = checkpoint_set(results)
    if cs is None:
        raise ValueError(
            f"{results.path}: no checkpoint set: the Freeze Training schedule needs a run of a "
            "job with against = 'last' (or a reference store) and same-name pairs"
        )
    measures = [
        m for m in results.measures() if any(r["measure"] == m for r in results.pair_rows())
    ]
    if measure is None:
        measure = "svcca" if "svcca" in measures else measures[0]
        if len(measures) > 1 and "svcca" not in measures:
            raise ValueError(f"{results.path} has measures {measures}: choose one with --measure")
    if measure not in measures:
        raise ValueError(f"{results.path} has no {measure!r} results (measures: {measures})")
    curves = cs.convergence(results.rows, measure)
    names = list(layers) if layers is not None else [n for n in cs.layers if n in curves]
    convergence = {n: {cs.fractions[s]: v for s, v in curves.get(n, {}).items()} for n in names}
    schedule = freeze_schedule(
        {n: c for n, c in convergence.items() if c},
        layers=names,
        threshold=threshold,
        trainable_last=trainable_last,
    )
    at = {f: s for s, f in cs.fractions.items()}
    return {
        "reference": cs.reference,
        "measure": measure,
        "threshold": threshold,
        "layers": names,
        "fractions": cs.fractions,
        "schedule": schedule,
        "freeze_after": {n: None if f is None else at.get(f) for n, f in schedule.items()},
    }
