"""Inputs where users keep them: memory and time of each kind against a project store.

Writes one pair of layers, ``(N, 512)`` and ``(N, 128)`` float32 (N = 1.2M by
default: 3.07 GB), as

* ``.npy`` files opened with ``np.load(mmap_mode="r")`` (memmaps),
* a project store (``sd.create_store``: Blosc-LZ4, CRC32C, 16 MiB chunks),
* a Hugging Face ``datasets`` folder (``save_to_disk``: Arrow shards),
* safetensors shards (``"shards/*.safetensors/x"``),

and measures ``sd.linear_cka`` on each in a fresh subprocess: its wall time
and its peak private memory (``RssAnon`` sampled from ``/proc/self/status``
inside the process that does the work: a parent's ``ru_maxrss`` would report
its own high-water mark). Runs are interleaved, ``--repeat`` times, medians.

Then the accumulator: ``sd.Accumulator`` fed the first ``--acc-rows`` rows in
batches of 64, 512 and 4096 rows against one ``sd.linear_cka`` pass, beside a
minibatch-averaged CKA (the mean of per-batch CKA estimates, as torch-cka and
google's MinibatchCKA compute it) at the same batch sizes. Usage::

    python benchmarks/bench_inputs.py                  # 1.2M rows, 3 repeats
    python benchmarks/bench_inputs.py --rows 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTHS = {"x": 512, "y": 128}

_CHILD = r"""
import json, sys, threading, time
def rss_anon():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
peak, done = [0], threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.005)
import numpy as np
import svcca_dask as sd
kind, root = sys.argv[1], sys.argv[2]
inputs = {
    "memmap": lambda: (np.load(f"{root}/x.npy", mmap_mode="r"), np.load(f"{root}/y.npy", mmap_mode="r")),
    "store": lambda: (f"{root}/store.zarr/x", f"{root}/store.zarr/y"),
    "hf-datasets": lambda: (f"{root}/hf/x", f"{root}/hf/y"),
    "safetensors": lambda: (f"{root}/st/*.safetensors/x", f"{root}/st/*.safetensors/y"),
}
base = rss_anon()
threading.Thread(target=watch, daemon=True).start()
t = time.perf_counter()
score = sd.linear_cka(*inputs[kind]()).score
seconds = time.perf_counter() - t
done.set()
print(json.dumps({"score": score, "seconds": seconds, "peak": max(peak[0], rss_anon()), "base": base}))
"""


def write_inputs(root: Path, n: int) -> None:
    """The same pair of layers in every kind measured, written block by block."""
    import datasets

    datasets.disable_progress_bars()
    import pyarrow as pa
    from safetensors.numpy import save_file

    import svcca_dask as sd

    block = 100_000
    rng = np.random.default_rng(0)
    mm = {
        k: np.lib.format.open_memmap(root / f"{k}.npy", mode="w+", dtype=np.float32, shape=(n, d))
        for k, d in WIDTHS.items()
    }
    mix = rng.standard_normal((WIDTHS["x"], WIDTHS["y"])).astype(np.float32) / 8
    for a in range(0, n, block):
        b = min(n, a + block)
        x = np.maximum(rng.standard_normal((b - a, WIDTHS["x"]), dtype=np.float32), 0)
        mm["x"][a:b] = x
        mm["y"][a:b] = x @ mix + rng.standard_normal((b - a, WIDTHS["y"]), dtype=np.float32)
    for m in mm.values():
        m.flush()
    x, y = np.load(root / "x.npy", mmap_mode="r"), np.load(root / "y.npy", mmap_mode="r")
    store = sd.create_store(root / "store.zarr")
    (root / "st").mkdir()
    shard = 4 * block
    for a in range(0, n, block):
        store.append("x", np.asarray(x[a : a + block]))
        store.append("y", np.asarray(y[a : a + block]))
    for i, a in enumerate(range(0, n, shard)):
        save_file(
            {
                "x": np.ascontiguousarray(x[a : a + shard]),
                "y": np.ascontiguousarray(y[a : a + shard]),
            },
            str(root / "st" / f"part-{i:05d}.safetensors"),
        )

    def column(a: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(a).reshape(-1)), a.shape[1]
        )

    tables = [
        pa.table({"x": column(x[a : a + block]), "y": column(y[a : a + block])})
        for a in range(0, n, block)
    ]
    datasets.Dataset(pa.concat_tables(tables)).save_to_disk(
        str(root / "hf"), max_shard_size="500MB"
    )


def run_child(kind: str, root: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(root)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def minibatch_cka(x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """The mean of per-batch linear CKA estimates (the peers' minibatch CKA)."""
    vals = []
    for a in range(0, len(x) - batch + 1, batch):
        xb = x[a : a + batch] - x[a : a + batch].mean(0)
        yb = y[a : a + batch] - y[a : a + batch].mean(0)
        sxy = np.linalg.norm(xb.T @ yb) ** 2
        vals.append(sxy / (np.linalg.norm(xb.T @ xb) * np.linalg.norm(yb.T @ yb)))
    return float(np.mean(vals))


def accumulator_table(root: Path, rows: int) -> None:
    import svcca_dask as sd

    x = np.asarray(np.load(root / "x.npy", mmap_mode="r")[:rows], dtype=np.float64)
    y = np.asarray(np.load(root / "y.npy", mmap_mode="r")[:rows], dtype=np.float64)
    t = time.perf_counter()
    one = sd.linear_cka(x, y).score
    one_s = time.perf_counter() - t
    print(f"\naccumulator, {rows} rows: one sd.linear_cka pass {one:.6f} in {one_s:.2f} s")
    print(f"{'batch':>6} {'Accumulator':>12} {'|diff|':>9} {'seconds':>8} {'minibatch CKA':>14}")
    for batch in (64, 512, 4096):
        acc = sd.Accumulator(measures=["cka"])
        t = time.perf_counter()
        for a in range(0, rows, batch):
            acc.update(x[a : a + batch], y[a : a + batch])
        got = acc.result()["cka"].score
        secs = time.perf_counter() - t
        print(
            f"{batch:>6} {got:>12.6f} {abs(got - one):>9.1e} {secs:>8.2f} {minibatch_cka(x, y, batch):>14.6f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--acc-rows", type=int, default=100_000)
    ap.add_argument(
        "--dir", default=None, help="where to write the inputs (default: a temporary folder)"
    )
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-inputs-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        write_inputs(root, args.rows)
        data = sum((root / f"{k}.npy").stat().st_size for k in WIDTHS)
        print(
            f"{args.rows} rows, x (N, 512) + y (N, 128) float32: {data / 1e9:.2f} GB "
            f"(written in {time.perf_counter() - t:.0f} s)"
        )
        kinds = ("store", "memmap", "hf-datasets", "safetensors")
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.repeat):  # interleaved
            for k in kinds:
                runs[k].append(run_child(k, root))
        base = statistics.median(r["seconds"] for r in runs["store"])
        print(f"{'input':<12} {'seconds':>8} {'x store':>8} {'private peak':>13} {'score':>10}")
        for k in kinds:
            secs = statistics.median(r["seconds"] for r in runs[k])
            peak = statistics.median(r["peak"] for r in runs[k])
            print(
                f"{k:<12} {secs:>8.2f} {secs / base:>7.2f}x {peak / 2**30:>10.2f} GiB {runs[k][0]['score']:>10.6f}"
            )
        accumulator_table(root, min(args.acc_rows, args.rows))
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
