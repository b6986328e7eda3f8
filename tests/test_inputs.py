"""The input layer (svcca_dask.inputs): every kind of input users keep gives
the in-memory result, streamed without a copy, and rows that must line up do."""

from __future__ import annotations

import json
import os

import dask.array as da
import numpy as np
import pytest
import zarr

import svcca_dask as sd
from svcca_dask.inputs import BACKENDS, RowOrderError, open_layer, open_pair


def _pair(seed=0, n=1000):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 10)).astype(np.float32)
    y = (x[:, :6] @ rng.standard_normal((6, 12)) + rng.standard_normal((n, 12))).astype(np.float32)
    return x, y


def _score(x, y, **kw):
    return sd.svcca(x, y, **kw).score


# --------------------------------------------------------------------------- #
# every kind of input: the in-memory result to 1e-12


def _write_kinds(tmp_path, x, y):
    """Each kind of input over ``x`` and ``y``: name -> (x input, y input)."""
    torch = pytest.importorskip("torch")
    xr = pytest.importorskip("xarray")
    h5py = pytest.importorskip("h5py")
    datasets = pytest.importorskip("datasets")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    kinds = {}
    kinds["numpy"] = (x, y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    kinds["memmap"] = (
        np.load(tmp_path / "x.npy", mmap_mode="r"),
        np.load(tmp_path / "y.npy", mmap_mode="r"),
    )
    kinds["npy path"] = (str(tmp_path / "x.npy"), tmp_path / "y.npy")
    np.savez(tmp_path / "acts.npz", x=x, y=y)
    kinds["npz member"] = (str(tmp_path / "acts.npz/x"), str(tmp_path / "acts.npz/y"))
    kinds["torch"] = (torch.from_numpy(x), torch.from_numpy(y))
    kinds["dask"] = (da.from_array(x, chunks=(300, 10)), da.from_array(y, chunks=(250, 12)))
    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    g.create_array("x", data=x, chunks=(128, 10))
    g.create_array("y", data=y, chunks=(200, 12))
    kinds["zarr path"] = (str(tmp_path / "plain.zarr/x"), str(tmp_path / "plain.zarr/y"))
    kinds["zarr array"] = (g["x"], g["y"])
    kinds["xarray"] = (
        xr.DataArray(x, dims=("sample", "neuron")),
        xr.DataArray(y, dims=("sample", "n2")),
    )
    with h5py.File(tmp_path / "acts.h5", "w") as f:
        f.create_dataset("layers/x", data=x, chunks=(100, 10))
        f.create_dataset("layers/y", data=y)
    kinds["hdf5 path"] = (str(tmp_path / "acts.h5/layers/x"), str(tmp_path / "acts.h5/layers/y"))
    f = h5py.File(tmp_path / "acts.h5", "r")
    kinds["h5py dataset"] = (f["layers/x"], f["layers/y"])
    safetensors_numpy.save_file(
        {"resid": x[:600], "other": y[:600]}, str(tmp_path / "s-00001.safetensors")
    )
    safetensors_numpy.save_file(
        {"resid": x[600:], "other": y[600:]}, str(tmp_path / "s-00002.safetensors")
    )
    kinds["safetensors glob"] = (
        str(tmp_path / "s-*.safetensors/resid"),
        str(tmp_path / "s-*.safetensors/other"),
    )
    ds = datasets.Dataset.from_dict({"x": list(x), "y": list(y)})
    kinds["hf dataset column"] = (ds["x"], ds["y"])
    ds.save_to_disk(str(tmp_path / "hf"), max_shard_size="20KB")  # several Arrow shards
    kinds["hf save_to_disk"] = (str(tmp_path / "hf/x"), str(tmp_path / "hf/y"))
    for name, arr in (("mx", x), ("my", y)):
        folder = tmp_path / name
        folder.mkdir()
        for i, (a, b) in enumerate(((0, 400), (400, 1000))):
            arr[a:b].tofile(folder / f"shard_{i}.memmap")
            (folder / f"shard_{i}.meta").write_text(
                json.dumps({"shape": [b - a, arr.shape[1]], "dtype": "float32"})
            )
    kinds["memmap shards"] = (str(tmp_path / "mx"), str(tmp_path / "my"))
    return kinds


def test_each_kind_of_input_gives_the_in_memory_result(tmp_path):
    x, y = _pair()
    ref = _score(x.astype(np.float64), y.astype(np.float64))
    ref_cka = sd.linear_cka(x, y).score
    kinds = _write_kinds(tmp_path, x, y)
    seen = set()
    for name, (a, b) in kinds.items():
        assert _score(a, b) == pytest.approx(ref, rel=1e-12, abs=0), name  # same numbers, any door
        assert sd.linear_cka(a, b).score == pytest.approx(ref_cka, rel=1e-12), name
        seen.add(open_layer(a).kind)
    # the README lists these kinds: every backend but the catch-all is fed above
    assert {b.name for b in BACKENDS} - seen == {"array-like"}
    m = sd.similarity_matrix(
        {"x": kinds["safetensors glob"][0], "y": kinds["hf save_to_disk"][1]}, measure="cka"
    )
    assert m.scores[0, 1] == pytest.approx(ref_cka, rel=1e-12)  # matrices take them too


def test_the_readme_lists_every_kind_of_input():
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as fh:
        readme = fh.read()
    for backend in BACKENDS:
        assert backend.accepts in readme, backend.name


def test_array_likes_are_taken_as_numpy_takes_them():
    x, y = _pair()
    ref = _score(x, y)

    class HasArray:
        def __array__(self, dtype=None, copy=None):
            return x

    assert _score(HasArray(), y) == pytest.approx(ref, rel=1e-12)
    assert _score(x.tolist(), y) == pytest.approx(_score(np.asarray(x.tolist()), y), rel=1e-12)


# --------------------------------------------------------------------------- #
# no copy


def test_chunks_are_views_of_a_numpy_input_and_reads_of_a_memmap(tmp_path):
    x, _ = _pair(n=5000)
    from svcca_dask.io.chunks import task_readers

    layer = open_layer(x)
    first = task_readers(layer.data)[0]()  # what a task of the pass reads
    assert np.shares_memory(first, x)  # a view: the input is never copied
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    layer = open_layer(mm)
    assert layer.kind == "memmap" and layer.origin == str(tmp_path / "x.npy")
    graph = dict(layer.data.__dask_graph__())
    import pickle

    assert (
        max(len(pickle.dumps(v)) for v in graph.values()) < 10_000
    )  # tasks carry a path, not rows


def test_half_precision_tensors_give_the_float64_result():
    torch = pytest.importorskip("torch")
    x, y = _pair()
    for dtype in (torch.bfloat16, torch.float16):
        tx, ty = torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)
        # the values the tensors hold, exactly, in float64
        ref = _score(tx.double().numpy(), ty.double().numpy())
        assert _score(tx, ty) == pytest.approx(ref, rel=1e-12), dtype
        layer = open_layer(tx)
        assert layer.dtype == np.float32  # widened per chunk


