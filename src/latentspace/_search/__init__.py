# SPDX-License-Identifier: BSD-3-Clause
"""Cross-model search: queries embedded by one model, a gallery by another.

`LatentSpace.search` and `LatentSpace.index` build an index of the gallery
and search it; the methods and the scoring are in `latentspace._search.scoring`.

Backends
--------
`GalleryIndex` scans the gallery exactly (BLAS GEMM in blocks, no
dependency). ``space.index(..., backend="faiss")`` gives a
`latentspace.FaissIndex`, searched by FAISS (flat, HNSW or IVF), for
galleries of millions of items.
"""

from collections.abc import Mapping

from .._exceptions import InvalidParameterError
from .faiss_index import FaissIndex
from .exact_index import GalleryIndex, check_callback
from .._monitor import bar_callback
from .scoring import check_method
from .._validation import check_int

__all__ = ["BACKENDS", "make_index", "search"]

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
    callback = check_callback(callback)
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
