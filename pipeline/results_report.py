"""``svcca-dask report``: figures and an ``index.html`` for any results folder.

From the table a run wrote (:mod:`pipeline.analysis` reads it) this draws:

- the learning dynamics (each checkpoint's layers against the reference's,
  the paper's figure) and each layer's convergence curve, when the run was a
  checkpoint set (``against = "last"`` or a store name);
- a layer x layer heatmap per other store pair and measure;
- class sensitivity (a ``target`` job): layers x classes per store and measure;
- the table itself.

Every sentence under a figure is computed from the figure's numbers, so the
text cannot contradict it; where a high score is so by construction (a layer
against itself, logits affine in a layer) a note says so.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import report as rp
from .analysis import (
    DEFAULT_THRESHOLD,
    CheckpointSet,
    Results,
    checkpoint_set,
    class_of,
    load_results,
    ordered,
    score_matrix,
)
from .output import COLUMNS

__all__ = ["write_results_report"]

#: Panels of the learning-dynamics figure at most (checkpoints spread evenly).
MAX_PANELS = 6
#: A class-sensitivity score this close to 1 against every class is so by construction.
BY_CONSTRUCTION = 1e-3
_TABLE = (*COLUMNS[:8], "warnings")  # x_store ... n_samples: who, what, how many


def write_results_report(
    results_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> Path:
    """Write ``index.html`` and its PNGs for the results folder ``results_dir``.

    Parameters
    ----------
    results_dir : path
        The output folder of a run (``results.csv``, ``job.json``).
    out : path, optional
        The report folder (default ``results_dir/report``); rewritten figures
        replace the old ones, so a rerun after new checkpoints updates it.
    threshold : float, default DEFAULT_THRESHOLD
        The score the convergence sentences and lines use.

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    results = load_results(results_dir)
    out = Path(results_dir) / "report" if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("fig-*.png"):
        old.unlink()  # figures of an earlier report that this one may not draw
    sections: list[rp.Section] = []
    cs = checkpoint_set(results)
    figures = _Figures(out)
    for measure in results.measures():
        if cs is not None:
            sections += _dynamics(results, cs, measure, figures, threshold)
        sections += _store_pairs(results, cs, measure, figures)
        sections += _classes(results, measure, figures)
    rows = results.rows
    sections.append(
        rp.Section(
            "Results table",
            f"All {len(rows)} rows of results.csv (scores rounded to 4 digits).",
            table_html=rp.html_table(rows, columns=_TABLE, max_rows=500),
        )
    )
    links = {"results table (CSV)": os.path.relpath(Path(results.path) / "results.csv", out)}
    if (Path(results.path) / "job.json").is_file():
        links["job parameters (JSON)"] = os.path.relpath(Path(results.path) / "job.json", out)
    return rp.write_report(
        out,
        sections,
        title=f"svcca-dask results: {Path(results.path).resolve().name}",
        intro=_intro(results, cs),
        results=links,
    )


class _Figures:
    """Numbered PNG names in the report folder."""

    def __init__(self, out: Path) -> None:
        self.out, self.n = out, 0

    def path(self, what: str) -> Path:
        self.n += 1
        return self.out / f"fig-{self.n:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', what)[:60]}.png"


def _intro(results: Results, cs: CheckpointSet | None) -> str:
    times = sorted(r["computed_at"] for r in results.rows if r.get("computed_at"))
    text = (
        f"{len(results.rows)} results of {', '.join(results.measures()) or 'no measure'} "
        f"over {len(results.stores)} store(s)"
    )
    if times:
        text += f", computed {times[0]} to {times[-1]}"
    if cs is not None:
        text += f"; a checkpoint set of {len(cs.checkpoints)} against {cs.reference}"
    return text + "."


def _label(measure: str) -> tuple[str, float, float | None]:
    """Colorbar label, and color scale (None: the data's maximum) of a measure."""
    if measure == "shape":
        return "shape distance (0: the same up to the metric's maps)", 0.0, None
    return {"cka": "linear CKA"}.get(measure, measure.upper()), 0.0, 1.0


def _scale(measure: str, *matrices: np.ndarray) -> dict[str, float]:
    label, vmin, vmax = _label(measure)
    if vmax is None:
        vmax = max(float(np.nanmax(m)) for m in matrices if np.isfinite(m).any()) or 1.0
    return {"colorbar_label": label, "vmin": vmin, "vmax": vmax}


