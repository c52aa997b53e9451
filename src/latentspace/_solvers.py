# SPDX-License-Identifier: BSD-3-Clause
"""The solver registry and the steps every training run shares.

`SOLVERS` maps each name that `ProjectionConfig.solver` accepts to the
function that runs it; the allowed names of the configuration are its keys.
`train` prepares the problem (offsets, sufficient statistics, objective,
starting weights), runs the solver and, for the whitened objective, puts the
result in the agreement-ordered, weighted basis of the closed form.
"""

import math
import warnings
from typing import NamedTuple

import numpy as np

from ._cca import canonicalise, fit_cca, least_squares_inverse
from ._exceptions import ConvergenceWarning
from ._gradient import train_lbfgs, train_minibatch
from ._losses import Objective, sample_scale, whitening
from ._monitor import Monitor
from ._sgd import train_sgd
from ._statistics import accumulate, ridge, slices
from ._threads import blas_single_threaded, scipy_blas_single_threaded

__all__ = [
    "DEFAULT_OBJECTIVE",
    "DEFAULT_TOL",
    "INITS",
    "OBJECTIVES",
    "SOLVERS",
    "Outcome",
    "train",
]


class Outcome(NamedTuple):
    """The result of `train`: new weights and what the run did."""

    projections: list
    reconstructions: list
    shifts: list  # per model: added to its offset, or None (offset unchanged)
    initial_loss: float
    history: list
    converged: bool
    stopped: bool
    objective: str
    agreement: tuple | None


class _Problem(NamedTuple):
    """Everything a solver needs besides the starting weights."""

    blocks: list  # (n, d_m) samples (shifted by the new offsets for "sgd")
    shift: np.ndarray | None  # (D,) new offsets the blocks still carry, or None
    stats: object  # Statistics of the blocks before the shift, or None
    gram: np.ndarray | None  # second moments of the shifted samples
    objective: Objective
    config: object


def _sgd(problem, Ps, Rs, monitor):
    """SPEC.md's per-sample SGD; the whitened objective re-whitens every epoch.

    Re-whitening (``P <- P W g``, ``R <- W^-1 R / g``, ``g = sqrt(tau / k)``)
    changes no reconstruction and no whitened latent, so the whitened loss
    stays the same; the epoch then runs the reference kernel with alignment
    weight ``w * k``, on whose (whitened, scaled by ``g``) latents the
    reference alignment is the whitened one. This is
    projected SGD on the constraint that every model's latent covariance is
    the identity, which is what removes the shrinking direction.
    """
    objective, config = problem.objective, problem.config
    if objective.kind == "reference":
        kwargs = {}
    else:
        gram, widths = problem.gram, objective.widths
        ridges = [ridge(gram[s, s], objective.regularization) for s in slices(widths)]

        # Latents are whitened to variance tau / k per dimension rather than
        # 1, so that their squared norm is that of a sample, as in the
        # reference: the step sizes that are stable for one are for the other.
        # The kernel's alignment weight is then w * tau / (tau / k) = w * k.
        gain = np.sqrt(objective.scale / objective.k)

        def retract(Ps, Rs):
            for s, shift, P, R in zip(slices(widths), ridges, Ps, Rs):
                S = P.T @ (gram[s, s] @ P) + shift * (P.T @ P)
                W, lam, V = whitening(S, P.dtype)
                if not np.isfinite(lam).all():  # zero latents: nothing to whiten
                    continue
                root = ((V * np.sqrt(lam)) @ V.T).astype(P.dtype)
                P[...] = (P @ W) * gain
                R[...] = (root @ R) / gain

        kwargs = {
            "alignment_weight": objective.w * objective.k,
            "retract": retract,
            "loss": lambda Ps, Rs: objective(Ps, Rs, gram, gradient=False),
        }
    with blas_single_threaded():
        Ps, Rs, _, _ = train_sgd(
            problem.blocks, Ps, Rs, config, monitor=monitor, **kwargs
        )
    return Ps, Rs, False


def _minibatch(problem, Ps, Rs, monitor):
    """Adam on mini-batches of ``batch_size`` rows (`train_minibatch`)."""
    config = problem.config
    out = train_minibatch(
        problem.objective,
        Ps,
        Rs,
        problem.blocks,
        problem.shift,
        config.batch_size,
        config.learning_rate,
        config.n_epochs,
        monitor,
        problem.gram,
    )
    if out is None:
        return None
    return out[0], out[1], False


def _lbfgs(problem, Ps, Rs, monitor):
    """L-BFGS-B on the sufficient statistics (`train_lbfgs`)."""
    return train_lbfgs(
        problem.objective, Ps, Rs, problem.gram, problem.config.n_epochs, monitor
    )


def _cca(problem, Ps, Rs, monitor):
    """The closed form: the start (computed by `train`) is the solution."""
    monitor.step(problem.objective(Ps, Rs, problem.gram, gradient=False))
    return Ps, Rs, True


