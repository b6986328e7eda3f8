"""The one-pass co-moment statistics: chunk partials, Chan/Pebay merge, tree reduction."""

import itertools

import dask.array as da
import numpy as np
import pytest

from svcca_dask.stats import accumulate, moments_chunk, moments_combine


def _data(n=1000, dx=7, dy=5, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dx)) + shift
    y = x[:, :3] @ rng.standard_normal((3, dy)) + rng.standard_normal((n, dy)) + shift
    return x.astype(np.float32), y.astype(np.float32)


def test_chunk_matches_numpy():
    x, y = _data()
    p = moments_chunk(x, y)
    z = np.hstack([x, y]).astype(np.float64)
    assert p["n"] == 1000
    np.testing.assert_allclose(p["mean"], z.mean(0), rtol=1e-12)
    np.testing.assert_allclose(p["m2"] / 999, np.cov(z, rowvar=False), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("splits", [[1000], [500, 500], [1, 999], [3, 300, 697], [100] * 10])
def test_merge_equals_whole(splits):
    x, y = _data(shift=1e4)
    bounds = np.cumsum([0, *splits])
    parts = [moments_chunk(x[a:b], y[a:b]) for a, b in itertools.pairwise(bounds)]
    merged = moments_combine(parts)
    whole = moments_chunk(x, y)
    # Pebay merge of any partition equals the one-chunk statistics
    np.testing.assert_allclose(merged["mean"], whole["mean"], rtol=1e-13)
    np.testing.assert_allclose(
        merged["m2"], whole["m2"], rtol=1e-9, atol=1e-9 * np.abs(whole["m2"]).max()
    )


def test_shifted_data_keeps_digits():
    # ReLU-like large means: the naive sum(z z^T) - n m m^T would lose every digit here
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((20000, 4)) + 1e6).astype(np.float64)
    parts = [moments_chunk(x[i : i + 1000]) for i in range(0, 20000, 1000)]
    m = moments_combine(parts)
    np.testing.assert_allclose(m["m2"] / 19999, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-8)


def test_empty_partials_are_neutral():
    x, _ = _data()
    p = moments_chunk(x)
    empty = {"n": 0, "mean": np.zeros(7), "m2": np.zeros((7, 7))}
    for parts in ([empty, p], [p, empty]):
        m = moments_combine(parts)
        np.testing.assert_array_equal(m["m2"], p["m2"])  # an empty partial changes nothing
        assert m["n"] == p["n"]


@pytest.mark.parametrize("split_every", [2, 3, 8])
@pytest.mark.parametrize("chunks", [100, 257, 1000])
def test_accumulate_independent_of_chunking(chunks, split_every):
    x, y = _data(shift=100.0)
    ref = accumulate([da.from_array(x, chunks=1000), da.from_array(y, chunks=1000)])
    m = accumulate(
        [da.from_array(x, chunks=(chunks, 7)), da.from_array(y, chunks=(333, 5))],
        split_every=split_every,
    )
    assert m.n == 1000 and m.sizes == (7, 5)
    np.testing.assert_allclose(
        m.comoment, ref.comoment, rtol=1e-12, atol=1e-12 * np.abs(ref.comoment).max()
    )
    np.testing.assert_allclose(
        m.cov(0, 1), np.cov(np.hstack([x, y]), rowvar=False)[:7, 7:], rtol=1e-9, atol=1e-12
    )


def test_small_chunks_are_merged_never_split():
    from svcca_dask.stats import _unify_rows

    x = da.zeros((100_000, 16), chunks=(1000, 16))
    y = da.zeros((100_000, 16), chunks=(2000, 16))
    ux, uy = _unify_rows([x, y])
    assert ux.chunks == uy.chunks  # common row chunks
    assert (
        ux.chunks[0][0] % 2000 == 0 and ux.chunks[0][0] * 32 * 8 <= 16 * 2**20
    )  # merged, about 16 MiB
    big = da.zeros((400_000, 16), chunks=(200_000, 16))  # 25 MiB as float64: above the target
    assert _unify_rows([big])[0].chunks == big.chunks  # large stored chunks are not split


def test_split_every_below_two_is_an_error():
    x, _ = _data()
    with pytest.raises(ValueError, match="split_every"):
        accumulate([da.from_array(x, chunks=100)], split_every=1)


