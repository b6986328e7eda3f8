"""Layer x layer matrices: one pass vs a pass per pair, and 1 vs 2 worker processes.

Two "networks" of 8 layers each (widths 32 ... 256, float32, blosc-lz4 Zarr
arrays on local disk). Prints, measured in the same run:

* ``one-pass``  - ``similarity_matrix(A, B)``: the 8 x 8 SVCCA matrix, one pass
* ``64 calls``  - ``svcca(A[a], B[b])`` for each of the 64 pairs (one BLAS thread)
* ``tiled``     - ``similarity_matrix`` with ``max_width`` forcing tiles
  (wall time and chunk reads for each, reads counted in the Zarr store)
* the kernel the design rests on: the joint SYRK of the 16 stacked layers vs
  the blocks the matrix needs (each layer's own SYRK + one cross GEMM)
* the yardstick: one in-memory NumPy Gram of the same 16 layers (float64)
* the one-pass matrix on a LocalCluster of 1 and of 2 worker processes
  (one thread each) and the ratio.

Timings on a shared machine only mean something as ratios within one run.

Usage::

    python benchmarks/bench_matrix.py                 # 16384 rows, about 2-3 minutes
    python benchmarks/bench_matrix.py --rows 65536
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore, WrapperStore

import svcca_dask as sd

WIDTHS = (32, 64, 64, 128, 128, 128, 256, 256)

#: chunk reads and bytes read through :class:`CountingStore` (data chunks only)
READS = {"chunks": 0, "bytes": 0}


class CountingStore(WrapperStore):
    """A Zarr store that counts the chunk reads and bytes it serves."""

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        buf = await self._store.get(key, prototype, byte_range)
        if buf is not None and not key.endswith("zarr.json"):
            READS["chunks"] += 1
            READS["bytes"] += len(buf)
        return buf


def make_stores(root: Path, rows: int, chunk_rows: int) -> None:
    from zarr.codecs import BloscCodec

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((rows, 48)).astype(np.float32)
    for net in ("A", "B"):
        group = zarr.open_group(str(root / f"{net}.zarr"), mode="w")
        for i, w in enumerate(WIDTHS):
            mix = rng.standard_normal((48, w)).astype(np.float32)
            data = np.maximum(latent @ mix + rng.standard_normal((rows, w), dtype=np.float32), 0)
            group.create_array(
                f"layer{i}",
                data=data,
                chunks=(chunk_rows, w),
                compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            )


def open_layers(root: Path, *, counting: bool) -> tuple[dict, dict]:
    # Dask copies the zarr arrays into its graph (by pickling); a class from
    # ``__main__`` would be copied by value with its own READS. Use the class
    # of the importable module ``bench_matrix``, whose READS we print.
    import bench_matrix

    out = []
    for net in ("A", "B"):
        store: Any = LocalStore(str(root / f"{net}.zarr"), read_only=True)
        if counting:
            store = bench_matrix.CountingStore(store)
        out.append(
            {
                f"{net}{i}": zarr.open_array(store, path=f"layer{i}", mode="r")
                for i in range(len(WIDTHS))
            }
        )
    return out[0], out[1]


def timed(f: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def reads_of(f: Any) -> tuple[float, Any, int, int]:
    from bench_matrix import READS as reads  # see open_layers

    reads.update(chunks=0, bytes=0)
    seconds, out = timed(f)
    return seconds, out, reads["chunks"], reads["bytes"]


def kernel(rows: int = 4096) -> tuple[float, float]:
    """Median seconds of the joint SYRK vs own SYRKs + one cross GEMM, one chunk."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    buf = rng.standard_normal((rows, 2 * sum(WIDTHS)))
    half = sum(WIDTHS)
    x, y = np.ascontiguousarray(buf[:, :half]), np.ascontiguousarray(buf[:, half:])
    edges = np.cumsum((0, *WIDTHS, *WIDTHS))
    layers = [np.ascontiguousarray(buf[:, a:b]) for a, b in itertools.pairwise(edges)]

    def med(f: Any) -> float:
        return float(np.median([timed(f)[0] for _ in range(5)]))

    with threadpool_limits(limits=1, user_api="blas"):  # as inside a task
        joint = med(lambda: buf.T @ buf)
        blocks = med(lambda: ([v.T @ v for v in layers], x.T @ y))
    return joint, blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--chunk-rows", type=int, default=2048)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        root = Path(tmp)
        t, _ = timed(lambda: make_stores(root, args.rows, args.chunk_rows))
        d = sum(WIDTHS)
        print(
            f"data: 2 networks x 8 layers, widths {WIDTHS} (sum {d} per network), "
            f"{args.rows} rows, chunks of {args.chunk_rows} rows, float32 blosc-lz4 "
            f"(written in {t:.1f} s)"
        )

        xs, ys = open_layers(root, counting=True)
        runs = {}
        runs["one-pass"] = reads_of(lambda: sd.similarity_matrix(xs, ys, measure="svcca"))
        # the per-pair linear algebra with one BLAS thread, as similarity_matrix runs
        # it: multi-threaded BLAS on these small eighs spins on a busy machine
        # (seen here: 5 s or 90 s for the same 64 calls, depending on the load)
        from threadpoolctl import threadpool_limits

        def calls() -> np.ndarray:
            with threadpool_limits(limits=1, user_api="blas"):
                return np.array([[sd.svcca(xs[a], ys[b]).score for b in ys] for a in xs])

        runs["64 calls"] = reads_of(calls)
        runs["tiled"] = reads_of(
            lambda: sd.similarity_matrix(xs, ys, measure="svcca", max_width=d + 2 * max(WIDTHS))
        )
        ref = runs["64 calls"][1]
        print("\nthreads (no client), SVCCA 8 x 8:")
        print(f"  {'':9} {'wall s':>8} {'chunk reads':>12} {'MB read':>9}  max |score - 64 calls|")
        for name, (secs, out, chunks, nbytes) in runs.items():
            scores = out.scores if hasattr(out, "scores") else out
            extra = (
                f"  (tile rows {out.tile_rows}, tiles {out.tiles})" if hasattr(out, "tiles") else ""
            )
            print(
                f"  {name:9} {secs:8.2f} {chunks:12d} {nbytes / 1e6:9.1f}  "
                f"{np.abs(scores - ref).max():.1e}{extra}"
            )
        one, calls = runs["one-pass"], runs["64 calls"]
        print(
            f"  64 calls / one-pass: wall x{calls[0] / one[0]:.2f}, bytes read x{calls[3] / one[3]:.1f}"
        )

        joint, blocks = kernel()
        print(
            f"\nkernel, one 4096-row chunk of all 16 layers, 1 BLAS thread: joint SYRK "
            f"{joint * 1e3:.0f} ms, needed blocks only (16 own SYRKs + cross GEMM) "
            f"{blocks * 1e3:.0f} ms: joint/needed x{joint / blocks:.2f}"
        )

        z = np.concatenate(
            [np.asarray(a[:], dtype=np.float64) for a in [*xs.values(), *ys.values()]], 1
        )
        z -= z.mean(0)
        t_gram = float(np.median([timed(lambda z=z: z.T @ z)[0] for _ in range(3)]))
        print(
            f"yardstick: in-memory NumPy Gram of the 16 stacked layers ({z.shape[0]} x "
            f"{z.shape[1]} float64, all cores) {t_gram:.2f} s; one-pass matrix / Gram "
            f"x{one[0] / t_gram:.1f}"
        )
        del z

        from contextlib import ExitStack

        from distributed import Client, LocalCluster

        px, py = (
            {k: str(root / f"{net}.zarr" / f"layer{i}") for i, k in enumerate(names)}
            for net, names in (("A", xs), ("B", ys))
        )
        print(
            "\none-pass SVCCA 8 x 8 on a LocalCluster (threads_per_worker=1), "
            "runs alternated between the two clusters, best of 3:"
        )
        times: dict[int, list[float]] = {1: [], 2: []}
        with ExitStack() as stack:
            clients = {}
            for n_workers in (1, 2):
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=n_workers,
                        threads_per_worker=1,
                        host="127.0.0.1",
                        dashboard_address="127.0.0.1:0",
                    )
                )
                clients[n_workers] = stack.enter_context(Client(cluster, set_as_default=False))
            for _ in range(4):  # the first round warms the workers (imports, Zarr metadata)
                for n_workers, client in clients.items():
                    with client.as_current():
                        times[n_workers].append(
                            timed(lambda: sd.similarity_matrix(px, py, measure="svcca"))[0]
                        )
        best = {k: min(v[1:]) for k, v in times.items()}
        for n_workers, t in best.items():
            print(f"  {n_workers} worker process(es): {t:.2f} s")
        times = best
        print(
            f"  1 worker / 2 workers: x{times[1] / times[2]:.2f} "
            f"(this machine has {len(__import__('os').sched_getaffinity(0))} cores, shared)"
        )


if __name__ == "__main__":
    main()
