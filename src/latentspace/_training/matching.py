# SPDX-License-Identifier: BSD-3-Clause
"""Correspondences between two models' unpaired rows (self-learning).

Two recipes, both from VecMap (Artetxe, Labaka and Agirre 2018) and both
returning pairs of row numbers, which the closed form then fits like known
pairs (the maths and the measured limits are in docs/matching.md):

- `refine_pairs`: a few hundred known pairs and pools of rows with no known
  partner. Rounds of: fit on the known and pseudo pairs, then take the mutual
  CSLS nearest neighbours among the pools as the next pseudo pairs. Some known
  pairs are planted in the pools as checks; the pseudo pairs are kept only if
  the checks' ranks improved significantly, so that pools sharing no items
  cannot make the space worse.
- `zero_pair_dictionary`: no known pair. Each model is PCA-whitened; an
  initial dictionary comes from every item's sorted similarity profile to its
  own pool (which does not depend on the model's coordinates), then
  stochastic dictionary induction with orthogonal Procrustes. A restart
  succeeds when most items are mutual nearest neighbours under the learned
  map; when no restart does, the models are reported as not aligned.

Every similarity matrix here is dense, ``n_a x n_b`` float32: the pools are
limited to `MAX_POOL_PRODUCT` entries.
"""

import warnings
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import scipy.linalg

from .cca import svd
from .._exceptions import AlignmentNotFoundError, DimensionWarning, InvalidParameterError
from .._validation import as_rows, check_finite, unknown_model

__all__ = ["Matching", "matched_data", "refine_pairs", "zero_pair_dictionary"]

# n_a * n_b of the largest pools matched (two float32 matrices of this many
# entries are held at once: 3.2 GB).
MAX_POOL_PRODUCT = 400_000_000
# CSLS neighbourhood size.
_CSLS_K = 10


class Matching(NamedTuple):
    """What the search for correspondences found (`TrainingResult.matching`).

    Attributes
    ----------
    method : str
        ``"refine"`` (from known pairs) or ``"zero-pair"`` (from none).
    accepted : bool
        Whether the pairs found are used: for "refine", whether the planted
        check pairs ranked significantly better after the rounds; for
        "zero-pair", whether the criterion reached its threshold.
    n_pairs : int
        Pairs found in the pools (pseudo pairs), used only if accepted.
    criterion : float
        "refine": the one-sided z score of the check pairs' improvement
        (accepted at 3); "zero-pair": the fraction of items that are mutual
        CSLS nearest neighbours under the learned map (accepted at 0.75).
    rounds : int
        Rounds of the accepted (or best) run.
    history : tuple of dict
        Per round figures (pseudo pairs, their stability, the checks' ranks
        or the mutual neighbour rate).
    """

    method: str
    accepted: bool
    n_pairs: int
    criterion: float
    rounds: int
    history: tuple


# ------------------------------------------------------------------ helpers


def _unit(Z):
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-30)


def _mean_top(S, K):
    """Mean of the ``K`` largest entries of every row of ``S``."""
    n = S.shape[1]
    K = min(K, n)
    return np.partition(S, n - K, axis=1)[:, n - K:].mean(axis=1)


def _csls_neighbours(ZA, ZB):
    """CSLS nearest neighbours both ways between unit rows: ``(fwd, bwd, S,
    r_a)`` with ``S = 2 ZA ZB' - r_b`` (a row's ranking is CSLS's) and
    ``r_a`` the term that completes CSLS down a column."""
    S = ZA @ ZB.T
    r_a = _mean_top(S, _CSLS_K)
    St = ZB @ ZA.T
    r_b = _mean_top(St, _CSLS_K)
    St *= 2
    St -= r_a[None, :]
    bwd = St.argmax(axis=1)
    del St
    S *= 2
    S -= r_b[None, :]
    return S.argmax(axis=1), bwd, S, r_a


def _top_candidates(S, T):
    """Per row of ``S``: the indices and values of its ``T`` largest entries
    (unsorted) and the mean of its `_CSLS_K` largest."""
    n = S.shape[1]
    T = max(min(T, n), min(_CSLS_K, n))
    idx = np.argpartition(S, n - T, axis=1)[:, n - T:]
    values = np.take_along_axis(S, idx, axis=1)
    K = min(_CSLS_K, n)
    r = np.partition(values, T - K, axis=1)[:, T - K:].mean(axis=1)
    return idx, values, r


