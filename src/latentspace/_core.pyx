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
from cython cimport floating
from cpython.exc cimport PyErr_CheckSignals
from scipy.linalg.cython_blas cimport daxpy, ddot, dgemm, saxpy, sdot, sgemm

cdef enum:
    # Below this length a plain loop is faster than the overhead of a BLAS call.
    SHORT = 32


cdef inline bint _finite(floating x) noexcept nogil:
    """np.isfinite(x)"""
    return x - x == 0


cdef inline void _axpy(int n, floating alpha, const floating* x,
                       floating* y) noexcept nogil:
    """y += alpha * x"""
    cdef int i, one = 1
    if n < SHORT:
        for i in range(n):
            y[i] += alpha * x[i]
    elif floating is double:
        daxpy(&n, &alpha, <double*> x, &one, y, &one)
    else:
        saxpy(&n, &alpha, <float*> x, &one, y, &one)


cdef inline floating _dot(int n, const floating* x, const floating* y) noexcept nogil:
    """x @ y"""
    cdef int i, one = 1
    cdef floating s = 0
    if n < SHORT:
        for i in range(n):
            s += x[i] * y[i]
        return s
    if floating is double:
        s = ddot(&n, <double*> x, &one, <double*> y, &one)
    else:
        s = sdot(&n, <float*> x, &one, <float*> y, &one)
    return s


cdef inline void _vecmat(int p, int q, const floating* x, const floating* W,
                         floating* out) noexcept nogil:
    """out += x @ W, for W of shape (p, q)"""
    # Row by row with level-1 BLAS: one pass over W, and OpenBLAS stays on one
    # thread (its threaded gemv is several times slower for one vector).
    cdef int r
    for r in range(p):
        _axpy(q, x[r], W + <Py_ssize_t> r * q, out)


cdef inline void _gemm(int m, int n, int p, const floating* A, const floating* B,
                       floating* C) noexcept nogil:
    """C = A @ B, for row-major A (m, p), B (p, n), C (m, n)"""
    cdef char no = b'N'
    cdef floating one = 1, zero = 0
    # Row-major C = A @ B is column-major C.T = B.T @ A.T.
    if floating is double:
        dgemm(&no, &no, &n, &m, &p, &one, <double*> B, &n, <double*> A, &p,
              &zero, C, &n)
    else:
        sgemm(&no, &no, &n, &m, &p, &one, <float*> B, &n, <float*> A, &p,
              &zero, C, &n)


def affine(const floating[:, ::1] X, const floating[:, ::1] W,
           const floating[::1] shift, floating[:, ::1] out):
    """out = X @ W + shift; return whether every entry of ``out`` is finite.

    Parameters
    ----------
    X : (n, p) array
    W : (p, q) array
    shift : (q,) or (0,) array
        Added to every row of the product; an empty array adds nothing.
    out : (n, q) array
        Overwritten with the result.
    """
    cdef Py_ssize_t n = X.shape[0], size = X.shape[0] * W.shape[1], i
    cdef int p = X.shape[1], q = W.shape[1]
    cdef bint has_shift = shift.shape[0] > 0, finite = True
    cdef floating* o = &out[0, 0]
    with nogil:
        if n == 1:
            for i in range(q):
                o[i] = shift[i] if has_shift else 0
            # out = shift + x @ W
            _vecmat(p, q, &X[0, 0], &W[0, 0], o)
        else:
            # out = X @ W
            _gemm(n, q, p, &X[0, 0], &W[0, 0], o)
            if has_shift:
                for i in range(size):
                    o[i] += shift[i % q]
        for i in range(size):
            if not _finite(o[i]):
                finite = False
                break
    return finite


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
            off += d * k


