# SPDX-License-Identifier: BSD-3-Clause
"""Cross-model search: queries embedded by one model, a gallery by another.

Both sides are projected into the shared space and scaled to unit length, so
that a dot product is a cosine similarity. Scores are computed by BLAS GEMM in
blocks of query rows (about `CHUNK_BYTES` of scores at a time), and the top
``k`` of each block are picked with ``np.argpartition``: memory stays
``O(chunk x n_gallery)``, never ``n_queries x n_gallery``.

Methods
-------
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

References
----------
Conneau, A., Lample, G., Ranzato, M., Denoyer, L. and Jégou, H. (2018).
Word translation without parallel data. ICLR. arXiv:1710.04087.
"""

import threading
from typing import NamedTuple

import numpy as np

from ._exceptions import InvalidParameterError
from ._validation import check_int

__all__ = ["CHUNK_BYTES", "METHODS", "GalleryIndex", "SearchResult", "search"]

# Bytes of one block of scores (rows x gallery items).
CHUNK_BYTES = 32 << 20
METHODS = ("cosine", "csls")


class SearchResult(NamedTuple):
    """The top ``k`` gallery items of every query, best first.

    Unpacks as ``indices, scores = result``.

    Attributes
    ----------
    indices : ndarray of int64, shape (n_queries, k) or (k,) for one query
        Row numbers in the gallery; ties are broken by the lower index.
    scores : ndarray of shape (n_queries, k) or (k,), in the space's dtype
        Cosine similarity or CSLS score of each hit (higher is better).
    """

    indices: np.ndarray
    scores: np.ndarray


# ------------------------------------------------------------------ checking


def check_method(method):
    """One of `METHODS`."""
    if not isinstance(method, str) or method not in METHODS:
        allowed = ", ".join(map(repr, METHODS))
        raise InvalidParameterError(f"method must be one of {allowed}, got {method!r}")
    return method


def check_batch_size(batch_size):
    return None if batch_size is None else check_int("batch_size", batch_size, 1)


