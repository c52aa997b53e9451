/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The two passes of one sample of the reference SGD over one model's weights,
 * each reading and writing every weight once (see sgd_epoch in sgd.pyx):
 *
 *   R pass, every row j of R (k x d):  R[j] -= lr * z[j] * e
 *                                      g[j]  = R[j] @ e + w * a[j]
 *                                      z[j]  = v[j] - c * g[j]
 *                                      e1   += z[j] * R[j]
 *   P pass, every row r of P (d x k):  P[r] -= lr * x[r] * g
 *                                      v    += x2[r] * P[r]
 *
 * Rows are taken four at a time, so that a block of rows is still in L1 when
 * the R pass reads it the second time, and e, e1, g, v are loaded once per
 * block. The loops are written once on GCC/Clang vector types (32 bytes,
 * lowered to SSE2 or NEON pairs where that is the baseline) and compiled
 * twice on x86: for the baseline ISA and for AVX (256-bit float arithmetic is
 * all they need: AVX2 and FMA measured no faster), which a caller picks with
 * ls_sgd_have_avx(), as a wheel cannot assume AVX. Other compilers get the
 * same code on one lane. The body below is included once per float type
 * (LS_T, LS_NAME); the header proper comes first.
 */
#ifndef LS_T

#ifndef LATENTSPACE_SGD_PASSES_H
#define LATENTSPACE_SGD_PASSES_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__)
#  define LS_INLINE static inline __attribute__((always_inline))
#  define LS_VECTOR __attribute__((vector_size(32)))
#else
#  define LS_INLINE static inline
#  define LS_VECTOR
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#  define LS_AVX 1
#else
#  define LS_AVX 0
#endif
/* Rows of one block. */
#define LS_ROWS 4

/* Whether the CPU runs the AVX loops. */
static int ls_sgd_have_avx(void) {
#if LS_AVX
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx");
#else
    return 0;
#endif
}

#define LS_T double
#define LS_NAME(name) name##_d
#include "_sgd_passes.h"
#undef LS_T
#undef LS_NAME
#define LS_T float
#define LS_NAME(name) name##_f
#include "_sgd_passes.h"
#undef LS_T
#undef LS_NAME

#endif /* LATENTSPACE_SGD_PASSES_H */

#else /* the passes for one float type LS_T */

typedef LS_T LS_NAME(ls_vec) LS_VECTOR;

/* The R pass over rows j .. j + nr - 1. */
LS_INLINE void LS_NAME(ls_r_rows)(const int nr, int j, int d, LS_T lr, LS_T w, LS_T c,
                                  const LS_T* restrict e, const LS_T* restrict a,
                                  const LS_T* restrict v, LS_T* restrict z,
                                  LS_T* restrict g, LS_T* restrict R,
                                  LS_T* restrict e1) {
    typedef LS_NAME(ls_vec) V;
    enum { L = sizeof(V) / sizeof(LS_T) };
    LS_T* restrict r = R + (size_t)j * d;
    LS_T lanes[L], sum, y;
    V acc[LS_ROWS], s[LS_ROWS], ev, x;
    int q, t, l;
    for (q = 0; q < nr; q++) {
        acc[q] = (V){0};
        s[q] = (V){0} + lr * z[j + q];
    }
    /* r[q] -= lr * z[j + q] * e; acc[q] += r[q] * e, by lanes */
    for (t = 0; t + L <= d; t += L) {
        memcpy(&ev, e + t, sizeof ev);
        for (q = 0; q < nr; q++) {
            memcpy(&x, r + (size_t)q * d + t, sizeof x);
            x = x - s[q] * ev;
            memcpy(r + (size_t)q * d + t, &x, sizeof x);
            acc[q] += x * ev;
        }
    }
    for (q = 0; q < nr; q++) {
        memcpy(lanes, &acc[q], sizeof lanes);
        sum = 0;
        for (l = 0; l < L; l++) sum += lanes[l];
        for (l = t; l < d; l++) {
            y = r[(size_t)q * d + l] - lr * z[j + q] * e[l];
            r[(size_t)q * d + l] = y;
            sum += y * e[l];
        }
        g[j + q] = sum + w * a[j + q];
        z[j + q] = v[j + q] - c * g[j + q];
    }
    /* e1 += z[j:j + nr] @ r, the rows just written, from L1 */
    for (t = 0; t < d; t++) {
        sum = e1[t];
        for (q = 0; q < nr; q++) sum += z[j + q] * r[(size_t)q * d + t];
        e1[t] = sum;
    }
}

