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
    # Multiply-adds of one GEMM call, at most OpenBLAS's threshold (m * n * k
    # <= 262144) for threading GEMM, for the same reason.
    GEMM_BLOCK = 262144


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


cdef inline void _gemv(int m, int n, floating alpha, const floating* A, int lda,
                       const floating* x, floating* y) noexcept nogil:
    """y += alpha * A @ x, for row-major A (m, n) with row stride lda"""
    cdef int i, j, one = 1
    cdef char t = b'T'
    cdef floating s, beta = 1
    if m * n < SMALL:
        for i in range(m):
            s = 0
            for j in range(n):
                s += A[i * lda + j] * x[j]
            y[i] += alpha * s
    # Row-major A is column-major A.T: y += alpha * (A.T).T @ x.
    elif floating is double:
        dgemv(&t, &n, &m, &alpha, <double*> A, &lda, <double*> x, &one, &beta, y,
              &one)
    else:
        sgemv(&t, &n, &m, &alpha, <float*> A, &lda, <float*> x, &one, &beta, y,
              &one)


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


cdef inline void _sub_outer_sum(int m, int n, int nb, const floating* U, int ldu,
                                const floating* V, int ldv, floating* C) noexcept nogil:
    """C -= U.T @ V, for row-major C (m, n) and U (nb, m), V (nb, n) with row
    strides ldu, ldv (a sum of nb outer products)"""
    cdef int i, j, s, rows, r = 0, step = max(1, GEMM_BLOCK // (n * nb))
    cdef char no = b'N', t = b'T'
    cdef floating one = 1, minus_one = -1
    if m * n * nb < SMALL:
        for s in range(nb):
            for i in range(m):
                for j in range(n):
                    C[i * n + j] -= U[s * ldu + i] * V[s * ldv + j]
        return
    # Column-major C.T (n, m) -= V.T (n, nb) @ U (nb, m), in blocks of rows of C.
    while r < m:
        rows = min(step, m - r)
        if floating is double:
            dgemm(&no, &t, &n, &rows, &nb, &minus_one, <double*> V, &ldv,
                  <double*> U + r, &ldu, &one, C + <Py_ssize_t> r * n, &n)
        else:
            sgemm(&no, &t, &n, &rows, &nb, &minus_one, <float*> V, &ldv,
                  <float*> U + r, &ldu, &one, C + <Py_ssize_t> r * n, &n)
        r += rows


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


def sgd_epoch_direct(const floating[:, ::1] X, const Py_ssize_t[::1] widths,
                     const unsigned char[:, ::1] observed, const floating[::1] rates,
                     floating[::1] P, floating[::1] R, floating[:, ::1] Z,
                     floating[:, ::1] A, floating[::1] e, floating[::1] g,
                     double learning_rate, double alignment_weight,
                     Py_ssize_t check_every):
    """One epoch of SPEC.md's per-sample SGD over the rows of ``X``, as written.

    For every sample, the latents ``z_m = x_m @ P_m`` of all models, then for
    every model (``a = z - mean_m z``)::

        e = z @ R - x
        R -= lr * outer(z, e)
        P -= lr * outer(x, e @ R.T + w * a)

    The plain loop, for weights small enough to stay in the L1 cache, where
    the bookkeeping of `sgd_epoch` costs more than it saves. With
    ``observed``, a sample only involves the models that observed it (and
    the mean is theirs); ``lr * rates[m]`` is model ``m``'s step size.

    Parameters
    ----------
    X : (n, D) array
    widths : (M,) array
    observed : (n, M) array of 0/1, or None
    rates : (M,) array
    P, R : (sum(widths) * k,) arrays
        Updated in place.
    Z, A : (M, k) arrays
        Scratch.
    e : (max(widths),) array
        Scratch.
    g : (k,) array
        Scratch.
    learning_rate, alignment_weight : float
    check_every : int
        Samples between two checks for a pending signal (0: never).

    Returns
    -------
    int
        ``n``, or the index of the first sample whose gradient was not finite.
    """
    cdef Py_ssize_t n = X.shape[0], M = widths.shape[0]
    cdef Py_ssize_t i, m, j, r, col, off, status = n
    cdef int k = Z.shape[1], d
    cdef bint masked = observed is not None
    cdef floating lr, w = alignment_weight, s
    cdef const floating* x
    cdef floating* z
    cdef floating* Pm
    cdef floating* Rm
    with nogil:
        for i in range(n):
            col = 0
            off = 0
            for m in range(M):
                d = widths[m]
                for j in range(k):
                    Z[m, j] = 0
                _vecmat(d, k, &X[i, col], &P[off], &Z[m, 0])
                col += d
                off += <Py_ssize_t> d * k
            _deviations(&Z[0, 0], &A[0, 0], &observed[i, 0] if masked else NULL,
                        M, k)
            col = 0
            off = 0
            for m in range(M):
                d = widths[m]
                if not masked or observed[i, m]:
                    lr = learning_rate * rates[m]
                    x = &X[i, col]
                    z = &Z[m, 0]
                    Pm = &P[off]
                    Rm = &R[off]
                    # e = z @ R - x
                    for r in range(d):
                        e[r] = -x[r]
                    _vecmat(k, d, z, Rm, &e[0])
                    # R -= lr * outer(z, e)
                    for j in range(k):
                        s = lr * z[j]
                        for r in range(d):
                            Rm[j * d + r] -= s * e[r]
                    # g = R @ e + w * a
                    for j in range(k):
                        g[j] = w * A[m, j] + _dot(d, Rm + j * d, &e[0])
                    if not _finite(_dot(k, &g[0], &g[0])):
                        status = i
                        break
                    # P -= lr * outer(x, g)
                    for r in range(d):
                        s = lr * x[r]
                        for j in range(k):
                            Pm[r * k + j] -= s * g[j]
                col += d
                off += <Py_ssize_t> d * k
            if status < n:
                break
            if check_every and (i + 1) % check_every == 0:
                with gil:
                    PyErr_CheckSignals()
    return status


def sgd_prime(const floating[:, ::1] X, const Py_ssize_t[::1] widths,
              const floating[::1] P, const floating[::1] R, floating[:, ::1] Z,
              floating[:, ::1] E, floating[:, :, ::1] V):
    """Set the look-ahead state that `sgd_epoch` expects before sample 0.

    For every model ``m``: ``Z[m] = x_0 @ P_m``, ``E[0, cols_m] = Z[m] @ R_m -
    x_0`` and ``V[0, m] = x_1 @ P_m``, where ``x_i`` is row ``i`` of ``X``
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
            V[0, m, :] = 0
            for r in range(d):
                E[0, col + r] = -x0[col + r]
            _vecmat(d, k, x0 + col, &P[off], &Z[m, 0])
            _vecmat(k, d, &Z[m, 0], &R[off], &E[0, col])
            _vecmat(d, k, x1 + col, &P[off], &V[0, m, 0])
            col += d
            off += <Py_ssize_t> d * k


def sgd_epoch(const floating[:, ::1] X, const Py_ssize_t[::1] widths,
              const unsigned char[:, ::1] observed, const floating[::1] rates,
              floating[::1] P, floating[::1] R, floating[:, ::1] Z,
              floating[:, ::1] E, floating[:, :, ::1] V, floating[:, ::1] A,
              floating[::1] g, floating[:, :, ::1] ZW, floating[:, :, ::1] GW,
              floating[:, ::1] EW, floating[:, ::1] XW, floating[::1] t,
              double learning_rate, double alignment_weight, Py_ssize_t check_every):
    """One epoch of SPEC.md's per-sample SGD over the rows of ``X``, in place.

    The update of sample ``i`` is, for every model (``a = z - mean_m z``)::

        e = z @ R - x
        R -= lr * outer(z, e)
        P -= lr * outer(x, e @ R.T + w * a)

    The rank-1 updates are delayed: ``R`` and ``P`` hold the weights as of the
    start of a window of up to ``B`` samples, and the window's outer products
    are kept aside (``R_now = R - ZW.T @ EW``, ``P_now = P - XW.T @ GW``) and
    folded in by one GEMM per window. Every product with the current weights
    is a product with the stored ones plus a rank-B correction, so each sample
    only reads ``R`` and ``P`` (once each) and never writes them. The read of
    ``R`` also yields the next sample's latent and reconstruction error, and
    the read of ``P`` the product of the sample after next with ``P``, using
    ``x' @ (P - lr * outer(x, g)) = x' @ P - lr * (x' @ x) * g``. The state
    ``Z, E[0], V[0]`` carries this look-ahead from one call to the next
    (`sgd_prime` sets it before the first call); on return ``P`` and ``R``
    are the exact weights after the epoch.

    Parameters
    ----------
    X : (n, D) array
        Samples; model ``m`` owns ``widths[m]`` consecutive columns.
    widths : (M,) array
    P, R : (sum(widths) * k,) arrays
        Flat projections and reconstructions, updated in place.
    Z : (M, k) array
        IN: latents of sample 0. OUT: latents of the sample after the last.
    E : (2, D) array
        Row 0, IN/OUT: reconstruction errors, as for ``Z``. Row 1: scratch.
    V : (2, M, k) array
        Row 0, IN/OUT: products of the following sample with ``P``.
    A : (M, k) array
        Scratch for the alignment errors.
    g : (k,) array
        Scratch for one model's latent gradient.
    ZW, GW : (M, B, k) arrays
        Scratch: the window's ``lr * z`` and ``g`` of every model.
    EW, XW : (B, D) arrays
        Scratch: the window's ``e`` and ``lr * x`` of every model.
    t : (B,) array
        Scratch.
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
    cdef Py_ssize_t i, m, j, r, col, off, cur = 0, nxt, status = n
    cdef int k = Z.shape[1], D = X.shape[1], B = ZW.shape[1], d, j0, rows, rstep
    cdef int b = 0, nb
    cdef floating lr, w = alignment_weight, c
    cdef bint masked = observed is not None
    cdef const floating* x
    cdef const floating* x1
    cdef const floating* x2
    cdef floating* Rb
    cdef floating* z
    cdef floating* e
    cdef floating* e1
    cdef floating* v1
    cdef floating* v2
    cdef floating* Zw
    cdef floating* Gw
    cdef floating* Ew
    cdef floating* Xw
    with nogil:
        for i in range(n):
            nxt = 1 - cur
            # A = Z - Z.mean(axis=0), over the models that observed sample i
            _deviations(&Z[0, 0], &A[0, 0], &observed[i, 0] if masked else NULL,
                        M, k)
            x = &X[i, 0]
            x1 = &X[(i + 1) % n, 0]
            x2 = &X[(i + 2) % n, 0]
            nb = b + 1
            col = 0
            off = 0
            for m in range(M):
                d = widths[m]
                lr = learning_rate * rates[m]
                z = &Z[m, 0]
                e = &E[cur, col]
                e1 = &E[nxt, col]
                v1 = &V[cur, m, 0]
                v2 = &V[nxt, m, 0]
                Zw = &ZW[m, 0, 0]
                Gw = &GW[m, 0, 0]
                Ew = &EW[0, col]
                Xw = &XW[0, col]
                # Window slot b holds this sample's update of R: lr * outer(z, e).
                for j in range(k):
                    Zw[<Py_ssize_t> b * k + j] = lr * z[j]
                for r in range(d):
                    Ew[<Py_ssize_t> b * D + r] = e[r]
                # g = R_now @ e + w * a, R_now = R - Zw.T @ Ew (slot b included)
                for j in range(nb):
                    t[j] = 0
                _gemv(nb, d, 1, Ew, D, e, &t[0])
                for j in range(k):
                    g[j] = w * A[m, j]
                _gevm(nb, k, -1, &t[0], Zw, k, &g[0])
                # e' = z' @ R_now - x', with z' = x' @ P_now = v1 - c * g
                c = lr * _dot(d, x1 + col, x + col)
                for r in range(d):
                    e1[r] = -x1[col + r]
                rstep = _block_rows(d)
                j0 = 0
                while j0 < k:
                    rows = min(rstep, k - j0)
                    Rb = &R[off + <Py_ssize_t> j0 * d]
                    # g[b] += R[b] @ e, for the block b of rows
                    _gemv(rows, d, 1, Rb, d, e, &g[j0])
                    for j in range(j0, j0 + rows):
                        z[j] = v1[j] - c * g[j]
                    # e' += z'[b] @ R[b]
                    _gevm(rows, d, 1, z + j0, Rb, d, e1)
                    j0 += rows
                # e' -= (Zw @ z') @ Ew
                for j in range(nb):
                    t[j] = 0
                _gemv(nb, k, 1, Zw, k, z, &t[0])
                _gevm(nb, d, -1, &t[0], Ew, D, e1)
                if not _finite(_dot(k, &g[0], &g[0])):
                    status = i
                    break
                # Window slot b holds this sample's update of P: lr * outer(x, g).
                for r in range(d):
                    Xw[<Py_ssize_t> b * D + r] = lr * x[col + r]
                for j in range(k):
                    Gw[<Py_ssize_t> b * k + j] = g[j]
                # v'' = x'' @ P_now = x'' @ P - (Xw @ x'') @ Gw, x'' the sample
                # after next
                for j in range(k):
                    v2[j] = 0
                _vecmat(d, k, x2 + col, &P[off], v2)
                for j in range(nb):
                    t[j] = 0
                _gemv(nb, d, 1, Xw, D, x2 + col, &t[0])
                _gevm(nb, k, -1, &t[0], Gw, k, v2)
                col += d
                off += <Py_ssize_t> d * k
            if status < n:
                break
            cur = nxt
            b = nb
            if b == B or i == n - 1:
                _fold_window(widths, b, &P[0], &R[0], &ZW[0, 0, 0], &GW[0, 0, 0],
                             &EW[0, 0], &XW[0, 0], k, D, B)
                b = 0
            if check_every and (i + 1) % check_every == 0:
                with gil:
                    PyErr_CheckSignals()
        if cur:
            E[0, :] = E[1, :]
            V[0, :, :] = V[1, :, :]
    return status


cdef void _fold_window(const Py_ssize_t[::1] widths, int nb, floating* P, floating* R,
                       const floating* ZW, const floating* GW, const floating* EW,
                       const floating* XW, int k, int D, int B) noexcept nogil:
    """R_m -= ZW[m].T @ EW[:, cols_m] and P_m -= XW[:, cols_m].T @ GW[m] for
    the first nb window slots of every model"""
    cdef Py_ssize_t m, col = 0, off = 0
    cdef int d
    for m in range(widths.shape[0]):
        d = widths[m]
        _sub_outer_sum(k, d, nb, ZW + m * B * k, k, EW + col, D, R + off)
        _sub_outer_sum(d, k, nb, XW + col, D, GW + m * B * k, k, P + off)
        col += d
        off += <Py_ssize_t> d * k
