"""Conv-layer benchmark: ResNet-50-shaped layers (256 x 56 x 56) in local Zarr stores.

Prints, for the same data and in the same run (each measurement in its own
subprocess, so that its peak memory, ``ru_maxrss``, is its own):

1. The machine's limit, measured on four stored chunks (32 images) in memory,
   one process per core at once, one thread each, time divided by the number
   of cores (also one process alone, assuming perfect scaling), the fastest
   of three runs of each kernel: for "dft",
   ``scipy.fft.rfft2`` (float64) of both layers plus the per-frequency Gram
   of every rfft frequency as one ZHERK per frequency and stored chunk (8
   images: the issue's "one chunk in memory"), also with all 32 images in
   one ZHERK per frequency (the strict limit: larger products run faster)
   and as ``np.einsum("nfc,nfd->fcd", optimize=True)`` (the DESIGN.md
   yardstick, far slower here); for "samples", the float64 SYRK of the
   stacked chunk.
2. ``cca(conv="dft")`` with ``DFT(memory_limit=--memory-limit)`` (default
   1.25 GiB: the frequency bands keep the statistics and the tasks' buffers
   under it, four passes here; the process peaks ~0.35-0.4 GiB higher, under 2 GB)
   on two stored pairs, ``--images`` and twice
   as many, to show that peak memory does not depend on the number of
   images; with the defaults (a quarter of the machine's memory: one pass
   here) on the larger pair; with ``--all`` also one pass with two lanes
   (two accumulators); and ``conv="samples"`` on both.
   Wall time, data GB/s, peak RSS, passes, lanes; the steady cost per image
   (the folds' median task time, every pass, from Dask's profiler) and the
   fixed rest (the first pass's first write of its accumulator, the
   per-frequency CCA, set-up); the ratio of the per-image cost to the limit
   (and to the one-process limit) and to the
   strict limit; and both extrapolated to 2,000 images, the issue's size
   (6.4 GB per layer).
3. A ~10x smaller pair (80 x 32 x 32 per image, ``--images`` images) against a
   straightforward in-memory NumPy implementation of the paper's method
   (``numpy.fft.fft2`` of both layers, then one CCA per frequency in a Python
   loop, as google/svcca's ``fourier_ccas``): speedup and the largest
   difference of the coefficients.
4. Randomized vs exact SVD (``svcca(svd=...)``) on a wide 2-D pair with a
   clear spectral gap: time and the largest coefficient difference.

Scaling: the issue asks for 2,000 images per layer; the defaults here (160 and
320 images: 0.5 and 1.0 GB per layer) keep the run near 5 minutes on two
shared cores, and the per-image/fixed split extrapolates to 2,000 images.
``--sizes 2000`` measures that size instead (9.4 GB of Zarr on disk, written
once in ~2 minutes; a run with ``--skip-small --skip-svd`` took ~7 minutes
here). Only the ratios carry over to another machine.

Usage::

    python benchmarks/bench_conv.py                    # 160 and 320 images
    python benchmarks/bench_conv.py --images 256 --all # the README's figures
    python benchmarks/bench_conv.py --images 32 --skip-small --skip-svd   # quick
    python benchmarks/bench_conv.py --sizes 2000 --skip-small --skip-svd  # the issue's size
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

C, H, W = 256, 56, 56
CHUNK = 8  # images per stored chunk: 25.7 MB of float32 per layer
LIMIT_IMAGES = 32  # images in memory for the limit: four stored chunks
LIMIT_REPEATS = 3  # the limit is the fastest of this many runs of each kernel


# --------------------------------------------------------------------------- #
# data


def make_pair(path: Path, images: int, c: int, h: int, w: int, chunk: int = CHUNK) -> None:
    """Two NCHW float32 layers with ``dimension_names``: x is ReLU of smooth
    random maps (plus 1: large means); y is a channel mix of x shifted by one
    pixel, plus noise (correlated, nearly translation-equivariant)."""
    import zarr
    from zarr.codecs import BloscCodec

    marker = path / f".complete-{images}-{c}-{h}-{w}-{chunk}"
    if marker.exists():
        return
    root = zarr.open_group(str(path), mode="w")
    arrays = {
        name: root.create_array(
            name,
            shape=(images, c, h, w),
            chunks=(chunk, c, h, w),
            dtype="float32",
            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            dimension_names=("sample", "channel", "height", "width"),
        )
        for name in ("x", "y")
    }
    rng = np.random.default_rng(0)
    mix = (rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32)
    import scipy.ndimage as ndi

    for start in range(0, images, chunk):
        m = min(chunk, images - start)
        base = rng.standard_normal((m, c, h, w)).astype(np.float32)
        base = ndi.uniform_filter(base, size=(1, 1, 3, 3), mode="wrap")
        x = np.maximum(base, 0) + 1.0
        y = np.einsum("dc,nchw->ndhw", mix, np.roll(x, 1, axis=3), optimize=True)
        y += 0.5 * rng.standard_normal(y.shape).astype(np.float32)
        arrays["x"][start : start + m] = x
        arrays["y"][start : start + m] = y
    marker.touch()


# --------------------------------------------------------------------------- #
# measurements (each runs in its own subprocess)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_measure(store: str, conv: str, memory_limit: str | None, lanes: int | None) -> dict:
    import svcca_dask as sd
    from svcca_dask.conv import accumulate

    x, y = f"{store}/x", f"{store}/y"
    opt = sd.DFT(memory_limit=memory_limit, lanes=lanes) if conv == "dft" else conv
    from dask.diagnostics import Profiler

    info: dict = {}
    if conv == "dft":
        run = accumulate.DFTRun(x, y, conv=opt, layout=None, names=("x", "y"))
        info = {"passes": len(run.bands), "lanes": run.lanes}
    t = time.perf_counter()
    with Profiler() as prof:
        r = sd.cca(x, y, conv=opt)
    wall = time.perf_counter() - t
    n = int(r.n_samples if conv != "samples" else r.n_samples // (H * W))
    if conv == "dft":
        info["steady_s_per_image"] = _steady_per_image(
            prof.results, n, info["passes"], info["lanes"]
        )
    return {"wall_s": wall, "score": r.score, "n_coef": int(r.coefficients.size), "n": n, **info}


def _steady_per_image(results: list, n: int, passes: int, lanes: int) -> float:
    """Wall seconds per image of the folds once running, all passes together.

    Each pass's fold tasks (read, transform, ZHERK for one row chunk) are told
    apart by time; a lane's first fold also writes its whole accumulator for
    the first time (a fixed cost), so the steady cost of a fold is the median
    of the others. Lanes run at once: per image = median / images per fold /
    min(lanes, cores).
    """
    folds = sorted((t for t in results if "dft_fold" in str(t.key)), key=lambda t: t.start_time)
    per_pass = len(folds) // passes
    cores = os.cpu_count() or 1
    total = 0.0
    for p in range(passes):
        batch = folds[p * per_pass : (p + 1) * per_pass]
        steady = batch[min(lanes, len(batch) - 1) :] or batch
        median = float(np.median([t.end_time - t.start_time for t in steady]))
        total += median / (n / per_pass) / min(lanes, cores)
    return total


def run_finalize_only(c: int, f: int) -> dict:
    """The fixed cost after the pass: the batched per-frequency CCA of ``f``
    frequencies of ``c + c`` channels (random Hermitian statistics)."""
    import dask
    from dask.delayed import delayed

    from svcca_dask.conv import accumulate, plan
    from svcca_dask.conv import measures as dft_measures

    rng = np.random.default_rng(0)
    block = plan.frequency_blocks(f, 2 * c)[0]
    nb = block.stop - block.start
    z = rng.standard_normal((nb, 4 * c, 2 * c)) + 1j * rng.standard_normal((nb, 4 * c, 2 * c))
    cov = np.swapaxes(z.conj(), 1, 2) @ z
    st = accumulate.DFTStats(
        n=4 * c,
        frequencies=np.zeros((nb, 2), int),
        multiplicity=np.ones(nb, int),
        band=(1, 1),
        sizes=(c, c),
        mean=np.zeros((nb, 2 * c), complex),
        cov=cov,
        x_shape=(c, 1, 1),
        y_shape=(c, 1, 1),
        x_scale=1.0,
        y_scale=1.0,
    )
    n_blocks = -(-f // nb)
    t = time.perf_counter()
    tasks = [delayed(dft_measures._cca_part)(st, epsilon=1e-10) for _ in range(n_blocks)]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        dask.compute(*tasks)
    return {"wall_s": time.perf_counter() - t, "frequencies": n_blocks * nb}


def _barrier(where: str | None, name: str, count: int, timeout: float = 120.0) -> None:
    """Wait until ``count`` processes have reached ``name`` (files in ``where``)."""
    if where is None:
        return
    Path(where, f"{name}-{os.getpid()}").touch()
    end = time.monotonic() + timeout
    while len(list(Path(where).glob(f"{name}-*"))) < count and time.monotonic() < end:
        time.sleep(0.001)


def run_limit(store: str, conv: str, barrier: str | None = None, count: int = 1) -> dict:
    """Four stored chunks of both layers in memory; the bare kernels on one thread.

    Run alone, the limit of the machine is this time divided by the number
    of cores (perfect parallel scaling). Run as one process per core at once
    (``barrier``: a folder where the ``count`` processes meet before each
    timed section), it is measured: the cores share caches and memory
    bandwidth, and two threads of the bare ZHERK loop ran 1.7-1.85x faster
    than one here, not 2x. On a shared VM, multithreaded BLAS on small
    products is erratic: one thread per core is what the pass runs too.
    Each kernel runs ``LIMIT_REPEATS`` times and the fastest run counts (a
    limit; this VM's neighbours slowed single runs by up to 2x).
    """
    import scipy.fft as sfft
    import zarr
    from scipy.linalg.blas import zherk
    from threadpoolctl import threadpool_limits

    rows = LIMIT_IMAGES if conv == "dft" else CHUNK
    x = np.asarray(zarr.open_array(f"{store}/x", mode="r")[:rows])
    y = np.asarray(zarr.open_array(f"{store}/y", mode="r")[:rows])
    m, c, h, w = x.shape
    out: dict = {"images": m}
    with threadpool_limits(limits=1, user_api="blas"):
        if conv == "samples":
            best = np.inf
            for rep in range(LIMIT_REPEATS):
                _barrier(barrier, f"syrk{rep}", count)
                t = time.perf_counter()
                z = np.empty((m * h * w, 2 * c))
                z[:, :c] = x.transpose(0, 2, 3, 1).reshape(-1, c)
                z[:, c:] = y.transpose(0, 2, 3, 1).reshape(-1, c)
                z -= z.mean(axis=0)
                _ = z.T @ z  # one SYRK
                best = min(best, time.perf_counter() - t)
                del z, _
            out["syrk_s"] = best
            return out
        f = h * (w // 2 + 1)
        fx = np.empty((m, c, h, w // 2 + 1), dtype=np.complex128)
        fy = np.empty_like(fx)
        out["rfft2_s"] = np.inf
        for rep in range(1 + LIMIT_REPEATS):  # the first run warms up: buffers, plans
            _barrier(barrier, f"rfft{rep}", count)
            t = time.perf_counter()
            for i in range(m):  # image by image: float64 buffers small enough to be reused
                fx[i] = sfft.rfft2(x[i].astype(np.float64), axes=(1, 2), workers=1)
                fy[i] = sfft.rfft2(y[i].astype(np.float64), axes=(1, 2), workers=1)
            if rep:
                out["rfft2_s"] = min(out["rfft2_s"], time.perf_counter() - t)
        z = np.concatenate([fx.reshape(m, c, f), fy.reshape(m, c, f)], axis=1)  # (m, 2c, F)
        del fx, fy
        zt = np.ascontiguousarray(z[:CHUNK].transpose(0, 2, 1))  # (CHUNK, F, 2c)
        if barrier is None:  # a yardstick, not a limit: measured alone
            t = time.perf_counter()
            _ = np.einsum("nfc,nfd->fcd", zt.conj(), zt, optimize=True)
            out["einsum_s"] = (time.perf_counter() - t) * m / CHUNK
            del _  # (F, 2C, 2C): 6.8 GB here
        del zt
        zf = np.ascontiguousarray(z.transpose(2, 1, 0))  # (F, 2c, m)
        del z
        acc = np.zeros((f, 2 * c, 2 * c), dtype=np.complex128)
        acc[:] = 0  # page-faulted before the clock starts
        for key, k in (("zherk_s", CHUNK), ("zherk_best_s", m)):
            out[key] = np.inf
            for rep in range(LIMIT_REPEATS):
                _barrier(barrier, f"{key}{rep}", count)
                t = time.perf_counter()
                for s0 in range(0, m, k):  # one ZHERK per frequency and k images
                    for i in range(f):
                        zherk(
                            1.0,
                            zf[i, :, s0 : s0 + k].T,
                            beta=1.0,
                            c=acc[i].T,
                            trans=2,
                            lower=0,
                            overwrite_c=1,
                        )
                out[key] = min(out[key], time.perf_counter() - t)
    return out


def run_small(store: str) -> dict:
    """The paper's method in memory (numpy fft2, per-frequency loop) against ours."""
    import zarr

    import svcca_dask as sd

    t = time.perf_counter()
    r = sd.cca(f"{store}/x", f"{store}/y", conv="dft")
    ours = time.perf_counter() - t

    t = time.perf_counter()
    x = np.asarray(zarr.open_array(f"{store}/x", mode="r")[:], dtype=np.float64)
    y = np.asarray(zarr.open_array(f"{store}/y", mode="r")[:], dtype=np.float64)
    fx = np.fft.fft2(x, axes=(2, 3))
    fy = np.fft.fft2(y, axes=(2, 3))
    n = x.shape[0]
    coefs = []
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            a, b = fx[:, :, i, j], fy[:, :, i, j]
            a, b = a - a.mean(0), b - b.mean(0)
            sxx, syy = a.conj().T @ a / (n - 1), b.conj().T @ b / (n - 1)
            sxy = a.conj().T @ b / (n - 1)

            def isqrt(s):
                e, v = np.linalg.eigh(s + 1e-10 * np.abs(s).max() * np.eye(s.shape[0]))
                return (v / np.sqrt(e)) @ v.conj().T

            coefs.append(np.linalg.svd(isqrt(sxx) @ sxy @ isqrt(syy), compute_uv=False))
    ref = np.sort(np.concatenate(coefs))[::-1]
    reference = time.perf_counter() - t
    return {
        "ours_s": ours,
        "reference_s": reference,
        "max_abs_diff": float(np.max(np.abs(ref - r.coefficients))),
        "score": r.score,
    }


def run_svd() -> dict:
    import svcca_dask as sd

    rng = np.random.default_rng(0)
    n, dx, dy, r = 10_000, 2048, 1536, 48
    z = rng.standard_normal((n, r)).astype(np.float32)
    x = z @ rng.standard_normal((r, dx)).astype(np.float32) * 3
    x += 0.05 * rng.standard_normal((n, dx)).astype(np.float32)
    y = z[:, :32] @ rng.standard_normal((32, dy)).astype(np.float32) * 3
    y += 0.05 * rng.standard_normal((n, dy)).astype(np.float32)
    out = {}
    for svd in ("covariance", "randomized", "tsqr"):
        t = time.perf_counter()
        res = sd.svcca(x, y, keep=0.99, svd=svd)
        out[svd] = {
            "wall_s": time.perf_counter() - t,
            "coef": res.coefficients.tolist(),
            "kept": [res.x_kept, res.y_kept],
        }
    return out


# --------------------------------------------------------------------------- #
# driver


def _child(kind: str, *args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _warm(store: str) -> None:
    """Read every file of ``store`` once, into the OS page cache: the limit
    processes hold ~7 GB each and evict it, and the measures should time the
    computation, not the disk (the limit reads from memory too)."""
    for root, _dirs, files in os.walk(store):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def _children(count: int, kind: str, *args: str) -> list[dict]:
    """``count`` children at once (see :func:`run_limit`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as where:
        cmd = [sys.executable, __file__, "--child", kind, *args, where, str(count)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(count)]
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a {kind} child failed")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def _child_main(kind: str, args: list[str]) -> None:
    if kind == "measure":
        res = run_measure(
            args[0],
            args[1],
            None if args[2] == "-" else args[2],
            None if args[3] == "-" else int(args[3]),
        )
    elif kind == "limit":
        barrier, count = (args[2], int(args[3])) if len(args) > 2 else (None, 1)
        res = run_limit(args[0], args[1], barrier, count)
    elif kind == "finalize":
        res = run_finalize_only(int(args[0]), int(args[1]))
    elif kind == "small":
        res = run_small(args[0])
    else:
        res = run_svd()
    res["peak_mb"] = _peak_mb()
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=160, help="images of the smaller main pair")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="images of each main pair, instead of --images and twice as many "
        "(e.g. --sizes 2000: the issue's size, measured instead of extrapolated)",
    )
    ap.add_argument(
        "--memory-limit", default="1.25GiB", help="DFT(memory_limit=...) of the first runs"
    )
    ap.add_argument("--data", default=str(Path(__file__).parent / "data" / "conv"))
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--skip-svd", action="store_true")
    ap.add_argument(
        "--all",
        action="store_true",
        help="also one pass with two lanes (memory_limit=--all-limit, two accumulators)",
    )
    ap.add_argument("--all-limit", default="16GiB", help="DFT(memory_limit=...) of --all")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child_main(a.child[0], a.child[1:])
        return

    data = Path(a.data)
    sizes = a.sizes or [a.images, 2 * a.images]
    if sizes[0] < LIMIT_IMAGES:
        ap.error(f"the first main pair needs at least {LIMIT_IMAGES} images (the limit reads them)")
    print(
        f"# conv benchmark: pairs of {C} x {H} x {W} float32 layers (NCHW, Zarr, blosc-lz4, "
        f"{CHUNK} images per chunk); {os.cpu_count()} cores; load average "
        f"{os.getloadavg()[0]:.1f} at the start"
    )
    for n in sizes:
        t = time.perf_counter()
        make_pair(data / f"main-{n}.zarr", n, C, H, W)
        print(
            f"# data: {n} images, {2 * n * C * H * W * 4 / 1e9:.2f} GB for both layers "
            f"(written in {time.perf_counter() - t:.0f} s or cached)"
        )

    f_unique = (H * W - 4) // 2 + 4
    cores = os.cpu_count() or 1
    fin = _child("finalize", str(C), str(f_unique))
    print(
        f"# per-frequency CCA after the pass (fixed cost, any number of images): "
        f"{fin['wall_s']:.1f} s for {f_unique} frequencies of {C}+{C} channels"
    )
    store0 = str(data / f"main-{sizes[0]}.zarr")
    lim = _child("limit", store0, "dft")
    li = lim["images"]
    one_core = {  # one process alone, time / cores
        "einsum": (lim["rfft2_s"] + lim["einsum_s"]) / li / cores,
        "zherk": (lim["rfft2_s"] + lim["zherk_s"]) / li / cores,
    }
    lim_s = _child("limit", store0, "samples")
    one_core["samples"] = lim_s["syrk_s"] / lim_s["images"] / cores
    # one process per core at once: time / cores, the mean over the processes
    all_cores = _children(cores, "limit", store0, "dft")
    both = {
        k: float(np.mean([r[k] for r in all_cores])) for k in ("rfft2_s", "zherk_s", "zherk_best_s")
    }
    per_img = {
        "zherk": (both["rfft2_s"] + both["zherk_s"]) / li / cores,
        "zherk_best": (both["rfft2_s"] + both["zherk_best_s"]) / li / cores,
    }
    all_s = _children(cores, "limit", store0, "samples")
    per_img["samples"] = float(np.mean([r["syrk_s"] for r in all_s])) / lim_s["images"] / cores
    print(
        f"# limits per image ({cores} cores, {li} images in memory; one process per core at "
        f"once, one thread each, time / cores): rfft2 {1e3 * both['rfft2_s'] / li / cores:.1f} "
        f"ms + Gram of each stored chunk ({CHUNK} images) as one ZHERK per frequency "
        f"{1e3 * both['zherk_s'] / li / cores:.1f} ms = {1e3 * per_img['zherk']:.1f} ms (the "
        f"limit), or of all {li} images at once {1e3 * per_img['zherk_best']:.1f} ms (the "
        f"strict limit); samples: SYRK {1e3 * per_img['samples']:.1f} ms. One process alone, "
        f"time / cores (perfect scaling): {1e3 * one_core['zherk']:.1f} ms; samples "
        f"{1e3 * one_core['samples']:.1f} ms; the Gram as einsum "
        f"{1e3 * lim['einsum_s'] / li / cores:.1f} ms"
    )

    big = sizes[-1]
    runs = [("dft", a.memory_limit, "-", f"dft, {a.memory_limit}", sizes)]
    runs += [("dft", "-", "-", "dft, defaults", [big])]
    if a.all:  # one pass, one accumulator per lane
        runs.append(("dft", a.all_limit, "2", f"dft, {a.all_limit}, 2 lanes", [big]))
    runs += [("samples", "-", "-", "samples", sizes)]
    print(
        f"\n{'cca(conv=...)':24s} {'images':>6s} {'wall s':>7s} {'GB/s':>5s} {'peak MB':>8s} "
        f"{'passes':>6s} {'lanes':>5s} {'ms/image':>8s} {'fixed s':>7s} {'ratio':>5s} "
        f"{'1-core':>6s} {'strict':>6s} {'2,000 images: s':>15s} {'ratio':>5s}"
    )
    for conv, limit, lanes, label, ns in runs:
        for n in ns:
            store = str(data / f"main-{n}.zarr")
            _warm(store)
            r = _child("measure", store, conv, limit, lanes)
            gb = 2 * n * C * H * W * 4 / 1e9
            per = r.get("steady_s_per_image", r["wall_s"] / n)
            lim_img = per_img["zherk" if conv == "dft" else "samples"]
            ideal = one_core["zherk" if conv == "dft" else "samples"]
            strict = per_img["zherk_best" if conv == "dft" else "samples"]
            fixed = r["wall_s"] - n * per
            w2k = fixed + 2000 * per
            print(
                f"{label:24s} {n:6d} {r['wall_s']:7.1f} {gb / r['wall_s']:5.2f} "
                f"{r['peak_mb']:8.0f} {r.get('passes', 1):6d} {r.get('lanes', '-')!s:>5s} "
                f"{1e3 * per:8.1f} {fixed:7.1f} {per / lim_img:5.2f} {per / ideal:6.2f} "
                f"{per / strict:6.2f} "
                f"{w2k:15.0f} {w2k / (2000 * lim_img):5.2f}"
            )
    print(
        "# ms/image: the folds' steady cost, every pass; fixed: the rest of the wall time (the first "
        "pass's first write of its accumulator, the per-frequency CCA, graph and pass set-up); "
        "ratio: to the limit measured on all cores at once (dft: rfft2 + one ZHERK per "
        "frequency and stored chunk; samples: the SYRK); 1-core: to one core's time / cores; "
        f"strict: to the ZHERK of {li} images at once. The einsum yardstick is "
        f"{one_core['einsum'] / one_core['zherk']:.0f}x slower than ZHERK here."
    )

    if not a.skip_small:
        c, h, w = 80, 32, 32
        store = data / f"small-{a.images}.zarr"
        make_pair(store, a.images, c, h, w)
        _warm(str(store))
        s = _child("small", str(store))
        print(
            f"\nsmall pair ({a.images} images of {c} x {h} x {w}, {C * H * W / (c * h * w):.1f}x "
            f"smaller per image): ours {s['ours_s']:.1f} s, in-memory per-frequency loop "
            f"{s['reference_s']:.1f} s, speedup {s['reference_s'] / s['ours_s']:.1f}x; "
            f"max |coefficient difference| {s['max_abs_diff']:.1e}; peak {s['peak_mb']:.0f} MB "
            f"(both in one process)"
        )

    if not a.skip_svd:
        s = _child("svd")
        exact = np.array(s["covariance"]["coef"])
        print(
            "\nSVD step on a wide pair (10,000 x 2048 and 10,000 x 1536, rank 48 + noise), keep=0.99:"
        )
        for k in ("covariance", "tsqr", "randomized"):
            coef = np.array(s[k]["coef"])
            diff = np.max(np.abs(coef - exact)) if coef.size == exact.size else float("nan")
            print(
                f"  svd={k:11s} {s[k]['wall_s']:6.1f} s  kept {s[k]['kept']}  "
                f"max |coef - covariance| {diff:.1e}"
            )


if __name__ == "__main__":
    main()