def chunk_rows(n_columns, dtype, batch_size=None):
    """Rows per block so that a block of scores takes about `CHUNK_BYTES`."""
    if batch_size is not None:
        return batch_size
    return max(1, CHUNK_BYTES // (max(n_columns, 1) * np.dtype(dtype).itemsize))


# ------------------------------------------------------------------- latents


def unit_latents(space, models, name, features, what="features"):
    """``features`` of model ``name`` projected with ``models`` (one snapshot)
    and scaled to unit length: ``(Z, was_one_vector)``."""
    from ._space import _lookup

    model = _lookup(models, name)
    latent = model.project(features)
    if latent is None:
        latent = space._apply(model.project, features, name, what)
    one = latent.ndim == 1
    Z = latent.reshape(1, -1) if one else latent  # a new array: ours to scale
    tiny = np.finfo(Z.dtype).tiny
    # Divide by the largest entry first: the squares of a latent beyond
    # sqrt(max) (1e154 in float64, 1e19 in float32) would overflow, and its
    # norm become inf (cosine 0 with everything instead of +-1).
    if len(Z) and Z.shape[1]:
        Z /= np.maximum(np.abs(Z).max(axis=1), tiny)[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", Z, Z))
    # A zero latent has cosine 0 with everything rather than NaN.
    Z /= np.maximum(norms, tiny)[:, None]
    return Z, one


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


def score_blocks(Q, G, method, csls_k, r_source=None, batch_size=None):
    """Yield ``(start, T, shift)`` for blocks of query rows.

    ``T`` is the block's ranking matrix (rows: queries ``start..``, columns:
    gallery items) and ``shift`` a per-row value such that the scores are
    ``T - shift[:, None]`` (``None``: the scores are ``T``). For CSLS,
    ``r_source`` is ``r_S`` of every gallery item (computed from the queries
    themselves if None).
    """
    step = chunk_rows(len(G), Q.dtype, batch_size)
    if method == "csls":
        if r_source is None:
            # The batch of queries is its own source reference set.
            r_source = neighbourhood(G, Q, csls_k, batch_size)
        K = min(csls_k, len(G))
    for start in range(0, len(Q), step):
        # S = Q[block] @ G.T: cosine similarities (unit rows)
        S = Q[start : start + step] @ G.T
        if method == "cosine":
            yield start, S, None
            continue
        r_target = mean_top(S.copy(), K)
        # CSLS = 2 S - r_S[None, :] - r_T[:, None], ranked without r_T
        S *= 2
        S -= r_source
        yield start, S, r_target


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
    """`SearchResult` of unit query latents ``Q`` in unit gallery latents ``G``;
    ``callback(n_done, n_queries)`` after every block."""
    k = min(k, len(G))
    indices = np.empty((len(Q), k), dtype=np.int64)
    scores = np.empty((len(Q), k), dtype=Q.dtype)
    for start, T, shift in score_blocks(Q, G, method, csls_k, r_source, batch_size):
        stop = start + len(T)
        indices[start:stop], scores[start:stop] = top_k(T, k)
        if shift is not None:
            scores[start:stop] -= shift[:, None]
        if callback is not None:
            callback(stop, len(Q))
    return SearchResult(indices, scores)


# -------------------------------------------------------------------- public


class GalleryIndex:
    """A gallery embedded by one model, ready to be searched repeatedly.

    Made by `LatentSpace.index`. It holds the gallery's unit latents, computed
    with the weights of the moment it was built: training the space later
    does not change it (build a new index to use the new weights). Searches
    may run from any number of threads at once.

    Attributes
    ----------
    target : str
        The model that embedded the gallery.
    latents : ndarray of shape (n_items, dim), read-only
        The gallery items projected into the space, unit length.
    csls_k : int
        Neighbourhood size ``K`` of CSLS.
    references : tuple of str
        Source models for which the index holds a reference sample.
    """

    def __init__(self, space, target, gallery, *, csls_k=10, batch_size=None):
        self._space = space
        self._models = space._snapshot.models
        self.csls_k = check_int("csls_k", csls_k, 1)
        self._batch_size = check_batch_size(batch_size)
        G, one = unit_latents(space, self._models, target, gallery, "gallery")
        if one:
            width = self._models[target].input_dim
            raise InvalidParameterError(
                f"gallery must be a 2-D array of items, shape (n, {width}), "
                "got one vector; pass gallery[None, :] for a gallery of one item"
            )
        if len(G) == 0:
            raise InvalidParameterError("gallery holds no items")
        G.flags.writeable = False
        self.target = target
        self.latents = G
        self._r_source = {}  # source name -> r_S of every gallery item
        self._writer = threading.Lock()

    def __len__(self):
        return len(self.latents)

    def __repr__(self):
        return (
            f"GalleryIndex(target={self.target!r}, n_items={len(self)}, "
            f"csls_k={self.csls_k}, references={list(self.references)})"
        )

    @property
    def references(self):
        return tuple(self._r_source)

    def __getstate__(self):
        # The compiled maps and the lock do not pickle: keep the weights.
        state = dict(self.__dict__)
        del state["_writer"]
        state["_models"] = {
            name: (m.projection, m.reconstruction, m.offset)
            for name, m in self._models.items()
        }
        return state

    def __setstate__(self, state):
        from ._space import _make_model

        def frozen(array):
            array = np.array(array)  # a private copy
            array.flags.writeable = False
            return array

        state = dict(state)
        state["_models"] = {
            name: _make_model(
                np.array(P), np.array(R), None if offset is None else frozen(offset)
            )
            for name, (P, R, offset) in state["_models"].items()
        }
        state["latents"] = frozen(state["latents"])
        state["_r_source"] = {k: frozen(v) for k, v in state["_r_source"].items()}
        self.__dict__.update(state)
        self._writer = threading.Lock()

    def add_reference(self, source, features):
        """Keep a reference sample of items embedded by ``source`` for CSLS.

        With a reference, CSLS searches from ``source`` use it for ``r_S``
        instead of the batch of queries: a single query is then scored
        as well as a large batch, and a query's results do not depend on the
        other queries searched with it. A few thousand typical items of the
        source model are plenty.

        Parameters
        ----------
        source : str
            A registered model.
        features : array-like of shape (n_reference, d_source)

        Returns
        -------
        self
        """
        R, one = unit_latents(self._space, self._models, source, features, "reference")
        if one or len(R) == 0:
            raise InvalidParameterError(
                "reference must be a 2-D array with at least one item"
            )
        r_source = neighbourhood(self.latents, R, self.csls_k, self._batch_size)
        r_source.flags.writeable = False
        with self._writer:
            self._r_source = {**self._r_source, source: r_source}
        return self

    def search(
        self, source, queries, *, k=10, method="csls", batch_size=None, callback=None
    ):
        """The ``k`` best gallery items for each query of model ``source``.

        Parameters
        ----------
        source : str
            The model that embedded ``queries``.
        queries : array-like of shape (n_queries, d_source) or (d_source,)
        k : int, default=10
            Hits per query (at most the gallery's size).
        method : {"csls", "cosine"}, default="csls"
            See the module documentation.
        batch_size : int, optional
            Query rows per block of scores; by default about 32 MiB of scores.
        callback : callable, optional
            Called as ``callback(n_done, n_queries)`` after every block of
            queries (progress reports for long searches).

        Returns
        -------
        SearchResult
            ``(indices, scores)``, each of shape ``(n_queries, k)`` (``(k,)``
            for one query vector), best first.
        """
        if callback is not None and not callable(callback):
            raise InvalidParameterError(
                f"callback must be callable or None, got {callback!r}"
            )
        k = check_int("k", k, 1)
        method = check_method(method)
        batch_size = check_batch_size(batch_size) or self._batch_size
        Q, one = unit_latents(self._space, self._models, source, queries, "queries")
        if len(Q) == 0:
            k = min(k, len(self))
            return SearchResult(
                np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=Q.dtype)
            )
        result = search_latents(
            Q,
            self.latents,
            k,
            method,
            self.csls_k,
            self._r_source.get(source),
            batch_size,
            callback,
        )
        if one:
            return SearchResult(result.indices[0], result.scores[0])
        return result


def search(space, source, queries, target, gallery, *, k, method, csls_k, batch_size):
    """One-off search: `GalleryIndex` of ``gallery``, then its `search`."""
    k = check_int("k", k, 1)
    method = check_method(method)
    index = GalleryIndex(space, target, gallery, csls_k=csls_k, batch_size=batch_size)
    return index.search(source, queries, k=k, method=method)
