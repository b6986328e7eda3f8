"""Clusters for real: tasks read their own rows, fit their worker, finish where the
statistics are, and survive a worker killed mid-band on the DFT path.

The transfers are counted from each worker's own log of what it sent (to other
workers, and to the client), on in-process clusters; the worker loss uses real
``dask worker`` processes on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream

import svcca_dask as sd
from svcca_dask.store import create_store

N, D, CHUNK = 24_000, 48, 1_500  # a stored chunk: 1,500 x 48 float32, 288 KB


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    s = create_store(tmp_path_factory.mktemp("locality") / "acts.zarr")
    z = rng.standard_normal((N, 6))
    for name in ("a", "b", "c", *(f"w{i}" for i in range(12))):
        x = z @ rng.standard_normal((6, D)) + rng.standard_normal((N, D)) + 50.0
        s.create_layer(name, sample_shape=(D,), chunk_samples=CHUNK)
        s.append(name, x.astype(np.float32))
    conv = rng.standard_normal((2_000, 6, 8, 8)).astype(np.float32)
    for name, c in (
        ("conv1", conv),
        ("conv2", conv[:, ::-1] + 0.5 * rng.standard_normal(conv.shape)),
    ):
        s.create_layer(
            name,
            sample_shape=c.shape[1:],
            chunk_samples=100,
            dims=("sample", "channel", "height", "width"),
        )
        s.append(name, c.astype(np.float32))
    return s


def _sent(cluster: LocalCluster) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(key, bytes)`` each worker sent to another worker, and to anyone else (the client)."""
    workers = {w.address for w in cluster.workers.values()}
    peers, client = [], []
    for w in cluster.workers.values():
        for entry in w.transfer_outgoing_log:
            side = peers if entry["who"] in workers else client
            side.extend((str(k), int(v)) for k, v in entry["keys"].items())
    return peers, client


@pytest.fixture(scope="module")
def threaded(store):
    """References on the threaded scheduler (requested before any cluster)."""
    paths = {k: f"{store.path}/{k}" for k in ("a", "b", "c")}
    return {
        "svcca": sd.svcca(paths["a"], paths["b"]),
        "matrices": sd.similarity_matrices(paths, measures=["svcca", "cka"]),
        "dft": sd.cca(f"{store.path}/conv1", f"{store.path}/conv2"),
    }


@pytest.fixture
def in_process():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client


def test_no_activation_chunk_travels_between_workers(store, threaded, in_process):
    cluster, _ = in_process
    paths = {k: f"{store.path}/{k}" for k in ("a", "b", "c")}
    got = {
        "svcca": sd.svcca(paths["a"], paths["b"]),
        "matrix": sd.similarity_matrix(paths, measure="svcca"),
        "dft": sd.cca(f"{store.path}/conv1", f"{store.path}/conv2"),
    }
    chunk = CHUNK * D * 4
    peers, _ = _sent(cluster)
    moved = sum(b for _, b in peers)
    assert moved < 0.03 * 3 * N * D * 4, moved  # partial statistics only
    assert all(b < chunk for _, b in peers), max(peers, key=lambda p: p[1])
    # what travelled: statistics (partials, lane accumulators, merged blocks), never a read
    kinds = {k.split("-")[0].strip("('\"") for k, _ in peers}
    assert kinds <= {
        "moments_chunks",
        "moments_combine",
        "getitem",
        "dft_fold",
        "_block_apply",
        "_scale_of",
    }, kinds
    assert got["svcca"].score == pytest.approx(threaded["svcca"].score, abs=1e-12)
    np.testing.assert_allclose(
        got["matrix"].scores, threaded["matrices"]["svcca"].scores, rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        got["dft"].coefficients, threaded["dft"].coefficients, rtol=0, atol=1e-12
    )


