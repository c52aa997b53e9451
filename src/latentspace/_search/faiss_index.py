# SPDX-License-Identifier: BSD-3-Clause
"""`FaissIndex`: a gallery searched by FAISS, for millions of items.

Needs FAISS (``pip install "latentspace[faiss]"``, the ``faiss-cpu``
package), imported when an index is built or loaded.

CSLS in an inner-product index
------------------------------
The index holds every gallery item's unit latent ``y`` followed by one
coordinate per reference source ``s``: ``r_S(y)``, the mean cosine of ``y``
to its ``csls_k`` nearest items of the reference sample of ``s``, computed
when the index is built. Then a query ``x`` (unit latent) asks

- ``(x, 0, ..., 0)`` for cosine: the inner product is ``cos(x, y)``;
- ``(2x, 0, .., -1, .., 0)`` (-1 at source ``s``) for CSLS: the inner product
  is ``2 cos(x, y) - r_S(y)``, so the index's top ``k`` are the top ``k`` by
  CSLS; ``r_T(x)``, the mean of the ``csls_k`` best cosines (a cosine search
  of the same index), is subtracted from their scores.

A flat index therefore finds what `GalleryIndex` finds (computed in float32);
HNSW and IVF trade recall for speed. CSLS needs a reference sample of the
source model, given when the index is built (an index of millions of items
cannot take the batch of queries as reference set without scanning every
item for every batch).

Kinds and their options
-----------------------
``"flat"``
    ``IndexFlatIP``: exact, every item scanned. No options.
``"hnsw"``
    ``IndexHNSWFlat``, a navigable small-world graph: ``m`` (32), the links
    per item; ``ef_construction`` (80), the candidates kept while building;
    ``ef_search`` (128), the candidates kept while searching (more: higher
    recall, slower; also per call: ``search(..., ef_search=)``).
``"ivf"``
    ``IndexIVFFlat``, an inverted file of ``nlist`` k-means cells (default
    ``4 sqrt(n)``, at most ``n / 39``): ``nprobe`` (64), the cells searched
    (also per call); ``train_size`` (``40 nlist``, at most ``n``), the
    gallery items, drawn at random (``seed``, 0), on which the cells are
    trained.

CSLS top-1 on real embeddings against the exact index
(benchmarks/bench_search.py: 12,000 docstrings, 12 ordered pairs of four
models): the default ``ef_search`` lost at most 0.95 points, the default
``nprobe`` at most 0.85 (``nprobe=32``: 1.45); one query against 10^6 items
took 0.54 ms (cosine) and 0.85 ms (CSLS) at the median with it; see
benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .._exceptions import InvalidParameterError
from .blocks import is_rows, unit_latent_blocks, unit_latents
from .exact_index import GalleryIndex, check_callback
from .scoring import METHODS, SearchResult, check_method, neighbourhood
from .._validation import check_int

if TYPE_CHECKING:
    from .._space import LatentSpace

__all__ = ["KINDS", "FaissIndex"]

KINDS = ("flat", "hnsw", "ivf")
_OPTIONS = {
    "flat": {},
    "hnsw": {"m": 32, "ef_construction": 80, "ef_search": 128},
    "ivf": {"nlist": None, "nprobe": 64, "train_size": None, "seed": 0},
}
# Searches of fewer queries, and indexes of fewer items, are built and
# searched on one OpenMP thread. FAISS's threads help a batch of queries (run
# in parallel) or a large build, not one query; and on a busy machine every
# parallel region waits for a thread the scheduler has not run yet. Measured
# on 2 cores with the load average at 7: one flat query of 200,000 items took
# 4 ms on one thread, 33-44 ms on two; building an IVF index of 400 items 1
# ms on one thread, 0.6 s on two.
_ONE_THREAD_BELOW = 64
_ONE_THREAD_BUILD_BELOW = 20_000
# Queries per FAISS call when no batch_size is given.
_QUERY_BLOCK = 4096


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(
            'backend="faiss" needs FAISS, an optional dependency: pip install '
            '"latentspace[faiss]" (or pip install faiss-cpu)'
        ) from None
    return faiss


@contextlib.contextmanager
def _omp_threads(faiss, n):
    """FAISS's OpenMP threads for the calling thread only (an OpenMP setting
    is per thread), or unchanged if ``n`` is None."""
    if n is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def check_options(kind, options, n_items=None):
    """The options of ``kind``: ``options`` over the defaults, checked."""
    if not isinstance(kind, str) or kind not in KINDS:
        allowed = ", ".join(map(repr, KINDS))
        raise InvalidParameterError(f"kind must be one of {allowed}, got {kind!r}")
    defaults = _OPTIONS[kind]
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise InvalidParameterError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for kind={kind!r} "
            f"(its options: {known})"
        )
    merged = {**defaults, **options}
    for name, value in merged.items():
        if value is not None:
            merged[name] = check_int(name, value, 0 if name == "seed" else 1)
    if kind == "ivf" and n_items is not None:
        if merged["nlist"] is None:
            merged["nlist"] = max(1, min(round(4 * math.sqrt(n_items)), n_items // 39))
        if merged["nlist"] > n_items:
            raise InvalidParameterError(
                f"nlist={merged['nlist']} is more cells than the {n_items} items"
            )
        if merged["train_size"] is None:
            merged["train_size"] = min(n_items, 40 * merged["nlist"])
        if not merged["nlist"] <= merged["train_size"] <= n_items:
            raise InvalidParameterError(
                f"train_size must be from nlist ({merged['nlist']}) to the "
                f"{n_items} items, got {merged['train_size']}"
            )
    return merged


class FaissIndex(GalleryIndex):
    """A gallery embedded by one model, searched by FAISS.

    Made by ``LatentSpace.index(target, gallery, backend="faiss", kind=...)``;
    see the module documentation for the kinds and their options. Like
    `GalleryIndex` it holds the weights of the space at the moment it was
    built, may be searched from many threads at once, pickles, and is
    written by `save` and read by `GalleryIndex.load`.

    Attributes
    ----------
    backend : str
        ``"faiss"``.
    kind : str
        ``"flat"``, ``"hnsw"`` or ``"ivf"``.
    options : dict
        The index's options, defaults filled in.
    target, csls_k, references, dtype
        As for `GalleryIndex`; ``references`` are given when it is built.
    faiss_index : faiss.Index
        The FAISS index: ``dim + len(references)`` columns, inner product.
    """

    backend = "faiss"

    def __init__(
        self, space: LatentSpace, target: str, gallery: ArrayLike, *, kind: str = "flat",
        options: Mapping[str, int] | None = None,
        references: Mapping[str, ArrayLike] | None = None, csls_k: int = 10,
        batch_size: int | None = None,
        callback: Callable[[int, int], object] | None = None,
    ) -> None:
        faiss = _faiss()
        check_options(kind, options)  # before any work
        self._setup(space._snapshot.models, space.dtype, target, csls_k, batch_size)
        self.kind = kind
        self._build_faiss(faiss, gallery, options, dict(references or {}),
                          check_callback(callback))

    @property
    def references(self) -> tuple[str, ...]:
        return self._sources

    def __len__(self) -> int:
        return self.faiss_index.ntotal

    # ---------------------------------------------------------------- build

    def _restore(self, kind, options, references, faiss_index):
        """Complete a loaded index (after `_setup`) with what its file holds;
        its kind and options are checked as when an index is built."""
        self.options = check_options(kind, options, faiss_index.ntotal)
        self.kind = kind
        self._sources = tuple(references)
        self.faiss_index = faiss_index

    def _build_faiss(self, faiss, gallery, options, references, callback):
        if is_rows(gallery):
            self._check_gallery(gallery, False)
            n = len(gallery)
            blocks = unit_latent_blocks(self._models, self.dtype, self.target,
                                        gallery, "gallery")
        else:
            G, one = unit_latents(self._models, self.dtype, self.target, gallery,
                                  "gallery")
            self._check_gallery(G, one)
            n = len(G)
            blocks = [(0, G)]
        self.options = check_options(self.kind, options, n)
        references = {
            source: self._reference_latents(source, features).astype(
                np.float32, copy=False
            )
            for source, features in references.items()
        }
        self._sources = tuple(references)
        index = self._new_index(faiss)
        with _omp_threads(faiss, 1 if n < _ONE_THREAD_BUILD_BELOW else None):
            if self.kind == "ivf":
                index.train(self._training_sample(gallery, references, n))
            for start, Z in blocks:
                index.add(self._stored(Z, references))
                if callback is not None:
                    callback(start + len(Z), n)
        self.faiss_index = index

    def _new_index(self, faiss):
        d = self.dim + len(self._sources)
        options = self.options
        if self.kind == "flat":
            return faiss.IndexFlatIP(d)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, options["m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = options["ef_construction"]
            index.hnsw.efSearch = options["ef_search"]
            return index
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(
            quantizer, d, options["nlist"], faiss.METRIC_INNER_PRODUCT
        )
        index.own_fields = True  # the index keeps its quantizer alive
        quantizer.this.disown()
        index.nprobe = options["nprobe"]
        return index

    def _stored(self, Z, references):
        """The rows the index stores for unit latents ``Z``: ``Z`` and, per
        reference source, ``r_S``."""
        Z = Z.astype(np.float32, copy=False)
        rows = np.empty((len(Z), self.dim + len(references)), dtype=np.float32)
        rows[:, : self.dim] = Z
        for j, R in enumerate(references.values()):
            rows[:, self.dim + j] = neighbourhood(Z, R, self.csls_k, self._batch_size)
        return rows

    def _training_sample(self, gallery, references, n):
        """The stored rows of ``train_size`` gallery items drawn at random."""
        rng = np.random.default_rng(self.options["seed"])
        rows = np.sort(rng.choice(n, self.options["train_size"], replace=False))
        if is_rows(gallery):
            sample = gallery[rows]
            if hasattr(sample, "compute"):  # Dask
                sample = sample.compute()
            Z, _ = unit_latents(self._models, self.dtype, self.target,
                                np.asarray(sample), "gallery")
        else:
            Z = unit_latents(self._models, self.dtype, self.target, gallery,
                             "gallery")[0][rows]
        return self._stored(Z, references)

    # ------------------------------------------------------------ pickling

    def __getstate__(self):
        state = super().__getstate__()
        state["faiss_index"] = _faiss().serialize_index(self.faiss_index)
        return state

    def __setstate__(self, state):
        state = dict(state)
        index = _faiss().deserialize_index(np.asarray(state.pop("faiss_index")))
        super().__setstate__(state)
        self.faiss_index = index

    # --------------------------------------------------------------- search

    def add_reference(self, source: str, features: ArrayLike) -> FaissIndex:
        """Not for a FAISS index: its references are part of the stored rows.

        Raises
        ------
        InvalidParameterError
        """
        raise InvalidParameterError(
            "a FAISS index takes its reference samples when it is built: "
            f"space.index({self.target!r}, gallery, backend='faiss', "
            f"references={{{source!r}: sample}})"
        )

    def search(
        self, source: str, queries: ArrayLike, *, k: int = 10, method: str = "csls",
        batch_size: int | None = None,
        callback: Callable[[int, int], object] | None = None,
        ef_search: int | None = None, nprobe: int | None = None,
    ) -> SearchResult:
        """The ``k`` best gallery items for each query of model ``source``.

        As `GalleryIndex.search`, with the FAISS index's search options.
        An approximate index may find fewer than ``k`` items for a query:
        the missing hits are index -1 with score ``-inf``, at the end.

        Parameters
        ----------
        source, queries, k, method, batch_size, callback
            As for `GalleryIndex.search`. CSLS needs a reference sample of
            ``source`` (given when the index was built).
        ef_search : int, optional
            "hnsw": candidates kept while searching (default: the option).
        nprobe : int, optional
            "ivf": cells searched (default: the option).

        Returns
        -------
        SearchResult
        """
        params = self._params(ef_search, nprobe)
        check_callback(callback)
        if METHODS[check_method(method)].reference and source not in self._sources:
            raise InvalidParameterError(
                f"CSLS on a FAISS index needs a reference sample of {source!r}, "
                "given when the index is built (references={"
                f"{source!r}: sample}}); or search with method='cosine'"
            )
        return self._query(source, queries, k, method, batch_size, callback,
                           params=params)

    def _params(self, ef_search, nprobe):
        """FAISS's search parameters for this call."""
        faiss = _faiss()
        for name, value, kind in (("ef_search", ef_search, "hnsw"),
                                  ("nprobe", nprobe, "ivf")):
            if value is not None and self.kind != kind:
                raise InvalidParameterError(
                    f"{name} is an option of kind={kind!r}; this index is "
                    f"kind={self.kind!r}"
                )
        if self.kind == "hnsw":
            ef = self.options["ef_search"] if ef_search is None else ef_search
            return faiss.SearchParametersHNSW(efSearch=check_int("ef_search", ef, 1))
        if self.kind == "ivf":
            probes = self.options["nprobe"] if nprobe is None else nprobe
            return faiss.SearchParametersIVF(nprobe=check_int("nprobe", probes, 1))
        return None

    def _search(self, Q, source, k, method, batch_size, callback, params=None):
        faiss = _faiss()
        n_queries, dim = Q.shape
        scores = np.empty((n_queries, k), dtype=self.dtype)
        indices = np.empty((n_queries, k), dtype=np.int64)
        step = batch_size or _QUERY_BLOCK
        column = dim + self._sources.index(source) if METHODS[method].reference else None
        K = min(self.csls_k, len(self))
        threads = 1 if n_queries < _ONE_THREAD_BELOW else None
        with _omp_threads(faiss, threads):
            for start in range(0, n_queries, step):
                q = Q[start : start + step]
                x = np.zeros((len(q), self.faiss_index.d), dtype=np.float32)
                x[:, :dim] = q
                if column is not None:
                    # r_T: the mean of the K best cosines the index finds.
                    D, _ = self.faiss_index.search(x, K, params=params)
                    found = D > -np.finfo(np.float32).max
                    r_target = np.where(found, D, 0).sum(1) / np.maximum(
                        found.sum(1), 1
                    )
                    x[:, :dim] *= 2
                    x[:, column] = -1
                D, I = self.faiss_index.search(x, k, params=params)
                D = D.astype(np.float64 if self.dtype == np.float64 else np.float32)
                if column is not None:
                    D -= r_target[:, None]
                D[I < 0] = -np.inf
                # Best first, ties to the lower index, missing hits last.
                order = np.lexsort((np.where(I < 0, len(self), I), -D), axis=1)
                stop = start + len(q)
                scores[start:stop] = np.take_along_axis(D, order, axis=1)
                indices[start:stop] = np.take_along_axis(I, order, axis=1)
                if callback is not None:
                    callback(stop, n_queries)
        return SearchResult(scores, indices)
