"""Cluster benchmark: the same SVCCA on threads and on LocalClusters of 1 and 2 workers.

Prints, interleaved over ``--repeat`` rounds (medians):

* ``svcca`` of two ``(rows, 256)`` float32 layers in a local Zarr store (Blosc,
  8,192-row chunks) on Dask's threaded scheduler (``--threads`` threads, and one
  thread: what the machine itself gains from a second core), and on
  ``sd.connect("local")`` clusters of 1 and 2 worker processes x 1 thread: wall time of the call,
  bytes moved between workers (``transfer_outgoing_bytes_total``, as a share
  of the data) and the peak RSS of the largest worker;
* a linear-CKA ``similarity_matrix`` of 16 layers x 256 x 50,000 rows on 2
  workers x 1 thread with ``memory_limit="1GiB"`` (completes or not, and the
  same on threads with its peak RSS).

Each run is its own subprocess (fresh memory, fresh cluster); the cluster's
start-up is not timed. The targets of issue 15: bytes moved at most 3% of the
data; 2 workers within 1.15x of threads on the same cores; 1 to 2 workers at
least 1.8x; the 1 GiB matrix completes and its threaded run stays under 2 GB.

Usage::

    python benchmarks/bench_cluster.py                    # 1,000,000 rows (2 x 1 GB)
    python benchmarks/bench_cluster.py --rows 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MATRIX = {"layers": 16, "features": 256, "rows": 50_000}


def make_pair(path: Path, rows: int, features: int = 256, chunk_rows: int = 8192) -> None:
    """Two correlated float32 layers, written chunk by chunk (bounded memory)."""
    import zarr
    from zarr.codecs import BloscCodec

    marker = path / f".complete-{rows}-{features}-{chunk_rows}"
    if marker.exists():
        return
    root = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(0)
    wx, wy = rng.standard_normal((32, features)), rng.standard_normal((32, features))
    arrays = {
        k: root.create_array(
            k,
            shape=(rows, features),
            chunks=(chunk_rows, features),
            dtype="float32",
            compressors=[BloscCodec(cname="lz4", clevel=5)],
        )
        for k in ("x", "y")
    }
    for s in range(0, rows, chunk_rows):
        m = min(chunk_rows, rows - s)
        z = rng.standard_normal((m, 32))
        arrays["x"][s : s + m] = (z @ wx + rng.standard_normal((m, features))).astype(np.float32)
        arrays["y"][s : s + m] = (z @ wy + rng.standard_normal((m, features))).astype(np.float32)
    marker.touch()


def make_layers(path: Path) -> None:
    """The 16 layers of the matrix run."""
    import zarr

    marker = path / ".complete"
    if marker.exists():
        return
    root = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(1)
    n, d = MATRIX["rows"], MATRIX["features"]
    z = rng.standard_normal((n, 16)).astype(np.float32)
    for i in range(MATRIX["layers"]):
        a = z @ rng.standard_normal((16, d)).astype(np.float32)
        a += rng.standard_normal((n, d)).astype(np.float32)
        root.create_array(f"l{i:02d}", data=a, chunks=(8192, d))
    marker.touch()


def child(mode: str, workers: int, store: str, threads: int) -> dict[str, float]:
    import dask

    import svcca_dask as sd

    def call() -> object:
        if mode == "svcca":
            return sd.svcca(f"{store}/x", f"{store}/y", keep=0.99).score
        xs = {f"l{i:02d}": f"{store}/l{i:02d}" for i in range(MATRIX["layers"])}
        return float(sd.similarity_matrix(xs, measure="cka").scores.mean())

    if workers == 0:
        with dask.config.set(num_workers=threads):
            t = time.perf_counter()
            score = call()
            wall = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"wall": wall, "moved": 0.0, "peak": peak, "score": float(score), "ok": 1.0}

    limit = "1GiB" if mode == "matrix" else "auto"
    # what a user gets: sd.connect("local") (loopback, its worker settings)
    with sd.connect(
        "local",
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",
        memory_limit=limit,
        quiet=True,
    ) as conn:
        client = conn.client
        client.run(lambda: __import__("svcca_dask"))  # imports not timed
        t = time.perf_counter()
        try:
            score, ok = call(), 1.0
        except Exception as err:  # the matrix may fail (KilledWorker): reported
            print(
                f"{mode} on {workers} workers failed: {type(err).__name__}: {err}", file=sys.stderr
            )
            score, ok = float("nan"), 0.0
        wall = time.perf_counter() - t

        def stats(dask_worker: object) -> tuple[int, int]:
            import resource as r

            return (
                dask_worker.transfer_outgoing_bytes_total,
                r.getrusage(r.RUSAGE_SELF).ru_maxrss * 1024,
            )

        got = client.run(stats).values()
    return {
        "wall": wall,
        "moved": float(sum(m for m, _ in got)),
        "peak": float(max(p for _, p in got)),
        "score": float(score),
        "ok": ok,
    }


def run(mode: str, workers: int, store: Path, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--workers",
            str(workers),
            "--store",
            str(store),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=2, help="threads of the threaded runs (the cores)"
    )
    p.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    p.add_argument("--skip-matrix", action="store_true")
    p.add_argument("--child", choices=["svcca", "matrix"], help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workers, args.store, args.threads)))
        return

    pair = args.data / f"cluster-{args.rows}.zarr"
    make_pair(pair, args.rows)
    data = 2 * args.rows * 256 * 4
    # -1: the threaded scheduler on one thread, the machine's own 1 -> 2 thread scaling
    runs: dict[int, list[dict[str, float]]] = {0: [], -1: [], 1: [], 2: []}
    for _ in range(args.repeat):
        for w in runs:  # interleaved: the machine's noise hits each alike
            if w == -1:
                runs[w].append(run("svcca", 0, pair, 1))
            else:
                runs[w].append(run("svcca", w, pair, args.threads))
    med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in runs.items()}
    print(
        f"svcca of two {args.rows:,} x 256 float32 layers ({data / 1e9:.2f} GB), "
        f"medians of {args.repeat}:"
    )
    names = {
        0: f"threads ({args.threads})",
        -1: "threads (1)",
        1: "1 worker x 1 thread",
        2: "2 workers x 1 thread",
    }
    for w, m in med.items():
        print(
            f"  {names[w]:22s} {m['wall']:7.2f} s   moved {m['moved'] / 1e6:8.2f} MB "
            f"({100 * m['moved'] / data:5.2f}% of the data)   peak {m['peak'] / 1e9:5.2f} GB"
        )
    print(f"  2 workers / threads: {med[2]['wall'] / med[0]['wall']:.2f}x (target <= 1.15)")
    print(
        f"  1 worker / 2 workers: {med[1]['wall'] / med[2]['wall']:.2f}x (target >= 1.8; "
        f"this machine's threads, 1 / {args.threads}: {med[-1]['wall'] / med[0]['wall']:.2f}x)"
    )
    print(
        f"  moved at most {100 * max(m['moved'] for m in med.values()) / data:.2f}% (target <= 3%)"
    )
    scores = {round(r["score"], 12) for rs in runs.values() for r in rs}
    print(f"  scores: {sorted(scores)}")
    if args.skip_matrix:
        return
    layers = args.data / "cluster-matrix.zarr"
    make_layers(layers)
    thr = run("matrix", 0, layers, args.threads)
    clu = run("matrix", 2, layers, args.threads)
    print(
        f"CKA similarity_matrix of {MATRIX['layers']} layers x {MATRIX['features']} x "
        f"{MATRIX['rows']:,} rows:"
    )
    print(f"  threads: {thr['wall']:.2f} s, peak {thr['peak'] / 1e9:.2f} GB (target < 2 GB)")
    print(
        f"  2 workers x 1 thread at 1 GiB: {'completes' if clu['ok'] else 'FAILS'} in "
        f"{clu['wall']:.2f} s, peak worker {clu['peak'] / 1e9:.2f} GB, moved "
        f"{clu['moved'] / 1e6:.1f} MB; same mean score: {abs(clu['score'] - thr['score']) < 1e-12}"
    )


if __name__ == "__main__":
    main()
