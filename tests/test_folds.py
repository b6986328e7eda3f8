"""Held-out scores (folds=): directions fit on k - 1 sample blocks, scored on the last."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr

import svcca_dask as sd
from svcca_dask.folds import fold_bounds


def _independent(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((400, 120)), rng.standard_normal((400, 120))


@pytest.mark.parametrize("measure", [sd.cca, sd.pwcca, sd.svcca])
def test_unrelated_layers_score_near_zero_held_out_where_in_sample_overfits(measure):
    x, y = _independent()
    kw = {"keep": 100} if measure is sd.svcca else {}
    r = measure(x, y, folds=5, **kw)
    assert r.in_sample_score > 0.4
    assert abs(r.score) < 0.05
    assert r.fold_scores.shape == (5,) and r.score == pytest.approx(r.fold_scores.mean())
    assert r.warnings == ()  # the sample-size warning is about in-sample scores
    with pytest.warns(sd.SampleSizeWarning):  # the in-sample score warns
        plain = measure(x, y, **kw)
    assert plain.score == pytest.approx(r.in_sample_score, rel=1e-12)


def test_held_out_correlations_by_hand():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((300, 4))
    x = z @ rng.standard_normal((4, 6)) + 0.5 * rng.standard_normal((300, 6)) + 50
    y = z @ rng.standard_normal((4, 5)) + 0.5 * rng.standard_normal((300, 5))
    r = sd.cca(da.from_array(x, chunks=41), y, folds=3)
    want = []
    for a, b in fold_bounds(300, 3):
        train = np.r_[0:a, b:300]
        fit = sd.cca(x[train], y[train])
        u, v = fit.transform(x[a:b]), fit.transform(y[a:b], side="y")
        want.append(np.mean([np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(u.shape[1])]))
    np.testing.assert_allclose(r.fold_scores, want, atol=1e-10)
    full = sd.cca(x, y)
    np.testing.assert_allclose(r.coefficients, full.coefficients, atol=1e-12)  # the whole fit
    assert 0.5 < r.score < full.score


def test_one_pass_and_bad_values(tmp_path, monkeypatch):
    x, y = _independent()
    store = zarr.create_array(tmp_path / "x.zarr", shape=x.shape, chunks=(50, 120), dtype="f8")
    store[:] = x
    passes = []
    import svcca_dask.folds as folds

    real = folds.compute
    monkeypatch.setattr(folds, "compute", lambda *g: passes.append(len(g)) or real(*g))
    sd.cca(store, y, folds=4)
    assert passes == [4]  # one compute, a tree per fold
    with pytest.raises(ValueError, match="folds must be None or an int >= 2, got 1"):
        sd.cca(x, y, folds=1)
    with pytest.raises(ValueError, match=r"folds=200 needs at least 800 samples"):
        sd.cca(x, y, folds=200)
    conv = np.zeros((40, 2, 3, 3))
    with pytest.raises(ValueError, match="folds= is not available with conv='dft'"):
        sd.svcca(conv, conv, layout="NCHW", folds=2)
    with pytest.raises(ValueError, match="folds= fits each fold's SVD"):
        sd.svcca(x, y, folds=2, svd="randomized")


def test_in_jobs_and_the_cli(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.jobs import parse_job
    from pipeline.runner import run_job
    from svcca_dask.store import create_store

    x, y = _independent()
    for name, arr in (("a", x), ("b", y)):
        s = create_store(tmp_path / f"{name}.zarr")
        s.append("l1", arr)
        s.append("l2", arr[:, :30])
    px, py = str(tmp_path / "a.zarr" / "l1"), str(tmp_path / "b.zarr" / "l1")
    assert (
        main(["compare", px, py, "--measure", "cca", "--folds", "4", "--json", "--no-progress"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    ref = sd.cca(px, py, folds=4)
    assert out["score"] == pytest.approx(ref.score, rel=1e-12)
    assert out["in_sample_score"] > 0.4 and len(out["fold_scores"]) == 4
    job = parse_job(
        {
            "output": "out",
            "stores": {"a": "a.zarr", "b": "b.zarr"},
            "measures": ["cca", "cka"],
            "pairs": "all",
            "options": {"folds": 4},
            "cluster": "threads",
        },
        base_dir=str(tmp_path),
    )
    rows = run_job(job, progress=False).rows  # folds: pair by pair, not one matrix pass
    cca_rows = [r for r in rows if r["measure"] == "cca"]
    assert len(cca_rows) == 4 and all(abs(r["score"]) < 0.1 for r in cca_rows)
