"""Debiased linear CKA (Kornblith et al. 2019 with the unbiased HSIC of Song et
al. 2012) from feature-space statistics of one pass: against the n x n Gram
estimator, in matrices, jobs and the CLI."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from reference import debiased_linear_cka as ref_debiased

import svcca_dask as sd
from svcca_dask.stats import accumulate


def _pair(n=600, seed=0, shift=1e4):
    rng = np.random.default_rng(seed)
    x = 2 * rng.standard_normal((n, 30)) + shift
    y = x[:, :10] @ rng.standard_normal((10, 20)) + 3 * rng.standard_normal((n, 20)) - shift
    return x, y


def test_equals_the_gram_estimator_on_large_means_from_many_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("svcca_dask._config.DEFAULT_CHUNK_BYTES", 8 * 50 * 50)  # ~12 tasks
    x, y = _pair()
    want = ref_debiased(x, y)
    zx = zarr.create_array(tmp_path / "x.zarr", shape=x.shape, chunks=(37, 30), dtype="f8")
    zx[:] = x
    for xs, ys in ((x, y), (zx, da.from_array(y, chunks=(53, 20)))):
        for split_every in (2, 8):
            got = sd.linear_cka(xs, ys, debiased=True, split_every=split_every)
            assert got.debiased and got.n_samples == 600
            assert got.score == pytest.approx(want, abs=1e-8)
    plain = sd.linear_cka(x, y)
    assert not plain.debiased and plain.score != pytest.approx(want, abs=1e-3)


def test_per_sample_norm_statistics_merge_exactly(monkeypatch):
    monkeypatch.setattr("svcca_dask._config.DEFAULT_CHUNK_BYTES", 8 * 40 * 30)
    x, y = _pair(n=500, seed=3)
    m = accumulate(
        [da.from_array(x, chunks=41), da.from_array(y, chunks=41)], norms=True, split_every=3
    )
    a = np.sum((x - x.mean(0)) ** 2, axis=1)
    b = np.sum((y - y.mean(0)) ** 2, axis=1)
    want = np.array([[a @ a, a @ b], [b @ a, b @ b]])
    np.testing.assert_allclose(m.norms, want, rtol=1e-12)


def test_unrelated_layers_score_near_zero_where_plain_cka_does_not():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((300, 40)), rng.standard_normal((300, 40))
    plain = sd.linear_cka(x, y).score
    debiased = sd.linear_cka(x, y, debiased=True).score
    assert plain > 0.1
    assert abs(debiased) < 0.02
    assert debiased == pytest.approx(ref_debiased(x, y), abs=1e-10)


def test_conv_layers_and_matrices():
    rng = np.random.default_rng(2)
    conv = rng.standard_normal((200, 3, 4, 4)) + 50
    fc = conv.mean(axis=(2, 3)) @ rng.standard_normal((3, 5)) + rng.standard_normal((200, 5))
    got = sd.linear_cka(conv, fc, conv="mean", layout="NCHW", debiased=True)
    assert got.score == pytest.approx(ref_debiased(conv.mean(axis=(2, 3)), fc), abs=1e-10)
    with pytest.raises(ValueError, match="debiased=True is not available with conv='dft'"):
        sd.linear_cka(conv, fc, layout="NCHW", debiased=True)
    xs = {f"a{i}": rng.standard_normal((300, 6 + i)) + 100 for i in range(3)}
    ys = {
        "b0": xs["a0"][:, :4] + rng.standard_normal((300, 4)),
        "b1": rng.standard_normal((300, 5)),
    }
    for other, width in ((ys, 8192), (None, 15)):  # disjoint sides; tiles of a self matrix
        m = sd.similarity_matrix(xs, other, measure="cka", debiased=True, max_width=width)
        cols = other or xs
        want = np.array([[ref_debiased(xs[a], cols[b]) for b in cols] for a in xs])
        np.testing.assert_allclose(m.scores, want, atol=1e-10)
        assert all(r.debiased for r in m.results.values())


def test_bad_values_are_clear_errors():
    x, y = _pair(n=50)
    with pytest.raises(TypeError, match="debiased must be True or False"):
        sd.linear_cka(x, y, debiased="yes")
    with pytest.raises(TypeError, match="debiased must be True or False"):
        sd.similarity_matrix({"a": x}, measure="cka", debiased=1)
    with pytest.raises(ValueError, match="debiased CKA needs at least 4 samples, got 3"):
        sd.linear_cka(x[:3], y[:3], debiased=True)
    with pytest.raises(ValueError, match=r"per-sample squared norms .* overflow float64"):
        sd.linear_cka(x * 1e100, y, debiased=True)


def test_job_and_cli(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.jobs import parse_job
    from pipeline.runner import run_job
    from svcca_dask.store import create_store

    x, y = _pair(n=300)
    for name, arr in (("a", x), ("b", y)):
        create_store(tmp_path / f"{name}.zarr").append("fc", arr)
    px, py = str(tmp_path / "a.zarr" / "fc"), str(tmp_path / "b.zarr" / "fc")
    want = sd.linear_cka(px, py, debiased=True).score  # the stores hold float32
    assert want == pytest.approx(ref_debiased(x, y), abs=1e-4)
    assert main(["compare", px, py, "--measure", "cka", "--debiased", "--no-progress"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(want, abs=1e-6)
    job = parse_job(
        {
            "output": "out",
            "stores": {"a": "a.zarr", "b": "b.zarr"},
            "measures": ["cka", "svcca"],
            "pairs": "all",
            "options": {"debiased": True, "keep": 5},
            "cluster": "threads",
        },
        base_dir=str(tmp_path),
    )
    rows = run_job(job, progress=False).rows
    (row,) = [r for r in rows if r["measure"] == "cka" and r["x_store"] != r["y_store"]][:1]
    assert row["score"] == pytest.approx(want, abs=1e-10)
    from pipeline.jobs import JobError

    with pytest.raises(JobError, match=r"options\.debiased must be true or false"):
        parse_job(
            {
                "output": "o",
                "stores": {"a": "a.zarr"},
                "measures": ["cka"],
                "pairs": "all",
                "options": {"debiased": "yes"},
            },
            base_dir=str(tmp_path),
        )