def test_a_matrix_finishes_on_the_cluster(store, threaded, in_process):
    cluster, client = in_process
    paths = {k: f"{store.path}/{k}" for k in ("a", "b", "c")}
    with get_task_stream(client) as ts:
        m = sd.similarity_matrices(paths, measures=["svcca", "cka"])
    finish = [t for t in ts.data if str(t["key"]).startswith("_finish_tile_row")]
    assert len(finish) == m["svcca"].tile_rows == 1
    assert finish[0]["worker"] in {w.address for w in cluster.workers.values()}
    _, to_client = _sent(cluster)
    partial = (3 * D) ** 2 * 8  # the tile's statistics: they stay on the worker
    assert max(b for _, b in to_client) < partial / 4, to_client
    for k in ("svcca", "cka"):
        np.testing.assert_allclose(m[k].scores, threaded["matrices"][k].scores, rtol=0, atol=1e-12)


def test_a_small_worker_memory_limit_makes_small_tasks_with_the_same_result(store):
    wide = {f"w{i}": f"{store.path}/w{i}" for i in range(12)}  # 12 x 48 = 576 features
    on_threads = sd.similarity_matrix(wide, measure="cka")
    assert on_threads.tile_rows == 1
    # in-process workers share this process's memory: the limit is a number to plan
    # with, so distributed's own pausing and spilling (of the whole process) stay off
    off = {
        f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause", "terminate")
    }
    with (
        dask.config.set(off),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            memory_limit="24MiB",
        ) as cluster,
        Client(cluster),
    ):
        small = sd.similarity_matrix(wide, measure="cka")
    assert small.tile_rows > 1  # narrower tiles to fit 12 MiB per worker
    np.testing.assert_allclose(small.scores, on_threads.scores, rtol=0, atol=1e-12)


def test_a_worker_killed_mid_band_on_the_dft_path(start_dask_processes, tmp_path):
    rng = np.random.default_rng(3)
    s = create_store(tmp_path / "conv.zarr")
    x = rng.standard_normal((6_000, 8, 12, 12)).astype(np.float32)
    y = (np.roll(x, 1, axis=2)[:, :6] + 0.3 * rng.standard_normal((6_000, 6, 12, 12))).astype(
        np.float32
    )
    for name, a in (("x", x), ("y", y)):
        s.create_layer(
            name,
            sample_shape=a.shape[1:],
            chunk_samples=50,
            dims=("sample", "channel", "height", "width"),
        )
        s.append(name, a)
    opts = {"conv": sd.DFT(memory_limit="400KiB", rows=50)}  # several bands, many folds
    px, py = f"{s.path}/x", f"{s.path}/y"
    reference = sd.cca(px, py, **opts)  # threads

    procs = start_dask_processes(n_workers=2, nthreads=1)
    with Client(procs.address) as client:
        addr = {info["name"]: a for a, info in client.scheduler_info()["workers"].items()}
        out: dict[str, object] = {}

        def run() -> None:
            try:
                out["result"] = sd.cca(px, py, **opts)
            except BaseException as err:  # surfaced below
                out["error"] = err

        thread = threading.Thread(target=run)
        thread.start()
        # the victim: a worker running a band's folds that holds lane results of it
        held_by = lambda dask_scheduler: [  # noqa: E731
            ws.address
            for ts in dask_scheduler.tasks.values()
            if str(ts.key).startswith("dft_fold") and ts.state == "memory"
            for ws in ts.who_has or ()
        ]
        folding = lambda dask_worker: any(  # noqa: E731
            str(ts.key).startswith("dft_fold") for ts in dask_worker.state.executing
        )
        deadline, victim = time.monotonic() + 60, None
        while time.monotonic() < deadline and thread.is_alive() and victim is None:
            busy = [w for w, f in client.run(folding).items() if f]
            held = set(client.run_on_scheduler(held_by))
            victim = next((w for w in busy if w in held), None)
            time.sleep(0.002)
        name = next((n for n, a in addr.items() if a == victim), None)
        alive = thread.is_alive()
        assert name is not None, "no worker was folding a band when the comparison ended"
        procs.kill_worker(name)
        thread.join(timeout=180)
    assert alive, "the band finished before the worker could be killed"
    assert procs.workers[name].returncode == -9
    assert "error" not in out, out.get("error")
    got = out["result"]
    np.testing.assert_allclose(got.coefficients, reference.coefficients, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.per_frequency, reference.per_frequency, rtol=0, atol=1e-12)
