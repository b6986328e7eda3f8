"""Every chunk a store writes carries a CRC32C: a damaged chunk is an error
naming it, on the Zarr read and on the DFT path's direct read; never a score."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import svcca_dask as sd
from svcca_dask.store import create_store


def _store(path):
    rng = np.random.default_rng(0)
    s = create_store(path)
    s.append("fc", rng.standard_normal((400, 8)).astype(np.float32), chunk_samples=100)
    s.append("conv", rng.standard_normal((400, 3, 6, 6)).astype(np.float32), chunk_samples=100)
    return s


def _damages(raw: bytes) -> dict[str, bytes]:
    mid = len(raw) // 2
    flipped = bytearray(raw)
    flipped[mid] ^= 0x10
    last = bytearray(raw)
    last[-1] ^= 0x01
    return {
        "empty": b"",
        "truncated to 3": raw[:3],
        "truncated to 16": raw[:16],
        "truncated by half": raw[:mid],
        "one byte short": raw[:-1],
        "a bit flipped inside": bytes(flipped),
        "the checksum flipped": bytes(last),
        "zero-filled": bytes(len(raw)),
    }


def test_every_chunk_carries_a_crc32c(tmp_path):
    _store(tmp_path / "s.zarr")
    meta = json.loads((tmp_path / "s.zarr" / "fc" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]


@pytest.mark.parametrize("layer, conv", [("fc", None), ("conv", "dft"), ("conv", "mean")])
def test_a_damaged_chunk_never_gives_a_score(tmp_path, layer, conv):
    _store(tmp_path / "s.zarr")
    chunk = tmp_path / "s.zarr" / layer / "c" / "2" / "0"
    if layer == "conv":
        chunk = tmp_path / "s.zarr" / layer / "c" / "2" / "0" / "0" / "0"
    raw = chunk.read_bytes()
    path = str(tmp_path / "s.zarr" / layer)
    kw = {} if conv is None else {"conv": conv}
    good = sd.linear_cka(path, path, **kw).score
    assert good == pytest.approx(1.0)
    for what, bad in _damages(raw).items():
        chunk.write_bytes(bad)
        with pytest.raises(ValueError, match=r"stored chunk .* is damaged") as err:
            sd.linear_cka(path, path, **kw)
        assert "c/2/0" in str(err.value) or "rows 200-299" in str(err.value), what
    chunk.write_bytes(raw)
    assert sd.linear_cka(path, path, **kw).score == good  # repaired: the same score


def test_metadata_that_disagrees_with_the_data_is_an_error(tmp_path):
    _store(tmp_path / "s.zarr")
    meta_path = tmp_path / "s.zarr" / "fc" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["data_type"] = "float64"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="is damaged"):
        sd.cca(str(tmp_path / "s.zarr" / "fc"), np.zeros((400, 2)) + np.arange(800).reshape(400, 2))


def test_stores_written_without_checksums_still_read(tmp_path):
    from zarr.codecs import BloscCodec

    s = create_store(tmp_path / "old.zarr")
    x = np.random.default_rng(1).standard_normal((300, 5)).astype(np.float32)
    s.create_layer(
        "fc",
        sample_shape=(5,),
        dtype="float32",
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    )
    s.append("fc", x)
    assert [
        c["name"]
        for c in json.loads((tmp_path / "old.zarr" / "fc" / "zarr.json").read_text())["codecs"]
    ] == ["bytes", "blosc"]
    got = sd.cca(str(tmp_path / "old.zarr" / "fc"), x)
    assert got.score == pytest.approx(1.0, abs=1e-6)
    assert zarr.open_array(tmp_path / "old.zarr" / "fc").nchunks >= 1
