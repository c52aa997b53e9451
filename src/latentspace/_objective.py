# SPDX-License-Identifier: BSD-3-Clause
"""The training objective of SPEC.md, evaluated with NumPy."""

import numpy as np

__all__ = ["mean_loss"]

# Rows per chunk, so that temporaries stay small however many samples there are.
_CHUNK = 8192


def _sum_squares(a):
    a = a.ravel()
    return float(np.dot(a, a))


def mean_loss(blocks, projections, reconstructions, alignment_weight):
    """SPEC.md's ``L / n`` for aligned ``(n, d_m)`` blocks.

    ``L = sum_i sum_m 1/2 ||x_mi @ P_m @ R_m - x_mi||^2 + w/2 ||z_mi - z_i||^2``
    with ``z_mi = x_mi @ P_m`` and ``z_i`` the mean of ``z_mi`` over models.
    """
    # A diverging run overflows here; the caller tests the result for finiteness.
    with np.errstate(over="ignore", invalid="ignore"):
        total = _total_loss(blocks, projections, reconstructions, alignment_weight)
    return total / len(blocks[0])


def _total_loss(blocks, projections, reconstructions, alignment_weight):
    n = len(blocks[0])
    total = 0.0
    for start in range(0, n, _CHUNK):
        rows = slice(start, start + _CHUNK)
        latents = [X[rows] @ P for X, P in zip(blocks, projections)]
        mean = np.mean(latents, axis=0)
        for X, Z, R in zip(blocks, latents, reconstructions):
            total += 0.5 * _sum_squares(Z @ R - X[rows])
            total += 0.5 * alignment_weight * _sum_squares(Z - mean)
    return total
