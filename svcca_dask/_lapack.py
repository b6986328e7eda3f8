"""BLAS and LAPACK routines called without the GIL, and packed Hermitian accumulators.

SciPy's f2py wrappers (``scipy.linalg.blas``, ``scipy.linalg.lapack``,
``solve_triangular``) hold the GIL for the whole call: on the threaded
scheduler, tasks that spend their time in them would run one at a time. The
same Fortran routines, in the LAPACK library SciPy links, are called here
through ``ctypes``, which drops the GIL around foreign calls, so threads run
them in parallel.

Fortran calling convention: every argument by reference, and, after the
declared arguments, one hidden ``size_t`` length per ``CHARACTER`` argument
(gfortran's ABI; f2c-translated LAPACK takes the same ``ftnlen`` arguments).
The bindings pass them (all 1). The routines are found by name in the library
behind ``scipy.linalg.cython_lapack`` / ``cython_blas`` (SciPy's wheels
prefix them ``scipy_``), so they are the routines SciPy itself calls, with
32-bit integers.

Each binding is None when the routine cannot be found; callers then fall back
to the f2py wrapper (same numbers, no thread scaling). Tests compare both.

Packed storage: the DFT path keeps one Hermitian ``D x D`` co-moment matrix
per frequency. Stored square, half of it is never written; in LAPACK's
rectangular full packed format (``transr="N"``, ``uplo="L"``) the lower
triangle takes ``D (D + 1) / 2`` numbers, and ``zhfrk`` updates it in place
(two ZHERKs and one ZGEMM on the packed blocks: the flops of one ZHERK on the
square matrix, in half the memory).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

__all__ = ["fortran_routine", "hfrk_update", "packed_size", "trsm_lower", "unpack"]

_c_int_p = ctypes.POINTER(ctypes.c_int)
_c_double_p = ctypes.POINTER(ctypes.c_double)
_ptr = ctypes.c_void_p
_char = ctypes.c_char_p

#: Declared arguments of each routine and the module whose library holds it;
#: the CHARACTER arguments (``_char``) each get a hidden length at the end.
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

#: Symbol names tried for routine ``name``, in order (SciPy's wheels, then plain).
_SYMBOLS = ("scipy_{}_", "{}_")


@functools.cache
def _library(module_name: str) -> Any:
    try:
        import importlib

        module = importlib.import_module(f"scipy.linalg.{module_name}")
        return ctypes.CDLL(module.__file__)
    except (ImportError, OSError, TypeError):  # pragma: no cover - no shared library
        return None


@functools.cache
def fortran_routine(name: str) -> Any:
    """The Fortran routine ``name`` (a key of ``_PROTOTYPES``) as a ctypes function, or None.

    Call it with the declared arguments followed by one length (``1``) per
    character argument; :func:`_call` does that.
    """
    module_name, argtypes = _PROTOTYPES[name]
    lib = _library(module_name)
    if lib is None:  # pragma: no cover
        return None
    n_char = sum(a is _char for a in argtypes)
    for pattern in _SYMBOLS:
        try:
            fn = getattr(lib, pattern.format(name))
        except AttributeError:
            continue
        fn.restype = None
        fn.argtypes = (*argtypes, *([ctypes.c_size_t] * n_char))
        fn.n_char = n_char
        return fn
    return None  # pragma: no cover - a LAPACK without the routine


def _call(fn: Any, *args: Any) -> None:
    """``fn(*args)`` with the hidden length (1) of each character argument appended."""
    fn(*args, *([1] * fn.n_char))


def packed_size(n: int) -> int:
    """Numbers in the RFP storage of an ``n x n`` Hermitian matrix."""
    return n * (n + 1) // 2


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
    fn = fortran_routine("zhfrk") if nogil else None
    if fn is None:
        from scipy.linalg.lapack import zhfrk

        for f in range(f_count):
            # the f2py wrapper copies to Fortran order: a (k, n) = z[f].T, trans="C"
            out = zhfrk(
                n, k, 1.0, z[f].T, 1.0, c[f], transr="N", uplo="L", trans="C", overwrite_c=1
            )
            if not np.may_share_memory(out, c[f]):  # pragma: no cover - f2py copied c
                c[f] = out
        return
    ni, ki, ld = ctypes.c_int(n), ctypes.c_int(k), ctypes.c_int(lda)
    one = ctypes.c_double(1.0)
    refs = (ctypes.byref(ni), ctypes.byref(ki), ctypes.byref(one))
    z0, c0 = z.ctypes.data, c.ctypes.data
    zs, cs = z.strides[0], c.strides[0]
    for f in range(f_count):
        _call(
            fn,
            b"N",
            b"L",
            b"C",
            *refs,
            z0 + f * zs,
            ctypes.byref(ld),
            ctypes.byref(one),
            c0 + f * cs,
        )


#: Rows per block of the lower-triangle fill in :func:`unpack`.
_FILL_BLOCK = 32


@functools.lru_cache(maxsize=4)
def _strict_lower_mask(n: int) -> np.ndarray:
    return np.tri(n, k=-1, dtype=bool)


def _fill_lower(out: np.ndarray) -> None:
    """Set the strict lower triangle of each ``out[f]`` to the conjugate
    transpose of its upper one, in place, a block of rows at a time (a masked
    ``np.conjugate(out.T, where=...)`` over the whole matrix copies its
    overlapping input and tests every entry)."""
    n = out.shape[-1]
    for i0 in range(0, n, _FILL_BLOCK):
        i1 = min(i0 + _FILL_BLOCK, n)
        if i0:  # the rectangle left of the diagonal block
            np.conjugate(out[:, :i0, i0:i1].transpose(0, 2, 1), out=out[:, i0:i1, :i0])
        diag = out[:, i0:i1, i0:i1]
        low = _strict_lower_mask(i1 - i0)
        diag[:, low] = diag.transpose(0, 2, 1)[:, low].conj()


def unpack(c: np.ndarray, n: int, *, nogil: bool = True) -> np.ndarray:
    """The full Hermitian matrices ``Z Z^H`` accumulated by :func:`hfrk_update`.

    LAPACK's ``ztfttr`` unfolds each packed matrix into the Fortran lower
    triangle of ``conj(Z Z^H)`` (see :func:`hfrk_update`), which read
    row-major is the upper triangle of ``Z Z^H``; the lower one is its
    conjugate transpose.

    Parameters
    ----------
    c : ndarray, complex128, shape (F, n (n + 1) / 2)
    n : int
    nogil : bool
        Use the GIL-free binding when available (tests compare both).

    Returns
    -------
    ndarray, complex128, shape (F, n, n)
        A new array.
    """
    fn = fortran_routine("ztfttr") if nogil else None
    out = np.empty((c.shape[0], n, n), dtype=np.complex128)
    if fn is None:
        from scipy.linalg.lapack import ztfttr
    else:
        n_i, info = ctypes.c_int(n), ctypes.c_int(0)
    for f in range(c.shape[0]):
        if fn is None:
            a, code = ztfttr(n, c[f], transr="N", uplo="L")
            out[f] = a.T
        else:
            # the Fortran lower triangle of conj(Z Z^H) is, read row-major, the
            # upper triangle of its transpose: of Z Z^H itself
            packed = np.ascontiguousarray(c[f])
            _call(
                fn,
                b"N",
                b"L",
                ctypes.byref(n_i),
                packed.ctypes.data,
                out[f].ctypes.data,
                ctypes.byref(n_i),
                ctypes.byref(info),
            )
            code = info.value
        if code != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"ztfttr failed with info={code}")
    # the lower triangle: (Z Z^H)[i, j] = conj((Z Z^H)[j, i])
    _fill_lower(out)
    return out


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
    fn = fortran_routine("ztrsm") if nogil else None
    if fn is None:
        from scipy.linalg import solve_triangular

        for f in range(f_count):
            if side == "L":
                b[f] = solve_triangular(low[f], b[f], lower=True, trans=trans, check_finite=False)
            else:  # X op(L) = B  <=>  op(L)^H X^H = B^H
                other = "C" if trans == "N" else "N"
                x = solve_triangular(
                    low[f], b[f].conj().T, lower=True, trans=other, check_finite=False
                )
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
        _call(
            fn,
            fside,
            b"U",
            ftrans,
            b"N",
            *args,
            l0 + f * ls,
            ctypes.byref(lda_i),
            b0 + f * bs,
            ctypes.byref(ldb_i),
        )
    return b
