"""Core benchmark: SVCCA of two (N, 256) float32 layers in a local Zarr store.

Prints, for the same data and in the same run:

* ``svcca``     - ``svcca_dask.svcca`` on the two Zarr arrays (one streaming pass),
* ``reference`` - an in-memory NumPy SVCCA as google/svcca computes it
  (float64 copies, SVD of the centred data, ``np.cov``, eigh, SVD),
* ``gram``      - the machine's limit: the bare float64 Gram ``Z.T @ Z`` of the
  centred ``[x y]`` already in memory (one SYRK, all cores),

each in its own subprocess so that peak memory (``ru_maxrss``) is its own.
Only the ratios carry over to another machine.

Usage::

    python benchmarks/bench_core.py                       # 1,000,000 rows (2 x 1 GB)
    python benchmarks/bench_core.py --rows 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_store(path: Path, rows: int, features: int, chunk_rows: int) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    marker = path / f".complete-{rows}-{features}-{chunk_rows}"
    if marker.exists():
        return
    root = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((32, features)).astype(np.float32)
    arrays = {
        name: root.create_array(
            name,
            shape=(rows, features),
            chunks=(chunk_rows, features),
            dtype="float32",
            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            dimension_names=("sample", "neuron"),
        )
        for name in ("x", "y")
    }
    for start in range(0, rows, chunk_rows):
        m = min(chunk_rows, rows - start)
        z = rng.standard_normal((m, 32)).astype(np.float32)
        for i, arr in enumerate(arrays.values()):
            noise = rng.standard_normal((m, features)).astype(np.float32)
            # ReLU-like: positive, with a large mean
            arr[start : start + m] = np.maximum(z @ (mix * (1 + i)) + noise, 0) + 10.0
    marker.touch()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_svcca(store: Path) -> dict:
    import svcca_dask as sd

    t = time.perf_counter()
    r = sd.svcca(str(store / "x"), str(store / "y"), keep=0.99)
    wall = time.perf_counter() - t
    return {"wall_s": wall, "score": r.score, "kept": [r.x_kept, r.y_kept]}


def run_reference(store: Path) -> dict:
    import zarr

    x = zarr.open_array(str(store / "x"), mode="r")[:]
    y = zarr.open_array(str(store / "y"), mode="r")[:]
    t = time.perf_counter()

    def reduce(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        a -= a.mean(axis=0)
        # the SVD step of google/svcca (it works on (neurons, datapoints): a.T here)
        _, s, vt = np.linalg.svd(a, full_matrices=False)
        frac = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(frac, 0.99)) + 1
        return a @ vt[:k].T

    rx, ry = reduce(x), reduce(y)
    c = np.cov(np.hstack([rx, ry]), rowvar=False)
    dx = rx.shape[1]

    def isqrt(s: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(s)
        return (v / np.sqrt(w)) @ v.T

    rho = np.linalg.svd(isqrt(c[:dx, :dx]) @ c[:dx, dx:] @ isqrt(c[dx:, dx:]), compute_uv=False)
    wall = time.perf_counter() - t
    return {
        "wall_s": wall,
        "score": float(rho[: min(dx, ry.shape[1])].mean()),
        "kept": [dx, ry.shape[1]],
    }


def run_gram(store: Path) -> dict:
    import zarr

    x = zarr.open_array(str(store / "x"), mode="r")[:]
    y = zarr.open_array(str(store / "y"), mode="r")[:]
    z = np.empty((x.shape[0], x.shape[1] + y.shape[1]), dtype=np.float64)
    z[:, : x.shape[1]] = x
    z[:, x.shape[1] :] = y
    del x, y
    z -= z.mean(axis=0)
    t = time.perf_counter()
    z.T @ z  # one SYRK
    return {"wall_s": time.perf_counter() - t}


MODES = {"svcca": run_svcca, "reference": run_reference, "gram": run_gram}


def child(mode: str, store: Path) -> None:
    out = MODES[mode](store)
    out["peak_rss_mb"] = _peak_mb()
    print(json.dumps(out))


def measure(mode: str, store: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--store", str(store)],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=256)
    p.add_argument(
        "--chunk-rows", type=int, default=8192, help="Zarr chunk rows (8 MiB float32 at 256 wide)"
    )
    p.add_argument("--store", type=Path, default=Path("benchmarks/data/core.zarr"))
    p.add_argument(
        "--repeat", type=int, default=3, help="runs of gram and svcca; the median is reported"
    )
    p.add_argument(
        "--skip-reference", action="store_true", help="skip the in-memory NumPy reference"
    )
    p.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.store)
        return

    t = time.perf_counter()
    make_store(a.store, a.rows, a.features, a.chunk_rows)
    print(
        f"store: {a.store} ({a.rows:,} x {a.features} float32 x 2, "
        f"{2 * a.rows * a.features * 4 / 1e9:.2f} GB raw), ready in {time.perf_counter() - t:.1f} s"
    )
    modes = ["gram", "svcca"] + ([] if a.skip_reference else ["reference"])
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for i in range(a.repeat):  # interleave the modes so noise hits them alike
        for m in modes:
            if m == "reference" and i > 0:
                continue  # minutes per run at 1M rows: once is enough to compare
            results[m].append(measure(m, a.store))
    med = {m: float(np.median([r["wall_s"] for r in rs])) for m, rs in results.items()}
    peak = {m: max(r["peak_rss_mb"] for r in rs) for m, rs in results.items()}
    gb = 2 * a.rows * a.features * 4 / 1e9
    print(
        f"{'mode':<10} {'median s':>9} {'rows/s':>12} {'GB/s':>6} {'peak RSS MB':>12} {'x gram':>7}"
    )
    for m in modes:
        print(
            f"{m:<10} {med[m]:>9.2f} {a.rows / med[m]:>12,.0f} {gb / med[m]:>6.2f} "
            f"{peak[m]:>12.0f} {med[m] / med['gram']:>7.2f}"
        )
    print(
        f"svcca score {results['svcca'][0]['score']:.6f}, kept {results['svcca'][0]['kept']}"
        + (
            ""
            if a.skip_reference
            else f"; reference score {results['reference'][0]['score']:.6f}, kept {results['reference'][0]['kept']}"
        )
    )
    if not a.skip_reference:
        print(
            f"speedup of svcca over the in-memory reference: {med['reference'] / med['svcca']:.2f}x"
        )


if __name__ == "__main__":
    main()
