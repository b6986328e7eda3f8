"""Conv layers: layouts, samples / mean / flatten reductions, and the per-channel DFT path.

The DFT path is checked three ways: against the CCA of the flattened layers on
translation-invariant data (where the two must agree exactly), against a plain
in-memory implementation of the SVCCA paper's per-frequency loop (any data,
any sizes), and for invariance to chunking, lanes and frequency bands.
"""

import pickle

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from reference import cca as ref_cca
from reference import linear_cka as ref_cka

import svcca_dask as sd
from svcca_dask import conv as sdconv
from svcca_dask._lapack import unpack
from svcca_dask.conv import accumulate, buffers, layout, transform
from svcca_dask.conv import measures as dft_measures
from svcca_dask.conv import plan as cplan
from svcca_dask.io import chunks as io_chunks
from svcca_dask.stats import moments_combine


def translation_invariant(n0=24, cx=3, cy=2, h=4, w=4, noise=0.8, shift=0.0, seed=0):
    """NCHW layers where every base image appears with all its circular shifts.

    y is a translation-equivariant function of x (a channel mix of a shifted
    copy) plus noise, so the canonical correlations are neither 0 nor 1.
    """
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((n0, cx, h, w))
    mix = rng.standard_normal((cy, cx))
    y0 = np.einsum("dc,nchw->ndhw", mix, np.roll(x0, 1, axis=3))
    y0 += noise * rng.standard_normal((n0, cy, h, w))
    shifts = [(a, b) for a in range(h) for b in range(w)]
    x = np.concatenate([np.roll(x0, s, axis=(2, 3)) for s in shifts])
    y = np.concatenate([np.roll(y0, s, axis=(2, 3)) for s in shifts])
    return x + shift, y + shift


def flat(a):
    return a.reshape(a.shape[0], -1)


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def complex_cca(zx, zy):
    """Canonical correlations of complex data (n, d) from the definition."""
    zx, zy = zx - zx.mean(0), zy - zy.mean(0)
    n = zx.shape[0]
    sxx, syy, sxy = (
        zx.conj().T @ zx / (n - 1),
        zy.conj().T @ zy / (n - 1),
        zx.conj().T @ zy / (n - 1),
    )

    def isqrt(s):
        w, v = np.linalg.eigh(s)
        return (v / np.sqrt(w)) @ v.conj().T

    s = np.linalg.svd(isqrt(sxx) @ sxy @ isqrt(syy), compute_uv=False)
    return s[: min(zx.shape[1], zy.shape[1])]


def paper_fourier_ccas(x, y):
    """In-memory SVCCA-paper DFT CCA (google/svcca ``fourier_ccas``): full fft2 of
    NHWC layers, the common band ``-s/2 <= k < s/2`` of the smaller size, one
    CCA per frequency in a Python loop; all coefficients, descending."""
    (hx, wx), (hy, wy) = x.shape[1:3], y.shape[1:3]
    h, w = min(hx, hy), min(wx, wy)

    def crop(a, hh, ww):
        f = np.fft.fft2(a.astype(np.float64), axes=(1, 2))
        fh, fw = np.fft.fftfreq(hh, 1 / hh), np.fft.fftfreq(ww, 1 / ww)
        ih = np.flatnonzero((fh >= -h / 2) & (fh < h / 2))
        iw = np.flatnonzero((fw >= -w / 2) & (fw < w / 2))
        return f[:, ih][:, :, iw]

    fx, fy = crop(x, hx, wx), crop(y, hy, wy)
    out = [complex_cca(fx[:, i, j], fy[:, i, j]) for i in range(h) for j in range(w)]
    return np.sort(np.concatenate(out))[::-1]


# --------------------------------------------------------------------------- #
# the DFT path: exactness


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shift", [0.0, 1e4])
def test_dft_equals_flatten_cca_on_translation_invariant_data(layout, shift):
    x, y = translation_invariant(shift=shift)
    flat_r = sd.cca(flat(x), flat(y))
    xi, yi = (x, y) if layout == "NCHW" else (nhwc(x), nhwc(y))
    r = sd.cca(xi, yi, conv="dft", layout=layout)
    assert isinstance(r, sd.results.DFTCCAResult)
    assert r.coefficients.size == 4 * 4 * 2  # (common H x W) * min(C)
    np.testing.assert_allclose(
        r.coefficients, flat_r.coefficients, atol=1e-8
    )  # the paper's exactness claim
    assert r.score == pytest.approx(flat_r.score, abs=1e-8)
    # conv="flatten" is the same computation as the explicit reshape (NCHW order)
    np.testing.assert_allclose(
        sd.cca(xi, yi, conv="flatten", layout=layout).coefficients, flat_r.coefficients, atol=1e-10
    )


