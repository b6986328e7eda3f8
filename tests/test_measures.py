"""CCA, SVCCA, PWCCA and linear CKA against plain in-memory definitions, invariances, and errors."""

import dask.array as da
import numpy as np
import pytest
import zarr
from reference import cca as ref_cca
from reference import linear_cka as ref_cka
from reference import pwcca as ref_pwcca
from reference import svcca as ref_svcca

import svcca_dask as sd


def planted(n=3000, dx=12, dy=9, shared=4, noise=0.7, shift=0.0, seed=0):
    """Two layers sharing ``shared`` latent directions, plus independent noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, dx)) + noise * rng.standard_normal((n, dx))
    y = z @ rng.standard_normal((shared, dy)) + noise * rng.standard_normal((n, dy))
    return x + shift, y + shift


DATA = {
    "random": lambda: tuple(np.random.default_rng(3).standard_normal((2000, d)) for d in (10, 6)),
    "planted": planted,
    "shifted_1e4": lambda: planted(shift=1e4),
}


@pytest.mark.parametrize("kind", list(DATA))
def test_cca_matches_reference(kind):
    x, y = DATA[kind]()
    r = sd.cca(x, y)
    rho, _, _ = ref_cca(x, y)
    np.testing.assert_allclose(r.coefficients, rho, atol=1e-8)  # canonical correlations
    assert r.score == pytest.approx(rho.mean(), abs=1e-8)  # score is their mean
    assert np.all(np.diff(r.coefficients) <= 0)  # descending
    assert r.coefficients.dtype == np.float64 and r.n_samples == x.shape[0]


@pytest.mark.parametrize("kind", list(DATA))
def test_canonical_weights_define_the_variates(kind):
    x, y = DATA[kind]()
    r = sd.cca(x, y)
    hx, hy = r.transform(x), r.transform(y, side="y")
    k = r.coefficients.size
    np.testing.assert_allclose(
        np.cov(hx, rowvar=False), np.eye(k), atol=1e-6
    )  # unit variance, uncorrelated
    np.testing.assert_allclose(np.cov(hy, rowvar=False), np.eye(k), atol=1e-6)
    cross = np.cov(np.hstack([hx, hy]), rowvar=False)[:k, k:]
    np.testing.assert_allclose(
        np.diag(cross), r.coefficients, atol=1e-6
    )  # paired variates correlate by rho


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, 3, 7])
@pytest.mark.parametrize("kind", ["planted", "shifted_1e4"])
def test_svcca_matches_reference(kind, keep):
    x, y = DATA[kind]()
    r = sd.svcca(x, y, keep=keep)
    np.testing.assert_allclose(r.coefficients, ref_svcca(x, y, keep), atol=1e-8)
    if isinstance(keep, int):
        assert (r.x_kept, r.y_kept) == (keep, keep)
    else:
        assert r.x_explained >= keep and r.y_explained >= keep  # kept enough variance
    # the directions are orthonormal and the weights live in their span
    np.testing.assert_allclose(r.x_directions.T @ r.x_directions, np.eye(r.x_kept), atol=1e-10)


def test_svcca_keeps_the_fewest_directions_reaching_keep():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 5.0, 2.0, 1.0, 0.1])
    x = rng.standard_normal((5000, 5)) * scales
    var = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1]  # squared singular values / (n-1)
    frac = var.cumsum() / var.sum()
    r = sd.svcca(x, x, keep=float(frac[2]) - 1e-6)
    assert r.x_kept == 3  # three directions reach the fraction, two do not
    r = sd.svcca(x, x, keep=float(frac[2]) + 1e-6)
    assert r.x_kept == 4
    r = sd.svcca(x, x, keep=(2, 4))
    assert (r.x_kept, r.y_kept) == (2, 4)


@pytest.mark.parametrize("kind", list(DATA))
def test_pwcca_matches_definition(kind):
    x, y = DATA[kind]()
    r = sd.pwcca(x, y)
    score, alpha = ref_pwcca(x, y)
    np.testing.assert_allclose(
        r.weights, alpha, atol=1e-7
    )  # alpha_i = sum_j |<h_i, x_j>|, normalized
    assert r.score == pytest.approx(score, abs=1e-8)
    assert r.weights.sum() == pytest.approx(1.0)
    # the y side is the same definition with the roles swapped
    ry = sd.pwcca(x, y, side="y")
    assert ry.side == "y" and ry.score == pytest.approx(ref_pwcca(y, x)[0], abs=1e-8)
    assert sd.pwcca(x, y, side="smaller").side == "y"  # y has fewer features


@pytest.mark.parametrize("kind", list(DATA))
def test_linear_cka_matches_gram_definition(kind):
    x, y = DATA[kind]()
    x, y = x[:800], y[:800]
    assert sd.linear_cka(x, y).score == pytest.approx(ref_cka(x, y), abs=1e-10)


def test_invertible_map_scores_one():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2000, 10))
    w = rng.standard_normal((10, 10))
    q, _ = np.linalg.qr(w)
    well = q * np.linspace(0.5, 2.0, 10)  # condition number 4
    for measure in (sd.cca, sd.svcca, sd.pwcca):
        opts = {"keep": 1.0} if measure is sd.svcca else {}
        r = measure(x, x @ well, **opts)
        np.testing.assert_allclose(r.coefficients, 1.0, atol=1e-8)  # Y = X W must score perfectly
        # an ill-conditioned W is exact too once the ridge is off (epsilon is a ridge, see docs)
        r = measure(x, x @ w, epsilon=0.0, **opts)
        np.testing.assert_allclose(r.coefficients, 1.0, atol=1e-8)
    assert sd.linear_cka(x, 3.0 * x @ q).score == pytest.approx(
        1.0
    )  # CKA: orthogonal maps and scaling


def test_symmetry_and_scaling():
    x, y = planted()
    a, b = sd.cca(x, y), sd.cca(y, x)
    np.testing.assert_allclose(a.coefficients, b.coefficients, atol=1e-10)  # swap x and y
    c = sd.cca(1e-3 * x, 1e5 * y + 7)
    np.testing.assert_allclose(
        a.coefficients, c.coefficients, atol=1e-8
    )  # per-layer scale and shift
    assert sd.linear_cka(x, y).score == pytest.approx(sd.linear_cka(y, 4 * x).score)


def test_independent_layers_score_low():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((20000, 5)), rng.standard_normal((20000, 5))
    r = sd.cca(x, y)
    assert r.coefficients.max() < 0.05 and r.coefficients.min() >= 0.0


@pytest.mark.parametrize("measure", ["cca", "svcca", "pwcca", "linear_cka"])
def test_independent_of_chunking_and_split_every(measure):
    x, y = planted(shift=50.0)
    f = getattr(sd, measure)
    ref = f(x, y)
    for chunks, split_every in [(100, 2), (777, 3), (3000, 8), (1, 64)]:
        if chunks == 1:
            chunks = 37
        r = f(
            da.from_array(x, chunks=(chunks, 12)),
            da.from_array(y, chunks=(chunks * 2, 9)),
            split_every=split_every,
        )
        assert r.score == pytest.approx(
            ref.score, rel=1e-12
        )  # scheduler/chunking must not change results
        if hasattr(ref, "coefficients"):
            np.testing.assert_allclose(r.coefficients, ref.coefficients, rtol=1e-12, atol=1e-13)


def test_float32_zarr_and_path_inputs(tmp_path):
    x, y = planted()
    x, y = x.astype(np.float32), y.astype(np.float32)
    root = zarr.open_group(str(tmp_path / "acts.zarr"), mode="w")
    zx = root.create_array("x", shape=x.shape, chunks=(500, x.shape[1]), dtype="float32")
    zx[:] = x
    zy = root.create_array("y", shape=y.shape, chunks=(700, y.shape[1]), dtype="float32")
    zy[:] = y
    ref = sd.cca(x, y)
    for a, b in [(zx, zy), (str(tmp_path / "acts.zarr" / "x"), str(tmp_path / "acts.zarr" / "y"))]:
        r = sd.cca(a, b)
        np.testing.assert_allclose(r.coefficients, ref.coefficients, rtol=1e-12)


def test_dead_features_are_dropped_and_reported():
    x, y = planted()
    x = np.hstack([x[:, :3], np.full((x.shape[0], 1), 4.0), x[:, 3:]])  # feature 3 is constant
    y = np.hstack([y, np.zeros((y.shape[0], 2))])  # features 9, 10 are dead
    for measure in (sd.cca, sd.svcca, sd.pwcca):
        r = measure(x, y)
        assert np.all(np.isfinite(r.coefficients)) and np.isfinite(r.score)  # never NaN
        assert list(r.x_dropped) == [3] and list(r.y_dropped) == [9, 10]
        assert 3 not in r.x_features and r.y_features.size == 9
        np.testing.assert_array_equal(r.x_weights[3], 0.0)  # a dropped feature has no weight
    live = sd.cca(np.delete(x, 3, axis=1), y[:, :9])
    np.testing.assert_allclose(sd.cca(x, y).coefficients, live.coefficients, atol=1e-10)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("measure", [sd.cca, sd.svcca, sd.pwcca, sd.linear_cka])
def test_bad_inputs_raise_clear_errors(measure, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 4))
    with pytest.raises(ValueError, match=r"same number of samples.*100 and 99"):
        measure(x, x[:99])
    with pytest.raises(ValueError, match="x has 1 sample"):
        measure(x[:1], x[:1])
    with pytest.raises(ValueError, match=r"y must be 2-D( or 4-D)?, got shape \(100,\).*reshape"):
        measure(x, x[:, 0])
    with pytest.raises(ValueError, match=r"token layers \(n, T, d\) take conv='samples'"):
        measure(x.reshape(100, 2, 2), x)
    with pytest.raises(TypeError, match="y must hold real numbers, got dtype <U1"):
        measure(x, np.full((100, 2), "a"))
    with pytest.raises(TypeError, match="x must hold real numbers, got dtype complex128"):
        measure(x.astype(complex), x)
    bad = x.copy()
    bad[42, 1] = np.nan
    with pytest.raises(ValueError, match=r"y contains NaN or infinite values in rows 42"):
        measure(x, bad)
    bad[42, 1] = -np.inf
    with pytest.raises(ValueError, match=r"x contains NaN or infinite values in rows 42"):
        measure(bad, x)
    with pytest.raises(FileNotFoundError, match=r"x: no Zarr array at .*missing.zarr/layer"):
        measure(str(tmp_path / "missing.zarr" / "layer"), x)
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array(
        "a", shape=(100, 4), dtype="f4"
    )
    with pytest.raises(
        FileNotFoundError, match=r"y: .*g.zarr' is a Zarr group, not an array.*arrays: a"
    ):
        measure(x, str(tmp_path / "g.zarr"))


@pytest.mark.parametrize("measure", [sd.cca, sd.svcca, sd.pwcca, sd.linear_cka])
def test_dead_layer_is_an_error(measure):
    x = np.random.default_rng(0).standard_normal((100, 4))
    with pytest.raises(ValueError, match=r"y has no live feature"):
        measure(x, np.ones((100, 3)))


def test_bad_options():
    x, y = planted(n=200)
    with pytest.raises(ValueError, match=r"keep as a float is a fraction of variance in \(0, 1\]"):
        sd.svcca(x, y, keep=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        sd.svcca(x, y, keep=0)
    with pytest.raises(TypeError, match="keep must be"):
        sd.svcca(x, y, keep="all")
    with pytest.raises(ValueError, match="side must be"):
        sd.pwcca(x, y, side="left")
    with pytest.raises(ValueError, match=r"12 \+ 9 = 21 features, more than max_features=20"):
        sd.cca(x, y, max_features=20)
    with pytest.raises(TypeError):
        sd.cca(x, y, 1e-6)  # options are keyword-only


@pytest.mark.parametrize("scale", [1e-150, 1e150])
def test_scale_within_float64_range_changes_nothing(scale):
    x, y = planted()
    for measure in (sd.cca, sd.svcca, sd.pwcca, sd.linear_cka):
        assert measure(scale * x, y).score == pytest.approx(measure(x, y).score, rel=1e-9)


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_scale_beyond_float64_range_is_a_clear_error(scale):
    x, y = planted()
    for measure in (sd.cca, sd.linear_cka):
        with pytest.raises(ValueError, match=r"(overflow|underflow) float64.*a constant first"):
            measure(scale * x, y)


def test_default_scores_self_and_invertible_maps_one_to_rounding():
    """No ridge by default: rank-revealing whitening instead (the ridge of
    epsilon=1e-10 gives 1 - 1e-10 for cca(x, x), 1 - 5e-9 for an invertible map)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 40)) + 3
    w = rng.standard_normal((40, 40))
    for y in (x, x @ w, x[:, ::-1] * 1e3 + 7):
        assert sd.cca(x, y).score == pytest.approx(1.0, abs=1e-12)
        assert sd.pwcca(x, y).score == pytest.approx(1.0, abs=1e-12)
        assert sd.svcca(x, y, keep=40).score == pytest.approx(1.0, abs=1e-12)
    ridge = sd.cca(x, x @ w, epsilon=1e-10).score
    assert 1 - ridge > 1e-11  # the ridge is what kept the old default below 1
    m = sd.similarity_matrix({"a": x, "b": x @ w}, measure="cca")
    np.testing.assert_allclose(m.scores, 1.0, atol=1e-12)
    # a rank-deficient layer: its null directions are dropped, not amplified
    y = np.hstack([x, x[:, :5] + x[:, 5:10]])
    assert sd.cca(x, y).score == pytest.approx(1.0, abs=1e-12)


def test_epsilon_reproduces_google_svcca():
    from reference import google_cca

    rng = np.random.default_rng(1)
    z = rng.standard_normal((2000, 8))
    x = z @ rng.standard_normal((8, 30)) + rng.standard_normal((2000, 30)) + 50
    y = z @ rng.standard_normal((8, 20)) + 2 * rng.standard_normal((2000, 20))
    got = sd.cca(x, y, epsilon=1e-10).coefficients
    np.testing.assert_allclose(got, google_cca(x, y, 1e-10), rtol=0, atol=1e-14)
    np.testing.assert_allclose(sd.cca(x, y).coefficients, got, atol=1e-8)  # default: close
