# SPDX-License-Identifier: BSD-3-Clause
"""Closed-form regularised multi-view CCA (MAXVAR generalised CCA) on statistics.

Given the `Statistics` of ``M >= 2`` aligned models (feature means and the
centred Gram matrix ``G`` with blocks ``G_ml``), `fit_cca` returns per-model
projections ``P_m`` whose latents ``z_m = (x_m - mu_m) @ P_m``

1. span the directions on which the models agree most (MAXVAR GCCA, which for
   two models is exactly regularised CCA),
2. are ordered by how strongly the models agree on them, and
3. are weighted by that agreement, so that cosine similarity in the space
   favours the shared directions.

The maths, with ``r_m = regularization_m * trace(G_mm) / d_m``:

- Whitening: ``B_m`` with ``B_m.T (G_mm + r_m I) B_m = I`` (Cholesky, or an
  eigendecomposition if the block is singular and ``regularization == 0``).
- ``T`` is the matrix of whitened cross-Grams, ``T_ml = B_m.T G_ml B_l`` and
  ``T_mm = I``; its leading eigenvectors ``v = [v_1; ...; v_M]`` are the
  MAXVAR solution (the generalised eigenproblem ``C w = lambda D w`` of MCCA
  with ``C`` the regularised Gram and ``D`` its block diagonal). For ``M = 2``
  its eigenvalues are ``1 +- rho`` with ``rho`` the canonical correlations,
  and the SVD of ``T_12`` gives the same vectors at a fraction of the cost.
- Direction ``j`` of model ``m`` is ``p_mj = B_m v_mj / ||v_mj||``: unit
  (regularised) variance in every model.
- Agreement: the correlations ``rho_mlj = p_mj.T G_ml p_lj`` of every pair,
  averaged over the pairs (``agreement_j``, clipped at zero). ``rho`` is a
  regularised correlation (the variances in its denominator include the
  ridge), which discounts directions of little variance. Dimensions are
  sorted by agreement, and column ``j`` of every ``P_m`` is ``p_mj *
  agreement_j``: for two models the canonical correlations themselves, so
  that cosine similarity weights dimension ``j`` by ``rho_j ** 2``. (A
  one-factor fit of per-model loadings, the earlier weighting, cost three
  models up to 15 points of top-1 at k = 256 on real text embeddings: its
  weak dimensions' loadings do not decay.)

With missing views (some samples observed by only some models) the whitened
matrix ``T`` is that of generalised CCA with missing rows (`consensus_blocks`).
`fit_to_frozen` solves for models that must land on the space of frozen ones.

The reconstructions ``R_m`` are the least-squares inverses of the projections
on the training data, ``R_m = argmin ||Z_m R - X_m||`` with ``Z_m = X_m P_m``
(centred), computed from the same statistics (`least_squares_inverse`).
"""

import numpy as np
import scipy.linalg

from .._monitor import Run
from .statistics import ridge, slices

__all__ = [
    "canonicalise",
    "fit_cca",
    "fit_to_frozen",
    "least_squares_inverse",
    "pair_maps",
    "run",
    "svd",
]

