"""Batch pipeline figures: extraction into a store, and a job run.

Prints measured figures (no assertions). Timings on a shared machine only mean
something as ratios within one run.

1. Extraction of a small conv net's layers: the forward pass alone with the
   same hooks (the yardstick), ``extract_activations`` (batches buffered into
   whole chunks), and appending every batch as it comes (what a naive writer
   does: one read-modify-write of the partly filled chunk per batch).
2. A job of 6 x 6 layer pairs of two stores (SVCCA): the runner (one
   similarity-matrix pass), the same 36 pairs as separate ``svcca`` calls, and
   an idempotent rerun.

Run: ``python benchmarks/bench_pipeline.py``
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

import svcca_dask as sd
from pipeline.jobs import parse_job
from pipeline.runner import run_job
from svcca_dask.store import create_store


def timed(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_extract(tmp: str) -> None:
    import torch
    from torch import nn

    from pipeline.extract import extract_activations

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(512, 10),
    )
    n, batch = 2048, 32
    x = torch.randn(n, 3, 32, 32)
    y = torch.arange(n) % 10
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=False
    )
    layers = ["1", "3", "6"]  # 16x32x32, 32x32x32, 10
    mods = dict(model.named_modules())
    out_bytes = n * (16 * 32 * 32 + 32 * 32 * 32 + 10) * 4

    def forward_only():
        keep = []
        hs = [mods[name].register_forward_hook(lambda m, a, o: keep.append(o)) for name in layers]
        with torch.inference_mode():
            for xb, _ in loader:
                model(xb)
                [t.numpy() for t in keep]
                keep.clear()
        for h in hs:
            h.remove()

    def extract():
        extract_activations(
            model,
            loader,
            os.path.join(tmp, "e.zarr"),
            layers=layers,
            overwrite=True,
            progress=False,
        )

    def per_batch():
        s = create_store(os.path.join(tmp, "p.zarr"), overwrite=True)
        keep = {}
        hs = [
            mods[name].register_forward_hook(lambda m, a, o, name=name: keep.__setitem__(name, o))
            for name in layers
        ]
        with torch.inference_mode():
            for xb, yb in loader:
                model(xb)
                for name in layers:
                    s.append(name, keep[name].numpy())
                s.append_labels(yb.numpy())
        for h in hs:
            h.remove()

    t_fwd = timed(forward_only)
    t_ext = timed(extract)
    t_pb = timed(per_batch)
    mb = out_bytes / 2**20
    print(f"extraction: {n} samples, batch {batch}, {mb:.0f} MiB of float32 activations")
    print(f"  forward + hooks only       {t_fwd:6.2f} s")
    print(
        f"  extract_activations        {t_ext:6.2f} s  ({mb / t_ext:5.0f} MiB/s, "
        f"x{t_ext / t_fwd:.2f} the forward pass)"
    )
    print(f"  append every batch         {t_pb:6.2f} s  (x{t_pb / t_ext:.2f} extract_activations)")


def bench_job(tmp: str) -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    widths = [32, 64, 64, 96, 128, 128]
    base = rng.standard_normal((n, 16))
    for name in ("a", "b"):
        s = create_store(os.path.join(tmp, f"{name}.zarr"), overwrite=True)
        for i, w in enumerate(widths):
            z = base @ rng.standard_normal((16, w)) + rng.standard_normal((n, w))
            s.append(f"l{i}", z.astype(np.float32))
    spec = {
        "output": "out",
        "stores": {"a": "a.zarr", "b": "b.zarr"},
        "pairs": "all",
        "measures": ["svcca"],
        "cluster": "threads",
    }
    job = parse_job(spec, base_dir=tmp)

    def run_forced():
        run_job(job, force=True, progress=False)

    def per_pair():
        for p in job.pairs:
            sd.svcca(job.layer_path(p.x_store, p.x_layer), job.layer_path(p.y_store, p.y_layer))

    def rerun():
        r = run_job(job, progress=False)
        assert r.computed == 0

    t_run = timed(run_forced)
    t_pairs = timed(per_pair, repeat=1)
    t_rerun = timed(rerun)
    print(f"job: 6 x 6 SVCCA pairs, {n} samples, widths {widths}, threads")
    print(f"  run_job (one matrix pass)  {t_run:6.2f} s")
    print(f"  36 svcca calls             {t_pairs:6.2f} s  (x{t_pairs / t_run:.2f} run_job)")
    print(f"  idempotent rerun           {t_rerun:6.2f} s  (all 36 results reused)")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        bench_extract(tmp)
        bench_job(tmp)
