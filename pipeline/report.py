"""Reports: matplotlib figures (PNG) and an ``index.html`` that shows them.

The figure functions take plain arrays (results already computed by
:mod:`svcca_dask` through the runner) and write one PNG each, with labeled
axes and, for heatmaps, a colorbar. They use :class:`matplotlib.figure.Figure`
directly, so no pyplot state leaks between calls and no display is needed.
:func:`write_report` renders an ``index.html`` from :class:`Section`\\ s
(a heading, a short text of what the figure means, a figure or an HTML table)
with the Jinja2 template ``pipeline/templates/report.html.j2``, and links the
tidy results table.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Section",
    "html_table",
    "plot_accuracy_vs_k",
    "plot_class_sensitivity",
    "plot_convergence",
    "plot_heatmaps",
    "plot_neurons_vs_directions",
    "plot_spectrum",
    "write_report",
]

PathLike = str | os.PathLike[str]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _class_boundaries(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start index of each run of equal labels, the run's centre, and its label."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    ends = np.r_[starts[1:], labels.size]
    if len(np.unique(labels[starts])) != len(starts):
        raise ValueError(
            "labels must be sorted by class (each class one contiguous run) to mark "
            "class boundaries; sort the samples by label first"
        )
    return starts, (starts + ends - 1) / 2.0, labels[starts]


def _standardize(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    sd = a.std(axis=0)
    return (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def plot_neurons_vs_directions(
    neurons: tuple[np.ndarray, np.ndarray],
    directions: tuple[np.ndarray, np.ndarray],
    labels: np.ndarray,
    path: PathLike,
    *,
    layer: str,
    names: tuple[str, str] = ("net1", "net2"),
    neuron_ids: tuple[Sequence[int], Sequence[int]] | None = None,
    correlations: Sequence[float] | None = None,
) -> Path:
    """The paper's first figure: top neurons against top SVCCA directions of two nets.

    Parameters
    ----------
    neurons : pair of ndarray, shape (n_samples, 2)
        Activations of each net's two highest-norm neurons of ``layer``.
    directions : pair of ndarray, shape (n_samples, 2)
        Each net's top two SVCCA-aligned directions (canonical variates).
    labels : ndarray, shape (n_samples,)
        Class of each sample; samples must be sorted by class.
    path : path
        The PNG to write.
    layer : str
        Layer name for the titles.
    names : pair of str
        The two nets' names.
    neuron_ids : pair of sequences of int, optional
        Indices of the plotted neurons, for the legend.
    correlations : sequence of float, optional
        Canonical correlation of each plotted direction pair, for the titles.

    Returns
    -------
    Path
    """
    for what, pair in (("neurons", neurons), ("directions", directions)):
        for a in pair:
            if np.ndim(a) != 2 or np.shape(a)[1] != 2 or np.shape(a)[0] != len(labels):
                raise ValueError(
                    f"{what} must be two (n_samples, 2) arrays with n_samples = len(labels) "
                    f"= {len(labels)}, got shape {np.shape(a)}"
                )
    starts, centres, classes = _class_boundaries(labels)
    fig = _figure(11, 6)
    axes = fig.subplots(2, 2, sharex=True)
    colors = ("tab:blue", "tab:orange")
    x = np.arange(len(labels))
    for row, (kind, pair) in enumerate((("neuron", neurons), ("SVCCA direction", directions))):
        for col in range(2):
            ax = axes[row, col]
            for net in range(2):
                label = names[net]
                if kind == "neuron" and neuron_ids is not None:
                    label += f" (neuron {neuron_ids[net][col]})"
                ax.plot(x, _standardize(pair[net])[:, col], lw=0.6, color=colors[net], label=label)
            for s in starts[1:]:
                ax.axvline(s - 0.5, color="0.3", lw=0.6, ls="--")
            title = f"{layer}: {'highest-norm ' if kind == 'neuron' else 'top '}{kind} #{col + 1}"
            if kind == "SVCCA direction" and correlations is not None:
                title += f" (canonical corr. {correlations[col]:.2f})"
            ax.set_title(title, fontsize=10)
            ax.set_ylabel("activation (standardized)")
            ax.legend(fontsize=7, loc="upper right")
            ax.set_xticks(centres, [str(c) for c in classes])
            if row == 1:
                ax.set_xlabel("samples sorted by class (tick: class; dashed: class boundary)")
    fig.suptitle(f"{names[0]} vs {names[1]}: top neurons do not line up, top SVCCA directions do")
    return _save(fig, path)


def plot_heatmaps(
    matrices: Mapping[str, np.ndarray],
    path: PathLike,
    *,
    rows: Sequence[str],
    cols: Sequence[str],
    row_label: str,
    col_label: str,
    title: str,
    colorbar_label: str = "SVCCA similarity",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Path:
    """One heatmap panel per entry of ``matrices``, side by side, with one colorbar.

    Parameters
    ----------
    matrices : mapping of panel title -> ndarray, shape (len(rows), len(cols))
        E.g. ``{"0%": m0, "35%": m35, ...}`` for learning dynamics. NaN cells
        are left blank.
    path : path
        The PNG to write.
    rows, cols : sequence of str
        Tick labels.
    row_label, col_label : str
        Axis labels.
    title : str
    colorbar_label : str
    vmin, vmax : float
        Color scale.

    Returns
    -------
    Path
    """
    if not matrices:
        raise ValueError("matrices is empty: give at least one panel")
    for name, m in matrices.items():
        if np.shape(m) != (len(rows), len(cols)):
            raise ValueError(
                f"panel {name!r} has shape {np.shape(m)}, expected "
                f"(len(rows), len(cols)) = ({len(rows)}, {len(cols)})"
            )
    n = len(matrices)
    fig = _figure(2.2 + 2.9 * n * max(1.0, len(cols) / 8), 3.4 * max(1.0, len(rows) / 8))
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    image = None
    for ax, (name, m) in zip(axes, matrices.items(), strict=True):
        image = ax.imshow(np.asarray(m, float), vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(cols)), cols, rotation=60, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel(col_label)
    axes[0].set_ylabel(row_label)
    fig.colorbar(image, ax=list(axes), label=colorbar_label, shrink=0.9)
    fig.suptitle(title)
    return _save(fig, path)


def plot_class_sensitivity(
    matrix: np.ndarray,
    path: PathLike,
    *,
    layers: Sequence[str],
    classes: Sequence[str],
    title: str,
    colorbar_label: str = "SVCCA similarity with the class logit",
) -> Path:
    """Each layer's similarity to each class's logit: a layers x classes heatmap.

    Parameters
    ----------
    matrix : ndarray, shape (len(layers), len(classes))
    path : path
    layers, classes : sequence of str
    title, colorbar_label : str

    Returns
    -------
    Path
    """
    return plot_heatmaps(
        {title: matrix},
        path,
        rows=layers,
        cols=classes,
        row_label="layer (input to output)",
        col_label="class logit",
        title="Class sensitivity",
        colorbar_label=colorbar_label,
    )


def plot_spectrum(
    coefficients: np.ndarray,
    baseline: np.ndarray,
    path: PathLike,
    *,
    pair: str,
    baseline_label: str = "random activations, same shape",
) -> Path:
    """Canonical correlations of a layer pair against a random-activation baseline.

    Parameters
    ----------
    coefficients, baseline : ndarray, shape (k,), (k_baseline,)
        Canonical correlations, descending.
    path : path
    pair : str
        Description of the layer pair, for the title and legend.
    baseline_label : str

    Returns
    -------
    Path
    """
    c = np.asarray(coefficients, float)
    b = np.asarray(baseline, float)
    if c.ndim != 1 or b.ndim != 1 or c.size == 0 or b.size == 0:
        raise ValueError(
            f"coefficients and baseline must be non-empty 1-D arrays, got {c.shape}, {b.shape}"
        )
    fig = _figure(6.5, 4)
    ax = fig.subplots()
    ax.plot(np.arange(1, c.size + 1), c, marker=".", label=pair)
    ax.plot(np.arange(1, b.size + 1), b, marker=".", color="0.5", label=baseline_label)
    ax.set_xlabel("canonical direction (sorted by correlation)")
    ax.set_ylabel("canonical correlation")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"CCA coefficient spectrum: {pair}", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_vs_k(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: PathLike,
    *,
    layer: str,
    reference: float | None = None,
) -> Path:
    """Test accuracy with a layer projected on its top-k directions, against k.

    Parameters
    ----------
    curves : mapping of label -> (ks, accuracies)
    path : path
    layer : str
    reference : float, optional
        Accuracy of the uncompressed network, drawn as a horizontal line.

    Returns
    -------
    Path
    """
    if not curves:
        raise ValueError("curves is empty: give at least one (ks, accuracies) curve")
    fig = _figure(6.5, 4)
    ax = fig.subplots()
    for label, (ks, acc) in curves.items():
        if len(ks) != len(acc):
            raise ValueError(f"curve {label!r}: {len(ks)} values of k but {len(acc)} accuracies")
        ax.plot(ks, acc, marker="o", label=label)
    if reference is not None:
        ax.axhline(reference, color="0.4", ls="--", label="uncompressed")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for ks, _ in curves.values() for k in ks})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"k (directions of {layer} kept)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Compression: {layer} projected on k directions", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_convergence(
    curves: Mapping[str, Mapping[float, float]],
    path: PathLike,
    *,
    reference: str,
    ylabel: str = "SVCCA with the final state",
    threshold: float | None = None,
) -> Path:
    """Each layer's score against its reference state over training: one line per layer.

    Parameters
    ----------
    curves : mapping of layer -> {fraction of training: score}
        Layers input to output (the legend's order).
    path : path
    reference : str
        The reference checkpoint, for the title.
    ylabel : str
    threshold : float, optional
        Drawn as a dashed line (the Freeze Training threshold).

    Returns
    -------
    Path
    """
    if not curves:
        raise ValueError("curves is empty: give at least one layer's curve")
    fig = _figure(6.5, 4)
    ax = fig.subplots()
    for layer, curve in curves.items():
        t = sorted(curve)
        ax.plot([100 * f for f in t], [curve[f] for f in t], marker="o", label=layer)
    if threshold is not None:
        ax.axhline(threshold, color="0.4", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("training (% of the reference checkpoint)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Per-layer convergence towards {reference}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


# --------------------------------------------------------------------------- #
# HTML


@dataclass(frozen=True)
class Section:
    """One part of the report.

    Attributes
    ----------
    title : str
    text : str
        What the figure or table shows and how to read it (plain text;
        paragraphs separated by blank lines).
    image : str or None
        File name of a PNG in the report folder.
    table_html : str or None
        An HTML table (see :func:`html_table`) shown below the text.
    """

    title: str
    text: str
    image: str | None = None
    table_html: str | None = None


def html_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    max_rows: int | None = None,
    floatfmt: str = "{:.4f}",
) -> str:
    """An HTML ``<table>`` of records (dicts), values escaped, floats formatted
    (the template ``pipeline/templates/table.html.j2``).

    Parameters
    ----------
    rows : sequence of mapping
    columns : sequence of str, optional
        Columns in order; default the keys of the first row.
    max_rows : int, optional
        Show at most this many rows and say how many were left out.
    floatfmt : str
        Format of float values.

    Returns
    -------
    str
    """
    if columns is None:
        columns = list(rows[0]) if rows else []

    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return floatfmt.format(float(v))
        return "" if v is None else str(v)

    shown = rows if max_rows is None else rows[:max_rows]
    return (
        _templates()
        .get_template("table.html.j2")
        .render(columns=list(columns), rows=shown, cell=cell, left_out=len(rows) - len(shown))
    )


def write_report(
    out: PathLike,
    sections: Sequence[Section],
    *,
    title: str,
    intro: str = "",
    results: Mapping[str, str] | None = None,
) -> Path:
    """Write ``out/index.html`` showing ``sections`` in order.

    Parameters
    ----------
    out : path
        The report folder (created if needed); images named by the sections
        must be in it.
    sections : sequence of Section
    title : str
    intro : str
        Text under the title.
    results : mapping of label -> file name, optional
        Result files in ``out`` to link (e.g. ``{"results table (CSV)": "results.csv"}``).

    Returns
    -------
    Path
        The ``index.html`` written.

    Raises
    ------
    FileNotFoundError
        If a section names an image, or ``results`` a file, that is not in ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s in sections:
        if s.image is not None and not (out / s.image).is_file():
            raise FileNotFoundError(f"section {s.title!r}: image {s.image!r} is not in {out}")
    for label, name in (results or {}).items():
        if not (out / name).exists():
            raise FileNotFoundError(f"results {label!r}: {name!r} is not in {out}")
    page = (
        _templates()
        .get_template("report.html.j2")
        .render(title=title, intro=intro, results=results or {}, sections=list(sections))
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _paragraphs(text: str) -> list[str]:
    """Paragraphs (separated by blank lines) with their white space folded."""
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


@functools.cache
def _templates() -> Any:
    """The report's Jinja2 templates (``pipeline/templates``), HTML-escaping every value."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["paragraphs"] = _paragraphs
    return env
