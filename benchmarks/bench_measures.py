"""Debiased linear CKA at scale: one streaming pass against the plain CKA of
the same pass, and against the n x n Gram estimator others compute.

Prints, on the (N, 256) float32 Zarr layers of ``bench_core.py`` (made once):

* ``cka``       - ``linear_cka`` from the Zarr arrays (one pass),
* ``debiased``  - ``linear_cka(debiased=True)`` from the same arrays (one pass,
  also each sample's squared norm): the ratio to ``cka`` is its cost,
* ``gram``      - the Gram-based unbiased HSIC (Song et al. 2012, as anatome
  and torch_cka compute it) of the first ``--gram-rows`` rows, in memory:
  ``n x n`` float64 Gram matrices, the largest ``n`` that fits ``--gram-gib``,

each in its own subprocess (peak memory ``ru_maxrss`` its own), interleaved,
medians of ``--repeat``. Also the debiased score of the first ``--gram-rows``
rows both ways, to show they agree.

Usage::

    python benchmarks/bench_measures.py                      # 1,000,000 rows
    python benchmarks/bench_measures.py --rows 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import _peak_mb, make_store


def run_cka(store: Path, debiased: bool, rows: int | None = None) -> dict:
    import zarr

    import svcca_dask as sd

    x, y = str(store / "x"), str(store / "y")
    if rows is not None:  # the Gram's rows, to compare the two estimators' numbers
        x, y = (zarr.open_array(p, mode="r")[:rows] for p in (x, y))
    t = time.perf_counter()
    r = sd.linear_cka(x, y, debiased=debiased)
    return {"wall_s": time.perf_counter() - t, "score": r.score}


def run_gram(store: Path, rows: int) -> dict:
    import zarr

    x = zarr.open_array(str(store / "x"), mode="r")[:rows].astype(np.float64)
    y = zarr.open_array(str(store / "y"), mode="r")[:rows].astype(np.float64)
    t = time.perf_counter()
    x -= x.mean(axis=0)
    y -= y.mean(axis=0)

    def hsic(k: np.ndarray, g: np.ndarray) -> float:
        n = k.shape[0]
        one = np.ones(n)
        return float(
            np.sum(k * g)
            + (one @ k @ one) * (one @ g @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ (g @ one))
        ) / (n * (n - 3))

    k, g = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0)
    np.fill_diagonal(g, 0)
    score = hsic(k, g) / np.sqrt(hsic(k, k) * hsic(g, g))
    return {"wall_s": time.perf_counter() - t, "score": score}


def child(mode: str, store: Path, rows: int) -> None:
    if mode == "gram":
        out = run_gram(store, rows)
    elif mode == "debiased_small":
        out = run_cka(store, True, rows)
    else:
        out = run_cka(store, mode == "debiased")
    out["peak_rss_mb"] = _peak_mb()
    print(json.dumps(out))


def measure(mode: str, store: Path, rows: int) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--store",
            str(store),
            "--gram-rows",
            str(rows),
        ],
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
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--store", type=Path, default=Path("benchmarks/data/core.zarr"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--gram-gib",
        type=float,
        default=3.0,
        help="memory for the Gram estimator: two n x n float64 matrices and a product",
    )
    p.add_argument("--gram-rows", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--child", choices=["cka", "debiased", "gram", "debiased_small"], help=argparse.SUPPRESS
    )
    a = p.parse_args()
    if a.child:
        child(a.child, a.store, a.gram_rows or 0)
        return
    gram_rows = int(np.sqrt(a.gram_gib * 2**30 / (8 * 3)))  # K, L and K * L at once
    t = time.perf_counter()
    make_store(a.store, a.rows, a.features, a.chunk_rows)
    print(
        f"store: {a.store} ({a.rows:,} x {a.features} float32 x 2), ready in "
        f"{time.perf_counter() - t:.1f} s; Gram estimator on the first {gram_rows:,} rows"
    )
    modes = ["cka", "debiased", "gram"]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(a.repeat):
        for m in modes:
            results[m].append(measure(m, a.store, gram_rows))
    small = measure("debiased_small", a.store, gram_rows)
    med = {m: float(np.median([r["wall_s"] for r in rs])) for m, rs in results.items()}
    peak = {m: max(r["peak_rss_mb"] for r in rs) for m, rs in results.items()}
    print(f"{'mode':<10} {'rows':>10} {'median s':>9} {'peak RSS MB':>12} {'score':>10}")
    for m in modes:
        n = gram_rows if m == "gram" else a.rows
        print(f"{m:<10} {n:>10,} {med[m]:>9.2f} {peak[m]:>12.0f} {results[m][0]['score']:>10.6f}")
    print(f"debiased / plain CKA of the same pass: {med['debiased'] / med['cka']:.2f}x")
    per_row_stream = med["debiased"] / a.rows
    per_row_gram = med["gram"] / gram_rows
    print(
        f"per row: stream {per_row_stream * 1e6:.2f} us, Gram {per_row_gram * 1e6:.2f} us at "
        f"{gram_rows:,} rows (the Gram's cost grows with n; the stream's does not)"
    )
    print(
        f"first {gram_rows:,} rows: stream {small['score']:.12f}, Gram "
        f"{results['gram'][0]['score']:.12f}, difference "
        f"{abs(small['score'] - results['gram'][0]['score']):.1e}"
    )


if __name__ == "__main__":
    main()