def sgd_epoch(const floating[:, ::1] X, const Py_ssize_t[::1] widths,
              floating[::1] P, floating[::1] R, floating[:, ::1] Z,
              floating[:, ::1] E, floating[:, :, ::1] V, floating[:, ::1] A,
              floating[::1] g, double learning_rate, double alignment_weight,
              Py_ssize_t check_every):
    """One epoch of SPEC.md's per-sample SGD over the rows of ``X``, in place.

    The update of sample ``i`` is, for every model (``a = z - mean_m z``)::

        e = z @ R - x
        R -= lr * outer(z, e)
        P -= lr * outer(x, e @ R.T + w * a)

    Each model's matrices are streamed once per sample: the pass that updates
    ``R`` also yields the next sample's latent and reconstruction error, and
    the pass that updates ``P`` also yields the product of the sample after
    next with ``P``, using ``x' @ (P - lr * outer(x, g)) = x' @ P - lr * (x' @
    x) * g``. The state ``Z, E[0], V[0]`` carries this look-ahead from one
    call to the next (`sgd_prime` sets it before the first call).

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
    learning_rate, alignment_weight : float
    check_every : int
        Samples between two checks for a pending signal (0: never).

    Returns
    -------
    int
        ``n``, or the index of the first sample whose gradient was not finite
        (the epoch stops there and the state is left inconsistent).
    """
    cdef Py_ssize_t n = X.shape[0], M = widths.shape[0]
    cdef Py_ssize_t i, m, j, r, col, off, cur = 0, nxt, status = n
    cdef int k = Z.shape[1], d
    cdef floating lr = learning_rate, w = alignment_weight, c, zbar, gg
    cdef const floating* x
    cdef const floating* x1
    cdef const floating* x2
    cdef floating* Pm
    cdef floating* Rm
    cdef floating* e
    cdef floating* e1
    cdef floating* v1
    cdef floating* v2
    cdef floating* z
    with nogil:
        for i in range(n):
            nxt = 1 - cur
            # A = Z - Z.mean(axis=0)
            for j in range(k):
                zbar = 0
                for m in range(M):
                    zbar = zbar + Z[m, j]
                zbar = zbar / M
                for m in range(M):
                    A[m, j] = Z[m, j] - zbar
            x = &X[i, 0]
            x1 = &X[(i + 1) % n, 0]
            x2 = &X[(i + 2) % n, 0]
            col = 0
            off = 0
            for m in range(M):
                d = widths[m]
                Pm = &P[off]
                Rm = &R[off]
                z = &Z[m, 0]
                e = &E[cur, col]
                e1 = &E[nxt, col]
                v1 = &V[cur, m, 0]
                v2 = &V[nxt, m, 0]
                # z' = x' @ P_new = v1 - c * g, with x' the next sample
                c = lr * _dot(d, x1 + col, x + col)
                for r in range(d):
                    e1[r] = -x1[col + r]
                gg = 0
                for j in range(k):
                    # R[j] -= lr * z[j] * e
                    _axpy(d, -lr * z[j], e, Rm + j * d)
                    # g[j] = R[j] @ e + w * a[j]
                    g[j] = _dot(d, Rm + j * d, e) + w * A[m, j]
                    gg = gg + g[j] * g[j]
                    z[j] = v1[j] - c * g[j]
                    # e' += z'[j] * R[j]
                    _axpy(d, z[j], Rm + j * d, e1)
                if not _finite(gg):
                    status = i
                    break
                for j in range(k):
                    v2[j] = 0
                for r in range(d):
                    # P[r] -= lr * x[r] * g
                    _axpy(k, -lr * x[col + r], &g[0], Pm + r * k)
                    # v'' += x''[r] * P[r], with x'' the sample after next
                    _axpy(k, x2[col + r], Pm + r * k, v2)
                col += d
                off += d * k
            if status < n:
                break
            cur = nxt
            if check_every and (i + 1) % check_every == 0:
                with gil:
                    PyErr_CheckSignals()
        if cur:
            E[0, :] = E[1, :]
            V[0, :, :] = V[1, :, :]
    return status
