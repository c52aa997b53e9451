# SPDX-License-Identifier: BSD-3-Clause
"""Gradient solvers of an `latentspace._losses.Objective`: full-batch L-BFGS on
sufficient statistics, and mini-batch Adam on the samples."""

import math

import numpy as np

from ._threads import scipy_blas_single_threaded

__all__ = ["train_lbfgs", "train_minibatch"]

# Adam's moment decay rates (Kingma and Ba's defaults) and the per-epoch decay
# of the step size (that of the reference optimiser).
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
_DECAY = 0.999


def train_lbfgs(objective, Ps, Rs, gram, max_iter, monitor):
    """Minimise ``objective`` on second moments ``gram`` with SciPy's L-BFGS-B.

    Every iteration costs one or a few loss-and-gradient evaluations of
    ``O(D^2 k)``; no pass over the samples.

    Parameters
    ----------
    objective : Objective
    Ps, Rs : lists of ndarray
        Starting weights (not modified).
    gram : (D, D) ndarray
    max_iter : int
    monitor : Monitor
        Its `step` runs after every iteration; it may stop the run.

    Returns
    -------
    Ps, Rs : lists of ndarray
        New weights in the objective's dtype.
    finished : bool
        Whether L-BFGS-B reported convergence (its own criteria).
    """
    from scipy.optimize import minimize

    dtype = objective.dtype

    def fun(theta):
        Ps, Rs = objective.split(theta.astype(dtype))
        loss, gPs, gRs = objective(Ps, Rs, gram)
        if not math.isfinite(loss):
            return math.inf, np.zeros_like(theta)
        return loss, objective.join(gPs, gRs, np.float64)

    def callback(intermediate_result):
        if monitor.step(intermediate_result.fun):
            raise StopIteration

    theta = objective.join(Ps, Rs, np.float64)
    monitor.start(objective(Ps, Rs, gram, gradient=False))
    with scipy_blas_single_threaded():
        result = minimize(
            fun,
            theta,
            jac=True,
            method="L-BFGS-B",
            callback=callback,
            # Stopping on the relative decrease is the monitor's job (tol).
            options={"maxiter": max_iter, "ftol": 0.0, "gtol": 0.0, "maxcor": 20},
        )
    Ps, Rs = objective.split(np.asarray(result.x).astype(dtype))
    return Ps, Rs, bool(result.success)


def train_minibatch(
    objective,
    Ps,
    Rs,
    blocks,
    shift,
    batch_size,
    learning_rate,
    n_epochs,
    monitor,
    gram,
):
    """Minimise ``objective`` with Adam on mini-batches of aligned rows.

    Batches are consecutive rows, in order. Each step uses the second moments
    of one batch (``O(b D^2 + D^2 k)``); the whitened objective whitens with
    the full data's moments ``gram``, so the batch gradient is unbiased. The
    step size decays by 0.999 per epoch, as in the reference optimiser; the
    loss recorded after every epoch is that of the full data.

    Parameters
    ----------
    objective : Objective
    Ps, Rs : lists of ndarray
        Starting weights (not modified).
    blocks : list of (n, d_m) ndarray
        Aligned samples; a batch is their rows concatenated, minus ``shift``
        (no copy of the whole data is made).
    shift : (D,) ndarray or None
    batch_size : int
    learning_rate : float
    n_epochs : int
    monitor : Monitor
    gram : (D, D) ndarray
        Second moments of all the shifted samples.

    Returns
    -------
    Ps, Rs : lists of ndarray
    """
    theta = objective.join(Ps, Rs).copy()
    first = np.zeros_like(theta)
    second = np.zeros_like(theta)
    n = len(blocks[0])
    step = 0
    monitor.start(objective(*objective.split(theta), gram, gradient=False))
    for _ in range(n_epochs):
        for start in range(0, n, batch_size):
            batch = np.concatenate([X[start : start + batch_size] for X in blocks], 1)
            if shift is not None:
                batch -= shift
            # batch second moments: B.T @ B / b
            moments = (batch.T @ batch) / len(batch)
            loss, gPs, gRs = objective(*objective.split(theta), moments, gram)
            grad = objective.join(gPs, gRs)
            if not (math.isfinite(loss) and np.isfinite(grad).all()):
                return None
            step += 1
            first *= _BETA1
            first += (1 - _BETA1) * grad
            second *= _BETA2
            second += (1 - _BETA2) * grad * grad
            scale = learning_rate * math.sqrt(1 - _BETA2**step) / (1 - _BETA1**step)
            theta -= scale * first / (np.sqrt(second) + _ADAM_EPS)
        learning_rate *= _DECAY
        loss = objective(*objective.split(theta), gram, gradient=False)
        if not math.isfinite(loss):
            return None
        if monitor.step(loss):
            break
    return objective.split(theta)