def _spread(items: Sequence[str], k: int) -> list[str]:
    """At most ``k`` items, evenly spread, first and last kept."""
    if len(items) <= k:
        return list(items)
    return [items[i] for i in sorted({round(j * (len(items) - 1) / (k - 1)) for j in range(k)})]


def _dynamics(
    results: Results, cs: CheckpointSet, measure: str, figures: _Figures, threshold: float
) -> list[rp.Section]:
    rows = [r for r in results.pair_rows() if r["measure"] == measure]
    if not any(r["y_store"] == cs.reference for r in rows):
        return []
    label = _label(measure)[0]
    sections = []
    layers = cs.layers
    ref_layers = ordered([r["y_layer"] for r in rows if r["y_store"] == cs.reference])
    shown = _spread(cs.checkpoints, MAX_PANELS)
    mats = {s: score_matrix(rows, s, cs.reference, layers, ref_layers) for s in shown}
    full = all(np.isfinite(m).sum() > min(m.shape) for m in mats.values())
    if full:  # layer x layer products (pairs = "all"), the paper's figure
        path = figures.path(f"dynamics-{measure}")
        rp.plot_heatmaps(
            {f"{s} ({100 * cs.fractions[s]:.0f}%)": m for s, m in mats.items()},
            path,
            rows=layers,
            cols=ref_layers,
            row_label="layer at the checkpoint",
            col_label=f"layer of {cs.reference}",
            title=f"Learning dynamics ({label})",
            **_scale(measure, *mats.values()),
        )
        diag = {s: _diagonal(mats[s], layers, ref_layers) for s in shown}
        text = (
            f"{label} of every layer of {len(cs.checkpoints)} checkpoint(s) against every "
            f"layer of {cs.reference}"
            + (
                f" ({len(shown)} panels shown, spread over training)"
                if len(shown) < len(cs.checkpoints)
                else ""
            )
            + ". Mean of the same-layer cells: "
            + ", ".join(f"{s} {v:.3f}" for s, v in diag.items() if v is not None)
            + "."
        )
        if cs.reference in mats:
            text += f"\n\nThe {cs.reference} panel is the reference against itself: its diagonal is 1 by construction."
        if cs.earlier:
            text += (
                f"\n\nRows against earlier references ({', '.join(cs.earlier)}) are in the "
                "table, not in these figures."
            )
        sections.append(rp.Section(f"Learning dynamics: {label}", text, image=path.name))
    curves = {  # the reference against itself is 1: not a point of a curve
        layer: {cs.fractions[s]: v for s, v in c.items() if s != cs.reference}
        for layer, c in cs.convergence(rows, measure).items()
    }
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        path = figures.path(f"convergence-{measure}")
        rp.plot_convergence(
            curves,
            path,
            reference=cs.reference,
            ylabel=f"{label} with {cs.reference}",
            threshold=None if measure == "shape" else threshold,
        )
        sections.append(
            rp.Section(
                f"Per-layer convergence: {label}",
                _convergence_text(curves, cs, threshold, measure),
                image=path.name,
            )
        )
    return sections


