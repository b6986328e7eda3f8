"""The report builder on small inputs: figures (PNG, labeled axes, colorbars) and index.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from pipeline import report
from pipeline.report import (
    Section,
    html_table,
    plot_accuracy_vs_k,
    plot_class_sensitivity,
    plot_heatmaps,
    plot_neurons_vs_directions,
    plot_spectrum,
    write_report,
)


@pytest.fixture
def figures(monkeypatch):
    """Capture each Figure the plot functions save."""
    seen = []
    save = report._save

    def capture(fig, path):
        seen.append(fig)
        return save(fig, path)

    monkeypatch.setattr(report, "_save", capture)
    return seen


def _is_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG file
    h, w = imread(path).shape[:2]
    return h, w


def _labeled(ax) -> bool:
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_heatmaps_have_one_panel_per_checkpoint_and_a_colorbar(tmp_path, figures) -> None:
    rng = np.random.default_rng(0)
    mats = {f"{k}%": rng.random((3, 4)) for k in (0, 35, 75, 100)}
    path = plot_heatmaps(
        mats,
        tmp_path / "h.png",
        rows=list("abc"),
        cols=list("wxyz"),
        row_label="layer at k%",
        col_label="layer at 100%",
        title="t",
    )
    h, w = _is_png(path)
    assert w > h  # four panels side by side
    fig = figures[-1]
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == list(mats)  # one panel per matrix, in order
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "SVCCA similarity"]
    assert len(bars) == 1  # one shared, labeled colorbar
    assert panels[0].get_ylabel() == "layer at k%"
    assert all(ax.get_xlabel() == "layer at 100%" for ax in panels)
    assert [t.get_text() for t in panels[0].get_yticklabels()] == list("abc")
    np.testing.assert_array_equal(
        panels[1].images[0].get_array(), mats["35%"]
    )  # data drawn as given


def test_heatmaps_reject_wrong_shapes(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"panel 'p' has shape \(2, 2\), expected .*\(3, 2\)"):
        plot_heatmaps(
            {"p": np.zeros((2, 2))},
            tmp_path / "x.png",
            rows=list("abc"),
            cols=list("ab"),
            row_label="r",
            col_label="c",
            title="t",
        )
    with pytest.raises(ValueError, match="empty"):
        plot_heatmaps(
            {}, tmp_path / "x.png", rows=[], cols=[], row_label="r", col_label="c", title="t"
        )


def test_neurons_vs_directions_marks_class_boundaries(tmp_path, figures) -> None:
    labels = np.repeat([0, 1, 2], [5, 7, 4])
    rng = np.random.default_rng(1)
    pair = (rng.standard_normal((16, 2)), rng.standard_normal((16, 2)))
    _is_png(
        plot_neurons_vs_directions(
            pair,
            pair,
            labels,
            tmp_path / "f1.png",
            layer="fc1",
            neuron_ids=([3, 1], [0, 2]),
            correlations=[0.9, 0.8],
        )
    )
    axes = figures[-1].axes
    assert len(axes) == 4 and all(ax.get_ylabel() for ax in axes)
    assert all(_labeled(ax) for ax in axes[2:])  # bottom row has the x label
    boundaries = sorted({ln.get_xdata()[0] for ln in axes[0].lines if ln.get_linestyle() == "--"})
    assert boundaries == [4.5, 11.5]  # between classes 0|1 and 1|2
    assert "0.90" in axes[2].get_title()  # canonical correlation in the title
    assert "neuron 3" in axes[0].get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="sorted by class"):
        plot_neurons_vs_directions(
            pair, pair, np.array([0] * 8 + [1] * 4 + [0] * 4), tmp_path / "bad.png", layer="fc1"
        )
    with pytest.raises(ValueError, match="n_samples"):
        plot_neurons_vs_directions(
            (pair[0][:5], pair[1]), pair, labels, tmp_path / "bad.png", layer="fc1"
        )


def test_spectrum_class_sensitivity_and_compression_figures(tmp_path, figures) -> None:
    _is_png(
        plot_spectrum(
            np.linspace(1, 0.2, 10),
            np.linspace(0.3, 0, 10),
            tmp_path / "s.png",
            pair="fc1 net1 vs net2",
        )
    )
    ax = figures[-1].axes[0]
    assert _labeled(ax) and len(ax.lines) == 2  # the pair and the baseline
    _is_png(
        plot_class_sensitivity(
            np.random.default_rng(2).random((5, 10)),
            tmp_path / "c.png",
            layers=list("abcde"),
            classes=[str(i) for i in range(10)],
            title="net1",
        )
    )
    assert any("class logit" in ax.get_ylabel() for ax in figures[-1].axes)  # colorbar label
    _is_png(
        plot_accuracy_vs_k(
            {"SVCCA": ([1, 2, 4], [0.3, 0.6, 0.9])}, tmp_path / "a.png", layer="fc1", reference=0.95
        )
    )
    assert _labeled(figures[-1].axes[0])
    with pytest.raises(ValueError, match="1-D"):
        plot_spectrum(np.zeros((2, 2)), np.zeros(3), tmp_path / "s.png", pair="p")
    with pytest.raises(ValueError, match="3 values of k but 2"):
        plot_accuracy_vs_k({"x": ([1, 2, 3], [0.1, 0.2])}, tmp_path / "a.png", layer="fc1")


def test_html_table_escapes_formats_and_truncates() -> None:
    rows = [{"layer": "<conv1>", "score": 0.123456}, {"layer": "bn1", "score": 1.0}]
    t = html_table(rows, max_rows=1)
    assert "&lt;conv1&gt;" in t and "<conv1>" not in t  # escaped
    assert "0.1235" in t  # floats formatted
    assert "bn1" not in t and "1 more rows" in t  # truncated, and says so
    assert html_table(rows, columns=["score"]).count("<td>") == 2


def test_write_report_links_figures_text_and_results(tmp_path) -> None:
    plot_spectrum(np.array([0.9, 0.5]), np.array([0.2, 0.1]), tmp_path / "spec.png", pair="p")
    (tmp_path / "results.csv").write_text("x_store,score\na,1\n")
    index = write_report(
        tmp_path,
        [
            Section("Spectrum", "What it means.\n\nSecond paragraph & more.", image="spec.png"),
            Section("Schedule", "A table.", table_html=html_table([{"layer": "conv1", "t": 0.35}])),
        ],
        title="Demo <report>",
        intro="Intro text.",
        results={"results table (CSV)": "results.csv"},
    )
    text = index.read_text()
    assert index == tmp_path / "index.html"
    assert "<title>Demo &lt;report&gt;</title>" in text
    assert '<img src="spec.png"' in text and '<a href="results.csv">' in text
    assert "<p>Second paragraph &amp; more.</p>" in text  # paragraphs, escaped
    assert text.index("Spectrum") < text.index("Schedule")  # sections in order
    assert "<td>conv1</td>" in text
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        write_report(tmp_path, [Section("x", "y", image="missing.png")], title="t")
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        write_report(tmp_path, [], title="t", results={"r": "nope.csv"})
