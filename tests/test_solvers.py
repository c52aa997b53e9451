# SPDX-License-Identifier: BSD-3-Clause
"""The solvers against NumPy transcriptions of the same maths.

- "cca": closed-form regularised MAXVAR CCA, offsets, agreement ordering and
  weighting, least-squares reconstructions; against NumPy and scikit-learn.
- Training on the whitened objective does not depend on the scale of the start
  (the objectives themselves: test_losses.py).
- "lbfgs", "minibatch" and the whitened "sgd" against references.
- Early stopping, callback, progress bar, refused input.
"""

import sys
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from reference import inv_sqrt, sample_loss
from support import (
    assert_unchanged,
    correlated,
    dtype_params,
    make_space,
    snapshot,
    statistics_of,
)

import latentspace
from latentspace import (
    ConvergenceWarning,
    InvalidParameterError,
    ProjectionConfig,
    TrainingDivergedError,
    TrainingState,
)
from latentspace._training.losses import MomentObjective, sample_scale

TOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 2e-4}


def trained(widths, k, Xs, dtype="float64", **overrides):
    space, names = make_space(k, widths, dtype=dtype)
    result = space.train_projections(dict(zip(names, Xs)), **overrides)
    return space, names, result


# ------------------------------------------------------------ NumPy references


def reference_cca(Xs, k, regularization):
    """MAXVAR CCA in plain NumPy: returns (offsets, projections, agreement).

    Directions: leading eigenvectors of the whitened block matrix with
    identity diagonal blocks; per model normalised to unit regularised
    variance; sorted by the mean pairwise correlation (the agreement), by
    which column ``j`` of every model is weighted (for two models the
    canonical correlation).
    """
    n, M = len(Xs[0]), len(Xs)
    mus = [X.mean(axis=0) for X in Xs]
    Cs = [X - mu for X, mu in zip(Xs, mus)]
    G = [[A.T @ B / n for B in Cs] for A in Cs]
    W = []
    ridges = np.broadcast_to(regularization, (M,))  # one, or one per model
    for m in range(M):
        d = len(G[m][m])
        r = ridges[m] * np.trace(G[m][m]) / d
        W.append(inv_sqrt(G[m][m] + r * np.eye(d)))
    T = np.block(
        [
            [
                np.eye(len(G[m][m])) if m == l else W[m] @ G[m][l] @ W[l]
                for l in range(M)
            ]
            for m in range(M)
        ]
    )
    values, V = np.linalg.eigh(T)
    V = V[:, ::-1][:, :k]
    bounds = np.cumsum([0, *[X.shape[1] for X in Xs]])
    dirs = []
    for m in range(M):
        v = V[bounds[m] : bounds[m + 1]]
        dirs.append(W[m] @ (v / np.linalg.norm(v, axis=0)))
    rho = np.ones((k, M, M))
    for m in range(M):
        for l in range(M):
            if m != l:
                rho[:, m, l] = np.einsum("ij,ij->j", dirs[m], G[m][l] @ dirs[l])
    agreement = np.array([rho[j][np.triu_indices(M, 1)].mean() for j in range(k)])
    order = np.argsort(-agreement, kind="stable")
    agreement = np.maximum(agreement[order], 0)
    Ps = [dirs[m][:, order] * agreement for m in range(M)]
    return mus, Ps, agreement


def _match_signs(P, Q):
    """Q with every column's sign flipped to agree with P's."""
    signs = np.sign(np.sum(P * Q, axis=0))
    signs[signs == 0] = 1
    return Q * signs


# ------------------------------------------------------------------ closed form


@dtype_params
@pytest.mark.parametrize("widths, k", [((6, 5), 3), ((7, 4, 5), 4), ((3, 8), 3)])
@pytest.mark.parametrize("regularization", [0.0, 0.1])
def test_cca_matches_numpy_reference(dtype, widths, k, regularization):
    Xs = correlated(widths, 300, seed=1)
    space, names, result = trained(
        widths, k, Xs, dtype, solver="cca", regularization=regularization
    )
    mus, Ps, agreement = reference_cca(Xs, k, regularization)
    tol = TOL[dtype]
    assert_allclose(result.agreement, agreement, rtol=0, atol=10 * tol)
    for name, mu, P, X in zip(names, mus, Ps, Xs):
        assert_allclose(space.offset(name), mu, rtol=tol, atol=tol)
        ours = np.asarray(space.weights(name)[0], dtype=np.float64)
        # eigenvectors of close eigenvalues: error ~ eps / gap
        scale = np.abs(P).max()
        assert_allclose(_match_signs(P, ours), P, rtol=0, atol=1000 * tol * scale)
        # project() subtracts the offset
        assert_allclose(
            space.project(name, X), (X - mu) @ ours, rtol=10 * tol, atol=10 * tol
        )


