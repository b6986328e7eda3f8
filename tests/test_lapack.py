"""GIL-free LAPACK calls (svcca_dask._lapack): packed Hermitian updates, unpacking, triangular solves."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from scipy.linalg import solve_triangular

from svcca_dask import _lapack


def _data(f: int, n: int, k: int, pad: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    buf = rng.standard_normal((f, n, k + pad)) + 1j * rng.standard_normal((f, n, k + pad))
    return buf[:, :, :k]  # a view with a row stride wider than k, as in the fold


@pytest.mark.parametrize("nogil", [True, False])
@pytest.mark.parametrize(("n", "k"), [(1, 3), (2, 1), (5, 3), (6, 4), (9, 20), (64, 7), (75, 6)])
def test_update_then_unpack_is_the_gram(n, k, nogil):
    """Odd and even n (RFP folds them differently), views with padding, repeated
    updates; n = 64 and 75 fill the lower triangle in several blocks of rows."""
    z1, z2 = _data(3, n, k, pad=2, seed=1), _data(3, n, k, pad=0, seed=2)
    c = np.zeros((3, _lapack.packed_size(n)), dtype=np.complex128)
    _lapack.hfrk_update(c, z1, nogil=nogil)
    _lapack.hfrk_update(c, np.ascontiguousarray(z2), nogil=nogil)
    full = _lapack.unpack(c, n, nogil=nogil)
    want = z1 @ np.swapaxes(z1.conj(), 1, 2) + z2 @ np.swapaxes(z2.conj(), 1, 2)
    np.testing.assert_allclose(full, want, rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(full, np.swapaxes(full.conj(), 1, 2))  # exactly Hermitian
    assert not np.diagonal(full, axis1=1, axis2=2).imag.any()


def test_both_bindings_agree_bit_for_bit():
    z = _data(4, 33, 5, pad=3)
    a = np.zeros((4, _lapack.packed_size(33)), dtype=np.complex128)
    b = a.copy()
    _lapack.hfrk_update(a, z, nogil=True)
    _lapack.hfrk_update(b, z, nogil=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_lapack.unpack(a, 33), _lapack.unpack(a, 33, nogil=False))


def test_bad_arguments():
    z = _data(2, 4, 3)
    with pytest.raises(ValueError, match="C-contiguous of shape"):
        _lapack.hfrk_update(np.zeros((2, 9), dtype=np.complex128), z)
    with pytest.raises(TypeError, match="complex128"):
        _lapack.hfrk_update(np.zeros((2, 10), dtype=np.complex128), z.astype(np.complex64))
    with pytest.raises(ValueError, match="unit stride"):
        _lapack.hfrk_update(np.zeros((2, 10), dtype=np.complex128), z[:, :, ::-1])


def wakes_during_the_call(call) -> tuple[float, float]:
    """Thread A runs ``call()``; the main thread sleeps 10 ms once A is inside.
    Returns when the main thread woke and when A's call ended, relative to its start."""
    started = threading.Event()
    times: dict[str, float] = {}

    def run() -> None:
        started.set()
        times["start"] = time.perf_counter()
        call()
        times["end"] = time.perf_counter()

    t = threading.Thread(target=run)
    t.start()
    started.wait()
    time.sleep(0.01)
    woke = time.perf_counter()
    t.join()
    return woke - times["start"], times["end"] - times["start"]


def test_nogil_binding_releases_the_gil():
    """With the GIL held for the whole call (scipy's f2py wrapper), a sleeping thread
    cannot wake before the call is over; with the ctypes binding it wakes at once.
    (A margin of half the call: not a speed test.)"""
    if _lapack.fortran_routine("zhfrk") is None:  # pragma: no cover - no Fortran symbol
        pytest.fail("the LAPACK behind scipy.linalg.cython_lapack has no zhfrk")
    n = k = 1400  # one frequency: the f2py loop releases the GIL between frequencies
    z = _data(1, n, k)
    c = np.zeros((1, _lapack.packed_size(n)), dtype=np.complex128)
    woke, call = wakes_during_the_call(lambda: _lapack.hfrk_update(c, z))
    assert woke < 0.5 * call, (woke, call)


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
    out = _lapack.trsm_lower(low, b, side=side, trans=trans, nogil=nogil)
    assert out is b
    np.testing.assert_allclose(b, np.array(want), rtol=1e-12, atol=1e-12)
    assert np.all(wide[:, :, shape[2] :] == 1j)  # the padding is untouched


def test_trsm_lower_matches_scipy_bit_for_bit():
    low = _lower(3, 17)
    b = np.random.default_rng(2).standard_normal((3, 17, 4)) + 0j
    want = np.array([solve_triangular(low[f], b[f], lower=True) for f in range(3)])
    ours = _lapack.trsm_lower(low, b.copy(), nogil=False)
    np.testing.assert_array_equal(ours, want)
    np.testing.assert_allclose(_lapack.trsm_lower(low, b.copy()), want, rtol=1e-13)


def test_trsm_lower_bad_arguments():
    low, b = _lower(2, 4), np.zeros((2, 4, 3), dtype=np.complex128)
    with pytest.raises(ValueError, match="side must be"):
        _lapack.trsm_lower(low, b, side="X")
    with pytest.raises(ValueError, match="do not match"):
        _lapack.trsm_lower(low, b, side="R")
    with pytest.raises(TypeError, match="complex128"):
        _lapack.trsm_lower(low, b.real.copy())
    with pytest.raises(ValueError, match="unit stride"):
        _lapack.trsm_lower(low, b[:, :, ::-1])


def test_trsm_lower_releases_the_gil():
    if _lapack.fortran_routine("ztrsm") is None:  # pragma: no cover - no Fortran symbol
        pytest.fail("the LAPACK behind scipy.linalg.cython_blas has no ztrsm")
    low = _lower(1, 1500)
    b = np.ones((1, 1500, 1500), dtype=np.complex128)
    woke, call = wakes_during_the_call(lambda: _lapack.trsm_lower(low, b))
    assert woke < 0.5 * call, (woke, call)


def test_fortran_bindings_on_the_dft_paths_shapes():
    """The shapes the DFT path calls with: 256 + 256 channels, a fold of 32 images
    plus the merge column, and the triangular solves of a 256-channel CCA. The
    Fortran routines get every hidden CHARACTER length; both bindings agree."""
    for name in ("zhfrk", "ztfttr", "ztrsm"):
        fn = _lapack.fortran_routine(name)
        assert fn is not None and fn.n_char == sum(a is _lapack._char for a in fn.argtypes)
    n, k = 512, 33
    z = _data(2, n, k, pad=1, seed=5)
    c_fast = np.zeros((2, _lapack.packed_size(n)), dtype=np.complex128)
    c_slow = c_fast.copy()
    _lapack.hfrk_update(c_fast, z, nogil=True)
    _lapack.hfrk_update(c_slow, z, nogil=False)
    np.testing.assert_allclose(c_fast, c_slow, rtol=1e-12, atol=1e-10)
    full = _lapack.unpack(c_fast, n, nogil=True)
    np.testing.assert_array_equal(full, _lapack.unpack(c_fast, n, nogil=False))
    np.testing.assert_allclose(full, z @ np.swapaxes(z.conj(), 1, 2), rtol=1e-12, atol=1e-9)
    low = _lower(2, 256, pad=1)
    b = np.random.default_rng(6).standard_normal((2, 256, 256)) + 0j
    fast = _lapack.trsm_lower(low, b.copy(), side="R", trans="C", nogil=True)
    slow = _lapack.trsm_lower(low, b.copy(), side="R", trans="C", nogil=False)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