def test_non_finite_names_array_and_rows():
    x, y = _data()
    y = y.copy()
    y[612, 2] = np.nan
    y[613, 0] = np.inf
    with pytest.raises(
        ValueError,
        match=r"layer_b contains NaN or infinite values in rows 612, 613 \(chunk starting at row 600\)",
    ):
        accumulate(
            [da.from_array(x, chunks=200), da.from_array(y, chunks=200)],
            names=["layer_a", "layer_b"],
        )
    # chunks of the target size are kept as stored: the error names the chunk
    big = 2**18  # two chunks of 2**17 rows x 12 features: 12 MiB each as float64, kept
    xs = np.random.default_rng(0).standard_normal((big, 6))
    ys = xs.copy()
    ys[big - 1, 0] = np.inf
    with pytest.raises(
        ValueError,
        match=rf"y contains NaN or infinite values in rows {big - 1} \(chunk starting at row {big // 2}\)",
    ):
        accumulate(
            [da.from_array(xs, chunks=big // 2), da.from_array(ys, chunks=big // 2)],
            names=["x", "y"],
        )


def test_large_chunk_is_processed_in_pieces(monkeypatch):
    import svcca_dask._config as inp

    monkeypatch.setattr(
        inp, "DEFAULT_CHUNK_BYTES", 8 * 12 * 100
    )  # pieces of 100 rows at 12 features
    x, y = _data(n=1000, shift=1e4)
    p = moments_chunk(x, y)
    z = np.hstack([x, y]).astype(np.float64)
    assert p["n"] == 1000
    np.testing.assert_allclose(
        p["m2"] / 999, np.cov(z, rowvar=False), rtol=1e-9, atol=1e-9
    )  # pieces merge exactly
    y = y.copy()
    y[555, 1] = np.nan
    with pytest.raises(ValueError, match=r"rows 555 \(chunk starting at row 500\)"):
        moments_chunk(x, y, names=["x", "y"])  # the piece is named


def test_different_chunkings_at_the_target_size_are_unified(monkeypatch):
    import svcca_dask._config as config

    # a target below the stored chunks: nothing is merged, yet x's 250-row and
    # y's 300-row chunks must still be brought onto one grid
    monkeypatch.setattr(config, "DEFAULT_CHUNK_BYTES", 8 * 12 * 100)
    x, y = _data(n=1000, shift=1e4)
    xd = da.from_array(x, chunks=(250, -1))
    yd = da.from_array(y, chunks=((300, 300, 300, 100), -1))
    m = accumulate([xd, yd])
    z = np.hstack([x, y]).astype(np.float64)
    assert m.n == 1000
    np.testing.assert_allclose(m.comoment / 999, np.cov(z, rowvar=False), rtol=1e-9, atol=1e-9)


def test_regions_equal_blocks_of_the_full_comoment():
    x, y = _data(shift=1e3)
    full = moments_chunk(x, y)["m2"]
    regions = [(0, 7, 0, 7), (7, 12, 7, 12), (0, 7, 7, 12)]
    parts = [
        moments_chunk(x[a : a + 250], y[a : a + 250], regions=regions) for a in range(0, 1000, 250)
    ]
    out = moments_combine(parts)
    for block, (r0, r1, c0, c1) in zip(out["m2"], regions, strict=True):
        np.testing.assert_allclose(
            block, full[r0:r1, c0:c1], rtol=1e-9, atol=1e-9 * np.abs(full).max()
        )


def test_compute_runs_blosc_single_threaded_and_restores_it():
    """Inside a threaded compute, Blosc decodes with one thread (dask's threads would
    oversubscribe the cores otherwise); the setting is restored afterwards."""
    import dask
    from numcodecs import blosc

    from svcca_dask.scheduler import compute

    before = blosc.set_nthreads(3)
    try:
        (inside,) = compute(dask.delayed(blosc.get_nthreads)())
        assert inside == 1
        assert blosc.get_nthreads() == 3
    finally:
        blosc.set_nthreads(before)


def test_nan_report_names_the_stored_chunk_of_a_merged_task():
    x, y = _data(n=3000)
    x = x.copy()
    x[2100, 3] = np.nan
    xd = da.from_array(x, chunks=(500, -1))  # 500-row chunks, merged into larger tasks
    with pytest.raises(ValueError, match=r"rows 2100 \(chunk starting at row 2000\)"):
        accumulate([xd, da.from_array(y, chunks=(500, -1))], names=["x", "y"])


@pytest.mark.parametrize("scale", [1e300, 1e307])
def test_values_whose_squares_overflow_are_refused_by_name(scale):
    x, y = (a.astype(np.float64) for a in _data(n=400))
    with pytest.raises(ValueError, match=r"^x has values up to .*overflow float64\. Divide"):
        accumulate([da.from_array(scale * x), da.from_array(y)], names=["x", "y"])


@pytest.mark.parametrize("scale", [1e-300, 1e-170])
def test_values_whose_squares_underflow_are_refused_by_name(scale):
    x, y = (a.astype(np.float64) for a in _data(n=400))
    with pytest.raises(ValueError, match=r"^y has values that vary so little .*underflow"):
        accumulate([da.from_array(x), da.from_array(scale * y)], names=["x", "y"])


def test_constant_columns_are_not_underflow():
    x, _ = _data(n=400)
    x = x.copy()
    x[:, 2] = 7.0  # a dead feature, exactly constant: fine
    m = accumulate([da.from_array(x)])
    assert m.comoment[2, 2] == 0.0
