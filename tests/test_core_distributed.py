"""The measures give the same numbers on a distributed LocalCluster (worker processes) as on threads."""

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, get_task_stream

import svcca_dask as sd

MEASURES = ("cca", "svcca", "pwcca", "linear_cka")


def test_threads_and_distributed_agree(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 3))
    x = (z @ rng.standard_normal((3, 16)) + rng.standard_normal((4000, 16)) + 1e3).astype(
        np.float32
    )
    y = (z @ rng.standard_normal((3, 8)) + rng.standard_normal((4000, 8))).astype(np.float32)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    for name, a in (("x", x), ("y", y)):
        arr = root.create_array(name, shape=a.shape, chunks=(300, a.shape[1]), dtype="float32")
        arr[:] = a
    px, py = str(tmp_path / "s.zarr" / "x"), str(tmp_path / "s.zarr" / "y")
    on_threads = {m: getattr(sd, m)(px, py) for m in MEASURES}  # no client: threaded scheduler

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        for m in MEASURES:
            with get_task_stream(client) as ts:
                on_cluster = getattr(sd, m)(px, py)  # the current Client is picked up
            workers = {t["worker"] for t in ts.data}
            keys = [str(t["key"]) for t in ts.data]
            assert any(k.startswith("moments_chunk") for k in keys), keys  # on the cluster
            # the row-chunk task read its 14 stored chunks itself: no read task of their own
            assert not any("array" in k or "getitem" in k for k in keys), keys
            assert workers, "tasks ran on worker processes"
            ref = on_threads[m]
            assert on_cluster.score == pytest.approx(ref.score, rel=1e-12)
            if hasattr(ref, "coefficients"):
                np.testing.assert_allclose(
                    on_cluster.coefficients, ref.coefficients, rtol=1e-12, atol=1e-14
                )
