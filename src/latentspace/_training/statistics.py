# SPDX-License-Identifier: BSD-3-Clause
"""Sufficient statistics of aligned data, which may miss some models' views.

Everything the closed-form and full-batch solvers need from the samples are
first and second moments of the features, ``D`` the summed widths of the
models. A sample may be observed by only some models (its *pattern*, the set
of models that observed it); the rows of every pattern are summarised by their
count, mean and scatter (sum of centred outer products) over the pattern's
features, accumulated a chunk at a time so that memory is ``O(D^2)`` (times
the number of patterns) beyond one chunk, whatever the number of samples, and
merged exactly (Chan, Golub and LeVeque's pairwise update), which also merges
the partial sums of a distributed reduction. From the per-pattern sums come
the observed means of every model (its offset), pairwise covariances (the
closed form's input) and the second moments that the objectives average over.
With complete data there is one pattern and all of this is the mean and
centred Gram matrix of the concatenated features.
"""

import itertools
from typing import NamedTuple

import numpy as np

__all__ = [
    "Moments",
    "Statistics",
    "Sums",
    "chunk_sums",
    "merge_sums",
    "ridge",
    "slices",
    "statistics",
]

# Entries of one chunk of rows (rows x D) copied at a time: 16 MB in float32.
CHUNK_ENTRIES = 2**22