def test_bfloat16_safetensors_and_shards_are_widened_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    x, _ = _pair()
    tx = torch.from_numpy(x).to(torch.bfloat16)
    st.save_file({"h": tx}, str(tmp_path / "a.safetensors"))
    exact = tx.double().numpy()
    got = open_layer(str(tmp_path / "a.safetensors/h")).data.compute()
    np.testing.assert_array_equal(got, exact)  # bf16 -> f32 is exact
    folder = tmp_path / "cache"
    folder.mkdir()
    tx.view(torch.int16).numpy().tofile(folder / "shard_0.memmap")
    (folder / "shard_0.meta").write_text(
        json.dumps({"shape": list(x.shape), "dtype": "torch.bfloat16"})
    )
    np.testing.assert_array_equal(open_layer(str(folder)).data.compute(), exact)


def test_a_gpu_tensor_is_a_clear_error():
    torch = pytest.importorskip("torch")
    on_meta = torch.empty(10, 3, device="meta")  # not host memory, as a GPU tensor is not
    with pytest.raises(TypeError, match=r"x is a tensor on meta: move it to the CPU first"):
        sd.cca(on_meta, np.zeros((10, 2)))


# --------------------------------------------------------------------------- #
# errors that say what was given and what is accepted


def test_unknown_inputs_name_what_they_got_and_list_the_kinds(tmp_path):
    with pytest.raises(
        TypeError, match=r"(?s)cannot open 'object' as activations\. Accepted:\n.*safetensors"
    ):
        sd.cca(object(), np.zeros((10, 2)))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TypeError, match=r"cannot open .*notes\.txt as activations"):
        sd.cca(str(tmp_path / "notes.txt"), np.zeros((10, 2)))
    np.savez_compressed(tmp_path / "c.npz", a=np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"compressed.*np\.savez"):
        sd.cca(str(tmp_path / "c.npz/a"), np.zeros((10, 2)))
    np.savez(tmp_path / "u.npz", a=np.zeros((10, 2)))
    with pytest.raises(KeyError, match=r"no member 'b'.*members: a"):
        open_layer(str(tmp_path / "u.npz/b"))


