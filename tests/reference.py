# SPDX-License-Identifier: BSD-3-Clause
"""Plain-NumPy transcriptions of SPEC.md: the oracle the kernels are tested against."""

import numpy as np


def xavier(rng, input_dim, dim, dtype):
    """P then R, entries from U(-l, l), l = sqrt(6 / (input_dim + dim))."""
    limit = np.sqrt(6.0 / (input_dim + dim))
    P = rng.uniform(-limit, limit, (input_dim, dim)).astype(dtype)
    R = rng.uniform(-limit, limit, (dim, input_dim)).astype(dtype)
    return P, R


def reference_sgd(Xs, Ps, Rs, learning_rate, n_epochs, alignment_weight):
    """SPEC.md's reference optimiser, line by line; returns new (Ps, Rs)."""
    Ps = [P.copy() for P in Ps]
    Rs = [R.copy() for R in Rs]
    lr = learning_rate
    w = alignment_weight
    n = len(Xs[0])
    for _ in range(n_epochs):
        for i in range(n):
            zs = [X[i] @ P for X, P in zip(Xs, Ps)]
            zbar = np.mean(zs, axis=0)
            for m, X in enumerate(Xs):
                z, x = zs[m], X[i]
                e = z @ Rs[m] - x
                a = z - zbar
                Rs[m] -= lr * np.outer(z, e)
                Ps[m] -= lr * np.outer(x, e @ Rs[m].T + w * a)
        lr *= 0.999
    return Ps, Rs


def reference_loss(Xs, Ps, Rs, alignment_weight):
    """SPEC.md's L / n."""
    Zs = [X @ P for X, P in zip(Xs, Ps)]
    zbar = np.mean(Zs, axis=0)
    total = 0.0
    for X, Z, R in zip(Xs, Zs, Rs):
        total += 0.5 * np.sum((Z @ R - X) ** 2)
        total += 0.5 * alignment_weight * np.sum((Z - zbar) ** 2)
    return total / len(Xs[0])
