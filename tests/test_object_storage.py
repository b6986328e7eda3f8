"""Stores on object storage: an S3-compatible server (moto's) started on
127.0.0.1 for the module and stopped after; s3:// URLs with storage_options,
and the standard AWS_* variables for the CLI."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

import svcca_dask as sd
from svcca_dask.store import create_store, open_store

s3fs = pytest.importorskip("s3fs")  # in the test extra: CI always has it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3():
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server is not installed (it is in the test extra)")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    opts = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        s3fs.S3FileSystem(**opts).mkdir("acts")
        yield opts
    finally:
        proc.terminate()
        proc.wait(10)


def _write(opts, name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    conv = rng.standard_normal((300, 3, 4, 4)).astype(np.float32)
    s = create_store(f"s3://acts/{name}.zarr", storage_options=opts)
    s.append("fc", x[:200], chunk_samples=100)
    s = open_store(f"s3://acts/{name}.zarr", mode="r+", storage_options=opts)
    s.append("fc", x[200:])
    s.append("conv", conv, chunk_samples=100)
    return x, conv


def test_stores_and_measures_on_s3(s3):
    x, conv = _write(s3, "a")
    infos = sd.list_layers("s3://acts/a.zarr", storage_options=s3)
    assert [(i.name, i.complete) for i in infos] == [("conv", True), ("fc", True)]
    np.testing.assert_array_equal(
        sd.read_layer("s3://acts/a.zarr", "fc", storage_options=s3).data.compute(), x
    )
    url = "s3://acts/a.zarr"
    got = sd.cca(f"{url}/fc", f"{url}/fc", storage_options=s3)
    assert got.score == pytest.approx(1.0, abs=1e-10)
    for mode in ("dft", "samples", "mean"):
        remote = sd.cca(f"{url}/conv", f"{url}/conv", conv=mode, storage_options=s3)
        local = sd.cca(conv, conv, conv=mode, layout="NCHW")
        np.testing.assert_allclose(remote.coefficients, local.coefficients, atol=1e-10)


def test_a_cluster_whose_workers_read_s3_themselves(s3):
    x, _ = _write(s3, "b")
    with sd.connect("local", n_workers=2, threads_per_worker=1, dashboard_address=":0", quiet=True):
        m = sd.similarity_matrix(
            {"fc": "s3://acts/b.zarr/fc"}, {"x": x}, measure="cka", storage_options=s3
        )
    assert m.scores[0, 0] == pytest.approx(1.0, abs=1e-10)


def test_cli_and_jobs_with_the_environment_variables(s3, tmp_path, monkeypatch):
    _write(s3, "c")
    env = {
        "AWS_ENDPOINT_URL": s3["endpoint_url"],
        "AWS_ACCESS_KEY_ID": s3["key"],
        "AWS_SECRET_ACCESS_KEY": s3["secret"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = subprocess.run(
        ["svcca-dask", "layers", "s3://acts/c.zarr", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [r["name"] for r in json.loads(out.stdout)] == ["conv", "fc"]
    out = subprocess.run(
        [
            "svcca-dask",
            "compare",
            "s3://acts/c.zarr/fc",
            "s3://acts/c.zarr/fc",
            "--measure",
            "cka",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(out.stdout) == pytest.approx(1.0, abs=1e-8)
    job = tmp_path / "job.toml"
    job.write_text(
        'output = "out"\nmeasures = ["cka"]\npairs = "all"\ncluster = "threads"\n'
        '[stores]\na = "s3://acts/c.zarr"\n'
    )
    subprocess.run(
        ["svcca-dask", "run", str(job), "--no-progress"], check=True, capture_output=True, text=True
    )
    meta = (tmp_path / "out" / "job.json").read_text()
    assert "s3://acts/c.zarr" in meta and s3["secret"] not in meta  # no credentials written


def test_a_job_with_storage_options_per_store_and_global(s3, tmp_path):
    from pipeline.jobs import load_job
    from pipeline.runner import run_job

    _write(s3, "d")
    _write(s3, "e")
    job = tmp_path / "job.toml"
    job.write_text(
        'output = "out"\nmeasures = ["cka", "svcca"]\npairs = "same-name"\ncluster = "threads"\n'
        f'storage_options = {{ endpoint_url = "{s3["endpoint_url"]}", key = "testing" }}\n'
        "[stores]\n"
        f'd = {{ path = "s3://acts/d.zarr", storage_options = {{ secret = "{s3["secret"]}" }} }}\n'
        f'e = {{ path = "s3://acts/e.zarr", storage_options = {{ secret = "{s3["secret"]}" }} }}\n'
    )
    report = run_job(load_job(job), progress=False)
    fc = [r for r in report.rows if r["x_layer"] == "fc" and r["measure"] == "cka"]
    assert fc and fc[0]["score"] == pytest.approx(1.0, abs=1e-8)
    meta = json.loads((tmp_path / "out" / "job.json").read_text())
    assert meta["params"]["storage_options"] == {
        "d": ["endpoint_url", "key", "secret"],
        "e": ["endpoint_url", "key", "secret"],
    }
    assert s3["endpoint_url"] not in json.dumps(meta)  # option values are never written
    assert run_job(load_job(job), progress=False).computed == 0  # idempotent on s3 too


def test_extraction_to_s3(s3):
    torch = pytest.importorskip("torch")
    from pipeline.extract import extract_activations

    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    data = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    batches = [(data[i : i + 16], torch.zeros(16)) for i in range(0, 64, 16)]
    s = extract_activations(
        model, batches, "s3://acts/x.zarr", layers=["0", "2"], progress=False, storage_options=s3
    )
    assert s.layer_names() == ["0", "2"]
    with torch.inference_mode():
        want = model(data).numpy()
    got = sd.read_layer("s3://acts/x.zarr", "2", storage_options=s3).data.compute()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    again = extract_activations(
        model, batches, "s3://acts/x.zarr", layers=["0", "2"], progress=False, storage_options=s3
    )
    assert again.info("2").shape[0] == 64  # resumed: nothing appended twice
