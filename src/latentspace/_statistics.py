# SPDX-License-Identifier: BSD-3-Clause
"""Sufficient statistics of aligned data: means and the centred Gram matrix.

Everything the closed-form and full-batch solvers need from the samples is the
mean of every feature and the ``D x D`` Gram matrix of the centred features,
``D`` the summed widths of the models: its diagonal blocks are the per-model
Grams and its off-diagonal blocks the cross-Grams. They are accumulated in one
pass over the rows, a chunk at a time, so that memory is ``O(D^2)`` beyond the
data, and every later iteration costs ``O(D^2 k)`` whatever the number of
samples.
"""

from typing import NamedTuple

import numpy as np

__all__ = ["Statistics", "accumulate", "ridge", "slices"]

# Entries of one centred chunk (rows x D) copied at a time: 16 MB in float32.
_CHUNK_ENTRIES = 2**22


def slices(widths):
    """The column slice of every model in the concatenation of the features."""
    bounds = np.cumsum([0, *widths])
    return [slice(int(a), int(b)) for a, b in zip(bounds, bounds[1:])]


def ridge(gram, regularization):
    """``regularization * trace(gram) / d``: a ridge relative to the mean variance
    of the features of a ``(d, d)`` Gram block (1 if they are all constant)."""
    scale = float(np.trace(gram)) / len(gram)
    return regularization * (scale if scale > 0 else 1.0)


class Statistics(NamedTuple):
    """First and second moments of aligned samples of ``M`` models.

    Attributes
    ----------
    n_samples : int
    widths : tuple of int
        ``d_m`` of every model; model ``m`` owns columns ``slices(widths)[m]``.
    mean : ndarray of shape (D,)
        Mean of every feature (float64).
    gram : ndarray of shape (D, D)
        ``(X - mean).T @ (X - mean) / n_samples``, in the data's dtype.
    """

    n_samples: int
    widths: tuple
    mean: np.ndarray
    gram: np.ndarray

    def block(self, m, l):
        """Gram block ``(m, l)``: ``X_m.T @ X_l / n`` of centred features."""
        s = slices(self.widths)
        return self.gram[s[m], s[l]]

    def means(self):
        """The mean of every model's features, a list of (d_m,) float64 arrays."""
        return [self.mean[s] for s in slices(self.widths)]

    def second_moment(self, shift):
        """``(X - shift).T @ (X - shift) / n`` for a shift of length D.

        The Gram about another point: ``gram + outer(mean - shift, mean - shift)``.
        """
        delta = (self.mean - shift).astype(self.gram.dtype)
        return self.gram + np.outer(delta, delta)


def accumulate(blocks, *, chunk_rows=None):
    """The `Statistics` of aligned blocks, in one pass over their rows.

    Every chunk of rows is centred on its own mean before its Gram is taken
    (one symmetric rank-``rows`` update, ``X.T @ X``), and the chunks are merged
    with the exact pairwise update of Chan, Golub and LeVeque: no
    ``E[xx'] - E[x]E[x]'`` cancellation, which float32 features far from zero
    would not survive.

    Parameters
    ----------
    blocks : list of (n, d_m) ndarray
        Aligned, validated samples of one floating dtype.
    chunk_rows : int, optional
        Rows per chunk; by default about 4M entries per chunk.

    Returns
    -------
    Statistics
    """
    dtype = blocks[0].dtype
    n = len(blocks[0])
    widths = tuple(int(X.shape[1]) for X in blocks)
    width = sum(widths)
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_ENTRIES // width)
    count = 0
    mean = np.zeros(width)
    scatter = None  # float64 sum of centred outer products
    for start in range(0, n, chunk_rows):
        chunk = np.concatenate([X[start : start + chunk_rows] for X in blocks], axis=1)
        rows = len(chunk)
        chunk_mean = chunk.mean(axis=0, dtype=np.float64)
        chunk -= chunk_mean.astype(dtype)
        # Rounding the shift to the dtype leaves a small residual mean r: the
        # scatter about the exact mean is chunk.T @ chunk - rows * outer(r, r).
        residual = chunk.mean(axis=0, dtype=np.float64)
        chunk_mean += residual
        # C = chunk.T @ chunk (NumPy calls syrk for a product with its transpose)
        chunk_scatter = (chunk.T @ chunk).astype(np.float64)
        chunk_scatter -= np.outer(residual, residual * rows)
        if scatter is None:
            scatter, mean, count = chunk_scatter, chunk_mean, rows
            continue
        total = count + rows
        delta = chunk_mean - mean
        scatter += chunk_scatter
        scatter += np.outer(delta, delta * (count * rows / total))
        mean += delta * (rows / total)
        count = total
    gram = scatter / n
    return Statistics(n, widths, mean, gram.astype(dtype, copy=False))
