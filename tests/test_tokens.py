"""Token layers (n, T, d): every token a sample or the mean over tokens, padding
excluded by a mask, from NumPy, Dask and Zarr (dimension_names)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from reference import cca as ref_cca
from reference import debiased_linear_cka as ref_debiased

import svcca_dask as sd


def _tokens(n=80, t=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, 6)) + 2
    y = x @ rng.standard_normal((6, 4)) + 0.5 * rng.standard_normal((n, t, 4))
    lengths = rng.integers(2, t + 1, size=n)
    mask = np.arange(t)[None, :] < lengths[:, None]  # right padding, as tokenizers pad
    return x, y, mask


def _mean(a, mask):
    return (a * mask[..., None]).sum(1) / mask.sum(1)[:, None]


def test_samples_keep_only_the_masked_tokens_from_chunked_inputs():
    x, y, mask = _tokens()
    got = sd.cca(da.from_array(x, chunks=(17, 9, 6)), y, conv="samples", layout="NTC", mask=mask)
    np.testing.assert_allclose(got.coefficients, ref_cca(x[mask], y[mask])[0], atol=1e-10)
    assert got.n_samples == mask.sum()
    whole = sd.cca(x, y, conv="samples", layout="NTC")  # no mask: every token
    np.testing.assert_allclose(
        whole.coefficients, ref_cca(x.reshape(-1, 6), y.reshape(-1, 4))[0], atol=1e-10
    )


def test_mean_over_the_masked_tokens_and_every_measure():
    x, y, mask = _tokens(seed=1)
    xm, ym = _mean(x, mask), _mean(y, mask)
    kw = {"conv": "mean", "layout": "NTC", "mask": mask}
    np.testing.assert_allclose(sd.cca(x, y, **kw).coefficients, ref_cca(xm, ym)[0], atol=1e-10)
    assert sd.svcca(x, y, keep=3, **kw).score == pytest.approx(sd.svcca(xm, ym, keep=3).score)
    assert sd.pwcca(x, y, **kw).score == pytest.approx(sd.pwcca(xm, ym).score)
    assert sd.linear_cka(x, y, debiased=True, **kw).score == pytest.approx(
        ref_debiased(xm, ym), abs=1e-10
    )
    assert sd.shape_distance(x, y, **kw).score == pytest.approx(sd.shape_distance(xm, ym).score)
    held = sd.cca(x, y, folds=2, **kw)
    assert held.fold_scores.shape == (2,)


def test_a_per_sequence_side_repeats_for_each_kept_token():
    x, _, mask = _tokens(seed=2)
    labels = np.random.default_rng(3).standard_normal((80, 2))
    got = sd.cca(x, labels, conv="samples", layout="NTC", mask=mask)
    want = ref_cca(x[mask], np.repeat(labels, mask.sum(1), axis=0))[0]
    np.testing.assert_allclose(got.coefficients, want, atol=1e-10)
    got = sd.cca(labels, x, conv="mean", layout=(None, "NTC"), mask=mask)
    np.testing.assert_allclose(got.coefficients, ref_cca(labels, _mean(x, mask))[0], atol=1e-10)


def test_zarr_layers_and_masks_name_their_dimensions(tmp_path):
    x, y, mask = _tokens(seed=4)
    root = zarr.open_group(tmp_path / "acts.zarr", mode="w")
    for name, arr in (("x", x), ("y", y)):
        a = root.create_array(
            name,
            shape=arr.shape,
            chunks=(16, 9, arr.shape[2]),
            dtype="f8",
            dimension_names=("sample", "token", "feature"),
        )
        a[:] = arr
    m = root.create_array("mask", shape=mask.shape, chunks=(16, 9), dtype="bool")
    m[:] = mask
    p = str(tmp_path / "acts.zarr")
    got = sd.cca(f"{p}/x", f"{p}/y", conv="samples", mask=f"{p}/mask")  # no layout= needed
    np.testing.assert_allclose(got.coefficients, ref_cca(x[mask], y[mask])[0], atol=1e-10)


def test_clear_errors():
    x, y, mask = _tokens()
    with pytest.raises(ValueError, match=r"token layers .* take conv='samples' .* not conv='dft'"):
        sd.cca(x, y, layout="NTC", mask=mask)
    with pytest.raises(ValueError, match="pass layout='NTC'"):
        sd.cca(x, y, conv="mean")
    with pytest.raises(ValueError, match=r"mask has shape \(80, 8\)"):
        sd.cca(x, y, conv="mean", layout="NTC", mask=mask[:, :8])
    with pytest.raises(TypeError, match="mask must be boolean"):
        sd.cca(x, y, conv="mean", layout="NTC", mask=mask.astype(int))
    with pytest.raises(ValueError, match="mask= applies to token layers"):
        sd.cca(x[:, 0], y[:, 0], mask=mask)
    empty = mask.copy()
    empty[5] = False
    with pytest.raises(ValueError, match="sequences 5 keep no token"):
        sd.cca(x, y, conv="mean", layout="NTC", mask=empty)
