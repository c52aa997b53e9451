# SPDX-License-Identifier: BSD-3-Clause
"""`GalleryIndex`: a gallery's unit latents, searched exactly (BLAS GEMM in
blocks of queries; the methods are those of `latentspace._search.scoring`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .blocks import is_rows, normalise, unit_latent_blocks, unit_latents
from .._exceptions import InvalidParameterError
from .._model import lookup, make_model, read_only
from .scoring import (
    SearchResult,
    check_batch_size,
    check_k,
    check_method,
    neighbourhood,
    search_latents,
)
from .._validation import check_int

if TYPE_CHECKING:
    from .._space import LatentSpace
    from .._typing import Path

__all__ = ["GalleryIndex", "check_callback"]


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
    # backend -> the class of its indexes (for `load`); subclasses register
    # themselves.
    _backends = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        GalleryIndex._backends[cls.backend] = cls

    def __init__(
        self, space: LatentSpace, target: str, gallery: ArrayLike, *, csls_k: int = 10,
        batch_size: int | None = None,
        callback: Callable[[int, int], object] | None = None,
    ) -> None:
        snapshot = space._snapshot
        self._setup(snapshot.models, space.dtype, target, csls_k, batch_size,
                    snapshot.pair_maps_to(target))
        self._build(gallery, check_callback(callback))

    def _setup(self, models, dtype, target, csls_k, batch_size=None, pair_maps=None):
        """What every index holds besides its items."""
        self._models = models
        self.dtype = dtype
        self.target = target
        self.csls_k = check_int("csls_k", csls_k, 1)
        self._batch_size = check_batch_size(batch_size)
        self._r_source = {}  # source name -> r_S of every gallery item
        # source name -> (M_source, M_target): searches from source compare
        # z_source M_source with z_target M_target (spaces of 3+ models).
        self._pair_maps = dict(pair_maps or {})
        self._mapped = {}  # source name -> the gallery through its pair map
        self._writer = threading.Lock()

    def _through_map(self, source, Q):
        """Unit query latents ``Q`` of ``source`` as compared with the gallery."""
        maps = self._pair_maps.get(source)
        return Q if maps is None else normalise(Q @ maps[0])

    def _gallery(self, source):
        """The unit gallery latents that searches from ``source`` compare with."""
        maps = self._pair_maps.get(source)
        if maps is None:
            return self.latents
        G = self._mapped.get(source)
        if G is None:
            G = normalise(self.latents @ maps[1])
            G.flags.writeable = False
            with self._writer:
                self._mapped = {**self._mapped, source: G}
        return G

    def _build(self, gallery, callback):
        """Project the gallery into the index."""
        if not is_rows(gallery):
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
        width = lookup(self._models, self.target).input_dim
        if one:
            raise InvalidParameterError(
                f"gallery must be a 2-D array of items, shape (n, {width}), "
                "got one vector; pass gallery[None, :] for a gallery of one item"
            )
        if len(gallery) == 0:
            raise InvalidParameterError("gallery holds no items")

    @property
    def dim(self) -> int:
        """The latent dimension."""
        return self._models[self.target].project.W.shape[1]

    def __len__(self) -> int:
        return len(self.latents)

    def __repr__(self) -> str:
        kind = f"kind={self.kind!r}, " if self.backend == "faiss" else ""
        return (
            f"{type(self).__name__}({kind}target={self.target!r}, "
            f"n_items={len(self)}, csls_k={self.csls_k}, "
            f"references={list(self.references)})"
        )

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(self._r_source)

    # ------------------------------------------------------------- pickling

    def __getstate__(self):
        # The compiled maps and the lock do not pickle: keep the weights.
        state = dict(self.__dict__)
        del state["_writer"]
        state["_mapped"] = {}  # a cache
        state["_models"] = {
            name: (m.projection, m.reconstruction, m.offset)
            for name, m in self._models.items()
        }
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["_models"] = {
            name: make_model(P, R, offset)
            for name, (P, R, offset) in state["_models"].items()
        }
        if "latents" in state:
            state["latents"] = read_only(state["latents"])
        state["_r_source"] = {k: read_only(v) for k, v in state["_r_source"].items()}
        state["_pair_maps"] = {
            k: tuple(map(read_only, v)) for k, v in state.get("_pair_maps", {}).items()
        }
        state.setdefault("_mapped", {})
        self.__dict__.update(state)
        self._writer = threading.Lock()

    # ----------------------------------------------------------- save, load

    def save(self, path: Path, *, key: bytes | None = None) -> None:
        """Write the index to one file at ``path``, atomically.

        The file holds the gallery's latents (or the FAISS index), the
        reference statistics of CSLS and the weights of the space the index
        was built with, with a SHA-256 checksum over all of it (an
        HMAC-SHA256 signature with a ``key``, as `LatentSpace.save`): `load`
        needs no space. Keep it next to the space it was built from.

        Parameters
        ----------
        path : str or os.PathLike
        key : bytes, optional
            Sign the file under this secret key (see docs/reliability.md).
        """
        from .._files import index_file

        index_file.save(self, path, key)

    @staticmethod
    def load(path: Path, *, key: bytes | None = None) -> GalleryIndex:
        """Read an index written by `save` (a `GalleryIndex` or a
        `latentspace.FaissIndex`, as saved).

        The file is treated as untrusted (see docs/reliability.md): FAISS
        parses its index only after the checksum matched, and a plain
        checksum can be recomputed by whoever edits the file, so load a
        FAISS index from a source you do not trust only if it is signed.

        Parameters
        ----------
        path : str or os.PathLike
            A regular file.
        key : bytes, optional
            The key the file was signed with; required for a signed file,
            and a file without a signature is then refused.

        Raises
        ------
        SpaceFileError
            A ``ValueError``: the file is truncated, corrupted, edited, not
            a saved index, or its signature does not match ``key``.
        """
        from .._files import index_file

        return index_file.load(path, GalleryIndex._backends, key)

    # ---------------------------------------------------------------- search

    def add_reference(self, source: str, features: ArrayLike) -> GalleryIndex:
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
        R = self._through_map(source, self._reference_latents(source, features))
        r_source = neighbourhood(self._gallery(source), R, self.csls_k,
                                 self._batch_size)
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
        self, source: str, queries: ArrayLike, *, k: int = 10, method: str = "csls",
        batch_size: int | None = None,
        callback: Callable[[int, int], object] | None = None,
    ) -> SearchResult:
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
        callback = check_callback(callback)
        k = check_k(k, len(self))
        method = check_method(method)
        batch_size = check_batch_size(batch_size) or self._batch_size
        Q, one = unit_latents(self._models, self.dtype, source, queries, "queries")
        Q = self._through_map(source, Q)
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
            self._gallery(source),
            k,
            method,
            self.csls_k,
            self._r_source.get(source),
            batch_size,
            callback,
        )


GalleryIndex._backends[GalleryIndex.backend] = GalleryIndex


def check_callback(callback):
    if callback is not None and not callable(callback):
        raise InvalidParameterError(
            f"callback must be callable or None, got {callback!r}"
        )
    return callback

