"""SVCCA of a store on an S3-compatible server against the same store on local disk.

Starts moto's S3 server on 127.0.0.1 (``moto[server]``, in the test extra),
copies the (N, 256) float32 layers of ``bench_core.py`` into a bucket, and
times, interleaved, medians of ``--repeat``:

* ``svcca`` from the local folder and from ``s3://`` (the ratio is the cost of
  the object store),
* ``read`` - the bare read of both layers (a Dask sum, every chunk decoded)
  from each: where the time goes (transfer and decode against the pass's
  arithmetic).

moto holds the objects in memory and serves them from one Python process,
so it is a lower bound on a real object store's throughput per connection,
not a model of S3's latency. Usage::

    python benchmarks/bench_stores.py                 # 200,000 rows
    python benchmarks/bench_stores.py --rows 1000000  # the core benchmark's size
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import make_store


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _upload(local: Path, url: str, opts: dict) -> None:
    import zarr

    src = zarr.open_group(str(local), mode="r")
    dst = zarr.open_group(url, mode="w", zarr_format=3, storage_options=opts)
    for name in ("x", "y"):
        a = src[name]
        b = dst.create_array(
            name,
            shape=a.shape,
            chunks=a.chunks,
            dtype=a.dtype,
            compressors=a.compressors,
            dimension_names=("sample", "neuron"),
        )
        step = a.chunks[0] * 8
        for i in range(0, a.shape[0], step):
            b[i : i + step] = a[i : i + step]


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--store", type=Path, default=None)
    a = p.parse_args()
    import dask.array as da

    import svcca_dask as sd

    local = a.store or Path(f"benchmarks/data/stores-{a.rows}.zarr")
    make_store(local, a.rows, 256, 8192)
    port = _port()
    server = subprocess.Popen(
        [shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        import s3fs

        opts = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
        s3fs.S3FileSystem(**opts).mkdir("bench")
        url = "s3://bench/core.zarr"
        t = time.perf_counter()
        _upload(local, url, opts)
        print(f"{a.rows:,} x 256 float32 x 2 uploaded to moto in {time.perf_counter() - t:.1f} s")
        runs: dict[str, list[float]] = {
            k: [] for k in ("svcca local", "svcca s3", "read local", "read s3")
        }
        for _ in range(a.repeat):
            runs["svcca local"].append(_timed(lambda: sd.svcca(f"{local}/x", f"{local}/y")))
            runs["svcca s3"].append(
                _timed(lambda: sd.svcca(f"{url}/x", f"{url}/y", storage_options=opts))
            )
            for where, base, kw in (
                ("local", str(local), {}),
                ("s3", url, {"storage_options": opts}),
            ):
                import zarr

                arrs = [zarr.open_array(f"{base}/{n}", mode="r", **kw) for n in "xy"]
                runs[f"read {where}"].append(
                    _timed(lambda arrs=arrs: da.compute(*[da.from_zarr(z).sum() for z in arrs]))
                )
        med = {k: float(np.median(v)) for k, v in runs.items()}
        for k, v in med.items():
            print(f"{k:<12} {v:7.2f} s")
        print(
            f"s3 / local: svcca {med['svcca s3'] / med['svcca local']:.2f}x, "
            f"read {med['read s3'] / med['read local']:.2f}x; reading is "
            f"{med['read s3'] / med['svcca s3']:.0%} of the s3 svcca, "
            f"{med['read local'] / med['svcca local']:.0%} of the local one"
        )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