def test_containers_say_which_key_to_give(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    datasets = pytest.importorskip("datasets")
    st.save_file({"a": np.zeros((4, 2), np.float32)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(KeyError, match=r"name one of its tensors.*tensors: a"):
        open_layer(str(tmp_path / "f.safetensors"))
    ds = datasets.Dataset.from_dict({"acts": [[1.0, 2.0]] * 4, "id": list(range(4))})
    with pytest.raises(KeyError, match=r"name its column with key=.*columns: acts, id"):
        open_layer(ds)
    assert open_layer(ds, key="acts").shape == (4, 2)
    ragged = datasets.Dataset.from_dict({"acts": [[1.0, 2.0], [1.0], [1.0, 2.0], [3.0, 4.0]]})
    with pytest.raises(ValueError, match=r"equal-length lists"):
        open_layer(ragged, key="acts").data.compute()


# --------------------------------------------------------------------------- #
# rows that line up


def test_sample_ids_catch_one_swapped_pair_of_rows_inside_the_pass():
    x, y = _pair()
    ids = np.arange(len(x))
    swapped = ids.copy()
    swapped[[700, 701]] = swapped[[701, 700]]
    assert _score(x, y, sample_ids=(ids, ids)) == pytest.approx(_score(x, y), rel=1e-12)
    with pytest.raises(RowOrderError, match=r"row 700 is sample 701 in y .* and 700 in x"):
        _score(x, y, sample_ids=(ids, swapped))
    assert (
        sd.linear_cka(x, y, sample_ids=(ids, swapped), rows="trust").score > 0
    )  # said, not checked


def test_sample_ids_from_a_dataset_column():
    datasets = pytest.importorskip("datasets")
    x, y = _pair()
    a = datasets.Dataset.from_dict({"acts": list(x), "idx": np.arange(len(x))})
    b = (
        datasets.Dataset.from_dict({"acts": list(y), "idx": np.arange(len(x))})
        .shuffle(seed=0)
        .flatten_indices()
    )
    with pytest.raises(RowOrderError, match=r"do not hold the same samples"):
        sd.linear_cka(a["acts"], b["acts"], sample_ids="idx")
    lx, ly = open_pair(a["acts"], a["acts"], sample_ids="idx")
    assert lx.sample_ids is not None and ly.sample_ids is not None


# --------------------------------------------------------------------------- #
# memory: a memmap larger than the private-memory limit streams


_PROBE = r"""
import sys, threading, time
import numpy as np

def rss_anon():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

peak, done = [0], threading.Event()

def watch():
    while not done.is_set():
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.002)

import svcca_dask as sd
threading.Thread(target=watch, daemon=True).start()
x, y = np.load(sys.argv[1], mmap_mode="r"), np.load(sys.argv[2], mmap_mode="r")
score = sd.linear_cka(x, y).score
done.set()
print(repr(score), max(peak[0], rss_anon()))
"""


def test_a_memmap_larger_than_the_private_memory_limit_streams(tmp_path):
    import subprocess
    import sys

    limit = 400 * 2**20  # private memory (RssAnon) the whole process may reach
    n = 200_000
    rng = np.random.default_rng(0)
    for name, d in (("x", 576), ("y", 64)):
        m = np.lib.format.open_memmap(
            tmp_path / f"{name}.npy", mode="w+", dtype=np.float32, shape=(n, d)
        )
        for a in range(0, n, 50_000):
            m[a : a + 50_000] = rng.standard_normal((50_000, d), dtype=np.float32)
        m.flush()
        del m
    data = sum(os.path.getsize(tmp_path / f) for f in ("x.npy", "y.npy"))
    assert data > limit  # a copy of the inputs alone would break the limit
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    score, peak = out.stdout.split()
    assert int(peak) < limit, f"private memory peaked at {int(peak) / 2**20:.0f} MiB"
    x, y = np.load(tmp_path / "x.npy"), np.load(tmp_path / "y.npy")  # in memory, here
    assert float(score) == pytest.approx(sd.linear_cka(x, y).score, rel=1e-12)