def _csls_candidates(ZA, ZB, T=64):
    """For each row of ZA its ``T`` best rows of ZB by CSLS, best first (among
    its ``T`` nearest by cosine), and the same for each row of ZB."""
    fi, fv, r_a = _top_candidates(ZA @ ZB.T, T)
    bi, bv, r_b = _top_candidates(ZB @ ZA.T, T)
    fs = 2 * fv - r_b[fi] - r_a[:, None]
    bs = 2 * bv - r_a[bi] - r_b[:, None]
    fo = np.argsort(-fs, axis=1)
    bo = np.argsort(-bs, axis=1)
    return np.take_along_axis(fi, fo, 1), np.take_along_axis(bi, bo, 1)


# ------------------------------------------------------- from known pairs


def refine_pairs(fit, XA, XB, known, pools, *, rounds=10, check=0.2, min_check=10,
                 stable=0.98, accept_z=3.0, seed=0):
    """Pseudo pairs among the pools, from known pairs (self-learning).

    Parameters
    ----------
    fit : callable
        ``fit(rows_a, rows_b)`` fits a space on the pairs ``XA[rows_a[i]] <->
        XB[rows_b[i]]`` and returns a function ``latents(side, rows)`` giving
        the unit latents of rows of ``XA`` (side 0) or ``XB`` (side 1).
    XA, XB : ndarray
        Every row of each model: the known pairs and the pools.
    known : (ndarray, ndarray)
        Rows of the known pairs.
    pools : (ndarray, ndarray)
        Rows with no known partner.
    rounds : int
        At most this many refits.
    check : float
        Share of the known pairs planted in the pools as checks (at least
        ``min_check`` of them, else there is no check and the pseudo pairs
        are always kept).
    stable : float
        Stop once this share of the pseudo pairs is unchanged.
    accept_z : float
        The pseudo pairs are kept if the checks' ``log(1 + rank)`` (both
        directions) fell by at least this many standard errors.

    Returns
    -------
    pairs : (ndarray, ndarray)
        Rows of the pseudo pairs (empty if not accepted).
    matching : Matching
    """
    known_a, known_b = known
    pool_a, pool_b = pools
    rng = np.random.default_rng(seed)
    n_known = len(known_a)
    n_check = int(round(check * n_known))
    if n_check < min_check or n_known - n_check < min_check:
        n_check = 0
    order = rng.permutation(n_known)
    checks, fitted = order[:n_check], order[n_check:]
    rows_a = np.concatenate([pool_a, known_a[checks]])
    rows_b = np.concatenate([pool_b, known_b[checks]])
    na, nb = len(pool_a), len(pool_b)
    latents = fit(known_a[fitted], known_b[fitted])
    history, previous, first_ranks = [], None, None
    found_a = found_b = np.zeros(0, np.intp)
    for r in range(rounds + 1):
        fwd, bwd, S, r_a = _csls_neighbours(latents(0, rows_a), latents(1, rows_b))
        ranks = _check_ranks(S, r_a, na, nb, n_check)
        first_ranks = ranks if first_ranks is None else first_ranks
        del S
        a = np.flatnonzero(bwd[fwd] == np.arange(len(fwd)))
        a = a[(a < na) & (fwd[a] < nb)]
        key = a.astype(np.int64) * nb + fwd[a]
        same = 0.0 if previous is None else (
            len(np.intersect1d(key, previous)) / max(len(key), 1))
        history.append({"round": r, "pseudo_pairs": len(a), "unchanged": same,
                        "check_top1": float(np.mean(ranks == 0)) if n_check else None})
        found_a, found_b = pool_a[a], pool_b[fwd[a]]
        if r == rounds or (previous is not None and same >= stable):
            break
        previous = key
        latents = fit(np.concatenate([known_a[fitted], found_a]),
                      np.concatenate([known_b[fitted], found_b]))
    if n_check:
        gain = first_ranks - ranks
        spread = float(gain.std(ddof=1)) / np.sqrt(len(gain))
        z = float(gain.mean()) / max(spread, 1e-12)
        accepted = z >= accept_z
    else:
        z, accepted = float("nan"), True
    matching = Matching("refine", bool(accepted), len(found_a), z, len(history),
                        tuple(history))
    if not accepted:
        found_a = found_b = np.zeros(0, np.intp)
    return (found_a, found_b), matching


