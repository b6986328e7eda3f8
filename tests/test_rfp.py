"""Packed Hermitian accumulators (svcca_dask._rfp): the update, the unpacking, the GIL."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from svcca_dask import _nogil, _rfp


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
    c = np.zeros((3, _rfp.packed_size(n)), dtype=np.complex128)
    _rfp.hfrk_update(c, z1, nogil=nogil)
    _rfp.hfrk_update(c, np.ascontiguousarray(z2), nogil=nogil)
    full = _rfp.unpack(c, n, nogil=nogil)
    want = z1 @ np.swapaxes(z1.conj(), 1, 2) + z2 @ np.swapaxes(z2.conj(), 1, 2)
    np.testing.assert_allclose(full, want, rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(full, np.swapaxes(full.conj(), 1, 2))  # exactly Hermitian
    assert not np.diagonal(full, axis1=1, axis2=2).imag.any()


def test_both_bindings_agree_bit_for_bit():
    z = _data(4, 33, 5, pad=3)
    a = np.zeros((4, _rfp.packed_size(33)), dtype=np.complex128)
    b = a.copy()
    _rfp.hfrk_update(a, z, nogil=True)
    _rfp.hfrk_update(b, z, nogil=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_rfp.unpack(a, 33), _rfp.unpack(a, 33, nogil=False))


def test_bad_arguments():
    z = _data(2, 4, 3)
    with pytest.raises(ValueError, match="C-contiguous of shape"):
        _rfp.hfrk_update(np.zeros((2, 9), dtype=np.complex128), z)
    with pytest.raises(TypeError, match="complex128"):
        _rfp.hfrk_update(np.zeros((2, 10), dtype=np.complex128), z.astype(np.complex64))
    with pytest.raises(ValueError, match="unit stride"):
        _rfp.hfrk_update(np.zeros((2, 10), dtype=np.complex128), z[:, :, ::-1])


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
    if _nogil.cython_function("zhfrk") is None:  # pragma: no cover - no capsule
        pytest.fail("scipy.linalg.cython_lapack does not expose zhfrk")
    n = k = 1400  # one frequency: the f2py loop releases the GIL between frequencies
    z = _data(1, n, k)
    c = np.zeros((1, _rfp.packed_size(n)), dtype=np.complex128)
    woke, call = wakes_during_the_call(lambda: _rfp.hfrk_update(c, z))
    assert woke < 0.5 * call, (woke, call)
