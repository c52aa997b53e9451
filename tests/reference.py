# SPDX-License-Identifier: BSD-3-Clause
"""Plain-NumPy transcriptions of docs/maths.md: the oracle the kernels are tested against."""

import numpy as np


def xavier(rng, input_dim, dim, dtype):
    """P then R, entries from U(-l, l), l = sqrt(6 / (input_dim + dim))."""
    limit = np.sqrt(6.0 / (input_dim + dim))
    P = rng.uniform(-limit, limit, (input_dim, dim)).astype(dtype)
    R = rng.uniform(-limit, limit, (dim, input_dim)).astype(dtype)
    return P, R


def reference_sgd(Xs, Ps, Rs, learning_rate, n_epochs, alignment_weight,
                  observed=None, frozen=()):
    """The reference optimiser of docs/maths.md §3, line by line; returns new (Ps, Rs).

    With ``observed`` ((n, M) bool), sample ``i`` only involves the models
    that observed it (its mean latent is theirs); models in ``frozen``
    (indices) are not updated.
    """
    Ps = [P.copy() for P in Ps]
    Rs = [R.copy() for R in Rs]
    lr = learning_rate
    w = alignment_weight
    n = len(Xs[0])
    if observed is None:
        observed = np.ones((n, len(Xs)), dtype=bool)
    for _ in range(n_epochs):
        for i in range(n):
            present = [m for m in range(len(Xs)) if observed[i, m]]
            zs = {m: Xs[m][i] @ Ps[m] for m in present}
            zbar = np.mean([zs[m] for m in present], axis=0) if present else None
            for m in present:
                if m in frozen:
                    continue
                z, x = zs[m], Xs[m][i]
                e = z @ Rs[m] - x
                a = z - zbar
                Rs[m] -= lr * np.outer(z, e)
                Ps[m] -= lr * np.outer(x, e @ Rs[m].T + w * a)
        lr *= 0.999
    return Ps, Rs


def reference_loss(Xs, Ps, Rs, alignment_weight, observed=None):
    """The L / n of docs/maths.md §2 (with ``observed``, (n, M) bool: a sample counts for
    the models that observed it, about the mean of their latents)."""
    n = len(Xs[0])
    if observed is None:
        observed = np.ones((n, len(Xs)), dtype=bool)
    Zs = [X @ P for X, P in zip(Xs, Ps)]
    count = np.maximum(observed.sum(axis=1), 1)[:, None]
    zbar = sum(o[:, None] * Z for o, Z in zip(observed.T, Zs)) / count
    total = 0.0
    for o, X, Z, R in zip(observed.T, Xs, Zs, Rs):
        total += 0.5 * np.sum(o[:, None] * (Z @ R - X) ** 2)
        total += 0.5 * alignment_weight * np.sum(o[:, None] * (Z - zbar) ** 2)
    return total / n


def inv_sqrt(C):
    """``C ** -1/2`` of a symmetric positive definite matrix."""
    lam, V = np.linalg.eigh(C)
    return (V / np.sqrt(lam)) @ V.T


def sample_loss(kind, Xs, Ps, Rs, w, regularization, tau, eps):
    """Per-sample transcription of both objectives (docs/maths.md §2, §4)."""
    n, k = len(Xs[0]), Ps[0].shape[1]
    Zs = [X @ P for X, P in zip(Xs, Ps)]
    loss = sum(0.5 * np.sum((Z @ R - X) ** 2) for Z, R, X in zip(Zs, Rs, Xs)) / n
    if kind == "whitened":
        Us = []
        for X, Z, P in zip(Xs, Zs, Ps):
            G = X.T @ X / n
            S = Z.T @ Z / n + regularization * np.trace(G) / len(G) * (P.T @ P)
            S += np.sqrt(eps) * np.trace(S) / k * np.eye(k)
            Us.append(Z @ inv_sqrt(S))
        c = w * tau
    else:
        Us, c = Zs, w
    mean = np.mean(Us, axis=0)
    return loss + 0.5 * c * sum(np.sum((U - mean) ** 2) for U in Us) / n


def masked_sample_loss(kind, Xs, observed, Ps, Rs, w, regularization, tau):
    """Per-sample transcription of both objectives with missing views: a model
    counts on the samples it observed, about the mean (whitened) latent of
    the models that observed the sample, whitened over its observed samples."""
    n, k = len(Xs[0]), Ps[0].shape[1]
    eps = np.finfo(np.float64).eps
    Zs = [X @ P for X, P in zip(Xs, Ps)]
    loss = sum(
        0.5 * np.sum(o[:, None] * (Z @ R - X) ** 2)
        for o, Z, R, X in zip(observed.T, Zs, Rs, Xs)
    ) / n
    if kind == "whitened":
        Us = []
        for o, X, Z, P in zip(observed.T, Xs, Zs, Ps):
            G = X[o].T @ X[o] / o.sum()
            S = Z[o].T @ Z[o] / o.sum()
            S = S + regularization * np.trace(G) / len(G) * (P.T @ P)
            S += np.sqrt(eps) * np.trace(S) / k * np.eye(k)
            Us.append(Z @ inv_sqrt(S))
        c = w * tau
    else:
        Us, c = Zs, w
    count = np.maximum(observed.sum(axis=1), 1)[:, None]
    mean = sum(o[:, None] * U for o, U in zip(observed.T, Us)) / count
    return loss + 0.5 * c * sum(
        np.sum(o[:, None] * (U - mean) ** 2) for o, U in zip(observed.T, Us)
    ) / n
