"""The SVD step of SVCCA: covariance, TSQR and randomized paths, and svd="auto"."""

import dask.array as da
import numpy as np
import pytest
from reference import svcca as ref_svcca

import svcca_dask as sd


def gapped(n=3000, dx=300, dy=200, rx=6, ry=4, noise=0.05, shift=100.0, seed=0):
    """Wide layers with a clear spectral gap: ``rx`` (``ry``) strong directions
    (singular values ~5 sqrt(n)) over isotropic noise 100x weaker; y's signal
    lives in the span of x's first ``ry`` latents."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, rx))
    x = 5 * z @ rng.standard_normal((rx, dx)) + noise * rng.standard_normal((n, dx)) + shift
    y = 5 * z[:, :ry] @ rng.standard_normal((ry, dy)) + noise * rng.standard_normal((n, dy))
    return x, y


def test_randomized_matches_exact_on_a_spectral_gap():
    x, y = gapped()
    exact = sd.svcca(x, y, keep=(6, 4), svd="covariance")
    fast = sd.svcca(x, y, keep=(6, 4), svd="randomized")
    assert (fast.x_kept, fast.y_kept) == (6, 4)
    np.testing.assert_allclose(
        fast.coefficients, exact.coefficients, atol=1e-8
    )  # gap ratio 1e-2, q=2: error ~1e-10
    assert fast.x_explained == pytest.approx(exact.x_explained, abs=1e-10)
    # the kept subspaces agree: |cos| of principal angles all 1
    cosines = np.linalg.svd(fast.x_directions.T @ exact.x_directions, compute_uv=False)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-8)
    # and the data's own canonical variates have the reported correlations
    hx, hy = fast.transform(x), fast.transform(y, side="y")
    k = fast.coefficients.size
    corr = np.corrcoef(hx.T, hy.T)[:k, k:]
    np.testing.assert_allclose(np.diag(corr), fast.coefficients, atol=1e-6)


def test_randomized_without_power_iterations_is_less_accurate():
    x, y = gapped(noise=0.5)  # a smaller gap
    exact = sd.svcca(x, y, keep=(6, 4), svd="covariance")
    q0 = sd.svcca(x, y, keep=(6, 4), svd=sd.RandomizedSVD(n_power_iter=0, n_oversamples=2))
    q2 = sd.svcca(x, y, keep=(6, 4), svd=sd.RandomizedSVD(n_power_iter=2, n_oversamples=2))
    err0 = np.abs(q0.coefficients - exact.coefficients).max()
    err2 = np.abs(q2.coefficients - exact.coefficients).max()
    assert err2 < err0  # power iterations sharpen the subspace


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_float_keep_on_every_path(keep):
    x, y = gapped()
    exact = sd.svcca(x, y, keep=keep, svd="covariance")
    np.testing.assert_allclose(exact.coefficients, ref_svcca(x, y, keep), atol=1e-8)
    for svd in ("tsqr", "randomized", sd.RandomizedSVD(n_components=2)):  # 2: doubles until reached
        r = sd.svcca(x, y, keep=keep, svd=svd)
        assert (r.x_kept, r.y_kept) == (exact.x_kept, exact.y_kept)  # total variance from the trace
        assert r.x_explained >= keep * (1 - 1e-12)
        np.testing.assert_allclose(r.coefficients, exact.coefficients, atol=1e-8)


def test_tsqr_is_exact_without_a_gap():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((800, 30)) + 1e4
    y = x[:, :10] @ rng.standard_normal((10, 12)) + rng.standard_normal((800, 12))
    for keep in (0.7, 9):
        exact = sd.svcca(x, y, keep=keep, svd="covariance")
        t = sd.svcca(x, y, keep=keep, svd="tsqr")
        np.testing.assert_allclose(t.coefficients, exact.coefficients, atol=1e-8)
        np.testing.assert_allclose(t.coefficients, ref_svcca(x, y, keep), atol=1e-8)


def test_auto_picks_by_width_and_is_configurable():
    x, y = gapped(dx=120, dy=40)
    exact = sd.svcca(x, y, keep=0.99)  # 160 <= max_features: covariance
    # 160 > 150: each side alone; x (120) and y (40) fit -> per-side covariance
    per_side = sd.svcca(x, y, keep=0.99, max_features=150)
    np.testing.assert_allclose(per_side.coefficients, exact.coefficients, atol=1e-8)
    # x (120) > 100: randomized; y: covariance
    mixed = sd.svcca(x, y, keep=0.99, max_features=100)
    np.testing.assert_allclose(mixed.coefficients, exact.coefficients, atol=1e-8)
    with pytest.raises(ValueError, match=r"max_features=100.*svd='randomized'"):
        sd.svcca(x, y, keep=0.99, svd="covariance", max_features=100)


def test_auto_uses_the_covariance_of_each_side_that_fits(monkeypatch):
    import svcca_dask.measures as measures

    seen = []
    real = measures.reduce_pair

    def spy(arrays, *, methods, **kw):
        seen.append(methods)
        return real(arrays, methods=methods, **kw)

    monkeypatch.setattr(measures, "reduce_pair", spy)
    x, y = gapped(dx=120, dy=40)
    sd.svcca(x, y, keep=0.99, max_features=150)  # 160 > 150, both sides fit alone
    sd.svcca(x, y, keep=0.99, max_features=100)  # x (120) does not fit, y (40) does
    sd.svcca(y, x, keep=0.99, max_features=100)
    assert seen == [
        ("covariance", "covariance"),
        ("randomized", "covariance"),
        ("covariance", "randomized"),
    ]


def test_randomized_from_chunked_dask_and_dead_features():
    x, y = gapped(dx=80, dy=50)
    x[:, 7] = 3.0  # dead feature
    xd = da.from_array(x, chunks=(700, 80))
    yd = da.from_array(y, chunks=(300, 50))
    r = sd.svcca(xd, yd, keep=(6, 4), svd="randomized")
    e = sd.svcca(x, y, keep=(6, 4), svd="covariance")
    np.testing.assert_allclose(r.coefficients, e.coefficients, atol=1e-8)
    assert 7 in r.x_dropped and 7 not in r.x_features
    np.testing.assert_allclose(r.x_weights[7], 0.0, atol=1e-12)  # a dead feature gets no weight


def test_wide_flattened_conv_layer_with_randomized_svd():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((400, 3, 1, 1))
    x = z * rng.standard_normal((1, 3, 16, 16)) + 0.01 * rng.standard_normal((400, 3, 16, 16))
    y = z[:, :2].sum(1, keepdims=True) * np.ones((1, 2, 8, 8)) + 0.01 * rng.standard_normal(
        (400, 2, 8, 8)
    )
    r = sd.svcca(x, y, conv="flatten", layout="NCHW", keep=(3, 1), svd="randomized")
    e = sd.svcca(x.reshape(400, -1), y.reshape(400, -1), keep=(3, 1), svd="covariance")
    np.testing.assert_allclose(r.coefficients, e.coefficients, atol=1e-8)


def test_svd_errors():
    x, y = gapped(dx=20, dy=10, n=200)
    with pytest.raises(ValueError, match="svd must be one of"):
        sd.svcca(x, y, svd="lanczos")
    with pytest.raises(ValueError, match="does not apply to conv='dft'"):
        sd.svcca(np.zeros((10, 2, 3, 3)), np.zeros((10, 2, 3, 3)), layout="NCHW", svd="tsqr")
    with pytest.raises(ValueError, match="keep as a float is a fraction"):
        sd.svcca(x, y, keep=1.5, svd="randomized")
    bad = x.copy()
    bad[17, 3] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN or infinite values in rows 17"):
        sd.svcca(bad, y, svd="randomized")


def test_randomized_run_that_cannot_fit_is_refused_before_the_pass(monkeypatch):
    import dask

    import svcca_dask.svd as svd

    def no_pass(*a, **k):
        raise AssertionError("a pass over the data started")

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((256, 4000)), rng.standard_normal((256, 3000))
    monkeypatch.setattr(svd, "_svd_compute", no_pass)
    with (
        dask.config.set({"svcca_dask.memory_limit": "10MiB"}),
        pytest.raises(
            MemoryError,
            match=r"x: the randomized SVD of 256 samples x 4000 features with 20 "
            r"directions would hold about .* [MG]iB at its peak, more than the memory budget",
        ),
    ):
        sd.svcca(x, y, keep=20, svd="randomized")


def test_a_doubling_that_cannot_fit_is_refused_before_its_passes():
    import dask

    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((300, 2000)), rng.standard_normal((300, 1000))  # flat spectra
    opts = sd.RandomizedSVD(n_components=10)
    # the first run (10 directions, 9.0 MB) fits; reaching keep=0.99 needs more (10.0 MB)
    with (
        dask.config.set({"svcca_dask.memory_limit": 9.5e6}),
        pytest.raises(
            MemoryError, match=r"with 20 directions \(keep=0.99 was not reached with 10\)"
        ),
    ):
        sd.svcca(x, y, keep=0.99, svd=opts)


def test_the_partials_of_many_row_chunks_count_in_the_randomized_plan(monkeypatch):
    """One row chunk of a side fits where the same data in 30 chunks does not:
    each chunk makes a (k + oversamples) x d partial of A^T Q, and Dask's tree
    merges them a few at a time (measured: benchmarks/bench_memory.py)."""
    import dask
    import dask.array as da

    import svcca_dask.svd as svd

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((300, 2000)), rng.standard_normal((300, 1000))
    one = svd.randomized_bytes(300, 2000, 20, sd.RandomizedSVD(), chunks=1)
    many = svd.randomized_bytes(300, 2000, 20, sd.RandomizedSVD(), chunks=30)
    assert many > one
    with dask.config.set({"svcca_dask.memory_limit": (one + many) // 2}):
        sd.svcca(x, y, keep=20, svd="randomized")
        with pytest.raises(MemoryError, match="x: the randomized SVD of 300 samples"):
            sd.svcca(da.from_array(x, chunks=(10, 2000)), y, keep=20, svd="randomized")
