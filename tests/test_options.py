"""Options are checked before any data is read, in the API, jobs and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import svcca_dask as sd


class Untouchable:
    """An array-like whose data must never be read: the option checks come first."""

    shape = (100, 4)
    dtype = np.dtype("float64")
    ndim = 2

    def __array__(self, *a, **k):
        raise AssertionError("the data was read before the options were checked")

    def __getitem__(self, item):
        raise AssertionError("the data was read before the options were checked")


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6))
    return x, x[:, :4] + 0.3 * rng.standard_normal((300, 4))


@pytest.mark.parametrize("epsilon", [-1, float("nan"), float("inf"), -1e-12])
@pytest.mark.parametrize("measure", [sd.cca, sd.svcca, sd.pwcca])
def test_epsilon_must_be_finite_and_non_negative(pair, measure, epsilon):
    x, y = pair
    with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
        measure(x, y, epsilon=epsilon)
    with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
        measure(Untouchable(), Untouchable(), epsilon=epsilon)
    with pytest.raises(TypeError, match="epsilon must be a number"):
        measure(x, y, epsilon="1e-10")


def test_epsilon_zero_is_allowed(pair):
    x, y = pair
    assert sd.cca(x, y, epsilon=0).score == pytest.approx(sd.cca(x, y).score, abs=1e-8)


@pytest.mark.parametrize("keep", [1.5, 0, -3, (0.9, 2.0), (0.9,), "all"])
def test_keep_is_checked_before_the_pass(keep):
    with pytest.raises((ValueError, TypeError), match="keep"):
        sd.svcca(Untouchable(), Untouchable(), keep=keep)


def test_side_is_checked_before_the_pass():
    with pytest.raises(ValueError, match="side must be"):
        sd.pwcca(Untouchable(), Untouchable(), side="z")


def test_matrix_options_are_checked_before_the_pass():
    layers = {"a": Untouchable(), "b": Untouchable()}
    with pytest.raises(ValueError, match="epsilon"):
        sd.similarity_matrix(layers, epsilon=-1)
    with pytest.raises(ValueError, match="keep"):
        sd.similarity_matrix(layers, keep=1.5)
    with pytest.raises(ValueError, match="side"):
        sd.similarity_matrix(layers, measure="pwcca", side="z")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory_limit": 0},
        {"memory_limit": "lots"},
        {"memory_limit": -5},
        {"lanes": 0},
        {"rows": 0},
        {"rows": 2.5},
        {"lanes": True},
    ],
)
def test_dft_options_are_checked_when_made(kwargs):
    with pytest.raises(ValueError, match=r"DFT|memory_limit"):
        sd.DFT(**kwargs)


def test_dft_options_accept_sizes():
    assert sd.DFT(memory_limit="1.5GiB").memory_limit == "1.5GiB"
    assert sd.DFT(memory_limit=2**30, lanes=2, rows=16).rows == 16


def test_options_are_checked_before_a_store_is_read(tmp_path):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.create_array("x", data=np.ones((10, 3)))
    with pytest.raises(ValueError, match="epsilon"):
        sd.cca(str(tmp_path / "s.zarr" / "x"), str(tmp_path / "nowhere.zarr" / "y"), epsilon=-1)
