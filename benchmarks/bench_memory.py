"""The memory plans against measured peaks: each path's counted peak beside the
peak RSS it reached, on the threaded scheduler.

    python benchmarks/bench_memory.py [--quick]

Each case runs in a fresh process (its inputs are made in memory first, and
the peak is ``ru_maxrss`` above what the process held before the call). The
ratio estimate / measured should stay at 1 or above and not far above: the
plan refuses what its estimate puts over the budget, so an undershoot lets a
runaway through and a large overshoot refuses runs that would fit. The last
case is the issue's flattened ResNet layer (512 images x 802,816 features,
``keep=0.99``), refused before any pass: it prints how long the refusal took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CASES = {
    "covariance 40,000 x (1,024 + 1,024), 1,000-row chunks": ("dense", 40_000, 1024, 1000, 8),
    "covariance 40,000 x (1,024 + 1,024), 250-row chunks, split_every=2": (
        "dense",
        40_000,
        1024,
        250,
        2,
    ),
    "randomized 512 x (50,000 + 50,000), k=118, 4 chunks": ("rand", 512, 50_000, 128, 118),
    "randomized 512 x (50,000 + 50,000), k=118, 16 chunks": ("rand", 512, 50_000, 32, 118),
    "matrix linear_cka 8 layers x 512, 20,000 rows": ("matrix", 20_000, 8, 512, 1000),
}
QUICK = {k: v for k, v in CASES.items() if "16 chunks" not in k and "250-row" not in k}

CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np, dask.array as da
import svcca_dask as sd
from svcca_dask import memory, svd, matrix
warnings.simplefilter("ignore")
kind, *a = json.loads(sys.argv[1])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rng = np.random.default_rng(0)
if kind == "dense":
    n, d, rows, se = a
    x, y = (da.from_array(rng.standard_normal((n, d), dtype=np.float32), chunks=(rows, d))
            for _ in range(2))
    est = memory.covariance_bytes([[x, y]], split_every=se)
    run = lambda: sd.cca(x, y, split_every=se)
elif kind == "rand":
    n, d, rows, k = a
    x, y = (da.from_array(rng.standard_normal((n, d), dtype=np.float32), chunks=(rows, d))
            for _ in range(2))
    est = svd.randomized_bytes(n, d, k, sd.RandomizedSVD(), chunks=len(x.chunks[0]))
    run = lambda: sd.svcca(x, y, keep=k, svd="randomized")
else:
    n, layers, w, rows = a
    xs = {f"l{i}": da.from_array(rng.standard_normal((n, w), dtype=np.float32),
                                 chunks=(rows, w)) for i in range(layers)}
    arrs = list(xs.values())
    plan, se = matrix._memory_plan(range(layers), range(layers), arrs, None,
                                   max_width=8192, split_every=8)
    est = max(matrix._tile_row_bytes(t, arrs, None, se) for t, _ in plan)
    run = lambda: sd.similarity_matrix(xs, measure="linear_cka")
base = rss()
t = time.perf_counter()
run()
print(json.dumps({"measured": rss() - base, "estimate": int(est),
                  "wall": time.perf_counter() - t}))
"""

REFUSAL = r"""
import time, warnings
import dask.array as da
import svcca_dask as sd
warnings.simplefilter("ignore")
x = da.random.random((512, 256, 56, 56), chunks=(32, 256, 56, 56)).astype("float32")
t = time.perf_counter()
try:
    sd.svcca(x, x * 2, keep=0.99, conv="flatten", layout="NCHW")
except MemoryError as err:
    print(f"refused in {time.perf_counter() - t:.2f} s: {err}")
else:
    print("NOT refused")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three cases instead of five")
    args = ap.parse_args()
    print(f"{'case':<68} {'estimate':>9} {'measured':>9} {'ratio':>6} {'wall':>6}")
    for name, case in (QUICK if args.quick else CASES).items():
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(case)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mib = 2**20
        print(
            f"{name:<68} {r['estimate'] / mib:7.0f}Mi {r['measured'] / mib:7.0f}Mi "
            f"{r['estimate'] / r['measured']:6.2f} {r['wall']:5.1f}s"
        )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", REFUSAL], capture_output=True, text=True)
    print(
        f"flattened ResNet layer1, 512 images (process {time.perf_counter() - t:.1f} s): "
        f"{(out.stdout or out.stderr).strip()}"
    )


if __name__ == "__main__":
    main()
