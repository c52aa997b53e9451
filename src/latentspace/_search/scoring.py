# SPDX-License-Identifier: BSD-3-Clause
"""Scoring cross-model search: the methods, blocks of scores and the top ``k``.

Both sides are projected into the shared space and scaled to unit length, so
that a dot product is a cosine similarity. Scores are computed by BLAS GEMM in
blocks of query rows (about `CHUNK_BYTES` of scores at a time), and the top
``k`` of each block are picked with ``np.argpartition``: memory stays
``O(chunk x n_gallery)``, never ``n_queries x n_gallery``.

Methods
-------
`METHODS` maps each name to its `Method`, the scoring of a block of cosines.

``"cosine"``
    ``cos(x, y)``.
``"csls"``
    Cross-domain similarity local scaling (Conneau et al., "Word translation
    without parallel data", ICLR 2018), which corrects *hubness* (a few
    gallery items that are the nearest neighbour of very many queries)::

        CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y)

    ``r_T(x)`` is the mean cosine of query ``x`` to its ``K`` nearest gallery
    items and ``r_S(y)`` the mean cosine of gallery item ``y`` to its ``K``
    nearest items of a *source reference set*: the gallery index's reference
    sample of the source model (`GalleryIndex.add_reference`) if it has one,
    else the batch of queries itself. ``K`` is ``csls_k`` (10, as in the
    paper), capped by the size of the set. ``r_T(x)`` does not change the
    ranking of one query's results, only their scores.

Results
-------
A `SearchResult` is ``(scores, indices)``, in the order of scikit-learn's
``kneighbors`` (distances, indices) and FAISS's ``search`` (D, I): unpack it
as ``scores, indices = index.search(...)``, or read ``.scores`` and
``.indices``. Asking for more hits than the gallery holds (``k >
n_gallery``) is an error. An approximate index (`latentspace.FaissIndex`)
may find fewer than ``k`` items for a query; the missing hits are padded at
the end with index -1 and score ``-inf``, as FAISS does.

References
----------
Conneau, A., Lample, G., Ranzato, M., Denoyer, L. and Jégou, H. (2018).
Word translation without parallel data. ICLR. arXiv:1710.04087.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .._exceptions import InvalidParameterError
from .._validation import check_int

__all__ = [
    "CHUNK_BYTES",
    "METHODS",
    "Method",
    "SearchResult",
    "check_batch_size",
    "check_k",
    "check_method",
    "chunk_rows",
    "neighbourhood",
    "score_blocks",
    "search_latents",
    "top_k",
]

# Bytes of one block of scores (rows x gallery items).
CHUNK_BYTES = 32 << 20


class SearchResult(NamedTuple):
    """The top ``k`` gallery items of every query, best first.

    Unpacks as ``scores, indices = result``: the order of scikit-learn's
    ``kneighbors`` and of FAISS's ``search``.

    Attributes
    ----------
    scores : ndarray of shape (n_queries, k) or (k,), in the space's dtype
        Cosine similarity or CSLS score of each hit (higher is better);
        ``-inf`` for a hit an approximate index did not find.
    indices : ndarray of int64, shape (n_queries, k) or (k,) for one query
        Row numbers in the gallery; ties are broken by the lower index; -1
        for a hit an approximate index did not find.
    """

    scores: NDArray[np.floating[Any]]
    indices: NDArray[np.int64]


def check_method(method):
    """One of `METHODS`."""
    if not isinstance(method, str) or method not in METHODS:
        allowed = ", ".join(map(repr, METHODS))
        raise InvalidParameterError(f"method must be one of {allowed}, got {method!r}")
    return method


def check_batch_size(batch_size):
    return None if batch_size is None else check_int("batch_size", batch_size, 1)


def check_k(k, n_items):
    """Hits per query: an integer from 1 to the gallery's size."""
    k = check_int("k", k, 1)
    if k > n_items:
        raise InvalidParameterError(
            f"k={k} is more than the {n_items} items of the gallery; ask for at "
            f"most k={n_items}"
        )
    return k