def slices(widths):
    """The column slice of every model in the concatenation of the features."""
    bounds = [0, *itertools.accumulate(int(d) for d in widths)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def ridge(gram, regularization):
    """``regularization * trace(gram) / d``: a ridge relative to the mean variance
    of the features of a ``(d, d)`` Gram block (1 if they are all constant)."""
    scale = float(np.trace(gram)) / len(gram)
    return regularization * (scale if scale > 0 else 1.0)


class Sums(NamedTuple):
    """Count, mean and scatter ``sum (x - mean)(x - mean)'`` of some rows (float64)."""

    count: int
    mean: np.ndarray
    scatter: np.ndarray


def _merge(a, b):
    """The `Sums` of the union of two disjoint sets of rows (exact)."""
    total = a.count + b.count
    delta = b.mean - a.mean
    scatter = a.scatter + b.scatter
    scatter += np.outer(delta, delta * (a.count * b.count / total))
    return Sums(total, a.mean + delta * (b.count / total), scatter)


def merge_sums(a, b):
    """Merge two mappings of pattern to `Sums` (of disjoint rows)."""
    merged = dict(a)
    for pattern, sums in b.items():
        merged[pattern] = _merge(merged[pattern], sums) if pattern in merged else sums
    return merged


# Rows of a chunk whose mean is the provisional centre of its features.
_CENTRE_ROWS = 256


def _sums(columns, rows, dtype):
    """The `Sums` of some rows of feature blocks, a few thousand rows at a time.

    The features are copied next to a column of ones, less a provisional
    centre ``c`` (the mean of a few hundred rows spread over all of them),
    ``CHUNK_ENTRIES`` at a time into one buffer, and one symmetric product
    ``Y.T @ Y`` of every copy, summed in float64, gives the scatter about
    ``c``, the sums of ``x - c`` and the count at once. The scatter about the
    exact mean is then ``Y.T Y - count * outer(e, e)`` with ``e = mean(x) - c``
    small: no ``E[xx'] - E[x]E[x]'`` cancellation, which float32 features far
    from zero would not survive. If ``e`` is not small next to the spread of a
    feature (the sampled rows were not typical), the rows are summed again
    about the mean.

    Parameters
    ----------
    columns : list of (n, d) ndarray
        Real numbers, of any dtype that casts to ``dtype``.
    rows : slice or (r,) int ndarray
        The rows of ``columns`` to summarise (any number: the memory used is
        one copy of ``CHUNK_ENTRIES`` entries).
    dtype : dtype
        Of the copy and the products.
    """
    if isinstance(rows, slice):
        rows = range(len(columns[0]))[rows]
    count = len(rows)
    width = sum(X.shape[1] for X in columns)
    # The centre as subtracted, rounded to the dtype.
    sample = rows[:: max(1, count // _CENTRE_ROWS)]
    centre = np.concatenate(
        [X[sample].mean(axis=0, dtype=np.float64) for X in columns]
    ).astype(dtype)
    step = max(1, CHUNK_ENTRIES // (width + 1))
    Y = np.empty((min(count, step), width + 1), dtype)
    Y[:, width] = 1
    product = np.empty((width + 1, width + 1), dtype)
    total = np.empty((width + 1, width + 1))
    for attempt in range(2):
        total[:] = 0
        for start in range(0, count, step):
            taken = rows[start : start + step]
            copy = Y[: len(taken)]
            if isinstance(taken, range):  # a view, not a copy
                taken = slice(taken.start, taken.stop, taken.step)
            at = 0
            for X in columns:
                d = X.shape[1]
                np.subtract(X[taken], centre[at : at + d], out=copy[:, at : at + d],
                            casting="same_kind")
                at += d
            # copy.T @ copy (NumPy calls syrk for a product with its transpose)
            total += np.matmul(copy.T, copy, out=product)
        excess = total[width, :width] / count  # mean(x) - centre
        scatter = total[:width, :width] - np.outer(excess, excess * count)
        spread = np.diag(scatter) / count
        if attempt or np.all(excess * excess <= spread) or not np.isfinite(spread).all():
            break
        centre = (centre + excess).astype(dtype)
    return Sums(count, centre.astype(np.float64) + excess, scatter)


def chunk_sums(names, blocks, observed, dtype=None):
    """Per-pattern `Sums` of aligned rows (any number: see `_sums`).

    Parameters
    ----------
    names : sequence of str
        The models of the chunk, in a fixed order.
    blocks : sequence of (rows, d_m) ndarray
        Their features, real numbers. Where observed, a value that is not
        finite makes the `Sums` of its pattern not finite.
    observed : (rows, M) bool ndarray or None
        Which model observed which row (None: every model every row).
    dtype : floating dtype, optional
        Of the products (default that of the first block).

    Returns
    -------
    dict
        Tuple of the names of a pattern's models to the `Sums` of the rows
        with that pattern over their concatenated features; rows observed by
        no model count under the empty tuple. Empty if there are no rows.
    """
    if not len(blocks[0]):
        return {}
    if observed is None:
        groups = [(tuple(range(len(names))), slice(None))]
    else:
        codes = observed @ (1 << np.arange(len(names), dtype=np.int64))
        groups = [
            (tuple(np.flatnonzero(observed[np.argmax(codes == code)])),
             np.flatnonzero(codes == code))
            for code in np.unique(codes)
        ]
    dtype = np.dtype(dtype or blocks[0].dtype)
    out = {}
    for members, taken in groups:
        key = tuple(names[m] for m in members)
        if not members:
            out[key] = Sums(len(taken), np.zeros(0), np.zeros((0, 0)))
            continue
        out[key] = _sums([blocks[m] for m in members], taken, dtype)
    return out


class Moments(NamedTuple):
    """Second moments of shifted samples, as the objectives average over them.

    With ``o_mi`` whether model ``m`` observed sample ``i``, ``S_i`` the set
    of models that did, and ``E`` the mean over all ``n`` samples:

    Attributes
    ----------
    gram : (D, D) ndarray
        Block ``(m, l)``: ``E[o_mi o_li x_mi x_li']``.
    consensus : (D, D) ndarray
        Block ``(m, l)``: ``E[o_mi o_li x_mi x_li' / |S_i|]``; ``gram / M``
        for complete data.
    coverage : (M,) ndarray
        Fraction of the samples every model observed; its observed second
        moment is ``gram[m, m] / coverage[m]``.
    """

    gram: np.ndarray
    consensus: np.ndarray
    coverage: np.ndarray

    @classmethod
    def complete(cls, gram, n_models):
        """The moments of complete data with second moments ``gram``."""
        return cls(gram, gram / gram.dtype.type(n_models), np.ones(n_models))

    def observed(self, m, s):
        """Model ``m``'s second moment over the samples it observed."""
        if self.coverage[m] == 1:
            return self.gram[s, s]
        return self.gram[s, s] / self.gram.dtype.type(self.coverage[m])


class Statistics(NamedTuple):
    """Moments of aligned samples of ``M`` models, from per-pattern `Sums`.

    Attributes
    ----------
    n_samples : int
    widths : tuple of int
        ``d_m`` of every model; model ``m`` owns columns ``slices(widths)[m]``.
    counts : (M,) ndarray of int
        Samples every model observed.
    mean : (D,) ndarray
        Mean of every model's features over the samples it observed (float64).
    gram : (D, D) ndarray
        Block ``(m, l)``: covariance of ``x_m`` and ``x_l`` (about their
        means) over the samples both observed, zero if there are none; for
        complete data ``(X - mean).T @ (X - mean) / n``. In the data's dtype.
    patterns : tuple
        ``(members, Sums)`` for every pattern, ``members`` model indices.
    """

    n_samples: int
    widths: tuple
    counts: np.ndarray
    mean: np.ndarray
    gram: np.ndarray
    patterns: tuple

    @property
    def complete(self):
        """Whether every model observed every sample."""
        return all(len(m) == len(self.widths) for m, _ in self.patterns)

    def block(self, m, l):
        """Gram block ``(m, l)``: the covariance of models ``m`` and ``l``."""
        s = slices(self.widths)
        return self.gram[s[m], s[l]]

    def ridges(self, regularization):
        """Every model's relative ridge: ``regularization`` for each, or, for
        "auto", its width over the number of samples it observed, ``d_m / n_m``
        (`docs/maths.md`, 5.1)."""
        if regularization != "auto":
            return (float(regularization),) * len(self.widths)
        return tuple(d / max(int(n), 1) for d, n in zip(self.widths, self.counts))

    def paired(self, m, l):
        """Model ``m``'s covariance over the samples it shares with model
        ``l`` (about its mean, as `block` ``(m, l)``); `block` ``(m, m)`` for
        complete data."""
        if self.complete:
            return self.block(m, m)
        cols = slices(self.widths)[m]
        gram, count = np.zeros((self.widths[m],) * 2), 0
        for members, sums in self.patterns:
            if m in members and l in members:
                at = slices([self.widths[i] for i in members])[members.index(m)]
                delta = sums.mean[at] - self.mean[cols]
                gram += sums.scatter[at, at] + np.outer(delta, delta * sums.count)
                count += sums.count
        return (gram / max(count, 1)).astype(self.gram.dtype)

    def multiview(self):
        """The statistics of the samples at least two models observed (self
        if there are no others): what the alignment of the models is
        estimated from (`docs/maths.md`, 6)."""
        shared = tuple(p for p in self.patterns if len(p[0]) > 1)
        if len(shared) == len(self.patterns):
            return self
        return _from_patterns(self.widths, self.gram.dtype, shared)

    def about(self, m, centre):
        """Model ``m``'s second moment about ``centre`` over the samples it
        observed (`block` ``(m, m)`` for ``centre`` its mean)."""
        delta = self.mean[slices(self.widths)[m]] - centre
        return self.block(m, m) + np.outer(delta, delta).astype(self.gram.dtype)

    def means(self):
        """The mean of every model's features, a list of (d_m,) float64 arrays."""
        return [self.mean[s] for s in slices(self.widths)]

    def moments(self, shift):
        """The `Moments` of the samples minus ``shift`` (D,) where observed."""
        M, dtype = len(self.widths), self.gram.dtype
        if self.complete:
            delta = (self.mean - shift).astype(dtype)
            return Moments.complete(self.gram + np.outer(delta, delta), M)
        gram, consensus = _pattern_second_moments(self, shift)
        n = self.n_samples
        return Moments(
            (gram / n).astype(dtype),
            (consensus / n).astype(dtype),
            self.counts / n,
        )


def _columns(widths, members):
    cols = slices(widths)
    return np.concatenate([np.arange(cols[m].start, cols[m].stop) for m in members])


def _pattern_second_moments(stats, shift):
    """Sums over the patterns of the second moments about ``shift``: plain and
    weighted by one over the number of models of the pattern (float64)."""
    D = sum(stats.widths)
    gram, consensus = np.zeros((D, D)), np.zeros((D, D))
    for members, sums in stats.patterns:
        if not members:
            continue
        idx = _columns(stats.widths, members)
        delta = sums.mean - shift[idx]
        block = sums.scatter + np.outer(delta, delta * sums.count)
        gram[np.ix_(idx, idx)] += block
        consensus[np.ix_(idx, idx)] += block / len(members)
    return gram, consensus


def statistics(names, widths, dtype, sums):
    """The `Statistics` of per-pattern `Sums`.

    Parameters
    ----------
    names : sequence of str
        The models, in the order of the statistics.
    widths : sequence of int
    dtype : dtype
        Of the Gram matrix.
    sums : mapping
        Tuple of model names (a pattern) to `Sums` (`chunk_sums`, `merge_sums`).
    """
    index = {name: m for m, name in enumerate(names)}
    patterns = tuple(
        (tuple(sorted(index[name] for name in key)), value)
        for key, value in sums.items()
    )
    return _from_patterns(widths, dtype, patterns)


def _from_patterns(widths, dtype, patterns):
    """The `Statistics` of ``(members, Sums)`` patterns."""
    widths = tuple(int(d) for d in widths)
    n = sum(value.count for _, value in patterns)
    M = len(widths)
    counts = np.zeros(M, dtype=np.int64)
    for members, value in patterns:
        counts[list(members)] += value.count
    if len(patterns) == 1 and len(patterns[0][0]) == M:
        value = patterns[0][1]
        gram = value.scatter / n
        return Statistics(n, widths, counts, value.mean, gram.astype(dtype), patterns)
    cols = slices(widths)
    mean = np.zeros(sum(widths))
    for members, value in patterns:
        if members:
            mean[_columns(widths, members)] += value.mean * value.count
    for m, s in enumerate(cols):
        mean[s] /= max(counts[m], 1)
    # Pairwise covariances: second moments about the model means over the
    # rows both models observed, divided by their number.
    pairs = np.zeros((M, M))
    for members, value in patterns:
        pairs[np.ix_(members, members)] += value.count
    stats = Statistics(n, widths, counts, mean, None, patterns)
    gram, _ = _pattern_second_moments(stats, mean)
    for m, s in enumerate(cols):
        for l, t in enumerate(cols):
            gram[s, t] /= max(pairs[m, l], 1)
    return stats._replace(gram=gram.astype(dtype))
