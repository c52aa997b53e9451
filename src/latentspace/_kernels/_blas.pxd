# SPDX-License-Identifier: BSD-3-Clause
"""BLAS helpers of the compiled kernels, inline: row-major products of
C-contiguous float64 or float32 arrays (the ``floating`` fused type), a plain
loop instead of a BLAS call when the product is small."""
from cython cimport floating
from scipy.linalg.cython_blas cimport ddot, dgemm, dgemv, sdot, sgemm, sgemv

cdef enum:
    # Below this many entries a plain loop is faster than a BLAS call.
    SMALL = 64
    # Entries of a block of rows streamed by one level-2 BLAS call: small enough
    # to stay in L2 for the next call on the same rows, and below OpenBLAS's
    # threshold (m * n < 9216) for threading level-2 calls (its threads make
    # one-vector calls several times slower when the other core is busy).
    BLOCK = 8192


cdef inline floating dot(int n, const floating* x, const floating* y) noexcept nogil:
    """x @ y"""
    cdef int i, one = 1
    cdef floating s = 0
    if n < SMALL:
        for i in range(n):
            s += x[i] * y[i]
    elif floating is double:
        s = ddot(&n, <double*> x, &one, <double*> y, &one)
    else:
        s = sdot(&n, <float*> x, &one, <float*> y, &one)
    return s


cdef inline void gevm(int m, int n, floating alpha, const floating* x,
                      const floating* A, int lda, floating* y) noexcept nogil:
    """y += alpha * x @ A, for row-major A (m, n) with row stride lda"""
    cdef int i, j, one = 1
    cdef char no = b'N'
    cdef floating beta = 1
    if m * n < SMALL:
        for i in range(m):
            for j in range(n):
                y[j] += alpha * x[i] * A[i * lda + j]
    elif floating is double:
        dgemv(&no, &n, &m, &alpha, <double*> A, &lda, <double*> x, &one, &beta, y,
              &one)
    else:
        sgemv(&no, &n, &m, &alpha, <float*> A, &lda, <float*> x, &one, &beta, y,
              &one)


cdef inline int block_rows(int n) noexcept nogil:
    """Rows of length n in one block."""
    return max(1, BLOCK // n)


cdef inline void vecmat(int p, int q, const floating* x, const floating* W,
                        floating* out) noexcept nogil:
    """out += x @ W, for W of shape (p, q)"""
    cdef int r = 0, step = block_rows(q)
    while r < p:
        gevm(min(step, p - r), q, 1, x + r, W + <Py_ssize_t> r * q, q, out)
        r += step


cdef inline void gemm(int m, int n, int p, const floating* A, int lda,
                      const floating* B, int ldb, floating* C, int ldc) noexcept nogil:
    """C = A @ B, for row-major A (m, p), B (p, n), C (m, n) with row strides
    lda, ldb, ldc"""
    cdef char no = b'N'
    cdef floating one = 1, zero = 0
    # Row-major C = A @ B is column-major C.T = B.T @ A.T.
    if floating is double:
        dgemm(&no, &no, &n, &m, &p, &one, <double*> B, &ldb, <double*> A, &lda,
              &zero, C, &ldc)
    else:
        sgemm(&no, &no, &n, &m, &p, &one, <float*> B, &ldb, <float*> A, &lda,
              &zero, C, &ldc)