def _check_ranks(S, r_a, na, nb, n_check):
    """``log(1 + rank)`` of the planted check pairs (rows ``na..``, columns
    ``nb..``) in both directions, ties counted for the truth."""
    if n_check == 0:
        return np.zeros(0)
    h = np.arange(n_check)
    true = S[na + h, nb + h]
    rank_ab = (S[na:na + n_check] > true[:, None]).sum(axis=1)
    column = S[:, nb:nb + n_check] - r_a[:, None]  # CSLS down the columns
    rank_ba = (column > (true - r_a[na + h])[None, :]).sum(axis=0)
    return np.log1p(np.concatenate([rank_ab, rank_ba]))


# ------------------------------------------------------------ from none


# Restarts of `zero_pair_dictionary`: dimensions kept by the PCA whitening for
# the initial dictionary and for the self-learning.
RESTARTS = ({"init_dim": 256, "dim": 64}, {"init_dim": 128, "dim": 64},
            {"init_dim": 256, "dim": 48})
# Criterion of success: the share of items that are mutual CSLS neighbours.
THRESHOLD = 0.75


def _pca_whiten(X, dim):
    """Rows of ``X`` centred and PCA-whitened to ``dim`` dimensions, leading
    first (float32)."""
    X = np.asarray(X, np.float64)
    X = X - X.mean(axis=0)
    w, V = scipy.linalg.eigh(X.T @ X)
    top = np.argsort(w)[::-1][:dim]
    w = np.maximum(w[top], w[top[0]] * 1e-12)
    return (X @ (V[:, top] / np.sqrt(w))).astype(np.float32)


