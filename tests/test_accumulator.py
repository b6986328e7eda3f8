"""sd.Accumulator: exact measures from a live loop, whatever the batch sizes."""

from __future__ import annotations

import numpy as np
import pytest

import svcca_dask as sd


def _layers(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)) * 3 + 50  # large means: the merge must not lose digits
    y = x[:, :5] @ rng.standard_normal((5, 8)) + rng.standard_normal((n, 8))
    z = rng.standard_normal((n, 6))
    return x, y, z


def _feed(acc, arrays, batch):
    n = len(next(iter(arrays.values())) if isinstance(arrays, dict) else arrays[0])
    for a in range(0, n, batch):
        if isinstance(arrays, dict):
            acc.update({k: v[a : a + batch] for k, v in arrays.items()})
        else:
            acc.update(*(v[a : a + batch] for v in arrays))
    return acc


@pytest.mark.parametrize("batch", [7, 256, 3000])
def test_the_accumulator_equals_the_one_pass_measures_whatever_the_batch_size(batch):
    x, y, _ = _layers()
    acc = _feed(
        sd.Accumulator(measures=["cka", "svcca", "pwcca", "cca", "shape"], keep=0.99), (x, y), batch
    )
    got = acc.result()
    assert got["cka"].score == pytest.approx(sd.linear_cka(x, y).score, rel=1e-12)
    assert got["svcca"].score == pytest.approx(sd.svcca(x, y, keep=0.99).score, rel=1e-12)
    assert got["pwcca"].score == pytest.approx(sd.pwcca(x, y).score, rel=1e-12)
    np.testing.assert_allclose(got["cca"].coefficients, sd.cca(x, y).coefficients, rtol=1e-12)
    assert got["shape"].score == pytest.approx(
        sd.shape_distance(x, y, conv="mean").score, rel=1e-10
    )


def test_merged_ranks_and_a_saved_and_loaded_accumulator_give_the_same_result(tmp_path):
    x, y, _ = _layers()
    one = _feed(sd.Accumulator(measures=["cka", "svcca"]), (x, y), 500).result()
    rank0 = _feed(sd.Accumulator(measures=["cka", "svcca"]), (x[:1100], y[:1100]), 64)
    rank1 = _feed(sd.Accumulator(measures=["cka", "svcca"]), (x[1100:], y[1100:]), 512)
    merged = rank0.merge(rank1).result()
    for m in ("cka", "svcca"):
        assert merged[m].score == pytest.approx(one[m].score, rel=1e-12)  # ranks combine exactly
    half = _feed(sd.Accumulator(measures=["cka", "svcca"]), (x[:1700], y[:1700]), 100)
    half.save(tmp_path / "acc.zarr")
    half.save(tmp_path / "acc.zarr")  # saved over: whole, never half
    resumed = sd.Accumulator.load(tmp_path / "acc.zarr")
    for a in range(1700, 3000, 300):
        resumed.update(x[a : a + 300], y[a : a + 300])
    for m in ("cka", "svcca"):
        assert resumed.result()[m].score == pytest.approx(
            one[m].score, rel=1e-12
        )  # resumed exactly


def test_layer_dicts_give_matrices_and_folds_the_one_pass_held_out_scores():
    x, y, z = _layers()
    acc = _feed(sd.Accumulator(measures=["cka", "svcca"]), {"x": x, "y": y, "z": z}, 333)
    m = acc.result()["svcca"]
    ref = sd.similarity_matrix({"x": x, "y": y, "z": z}, measure="svcca")
    np.testing.assert_allclose(m.scores, ref.scores, rtol=1e-12)
    folds = _feed(sd.Accumulator(measures=["svcca"], folds=5, n_samples=3000), (x, y), 250).result()
    held = sd.svcca(x, y, folds=5)
    assert folds["svcca"].score == pytest.approx(held.score, rel=1e-12)
    np.testing.assert_allclose(folds["svcca"].fold_scores, held.fold_scores, rtol=1e-12)


def test_tokens_with_masks_and_half_precision_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 10, 8))
    b = a @ rng.standard_normal((8, 6)) + 0.5 * rng.standard_normal((64, 10, 6))
    keep = rng.random((64, 10)) > 0.3
    acc = sd.Accumulator(measures=["cka"])
    for s in range(0, 64, 16):
        acc.update(
            torch.from_numpy(a[s : s + 16]).to(torch.bfloat16),
            torch.from_numpy(b[s : s + 16]).to(torch.bfloat16),
            mask=torch.from_numpy(keep[s : s + 16]),
        )
    ab = torch.from_numpy(a).to(torch.bfloat16).double().numpy()[keep]
    bb = torch.from_numpy(b).to(torch.bfloat16).double().numpy()[keep]
    assert acc.result()["cka"].score == pytest.approx(sd.linear_cka(ab, bb).score, rel=1e-12)


def test_warnings_are_raised_and_mistakes_refused():
    rng = np.random.default_rng(0)
    acc = sd.Accumulator(measures=["svcca"])
    acc.update(rng.standard_normal((40, 10)), rng.standard_normal((40, 10)))
    with pytest.warns(sd.SampleSizeWarning):
        acc.result()  # 40 samples for 10 directions: raised as sd.svcca raises it
    with pytest.raises(ValueError, match=r"widths \(7, 10\) differ"):
        acc.update(rng.standard_normal((5, 7)), rng.standard_normal((5, 10)))
    with pytest.raises(TypeError, match=r"takes option keep"):
        sd.Accumulator(measures=["cka"], keep=0.9)
    with pytest.raises(ValueError, match=r"folds= needs n_samples="):
        sd.Accumulator(measures=["svcca"], folds=3)
