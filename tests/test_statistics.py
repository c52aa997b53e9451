# SPDX-License-Identifier: BSD-3-Clause
"""The one-pass statistics (`latentspace._training.statistics`): per observation
pattern, merged over chunks, against per-sample sums in NumPy."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from support import correlated, masked, random_observed, statistics_of, zero_filled

from latentspace._training.gradient import _batch_moments


@pytest.mark.parametrize("chunks", [1, 3, 40])
def test_statistics_with_missing_views_match_per_sample_sums(chunks):
    widths, n = (3, 4, 2), 40
    Xs = correlated(widths, n, seed=8)
    observed = random_observed(n, 3, seed=9)
    stats = statistics_of(masked(Xs, observed), observed, chunks)
    assert stats.n_samples == n
    assert_allclose(stats.counts, observed.sum(axis=0))
    cols = np.cumsum([0, *widths])
    mus = [X[o].mean(axis=0) for X, o in zip(Xs, observed.T)]
    assert_allclose(stats.mean, np.concatenate(mus), rtol=1e-12, atol=1e-14)
    for m in range(3):
        for l in range(3):
            both = observed[:, m] & observed[:, l]
            A = Xs[m][both] - mus[m]
            B = Xs[l][both] - mus[l]
            block = stats.gram[cols[m] : cols[m + 1], cols[l] : cols[l + 1]]
            assert_allclose(block, A.T @ B / both.sum(), rtol=1e-12, atol=1e-14)
    shift = np.concatenate(mus) + 0.1
    moments = stats.moments(shift)
    Z = zero_filled([X - shift[a:b] for X, a, b in zip(Xs, cols, cols[1:])], observed)
    Z = np.concatenate(Z, axis=1)
    weight = 1 / np.maximum(observed.sum(axis=1), 1)
    assert_allclose(moments.gram, Z.T @ Z / n, rtol=1e-12, atol=1e-14)
    assert_allclose(moments.consensus, (Z * weight[:, None]).T @ Z / n,
                    rtol=1e-12, atol=1e-14)
    assert_allclose(moments.coverage, observed.mean(axis=0))
    # a mini-batch of all the rows has the same moments
    batch = np.concatenate([X - shift[a:b] for X, a, b in zip(Xs, cols, cols[1:])], 1)
    for got, expected in zip(_batch_moments(batch, observed, widths), moments):
        assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_statistics_of_features_far_from_zero(dtype, tol):
    """float32 features around 1e4 with unit spread, and rows spaced as the
    provisional centre samples them atypical (so the chunk is re-centred):
    the covariance is still that of NumPy in float64."""
    rng = np.random.default_rng(33)
    n = 4096
    X = rng.standard_normal((n, 3)) + 1e4
    X[:: n // 256] += 50.0  # exactly the rows the provisional centre reads
    Y = rng.standard_normal((n, 2)) - 3e3
    stats = statistics_of([X.astype(dtype), Y.astype(dtype)], np.ones((n, 2), bool))
    both = np.concatenate([X.astype(dtype), Y.astype(dtype)], 1).astype(np.float64)
    mean = both.mean(axis=0)
    assert_allclose(stats.mean, mean, rtol=1e-13, atol=tol / 100)
    cov = (both - mean).T @ (both - mean) / n
    assert_allclose(stats.gram, cov, rtol=tol, atol=tol * np.abs(cov).max())
