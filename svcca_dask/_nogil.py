"""BLAS and LAPACK routines called without the GIL.

SciPy's f2py wrappers (``scipy.linalg.blas``, ``scipy.linalg.lapack``,
``solve_triangular``) hold the GIL for the whole call: on the threaded
scheduler, tasks that spend their time in them run one at a time (two
threads calling ``zherk`` ran 1.07x faster than one, here). The same
routines are exported by ``scipy.linalg.cython_blas`` and ``cython_lapack``
as function pointers; called through ``ctypes``, which drops the GIL around
foreign calls, two threads run ~1.9x faster than one.

Each binding here is None when the installed SciPy does not expose the
routine; callers then fall back to the f2py wrapper (same numbers, no thread
scaling).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

__all__ = ["cython_function", "trsm_lower"]

_c_int_p = ctypes.POINTER(ctypes.c_int)
_c_double_p = ctypes.POINTER(ctypes.c_double)
_ptr = ctypes.c_void_p
_char = ctypes.c_char_p

#: Prototypes (Fortran calling convention: every argument by reference).
_PROTOTYPES: dict[str, tuple[str, tuple[Any, ...]]] = {
    # zhfrk(transr, uplo, trans, n, k, alpha, a, lda, beta, c)
    "zhfrk": (
        "cython_lapack",
        (_char, _char, _char, _c_int_p, _c_int_p, _c_double_p, _ptr, _c_int_p, _c_double_p, _ptr),
    ),
    # ztfttr(transr, uplo, n, arf, a, lda, info)
    "ztfttr": ("cython_lapack", (_char, _char, _c_int_p, _ptr, _ptr, _c_int_p, _c_int_p)),
    # ztrsm(side, uplo, transa, diag, m, n, alpha, a, lda, b, ldb)
    "ztrsm": (
        "cython_blas",
        (_char, _char, _char, _char, _c_int_p, _c_int_p, _ptr, _ptr, _c_int_p, _ptr, _c_int_p),
    ),
}


@functools.cache
def cython_function(name: str) -> Any:
    """The routine ``name`` (a key of ``_PROTOTYPES``) as a ctypes function, or None.

    The address comes from the PyCapsule that ``scipy.linalg.cython_blas`` or
    ``cython_lapack`` exports for it.
    """
    module_name, argtypes = _PROTOTYPES[name]
    try:
        import importlib

        module = importlib.import_module(f"scipy.linalg.{module_name}")
        capsule = module.__pyx_capi__[name]
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
    return ctypes.CFUNCTYPE(None, *argtypes)(address)


def _row_stride(a: np.ndarray, name: str) -> int:
    """Elements between rows of every ``a[f]`` (LAPACK's leading dimension of
    the Fortran view), after checking that the last axis has unit stride."""
    cols = a.shape[-1]
    if (
        a.strides[-1] != a.itemsize
        or a.strides[-2] % a.itemsize
        or a.strides[-2] < a.itemsize * cols
    ):
        raise ValueError(f"{name} must have unit stride along its last axis")
    return max(1, a.strides[-2] // a.itemsize)


def trsm_lower(
    low: np.ndarray, b: np.ndarray, *, side: str = "L", trans: str = "N", nogil: bool = True
) -> np.ndarray:
    """Solve with lower-triangular matrices in place, for every leading index.

    ``side="L"``: ``b[f] <- op(low[f])^{-1} b[f]``; ``side="R"``: ``b[f] <-
    b[f] op(low[f])^{-1}``; ``op`` is the identity (``trans="N"``) or the
    conjugate transpose (``trans="C"``).

    Parameters
    ----------
    low : ndarray, complex128, shape (F, n, n)
        Lower triangles (the strict upper part is not read), unit stride along
        the last axis.
    b : ndarray, complex128, shape (F, n, k) (side "L") or (F, k, n) (side "R")
        Overwritten; unit stride along the last axis.
    side, trans : str
    nogil : bool
        Use the GIL-free binding when available (tests compare both).

    Returns
    -------
    ndarray
        ``b``.

    Notes
    -----
    A row-major matrix is its transpose to column-major BLAS: ``low`` is seen
    as upper triangular and ``b`` transposed, so a left solve is a right one
    there (``X = L^{-1} B`` iff ``X^T = B^T (L^T)^{-1}``) with the same
    ``trans`` (``(L^{-H})^T = (L^T)^{-H}``).
    """
    if side not in ("L", "R") or trans not in ("N", "C"):
        raise ValueError(f"side must be 'L' or 'R' and trans 'N' or 'C', got {side!r}, {trans!r}")
    if low.dtype != np.complex128 or b.dtype != np.complex128:
        raise TypeError("trsm_lower works on complex128 arrays")
    f_count, n, n2 = low.shape
    rows, cols = b.shape[-2:]
    if n != n2 or b.shape[0] != f_count or (rows if side == "L" else cols) != n:
        raise ValueError(f"shapes {low.shape} and {b.shape} do not match for side {side!r}")
    if f_count == 0 or rows == 0 or cols == 0:
        return b
    fn = cython_function("ztrsm") if nogil else None
    if fn is None:
        from scipy.linalg import solve_triangular

        for f in range(f_count):
            if side == "L":
                b[f] = solve_triangular(low[f], b[f], lower=True, trans=trans, check_finite=False)
            else:  # X op(L) = B  <=>  op(L)^H X^H = B^H
                other = "C" if trans == "N" else "N"
                x = solve_triangular(low[f], b[f].conj().T, lower=True, trans=other,
                                     check_finite=False)  # fmt: skip
                b[f] = x.conj().T
        return b
    lda, ldb = _row_stride(low, "low"), _row_stride(b, "b")
    m_i, n_i = ctypes.c_int(cols), ctypes.c_int(rows)  # the Fortran view of b is (cols, rows)
    lda_i, ldb_i = ctypes.c_int(lda), ctypes.c_int(ldb)
    alpha = np.array([1.0, 0.0])
    fside = b"R" if side == "L" else b"L"
    ftrans = trans.encode()
    l0, b0 = low.ctypes.data, b.ctypes.data
    ls, bs = low.strides[0], b.strides[0]
    args = (ctypes.byref(m_i), ctypes.byref(n_i), alpha.ctypes.data)
    for f in range(f_count):
        fn(fside, b"U", ftrans, b"N", *args, l0 + f * ls, ctypes.byref(lda_i), b0 + f * bs,
           ctypes.byref(ldb_i))  # fmt: skip
    return b
