# SPDX-License-Identifier: BSD-3-Clause
"""How well a space aligns its models: cross-model retrieval and reconstruction.

On aligned held-out data (row ``i`` of every model's array is the same item):

- **retrieval**, for every ordered pair of models ``A -> B``: project the
  items of ``A`` and of ``B`` into the space and, for each ``A`` item, rank
  all ``B`` items (by cosine similarity or CSLS, see `LatentSpace.search`).
  ``rank`` is the position of the paired ``B`` item (1 = the top hit; ties
  go to the lower index, as in `LatentSpace.search`). Reported: top-``k``
  accuracy (the share of items whose pair ranks ``<= k``), the mean
  reciprocal rank ``mean(1 / rank)`` and the median rank; and the
  ``translation_r2`` of ``translate(A, B, x_A)`` against ``x_B``.
- **reconstruction** ``R^2`` of every model: ``retrieve(m, project(m, x))``
  against ``x``, ``1 - sum((x - x_hat)^2) / sum((x - mean(x))^2)`` over all
  entries (scikit-learn's ``r2_score`` with ``multioutput="variance_weighted"``).

Everything is computed in blocks of rows: 100 000 items never build a
100 000 x 100 000 matrix.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ._exceptions import InvalidParameterError
from ._search.blocks import normalise, unit_latents
from ._model import refusal
from ._search.scoring import check_batch_size, check_method, score_blocks
from ._training.data import training_data
from ._validation import check_int

if TYPE_CHECKING:
    from ._space import LatentSpace
    from ._typing import Data, IntArray

__all__ = [
    "Evaluation",
    "evaluate",
    "reconstruction_r2",
    "retrieval_ranks",
    "retrieval_scores",
]

_ROWS = 8192  # rows per block of reconstruction


def _check_ks(k):
    if isinstance(k, numbers.Integral) and not isinstance(k, bool):
        k = (k,)
    if isinstance(k, str):
        k = None  # not a sequence of numbers
    try:
        values = list(k)
    except TypeError:
        raise InvalidParameterError(
            f"k must be a positive integer or a sequence of them, got {k!r}"
        ) from None
    ks = tuple(check_int("k", value, 1) for value in values)
    if not ks:
        raise InvalidParameterError("k must not be empty")
    return tuple(sorted(set(ks)))


def _ranks(Q, G, method, csls_k, batch_size, maps=None):
    """Rank (1-based) of gallery row ``i`` for query row ``i``; ``maps``:
    the pair map ``(M_source, M_target)`` through which they are compared."""
    if maps is not None:
        Q, G = normalise(Q @ maps[0]), normalise(G @ maps[1])
    ranks = np.empty(len(Q), dtype=np.int64)
    for start, T, _ in score_blocks(Q, G, method, csls_k, None, batch_size):
        rows = np.arange(len(T))
        items = start + rows
        paired = T[rows, items][:, None]
        better = np.count_nonzero(T > paired, axis=1)
        # Ties rank as in `search`: the lower index first.
        ties = T == paired
        ties_before = np.count_nonzero(
            ties & (np.arange(T.shape[1]) < items[:, None]), axis=1
        )
        ranks[start : start + len(T)] = 1 + better + ties_before
    return ranks


def _prepare(space, data, k, method, csls_k, batch_size, min_models):
    """Checked arguments, aligned blocks and unit latents of every model."""
    ks = _check_ks(k)
    method = check_method(method)
    csls_k = check_int("csls_k", csls_k, 1)
    batch_size = check_batch_size(batch_size)
    snapshot, names, blocks = _aligned(space, data, min_models)
    latents = {
        name: unit_latents(snapshot.models, space.dtype, name, block)[0]
        for name, block in zip(names, blocks)
    }
    return ks, method, csls_k, batch_size, snapshot, names, blocks, latents


def _aligned(space, data, min_models):
    """``(snapshot, names, blocks)``: the space's snapshot and the checked
    aligned blocks of ``data``."""
    snapshot = space._snapshot
    models = snapshot.models
    with training_data(data, models, space.dtype, min_models=min_models) as source:
        blocks, observed = source.samples([None] * len(source.names))
    if observed is not None:  # a masked array's rows with masked entries
        name = source.names[int(np.flatnonzero(~observed.all(axis=0))[0])]
        raise InvalidParameterError(
            f"data for model {name!r} has masked entries: scores need every item "
            "of every model (fill them, or drop their rows from every model)"
        )
    return snapshot, source.names, blocks


def retrieval_ranks(
    space: LatentSpace,
    source: str,
    queries: ArrayLike,
    target: str,
    gallery: ArrayLike,
    *,
    method: str = "csls",
    csls_k: int = 10,
    batch_size: int | None = None,
) -> IntArray:
    """Rank of the paired gallery item of every query.

    Parameters
    ----------
    space : LatentSpace
    source, target : str
        The models of ``queries`` and of ``gallery``.
    queries : array-like of shape (n, d_source)
    gallery : array-like of shape (n, d_target)
        Aligned with ``queries``: row ``i`` is the pair of query ``i``.
    method : {"csls", "cosine"}, default="csls"
    csls_k : int, default=10
    batch_size : int, optional
        Query rows per block of scores.

    Returns
    -------
    ndarray of int64, shape (n,)
        1 for a pair that is the top hit; ties go to the lower index.
    """
    method = check_method(method)
    csls_k = check_int("csls_k", csls_k, 1)
    batch_size = check_batch_size(batch_size)
    snapshot, _, _ = _aligned(space, {source: queries, target: gallery}, 2)
    Q, _ = unit_latents(snapshot.models, space.dtype, source, queries, "queries")
    G, _ = unit_latents(snapshot.models, space.dtype, target, gallery, "gallery")
    maps = snapshot.pair_maps_to(target).get(source)
    return _ranks(Q, G, method, csls_k, batch_size, maps)


def _summary(ranks, ks):
    out = {f"top{k}": float(np.mean(ranks <= k)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks))
    out["median_rank"] = float(np.median(ranks))
    return out


def retrieval_scores(
    space: LatentSpace, data: Data, *, k: int | Iterable[int] = (1, 10),
    method: str = "csls", csls_k: int = 10, batch_size: int | None = None,
) -> dict[tuple[str, str], dict[str, float]]:
    """Cross-model retrieval scores for every ordered pair of models.

    Parameters
    ----------
    space : LatentSpace
    data : mapping of str to array-like of shape (n, d_m)
        Aligned items of at least two registered models.
    k : int or sequence of int, default=(1, 10)
        Cut-offs of the top-``k`` accuracies.
    method : {"csls", "cosine"}, default="csls"
    csls_k : int, default=10
    batch_size : int, optional

    Returns
    -------
    dict
        ``{(source, target): {"top1": ..., "top10": ..., "mrr": ...,
        "median_rank": ...}}``, values in [0, 1] except the median rank.
    """
    ks, method, csls_k, batch_size, snapshot, names, blocks, latents = _prepare(
        space, data, k, method, csls_k, batch_size, 2
    )
    return {
        (a, b): _summary(_ranks(latents[a], latents[b], method, csls_k, batch_size,
                                snapshot.pair_maps_to(b).get(a)), ks)
        for a in names
        for b in names
        if a != b
    }


def _r2(sse, sst):
    if sst == 0:
        return 1.0 if sse == 0 else 0.0
    return float(1.0 - sse / sst)


def _r2_blocks(predict, X):
    """R^2 of ``predict(rows)`` against ``X``, computed in blocks of rows."""
    mean = X.mean(axis=0, dtype=np.float64)
    sse = sst = 0.0
    for start in range(0, len(X), _ROWS):
        rows = slice(start, start + _ROWS)
        block = X[rows]
        residual = predict(rows) - block
        sse += float(np.einsum("ij,ij->", residual, residual, dtype=np.float64))
        centred = block - mean
        sst += float(np.einsum("ij,ij->", centred, centred, dtype=np.float64))
    return _r2(sse, sst)


def _map(affine_map, x, name, what):
    out = affine_map(x)
    if out is None:  # x is a validated block: only overflow remains
        raise refusal(x, what, name, x.dtype)
    return out


def _reconstruction(models, names, blocks):
    return {
        name: _r2_blocks(
            lambda rows, m=models[name], X=X, n=name: _map(
                m.retrieve, _map(m.project, X[rows], n, "features"), n, "latent"
            ),
            X,
        )
        for name, X in zip(names, blocks)
    }


def _translation(models, names, blocks):
    X = dict(zip(names, blocks))
    return {
        (a, b): _r2_blocks(
            lambda rows, A=models[a], B=models[b], Xa=X[a], a=a, b=b: _map(
                B.retrieve, _map(A.project, Xa[rows], a, "features"), b, "latent"
            ),
            X[b],
        )
        for a in names
        for b in names
        if a != b
    }


def reconstruction_r2(space: LatentSpace, data: Data) -> dict[str, float]:
    """R^2 of every model's reconstruction ``retrieve(m, project(m, x))``.

    Parameters
    ----------
    space : LatentSpace
    data : mapping of str to array-like of shape (n, d_m)
        Items of one or more registered models.

    Returns
    -------
    dict
        ``{name: r2}``; 1 is perfect, 0 is as good as predicting the mean.
    """
    snapshot, names, blocks = _aligned(space, data, 1)
    return _reconstruction(snapshot.models, names, blocks)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The scores of `evaluate`.

    Attributes
    ----------
    n_items : int
    method : str
        The search method of the retrieval scores.
    k : tuple of int
    retrieval : dict
        ``{(source, target): {"top1", ..., "mrr", "median_rank",
        "translation_r2"}}`` for every ordered pair.
    reconstruction_r2 : dict
        ``{name: r2}``.
    """

    n_items: int
    method: str
    k: tuple[int, ...]
    retrieval: dict[tuple[str, str], dict[str, float]]
    reconstruction_r2: dict[str, float]

    def mean(self, metric: str) -> float:
        """The mean of one retrieval ``metric`` (e.g. ``"top1"``) over all pairs."""
        values = [scores[metric] for scores in self.retrieval.values()]
        if not values:
            raise ValueError("no pairs of models were evaluated")
        return float(np.mean(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers; pairs are keyed ``"source -> target"``."""
        return {
            "n_items": self.n_items,
            "method": self.method,
            "k": list(self.k),
            "retrieval": {
                f"{a} -> {b}": dict(s) for (a, b), s in self.retrieval.items()
            },
            "reconstruction_r2": dict(self.reconstruction_r2),
        }

    def __str__(self) -> str:
        heads = [f"top{k}" for k in self.k] + ["mrr", "median_rank", "translation_r2"]
        labels = [f"{a} -> {b}" for a, b in self.retrieval] + ["mean"]
        width = max(map(len, labels + ["pair"]))
        lines = [
            (
                f"Cross-model retrieval on {self.n_items} aligned items "
                f"(method={self.method}; rank of the paired item among all "
                f"{self.n_items})"
            ),
            f"{'A -> B':<{width}}" + "".join(f"  {h:>14}" for h in heads),
        ]
        rows = list(self.retrieval.values())
        if rows:
            rows.append({h: self.mean(h) for h in heads})
        for label, scores in zip(labels, rows):
            cells = []
            for h in heads:
                value = scores[h]
                cells.append(
                    f"{value:14.1f}" if h == "median_rank" else f"{value:14.3f}"
                )
            lines.append(f"{label:<{width}}" + "".join(f"  {c}" for c in cells))
        lines.append(
            f"chance: top-k = k/{self.n_items}, mrr ~ {_chance_mrr(self.n_items):.4f}"
        )
        lines.append("")
        lines.append("Reconstruction R^2 (retrieve(m, project(m, x)) against x):")
        for name, r2 in self.reconstruction_r2.items():
            lines.append(f"  {name:<{width}}  {r2:8.3f}")
        return "\n".join(lines)


def _chance_mrr(n):
    return float(np.sum(1.0 / np.arange(1, n + 1)) / n)


def evaluate(
    space: LatentSpace, data: Data, *, k: int | Iterable[int] = (1, 10),
    method: str = "csls", csls_k: int = 10, batch_size: int | None = None,
) -> Evaluation:
    """Retrieval scores of every ordered pair and reconstruction of every model.

    Parameters
    ----------
    space : LatentSpace
    data : mapping of str to array-like of shape (n, d_m)
        Aligned held-out items (row ``i`` of every array is the same item)
        of one or more registered models; pairs need two.
    k : int or sequence of int, default=(1, 10)
        Cut-offs of the top-``k`` accuracies.
    method : {"csls", "cosine"}, default="csls"
        How gallery items are ranked (see `LatentSpace.search`); with CSLS
        the evaluation items of the source model are its reference set.
    csls_k : int, default=10
    batch_size : int, optional
        Query rows per block of scores (default: about 32 MiB per block).

    Returns
    -------
    Evaluation
    """
    ks, method, csls_k, batch_size, snapshot, names, blocks, latents = _prepare(
        space, data, k, method, csls_k, batch_size, 1
    )
    models = snapshot.models
    translation = _translation(models, names, blocks)
    retrieval = {}
    for a in names:
        for b in names:
            if a != b:
                ranks = _ranks(latents[a], latents[b], method, csls_k, batch_size,
                               snapshot.pair_maps_to(b).get(a))
                retrieval[a, b] = {
                    **_summary(ranks, ks),
                    "translation_r2": translation[a, b],
                }
    reconstruction = _reconstruction(models, names, blocks)
    return Evaluation(len(blocks[0]), method, ks, retrieval, reconstruction)
