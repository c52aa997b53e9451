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

Results
-------
A `SearchResult` is ``(scores, indices)``, in the order of scikit-learn's
``kneighbors`` (distances, indices) and FAISS's ``search`` (D, I): unpack it
as ``scores, indices = index.search(...)``, or read ``.scores`` and
``.indices``. Asking for more hits than the gallery holds (``k >
n_gallery``) is an error. An approximate index (`latentspace.FaissIndex`)
may find fewer than ``k`` items for a query; the missing hits are padded at
the end with index -1 and score ``-inf``, as FAISS does.

Backends
--------
`GalleryIndex` scans the gallery exactly (BLAS GEMM in blocks, no
dependency). ``space.index(..., backend="faiss")`` gives a
`latentspace.FaissIndex`, searched by FAISS (flat, HNSW or IVF), for
galleries of millions of items.

References
----------
Conneau, A., Lample, G., Ranzato, M., Denoyer, L. and Jégou, H. (2018).
Word translation without parallel data. ICLR. arXiv:1710.04087.
"""

import threading
import time
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ._blocks import check_rows, project_block, row_blocks
from ._data import is_dask_array
from ._exceptions import InvalidParameterError
from ._validation import as_rows, check_int

__all__ = [
    "BACKENDS",
    "CHUNK_BYTES",
    "METHODS",
    "GalleryIndex",
    "SearchResult",
    "make_index",
    "search",
]

# Bytes of one block of scores (rows x gallery items).
CHUNK_BYTES = 32 << 20
METHODS = ("cosine", "csls")


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

    scores: np.ndarray
    indices: np.ndarray


# ------------------------------------------------------------------ checking


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


# ------------------------------------------------------------------- latents


def normalise(Z):
    """Scale the rows of ``Z`` to unit length, in place; a zero row stays 0."""
    tiny = np.finfo(Z.dtype).tiny
    # Divide by the largest entry first: the squares of a latent beyond
    # sqrt(max) (1e154 in float64, 1e19 in float32) would overflow, and its
    # norm become inf (cosine 0 with everything instead of +-1).
    if len(Z) and Z.shape[1]:
        Z /= np.maximum(np.abs(Z).max(axis=1), tiny)[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", Z, Z))
    # A zero latent has cosine 0 with everything rather than NaN.
    Z /= np.maximum(norms, tiny)[:, None]
    return Z


def _is_rows(features):
    """Whether ``features`` is a 2-D ndarray (memory-mapped ones included) or
    a Dask array: read a block of rows at a time."""
    return is_dask_array(features) or (
        isinstance(features, np.ndarray) and features.ndim == 2
    )


def unit_latent_blocks(models, dtype, name, features, what="features"):
    """Yield ``(start, Z)``: blocks of the rows of ``features`` (a 2-D
    ndarray, memory-mapped or not, or a Dask array) of model ``name``,
    projected with ``models`` and scaled to unit length."""
    from ._space import _lookup

    model = _lookup(models, name)
    described = f"{what} for model {name!r}"
    check_rows(features, model.input_dim, described)
    for start, block in row_blocks(features):
        yield start, normalise(
            project_block(model.project, block, dtype, described, start)
        )


def unit_latents(models, dtype, name, features, what="features"):
    """``features`` of model ``name`` projected with ``models`` (one snapshot)
    and scaled to unit length: ``(Z, was_one_vector)``.

    2-D ndarrays (memory-mapped ones too) and Dask arrays are read a block
    of rows at a time; only the latents are held in memory."""
    from ._space import _lookup

    model = _lookup(models, name)
    if _is_rows(features):
        Z = np.empty((features.shape[0], model.project.W.shape[1]), dtype=dtype)
        for start, block in unit_latent_blocks(models, dtype, name, features, what):
            Z[start : start + len(block)] = block
        return Z, False
    if is_dask_array(features):  # a vector
        features = features.compute()
    latent = model.project(features)
    if latent is None:
        described = f"{what} for model {name!r}"
        x = as_rows(features, model.input_dim, dtype, described)
        latent = project_block(model.project, x, dtype, described)
    one = latent.ndim == 1
    # A new array: ours to scale.
    return normalise(latent.reshape(1, -1) if one else latent), one


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


# -------------------------------------------------------------------- public


class GalleryIndex:
    """A gallery embedded by one model, ready to be searched repeatedly.

    Made by `LatentSpace.index`. It holds the gallery's unit latents and the
    weights of the space at the moment it was built: training the space later
    does not change it (build a new index to use the new weights), and a
    saved index (`save`, `load`) needs no space. It scans the whole gallery
    for every query (exact search); `latentspace.FaissIndex` is the
    approximate counterpart. Searches may run from any number of threads at
    once.

    Attributes
    ----------
    backend : str
        ``"exact"``.
    target : str
        The model that embedded the gallery.
    latents : ndarray of shape (n_items, dim), read-only
        The gallery items projected into the space, unit length.
    csls_k : int
        Neighbourhood size ``K`` of CSLS.
    references : tuple of str
        Source models for which the index holds a reference sample.
    dtype : numpy.dtype
        The space's dtype, that of the scores.
    """

    backend = "exact"

    def __init__(self, space, target, gallery, *, csls_k=10, batch_size=None,
                 callback=None):
        self._setup(space._snapshot.models, space.dtype, target, csls_k, batch_size)
        self._build(gallery, _check_callback(callback))

    def _setup(self, models, dtype, target, csls_k, batch_size=None):
        """What every index holds besides its items."""
        self._models = models
        self.dtype = dtype
        self.target = target
        self.csls_k = check_int("csls_k", csls_k, 1)
        self._batch_size = check_batch_size(batch_size)
        self._r_source = {}  # source name -> r_S of every gallery item
        self._writer = threading.Lock()

    def _build(self, gallery, callback):
        """Project the gallery into the index."""
        if not _is_rows(gallery):
            G, one = unit_latents(self._models, self.dtype, self.target, gallery,
                                  "gallery")
            self._check_gallery(G, one)
        else:
            self._check_gallery(gallery, False)
            G = np.empty((len(gallery), self.dim), dtype=self.dtype)
            blocks = unit_latent_blocks(self._models, self.dtype, self.target,
                                        gallery, "gallery")
            for start, block in blocks:
                G[start : start + len(block)] = block
                if callback is not None:
                    callback(start + len(block), len(G))
        G.flags.writeable = False
        self.latents = G

    def _check_gallery(self, gallery, one):
        from ._space import _lookup

        width = _lookup(self._models, self.target).input_dim
        if one:
            raise InvalidParameterError(
                f"gallery must be a 2-D array of items, shape (n, {width}), "
                "got one vector; pass gallery[None, :] for a gallery of one item"
            )
        if len(gallery) == 0:
            raise InvalidParameterError("gallery holds no items")

    @property
    def dim(self):
        """The latent dimension."""
        return self._models[self.target].project.W.shape[1]

    def __len__(self):
        return len(self.latents)

    def __repr__(self):
        kind = f"kind={self.kind!r}, " if self.backend == "faiss" else ""
        return (
            f"{type(self).__name__}({kind}target={self.target!r}, "
            f"n_items={len(self)}, csls_k={self.csls_k}, "
            f"references={list(self.references)})"
        )

    @property
    def references(self):
        return tuple(self._r_source)

    # ------------------------------------------------------------- pickling

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

        state = dict(state)
        state["_models"] = {
            name: _make_model(
                np.array(P), np.array(R), None if offset is None else _frozen(offset)
            )
            for name, (P, R, offset) in state["_models"].items()
        }
        if "latents" in state:
            state["latents"] = _frozen(state["latents"])
        state["_r_source"] = {k: _frozen(v) for k, v in state["_r_source"].items()}
        self.__dict__.update(state)
        self._writer = threading.Lock()

    # ----------------------------------------------------------- save, load

    def save(self, path):
        """Write the index to one file at ``path``, atomically.

        The file holds the gallery's latents (or the FAISS index), the
        reference statistics of CSLS and the weights of the space the index
        was built with, with a SHA-256 checksum over all of it: `load` needs
        no space. Keep it next to the space it was built from.

        Parameters
        ----------
        path : str or os.PathLike
        """
        from . import _indexfile

        _indexfile.save(self, path)

    @staticmethod
    def load(path):
        """Read an index written by `save` (a `GalleryIndex` or a
        `latentspace.FaissIndex`, as saved).

        Raises
        ------
        SpaceFileError
            A ``ValueError``: the file is truncated, corrupted, edited or
            not a saved index.
        """
        from . import _indexfile

        return _indexfile.load(path)

    # ---------------------------------------------------------------- search

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
        R = self._reference_latents(source, features)
        r_source = neighbourhood(self.latents, R, self.csls_k, self._batch_size)
        r_source.flags.writeable = False
        with self._writer:
            self._r_source = {**self._r_source, source: r_source}
        return self

    def _reference_latents(self, source, features):
        R, one = unit_latents(self._models, self.dtype, source, features, "reference")
        if one or len(R) == 0:
            raise InvalidParameterError(
                "reference must be a 2-D array with at least one item"
            )
        return R

    def search(
        self, source, queries, *, k=10, method="csls", batch_size=None, callback=None
    ):
        """The ``k`` best gallery items for each query of model ``source``.

        Parameters
        ----------
        source : str
            The model that embedded ``queries``.
        queries : array-like of shape (n_queries, d_source) or (d_source,)
            Or a memory-mapped or Dask array, read a block of rows at a time.
        k : int, default=10
            Hits per query, at most the gallery's size.
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
            ``(scores, indices)``, each of shape ``(n_queries, k)`` (``(k,)``
            for one query vector), best first.
        """
        return self._query(source, queries, k, method, batch_size, callback)

    def _query(self, source, queries, k, method, batch_size, callback, **params):
        """`search`, with the backend's search ``params``."""
        callback = _check_callback(callback)
        k = check_k(k, len(self))
        method = check_method(method)
        batch_size = check_batch_size(batch_size) or self._batch_size
        Q, one = unit_latents(self._models, self.dtype, source, queries, "queries")
        if len(Q) == 0:
            return SearchResult(
                np.empty((0, k), dtype=self.dtype), np.empty((0, k), dtype=np.int64)
            )
        result = self._search(Q, source, k, method, batch_size, callback, **params)
        if one:
            return SearchResult(result.scores[0], result.indices[0])
        return result

    def _search(self, Q, source, k, method, batch_size, callback):
        """`SearchResult` of the unit query latents ``Q`` (at least one row)."""
        return search_latents(
            Q,
            self.latents,
            k,
            method,
            self.csls_k,
            self._r_source.get(source),
            batch_size,
            callback,
        )