@pytest.mark.parametrize("widths", [(6, 5), (4, 9)])
def test_cca_agrees_with_scikit_learn_canonical_correlations(widths):
    CCA = pytest.importorskip("sklearn.cross_decomposition").CCA
    Xs = correlated(widths, 300, seed=2)
    k = 3
    space, names, result = trained(widths, k, Xs, solver="cca", regularization=0.0)
    cca = CCA(n_components=k, max_iter=2000, tol=1e-10).fit(*Xs)
    xs, ys = cca.transform(*Xs)
    sklearn_rho = [np.corrcoef(xs[:, j], ys[:, j])[0, 1] for j in range(k)]
    assert_allclose(result.agreement, sklearn_rho, rtol=0, atol=1e-6)
    # and our latents are sklearn's up to sign and scale, dimension by dimension
    Z = space.project(names[0], Xs[0])
    for j in range(k):
        assert abs(np.corrcoef(Z[:, j], xs[:, j])[0, 1]) == pytest.approx(1, abs=1e-6)


def test_cca_latents_are_ordered_and_weighted_by_agreement():
    Xs = correlated((6, 5), 400, seed=3)
    space, names, result = trained((6, 5), 4, Xs, solver="cca", regularization=0.0)
    rho = np.array(result.agreement)
    assert np.all(np.diff(rho) <= 0) and np.all(rho > 0)
    Za, Zb = (space.project(n, X) for n, X in zip(names, Xs))
    # every latent dimension has standard deviation rho_j, correlation rho_j
    assert_allclose(Za.std(axis=0), rho, rtol=1e-9)
    assert_allclose(Zb.std(axis=0), rho, rtol=1e-9)
    corr = [np.corrcoef(Za[:, j], Zb[:, j])[0, 1] for j in range(4)]
    assert_allclose(corr, rho, rtol=1e-9)
    # dimensions are uncorrelated within a model
    C = np.cov(Za.T, bias=True)
    assert_allclose(C - np.diag(np.diag(C)), 0, atol=1e-12)


@dtype_params
def test_cca_reconstructions_are_least_squares_inverses(dtype):
    Xs = correlated((6, 5, 4), 300, seed=4)
    space, names, _ = trained((6, 5, 4), 3, Xs, dtype, solver="cca")
    for name, X in zip(names, Xs):
        P, R = (np.asarray(a, dtype=np.float64) for a in space.weights(name))
        Xc = X - X.mean(axis=0)
        R_ls = np.linalg.lstsq(Xc @ P, Xc, rcond=None)[0]
        assert_allclose(R, R_ls, rtol=50 * TOL[dtype], atol=50 * TOL[dtype])
        assert_allclose(
            space.retrieve(name, space.project(name, X[:3])),
            X.mean(axis=0) + Xc[:3] @ P @ R,
            rtol=1e-4,
            atol=1e-4,
        )


def test_cca_more_latent_dimensions_than_shared_directions():
    Xs = correlated((2, 3), 200, seed=5)
    with pytest.warns(latentspace.DimensionWarning,
                      match="latent_dim=6 is more than the data can fill: the "
                      "second largest model width is 2.*Use latent_dim <= 2"):
        space, names, result = trained((2, 3), 6, Xs, solver="cca")
    assert len(result.agreement) == 6
    assert result.agreement[2:] == (0.0,) * 4
    for name in names:
        P, R = space.weights(name)
        assert np.all(P[:, 2:] == 0) and np.all(R[2:] == 0)
        assert np.isfinite(space.project(name, np.ones(P.shape[0]))).all()


def test_cca_handles_constant_features():
    Xs = correlated((5, 4), 200, seed=6)
    Xs[0][:, 2] = 7.0  # a constant pixel: singular Gram without the ridge
    for regularization in (0.0, 0.01):
        space, names, result = trained(
            (5, 4), 2, Xs, solver="cca", regularization=regularization
        )
        assert all(np.isfinite(space.weights(n)[0]).all() for n in names)
        assert result.agreement[0] > 0.9


def test_cca_float32_is_close_to_float64():
    Xs = correlated((12, 9), 2000, seed=7)
    s64, names, r64 = trained((12, 9), 3, Xs, "float64", solver="cca")
    s32, _, r32 = trained((12, 9), 3, Xs, "float32", solver="cca")
    assert_allclose(r32.agreement, r64.agreement, atol=1e-5)
    for name in names:
        P64, P32 = s64.weights(name)[0], s32.weights(name)[0]
        assert P32.dtype == np.float32 and s32.offset(name).dtype == np.float32
        assert_allclose(P32, _match_signs(P32, P64), rtol=0, atol=2e-4)


