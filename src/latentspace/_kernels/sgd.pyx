# SPDX-License-Identifier: BSD-3-Clause
"""Compiled kernels of latentspace: affine maps and the reference SGD optimiser.

Every function assumes validated, C-contiguous arrays of one floating dtype with
matching, non-empty shapes that fit a BLAS ``int``; the Python layer guarantees
that. Kernels never raise, except that a training epoch lets a pending signal
(Ctrl-C) interrupt it.

Weights of several models are passed as flat concatenations: model ``m`` of
width ``d_m`` owns ``d_m * k`` consecutive entries of ``P`` (its ``d_m x k``
projection, row-major) and of ``R`` (its ``k x d_m`` reconstruction), and
columns ``col_m : col_m + d_m`` of the sample matrix ``X``.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cpython.exc cimport PyErr_CheckSignals
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport ddot, dgemm, dgemv, sdot, sgemm, sgemv

cnp.import_array()

cdef enum:
    # Below this many entries a plain loop is faster than a BLAS call.
    SMALL = 64
    # Entries of a block of rows streamed by one level-2 BLAS call: small enough
    # to stay in L2 for the next call on the same rows, and below OpenBLAS's
    # threshold (m * n < 9216) for threading level-2 calls (its threads make
    # one-vector calls several times slower when the other core is busy).
    BLOCK = 8192


cdef inline bint _finite(floating x) noexcept nogil:
    """np.isfinite(x)"""
    return x - x == 0


cdef inline floating _dot(int n, const floating* x, const floating* y) noexcept nogil:
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


cdef inline void _gevm(int m, int n, floating alpha, const floating* x,
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


cdef inline int _block_rows(int n) noexcept nogil:
    """Rows of length n in one block."""
    return max(1, BLOCK // n)


cdef inline void _vecmat(int p, int q, const floating* x, const floating* W,
                         floating* out) noexcept nogil:
    """out += x @ W, for W of shape (p, q)"""
    cdef int r = 0, step = _block_rows(q)
    while r < p:
        _gevm(min(step, p - r), q, 1, x + r, W + <Py_ssize_t> r * q, q, out)
        r += step


cdef inline void _gemm(int m, int n, int p, const floating* A, int lda,
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


cdef inline void _deviations(const floating* Z, floating* A, const unsigned char* seen,
                             Py_ssize_t M, int k) noexcept nogil:
    """A = Z - the mean of the rows of Z (M, k) that ``seen`` marks (all if
    NULL); rows not seen get zero"""
    cdef Py_ssize_t m
    cdef int j, count = M
    cdef floating zbar
    if seen != NULL:
        count = 0
        for m in range(M):
            count = count + seen[m]
    for j in range(k):
        zbar = 0
        for m in range(M):
            if seen == NULL or seen[m]:
                zbar = zbar + Z[m * k + j]
        zbar = zbar / max(count, 1)
        for m in range(M):
            if seen == NULL or seen[m]:
                A[m * k + j] = Z[m * k + j] - zbar
            else:
                A[m * k + j] = 0


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
        _vecmat(p, q, X, W, out)
    else:
        while r < n:
            rows = min(block, n - r)
            # out[r:r + rows] = X[r:r + rows] @ W
            _gemm(<int> rows, q, p, X + r * p, p, W, q, out + r * q, q)
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


def loss_sum(const floating[:, ::1] X, const Py_ssize_t[::1] widths,
             const unsigned char[:, ::1] observed,
             const floating[::1] P, const floating[::1] R, double alignment_weight,
             floating[:, :, ::1] Z, floating[:, ::1] Xhat):
    """SPEC.md's ``L`` over the rows of ``X``, in chunks of ``Z.shape[1]`` rows.

    ``L = sum_i sum_m 1/2 ||z_mi @ R_m - x_mi||^2 + w/2 ||z_mi - mean_m z_mi||^2``
    with ``z_mi = x_mi @ P_m``, summed in double precision. With ``observed``,
    the sum and the mean are over the models that observed sample ``i``, and
    ``X`` is zero where a model did not (so is its reconstruction error).

    Parameters
    ----------
    X : (n, D) array
    widths : (M,) array
    observed : (n, M) array of 0/1, or None (every model observed every row)
    P, R : (sum(widths) * k,) arrays
    alignment_weight : float
    Z : (M, c, k) array
        Scratch for the latents of a chunk of ``c`` rows.
    Xhat : (c, max(widths)) array
        Scratch for one model's reconstructions of a chunk.
    """
    cdef Py_ssize_t n = X.shape[0], M = widths.shape[0], i0 = 0, m, r, j, col, off
    cdef int D = X.shape[1], c = Z.shape[1], k = Z.shape[2], d, rows
    cdef double total = 0, align = 0, diff, zbar
    cdef floating* xhat = &Xhat[0, 0]
    cdef bint masked = observed is not None
    cdef int count
    with nogil:
        while i0 < n:
            rows = min(c, n - i0)
            col = 0
            off = 0
            for m in range(M):
                d = widths[m]
                # Z[m] = X[chunk, cols_m] @ P_m; Xhat = Z[m] @ R_m
                _gemm(rows, k, d, &X[i0, col], D, &P[off], k, &Z[m, 0, 0], k)
                _gemm(rows, d, k, &Z[m, 0, 0], k, &R[off], d, xhat, d)
                for r in range(rows):
                    for j in range(d):
                        diff = xhat[r * d + j] - X[i0 + r, col + j]
                        total += diff * diff
                col += d
                off += <Py_ssize_t> d * k
            for r in range(rows):
                count = M
                if masked:
                    count = 0
                    for m in range(M):
                        count += observed[i0 + r, m]
                    if count == 0:
                        continue
                for j in range(k):
                    zbar = 0
                    for m in range(M):
                        if not masked or observed[i0 + r, m]:
                            zbar += Z[m, r, j]
                    zbar /= count
                    for m in range(M):
                        if not masked or observed[i0 + r, m]:
                            diff = Z[m, r, j] - zbar
                            align += diff * diff
            i0 += rows
    return 0.5 * total + 0.5 * alignment_weight * align


cdef extern from "_sgd_passes.h" nogil:
    bint ls_sgd_have_avx()
    void ls_sgd_r_pass_d(bint avx, int k, int d, double lr, double w, double c,
                         const double* e, const double* a, const double* v, double* z,
                         double* g, double* R, double* e1)
    void ls_sgd_r_pass_f(bint avx, int k, int d, float lr, float w, float c,
                         const float* e, const float* a, const float* v, float* z,
                         float* g, float* R, float* e1)
    void ls_sgd_p_pass_d(bint avx, int d, int k, double lr, const double* x,
                         const double* g, const double* x2, double* P, double* v)
    void ls_sgd_p_pass_f(bint avx, int d, int k, float lr, const float* x,
                         const float* g, const float* x2, float* P, float* v)


# Whether `sgd_epoch` runs its passes with AVX (set at import from the CPU).
cdef bint _sgd_avx = ls_sgd_have_avx()


def sgd_avx(enable=None):
    """Whether `sgd_epoch` uses its AVX loops; ``enable=False`` makes it use
    the baseline ones (``True``: AVX again, if the CPU has it). Both give
    the same updates up to rounding; tests run each."""
    global _sgd_avx
    if enable is not None:
        _sgd_avx = bool(enable) and ls_sgd_have_avx()
    return _sgd_avx


cdef inline void _r_pass(bint avx, int k, int d, floating lr, floating w, floating c,
                         const floating* e, const floating* a, const floating* v,
                         floating* z, floating* g, floating* R,
                         floating* e1) noexcept nogil:
    """For every row j of R (k, d): R[j] -= lr * z[j] * e; g[j] = R[j] @ e +
    w * a[j]; z[j] = v[j] - c * g[j]; e1 += z[j] * R[j]"""
    if floating is double:
        ls_sgd_r_pass_d(avx, k, d, lr, w, c, e, a, v, z, g, R, e1)
    else:
        ls_sgd_r_pass_f(avx, k, d, lr, w, c, e, a, v, z, g, R, e1)


cdef inline void _p_pass(bint avx, int d, int k, floating lr, const floating* x,
                         const floating* g, const floating* x2, floating* P,
                         floating* v) noexcept nogil:
    """For every row r of P (d, k): P[r] -= lr * x[r] * g; v += x2[r] * P[r]"""
    if floating is double:
        ls_sgd_p_pass_d(avx, d, k, lr, x, g, x2, P, v)
    else:
        ls_sgd_p_pass_f(avx, d, k, lr, x, g, x2, P, v)


def sgd_prime(const floating[:, ::1] X, const Py_ssize_t[::1] widths,
              const floating[::1] P, const floating[::1] R, floating[:, ::1] Z,
              floating[:, ::1] E, floating[:, ::1] V):
    """Set the look-ahead state that `sgd_epoch` expects before sample 0.

    For every model ``m``: ``Z[m] = x_0 @ P_m``, ``E[0, cols_m] = Z[m] @ R_m -
    x_0`` and ``V[m] = x_1 @ P_m``, where ``x_i`` is row ``i`` of ``X``
    restricted to the model's columns (row ``1`` wraps to ``0`` if ``n == 1``).
    """
    cdef Py_ssize_t n = X.shape[0], M = widths.shape[0], m, r, col = 0, off = 0
    cdef int k = Z.shape[1], d
    cdef const floating* x0 = &X[0, 0]
    cdef const floating* x1 = &X[1 % n, 0]
    with nogil:
        for m in range(M):
            d = widths[m]
            Z[m, :] = 0
            V[m, :] = 0
            for r in range(d):
                E[0, col + r] = -x0[col + r]
            _vecmat(d, k, x0 + col, &P[off], &Z[m, 0])
            _vecmat(k, d, &Z[m, 0], &R[off], &E[0, col])
            _vecmat(d, k, x1 + col, &P[off], &V[m, 0])
            col += d
            off += <Py_ssize_t> d * k


def sgd_epoch(const floating[:, ::1] X, const Py_ssize_t[::1] widths,
              const unsigned char[:, ::1] observed, const floating[::1] rates,
              floating[::1] P, floating[::1] R, floating[:, ::1] Z,
              floating[:, ::1] E, floating[:, ::1] V, floating[:, ::1] A,
              floating[::1] g, double learning_rate, double alignment_weight,
              Py_ssize_t check_every):
    """One epoch of SPEC.md's per-sample SGD over the rows of ``X``, in place.

    The update of sample ``i`` is, for every model (``a = z - mean_m z``)::

        e = z @ R - x
        R -= lr * outer(z, e)
        P -= lr * outer(x, e @ R.T + w * a)

    Each sample reads and writes every weight once, in two passes per model
    that also compute what the next samples need. The pass over the rows of
    ``R`` updates a row, takes its product with ``e`` (an entry of ``g = R @
    e + w * a``), and adds the row's share to the next sample's
    reconstruction error ``e' = z' @ R - x'``; the next sample's latent
    ``z' = x' @ P`` is known row by row there because ``x' @ (P - lr *
    outer(x, g)) = v - lr * (x' @ x) * g``, where ``v = x' @ P`` came from the
    previous sample's pass over ``P``. That pass updates ``P`` and computes
    ``x'' @ P`` for the sample after next. The state ``Z, E[0], V`` carries
    this look-ahead from one call to the next (`sgd_prime` sets it before
    the first call).

    Parameters
    ----------
    X : (n, D) array
        Samples; model ``m`` owns ``widths[m]`` consecutive columns.
    widths : (M,) array
    observed : (n, M) array of 0/1, or None
        Which model observed which sample (``X`` is zero where one did not);
        the mean latent of a sample is over the models that observed it.
    rates : (M,) array
        ``learning_rate * rates[m]`` is model ``m``'s step size.
    P, R : (sum(widths) * k,) arrays
        Flat projections and reconstructions, updated in place.
    Z : (M, k) array
        IN: latents of sample 0. OUT: latents of the sample after the last.
    E : (2, D) array
        Row 0, IN/OUT: reconstruction errors, as for ``Z``. Row 1: scratch.
    V : (M, k) array
        IN/OUT: products of the following sample with ``P``.
    A : (M, k) array
        Scratch for the alignment errors.
    g : (k,) array
        Scratch for one model's latent gradient.
    learning_rate, alignment_weight : float
    check_every : int
        Samples between two checks for a pending signal (0: never).

    Returns
    -------
    int
        ``n``, or the index of the first sample whose gradient was not finite
        (the epoch stops there; weights and state are then meaningless).
    """
    cdef Py_ssize_t n = X.shape[0], M = widths.shape[0]
    cdef Py_ssize_t i, m, r, col, off, cur = 0, status = n
    cdef int k = Z.shape[1], d
    cdef floating lr, w = alignment_weight
    cdef bint masked = observed is not None, avx = _sgd_avx
    cdef const floating* x
    cdef const floating* x1
    cdef const floating* x2
    cdef floating* e1
    with nogil:
        for i in range(n):
            # A = Z - Z.mean(axis=0), over the models that observed sample i
            _deviations(&Z[0, 0], &A[0, 0], &observed[i, 0] if masked else NULL,
                        M, k)
            x = &X[i, 0]
            x1 = &X[(i + 1) % n, 0]
            x2 = &X[(i + 2) % n, 0]
            col = 0
            off = 0
            for m in range(M):
                d = widths[m]
                lr = learning_rate * rates[m]
                # e' = -x', completed by the pass over R
                e1 = &E[1 - cur, col]
                for r in range(d):
                    e1[r] = -x1[col + r]
                _r_pass(avx, k, d, lr, w, lr * _dot(d, x1 + col, x + col),
                        &E[cur, col], &A[m, 0], &V[m, 0], &Z[m, 0], &g[0], &R[off],
                        e1)
                if not _finite(_dot(k, &g[0], &g[0])):
                    status = i
                    break
                V[m, :] = 0
                _p_pass(avx, d, k, lr, x + col, &g[0], x2 + col, &P[off], &V[m, 0])
                col += d
                off += <Py_ssize_t> d * k
            if status < n:
                break
            cur = 1 - cur
            if check_every and (i + 1) % check_every == 0:
                with gil:
                    PyErr_CheckSignals()
        if cur:
            E[0, :] = E[1, :]
    return status