def test_dft_cka_equals_flatten_on_translation_invariant_data():
    x, y = translation_invariant(cx=4, cy=3, h=3, w=5)  # odd sizes: no Nyquist frequency
    r = sd.linear_cka(x, y, conv="dft", layout="NCHW")
    assert r.score == pytest.approx(ref_cka(flat(x), flat(y)), abs=1e-10)  # Parseval


@pytest.mark.filterwarnings("ignore::svcca_dask.SampleSizeWarning")  # small data, on purpose
def test_dft_svcca_equals_flatten_svcca_when_no_conjugate_pair_is_split():
    x, y = translation_invariant(cx=4, cy=3)
    matched = 0
    for keep in (0.3, 0.5, 0.7, 0.9, 0.99, 4, 8, 11, 16):
        r = sd.svcca(x, y, keep=keep, conv="dft", layout="NCHW")
        f = sd.svcca(flat(x), flat(y), keep=keep)
        kx, ky = int(np.sum(r.multiplicity * r.x_kept)), int(np.sum(r.multiplicity * r.y_kept))
        # the DFT keeps conjugate pairs whole: at most one direction more than flatten
        assert 0 <= kx - f.x_kept <= 1 and 0 <= ky - f.y_kept <= 1
        if (kx, ky) != (f.x_kept, f.y_kept):
            continue  # flatten kept half of a pair: an arbitrary direction of its 2-D eigenspace
        matched += 1
        np.testing.assert_allclose(r.coefficients, f.coefficients, atol=1e-8)
        assert r.x_explained == pytest.approx(f.x_explained, abs=1e-10)
    assert matched >= 4


@pytest.mark.parametrize(
    ("xs", "ys"),
    [
        ((5, 6, 6), (3, 6, 6)),
        ((4, 8, 8), (3, 4, 4)),
        ((3, 5, 7), (4, 4, 3)),
        ((2, 3, 4), (3, 4, 5)),
    ],
)
def test_dft_matches_the_papers_per_frequency_loop(xs, ys):
    rng = np.random.default_rng(1)
    n = 200
    z = rng.standard_normal((n, max(xs[1], ys[1]), max(xs[2], ys[2]), 1))  # shared signal
    x = z[:, : xs[1], : xs[2]] + rng.standard_normal((n, xs[1], xs[2], xs[0]))  # NHWC
    y = z[:, : ys[1], : ys[2]] + rng.standard_normal((n, ys[1], ys[2], ys[0]))
    r = sd.cca(x, y, conv="dft", layout="NHWC")
    expected = paper_fourier_ccas(x, y)
    h, w = min(xs[1], ys[1]), min(xs[2], ys[2])
    assert r.band == (h, w)
    assert int(r.multiplicity.sum()) == h * w  # every frequency of the band, once
    assert r.coefficients.size == h * w * min(xs[0], ys[0])
    np.testing.assert_allclose(r.coefficients, expected, atol=1e-8)


def test_different_spatial_sizes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 5, 8, 8))
    y = x[:, :3, ::2, ::2] + 0.5 * rng.standard_normal((300, 3, 4, 4))
    r = sd.cca(x, y, conv="dft", layout="NCHW")
    assert r.band == (4, 4)
    assert r.coefficients.size == 4 * 4 * 3  # (common H x W) * min(C)
    assert np.all((r.coefficients >= 0) & (r.coefficients <= 1))
    assert np.all(np.diff(r.coefficients) <= 0)  # descending
    assert np.all(np.isfinite(r.per_frequency))
    assert r.per_frequency.shape == (r.frequencies.shape[0], 3)
    with pytest.raises(
        ValueError, match=r"same height and width.*\(8, 8\) and \(4, 4\).*'dft'.*'mean'"
    ):
        sd.cca(x, y, conv="samples", layout="NCHW")


def test_per_frequency_results_and_pooling():
    x, y = translation_invariant(cx=3, cy=3)
    r = sd.cca(x, y, conv="dft", layout="NCHW")
    assert r.frequencies.shape == (r.multiplicity.size, 2)
    pooled = np.repeat(r.per_frequency, r.multiplicity, axis=0).ravel()
    np.testing.assert_allclose(np.sort(pooled)[::-1], r.coefficients)  # pooled with multiplicity
    assert r.score == pytest.approx(r.coefficients.mean())
    dc = np.flatnonzero((r.frequencies == 0).all(axis=1))
    assert dc.size == 1 and r.multiplicity[dc[0]] == 1  # DC is its own conjugate
    np.testing.assert_allclose(r.frequency_scores, r.per_frequency.sum(1) / r.n_coefficients)


