"""GIL-free BLAS bindings (svcca_dask._nogil): triangular solves."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import solve_triangular
from test_rfp import wakes_during_the_call

from svcca_dask import _nogil


def _lower(f: int, n: int, pad: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((f, n, n + pad)) + 1j * rng.standard_normal((f, n, n + pad))
    a[:, :, :n] += 3 * n * np.eye(n)  # well conditioned
    # garbage above the diagonal: it must not be read
    return a[:, :, :n]


@pytest.mark.parametrize("nogil", [True, False])
@pytest.mark.parametrize("side", ["L", "R"])
@pytest.mark.parametrize("trans", ["N", "C"])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 3), (8, 11)])
def test_trsm_lower_solves(n, k, side, trans, nogil):
    low = _lower(2, n, pad=2)
    rng = np.random.default_rng(1)
    shape = (2, n, k) if side == "L" else (2, k, n)
    wide = np.full((2, shape[1], shape[2] + 3), 1j)
    b = wide[:, :, : shape[2]]  # a padded view: written in place
    b[...] = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    want = []
    for f in range(2):
        op = np.tril(low[f]) if trans == "N" else np.tril(low[f]).conj().T
        want.append(np.linalg.solve(op, b[f]) if side == "L" else np.linalg.solve(op.T, b[f].T).T)
    out = _nogil.trsm_lower(low, b, side=side, trans=trans, nogil=nogil)
    assert out is b
    np.testing.assert_allclose(b, np.array(want), rtol=1e-12, atol=1e-12)
    assert np.all(wide[:, :, shape[2] :] == 1j)  # the padding is untouched


def test_trsm_lower_matches_scipy_bit_for_bit():
    low = _lower(3, 17)
    b = np.random.default_rng(2).standard_normal((3, 17, 4)) + 0j
    want = np.array([solve_triangular(low[f], b[f], lower=True) for f in range(3)])
    ours = _nogil.trsm_lower(low, b.copy(), nogil=False)
    np.testing.assert_array_equal(ours, want)
    np.testing.assert_allclose(_nogil.trsm_lower(low, b.copy()), want, rtol=1e-13)


def test_trsm_lower_bad_arguments():
    low, b = _lower(2, 4), np.zeros((2, 4, 3), dtype=np.complex128)
    with pytest.raises(ValueError, match="side must be"):
        _nogil.trsm_lower(low, b, side="X")
    with pytest.raises(ValueError, match="do not match"):
        _nogil.trsm_lower(low, b, side="R")
    with pytest.raises(TypeError, match="complex128"):
        _nogil.trsm_lower(low, b.real.copy())
    with pytest.raises(ValueError, match="unit stride"):
        _nogil.trsm_lower(low, b[:, :, ::-1])


def test_trsm_lower_releases_the_gil():
    if _nogil.cython_function("ztrsm") is None:  # pragma: no cover - no capsule
        pytest.fail("scipy.linalg.cython_blas does not expose ztrsm")
    low = _lower(1, 1500)
    b = np.ones((1, 1500, 1500), dtype=np.complex128)
    woke, call = wakes_during_the_call(lambda: _nogil.trsm_lower(low, b))
    assert woke < 0.5 * call, (woke, call)
