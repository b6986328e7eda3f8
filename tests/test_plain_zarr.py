"""Plain Zarr groups, written by other tools, as first-class stores: listed,
read, compared and used by jobs, with completeness read from their chunks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

import svcca_dask as sd
from svcca_dask.store import IncompleteLayerError, open_store


def _plain_group(path, *, fmt=3):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 6)).astype(np.float32)
    y = (x[:, :4] + 0.3 * rng.standard_normal((600, 4))).astype(np.float32)
    g = zarr.open_group(path, mode="w", zarr_format=fmt)
    for name, arr in (("fc1", x), ("fc2", y)):
        a = g.create_array(name, shape=arr.shape, chunks=(100, arr.shape[1]), dtype="float32")
        a[:] = arr
    return x, y


@pytest.mark.parametrize("fmt", [3, 2])
def test_list_read_and_compare_a_plain_group(tmp_path, fmt):
    x, y = _plain_group(tmp_path / "p.zarr", fmt=fmt)
    s = open_store(tmp_path / "p.zarr")
    assert s.plain and s.layer_names() == ["fc1", "fc2"]
    infos = sd.list_layers(tmp_path / "p.zarr")
    assert [i.complete for i in infos] == [True, True]
    np.testing.assert_array_equal(sd.read_layer(tmp_path / "p.zarr", "fc1").data.compute(), x)
    got = sd.cca(f"{tmp_path}/p.zarr/fc1", f"{tmp_path}/p.zarr/fc2")
    np.testing.assert_allclose(got.coefficients, sd.cca(x, y).coefficients, atol=1e-12)
    with pytest.raises(ValueError, match=r"plain Zarr group .* opens read-only"):
        open_store(tmp_path / "p.zarr", mode="r+")


def test_layers_command_says_plain_and_incomplete(tmp_path, capsys):
    from pipeline.cli import main

    _plain_group(tmp_path / "p.zarr")
    os.remove(tmp_path / "p.zarr" / "fc2" / "c" / "2" / "0")
    assert main(["layers", str(tmp_path / "p.zarr")]) == 0
    out = capsys.readouterr().out
    assert "a plain Zarr group" in out
    assert "fc1" in out and "complete" in out and "INCOMPLETE (1 chunks missing)" in out
    assert main(["layers", str(tmp_path / "p.zarr"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["plain"] for r in rows] == [True, True] and rows[1]["missing_chunks"] == 1
    with pytest.raises(IncompleteLayerError, match="rows 200-299"):
        sd.read_layer(tmp_path / "p.zarr", "fc2")


def test_a_job_over_plain_groups_reruns_only_what_changed(tmp_path):
    from pipeline.jobs import parse_job
    from pipeline.runner import run_job

    x, _ = _plain_group(tmp_path / "a.zarr")
    _plain_group(tmp_path / "b.zarr")
    job = parse_job(
        {
            "output": "out",
            "stores": {"a": "a.zarr", "b": "b.zarr"},
            "measures": ["cka"],
            "pairs": "same-name",
            "cluster": "threads",
        },
        base_dir=str(tmp_path),
    )
    first = run_job(job, progress=False)
    assert first.computed == 2
    assert run_job(job, progress=False).computed == 0  # nothing changed
    g = zarr.open_group(tmp_path / "b.zarr", mode="r+")
    g["fc1"][:] = np.zeros_like(x)  # rewritten by another tool: the zeros are not stored
    g["fc1"][:] = x[::-1]
    again = run_job(job, progress=False)
    assert again.computed == 1  # only the pair of the rewritten layer