def test_dft_against_a_2d_target_is_the_cca_of_the_spatial_means():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 6, 5, 5)).astype(np.float32)
    logits = x.mean(axis=(2, 3))[:, :4] @ rng.standard_normal((4, 3)) + rng.standard_normal(
        (400, 3)
    )
    r = sd.cca(x, logits, conv="dft", layout="NCHW")
    m = sd.cca(x.astype(np.float64).mean(axis=(2, 3)), logits)
    assert r.band == (1, 1) and r.frequencies.tolist() == [[0, 0]]  # only DC is common
    np.testing.assert_allclose(r.coefficients, m.coefficients, atol=1e-10)
    # and the other way round
    np.testing.assert_allclose(
        sd.cca(logits, x, conv="dft", layout="NCHW").coefficients, m.coefficients, atol=1e-10
    )


def test_dead_channels_per_frequency_are_dropped_not_nan():
    rng = np.random.default_rng(4)
    n = 300
    x = rng.standard_normal((n, 4, 6, 6))
    x[:, 1] = rng.standard_normal((n, 1, 1))  # constant in space: only its DC is live
    x[:, 3] = 2.5  # dead everywhere
    y = x[:, :2] + rng.standard_normal((n, 2, 6, 6))
    for measure in (sd.cca, sd.svcca, sd.pwcca):
        r = measure(x, y, conv="dft", layout="NCHW")
        assert np.all(np.isfinite(r.coefficients)) and np.isfinite(r.score)
        assert np.all((r.coefficients >= 0) & (r.coefficients <= 1))
    r = sd.cca(x, y, conv="dft", layout="NCHW")
    dc = (r.frequencies == 0).all(axis=1)
    assert np.all(r.n_coefficients[dc] == 2)  # at DC x has 3 live channels, y 2
    # elsewhere x has 2 live channels (0 and 2): still 2
    assert np.all(r.n_coefficients[~dc] == 2)
    with pytest.raises(ValueError, match="x has no live channel at any common frequency"):
        sd.cca(np.full((50, 2, 4, 4), 3.0), y[:50], conv="dft", layout="NCHW")


def test_live_channels_at_different_frequencies_correlate_with_nothing():
    rng = np.random.default_rng(5)
    n = 200
    x = np.broadcast_to(rng.standard_normal((n, 2, 1, 1)), (n, 2, 4, 4)).copy()  # DC only
    y = rng.standard_normal((n, 2, 4, 4))
    y -= y.mean(axis=(2, 3), keepdims=True)  # every frequency but DC
    for measure in (sd.cca, sd.svcca, sd.pwcca):
        r = measure(x, y, conv="dft", layout="NCHW")
        assert r.score == 0.0 and not r.coefficients.any()  # zeros, not an error
        assert r.coefficients.size == 2  # x's two directions, at DC


def test_pwcca_and_side():
    x, y = translation_invariant(cx=4, cy=2)
    r = sd.pwcca(x, y, conv="dft", layout="NCHW")
    assert isinstance(r, sd.results.DFTPWCCAResult)
    assert r.weights.sum() == pytest.approx(1.0)  # normalized
    assert r.weights.shape == r.coefficients.shape
    assert r.score == pytest.approx(float(r.weights @ r.coefficients))
    assert 0 <= r.score <= 1
    assert sd.pwcca(x, y, conv="dft", layout="NCHW", side="smaller").side == "y"
    # the flattened PWCCA is close but, by its definition, not equal
    assert r.score == pytest.approx(sd.pwcca(flat(x), flat(y)).score, abs=0.05)


# --------------------------------------------------------------------------- #
# the DFT path: one pass, chunking, lanes, bands