def _diagonal(m: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> float | None:
    cells = [m[i, cols.index(r)] for i, r in enumerate(rows) if r in cols]
    cells = [c for c in cells if np.isfinite(c)]
    return float(np.mean(cells)) if cells else None


def _convergence_text(
    curves: Mapping[str, Mapping[float, float]], cs: CheckpointSet, threshold: float, measure: str
) -> str:
    last = {layer: c[max(c)] for layer, c in curves.items()}
    text = "Each layer against its own state in " + cs.reference + "; at the latest checkpoint: "
    text += ", ".join(f"{k} {v:.3f}" for k, v in last.items()) + "."
    if measure == "shape":
        return text + " Lower is more similar (a distance)."
    reached = {
        k: min((f for f, v in c.items() if v >= threshold), default=None) for k, c in curves.items()
    }
    done = [(k, f) for k, f in reached.items() if f is not None]
    never = [k for k, f in reached.items() if f is None]
    if done:
        text += (
            f" Reached {threshold:g}: " + ", ".join(f"{k} at {100 * f:.0f}%" for k, f in done) + "."
        )
    if never:
        text += f" Never reached {threshold:g}: {', '.join(never)}."
    order = [f for _, f in done]
    if len(done) >= 2 and not never:
        monotone = all(a <= b for a, b in itertools.pairwise(order))
        text += (
            " The layers converge in their order, bottom-up."
            if monotone
            else " The layers do not converge in their order."
        )
    return text


def _store_pairs(
    results: Results, cs: CheckpointSet | None, measure: str, figures: _Figures
) -> list[rp.Section]:
    rows = [r for r in results.pair_rows() if r["measure"] == measure]
    if cs is not None:
        rows = [r for r in rows if r["y_store"] != cs.reference and not r.get("against")]
    label = _label(measure)[0]
    sections = []
    for xs, ys in ordered([(r["x_store"], r["y_store"]) for r in rows]):
        pair = [r for r in rows if (r["x_store"], r["y_store"]) == (xs, ys)]
        xl, yl = ordered([r["x_layer"] for r in pair]), ordered([r["y_layer"] for r in pair])
        if len(pair) < 2 or all(r["x_layer"] == r["y_layer"] for r in pair):
            continue  # one cell, or same-name pairs only: the table shows them
        m = score_matrix(pair, xs, ys, xl, yl)
        path = figures.path(f"heatmap-{xs}-{ys}-{measure}")
        rp.plot_heatmaps(
            {f"{xs} ~ {ys}": m},
            path,
            rows=xl,
            cols=yl,
            row_label=f"layer of {xs}",
            col_label=f"layer of {ys}",
            title=f"{label}: {xs} against {ys}",
            **_scale(measure, m),
        )
        i, j = np.unravel_index(np.nanargmax(m), m.shape)
        k, l_ = np.unravel_index(np.nanargmin(m), m.shape)
        text = (
            f"{label} of {len(pair)} layer pairs. Highest: {xl[i]} ~ {yl[j]} ({m[i, j]:.3f}); "
            f"lowest: {xl[k]} ~ {yl[l_]} ({m[k, l_]:.3f})."
        )
        diag = _diagonal(m, xl, yl)
        if diag is not None:
            text += f" Mean of the same-name cells: {diag:.3f}."
        if xs == ys:
            text += "\n\nA store against itself: each layer's own cell is 1 by construction."
        sections.append(rp.Section(f"{label}: {xs} against {ys}", text, image=path.name))
    return sections


def _classes(results: Results, measure: str, figures: _Figures) -> list[rp.Section]:
    rows = [r for r in results.target_rows() if r["measure"] == measure]
    target = str(results.params.get("target"))
    label = _label(measure)[0]
    sections = []
    for xs in ordered([r["x_store"] for r in rows]):
        mine = [r for r in rows if r["x_store"] == xs]
        ys = mine[0]["y_store"]
        layers, cols = ordered([r["x_layer"] for r in mine]), ordered([r["y_layer"] for r in mine])
        m = score_matrix(mine, xs, ys, layers, cols)
        path = figures.path(f"classes-{xs}-{measure}")
        kind = "class indicator" if target.rpartition("/")[2] == "labels" else "class column"
        rp.plot_heatmaps(
            {f"{xs} against {target}": m},
            path,
            rows=layers,
            cols=[class_of(c) for c in cols],
            row_label="layer",
            col_label=kind,
            title=f"Class sensitivity ({label})",
            **_scale(measure, m),
        )
        i, j = np.unravel_index(np.nanargmax(m), m.shape)
        means = np.nanmean(m, axis=1)
        text = (
            f"{label} of each layer of {xs} against each {kind} of {target}. Highest: "
            f"{layers[i]} with class {class_of(cols[j])} ({m[i, j]:.3f}). Mean over classes: "
            + ", ".join(f"{n} {v:.3f}" for n, v in zip(layers, means, strict=True))
            + "."
        )
        built = [
            n for n, row in zip(layers, m, strict=True) if np.nanmin(row) >= 1 - BY_CONSTRUCTION
        ]
        if built and measure != "shape":
            text += (
                f"\n\n{', '.join(built)} scores at least {1 - BY_CONSTRUCTION:g} against every "
                f"column of {target}: the target is computed from it (logits are an affine map of "
                "the last hidden layer), so this is so by construction, not a finding."
            )
        sections.append(rp.Section(f"Class sensitivity: {xs} ({label})", text, image=path.name))
    return sections