def test_cca_retrieval_is_at_least_scikit_learn_s():
    CCA = pytest.importorskip("sklearn.cross_decomposition").CCA
    Xs = correlated((20, 15), 700, shared=8, noise=1.5, seed=8)
    train, test = slice(0, 500), slice(500, None)
    space, names, _ = trained((20, 15), 6, [X[train] for X in Xs], solver="cca")
    ours = top1(*(space.project(n, X[test]) for n, X in zip(names, Xs)))
    cca = CCA(n_components=6, max_iter=2000).fit(*(X[train] for X in Xs))
    theirs = top1(*cca.transform(*(X[test] for X in Xs)))
    assert ours >= theirs and ours > 0.3


def top1(A, B):
    A = A / np.linalg.norm(A, axis=1, keepdims=True)
    B = B / np.linalg.norm(B, axis=1, keepdims=True)
    return float(np.mean(np.argmax(A @ B.T, axis=1) == np.arange(len(A))))


def test_cca_three_models_every_pair_retrieves_about_as_well_as_pairwise_cca():
    Xs = correlated((12, 10, 8), 900, shared=6, noise=1.5, seed=9)
    train, test = slice(0, 600), slice(600, None)
    space, names, _ = trained((12, 10, 8), 6, [X[train] for X in Xs], solver="cca")
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        joint = top1(
            space.project(names[a], Xs[a][test]), space.project(names[b], Xs[b][test])
        )
        pair, pnames, _ = trained(
            (Xs[a].shape[1], Xs[b].shape[1]),
            6,
            [Xs[a][train], Xs[b][train]],
            solver="cca",
        )
        alone = top1(
            *(pair.project(n, X[test]) for n, X in zip(pnames, (Xs[a], Xs[b])))
        )
        assert joint >= alone - 0.1, (a, b, joint, alone)


def test_cca_redimensions_and_keeps_other_models():
    Xs = correlated((5, 4), 100, seed=10)
    space, names = make_space(3, (5, 4, 6))
    untouched = space.weights("m2")
    result = space.train_projections(
        dict(zip(names[:2], Xs)), solver="cca", latent_dim=2
    )
    assert space.dim == 2 and result.solver == "cca" and result.converged
    assert space.weights("m0")[0].shape == (5, 2)
    assert space.weights("m2")[0].shape == (6, 2)  # re-initialised at the new size
    assert space.offset("m2") is None and space.offset("m0") is not None
    assert untouched[0].shape == (6, 3)