def test_dft_independent_of_chunking_lanes_and_bands():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((240, 6, 6, 6)).astype(np.float32) + 50
    y = (np.roll(x[:, :4], 1, axis=3) + rng.standard_normal((240, 4, 6, 6))).astype(np.float32)
    ref = sd.cca(x, y, conv="dft", layout="NCHW")
    ref_sv = sd.svcca(x, y, conv="dft", layout="NCHW", keep=0.9)
    cases = [
        (7, sd.DFT(rows=7, lanes=1)),
        (13, sd.DFT(rows=13, lanes=3)),
        (240, sd.DFT(rows=240)),
        (10, sd.DFT(rows=20, lanes=2, memory_limit=30_000)),  # several frequency bands
    ]
    for chunks, opt in cases:
        xd = da.from_array(x, chunks=(chunks, 6, 6, 6))
        yd = da.from_array(y, chunks=(chunks, 4, 6, 6))
        r = sd.cca(xd, yd, conv=opt, layout="NCHW")
        np.testing.assert_allclose(r.coefficients, ref.coefficients, rtol=1e-12, atol=1e-12)
        s = sd.svcca(xd, yd, conv=opt, layout="NCHW", keep=0.9)
        np.testing.assert_allclose(s.coefficients, ref_sv.coefficients, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(s.x_kept, ref_sv.x_kept)


def test_bands_split_the_frequencies():
    x, y = translation_invariant(cx=3, cy=2, h=6, w=6, n0=12)
    run = accumulate.DFTRun(
        x, y, conv=sd.DFT(memory_limit=4_000, lanes=1), layout="NCHW", names=("x", "y")
    )
    assert len(run.bands) > 1  # 25 per-frequency covariances of 5 x 5 complex need several bands
    np.testing.assert_array_equal(
        np.concatenate(run.bands), np.arange(run.plan.frequencies.shape[0])
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_narrow_bands_use_a_direct_dft_of_their_columns(layout):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((150, 3, 6, 20)) + 5
    y = np.roll(x[:, :2], 2, axis=3) + rng.standard_normal((150, 2, 6, 20))
    if layout == "NHWC":
        x, y = nhwc(x), nhwc(y)
    one = sd.cca(x, y, conv=sd.DFT(memory_limit=2**30), layout=layout)
    run = accumulate.DFTRun(
        x, y, conv=sd.DFT(memory_limit=2_000, lanes=1), layout=layout, names=("x", "y")
    )
    cols = [np.unique(np.abs(run.plan.frequencies[b, 1])).size for b in run.bands]
    assert min(cols) * transform._DIRECT_DFT_RATIO < 11  # some passes take the direct path
    many = sd.cca(x, y, conv=sd.DFT(memory_limit=2_000, lanes=1), layout=layout)
    np.testing.assert_allclose(many.coefficients, one.coefficients, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("batch", ["steps", "groups"])
def test_coefficients_are_each_images_fft2_at_the_planned_frequencies(
    monkeypatch, layout, narrow, batch
):
    """Transform steps and staged groups, made small here (steps of 2 images,
    or groups of 4 staged images: 4 + 4 + 3), write every image's DFT,
    frequency-major, at the buffer's channel offset, on the rfft and the
    direct-GEMM paths."""
    rng = np.random.default_rng(12)
    m, c, h, w = 11, 3, 6, 20
    x = rng.standard_normal((m, c, h, w)) + 3
    plan = cplan.plan_frequencies((c, h, w), (c, h, w), layout, layout)
    freqs = plan.frequencies
    idx = np.flatnonzero(np.abs(freqs[:, 1]) <= 1) if narrow else np.arange(freqs.shape[0])
    g = plan.gather((c, h, w), idx)
    assert (g.columns.size * transform._DIRECT_DFT_RATIO < w // 2 + 1) == narrow
    size = 2 * c * h * w * 8 if batch == "steps" else 4 * c * idx.size * 16
    monkeypatch.setattr(transform, "_FFT_BATCH_BYTES", size)
    buf = np.full((idx.size, c + 2, m + 1), np.nan, dtype=complex)
    transform._coefficients_into(buf, 1, x if layout == "NCHW" else nhwc(x), layout, (c, h, w), g)
    spectrum = np.fft.fft2(x, axes=(2, 3))[:, :, freqs[idx, 0] % h, freqs[idx, 1] % w]
    np.testing.assert_allclose(buf[:, 1 : c + 1, :m], spectrum.transpose(2, 1, 0), atol=1e-10)
    assert (
        np.isnan(buf[:, 0]).all() and np.isnan(buf[:, c + 1]).all() and np.isnan(buf[..., m]).all()
    )


def test_fold_is_the_chan_merge():
    """The fused ZHERK update of a lane equals moments_combine of the chunks' own statistics."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((30, 2, 4, 4)) + 7
    y = rng.standard_normal((30, 3, 4, 4))
    plan = cplan.plan_frequencies((2, 4, 4), (3, 4, 4), "NCHW", "NCHW")
    idx = np.arange(plan.frequencies.shape[0])
    acc = None
    parts = []
    for sl in (slice(0, 11), slice(11, 12), slice(12, 30)):
        acc = transform.dft_fold(
            acc, x[sl], y[sl], plan=plan, idx=idx, names=("x", "y"), row_start=0
        )
        z = np.empty((idx.size, 5, sl.stop - sl.start + 1), dtype=complex)
        transform._coefficients_into(z, 0, x[sl], "NCHW", (2, 4, 4), plan.gather((2, 4, 4), idx))
        transform._coefficients_into(z, 2, y[sl], "NCHW", (3, 4, 4), plan.gather((3, 4, 4), idx))
        z = z[..., :-1]
        mean = z.mean(-1)
        zc = z - mean[..., None]
        parts.append({"n": z.shape[-1], "mean": mean, "m2": zc @ np.swapaxes(zc.conj(), 1, 2)})
    merged = moments_combine(parts)
    np.testing.assert_allclose(acc["mean"], merged["mean"], rtol=1e-13, atol=1e-12)
    full = unpack(acc["m2"], 5)
    np.testing.assert_allclose(full, merged["m2"], rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("threads", [2, 3])
def test_fold_pieces_and_threads_change_nothing(threads):
    """Pieces read one at a time, two layers transformed at once and frequencies merged
    in several threads: the same accumulator as one chunk on one thread."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((25, 3, 6, 5)) + 3
    y = rng.standard_normal((25, 4, 6, 5))
    plan = cplan.plan_frequencies((3, 6, 5), (4, 6, 5), "NCHW", "NCHW")
    idx = np.arange(plan.frequencies.shape[0])
    kw = {"plan": plan, "idx": idx, "names": ("x", "y"), "row_start": 0, "with_scale": True}
    one = transform.dft_fold(None, x[:9], y[:9], **kw)
    one = transform.dft_fold(one, x[9:], y[9:], **kw)
    cuts = [(0, 4), (4, 9)], [(9, 10), (10, 18), (18, 25)]
    many = None
    for group in cuts:
        xs = [x[a:b] for a, b in group]
        ys = [y[a:b] for a, b in group]
        many = transform.dft_fold(many, xs, ys, **kw, threads=threads)
    assert many["n"] == one["n"] == 25
    np.testing.assert_allclose(many["mean"], one["mean"], rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(many["m2"], one["m2"], rtol=1e-12, atol=1e-10)
    for key in ("x_pos", "y_pos"):
        np.testing.assert_allclose(many[key]["m2"], one[key]["m2"], rtol=1e-12)


def test_dft_stats_public():
    x, y = translation_invariant(cx=3, cy=2)
    st = sdconv.dft_stats(x, y, layout="NCHW")
    assert st.cov.shape == (st.frequencies.shape[0], 5, 5)
    np.testing.assert_allclose(st.cov, np.swapaxes(st.cov.conj(), 1, 2))  # Hermitian
    r = sdconv.cca_from_dft_stats(st)
    np.testing.assert_allclose(r.coefficients, sd.cca(flat(x), flat(y)).coefficients, atol=1e-8)
    assert sdconv.cka_from_dft_stats(st).score == pytest.approx(
        ref_cka(flat(x), flat(y)), abs=1e-10
    )
    assert sdconv.svcca_from_dft_stats(st, keep=0.99).score > 0
    assert sdconv.pwcca_from_dft_stats(st).score > 0


def test_nan_in_a_conv_layer_names_the_array_and_rows():
    x, y = translation_invariant()
    y = y.copy()
    y[37, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"y contains NaN or infinite values in rows 37"):
        sd.cca(x, y, conv="dft", layout="NCHW")
    with pytest.raises(ValueError, match=r"y contains NaN or infinite values in rows"):
        sd.cca(x, y, conv="samples", layout="NCHW")


# --------------------------------------------------------------------------- #
# layouts and Zarr


@pytest.mark.filterwarnings("ignore::svcca_dask.SampleSizeWarning")  # small data, on purpose
@pytest.mark.parametrize(
    ("layout", "names"),
    [
        ("NCHW", ("sample", "channel", "height", "width")),
        ("NHWC", ("sample", "height", "width", "channel")),
    ],
)
def test_layout_from_zarr_dimension_names(tmp_path, layout, names):
    x, y = translation_invariant(cx=3, cy=4)
    if layout == "NHWC":
        x, y = nhwc(x), nhwc(y)
    paths = []
    for label, a in (("x", x), ("y", y)):
        z = zarr.create_array(
            store=str(tmp_path / f"{label}.zarr"),
            shape=a.shape,
            chunks=(50, *a.shape[1:]),
            dtype="f8",
            dimension_names=names,
        )
        z[:] = a
        paths.append(str(tmp_path / f"{label}.zarr"))
    r = sd.cca(*paths, conv="dft")  # no layout argument: the store says it
    xf, yf = (flat(x), flat(y))
    np.testing.assert_allclose(r.coefficients, sd.cca(xf, yf).coefficients, atol=1e-8)
    got = sd.conv_features(paths[0], conv="samples").compute()
    np.testing.assert_array_equal(got, (x if layout == "NHWC" else nhwc(x)).reshape(-1, 3))
    with pytest.raises(ValueError, match="but layout='NCHW' was given"):
        if layout == "NHWC":
            sd.cca(*paths, conv="mean", layout="NCHW")
        else:
            raise ValueError("but layout='NCHW' was given")


def test_layout_errors():
    x = np.zeros((10, 3, 4, 4))
    with pytest.raises(
        ValueError, match=r"x is a 4-D conv layer of shape \(10, 3, 4, 4\).*layout='NCHW'"
    ):
        sd.cca(x, x, conv="mean")
    with pytest.raises(ValueError, match="layout for x must be 'NCHW'"):
        sd.conv_features(x, conv="mean", layout="CHWN")
    with pytest.raises(ValueError, match="conv must be one of"):
        sd.cca(x, x, conv="pool", layout="NCHW")
    with pytest.raises(ValueError, match="not a feature map"):
        sd.conv_features(x, conv="dft", layout="NCHW")
    with pytest.raises(ValueError, match="sample axis must come first"):
        layout._layout_from_names(("channel", "sample", "height", "width"), name="x")


def test_conv_is_ignored_for_2d_inputs():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((200, 5)), rng.standard_normal((200, 4))
    base = sd.cca(x, y).coefficients
    for conv in ("dft", "samples", "mean", "flatten"):
        np.testing.assert_array_equal(sd.cca(x, y, conv=conv).coefficients, base)


# --------------------------------------------------------------------------- #
# samples, mean, flatten


def test_samples_and_mean_against_in_memory():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((60, 4, 5, 5)).astype(np.float32)
    y = (x[:, :3] * 2 + rng.standard_normal((60, 3, 5, 5))).astype(np.float32)
    xs, ys = nhwc(x).reshape(-1, 4), nhwc(y).reshape(-1, 3)  # every position a sample
    r = sd.cca(x, y, conv="samples", layout="NCHW")
    np.testing.assert_allclose(r.coefficients, ref_cca(xs, ys)[0], atol=1e-8)
    assert r.n_samples == 60 * 25
    xm, ym = x.astype(np.float64).mean((2, 3)), y.astype(np.float64).mean((2, 3))
    r = sd.cca(x, y, conv="mean", layout="NCHW")
    np.testing.assert_allclose(r.coefficients, ref_cca(xm, ym)[0], atol=1e-8)
    assert sd.linear_cka(x, y, conv="mean", layout="NCHW").score == pytest.approx(
        ref_cka(xm, ym), abs=1e-8
    )
    # a 2-D side with conv="samples": the same row for every position of its image
    logits = rng.standard_normal((60, 2))
    with pytest.warns(
        UserWarning,
        match=r"conv='samples' against a 2-D y: its row for each of the 60 images "
        r"is repeated at each of the other layer's 25 spatial positions",
    ):
        r = sd.cca(x, logits, conv="samples", layout="NCHW")
    np.testing.assert_allclose(
        r.coefficients, ref_cca(xs, np.repeat(logits, 25, axis=0))[0], atol=1e-8
    )
    # layouts may differ per side
    r2 = sd.cca(x, nhwc(y), conv="samples", layout=("NCHW", "NHWC"))
    np.testing.assert_allclose(r2.coefficients, ref_cca(xs, ys)[0], atol=1e-8)


def test_conv_features_is_lazy_and_chunked_along_samples():
    x = da.random.default_rng(0).standard_normal((100, 3, 4, 5), chunks=(30, 3, 4, 5))
    f = sd.conv_features(x, conv="samples", layout="NCHW")
    assert f.chunks == ((600, 600, 600, 200), (3,))  # one output chunk per input chunk
    assert sd.conv_features(x, conv="mean", layout="NCHW").chunks == ((30, 30, 30, 10), (3,))
    assert sd.conv_features(x, conv="flatten", layout="NCHW").chunks == ((30, 30, 30, 10), (60,))
    np.testing.assert_array_equal(
        sd.conv_features(x, conv="flatten", layout="NCHW").compute(), flat(x.compute())
    )


def test_dft_and_randomized_svd_on_a_distributed_cluster(tmp_path):
    from distributed import Client, LocalCluster

    x, y = translation_invariant(cx=3, cy=2, h=4, w=4, shift=10.0)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    for name, a in (("x", x), ("y", y)):
        arr = root.create_array(
            name,
            shape=a.shape,
            chunks=(40, *a.shape[1:]),
            dtype="f8",
            dimension_names=("sample", "channel", "height", "width"),
        )
        arr[:] = a
    px, py = str(tmp_path / "s.zarr" / "x"), str(tmp_path / "s.zarr" / "y")
    on_threads = {
        "cca": sd.cca(px, py),
        "svcca": sd.svcca(px, py, keep=0.9, conv=sd.DFT(memory_limit=3_000)),  # several bands
        "cka": sd.linear_cka(px, py),
        "flat": sd.svcca(px, py, conv="flatten", keep=5, svd="randomized"),
    }
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster),
    ):
        on_cluster = {
            "cca": sd.cca(px, py),
            "svcca": sd.svcca(px, py, keep=0.9, conv=sd.DFT(memory_limit=3_000)),
            "cka": sd.linear_cka(px, py),
            "flat": sd.svcca(px, py, conv="flatten", keep=5, svd="randomized"),
        }
    for key, ref in on_threads.items():
        assert on_cluster[key].score == pytest.approx(
            ref.score, rel=1e-12
        )  # same numbers on workers
        if hasattr(ref, "coefficients"):
            np.testing.assert_allclose(
                on_cluster[key].coefficients, ref.coefficients, rtol=1e-12, atol=1e-12
            )


_SEEN_THREADS: list[int] = []
_FOLD = transform.dft_fold


def _spy_fold(*args, **kwargs):
    """``dft_fold``, noting its ``threads`` (module level: tasks pickle it by
    reference, and the in-process workers append to this module's list)."""
    _SEEN_THREADS.append(kwargs["threads"])
    return _FOLD(*args, **kwargs)


def test_fold_tasks_use_a_workers_spare_threads_on_a_cluster(monkeypatch):
    """Fewer lanes than threads: each fold task uses up to one worker's threads,
    with the same results as the threaded scheduler."""
    from distributed import Client, LocalCluster

    x, y = translation_invariant(cx=3, cy=2, h=4, w=4, shift=10.0)
    want = sd.cca(x, y, conv=sd.DFT(lanes=1), layout="NCHW")
    seen = _SEEN_THREADS
    monkeypatch.setattr(accumulate, "dft_fold", _spy_fold)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        assert [cplan.task_threads(n) for n in (1, 2, 3, 4, 8)] == [2, 2, 1, 1, 1]
        seen.clear()
        got = sd.cca(x, y, conv=sd.DFT(lanes=1), layout="NCHW")
    assert seen and set(seen) == {2}
    np.testing.assert_allclose(got.coefficients, want.coefficients, rtol=1e-12, atol=1e-12)


def test_default_lanes_on_a_cluster_never_add_passes():
    """On a cluster the default lanes (one per thread, here 4) share the memory
    limit, each counted twice (a fold's input and its copy): no more of them
    than keep the bands of one lane."""
    from distributed import Client, LocalCluster

    x, y = translation_invariant(cx=3, cy=2, h=4, w=4, shift=10.0)  # 10 frequencies, D = 5

    def run(limit):
        return accumulate.DFTRun(
            x, y, conv=sd.DFT(memory_limit=limit), layout="NCHW", names=("x", "y")
        )

    want = sd.cca(x, y, conv=sd.DFT(memory_limit=6_000), layout="NCHW")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        assert (run(10**6).lanes, len(run(10**6).bands)) == (4, 1)  # all fit
        # 12,000 bytes: one band for one or two lanes, two bands for three or four
        assert len(cplan.frequency_bands(run(12_000).plan, 3, 12_000)) == 2
        assert (run(12_000).lanes, len(run(12_000).bands)) == (2, 1)
        # 4,000 bytes: two bands for one lane, more for two
        assert (run(4_000).lanes, len(run(4_000).bands)) == (1, 2)
        got = sd.cca(x, y, conv=sd.DFT(memory_limit=12_000), layout="NCHW")
    np.testing.assert_allclose(got.coefficients, want.coefficients, rtol=1e-12, atol=1e-12)


def test_task_groups_merge_stored_chunks_never_split():
    assert cplan.task_groups((8, 8, 8, 8, 8), 16) == [[0, 1], [2, 3], [4]]
    assert cplan.task_groups((8, 8, 8), 5) == [[0], [1], [2]]  # a chunk is never split
    assert cplan.task_groups((10, 3, 3, 3), 6) == [[0], [1, 2], [3]]


def test_one_lane_on_threads_holds_the_statistics_once():
    """On the threaded scheduler the default is one lane whose tasks use every thread."""
    x, y = translation_invariant(cx=3, cy=2)
    run = accumulate.DFTRun(x, y, conv="dft", layout="NCHW", names=("x", "y"))
    assert run.lanes == 1
    accs, _ = run._graph(run.bands[0])
    assert len(accs) == 1


def test_recycler_hands_arrays_to_the_next_band_zeroed():
    arrays = buffers.Recycler()
    a = arrays.take((3, 4), zero=True)
    a[:] = 7
    b = arrays.take((2, 5))  # within a band: never the same memory twice
    assert not np.shares_memory(a, b)
    arrays.release()
    c = arrays.take((2, 6), zero=True)  # the smallest free array that fits: a's
    assert np.shares_memory(c, a) and not c.any()
    d = arrays.take((3, 3))
    assert np.shares_memory(d, b)
    e = arrays.take((1, 1))  # nothing free is left
    assert not np.shares_memory(e, a) and not np.shares_memory(e, b)


def test_a_run_drops_its_arrays_after_the_last_band():
    x, y = translation_invariant(cx=3, cy=2, h=6, w=6, n0=12)
    run = accumulate.DFTRun(
        x, y, conv=sd.DFT(memory_limit=4_000, lanes=1), layout="NCHW", names=("x", "y")
    )
    first = run.arrays
    run.map(dft_measures._cca_part_fn, 1e-10, None)
    assert len(run.bands) > 1
    # every band used the first band's accumulator and coefficient buffer ...
    assert len(first._used) + len(first._free) == 2
    assert run.arrays is not first and not run.arrays._free  # ... and the run let them go


def test_dft_bands_on_the_local_processes_scheduler():
    """Tasks pickled to other processes (the recycler travels empty) give the same result."""
    x, y = translation_invariant(cx=3, cy=2, h=6, w=6, n0=12)
    arrays = buffers.Recycler()
    arrays.take((2, 2))
    arrays.release()
    assert not pickle.loads(pickle.dumps(arrays))._free
    opt = sd.DFT(memory_limit=4_000, lanes=1)
    ref = sd.cca(x, y, conv=opt, layout="NCHW")
    with dask.config.set(scheduler="processes", num_workers=2):
        r = sd.cca(x, y, conv=opt, layout="NCHW")
    np.testing.assert_allclose(r.coefficients, ref.coefficients, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- #
# stored chunks read directly (file + Blosc) on the threaded DFT path


def _blosc_array(group: zarr.Group, name: str, a: np.ndarray, **kwargs) -> zarr.Array:
    from zarr.codecs import BloscCodec

    opts = {"chunks": (8, *a.shape[1:]), "compressors": BloscCodec(cname="lz4", shuffle="shuffle")}
    opts.update(kwargs)
    return group.create_array(
        name,
        shape=a.shape,
        dtype=a.dtype,
        dimension_names=("sample", "channel", "height", "width"),
        **opts,
    )


def test_stored_chunks_read_what_zarr_reads(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((21, 3, 4, 5)).astype("f4")
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    arr = _blosc_array(group, "x", x, fill_value=7.0)
    arr[:16] = x[:16]  # rows 16-20: a chunk never written, read as the fill value
    for source in (arr, zarr.open_array(str(tmp_path / "s.zarr" / "x"), mode="r")):
        readers = io_chunks.stored_chunk_readers(source, da.from_zarr(source))
        assert readers is not None
        assert [r.rows for r in readers] == [8, 8, 5]
        got = np.concatenate([r() for r in readers])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, source[:])
        np.testing.assert_array_equal(got[:16], x[:16])
        assert np.all(got[16:] == 7.0)


@pytest.mark.parametrize(
    "kind",
    ["zstd", "no compressor", "sharded", "big-endian", "split features", "rechunked", "numpy"],
)
def test_stored_chunks_only_where_the_direct_read_is_zarrs(tmp_path, kind):
    from zarr.codecs import BytesCodec, ZstdCodec

    x = np.arange(16 * 3 * 4 * 5, dtype="f4").reshape(16, 3, 4, 5)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    opts: dict = {
        "zstd": {"compressors": ZstdCodec()},
        "no compressor": {"compressors": None},
        "sharded": {"shards": (16, 3, 4, 5)},
        "big-endian": {"serializer": BytesCodec(endian="big")},
        "split features": {"chunks": (8, 3, 2, 5)},
    }.get(kind, {})
    arr = _blosc_array(group, "x", x, **opts)
    arr[:] = x
    xd = da.from_zarr(arr)
    assert io_chunks.stored_chunk_readers(arr, xd) is None or kind in ("rechunked", "numpy")
    if kind == "rechunked":
        assert io_chunks.stored_chunk_readers(arr, xd.rechunk({0: 4})) is None
    if kind == "numpy":
        assert io_chunks.stored_chunk_readers(x, da.from_array(x, chunks=(8, 3, 4, 5))) is None
    run = accumulate.DFTRun(arr, arr, conv=sd.DFT(), layout=None, names=("x", "y"))
    assert (run.stored[0] is not None) == (kind in ("rechunked", "numpy"))  # those arrays fit


def test_dft_from_blosc_zarr_reads_stored_chunks_directly(tmp_path, monkeypatch):
    x, y = translation_invariant(cx=3, cy=2, h=4, w=4, shift=10.0)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    for name, a in (("x", x), ("y", y)):
        _blosc_array(group, name, a)[:] = a
    calls: list[str] = []
    read = io_chunks.StoredChunk.__call__

    def spy(self):
        calls.append(self.path)
        return read(self)

    monkeypatch.setattr(io_chunks.StoredChunk, "__call__", spy)
    px, py = str(tmp_path / "s.zarr" / "x"), str(tmp_path / "s.zarr" / "y")
    opt = sd.DFT(memory_limit=1_000)  # a few frequencies per band
    passes = len(accumulate.DFTRun(px, py, conv=opt, layout=None, names=("x", "y")).bands)
    assert passes > 1
    direct = sd.cca(px, py, conv=opt)
    assert len(calls) == passes * 2 * -(-x.shape[0] // 8)  # every chunk of both, every pass
    ref = sd.cca(x, y, conv=opt, layout="NCHW")
    np.testing.assert_allclose(direct.coefficients, ref.coefficients, rtol=1e-12, atol=1e-12)
    assert direct.score == pytest.approx(ref.score, rel=1e-12)
