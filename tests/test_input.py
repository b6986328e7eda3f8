"""Inputs users hold: PyTorch tensors, xarray objects, anything NumPy takes (svcca_dask.input)."""

from __future__ import annotations

import numpy as np
import pytest

import svcca_dask as sd


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1000, 10))
    return x, x[:, :6] @ rng.standard_normal((6, 12)) + rng.standard_normal((1000, 12))


def test_torch_tensors_on_the_cpu():
    torch = pytest.importorskip("torch")
    x, y = _pair()
    tx, ty = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    ref = sd.linear_cka(x.astype(np.float32), y.astype(np.float32)).score
    assert sd.linear_cka(tx, ty).score == pytest.approx(ref, rel=1e-12)
    assert sd.cca(tx.requires_grad_(), ty).score == pytest.approx(
        sd.cca(x.astype(np.float32), y.astype(np.float32)).score, rel=1e-12
    )  # a tensor that requires grad is read too (detached)
    conv = torch.randn(50, 3, 4, 4)
    assert sd.cca(conv, conv[:, :2] * 2, layout="NCHW").score > 0.99


class _FakeTensor:
    """A tensor on a GPU, as far as the input check can tell."""

    shape = (10, 3)
    dtype = "torch.float32"

    class device:
        type = "cuda"

        def __str__(self):
            return "cuda:0"

    device = device()

    def detach(self):
        return self


def test_a_gpu_tensor_is_a_clear_error():
    with pytest.raises(TypeError, match=r"x is a tensor on cuda:0: move it to the CPU first"):
        sd.cca(_FakeTensor(), np.zeros((10, 2)))


class _HasArray:
    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a


class _FakeDataArray:
    """What the input check reads of an xarray.DataArray: dims, coords, data."""

    def __init__(self, a, dims):
        self.data, self.dims, self.coords = a, dims, {}
        self.shape, self.dtype = a.shape, a.dtype


def test_array_likes_and_xarray_objects():
    x, y = _pair()
    ref = sd.cca(x, y).score
    assert sd.cca(_HasArray(x), _HasArray(y)).score == pytest.approx(ref, rel=1e-12)
    assert sd.cca(x.tolist(), y).score == pytest.approx(ref, rel=1e-12)
    assert sd.cca(_FakeDataArray(x, ("sample", "neuron")), y).score == pytest.approx(
        ref, rel=1e-12
    )
    conv = np.random.default_rng(1).standard_normal((60, 3, 4, 4))
    dims = ("sample", "channel", "height", "width")  # the dims say the layout
    named = _FakeDataArray(conv, dims), _FakeDataArray(conv[:, :2].copy(), dims)
    assert sd.cca(*named).score == pytest.approx(
        sd.cca(conv, conv[:, :2], layout="NCHW").score, rel=1e-12
    )