def _whitener(block, shift):
    """``B`` (d, r) with ``B.T @ (block + shift * I) @ B = I``."""
    C = block + shift * np.eye(len(block), dtype=block.dtype)
    try:
        L = scipy.linalg.cholesky(C, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        pass
    else:
        if np.all(np.abs(np.diag(L)) > 0):
            # B = inv(L).T, so that B.T @ C @ B = inv(L) L L.T inv(L).T = I
            inverse, info = scipy.linalg.lapack.get_lapack_funcs("trtri", (L,))(
                L, lower=1
            )
            if info == 0 and np.isfinite(inverse).all():
                return np.ascontiguousarray(inverse.T)
    # Singular block (no ridge): whiten the range, drop the null space.
    values, vectors = scipy.linalg.eigh(C, check_finite=False)
    keep = values > values[-1] * len(C) * np.finfo(C.dtype).eps
    return vectors[:, keep] / np.sqrt(values[keep])


def svd(T):
    """``U, s, Vt`` of ``T`` by LAPACK's gesdd, or by gesvd where gesdd does not
    converge (seen on the whitened cross-covariance of 100 real pairs of
    384-d and 768-d sentence embeddings)."""
    try:
        return scipy.linalg.svd(T, full_matrices=False, check_finite=False)
    except np.linalg.LinAlgError:
        return scipy.linalg.svd(T, full_matrices=False, check_finite=False,
                                lapack_driver="gesvd")


def _pairwise_correlations(grams, widths, directions, shifts, paired):
    """``rho[j, m, l]``: the correlation of models ``m`` and ``l`` on direction
    ``j``, ``p_mj.T G_ml p_lj`` over the (regularised) standard deviations of
    ``p_mj`` and ``p_lj`` on the samples both observed (``paired``; for
    complete data those of the unit-variance directions, one)."""
    M = len(widths)
    k = directions[0].shape[1]
    rho = np.ones((k, M, M))
    for m in range(M):
        for l in range(m + 1, M):
            # diag(P_m.T @ G_ml @ P_l)
            cross = np.einsum(
                "ij,ij->j", directions[m], grams(m, l) @ directions[l]
            ).astype(np.float64)
            if paired is not None:
                scale = np.ones(k)
                for a, b in ((m, l), (l, m)):
                    P = directions[a]
                    # diag(P.T @ (G_ab + s_a I) @ P), G_ab over the shared rows
                    var = np.einsum("ij,ij->j", P, paired(a, b) @ P + shifts[a] * P)
                    scale *= np.sqrt(np.maximum(var.astype(np.float64), 0.0))
                cross = np.divide(cross, scale, out=np.zeros(k), where=scale > 0)
            rho[:, m, l] = rho[:, l, m] = cross
    return rho


def canonical_directions(grams, widths, n_components, regularization, cross=None,
                         diagonal=None, paired=None):
    """Unit-variance MAXVAR directions and their pairwise correlations.

    Parameters
    ----------
    grams : callable
        ``grams(m, l)`` returns the centred Gram block ``G_ml`` (d_m, d_l).
    widths : sequence of int
    n_components : int
        Number of directions wanted; fewer are returned if the whitened
        problem has fewer dimensions.
    regularization : sequence of float
        Every model's relative ridge.
    cross : callable, optional
        ``cross(m, l)`` for ``m != l``: the off-diagonal blocks of ``T`` before
        whitening (default ``grams``; see `consensus_blocks` for missing views).
    diagonal : callable, optional
        ``diagonal(m)``: the diagonal blocks of ``T`` before whitening (default:
        ``T_mm = I``).
    paired : callable, optional
        ``paired(m, l)``: model ``m``'s Gram over the samples it shares with
        ``l``, for the correlations (default: complete data, ``grams(m, m)``).

    Returns
    -------
    directions : list of (d_m, c) ndarray
        ``p_m`` with ``p_m.T (G_mm + r_m I) p_m`` having a unit diagonal.
    rho : (c, M, M) ndarray
        Correlations of every pair on every direction (float64).
    """
    M = len(widths)
    shifts = [ridge(grams(m, m), regularization[m]) for m in range(M)]
    whiteners = [_whitener(grams(m, m), shifts[m]) for m in range(M)]
    ranks = [B.shape[1] for B in whiteners]
    cross = cross or grams
    if M == 2 and diagonal is None:
        # T_12 = B_1.T @ G_12 @ B_2, whose singular triplets are the canonical
        # pairs; the eigenvectors of T are [u; v] / sqrt(2), eigenvalues 1 + s.
        T12 = whiteners[0].T @ cross(0, 1) @ whiteners[1]
        U, _, Vt = svd(T12)
        c = min(n_components, len(_))
        parts = [U[:, :c], Vt[:c].T]
    else:
        bounds = np.cumsum([0, *ranks])
        T = np.empty((bounds[-1], bounds[-1]), dtype=whiteners[0].dtype)
        for m in range(M):
            for l in range(m, M):
                rows, cols = (
                    slice(bounds[m], bounds[m + 1]),
                    slice(bounds[l], bounds[l + 1]),
                )
                if m == l and diagonal is None:
                    T[rows, cols] = np.eye(ranks[m])
                else:
                    block = diagonal(m) if m == l else cross(m, l)
                    T[rows, cols] = whiteners[m].T @ block @ whiteners[l]
                    T[cols, rows] = T[rows, cols].T
        c = min(n_components, len(T))
        _, V = scipy.linalg.eigh(
            T, subset_by_index=[len(T) - c, len(T) - 1], check_finite=False
        )
        V = V[:, ::-1]
        parts = [V[bounds[m] : bounds[m + 1]] for m in range(M)]
    directions = []
    for B, v in zip(whiteners, parts):
        norms = np.linalg.norm(v, axis=0)
        tiny = norms <= np.sqrt(np.finfo(v.dtype).eps)
        v = v / np.where(tiny, 1.0, norms)
        v[:, tiny] = 0
        directions.append(B @ v)
    return directions, _pairwise_correlations(grams, widths, directions, shifts,
                                              paired)


def _signed(projections):
    """The projections with every latent dimension's sign fixed: its entry of
    largest magnitude over all models is positive (as scikit-learn's
    ``svd_flip``), so that the same data give the same space however its
    statistics were summed."""
    stacked = np.concatenate(projections)
    biggest = stacked[np.argmax(np.abs(stacked), axis=0), np.arange(stacked.shape[1])]
    signs = np.where(biggest < 0, -1, 1).astype(stacked.dtype)
    return [P * signs for P in projections]


def _weigh(directions, rho, n_components, dtype):
    """Order directions by agreement, weight them by it and pad to
    ``n_components``."""
    M = len(directions)
    upper = np.triu_indices(M, 1)
    agreement = np.maximum(rho[:, upper[0], upper[1]].mean(axis=1), 0.0)
    order = np.argsort(-agreement, kind="stable")
    projections = []
    for p in directions:
        P = np.zeros((len(p), n_components), dtype=dtype)
        P[:, : len(order)] = p[:, order] * agreement[order]
        projections.append(P)
    full = np.zeros(n_components)
    full[: len(order)] = agreement[order]
    return projections, full


def fit_cca(stats, n_components, regularization):
    """Closed-form multi-view CCA projections from `Statistics`.

    Parameters
    ----------
    stats : Statistics
    n_components : int
        The latent dimension ``k``. Columns beyond the number of directions
        the models can share are zero.
    regularization : sequence of float
        Every model's ridge, relative to the mean variance of its features
        (`Statistics.ridges`).

    Returns
    -------
    projections : list of (d_m, k) ndarray
        ``P_m`` in the statistics' dtype (apply to centred features).
    agreement : (k,) ndarray
        Mean pairwise correlation of the models on every latent dimension, in
        decreasing order (the canonical correlations for two models).
    """
    cross = consensus_blocks(stats, regularization)
    directions, rho = canonical_directions(
        stats.block,
        stats.widths,
        n_components,
        regularization,
        cross,
        None if cross is None else lambda m: cross(m, m),
        None if stats.complete else stats.paired,
    )
    projections, agreement = _weigh(directions, rho, n_components, stats.gram.dtype)
    return _signed(projections), agreement


def consensus_blocks(stats, regularization):
    """The blocks of ``T`` (`canonical_directions`) for data with missing views.

    Generalised CCA with missing rows (van de Velden and Bijmolt, 2006): the
    consensus of a sample is the mean over the models that observed it, which
    makes ``T`` the whitened matrix of ``M E[o_m o_l x_m x_l' / |S|]`` (over
    the samples, ``S`` the models that observed one), diagonal blocks
    included: the Gram matrix of the whitened data, so that no pair of
    directions correlates by more than one (whitening by one set of samples
    and correlating over another does not have this property, and fits noise).
    Every model is whitened by its covariance over the samples it observed,
    hence the factor ``1 / sqrt(c_m c_l)`` of the coverages, and the ridge is
    on the diagonal blocks, as in ``T_mm = I`` for complete data (for which
    ``cross(m, l)`` is ``G_ml``).

    Returns
    -------
    callable ``cross(m, l)``, or None for complete data.
    """
    if stats.complete:
        return None
    moments = stats.moments(stats.mean)
    cols, M = slices(stats.widths), len(stats.widths)
    scale = M / np.sqrt(np.outer(moments.coverage, moments.coverage))

    def cross(m, l):
        block = moments.consensus[cols[m], cols[l]] * moments.gram.dtype.type(
            scale[m, l]
        )
        if m == l:
            shift = ridge(stats.block(m, m), regularization[m])
            block = block + shift * np.eye(len(block), dtype=block.dtype)
        return block

    return cross


def fit_to_frozen(moments, widths, projections, frozen, regularization):
    """Projections of the free models that land on the space of the frozen ones.

    Minimises the alignment ``E sum_m ||z_m - zbar||^2`` (``zbar`` the mean
    over the models that observed a sample) over the free models' ``P_m``,
    the frozen ones' fixed, with the ridge ``r_m ||P_m||^2`` of `fit_cca`: a
    free model seen alongside frozen ones regresses on their mean latent.
    Setting the gradient to zero gives, for every free ``m``,
    ``(G_mm + r_m I) P_m - sum_{l free} C_ml P_l = sum_{f frozen} C_mf P_f``
    with ``G`` and ``C`` the plain and consensus moments: one linear system.

    Parameters
    ----------
    moments : Moments
        Of the samples shifted by the frozen models' offsets and the free
        models' means.
    widths : sequence of int
    projections : list of (d_m, k) ndarray
        Current weights; those of frozen models are used.
    frozen : sequence of bool
    regularization : sequence of float

    Returns
    -------
    list of (d_m, k) ndarray
        The frozen models' projections unchanged, the free models' new.
    """
    cols = slices(widths)
    free = [m for m, f in enumerate(frozen) if not f]
    index = np.concatenate([np.arange(cols[m].start, cols[m].stop) for m in free])
    A = -moments.consensus[np.ix_(index, index)].astype(np.float64)
    b = np.zeros((len(index), projections[0].shape[1]))
    at = 0
    for m in free:
        d = widths[m]
        G = moments.gram[cols[m], cols[m]]
        A[at : at + d, at : at + d] += G + ridge(G, regularization[m]) * np.eye(d)
        for f in np.flatnonzero(frozen):
            b[at : at + d] += moments.consensus[cols[m], cols[f]] @ projections[f]
        at += d
    try:
        solution = scipy.linalg.solve(A, b, assume_a="pos", check_finite=False)
    except np.linalg.LinAlgError:  # singular without a ridge: least norm
        solution = scipy.linalg.lstsq(A, b, check_finite=False)[0]
    out = list(projections)
    at = 0
    for m in free:
        out[m] = solution[at : at + widths[m]].astype(projections[m].dtype)
        at += widths[m]
    return out


# Eigenvalues of the latents' correlation matrix below this many times k eps
# are rounding noise: those directions are collinear with others.
_COLLINEAR = 100


def least_squares_inverse(gram, projection):
    """``R`` minimising ``||X P R - X||``: ``pinv(P.T G P) @ P.T G``.

    The pseudo-inverse is taken of the latents' correlation matrix (every
    latent dimension scaled to unit variance), whose eigenvalues of collinear
    directions are rounding noise far below one whatever the scales of the
    dimensions: which directions are dropped does not depend on how the
    statistics were summed.

    Parameters
    ----------
    gram : (d, d) ndarray
        ``X.T @ X / n`` of the (centred) features.
    projection : (d, k) ndarray

    Returns
    -------
    (k, d) ndarray in the dtype of ``projection``; latent directions that carry
    no variance (zero columns) get zero rows.
    """
    # GP = G @ P, then A = P.T @ G @ P (k, k) and B = P.T @ G (k, d)
    GP = gram @ projection
    A = (projection.T @ GP).astype(np.float64)
    B = GP.T.astype(np.float64)
    A = (A + A.T) / 2
    R = np.zeros_like(B)
    scale = np.sqrt(np.maximum(np.diag(A), 0.0))
    live = scale > 0
    if not live.any():
        return R.astype(projection.dtype)
    scale = scale[live]
    values, vectors = scipy.linalg.eigh(
        A[np.ix_(live, live)] / np.outer(scale, scale), check_finite=False
    )
    keep = values > _COLLINEAR * len(A) * np.finfo(projection.dtype).eps
    V = vectors[:, keep]
    R[live] = (V @ ((V.T @ (B[live] / scale[:, None])) / values[keep][:, None])) / (
        scale[:, None]
    )
    return R.astype(projection.dtype)


def canonicalise(stats, projections, n_components, regularization):
    """Re-express trained projections in the agreement-ordered, weighted basis.

    Runs the closed form on the latents ``Z_m = X_m P_m`` (their Gram is
    ``P_m.T G_ml P_l``, with the ridge ``r_m P_m.T P_m`` on the diagonal
    blocks, so that the metric is that of `fit_cca`) and composes: the latent
    subspaces of the models are kept, and within them the basis is the one
    `fit_cca` would choose. Applied to `fit_cca`'s own projections it changes
    nothing but signs.

    Returns
    -------
    projections : list of (d_m, k) ndarray
    agreement : (k,) ndarray
    """
    latent_grams = {}
    # With missing views the pairs are weighted as in the whitened objective's
    # alignment (by one over the number of models of a sample); the diagonal
    # blocks are whitened away (T_mm = I): for two models the basis is then a
    # rotation of the whitened latents, which leaves that objective unchanged.
    data_cross = consensus_blocks(stats, regularization)

    def grams(m, l):
        if (m, l) not in latent_grams:
            P, Q = projections[m], projections[l]
            G = P.T @ stats.block(m, l) @ Q
            if m == l:  # the ridge of the data space, seen from the latents
                G = G + ridge(stats.block(m, m), regularization[m]) * (P.T @ P)
            latent_grams[m, l] = G
        return latent_grams[m, l]

    def cross(m, l):
        return projections[m].T @ data_cross(m, l) @ projections[l]

    def paired(m, l):  # over the shared samples, with the ridge as in grams
        P = projections[m]
        shift = ridge(stats.block(m, m), regularization[m])
        return P.T @ stats.paired(m, l) @ P + shift * (P.T @ P)

    widths = [P.shape[1] for P in projections]
    directions, rho = canonical_directions(
        grams, widths, n_components, (0.0,) * len(widths),
        None if data_cross is None else cross,
        paired=None if stats.complete else paired,
    )
    inner, agreement = _weigh(directions, rho, n_components, stats.gram.dtype)
    return _signed([P @ A for P, A in zip(projections, inner)]), agreement


def _inverse_sqrt(C):
    """``C^(-1/2)`` on the range of the symmetric ``C`` (null directions dropped)."""
    values, vectors = scipy.linalg.eigh(C, check_finite=False)
    keep = values > values[-1] * len(C) * np.finfo(np.float64).eps
    return vectors[:, keep] / np.sqrt(values[keep])


def pair_maps(stats, projections, regularization):
    """The maps through which every pair of models is best compared.

    In a space of more than two models, the latent dimensions are those on
    which all of them agree (MAXVAR): not the canonical directions of any one
    pair. For models ``a`` and ``b`` with latents ``z_a = x_a P_a``, the
    two-model CCA of the latents themselves, from their ``k x k`` statistics
    over the samples both observed::

        C_a = P_a' (G_aa + r_a I) P_a,  C_b likewise,  C_ab = P_a' G_ab P_b
        U S V' = svd(C_a^(-1/2) C_ab C_b^(-1/2))
        M_a = C_a^(-1/2) U S,  M_b = C_b^(-1/2) V S

    compares ``z_a M_a`` with ``z_b M_b`` (weighted by the pair's canonical
    correlations ``S``, as a two-model space is): `docs/maths.md`, 5.6.

    Parameters
    ----------
    stats : Statistics
        Of the samples the alignment is fitted on.
    projections : list of (d_m, k) ndarray
    regularization : "auto" or float
        The ridges ``r_a``, ``r_b``: "auto" counts the samples both observed.

    Returns
    -------
    dict
        ``(a, b)`` (model indices, ``a < b``) to ``(M_a, M_b)``, float64
        arrays of shape ``(k, c)``, for every pair that shares two samples or
        more.
    """
    M = len(stats.widths)
    shared = np.zeros((M, M), dtype=np.int64)
    for members, sums in stats.patterns:
        shared[np.ix_(members, members)] += sums.count
    maps = {}
    for a in range(M):
        for b in range(a + 1, M):
            n = int(shared[a, b])
            if n < 2:
                continue
            sides = []
            for m, other in ((a, b), (b, a)):
                G = stats.paired(m, other).astype(np.float64)
                P = projections[m].astype(np.float64)
                relative = stats.widths[m] / n if regularization == "auto" else (
                    regularization
                )
                shift = ridge(G, relative)
                sides.append((P, _inverse_sqrt(P.T @ (G @ P) + shift * (P.T @ P))))
            (Pa, Wa), (Pb, Wb) = sides
            cross = Pa.T @ stats.block(a, b).astype(np.float64) @ Pb
            U, s, Vt = svd(Wa.T @ cross @ Wb)
            maps[a, b] = (Wa @ U * s, Wb @ Vt.T * s)
    return maps


def run(problem, Ps, Rs, monitor):
    """The solver "cca": the start (the closed form, computed by
    `latentspace._training.fitting.train`) is the solution."""
    monitor.step(problem.objective(Ps, Rs, problem.moments, gradient=False))
    return Run(Ps, Rs, True)
