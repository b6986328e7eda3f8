"""Activation stores: layout, append, completeness, and the measures refusing incomplete layers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

import svcca_dask as sd
from svcca_dask.store import (
    FORMAT,
    IncompleteLayerError,
    create_store,
    list_layers,
    open_store,
    read_layer,
)
from svcca_dask.store.format import ATTR


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_layout_is_zarr_v3_with_dimension_names(tmp_path, rng):
    path = tmp_path / "acts.zarr"
    s = create_store(path, provenance={"model_class": "Net"})
    conv = rng.standard_normal((10, 3, 4, 4)).astype("float32")
    s.append("layer1.0.conv1", conv[:6], chunk_samples=4)
    s.append("layer1.0.conv1", conv[6:])
    s.append("fc", rng.standard_normal((10, 5)))
    s.append_labels(np.arange(10))

    group_meta = json.loads((path / "zarr.json").read_text())
    assert group_meta["zarr_format"] == 3  # a Zarr v3 group
    assert group_meta["attributes"][ATTR]["format"] == FORMAT  # the store marker
    assert group_meta["attributes"]["provenance"] == {"model_class": "Net"}
    arr = zarr.open_array(str(path / "layer1.0.conv1"), mode="r")
    # every axis but sample named for its layer (xarray opens layers of different sizes)
    assert arr.metadata.dimension_names == (
        "sample",
        "layer1.0.conv1.channel",
        "layer1.0.conv1.height",
        "layer1.0.conv1.width",
    )
    assert s.info("layer1.0.conv1").dims == ("sample", "channel", "height", "width")  # roles
    assert arr.chunks == (4, 3, 4, 4)  # chunked along samples only
    assert zarr.open_array(str(path / "fc"), mode="r").metadata.dimension_names == (
        "sample",
        "fc.neuron",
    )
    assert zarr.open_array(str(path / "fc"), mode="r").dtype == np.float32  # float64 -> float32
    # nothing pickled: every metadata document is JSON
    for root, _, files in os.walk(path):
        for f in files:
            if f == "zarr.json":
                with open(os.path.join(root, f)) as fh:
                    json.load(fh)

    data = read_layer(path, "layer1.0.conv1")
    assert data.dims == ("sample", "channel", "height", "width")
    np.testing.assert_array_equal(data.data.compute(), conv)  # appends concatenate in order
    np.testing.assert_array_equal(open_store(path).labels().compute(), np.arange(10))


def test_list_layers_reports_shape_dims_chunks_size(tmp_path, rng):
    s = create_store(tmp_path / "a.zarr")
    s.append("fc", rng.standard_normal((8, 5)).astype("float32"), chunk_samples=3)
    s.append_labels(np.zeros(8, dtype=int))
    infos = list_layers(tmp_path / "a.zarr")
    assert [i.name for i in infos] == ["fc"]  # labels are not a layer
    (fc,) = infos
    assert fc.shape == (8, 5) and fc.chunks == (3, 5) and fc.dims == ("sample", "neuron")
    assert fc.nbytes == 8 * 5 * 4 and fc.nbytes_stored > 0
    assert fc.complete and fc.complete_samples == 8
    assert "shape=8x5" in fc.summary() and "complete" in fc.summary()
    assert fc.to_dict()["complete"] is True


def test_measures_read_complete_store_layers(tmp_path, rng):
    x = rng.standard_normal((60, 4))
    s = create_store(tmp_path / "a.zarr")
    for i in range(0, 60, 16):
        s.append("x", x[i : i + 16], chunk_samples=16)
    got = sd.cca(str(tmp_path / "a.zarr" / "x"), x.astype("float32")).coefficients
    np.testing.assert_allclose(got, 1.0, atol=1e-6)  # the stored layer is x itself


def test_interrupted_append_is_refused_then_overwritten(tmp_path, rng, monkeypatch):
    x = rng.standard_normal((30, 4)).astype("float32")
    s = create_store(tmp_path / "a.zarr")
    s.append("x", x[:10], chunk_samples=8)

    # crash after the data is written but before the complete count is bumped
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(s), "_set_meta", crash)
    with pytest.raises(KeyboardInterrupt):
        s.append("x", np.full((10, 4), 99.0, dtype="float32"))
    monkeypatch.undo()

    s2 = open_store(tmp_path / "a.zarr")
    info = s2.info("x")
    assert info.shape[0] == 20 and info.complete_samples == 10  # the half batch is not counted
    with pytest.raises(IncompleteLayerError, match="10 of its 20 samples"):
        sd.svcca(str(tmp_path / "a.zarr" / "x"), x[:20])  # measures refuse it
    with pytest.raises(IncompleteLayerError):
        s2.read("x")
    np.testing.assert_array_equal(s2.read("x", check=False).data.compute(), x[:10])

    s3 = open_store(tmp_path / "a.zarr", mode="r+")
    s3.append("x", x[10:30])  # goes after the complete samples, over the unfinished rows
    np.testing.assert_array_equal(s3.read("x").data.compute(), x)


def test_missing_chunk_is_refused_not_read_as_fill(tmp_path, rng):
    x = rng.standard_normal((40, 3)).astype("float32")
    s = create_store(tmp_path / "a.zarr")
    s.append("x", x, chunk_samples=10)
    chunk = tmp_path / "a.zarr" / "x" / "c" / "2" / "0"
    assert chunk.exists()
    chunk.unlink()
    with pytest.raises(IncompleteLayerError, match="missing 1 of its 4 chunks"):
        sd.linear_cka(str(tmp_path / "a.zarr" / "x"), x)


@pytest.mark.filterwarnings("ignore::svcca_dask.SampleSizeWarning")  # small data, on purpose
def test_writing_flag_and_expected_samples_refused(tmp_path, rng):
    x = rng.standard_normal((20, 3)).astype("float32")
    s = create_store(tmp_path / "a.zarr")
    s.append("x", x[:10], expected_samples=20)
    with pytest.raises(IncompleteLayerError, match="10 of 20"):
        sd.cca(str(tmp_path / "a.zarr" / "x"), x[:10])  # a short layer, not a complete one
    s.append("x", x[10:])
    s.set_writing(["x"], True)
    with pytest.raises(IncompleteLayerError, match="has not finished"):
        sd.cca(zarr.open_array(str(tmp_path / "a.zarr" / "x"), mode="r"), x)
    s.set_writing(["x"], False)
    assert sd.cca(str(tmp_path / "a.zarr" / "x"), x).score > 0.999


@pytest.mark.filterwarnings("ignore::svcca_dask.SampleSizeWarning")  # small data, on purpose
def test_plain_zarr_arrays_are_not_checked(tmp_path, rng):
    x = rng.standard_normal((20, 3))
    zarr.create_array(str(tmp_path / "plain.zarr"), data=x)
    assert sd.cca(str(tmp_path / "plain.zarr"), x).score > 0.999  # no store attributes: as before


def test_errors_are_clear(tmp_path, rng):
    s = create_store(tmp_path / "a.zarr")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        create_store(tmp_path / "a.zarr")
    s.append("fc", rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match=r"batch samples have shape \(5,\)"):
        s.append("fc", rng.standard_normal((4, 5)))
    with pytest.raises(KeyError, match="layers: fc"):
        s.read("nope")
    with pytest.raises(ValueError, match="overflow float16"):
        s.append("h", np.full((2, 3), 1e6), dtype="float16")
    with pytest.raises(TypeError, match="float32 or float16"):
        s.create_layer("ints", sample_shape=(3,), dtype="int32")
    with pytest.raises(ValueError, match="dims"):
        s.create_layer("c", sample_shape=(2, 3), dims=("sample", "neuron"))
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    assert open_store(tmp_path / "g.zarr").plain  # a plain group opens read-only
    with pytest.raises(ValueError, match=r"plain Zarr group .*activation-store marker"):
        open_store(tmp_path / "g.zarr", mode="r+")
    with pytest.raises(FileNotFoundError, match="no activation store"):
        open_store(tmp_path / "missing.zarr")
    assert create_store(tmp_path / "a.zarr", overwrite=True).layer_names() == []


def test_float16_layers_and_recreated_store_id(tmp_path, rng):
    x = rng.standard_normal((12, 3))
    s = create_store(tmp_path / "a.zarr")
    s.append("h", x, dtype="float16")
    assert s.info("h").dtype == "float16"
    np.testing.assert_allclose(s.read("h").data.compute(), x, rtol=1e-3, atol=1e-3)
    old = s.store_id
    assert create_store(tmp_path / "a.zarr", overwrite=True).store_id != old  # new identity


def test_conv_and_matrix_paths_refuse_incomplete_layers(tmp_path, rng):
    s = create_store(tmp_path / "a.zarr")
    s.append("conv", rng.standard_normal((20, 3, 4, 4)), expected_samples=40)
    path = s.layer_path("conv")
    for conv in ("dft", "mean"):  # 4-D inputs go through the same check
        with pytest.raises(IncompleteLayerError, match="20 of 40"):
            sd.linear_cka(path, path, conv=conv)
    with pytest.raises(IncompleteLayerError, match="20 of 40"):
        sd.similarity_matrix({"conv": path}, measure="cka", conv="mean")