# The registry: ProjectionConfig.solver accepts exactly these names.
SOLVERS = {"sgd": _sgd, "minibatch": _minibatch, "lbfgs": _lbfgs, "cca": _cca}
OBJECTIVES = ("reference", "whitened")
INITS = ("current", "cca")
# What objective=None and tol=None mean for every solver.
DEFAULT_OBJECTIVE = {
    "sgd": "reference",
    "minibatch": "whitened",
    "lbfgs": "whitened",
    "cca": "whitened",
}
DEFAULT_TOL = {"sgd": None, "minibatch": None, "lbfgs": 1e-8, "cca": None}


def _finite(arrays):
    return all(np.isfinite(a).all() for a in arrays)


def train(blocks, projections, reconstructions, config, monitor_args):
    """Run ``config.solver`` on copies of the weights.

    Parameters
    ----------
    blocks : list of (n, d_m) ndarray
        Validated samples, shifted by the models' current offsets.
    projections, reconstructions : lists of ndarray
        Starting weights (not modified).
    config : ProjectionConfig
    monitor_args : dict
        ``started`` (perf_counter at the start) for the `Monitor`.

    Returns
    -------
    Outcome, or None if the weights stopped being finite.
    """
    # Overflow is detected from the results (non-finite loss or weights).
    with (
        np.errstate(over="ignore", invalid="ignore", divide="ignore"),
        scipy_blas_single_threaded(),
    ):
        return _train(blocks, projections, reconstructions, config, monitor_args)


def _train(blocks, projections, reconstructions, config, monitor_args):
    solver = config.solver
    kind = config.objective or DEFAULT_OBJECTIVE[solver]
    tol = config.tol if config.tol is not None else DEFAULT_TOL[solver]
    dtype = blocks[0].dtype
    widths = [X.shape[1] for X in blocks]
    k = projections[0].shape[1]
    # Centre (new offsets = data means) unless the reference objective is
    # minimised from the current weights, as SPEC.md's optimiser does.
    centre = solver == "cca" or kind == "whitened" or config.init == "cca"
    stats = gram = None
    shifts = [None] * len(blocks)
    pending = None
    if centre or solver in ("lbfgs", "minibatch"):
        stats = accumulate(blocks)
        shift = stats.mean if centre else np.zeros_like(stats.mean)
        gram = stats.second_moment(shift)
        if not np.isfinite(gram).all():  # the features overflow the dtype
            return None
        if centre:
            shifts = [mu.astype(dtype) for mu in stats.means()]
            if solver == "sgd":  # minibatch shifts its batches, the others
                blocks = [X - mu for X, mu in zip(blocks, shifts)]  # use statistics
            else:
                pending = np.concatenate(shifts)
    objective = Objective(
        kind,
        widths,
        k,
        config.alignment_weight,
        config.regularization,
        sample_scale(gram, widths) if gram is not None else 1.0,
        dtype,
    )
    agreement = None
    if solver == "cca" or config.init == "cca":
        Ps, agreement = fit_cca(stats, k, config.regularization)
        Rs = [least_squares_inverse(stats.block(m, m), P) for m, P in enumerate(Ps)]
    else:
        Ps = [np.array(P, dtype=dtype) for P in projections]
        Rs = [np.array(R, dtype=dtype) for R in reconstructions]
    problem = _Problem(blocks, pending, stats, gram, objective, config)
    total = 1 if solver == "cca" else config.n_epochs
    with Monitor(
        total, tol, config.callback, config.progress, **monitor_args
    ) as monitor:
        if solver == "cca":
            monitor.start(
                objective(
                    [np.asarray(P, dtype=dtype) for P in projections],
                    [np.asarray(R, dtype=dtype) for R in reconstructions],
                    gram,
                    gradient=False,
                )
            )
        out = SOLVERS[solver](problem, Ps, Rs, monitor)
        if out is None or not (_finite(out[0]) and _finite(out[1])):
            return None
        Ps, Rs, finished = out
        if kind == "whitened" and solver != "cca":
            Ps, agreement = canonicalise(stats, Ps, k, config.regularization)
            Rs = [least_squares_inverse(stats.block(m, m), P) for m, P in enumerate(Ps)]
            monitor.replace_last(objective(Ps, Rs, gram, gradient=False))
        if not math.isfinite(monitor.history[-1] if monitor.history else 0.0):
            return None
    converged = bool(finished or monitor.converged)
    if tol is not None and not (converged or monitor.stopped):
        # Before publishing: warnings turned into errors leave the space as it was.
        warnings.warn(
            f"solver={solver!r} stopped after {monitor.iterations} iterations "
            f"(n_epochs) before the loss settled to tol={tol}; raise n_epochs "
            "or tol",
            ConvergenceWarning,
            stacklevel=4,
        )
    if kind == "reference" and solver != "cca":
        agreement = None  # that of the start, if init="cca": no longer true
    return Outcome(
        projections=[np.ascontiguousarray(P, dtype=dtype) for P in Ps],
        reconstructions=[np.ascontiguousarray(R, dtype=dtype) for R in Rs],
        shifts=shifts,
        initial_loss=monitor.initial_loss,
        history=monitor.history,
        converged=converged,
        stopped=monitor.stopped,
        objective=kind,
        agreement=None if agreement is None else tuple(float(a) for a in agreement),
    )