LS_INLINE void LS_NAME(ls_r_body)(int k, int d, LS_T lr, LS_T w, LS_T c,
                                  const LS_T* e, const LS_T* a, const LS_T* v,
                                  LS_T* z, LS_T* g, LS_T* R, LS_T* e1) {
    int j = 0;
    for (; j + LS_ROWS <= k; j += LS_ROWS)
        LS_NAME(ls_r_rows)(LS_ROWS, j, d, lr, w, c, e, a, v, z, g, R, e1);
    for (; j < k; j++)
        LS_NAME(ls_r_rows)(1, j, d, lr, w, c, e, a, v, z, g, R, e1);
}

/* The P pass over rows r .. r + nr - 1. */
LS_INLINE void LS_NAME(ls_p_rows)(const int nr, int r, int k, LS_T lr,
                                  const LS_T* restrict x, const LS_T* restrict g,
                                  const LS_T* restrict x2, LS_T* restrict P,
                                  LS_T* restrict v) {
    LS_T* restrict p = P + (size_t)r * k;
    LS_T s[LS_ROWS], sum, y;
    int q, t;
    for (q = 0; q < nr; q++) s[q] = lr * x[r + q];
    for (t = 0; t < k; t++) {
        sum = v[t];
        for (q = 0; q < nr; q++) {
            y = p[(size_t)q * k + t] - s[q] * g[t];
            p[(size_t)q * k + t] = y;
            sum += x2[r + q] * y;
        }
        v[t] = sum;
    }
}

LS_INLINE void LS_NAME(ls_p_body)(int d, int k, LS_T lr, const LS_T* x, const LS_T* g,
                                  const LS_T* x2, LS_T* P, LS_T* v) {
    int r = 0;
    for (; r + LS_ROWS <= d; r += LS_ROWS)
        LS_NAME(ls_p_rows)(LS_ROWS, r, k, lr, x, g, x2, P, v);
    for (; r < d; r++)
        LS_NAME(ls_p_rows)(1, r, k, lr, x, g, x2, P, v);
}

#if LS_AVX
__attribute__((target("avx")))
static void LS_NAME(ls_r_avx)(int k, int d, LS_T lr, LS_T w, LS_T c, const LS_T* e,
                               const LS_T* a, const LS_T* v, LS_T* z, LS_T* g,
                               LS_T* R, LS_T* e1) {
    LS_NAME(ls_r_body)(k, d, lr, w, c, e, a, v, z, g, R, e1);
}

__attribute__((target("avx")))
static void LS_NAME(ls_p_avx)(int d, int k, LS_T lr, const LS_T* x, const LS_T* g,
                               const LS_T* x2, LS_T* P, LS_T* v) {
    LS_NAME(ls_p_body)(d, k, lr, x, g, x2, P, v);
}
#endif

/* The R pass (see the top of the file), with the AVX loops if avx. */
static void LS_NAME(ls_sgd_r_pass)(int avx, int k, int d, LS_T lr, LS_T w, LS_T c,
                                   const LS_T* e, const LS_T* a, const LS_T* v,
                                   LS_T* z, LS_T* g, LS_T* R, LS_T* e1) {
#if LS_AVX
    if (avx) {
        LS_NAME(ls_r_avx)(k, d, lr, w, c, e, a, v, z, g, R, e1);
        return;
    }
#endif
    (void)avx;
    LS_NAME(ls_r_body)(k, d, lr, w, c, e, a, v, z, g, R, e1);
}

/* The P pass (see the top of the file), with the AVX loops if avx. */
static void LS_NAME(ls_sgd_p_pass)(int avx, int d, int k, LS_T lr, const LS_T* x,
                                   const LS_T* g, const LS_T* x2, LS_T* P, LS_T* v) {
#if LS_AVX
    if (avx) {
        LS_NAME(ls_p_avx)(d, k, lr, x, g, x2, P, v);
        return;
    }
#endif
    (void)avx;
    LS_NAME(ls_p_body)(d, k, lr, x, g, x2, P, v);
}

#endif /* LS_T */
