"""A chunk a Zarr array never stored: refused before any computation, naming
the rows (Zarr would silently read the fill value), unless missing_chunks='fill'."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

import svcca_dask as sd
from svcca_dask.store import IncompleteLayerError, create_store, open_store


def _plain(tmp_path, *, gone=(3, 4)):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 8))
    y = x[:, :5] + 0.5 * rng.standard_normal((1000, 5))
    a = zarr.create_array(tmp_path / "x.zarr", shape=x.shape, chunks=(100, 8), dtype="f8")
    a[:] = x
    for i in gone:
        os.remove(tmp_path / "x.zarr" / "c" / str(i) / "0")
    filled = x.copy()
    for i in gone:
        filled[i * 100 : (i + 1) * 100] = 0.0
    return str(tmp_path / "x.zarr"), y, filled


@pytest.mark.parametrize("measure", [sd.cca, sd.svcca, sd.pwcca, sd.linear_cka, sd.shape_distance])
def test_a_missing_chunk_is_refused_naming_the_rows(tmp_path, measure, monkeypatch):
    path, y, _ = _plain(tmp_path)
    import svcca_dask.stats as stats

    monkeypatch.setattr(stats, "compute", lambda *a: pytest.fail("a pass started"))
    with pytest.raises(
        IncompleteLayerError,
        match=r"has no stored chunk for rows 300-499 "
        r"\(2 of 10 chunks\).*missing_chunks='fill'",
    ):
        measure(path, y)


def test_fill_reads_what_zarr_reads(tmp_path):
    path, y, filled = _plain(tmp_path)
    got = sd.cca(path, y, missing_chunks="fill")
    np.testing.assert_allclose(got.coefficients, sd.cca(filled, y).coefficients, atol=1e-12)
    with pytest.raises(ValueError, match="missing_chunks must be 'error' or 'fill'"):
        sd.cca(path, y, missing_chunks="zero")
    m = sd.similarity_matrix({"x": path}, {"y": y}, measure="cka", missing_chunks="fill")
    assert m.scores[0, 0] == pytest.approx(sd.linear_cka(filled, y).score, abs=1e-12)
    with pytest.raises(IncompleteLayerError, match="rows 300-499"):
        sd.similarity_matrix({"x": path}, {"y": y}, measure="cka")


def test_a_project_store_lists_a_missing_chunk_as_incomplete(tmp_path):
    s = create_store(tmp_path / "s.zarr")
    s.append("fc", np.random.default_rng(0).standard_normal((3000, 4)), chunk_samples=1000)
    assert s.info("fc").complete
    os.remove(tmp_path / "s.zarr" / "fc" / "c" / "1" / "0")
    info = open_store(tmp_path / "s.zarr").info("fc")
    assert not info.complete and info.missing_chunks == 1
    assert "INCOMPLETE (1 chunks missing)" in info.summary()


def test_cli_and_jobs(tmp_path, capsys):
    from pipeline.cli import main

    path, y, filled = _plain(tmp_path)
    create_store(tmp_path / "b.zarr").append("fc", y)
    yp = str(tmp_path / "b.zarr" / "fc")
    assert main(["compare", path, yp, "--measure", "cka", "--no-progress"]) == 1
    assert "has no stored chunk for rows 300-499" in capsys.readouterr().err
    assert (
        main(
            [
                "compare",
                path,
                yp,
                "--measure",
                "cka",
                "--missing-chunks",
                "fill",
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == pytest.approx(sd.linear_cka(filled, yp).score, rel=1e-10)
