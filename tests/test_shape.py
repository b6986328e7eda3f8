"""Linear shape metrics (Williams et al. 2021; netrep's LinearMetric) from
covariance statistics, against the data-space definition."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from reference import cca as ref_cca
from reference import shape_distance as ref_shape

import svcca_dask as sd


def _pair(n=400, dx=12, dy=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dx)) * np.linspace(0.5, 3, dx) + 5
    y = x[:, :8] @ rng.standard_normal((8, dy)) + 0.5 * rng.standard_normal((n, dy)) - 2
    return x, y


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("metric", ["angular", "euclidean"])
@pytest.mark.parametrize("widths", [(12, 9), (9, 12), (10, 10)])
def test_equals_the_data_space_definition(alpha, metric, widths):
    x, y = _pair(dx=widths[0], dy=widths[1])
    got = sd.shape_distance(da.from_array(x, chunks=70), y, alpha=alpha, metric=metric)
    want = ref_shape(x, y, alpha, metric)
    assert got.score == pytest.approx(want, rel=1e-10, abs=1e-8)
    assert got.distance == got.score and got.alpha == alpha and got.metric == metric


def test_alpha_zero_is_the_angle_of_the_mean_canonical_correlation():
    x, y = _pair(dx=10, dy=10)
    rho = ref_cca(x, y)[0]
    got = sd.shape_distance(x, y, alpha=0.0).score
    assert got == pytest.approx(np.arccos(np.mean(rho)), abs=1e-8)


def test_a_rotated_copy_is_at_distance_zero():
    x, _ = _pair()
    q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((12, 12)))
    assert sd.shape_distance(x, x @ q + 7).score == pytest.approx(0.0, abs=1e-6)
    assert sd.shape_distance(x, x @ q, metric="euclidean").score == pytest.approx(0.0, abs=1e-5)


def test_in_matrices_jobs_and_the_cli(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.jobs import JobError, parse_job
    from pipeline.runner import run_job
    from svcca_dask.store import create_store

    x, y = _pair()
    xs = {"a": x, "b": y}
    m = sd.similarity_matrix(xs, measure="shape", alpha=0.5)
    want = np.array([[ref_shape(xs[i], xs[j], 0.5, "angular") for j in xs] for i in xs])
    np.testing.assert_allclose(m.scores, want, atol=1e-7)  # arccos near 0: sqrt of rounding
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got 2"):
        sd.similarity_matrix(xs, measure="shape", alpha=2)
    for name, arr in (("a", x), ("b", y)):
        create_store(tmp_path / f"{name}.zarr").append("fc", arr)
    px, py = str(tmp_path / "a.zarr" / "fc"), str(tmp_path / "b.zarr" / "fc")
    ref = sd.shape_distance(px, py, alpha=0.0, metric="euclidean").score
    argv = ["compare", px, py, "--measure", "shape", "--alpha", "0", "--metric", "euclidean"]
    assert main([*argv, "--no-progress"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(ref, rel=1e-6)
    job = parse_job(
        {
            "output": "out",
            "stores": {"a": "a.zarr", "b": "b.zarr"},
            "measures": ["shape"],
            "pairs": "same-name",
            "options": {"alpha": 0.0, "metric": "euclidean"},
            "cluster": "threads",
        },
        base_dir=str(tmp_path),
    )
    (row,) = run_job(job, progress=False).rows
    assert row["score"] == pytest.approx(ref, rel=1e-12)
    with pytest.raises(JobError, match=r"options\.metric must be 'angular' or 'euclidean'"):
        parse_job(
            {
                "output": "o",
                "stores": {"a": "a.zarr", "b": "b.zarr"},
                "measures": ["shape"],
                "options": {"metric": "cosine"},
            },
            base_dir=str(tmp_path),
        )


def test_bad_options_and_conv():
    x, y = _pair()
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        sd.shape_distance(x, y, alpha=-0.1)
    with pytest.raises(ValueError, match="metric must be 'angular' or 'euclidean'"):
        sd.shape_distance(x, y, metric="cosine")
    conv = np.random.default_rng(0).standard_normal((50, 3, 4, 4))
    with pytest.raises(ValueError, match="not 'dft'"):
        sd.shape_distance(conv, conv, conv="dft", layout="NCHW")
    got = sd.shape_distance(conv, conv[:, ::-1], layout="NCHW")  # mean: channels permuted
    assert got.score == pytest.approx(0.0, abs=1e-6)
