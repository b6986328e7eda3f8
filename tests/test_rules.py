"""The shared rules (svcca_dask.rules): dead features scale with the layer, one keep count."""

from __future__ import annotations

import numpy as np
import pytest

import svcca_dask as sd
from svcca_dask.rules import check_keep, keep_count, live_features, live_mask


def _layers(n=600, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    x = z @ rng.standard_normal((3, 8)) + 0.5 * rng.standard_normal((n, 8))
    y = z @ rng.standard_normal((3, 5)) + 0.5 * rng.standard_normal((n, 5))
    return x, y


@pytest.mark.parametrize("measure", [sd.cca, sd.svcca, sd.pwcca])
def test_dead_feature_rule_is_relative_to_the_layer_dense(measure):
    x, y = _layers()
    ref = measure(x, y)
    # variances of 1e-12: below epsilon=1e-10 in absolute terms, but nothing is dead
    small = measure(1e-6 * x, y)
    np.testing.assert_allclose(small.coefficients, ref.coefficients, rtol=1e-9, atol=1e-12)
    assert small.x_dropped.size == 0


@pytest.mark.parametrize("measure", [sd.cca, sd.svcca, sd.pwcca, sd.linear_cka])
def test_dead_feature_rule_is_relative_to_the_layer_dft(measure):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 3, 6, 6))
    y = x[:, :2] * 2.0 + 0.3 * rng.standard_normal((120, 2, 6, 6))
    ref = measure(x, y, layout="NCHW")
    small = measure(1e-6 * x, y, layout="NCHW")  # coefficient variances ~4e-11 < epsilon
    assert small.score == pytest.approx(ref.score, rel=1e-9)
    if hasattr(ref, "n_coefficients"):
        np.testing.assert_array_equal(small.n_coefficients, ref.n_coefficients)


def test_live_mask_and_live_features():
    var = np.array([4.0, 4e-11, 0.0, 1.0])
    np.testing.assert_array_equal(live_features(var, 1e-10, "x"), [0, 3])  # 1e-11 of the top: dead
    np.testing.assert_array_equal(live_features(1e-9 * var, 1e-10, "x"), [0, 3])  # scale-free
    assert not live_mask(var, 0.0, 1e-10).any()  # a constant layer: nothing is live
    with pytest.raises(ValueError, match="no live feature"):
        live_features(np.zeros(3), 1e-10, "x")


def test_keep_count():
    w = np.array([5.0, 3.0, 1.0, 1.0])
    assert keep_count(w, 0.5, total=10.0) == 1  # 5 of 10 reaches one half exactly
    assert keep_count(w, 0.8, total=10.0) == 2
    assert keep_count(w, 1.0, total=10.0) == 4
    assert keep_count(w, 1.0, total=20.0) == 5  # not reached within w: len + 1
    assert keep_count(w, 3, total=10.0) == 3
    assert keep_count(w, 9, total=10.0) == 5
    # weights: the first entry stands for two directions (a conjugate pair)
    assert keep_count(w, 2, total=10.0, weights=np.array([2, 1, 1, 1])) == 1
    assert keep_count(w, 0.9, total=15.0, weights=np.array([2, 1, 1, 1])) == 3


@pytest.mark.parametrize(
    ("keep", "error"),
    [(0, ValueError), (1.5, ValueError), (0.0, ValueError), (True, TypeError), ("0.9", TypeError)],
)
def test_check_keep_refuses(keep, error):
    with pytest.raises(error):
        check_keep(keep)


def test_too_few_samples_are_flagged():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 40)), rng.standard_normal((300, 40))  # independent
    with pytest.warns(sd.SampleSizeWarning, match="300 samples for 40 canonical directions"):
        r = sd.pwcca(x, y)
    assert r.coefficients[0] > 0.6  # what the warning is about: unrelated layers correlate
    assert r.warnings and "fewer than 10 per direction" in r.warnings[0]
    with pytest.warns(sd.SampleSizeWarning):
        sd.cca(x, y)
    with pytest.warns(sd.SampleSizeWarning, match="for 35 canonical"):
        sd.svcca(x, y, keep=35)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = sd.svcca(x, y, keep=5)  # 300 samples for 5 directions: fine
    assert r.warnings == ()


def test_too_few_images_per_frequency_are_flagged():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 8, 4, 4)), rng.standard_normal((40, 8, 4, 4))
    with pytest.warns(sd.SampleSizeWarning, match="40 samples for 8 canonical directions at a"):
        r = sd.cca(x, y, layout="NCHW")
    assert r.warnings


def test_a_matrix_warns_once_per_measure():
    rng = np.random.default_rng(2)
    layers = {f"l{i}": rng.standard_normal((100, 20)) for i in range(3)}
    with pytest.warns(sd.SampleSizeWarning) as record:
        m = sd.similarity_matrix(layers, measure="cca")
    assert len(record) == 1 and "cca: 9 of 9 pairs" in str(record[0].message)
    assert m["l0", "l1"].warnings  # each pair's result says so too