def _quadrature(n, quantiles, ends):
    """Positions of a sorted row of ``n`` values and weights such that
    ``sum_j w_j**2 a[p_j] b[p_j]`` approximates ``a . b``: the ``ends``
    largest and smallest positions, the rest evenly spaced, each weighted by
    the square root of the number of positions it stands for."""
    if quantiles >= n:
        return np.arange(n), np.ones(n)
    middle = np.round(np.linspace(ends, n - 1 - ends, quantiles - 2 * ends)).astype(int)
    positions = np.unique(np.concatenate([np.arange(ends), middle,
                                          np.arange(n - ends, n)]))
    edges = np.concatenate([[0], (positions[1:] + positions[:-1] + 1) // 2, [n]])
    return positions, np.sqrt(np.diff(edges))


def _sorted_profiles(Z, quantiles=256, ends=64):
    """Row ``i`` of ``sqrt(Z Z')`` sorted: item ``i``'s similarity profile to
    its own pool, independent of the model's coordinates (sampled at a
    quadrature that preserves dot products), unit length, centred, unit
    length."""
    U, s, _ = svd(np.asarray(Z, np.float64))
    M = ((U * s) @ U.T).astype(np.float32)
    M.sort(axis=1)
    positions, weights = _quadrature(M.shape[1], quantiles, ends)
    P = _unit(M[:, positions].astype(np.float64) * weights)
    P -= P.mean(axis=0)
    return _unit(P).astype(np.float32)


def _dropout_pick(candidates, keep, rng):
    """The best candidate of each row after dropping each with probability
    ``1 - keep``: the first kept one, at rank ``Geometric(keep) - 1``."""
    if keep >= 1:
        return candidates[:, 0]
    rank = np.minimum(rng.geometric(keep, size=len(candidates)) - 1,
                      candidates.shape[1] - 1)
    return candidates[np.arange(len(candidates)), rank]


def _procrustes(A, B):
    U, _, Vt = svd(A.T.astype(np.float64) @ B.astype(np.float64))
    return (U @ Vt).astype(np.float32)


def _self_learn(ZA, ZB, ia, ib, rng, keep=0.1, grow=1.3, final_rounds=6,
                stable=0.995, give_up=0.6, rise=0.01, max_final=30):
    """Stochastic dictionary induction with orthogonal Procrustes.

    Each round maps ``ZA`` onto ``ZB`` by the rotation that best fits the
    dictionary ``(ia, ib)``; every row of either side then picks its CSLS
    neighbour on the other side after dropping candidates with probability
    ``1 - keep`` (``keep`` grows by ``grow`` a round up to 1), and the union
    is the next dictionary. At ``keep = 1`` it stops when the neighbours are
    ``stable``, after ``final_rounds`` rounds once the mutual neighbour rate
    reaches ``give_up``, or, below it, as soon as that rate rises by less
    than ``rise`` a round (at most ``max_final`` rounds).
    """
    nA, nB = len(ZA), len(ZB)
    previous, at_one, history = None, 0, []
    while True:
        W = _procrustes(ZA[ia], ZB[ib])
        fi, bi = _csls_candidates(ZA @ W, ZB)
        ia = np.concatenate([np.arange(nA), _dropout_pick(bi, keep, rng)])
        ib = np.concatenate([_dropout_pick(fi, keep, rng), np.arange(nB)])
        same = 0.0 if previous is None else float(np.mean(fi[:, 0] == previous))
        previous = fi[:, 0]
        a = np.flatnonzero(bi[fi[:, 0], 0] == np.arange(nA))
        rate = len(a) / min(nA, nB)
        history.append({"keep": keep, "unchanged": same, "mutual_rate": rate})
        if keep >= 1:
            at_one += 1
            rising = len(history) > 1 and rate - history[-2]["mutual_rate"] > rise
            if same >= stable or (rate >= give_up and at_one >= final_rounds):
                break
            if rate < give_up and (not rising or at_one >= max_final):
                break
        keep = min(1.0, keep * grow)
    return a, fi[a, 0], rate, history


def zero_pair_dictionary(XA, XB, *, known=None, seed=0, n_init=10_000):
    """Pairs of rows of ``XA`` and ``XB`` found with no known correspondence.

    Restarts (`RESTARTS`) until one's criterion, the share of items that are
    mutual CSLS nearest neighbours under the learned map, reaches
    `THRESHOLD`. The initial dictionary comes from the sorted similarity
    profiles of at most ``n_init`` random rows of each model, or is
    ``known`` (a few known pairs, as two arrays of rows).

    Returns
    -------
    pairs : (ndarray, ndarray)
        The mutual-neighbour dictionary of the first successful restart
        (empty if none succeeded).
    matching : Matching
        Its figures, or those of the best restart if none succeeded.
    """
    top = max(r["init_dim"] for r in RESTARTS)
    WA, WB = _pca_whiten(XA, top), _pca_whiten(XB, top)
    best = None
    for i, restart in enumerate(RESTARTS):
        rng = np.random.default_rng([seed, i])
        if known is not None:
            ia, ib = known
        else:
            d = restart["init_dim"]
            sa = rng.permutation(len(XA))[:n_init]
            sb = rng.permutation(len(XB))[:n_init]
            fi, bi = _csls_candidates(_sorted_profiles(_unit(WA[sa, :d])),
                                      _sorted_profiles(_unit(WB[sb, :d])), T=16)
            ia = np.concatenate([sa, sa[bi[:, 0]]])
            ib = np.concatenate([sb[fi[:, 0]], sb])
        d = restart["dim"]
        a, b, rate, history = _self_learn(_unit(WA[:, :d]), _unit(WB[:, :d]),
                                          ia, ib, rng)
        matching = Matching("zero-pair", rate >= THRESHOLD, len(a), rate,
                            len(history), tuple(history))
        if matching.accepted:
            return (a, b), matching
        if best is None or rate > best.criterion:
            best = matching
    empty = np.zeros(0, np.intp)
    return (empty, empty), best


# ------------------------------------------------ train_projections(refine=)

# Known pairs from which `refine_pairs` starts (fewer: they seed
# `zero_pair_dictionary` instead).
MIN_KNOWN_PAIRS = 100


def matched_data(space, data, unpaired, dtype, dim, regularization):
    """The data of ``train_projections(data, unpaired=unpaired, refine=True)``:
    ``(data, unpaired, matching)`` with the pairs found added to ``data`` and
    removed from ``unpaired``.

    ``space`` provides the registered models, and its type the scratch
    spaces that `refine_pairs` fits (closed form, ``regularization``, ``dim``
    latent dimensions).
    """
    names, XA, XB, known_a, known_b = _two_models(space, data, unpaired, dtype)
    na, nb = len(XA) - len(known_a), len(XB) - len(known_b)
    if na * nb > MAX_POOL_PRODUCT:
        raise InvalidParameterError(
            f"refine=True compares every unpaired row of {names[0]!r} ({na}) with "
            f"every one of {names[1]!r} ({nb}): {na * nb:,} similarities, more than "
            f"{MAX_POOL_PRODUCT:,}; pass a sample of the pools"
        )
    pools = (np.arange(len(known_a), len(XA)), np.arange(len(known_b), len(XB)))
    known = (np.arange(len(known_a)), np.arange(len(known_b)))
    if len(known_a) >= MIN_KNOWN_PAIRS:
        fit = _scratch_fit(type(space), names, XA, XB, dtype, dim, regularization)
        (pa, pb), matching = refine_pairs(fit, XA, XB, known, pools)
    else:
        (pa, pb), matching = zero_pair_dictionary(
            XA, XB, known=known if len(known_a) else None)
        if not matching.accepted and not len(known_a):
            raise AlignmentNotFoundError(
                f"no correspondence found between the unpaired rows of {names[0]!r} "
                f"and {names[1]!r}: at best {matching.criterion:.0%} of the items are "
                f"mutual nearest neighbours under the learned map, below the "
                f"{THRESHOLD:.0%} of an alignment (models of different kinds, "
                "collections that share few items, or too few items); the space is "
                "unchanged",
                matching,
            )
        # Pairs of rows of the pools only (the known pairs are kept as known).
        keep = (pa >= len(known_a)) & (pb >= len(known_b))
        pa, pb = pa[keep], pb[keep]
        if not matching.accepted:
            pa = pb = np.zeros(0, np.intp)
    left_a = np.setdiff1d(pools[0], pa)
    left_b = np.setdiff1d(pools[1], pb)
    rows_a = np.concatenate([known[0], pa])
    rows_b = np.concatenate([known[1], pb])
    return ({names[0]: XA[rows_a], names[1]: XB[rows_b]},
            {names[0]: XA[left_a], names[1]: XB[left_b]}, matching)


def _two_models(space, data, unpaired, dtype):
    """``(names, XA, XB, n_known)``: the two models' rows, known pairs first,
    checked; raise unless refine= applies."""
    if not isinstance(unpaired, Mapping) or len(unpaired) != 2:
        raise InvalidParameterError(
            "refine=True finds pairs between the unpaired rows of two models: "
            "pass unpaired={name: rows} for exactly two models"
        )
    names = list(unpaired)
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise InvalidParameterError(
            "refine=True takes the known pairs as a mapping of arrays (or None), "
            f"got {type(data).__name__}"
        )
    if data and set(data) != set(names):
        raise InvalidParameterError(
            f"refine=True: the known pairs must be of the models of unpaired "
            f"({names[0]!r}, {names[1]!r}), got {sorted(map(str, data))}"
        )
    arrays = []
    for name in names:
        width = space.models.get(name)
        if width is None:
            raise unknown_model(name, space.models)
        parts = []
        for what, source in (("data", data), ("unpaired rows", unpaired)):
            if name not in source:
                continue
            rows = as_rows(source[name], width, dtype, f"{what} for model {name!r}")
            rows = np.atleast_2d(rows)
            check_finite(rows, f"{what} for model {name!r}")
            parts.append(rows)
        arrays.append(parts)
    known = [parts[0] if len(parts) == 2 else parts[0][:0] for parts in arrays]
    if len(known[0]) != len(known[1]):
        raise InvalidParameterError(
            f"known pairs must have the same number of rows, got {len(known[0])} "
            f"for {names[0]!r} and {len(known[1])} for {names[1]!r}"
        )
    XA, XB = (np.concatenate(parts) for parts in arrays)
    return names, XA, XB, known[0], known[1]


def _scratch_fit(space_type, names, XA, XB, dtype, dim, regularization):
    """`refine_pairs`'s ``fit``: a closed-form space of the two models on
    the given pairs, in a scratch space."""

    def fit(rows_a, rows_b):
        scratch = space_type(dim, dtype=dtype, seed=0)
        scratch.register(names[0], XA.shape[1])
        scratch.register(names[1], XB.shape[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DimensionWarning)
            scratch.train_projections({names[0]: XA[rows_a], names[1]: XB[rows_b]},
                                      solver="cca", regularization=regularization)

        def latents(side, rows):
            X = XA if side == 0 else XB
            Z = scratch.project(names[side], X[rows]).astype(np.float32)
            return _unit(Z)

        return latents

    return fit
