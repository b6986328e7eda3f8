"""xarray opens an activation store as it is: every layer, conv layers of
different sizes included, and the measures read each layer's layout from it."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import svcca_dask as sd
from svcca_dask.store import create_store

xr = pytest.importorskip("xarray")  # in the test extra: CI always has it


def _resnet_like(path):
    rng = np.random.default_rng(0)
    s = create_store(path)
    shapes = {
        "conv1": (8, 16, 16),
        "layer1": (8, 16, 16),
        "layer2": (16, 8, 8),
        "layer3": (32, 4, 4),
        "layer4": (64, 2, 2),
    }
    for name, shape in shapes.items():
        s.append(name, rng.standard_normal((400, *shape)).astype(np.float32))
    s.append("fc", rng.standard_normal((400, 10)).astype(np.float32))
    s.append_labels(np.arange(400) % 10)
    return s, shapes


def test_open_zarr_opens_every_layer(tmp_path):
    s, shapes = _resnet_like(tmp_path / "r.zarr")
    ds = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    assert set(ds.data_vars) == {*shapes, "fc", "labels"}
    assert ds["layer2"].shape == (400, 16, 8, 8) and ds.sizes["sample"] == 400
    for name in shapes:
        assert s.info(name).dims == ("sample", "channel", "height", "width")


def test_measures_take_the_data_arrays(tmp_path):
    _resnet_like(tmp_path / "r.zarr")
    ds = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    p = str(tmp_path / "r.zarr")
    for conv in ("dft", "mean"):
        got = sd.cca(ds["layer1"], ds["layer2"], conv=conv).score  # no layout= needed
        assert got == pytest.approx(
            sd.cca(f"{p}/layer1", f"{p}/layer2", conv=conv).score, rel=1e-12
        )
    assert sd.linear_cka(ds["fc"], ds["layer4"], conv="mean").score == pytest.approx(
        sd.linear_cka(f"{p}/fc", f"{p}/layer4", conv="mean").score, rel=1e-12
    )


def test_layers_named_the_old_way_keep_working(tmp_path):
    """Stores written before the layer prefix: dimension_names are the roles."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3, 4, 4))
    a = zarr.create_array(
        tmp_path / "old.zarr",
        shape=x.shape,
        dtype="f8",
        dimension_names=("sample", "channel", "height", "width"),
    )
    a[:] = x
    got = sd.cca(str(tmp_path / "old.zarr"), x[:, ::-1], conv="mean", layout=(None, "NCHW"))
    assert got.score == pytest.approx(1.0, abs=1e-10)