def test_canonicalising_the_closed_form_changes_nothing_but_signs():
    from latentspace._training.cca import canonicalise, fit_cca

    Xs = correlated((6, 5, 4), 300, seed=30)
    stats = statistics_of([X - X.mean(axis=0) for X in Xs])
    Ps, agreement = fit_cca(stats, 3, (0.1,) * 3)
    again, agreement2 = canonicalise(stats, Ps, 3, (0.1,) * 3)
    assert_allclose(agreement2, agreement, rtol=1e-9)
    for P, Q in zip(Ps, again):
        assert_allclose(_match_signs(P, Q), P, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------- the whitened objective


def test_whitened_training_is_invariant_to_the_scale_of_the_start():
    Xs = correlated((6, 5), 200, seed=13)
    results = []
    for eps in (1.0, 1e-3):
        space, names = make_space(3, (6, 5))
        for name in names:  # shrink the start: P * eps, R / eps
            P, R = space.weights(name)
            model = space._snapshot.models[name]
            space._snapshot.models[name] = model._replace(
                project=type(model.project)(np.array(P * eps)),
                retrieve=type(model.retrieve)(np.array(R / eps)),
            )
        result = space.train_projections(
            dict(zip(names, Xs)), solver="lbfgs", callback=lambda state: True
        )
        results.append(result)
    assert results[0].initial_loss == pytest.approx(results[1].initial_loss, rel=1e-9)


# -------------------------------------------------------------- gradient solvers


def test_lbfgs_reference_objective_reaches_the_pca_bound():
    # With w = 0 the reference loss is reconstruction alone: its minimum is half
    # the variance left outside every model's top-k principal subspace.
    Xs = correlated((6, 5), 300, seed=14)
    k = 2
    space, names, result = trained(
        (6, 5),
        k,
        Xs,
        solver="lbfgs",
        objective="reference",
        alignment_weight=0.0,
        n_epochs=3000,
        init="cca",
        tol=1e-11,
    )
    bound = 0
    for X in Xs:
        Xc = X - X.mean(axis=0)
        values = np.linalg.eigvalsh(Xc.T @ Xc / len(X))
        bound += 0.5 * values[:-k].sum()
    assert result.objective == "reference" and result.converged
    assert result.final_loss == pytest.approx(bound, rel=1e-6)
    assert result.final_loss == pytest.approx(
        space.loss(dict(zip(names, Xs)), alignment_weight=0.0), rel=1e-9
    )


def test_lbfgs_whitened_reaches_a_stationary_point_of_the_per_sample_loss():
    Xs = correlated((4, 3), 120, seed=15)
    widths, k, w, reg = (4, 3), 2, 1.0, 0.01
    space, names, result = trained(
        widths, k, Xs, solver="lbfgs", n_epochs=1000, tol=1e-12, regularization=reg
    )
    assert result.converged and result.final_loss < result.initial_loss
    Cs = [X - X.mean(axis=0) for X in Xs]
    tau = sample_scale(statistics_of(Cs).moments(np.zeros(sum(widths))), widths)
    objective = MomentObjective("whitened", widths, k, w, (reg,) * len(widths), tau,
                          np.float64)
    eps = np.finfo(np.float64).eps

    def f(theta):
        return sample_loss("whitened", Cs, *objective.split(theta), w, reg, tau, eps)

    P = [np.asarray(space.weights(n)[0]) for n in names]
    R = [np.asarray(space.weights(n)[1]) for n in names]
    theta = objective.join(P, R)
    assert result.final_loss == pytest.approx(f(theta), rel=1e-9)
    # the finite-difference gradient of the per-sample loss vanishes there
    h = 1e-6 * np.abs(theta).max()
    grad = np.array(
        [(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(len(theta))]
    )
    assert np.abs(grad).max() < 1e-5 * result.initial_loss / np.abs(theta).max()
    # and the closed form, an excellent start, is not better
    _, _, cca = trained(widths, k, Xs, solver="cca", regularization=reg)
    assert result.final_loss <= cca.final_loss * (1 + 1e-9)


def test_minibatch_steps_are_adam_on_batch_gradients():
    # Reference objective, two batches, one epoch: two Adam steps on the
    # per-sample gradients of each half, transcribed in NumPy.
    widths, k, n, lr, w = (4, 3), 2, 40, 0.05, 0.7
    Xs = [X - X.mean(axis=0) for X in correlated(widths, n, seed=16)]
    space, names = make_space(k, widths)
    Ps = [np.array(space.weights(m)[0]) for m in names]
    Rs = [np.array(space.weights(m)[1]) for m in names]
    space.train_projections(
        dict(zip(names, Xs)),
        solver="minibatch",
        init="current",
        n_epochs=1,
        batch_size=n // 2,
        learning_rate=lr,
        objective="reference",
        alignment_weight=w,
    )
    m1 = [np.zeros_like(a) for a in (*Ps, *Rs)]
    m2 = [np.zeros_like(a) for a in (*Ps, *Rs)]
    for step, rows in enumerate((slice(0, n // 2), slice(n // 2, n)), start=1):
        xs = [X[rows] for X in Xs]
        b = len(xs[0])
        Zs = [x @ P for x, P in zip(xs, Ps)]
        zbar = np.mean(Zs, axis=0)
        Es = [Z @ R - x for Z, R, x in zip(Zs, Rs, xs)]
        gR = [Z.T @ E / b for Z, E in zip(Zs, Es)]
        gP = [
            x.T @ (E @ R.T + w * (Z - zbar)) / b for x, E, R, Z in zip(xs, Es, Rs, Zs)
        ]
        for i, (p, g) in enumerate(zip((*Ps, *Rs), (*gP, *gR))):
            m1[i] = 0.9 * m1[i] + 0.1 * g
            m2[i] = 0.999 * m2[i] + 0.001 * g * g
            scale = lr * np.sqrt(1 - 0.999**step) / (1 - 0.9**step)
            p -= scale * m1[i] / (np.sqrt(m2[i]) + 1e-8)
    for name, P, R in zip(names, Ps, Rs):
        assert_allclose(space.weights(name)[0], P, rtol=1e-9, atol=1e-12)
        assert_allclose(space.weights(name)[1], R, rtol=1e-9, atol=1e-12)


def test_whitened_sgd_epoch_is_rewhiten_then_reference_epoch():
    from reference import reference_sgd

    from latentspace._training import fitting, sgd
    from latentspace._monitor import Monitor

    widths, k, lr, w, reg = (4, 3), 2, 0.01, 1.0, 0.01
    Xs = [X - X.mean(axis=0) for X in correlated(widths, 30, seed=17)]
    space, names = make_space(k, widths)
    Ps = [np.array(space.weights(m)[0]) for m in names]
    Rs = [np.array(space.weights(m)[1]) for m in names]
    stats = statistics_of(Xs)
    moments = stats.moments(np.zeros(sum(widths)))
    tau = sample_scale(moments, widths)
    objective = MomentObjective("whitened", widths, k, w, (reg,) * len(widths), tau,
                          np.float64)
    config = ProjectionConfig(n_epochs=1, learning_rate=lr, regularization=reg)
    problem = fitting.Problem(
        ["m0", "m1"], Xs, None, None, stats, moments, objective, config, (False, False),
        entries=0,
    )
    with Monitor(1, None, None, False, started=0.0) as monitor:
        P1, R1, _ = sgd.run(problem, Ps, Rs, monitor)

    def whiten(Ps, Rs):
        out = []
        for X, P, R in zip(Xs, Ps, Rs):
            G = X.T @ X / len(X)
            S = P.T @ G @ P + reg * np.trace(G) / len(G) * P.T @ P
            S += np.sqrt(np.finfo(float).eps) * np.trace(S) / k * np.eye(k)
            lam, V = np.linalg.eigh(S)
            g = np.sqrt(tau / k)  # latent variance tau / k: a sample's scale
            out.append(
                (P @ (V / np.sqrt(lam)) @ V.T * g, (V * np.sqrt(lam)) @ V.T @ R / g)
            )
        return [p for p, _ in out], [r for _, r in out]

    Ps, Rs = whiten(Ps, Rs)
    # the reference alignment of latents scaled by g is the whitened one for w k
    Ps, Rs = reference_sgd(Xs, Ps, Rs, lr, 1, w * k)
    Ps, Rs = whiten(Ps, Rs)
    for P, R, Pr, Rr in zip(P1, R1, Ps, Rs):
        assert_allclose(P, Pr, rtol=1e-9, atol=1e-12)
        assert_allclose(R, Rr, rtol=1e-9, atol=1e-12)
    assert monitor.history[0] == pytest.approx(
        sample_loss("whitened", Xs, P1, R1, w, reg, tau, np.finfo(float).eps), rel=1e-9
    )


@pytest.mark.filterwarnings("ignore::latentspace.ConvergenceWarning")
@pytest.mark.parametrize(
    "solver, extra",
    [
        ("lbfgs", {}),
        ("minibatch", {"n_epochs": 40, "batch_size": 64, "init": "current"}),
        ("sgd", {"objective": "whitened", "n_epochs": 40, "learning_rate": 0.1}),
    ],
)
def test_gradient_solvers_align_rather_than_shrink(solver, extra):
    Xs = correlated((10, 8), 600, shared=4, noise=1.0, seed=18)
    train, test = slice(0, 400), slice(400, None)
    data = [X[train] for X in Xs]
    space, names, result = trained((10, 8), 4, data, solver=solver, **extra)
    assert result.objective == "whitened"
    assert result.final_loss < result.initial_loss
    closed, _, cca = trained((10, 8), 4, data, solver="cca")
    got = top1(*(space.project(n, X[test]) for n, X in zip(names, Xs)))
    best = top1(*(closed.project(n, X[test]) for n, X in zip(names, Xs)))
    assert got >= best - 0.05, (got, best)
    assert result.agreement[0] == pytest.approx(cca.agreement[0], abs=0.02)
    # the seed's objective from the same start does not align (and, having no
    # minimiser, does not converge)
    seed_space, _, _ = trained(
        (10, 8),
        4,
        data,
        solver=solver,
        **{**extra, "objective": "reference", "tol": None},
    )
    seed = top1(*(seed_space.project(n, X[test]) for n, X in zip(names, Xs)))
    assert got > seed


@pytest.mark.parametrize("solver", ["sgd", "minibatch", "lbfgs"])
@pytest.mark.filterwarnings("ignore::latentspace.ConvergenceWarning")
def test_init_cca_starts_from_the_closed_form(solver):
    Xs = correlated((6, 5), 200, seed=19)
    objective = "reference" if solver == "sgd" else "whitened"
    _, _, cca = trained((6, 5), 3, Xs, solver="cca", objective=objective)
    space, names, result = trained(
        (6, 5), 3, Xs, solver=solver, init="cca", n_epochs=1, learning_rate=1e-4
    )
    assert result.initial_loss == pytest.approx(cca.final_loss, rel=1e-9)
    for name, X in zip(names, Xs):
        assert_allclose(space.offset(name), X.mean(axis=0), rtol=1e-12)


# ------------------------------------------ early stopping, callback, progress


def test_tol_stops_early_and_reports_convergence():
    Xs = correlated((6, 5), 200, seed=20)
    _, _, result = trained(
        (6, 5), 3, Xs, solver="minibatch", n_epochs=500, tol=1e-3, batch_size=100
    )
    assert result.converged and result.n_epochs < 500
    assert len(result.loss_history) == result.iterations == result.n_epochs
    _, _, result = trained((6, 5), 3, Xs, solver="lbfgs", n_epochs=1000)
    assert result.converged and result.iterations < 1000


def test_running_out_of_iterations_with_tol_warns():
    Xs = correlated((6, 5), 200, seed=21)
    with pytest.warns(ConvergenceWarning, match="n_epochs"):
        _, _, result = trained((6, 5), 3, Xs, solver="lbfgs", n_epochs=2)
    assert not result.converged and result.n_epochs == 2


def test_default_sgd_does_not_stop_early_or_warn():
    Xs = correlated((3, 2), 20, seed=22)
    space, names, result = trained((3, 2), 2, Xs, solver="sgd", n_epochs=7)
    assert result.solver == "sgd" and result.objective == "reference"
    assert result.n_epochs == 7 and not result.converged and result.agreement is None
    assert all(space.offset(n) is None for n in names)


@pytest.mark.parametrize("solver", ["sgd", "minibatch", "lbfgs", "cca"])
@pytest.mark.filterwarnings("ignore::latentspace.ConvergenceWarning")
def test_callback_sees_every_iteration(solver):
    Xs = correlated((6, 5), 100, seed=23)
    states = []
    _, _, result = trained(
        (6, 5), 3, Xs, solver=solver, n_epochs=5, callback=states.append
    )
    assert [s.iteration for s in states] == list(range(1, result.n_epochs + 1))
    assert all(isinstance(s, TrainingState) and s.seconds >= 0 for s in states)
    assert [s.loss for s in states[:-1]] == list(result.loss_history[:-1])


@pytest.mark.parametrize("solver", ["sgd", "minibatch", "lbfgs"])
@pytest.mark.filterwarnings("ignore::latentspace.ConvergenceWarning")
def test_callback_returning_true_stops_and_publishes(solver):
    Xs = correlated((6, 5), 100, seed=24)
    space, names = make_space(3, (6, 5))
    before = snapshot(space)
    result = space.train_projections(
        dict(zip(names, Xs)),
        solver=solver,
        n_epochs=50,
        callback=lambda s: s.iteration >= 3,
    )
    assert result.n_epochs == 3 and not result.converged
    assert (
        snapshot(space)["weights"]["m0"][0].tobytes()
        != before["weights"]["m0"][0].tobytes()
    )


@pytest.mark.parametrize("solver", ["sgd", "minibatch", "lbfgs", "cca"])
@pytest.mark.parametrize("latent_dim", [None, 2])
def test_callback_that_raises_leaves_the_space_unchanged(solver, latent_dim):
    Xs = correlated((6, 5), 100, seed=25)
    space, names = make_space(3, (6, 5, 4))
    before = snapshot(space)

    def callback(state):
        if state.iteration == 2 or solver == "cca":
            raise RuntimeError("stop right there")

    with pytest.raises(RuntimeError, match="stop right there"):
        space.train_projections(
            dict(zip(names[:2], Xs)),
            solver=solver,
            n_epochs=5,
            callback=callback,
            latent_dim=latent_dim,
        )
    assert_unchanged(space, before)
    assert all(space.offset(n) is None for n in names)


def test_divergence_leaves_the_space_unchanged():
    Xs = correlated((6, 5), 100, seed=26)
    space, names = make_space(3, (6, 5))
    before = snapshot(space)
    with pytest.raises(TrainingDivergedError, match="solver='minibatch' diverged"):
        space.train_projections(
            dict(zip(names, Xs)),
            solver="minibatch",
            objective="reference",
            learning_rate=1e300,
            n_epochs=3,
        )
    assert_unchanged(space, before)


@pytest.mark.parametrize("solver", ["sgd", "cca"])
def test_progress_bar(solver, capsys):
    pytest.importorskip("tqdm")
    Xs = correlated((6, 5), 50, seed=27)
    trained((6, 5), 3, Xs, solver=solver, n_epochs=3, progress=True)
    err = capsys.readouterr().err
    assert ("3/3" if solver == "sgd" else "1/1") in err


def test_progress_without_tqdm_fails_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    Xs = correlated((6, 5), 50, seed=28)
    space, names = make_space(3, (6, 5))
    before = snapshot(space)
    with pytest.raises(ImportError, match="pip install tqdm"):
        space.train_projections(dict(zip(names, Xs)), progress=True)
    assert_unchanged(space, before)


# ---------------------------------------------------------------- refused input


@pytest.mark.parametrize("n", [1, 2])
def test_cca_with_fewer_samples_than_dimensions(n):
    Xs = correlated((4, 5), n, seed=32)
    with pytest.warns(latentspace.DimensionWarning,
                      match=f"only {n} samples are paired"):
        space, names, result = trained((4, 5), 3, Xs, "float32", solver="cca")
    assert all(np.isfinite(space.weights(m)[0]).all() for m in names)
    # n centred samples span n - 1 directions: no agreement beyond them
    assert_allclose(result.agreement[n - 1 :], 0, atol=1e-5)


@pytest.mark.parametrize("solver", ["cca", "lbfgs", "minibatch"])
def test_features_that_overflow_float32_are_a_divergence(solver):
    Xs = [X * 1e30 for X in correlated((4, 5), 50, seed=33)]
    space, names = make_space(3, (4, 5), dtype="float32")
    before = snapshot(space)
    with pytest.raises(TrainingDivergedError, match="scale the features"):
        space.train_projections(dict(zip(names, Xs)), solver=solver, n_epochs=3)
    assert_unchanged(space, before)


# ------------------------------------------------------- defaults for quality


@pytest.mark.parametrize("n", [20, 300, 5000])
def test_auto_regularization_is_the_width_over_the_sample_count(n):
    rng = np.random.default_rng(n)
    Xs = [rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 5
          for d in (12, 7)]
    space, names, result = trained((12, 7), 3, Xs)  # the default: "auto"
    assert result.regularization == (12 / n, 7 / n)
    # ... which is what the closed form used
    _, Ps, _ = reference_cca(Xs, 3, result.regularization)
    for name, P in zip(names, Ps):
        assert_allclose(_match_signs(P, space.weights(name)[0]), P, rtol=1e-7,
                        atol=1e-10)


def test_auto_regularization_counts_the_samples_a_model_shares():
    Xs = correlated((6, 5), 300, seed=41)
    observed = {"m0": np.arange(300) < 200, "m1": np.arange(300) >= 50}
    _, _, result = trained((6, 5), 2, Xs, observed=observed)
    assert result.regularization == (6 / 150, 5 / 150)  # rows 50..199


def test_the_default_solver_aligns_raw_unnormalised_embeddings():
    # Features of norm ~40 and offsets of ~100: the reference SGD at its
    # default rate diverges in the first epoch; the default aligns them.
    rng = np.random.default_rng(42)
    items = rng.standard_normal((1200, 8))
    Xs = [items @ rng.standard_normal((8, d)) * 5 + 100 + rng.standard_normal((1200, d))
          for d in (48, 32)]
    space, names, result = trained((48, 32), 8, [X[:1000] for X in Xs])
    assert result.solver == "cca" and result.objective == "whitened"
    assert top1(*(space.project(n, X[1000:]) for n, X in zip(names, Xs))) > 0.95
    with pytest.raises(latentspace.TrainingDivergedError,
                       match="diverged in epoch 1 .*try learning_rate="):
        trained((48, 32), 8, [X[:1000] for X in Xs], solver="sgd")


@pytest.mark.filterwarnings("ignore::latentspace.ConvergenceWarning")
def test_the_result_says_which_loss_and_space_loss_reproduces_it():
    Xs = correlated((6, 5), 300, seed=42)
    for solver in ("cca", "lbfgs", "sgd"):
        space, names, result = trained((6, 5), 3, Xs, solver=solver, n_epochs=5)
        data = dict(zip(names, Xs))
        assert result.objective == ("reference" if solver == "sgd" else "whitened")
        again = space.loss(data, objective=result.objective)
        assert again == pytest.approx(result.final_loss, rel=1e-9), solver
    with pytest.raises(InvalidParameterError, match="objective must be one of"):
        space.loss(data, objective=None)


def test_a_cca_divergence_never_suggests_a_learning_rate():
    Xs = [X * 1e200 for X in correlated((4, 5), 50, seed=43)]
    space, names = make_space(3, (4, 5))
    with pytest.raises(latentspace.TrainingDivergedError) as info:
        space.train_projections(dict(zip(names, Xs)))
    assert "learning_rate" not in str(info.value)
    assert "second moments overflow float64" in str(info.value)


def test_a_dimension_warning_turned_into_an_error_changes_nothing():
    Xs = correlated((3, 2), 50, seed=44)
    space, names = make_space(4, (3, 2))
    before = snapshot(space)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(latentspace.DimensionWarning,
                           match="latent_dim=4 .*Use latent_dim <= 2"):
            space.train_projections(dict(zip(names, Xs)))
    assert_unchanged(space, before)
    # The reference SGD's latents are not the closed form's basis: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        space.train_projections(dict(zip(names, Xs)), solver="sgd", n_epochs=1)


def test_lbfgs_from_a_stationary_start_records_an_iteration():
    # One sample: the closed form (the start) has nothing to fit.
    Xs = correlated((2, 2), 1, seed=45)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", latentspace.DimensionWarning)
        _, _, result = trained((2, 2), 1, Xs, solver="lbfgs")
    assert len(result.loss_history) == 1 and result.final_loss == result.loss_history[0]


def test_cca_falls_back_to_gesvd_where_gesdd_does_not_converge(monkeypatch):
    # LAPACK's gesdd failed to converge on the whitened cross-covariance of 100
    # real pairs of 384-d and 768-d sentence embeddings (gesvd converged); the
    # matrix is 2 MB, so the failure is simulated here.
    import scipy.linalg

    from latentspace._training import cca

    svd = scipy.linalg.svd
    drivers = []

    def gesdd_fails(*args, lapack_driver="gesdd", **kwargs):
        drivers.append(lapack_driver)
        if lapack_driver == "gesdd":
            raise np.linalg.LinAlgError("SVD did not converge")
        return svd(*args, lapack_driver=lapack_driver, **kwargs)

    Xs = correlated((6, 5), 200, seed=47)
    expected = trained((6, 5), 3, Xs)[0]
    monkeypatch.setattr(cca.scipy.linalg, "svd", gesdd_fails)
    space, names, _ = trained((6, 5), 3, Xs)
    assert drivers == ["gesdd", "gesvd"]
    for name in names:
        assert_allclose(space.weights(name)[0], expected.weights(name)[0], atol=1e-10)


def test_pair_maps_are_the_two_model_cca_of_the_latents(monkeypatch):
    # A NumPy transcription of docs/maths.md 5.6 on the statistics of complete
    # data: C_a = P_a' (G_aa + r_a I) P_a, C_ab = P_a' G_ab P_b; the maps are
    # C_a^-1/2 U S and C_b^-1/2 V S.
    import latentspace._training.fitting

    widths, k = (7, 6, 5), 4
    Xs = correlated(widths, 400, shared=4, seed=52)
    captured = {}
    train = latentspace._training.fitting.train

    def spy(*args, **kwargs):
        captured["outcome"] = outcome = train(*args, **kwargs)
        return outcome

    monkeypatch.setattr(latentspace._training.fitting, "train", spy)
    space, names = make_space(k, widths)
    space.train_projections(dict(zip(names, Xs)))
    maps = captured["outcome"].pair_maps
    assert set(maps) == {("m0", "m1"), ("m0", "m2"), ("m1", "m2")}
    Cs = [X - X.mean(axis=0) for X in Xs]
    n = len(Xs[0])

    def inv_sqrt(C):
        e, V = np.linalg.eigh(C)
        keep = e > e[-1] * 1e-12
        return V[:, keep] / np.sqrt(e[keep])

    for (a, b), (Ma, Mb) in maps.items():
        i, j = names.index(a), names.index(b)
        Pa, Pb = (np.asarray(space.weights(m)[0]) for m in (a, b))
        Gaa, Gbb, Gab = (Cs[p].T @ Cs[q] / n for p, q in ((i, i), (j, j), (i, j)))
        ra, rb = (widths[m] / n * np.trace(G) / widths[m] for m, G in ((i, Gaa),
                                                                      (j, Gbb)))
        Wa = inv_sqrt(Pa.T @ (Gaa + ra * np.eye(widths[i])) @ Pa)
        Wb = inv_sqrt(Pb.T @ (Gbb + rb * np.eye(widths[j])) @ Pb)
        U, s, Vt = np.linalg.svd(Wa.T @ Pa.T @ Gab @ Pb @ Wb)
        # The same comparison: z_a Ma . z_b Mb, whatever the signs and bases.
        want = (Wa @ U * s) @ (Wb @ Vt.T * s).T
        assert_allclose(Ma @ Mb.T, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("widths, limited", [((3, 5), False), ((100, 90), True)])
def test_blas_threads_are_limited_only_where_blas_could_use_them(widths, limited):
    """Per-sample SGD sets one BLAS thread for the training, unless every
    matrix is too small for OpenBLAS to use threads (then setting the limit
    would cost more than the training)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    Xs = correlated(widths, 50, seed=33)
    seen = []

    def threads():  # NumPy's and SciPy's (FAISS, if loaded, has its own)
        return {info["filepath"]: info["num_threads"]
                for info in threadpoolctl.threadpool_info()
                if info["user_api"] == "blas"
                and ("numpy" in info["filepath"] or "scipy" in info["filepath"])}

    def callback(state):
        seen.append(threads())

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = threads()
        trained(widths, 4, Xs, solver="sgd", n_epochs=1, learning_rate=1e-4,
                callback=callback)
    expected = {path: 1 for path in before} if limited else before
    assert seen == [expected]
