"""The demo's report: its figures, and the page, whose prose is ``templates/sections.j2``."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

import numpy as np

from .summary import DENSE_LAYER, DemoSummary

__all__: list[str] = []


@functools.cache
def _prose() -> Any:
    """The macros of ``templates/sections.j2``, one per section (plain text, no escaping:
    the report template escapes what it shows)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.demo", "templates"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(f3="{:.3f}".format, pct=percent, diagonal=_diagonal, sentence=_sentence)
    return env.get_template("sections.j2").module


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def percent(fraction: float) -> str:
    return f"{round(100 * fraction)}%"


def _diagonal(curves: dict[str, dict[str, float]], at: str) -> str:
    """``"conv1 0.981, conv2 0.955, ..."``: each layer's score at checkpoint ``at``."""
    return ", ".join(f"{name} {c[at]:.3f}" for name, c in curves.items())


def write_demo_page(out: Path, summary: DemoSummary, **k: Any) -> None:
    """Figures and ``index.html`` of the demo (see :func:`run_demo`)."""
    from ..runner import COLUMNS
    from .models import CHECKPOINTS, ConvNet, ResNet

    rp = k["rp"]
    res, neuron = k["res"], k["neuron"]
    x, y = k["x"], k["y"]
    (ix, iy) = neuron["top_neurons"]
    rp.plot_neurons_vs_directions(
        (x[:, ix], y[:, iy]),
        (res.transform(x, side="x")[:, :2], res.transform(y, side="y")[:, :2]),
        k["labels"],
        out / "fig1_neurons_vs_directions.png",
        layer=DENSE_LAYER,
        neuron_ids=(ix, iy),
        correlations=res.coefficients[:2],
    )
    for net, layers in (("net1", ConvNet.LAYERS), ("resnet", ResNet.LAYERS)):
        rp.plot_heatmaps(
            {f"{net} at {p}": m for p, m in k["dyn"][net].items()},
            out / f"fig2_learning_dynamics_{net}.png",
            rows=layers,
            cols=layers,
            row_label="layer at k% of training",
            col_label="layer at 100%",
            title=f"Learning dynamics of {net}: SVCCA of each checkpoint's layers with the final ones",
        )
    rp.plot_class_sensitivity(
        k["sens"],
        out / "fig3_class_sensitivity.png",
        layers=ConvNet.LAYERS,
        classes=[str(c) for c in range(k["sens"].shape[1])],
        title="net1 (final): each layer against each class's logit",
    )
    rp.plot_spectrum(
        k["cca_pair"].coefficients,
        k["baseline"].coefficients,
        out / "fig4_cca_spectrum.png",
        pair=f"{DENSE_LAYER}: net1 vs net2",
    )
    rp.plot_heatmaps(
        {"net1 vs net2 (final)": k["nets"]},
        out / "fig5_net1_vs_net2.png",
        rows=ConvNet.LAYERS,
        cols=ConvNet.LAYERS,
        row_label="net1 layer",
        col_label="net2 layer",
        title="Two nets, same architecture, other seeds",
    )
    comp = summary.compression
    rp.plot_accuracy_vs_k(
        {
            "top-k SVCCA directions (vs net2)": (comp["k"], comp["svcca_accuracy"]),
            "top-k highest-norm neurons": (comp["k"], comp["neuron_accuracy"]),
        },
        out / "fig6_compression.png",
        layer=DENSE_LAYER,
        reference=comp["uncompressed_accuracy"],
    )

    rows = k["rows"]
    columns = ["x_store", "x_layer", "y_store", "y_layer", "measure", "score"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["job", *COLUMNS], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    t = summary.seconds
    sched_rows = [
        {
            "layer": name,
            **{f"SVCCA at {percent(f)}": k["convergence"][name][f] for f in CHECKPOINTS if f < 1.0},
            "freeze after": "never" if at is None else percent(at),
        }
        for name, at in summary.schedule.items()
    ]
    ft = summary.freeze_training
    ft_table = None
    if ft is not None:
        ft_table = rp.html_table(
            [
                {
                    "training": "normal",
                    "test accuracy": ft["normal_accuracy"],
                    "compute (GFLOP)": ft["normal_gflop"],
                    "wall time (s)": ft["normal_seconds"],
                },
                {
                    "training": "Freeze Training",
                    "test accuracy": ft["frozen_accuracy"],
                    "compute (GFLOP)": ft["frozen_gflop"],
                    "wall time (s)": ft["frozen_seconds"],
                },
            ],
            floatfmt="{:.3f}",
        )
    checks = summary.checks
    lower = checks["lower_layers_converge_first"]
    curves, first = lower["curves"], lower["first"]
    res_curves = {
        name: {p: float(m[i, i]) for p, m in k["dyn"]["resnet"].items()}
        for i, name in enumerate(ResNet.LAYERS)
    }
    nets = k["nets"]
    pair_diag = {name: {"": float(nets[i, i])} for i, name in enumerate(ConvNet.LAYERS)}
    i_dense, i_logits = ConvNet.LAYERS.index(DENSE_LAYER), ConvNet.LAYERS.index("logits")
    text = _prose()
    sections = [
        rp.Section(
            "1. Top neurons vs top SVCCA directions (net1 vs net2)",
            text.neurons(DENSE_LAYER, neuron),
            image="fig1_neurons_vs_directions.png",
        ),
        rp.Section(
            "2. Learning dynamics: the conv net",
            text.dynamics_net1(
                curves, lower, first, float(np.nanmin(np.diagonal(k["dyn"]["net1"]["75%"])))
            ),
            image="fig2_learning_dynamics_net1.png",
        ),
        rp.Section(
            "2b. Learning dynamics: the residual net",
            text.dynamics_resnet(res_curves),
            image="fig2_learning_dynamics_resnet.png",
        ),
        rp.Section(
            "3. Class sensitivity", text.class_sensitivity(), image="fig3_class_sensitivity.png"
        ),
        rp.Section(
            "4. CCA coefficient spectrum against a random baseline",
            text.spectrum(DENSE_LAYER),
            image="fig4_cca_spectrum.png",
        ),
        rp.Section(
            "5. net1 vs net2, every layer pair",
            text.net1_vs_net2(
                DENSE_LAYER,
                pair_diag,
                float(nets[i_dense, i_logits]),
                float(nets[i_logits, i_dense]),
                comp["kept_x"],
                comp["kept_y"],
            ),
            image="fig5_net1_vs_net2.png",
        ),
        rp.Section(
            "6. Freeze Training schedule",
            text.freeze(k["threshold"], ft),
            table_html=rp.html_table(sched_rows, floatfmt="{:.3f}") + (ft_table or ""),
        ),
        rp.Section(
            "7. Compression",
            text.compression(DENSE_LAYER, comp),
            image="fig6_compression.png",
            table_html=rp.html_table(
                [
                    {"k": kk, "SVCCA directions": a, "top neurons": b}
                    for kk, a, b in zip(
                        comp["k"], comp["svcca_accuracy"], comp["neuron_accuracy"], strict=True
                    )
                ],
                floatfmt="{:.3f}",
            ),
        ),
        rp.Section(
            "8. Acceptance checks",
            "The paper's two findings, checked on this run's own output.",
            table_html=rp.html_table(
                [
                    {"check": name, "holds": "yes" if c["holds"] else "NO", "numbers": c["text"]}
                    for name, c in checks.items()
                ]
            ),
        ),
        rp.Section(
            "9. Results table",
            "Every score the jobs computed, one row per (layer pair, measure): the tidy "
            "table in results.csv (the first rows below).",
            table_html=rp.html_table(
                [{c: r[c] for c in columns} for r in rows],
                columns=columns,
                max_rows=30,
            ),
        ),
    ]
    rp.write_report(
        out,
        sections,
        title="svcca-dask demo: SVCCA on small nets trained on digits",
        intro=text.intro(summary.accuracy, t),
        results={"results table (CSV)": "results.csv", "summary (JSON)": "summary.json"},
    )
