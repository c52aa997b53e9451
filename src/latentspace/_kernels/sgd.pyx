# SPDX-License-Identifier: BSD-3-Clause
"""The training kernels: the reference optimiser's per-sample SGD epoch and its
loss over aligned samples.

Weights of several models are passed as flat concatenations: model ``m`` of
width ``d_m`` owns ``d_m * k`` consecutive entries of ``P`` (its ``d_m x k``
projection, row-major) and of ``R`` (its ``k x d_m`` reconstruction), and
columns ``col_m : col_m + d_m`` of the sample matrix ``X``.
"""
from cython cimport floating
from cpython.exc cimport PyErr_CheckSignals

from ._blas cimport dot, gemm, vecmat


cdef inline bint _finite(floating x) noexcept nogil:
    """np.isfinite(x)"""
    return x - x == 0


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


def loss_sum(const floating[:, ::1] X, const Py_ssize_t[::1] widths,
             const unsigned char[:, ::1] observed,
             const floating[::1] P, const floating[::1] R, double alignment_weight,
             floating[:, :, ::1] Z, floating[:, ::1] Xhat):
    """The reference objective ``L`` (docs/maths.md §2) over the rows of ``X``, in chunks of ``Z.shape[1]`` rows.

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
                gemm(rows, k, d, &X[i0, col], D, &P[off], k, &Z[m, 0, 0], k)
                gemm(rows, d, k, &Z[m, 0, 0], k, &R[off], d, xhat, d)
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
            vecmat(d, k, x0 + col, &P[off], &Z[m, 0])
            vecmat(k, d, &Z[m, 0], &R[off], &E[0, col])
            vecmat(d, k, x1 + col, &P[off], &V[m, 0])
            col += d
            off += <Py_ssize_t> d * k


def sgd_epoch(const floating[:, ::1] X, const Py_ssize_t[::1] widths,
              const unsigned char[:, ::1] observed, const floating[::1] rates,
              floating[::1] P, floating[::1] R, floating[:, ::1] Z,
              floating[:, ::1] E, floating[:, ::1] V, floating[:, ::1] A,
              floating[::1] g, double learning_rate, double alignment_weight,
              Py_ssize_t check_every):
    """One epoch of the reference per-sample SGD (docs/maths.md §3) over the rows of ``X``, in place.

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
                _r_pass(avx, k, d, lr, w, lr * dot(d, x1 + col, x + col),
                        &E[cur, col], &A[m, 0], &V[m, 0], &Z[m, 0], &g[0], &R[off],
                        e1)
                if not _finite(dot(k, &g[0], &g[0])):
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
