# SPDX-License-Identifier: BSD-3-Clause
"""Gradient solvers of an `latentspace._training.losses.MomentObjective`: full-batch L-BFGS on
sufficient statistics, and mini-batch Adam on the samples."""

import math

import numpy as np

from .._exceptions import TrainingDivergedError
from .._monitor import Run
from .sgd import DECAY
from .statistics import Moments
from .._threads import blas_single_threaded

__all__ = ["run_lbfgs", "run_minibatch", "train_lbfgs", "train_minibatch"]

# Adam's moment decay rates (Kingma and Ba's defaults).
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


def train_lbfgs(objective, Ps, Rs, moments, max_iter, monitor):
    """Minimise ``objective`` on second moments ``moments`` with SciPy's L-BFGS-B.

    Every iteration costs one or a few loss-and-gradient evaluations of
    ``O(D^2 k)``; no pass over the samples.

    Parameters
    ----------
    objective : MomentObjective
    Ps, Rs : lists of ndarray
        Starting weights (not modified).
    moments : Moments
    max_iter : int
    monitor : Monitor
        Its `step` runs after every iteration; it may stop the run.

    Returns
    -------
    Run
        New weights in the objective's dtype; ``finished``: whether L-BFGS-B
        reported convergence (its own criteria).
    """
    from scipy.optimize import minimize

    dtype = objective.dtype

    def fun(theta):
        Ps, Rs = objective.split(theta.astype(dtype))
        loss, gPs, gRs = objective(Ps, Rs, moments)
        if not math.isfinite(loss):
            return math.inf, np.zeros_like(theta)
        return loss, objective.join(gPs, gRs, np.float64)

    def callback(intermediate_result):
        if monitor.step(intermediate_result.fun):
            raise StopIteration

    theta = objective.join(Ps, Rs, np.float64)
    monitor.start(objective(Ps, Rs, moments, gradient=False))
    # (on one BLAS thread: the caller's `blas_single_threaded`)
    result = minimize(
        fun,
        theta,
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        # Stopping on the relative decrease is the monitor's job (tol).
        options={"maxiter": max_iter, "ftol": 0.0, "gtol": 0.0, "maxcor": 20},
    )
    if not monitor.history:  # a stationary start: L-BFGS-B made no iteration
        monitor.step(result.fun)
    Ps, Rs = objective.split(np.asarray(result.x).astype(dtype))
    return Run(Ps, Rs, bool(result.success))


def _batch_moments(batch, observed, widths):
    """The `Moments` of the rows of ``batch`` (b, D), which it may modify.

    ``observed`` (b, M) bool or None says which model observed which row;
    the batch is zeroed where one did not.
    """
    rows = len(batch)
    if observed is None:
        # B.T @ B / b
        return Moments.complete((batch.T @ batch) / rows, len(widths))
    batch *= np.repeat(observed, widths, axis=1)
    count = observed.sum(axis=1)
    weighted = batch * (1 / np.sqrt(np.maximum(count, 1)))[:, None].astype(batch.dtype)
    return Moments(
        (batch.T @ batch) / rows,
        (weighted.T @ weighted) / rows,
        observed.mean(axis=0),
    )


def train_minibatch(
    objective,
    Ps,
    Rs,
    blocks,
    observed,
    shift,
    batch_size,
    learning_rate,
    n_epochs,
    monitor,
    moments,
):
    """Minimise ``objective`` with Adam on mini-batches of aligned rows.

    Batches are consecutive rows, in order. Each step uses the second moments
    of one batch (``O(b D^2 + D^2 k)``); the whitened objective whitens with
    the full data's ``moments``, so the batch gradient is unbiased. The
    step size decays by 0.999 per epoch, as in the reference optimiser; the
    loss recorded after every epoch is that of the full data.

    Parameters
    ----------
    objective : MomentObjective
    Ps, Rs : lists of ndarray
        Starting weights (not modified).
    blocks : list of (n, d_m) ndarray
        Aligned samples, zero where a model did not observe one; a batch is
        their rows concatenated, minus ``shift`` where observed (no copy of
        the whole data is made).
    observed : (n, M) bool ndarray or None
        Which model observed which sample (None: all of them).
    shift : (D,) ndarray or None
    batch_size : int
    learning_rate : float
    n_epochs : int
    monitor : Monitor
    moments : Moments
        Of all the shifted samples.

    Returns
    -------
    Run

    Raises
    ------
    TrainingDivergedError
        If a loss or a gradient stops being finite.
    """
    diverged = TrainingDivergedError(
        "training with solver='minibatch' diverged (loss or weights not finite); "
        f"the space keeps its previous weights: try a smaller learning_rate (it "
        f"was {learning_rate}) or scale the features"
    )
    theta = objective.join(Ps, Rs).copy()
    first = np.zeros_like(theta)
    second = np.zeros_like(theta)
    n = len(blocks[0])
    step = 0
    monitor.start(objective(*objective.split(theta), moments, gradient=False))
    widths = objective.widths
    for _ in range(n_epochs):
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            batch = np.concatenate([X[rows] for X in blocks], 1)
            if shift is not None:
                batch -= shift
            mask = None if observed is None else observed[rows]
            loss, gPs, gRs = objective(
                *objective.split(theta), _batch_moments(batch, mask, widths), moments
            )
            grad = objective.join(gPs, gRs)
            if not (math.isfinite(loss) and np.isfinite(grad).all()):
                raise diverged
            step += 1
            first *= _BETA1
            first += (1 - _BETA1) * grad
            second *= _BETA2
            second += (1 - _BETA2) * grad * grad
            scale = learning_rate * math.sqrt(1 - _BETA2**step) / (1 - _BETA1**step)
            theta -= scale * first / (np.sqrt(second) + _ADAM_EPS)
        learning_rate *= DECAY  # that of the reference optimiser
        loss = objective(*objective.split(theta), moments, gradient=False)
        if not math.isfinite(loss):
            raise diverged
        if monitor.step(loss):
            break
    return Run(*objective.split(theta), False)


def run_minibatch(problem, Ps, Rs, monitor):
    """The solver "minibatch": Adam on mini-batches of ``batch_size`` rows
    (`train_minibatch`) of ``problem`` (a `latentspace._training.fitting.Problem`)."""
    config = problem.config
    with blas_single_threaded(problem.entries):
        return train_minibatch(
            problem.objective,
            Ps,
            Rs,
            problem.blocks,
            problem.observed,
            problem.shift,
            config.batch_size,
            config.learning_rate,
            config.n_epochs,
            monitor,
            problem.moments,
        )


def run_lbfgs(problem, Ps, Rs, monitor):
    """The solver "lbfgs": L-BFGS-B on the sufficient statistics of
    ``problem`` (`train_lbfgs`)."""
    with blas_single_threaded(problem.entries):
        return train_lbfgs(
            problem.objective, Ps, Rs, problem.moments, problem.config.n_epochs,
            monitor,
        )

