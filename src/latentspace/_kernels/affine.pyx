# SPDX-License-Identifier: BSD-3-Clause
"""The serving kernel: `AffineMap`, the map ``x -> x @ W + shift`` of one
vector or a batch of rows, as `LatentSpace.project`, ``retrieve`` and
``translate`` run it."""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from libc.string cimport memcpy

from ._blas cimport gemm, vecmat

cnp.import_array()


cdef inline bint _all_finite(Py_ssize_t size, const floating* x) noexcept nogil:
    """np.isfinite(x[:size]).all(), without a branch per entry"""
    cdef Py_ssize_t i
    cdef int bad = 0
    for i in range(size):
        bad |= x[i] - x[i] != 0  # NaN for NaN and +-Inf
    return not bad


cdef bint _affine(Py_ssize_t n, int p, int q, const floating* X, const floating* W,
                  const floating* shift, floating* out,
                  Py_ssize_t block) noexcept nogil:
    """out = X @ W + shift (no shift if NULL), one GEMM per ``block`` rows;
    return np.isfinite(out).all()"""
    cdef Py_ssize_t i, r = 0, rows, size = n * q
    if n == 1:
        for i in range(q):
            out[i] = shift[i] if shift != NULL else 0
        # out += x @ W
        vecmat(p, q, X, W, out)
    else:
        while r < n:
            rows = min(block, n - r)
            # out[r:r + rows] = X[r:r + rows] @ W
            gemm(<int> rows, q, p, X + r * p, p, W, q, out + r * q, q)
            r += rows
        if shift != NULL:
            for i in range(size):
                out[i] += shift[i % q]
    return _all_finite(size, out)


# Rows of a batch in one GEMM call: BLAS sizes are C ints, so a batch of more
# rows is computed in blocks (tests lower this to exercise the blocking).
MAX_ROWS = 2**31 - 1


cdef class AffineMap:
    """The map ``x -> x @ W + shift`` for one vector or a batch of rows.

    Parameters
    ----------
    W : (p, q) ndarray
        C-contiguous float64 or float32 weights, referenced (not copied): they
        must not change while the map is in use.
    shift : (q,) ndarray of W's dtype, optional
        Added to every output row.
    """
    cdef readonly cnp.ndarray W
    cdef readonly object shift
    cdef int typenum
    cdef const void* w
    cdef const void* b
    cdef int p, q

    def __cinit__(self, cnp.ndarray W not None, cnp.ndarray shift=None):
        self.W = W
        self.shift = shift
        self.typenum = cnp.PyArray_TYPE(W)
        self.p = W.shape[0]
        self.q = W.shape[1]
        self.w = cnp.PyArray_DATA(W)
        self.b = NULL if shift is None else cnp.PyArray_DATA(shift)

    def __call__(self, x, out=None):
        """``x @ W + shift``, in ``out`` if given, else in a new array.

        Returns None instead if ``x`` is not a C-contiguous, aligned,
        native-endian ``(p,)`` or ``(n, p)`` ndarray (not a subclass) of W's
        dtype, if ``out`` is not such a writeable array of the result's shape,
        or if the result is not finite: the caller then validates and
        explains. ``out`` is written only if ``x`` is finite; if the two
        overlap in memory, the result is computed aside and copied into
        ``out`` once it is known to be finite.
        """
        if not (cnp.PyArray_CheckExact(x) and _is_kernel_array(x, self.typenum, False)):
            return None
        cdef cnp.ndarray a = <cnp.ndarray> x
        cdef int ndim = cnp.PyArray_NDIM(a)
        if ndim < 1 or ndim > 2 or cnp.PyArray_DIM(a, ndim - 1) != self.p:
            return None
        cdef cnp.npy_intp dims[2]
        cdef Py_ssize_t n = cnp.PyArray_DIM(a, 0) if ndim == 2 else 1
        dims[0] = n
        dims[ndim - 1] = self.q
        cdef cnp.ndarray result, target = None
        if out is None:
            result = cnp.PyArray_EMPTY(ndim, dims, self.typenum, 0)
        elif (
            _is_kernel_array(out, self.typenum, True)
            and cnp.PyArray_NDIM(<cnp.ndarray> out) == ndim
            and cnp.PyArray_DIM(<cnp.ndarray> out, 0) == dims[0]
            and cnp.PyArray_DIM(<cnp.ndarray> out, ndim - 1) == self.q
        ):
            target = <cnp.ndarray> out
            if _overlap(a, target):
                result = cnp.PyArray_EMPTY(ndim, dims, self.typenum, 0)
            else:
                result = target
        else:
            return None
        if n == 0:
            return result if target is None else target
        cdef const void* X = cnp.PyArray_DATA(a)
        cdef void* o = cnp.PyArray_DATA(result)
        cdef void* copy_to = NULL
        cdef Py_ssize_t block = MAX_ROWS if n > 1 else 1
        cdef bint direct = target is not None and result is target, finite = True
        # Straight into out only from a finite x (else out stays as it was):
        # checked in the kernel for one vector, by NumPy's vectorised isfinite
        # for a batch.
        cdef bint check_input = direct and n == 1
        if direct and n > 1 and not np.isfinite(a).all():
            return None
        if target is not None and not direct:
            copy_to = cnp.PyArray_DATA(target)
        with nogil:
            if self.typenum == cnp.NPY_DOUBLE:
                if check_input:
                    finite = _all_finite(n * self.p, <const double*> X)
                if finite:
                    finite = _affine(n, self.p, self.q, <const double*> X,
                                     <const double*> self.w, <const double*> self.b,
                                     <double*> o, block)
            else:
                if check_input:
                    finite = _all_finite(n * self.p, <const float*> X)
                if finite:
                    finite = _affine(n, self.p, self.q, <const float*> X,
                                     <const float*> self.w, <const float*> self.b,
                                     <float*> o, block)
            if finite and copy_to != NULL:
                memcpy(copy_to, o, n * self.q * cnp.PyArray_ITEMSIZE(result))
        if not finite:
            return None
        return result if target is None else target


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b):
    """Whether the memory of two C-contiguous arrays overlaps."""
    cdef char* x = <char*> cnp.PyArray_DATA(a)
    cdef char* y = <char*> cnp.PyArray_DATA(b)
    return x < y + cnp.PyArray_NBYTES(b) and y < x + cnp.PyArray_NBYTES(a)


cdef inline bint _is_kernel_array(object x, int typenum, bint writeable):
    """Whether x is a C-contiguous, aligned, native-endian ndarray of typenum."""
    if not cnp.PyArray_Check(x):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> x
    return (
        cnp.PyArray_TYPE(a) == typenum
        and cnp.PyArray_ISCARRAY_RO(a)
        and cnp.PyArray_ISNOTSWAPPED(a)
        and (not writeable or cnp.PyArray_ISWRITEABLE(a))
    )
