"""Hermitian accumulators in rectangular full packed (RFP) storage.

The DFT path keeps one Hermitian ``D x D`` co-moment matrix per frequency.
Stored square, half of it is never written; in LAPACK's rectangular full
packed format (``transr="N"``, ``uplo="L"``) the lower triangle takes
``D (D + 1) / 2`` numbers, and ``zhfrk`` updates it in place (it runs as two
ZHERKs and one ZGEMM on the packed blocks, as fast as one ZHERK on the
square matrix: measured here, 39 ms against 40 ms per 256 + 256-channel image
over all 1,570 frequencies of a 56 x 56 map).

``scipy.linalg.lapack.zhfrk`` holds the GIL for the whole call (so do
scipy's other f2py BLAS wrappers: two threads calling ``zherk`` ran 1.07x
faster than one, here). The same LAPACK routine reached through
``scipy.linalg.cython_lapack``'s function pointer with ``ctypes`` releases
it (ctypes drops the GIL around foreign calls): two threads on disjoint
frequencies then run 1.9x faster than one. :func:`hfrk_update` uses that
pointer when the installed SciPy exposes it, the f2py wrapper otherwise
(same numbers, no thread scaling).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

__all__ = ["hfrk_update", "packed_size", "unpack"]


def packed_size(n: int) -> int:
    """Numbers in the RFP storage of an ``n x n`` Hermitian matrix."""
    return n * (n + 1) // 2


@functools.lru_cache(maxsize=1)
def _zhfrk_pointer() -> Any:
    """``zhfrk`` from ``scipy.linalg.cython_lapack`` as a ctypes function, or None."""
    try:
        import scipy.linalg.cython_lapack as cl

        capsule = cl.__pyx_capi__["zhfrk"]  # type: ignore[attr-defined]
        api = ctypes.pythonapi
        api.PyCapsule_GetName.restype = ctypes.c_char_p
        api.PyCapsule_GetName.argtypes = [ctypes.py_object]
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        address = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    except (ImportError, AttributeError, KeyError, ValueError):  # pragma: no cover
        return None
    if not address:  # pragma: no cover - a capsule without a pointer
        return None
    c_int_p, c_double_p = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double)
    # void zhfrk(char *transr, char *uplo, char *trans, int *n, int *k, double *alpha,
    #            double complex *a, int *lda, double *beta, double complex *c)
    proto = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, c_int_p, c_int_p,
        c_double_p, ctypes.c_void_p, c_int_p, c_double_p, ctypes.c_void_p,
    )  # fmt: skip
    return proto(address)


def hfrk_update(c: np.ndarray, z: np.ndarray, *, nogil: bool = True) -> None:
    """``c += Z Z^H`` in place, ``c`` in RFP storage, for every leading index.

    Parameters
    ----------
    c : ndarray, complex128, shape (F, n (n + 1) / 2)
        C-contiguous packed accumulators (see :func:`unpack`).
    z : ndarray, complex128, shape (F, n, k)
        Unit stride along ``k`` and a row stride of at least ``k`` (a view
        of a wider buffer is fine): each ``z[f]`` is ``n`` variables times
        ``k`` observations.
    nogil : bool
        Use the GIL-free ctypes binding when available (tests compare both).

    Notes
    -----
    What is stored is the packed lower triangle of ``conj(Z Z^H)`` (that is
    ``zhfrk`` with ``trans="C"`` on the row-major ``z``, which needs no
    copy); :func:`unpack` undoes the conjugation.
    """
    f_count, n, k = z.shape
    if c.shape != (f_count, packed_size(n)) or not c.flags.c_contiguous:
        raise ValueError(f"c must be C-contiguous of shape {(f_count, packed_size(n))}")
    if z.dtype != np.complex128 or c.dtype != np.complex128:
        raise TypeError("hfrk_update works on complex128 arrays")
    if f_count == 0 or n == 0 or k == 0:
        return
    if z.strides[2] != 16 or z.strides[1] < 16 * k or z.strides[1] % 16:
        raise ValueError("z must have unit stride along its last axis")
    lda = z.strides[1] // 16
    fn = _zhfrk_pointer() if nogil else None
    if fn is None:
        from scipy.linalg.lapack import zhfrk

        for f in range(f_count):
            # the f2py wrapper copies to Fortran order: a (k, n) = z[f].T, trans="C"
            out = zhfrk(n, k, 1.0, z[f].T, 1.0, c[f], transr="N", uplo="L", trans="C",
                        overwrite_c=1)  # fmt: skip
            if not np.may_share_memory(out, c[f]):  # pragma: no cover - f2py copied c
                c[f] = out
        return
    ni, ki, ld = ctypes.c_int(n), ctypes.c_int(k), ctypes.c_int(lda)
    one = ctypes.c_double(1.0)
    refs = (ctypes.byref(ni), ctypes.byref(ki), ctypes.byref(one))
    z0, c0 = z.ctypes.data, c.ctypes.data
    zs, cs = z.strides[0], c.strides[0]
    for f in range(f_count):
        fn(b"N", b"L", b"C", *refs, z0 + f * zs, ctypes.byref(ld), ctypes.byref(one), c0 + f * cs)


@functools.lru_cache(maxsize=4)
def _lower_mask(n: int) -> np.ndarray:
    return np.tri(n, dtype=bool)


def unpack(c: np.ndarray, n: int) -> np.ndarray:
    """The full Hermitian matrices ``Z Z^H`` accumulated by :func:`hfrk_update`.

    LAPACK's ``ztfttr`` unfolds each packed matrix into a square lower
    triangle (of ``conj(Z Z^H)``, see :func:`hfrk_update`); its conjugate is
    the lower triangle of ``Z Z^H`` and its transpose the upper one.

    Parameters
    ----------
    c : ndarray, complex128, shape (F, n (n + 1) / 2)
    n : int

    Returns
    -------
    ndarray, complex128, shape (F, n, n)
        A new array.
    """
    from scipy.linalg.lapack import ztfttr

    lower = _lower_mask(n)
    out = np.empty((c.shape[0], n, n), dtype=np.complex128)
    for f in range(c.shape[0]):
        a, info = ztfttr(n, c[f], transr="N", uplo="L")
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"ztfttr failed with info={info}")
        np.copyto(out[f], a.T)  # upper: (Z Z^H)[j, i] = conj(Z Z^H)[i, j]
        np.conjugate(a, out=out[f], where=lower)  # lower and the (real) diagonal
    return out
