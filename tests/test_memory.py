"""The memory plans (svcca_dask.memory): counted before any pass, a mode that
fits where there is one, a refusal with the numbers where there is not."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

import svcca_dask as sd
from svcca_dask import memory, stats
from svcca_dask._config import memory_budget, physical_memory


def _no_pass(*a, **k):
    raise AssertionError("a pass over the data started")


def test_budget_is_half_of_physical_memory_unless_set():
    assert memory_budget() == physical_memory() // 2
    with dask.config.set({"svcca_dask.memory_limit": "3GiB"}):
        assert memory_budget() == 3 * 2**30


def test_task_grid_is_the_graphs_own():
    x = da.zeros((1000, 4), chunks=100)
    y = da.zeros((1000, 3), chunks=250)
    for arrays in ([x], [x, y], [da.zeros((1000, 3000), chunks=(100, 3000))]):
        tasks, rows = stats.task_grid(arrays)
        chunks = stats._unify_rows(arrays)[0].chunks[0]
        assert (tasks, rows) == (len(chunks), max(chunks))


def test_reduction_counts_the_fan_in_threads_and_finalization():
    with dask.config.set(num_workers=2):
        one = memory.reduction_bytes([800], tasks=40, split_every=8, chunk_bytes=0)
        assert one == 800 * (9 + 2 * memory._TASK_PARTIALS + memory._FINAL_PARTIALS)
        # fewer tasks than the fan-in: only those are in flight
        assert memory.reduction_bytes([800], tasks=3, split_every=8, chunk_bytes=0) < one
        # each thread holds its task's rows
        assert memory.reduction_bytes([800], tasks=40, split_every=8, chunk_bytes=100) == (
            one + 2 * memory._CHUNK_COPIES * 100
        )


def test_covariance_path_runs_with_a_smaller_fan_in_that_fits(monkeypatch):
    monkeypatch.setattr("svcca_dask._config.DEFAULT_CHUNK_BYTES", 8 * 100 * 100)  # 40 tasks
    rng = np.random.default_rng(0)
    x = da.from_array(rng.standard_normal((4000, 60)), chunks=100)
    y = da.from_array(rng.standard_normal((4000, 40)), chunks=100)
    want = sd.cca(x, y)
    narrow = memory.covariance_bytes([[x, y]], split_every=2)
    wide = memory.covariance_bytes([[x, y]], split_every=8)
    assert narrow < wide
    used = []
    real = stats.accumulate

    def spy(arrays, **kw):
        used.append(kw["split_every"])
        return real(arrays, **kw)

    monkeypatch.setattr("svcca_dask.measures.accumulate", spy)
    with dask.config.set({"svcca_dask.memory_limit": narrow}):
        got = sd.cca(x, y)
    assert used == [2]
    np.testing.assert_allclose(got.coefficients, want.coefficients, rtol=1e-12, atol=1e-12)


def test_covariance_path_that_cannot_fit_is_refused_before_any_pass(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((500, 300)), rng.standard_normal((500, 200))
    monkeypatch.setattr("svcca_dask.measures.accumulate", _no_pass)
    with (
        dask.config.set({"svcca_dask.memory_limit": "1MiB"}),
        pytest.raises(
            MemoryError,
            match=r"the covariance path of 500 samples x \(300 \+ 200\) features would hold about "
            r".* at its peak, more than the memory budget of 1.00 MiB \(the Dask config value "
            r"svcca_dask.memory_limit\)\. Reduce the layers first",
        ),
    ):
        sd.linear_cka(x, y)


def test_svd_step_covariance_is_planned_too(monkeypatch):
    import svcca_dask.svd as svd

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((500, 300)), rng.standard_normal((500, 200))
    monkeypatch.setattr(svd, "_svd_compute", _no_pass)
    with (
        dask.config.set({"svcca_dask.memory_limit": "1MiB"}),
        pytest.raises(
            MemoryError, match="the SVD step's covariance of 300 features and 200 features"
        ),
    ):
        sd.svcca(x, y, keep=10, max_features=400)  # each side its own covariance


def test_matrix_splits_into_narrower_tiles_to_fit_with_equal_scores():
    rng = np.random.default_rng(0)
    xs = {f"l{i}": rng.standard_normal((3000, 64)) for i in range(6)}
    want = sd.similarity_matrix(xs, measure="linear_cka")
    assert want.tile_rows == 1
    with dask.config.set({"svcca_dask.memory_limit": "20MiB"}):
        got = sd.similarity_matrix(xs, measure="linear_cka")
    assert got.tile_rows > 1
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-12, atol=1e-13)


def test_matrix_that_cannot_fit_is_refused_before_any_pass(monkeypatch):
    rng = np.random.default_rng(0)
    xs = {f"l{i}": rng.standard_normal((3000, 64)) for i in range(4)}
    monkeypatch.setattr("svcca_dask.matrix.compute", _no_pass)
    with (
        dask.config.set({"svcca_dask.memory_limit": "1MiB"}),
        pytest.raises(
            MemoryError,
            match=r"a similarity matrix of 4 x 4 layers \(tiles at most 128 features wide, "
            r"the widest pair 128\) would hold about",
        ),
    ):
        sd.similarity_matrix(xs, measure="cca")


def test_dft_refuses_a_limit_below_one_frequency_before_any_pass(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 16, 6, 6))
    y = rng.standard_normal((20, 8, 6, 6))
    monkeypatch.setattr("svcca_dask.conv.accumulate.compute", _no_pass)
    with pytest.raises(
        MemoryError,
        match=r"conv='dft': one frequency's statistics of 16 \+ 8 channels \(1 lane\) need "
        r"about .* MiB, more than the DFT memory limit of 0.0 MiB\. Raise DFT\(memory_limit",
    ):
        sd.cca(x, y, conv=sd.DFT(memory_limit=1_000, lanes=1), layout="NCHW")


def test_the_issues_flattened_layer_is_refused_in_seconds(monkeypatch):
    """512 images of a 256 x 56 x 56 layer flattened (802,816 features), keep=0.99:
        it ran 10 minutes to 21 GB before the plan; now refused before any pass
    (``python benchmarks/bench_memory.py`` prints how long the refusal takes)."""
    import svcca_dask.svd as svd

    monkeypatch.setattr(svd, "_svd_compute", _no_pass)
    x = da.zeros((512, 256, 56, 56), chunks=(32, 256, 56, 56), dtype=np.float32)  # never read
    with (
        dask.config.set({"svcca_dask.memory_limit": "12GiB"}),
        pytest.raises(
            MemoryError,
            match=r"x: the randomized SVD of 512 samples x 802816 features with 128 "
            r"directions would hold about 17.8\d GiB",
        ),
    ):
        sd.svcca(x, x + 1, keep=0.99, conv="flatten", layout="NCHW")  # no pass: _no_pass


def test_cli_prints_the_refusal_on_one_line_and_exits_1(tmp_path, capsys):
    from pipeline.cli import main
    from svcca_dask.store import create_store

    s = create_store(tmp_path / "a.zarr")
    s.append("fc", np.random.default_rng(0).standard_normal((200, 300)))
    path = str(tmp_path / "a.zarr" / "fc")
    with dask.config.set({"svcca_dask.memory_limit": "1MiB"}):
        assert main(["compare", path, path, "--measure", "cka", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("svcca-dask compare: ") and "more than the memory budget" in err
    assert len(err.splitlines()) == 1


def test_on_a_cluster_the_plan_is_one_workers():
    from svcca_dask.cluster import connect

    with connect(
        "local",
        n_workers=2,
        threads_per_worker=3,
        processes=False,
        memory_limit="300MiB",
        dashboard_address="127.0.0.1:0",
        quiet=True,
    ):
        # half a worker's limit: distributed pauses a worker at 80% of it
        assert memory.budget() == min(150 * 2**20, memory_budget())
        assert memory.worker_threads() == 3  # one worker's threads share its memory
        assert memory.scheduler_threads() == 6
        rng = np.random.default_rng(0)
        x = rng.standard_normal((500, 3000))
        with pytest.raises(MemoryError, match="50% of the smallest worker memory limit"):
            sd.linear_cka(
                da.from_array(x), da.from_array(x) * 2, max_features=20_000, split_every=2
            )