def chunk_rows(n_columns, dtype, batch_size=None):
    """Rows per block so that a block of scores takes about `CHUNK_BYTES`."""
    if batch_size is not None:
        return batch_size
    return max(1, CHUNK_BYTES // (max(n_columns, 1) * np.dtype(dtype).itemsize))


def mean_top(S, K):
    """Mean of the ``K`` largest values of each row of ``S`` (reorders ``S``)."""
    n = S.shape[1]
    S.partition(n - K, axis=1)
    return S[:, n - K :].mean(axis=1, dtype=np.float64).astype(S.dtype, copy=False)


def neighbourhood(A, B, K, batch_size=None):
    """``r(a)``: mean cosine of each row of ``A`` to its ``K`` nearest rows of
    ``B`` (both unit rows), in blocks of rows of ``A``."""
    K = min(K, len(B))
    out = np.empty(len(A), dtype=A.dtype)
    step = chunk_rows(len(B), A.dtype, batch_size)
    for start in range(0, len(A), step):
        # S = A[start:stop] @ B.T, cosines of a block of A to all of B
        S = A[start : start + step] @ B.T
        out[start : start + step] = mean_top(S, K)
    return out


def _cosine(S, r_source, K):
    """Cosine: the scores are the cosines."""
    return S, None


def _csls(S, r_source, K):
    """CSLS = 2 S - r_S[None, :] - r_T[:, None], ranked without r_T."""
    r_target = mean_top(S.copy(), K)
    S *= 2
    S -= r_source
    return S, r_target


class Method(NamedTuple):
    """How a method scores a block ``S`` of cosines (queries x gallery).

    Attributes
    ----------
    reference : bool
        Whether it needs ``r_S``, the mean cosine of every gallery item to
        its ``K`` nearest items of a source reference set.
    score : callable
        ``score(S, r_source, K) -> (T, shift)``: the ranking matrix (may be
        ``S``, modified) and a per-row value such that the scores are ``T -
        shift[:, None]`` (None: the scores are ``T``).
    """

    reference: bool
    score: Callable


METHODS = {"cosine": Method(False, _cosine), "csls": Method(True, _csls)}


def score_blocks(Q, G, method, csls_k, r_source=None, batch_size=None):
    """Yield ``(start, T, shift)`` for blocks of query rows.

    ``T`` is the block's ranking matrix (rows: queries ``start..``, columns:
    gallery items) and ``shift`` a per-row value such that the scores are
    ``T - shift[:, None]`` (``None``: the scores are ``T``). For a method
    with a reference (CSLS), ``r_source`` is ``r_S`` of every gallery item
    (computed from the queries themselves if None).
    """
    scoring = METHODS[method]
    step = chunk_rows(len(G), Q.dtype, batch_size)
    if scoring.reference and r_source is None:
        # The batch of queries is its own source reference set.
        r_source = neighbourhood(G, Q, csls_k, batch_size)
    K = min(csls_k, len(G))
    for start in range(0, len(Q), step):
        # S = Q[block] @ G.T: cosine similarities (unit rows)
        T, shift = scoring.score(Q[start : start + step] @ G.T, r_source, K)
        yield start, T, shift


def top_k(T, k):
    """Indices and values of the ``k`` largest entries of each row of ``T``,
    best first, ties to the lower index."""
    n = T.shape[1]
    if k < n:
        candidates = np.argpartition(T, n - k, axis=1)[:, n - k :]
    else:
        candidates = np.broadcast_to(np.arange(n), T.shape)
    values = np.take_along_axis(T, candidates, axis=1)
    order = np.lexsort((candidates, -values), axis=1)
    return (
        np.take_along_axis(candidates, order, axis=1).astype(np.int64, copy=False),
        np.take_along_axis(values, order, axis=1),
    )


def search_latents(
    Q, G, k, method, csls_k, r_source=None, batch_size=None, callback=None
):
    """`SearchResult` of unit query latents ``Q`` in unit gallery latents ``G``
    (``k <= len(G)``); ``callback(n_done, n_queries)`` after every block."""
    indices = np.empty((len(Q), k), dtype=np.int64)
    scores = np.empty((len(Q), k), dtype=Q.dtype)
    for start, T, shift in score_blocks(Q, G, method, csls_k, r_source, batch_size):
        stop = start + len(T)
        indices[start:stop], scores[start:stop] = top_k(T, k)
        if shift is not None:
            scores[start:stop] -= shift[:, None]
        if callback is not None:
            callback(stop, len(Q))
    return SearchResult(scores, indices)