def _frozen(array):
    array = np.array(array)  # a private copy
    array.flags.writeable = False
    return array


def _check_callback(callback):
    if callback is not None and not callable(callback):
        raise InvalidParameterError(
            f"callback must be callable or None, got {callback!r}"
        )
    return callback


def bar_callback(unit, callback=None):
    """A ``callback(done, total)`` that draws a tqdm progress bar on stderr
    (created at the first call, closed at the last, timed from now) and then
    calls ``callback``; ImportError now if tqdm is missing."""
    from ._monitor import _tqdm

    tqdm = _tqdm()
    started = time.time()  # tqdm's clock
    bar = None

    def draw(done, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit=" " + unit, unit_scale=total >= 100_000)
            # The work began before its first block was done: timed from
            # there, a job done in one block does not read as millions a second.
            bar.start_t = bar.last_print_t = started
        bar.update(done - bar.n)
        if done == total:
            bar.close()
        if callback is not None:
            callback(done, total)

    return draw


BACKENDS = ("exact", "faiss")


def make_index(space, target, gallery, *, backend="exact", kind="flat",
               options=None, references=None, csls_k=10, batch_size=None,
               callback=None, progress=False):
    """The index of `LatentSpace.index`: a `GalleryIndex` or a `FaissIndex`."""
    if references is not None and not isinstance(references, Mapping):
        raise InvalidParameterError(
            "references must be a mapping of source model name to reference "
            f"items, got {type(references).__name__}"
        )
    callback = _check_callback(callback)
    if progress:
        callback = bar_callback("items", callback)
    if backend == "exact":
        if kind != "flat":
            raise InvalidParameterError(
                f"kind={kind!r} needs an approximate backend (backend='faiss'); "
                "the exact backend is a flat scan (kind='flat')"
            )
        if options:
            raise InvalidParameterError(
                f"the exact backend takes no options, got {sorted(options)}"
            )
        index = GalleryIndex(space, target, gallery, csls_k=csls_k,
                             batch_size=batch_size, callback=callback)
        for source, features in (references or {}).items():
            index.add_reference(source, features)
        return index
    if backend == "faiss":
        from ._faiss import FaissIndex

        return FaissIndex(space, target, gallery, kind=kind, options=options,
                          references=references, csls_k=csls_k,
                          batch_size=batch_size, callback=callback)
    allowed = ", ".join(map(repr, BACKENDS))
    raise InvalidParameterError(f"backend must be one of {allowed}, got {backend!r}")


def search(space, source, queries, target, gallery, *, k, method, csls_k, batch_size):
    """One-off search: `GalleryIndex` of ``gallery``, then its `search`."""
    check_int("k", k, 1)
    method = check_method(method)
    index = GalleryIndex(space, target, gallery, csls_k=csls_k, batch_size=batch_size)
    return index.search(source, queries, k=k, method=method)
