# SPDX-License-Identifier: BSD-3-Clause
"""The reference optimiser (per-sample SGD, docs/maths.md §3) around the compiled epoch."""

import math

import numpy as np

from .._kernels.sgd import sgd_epoch, sgd_prime
from .._exceptions import TrainingDivergedError
from .losses import whitening
from .._monitor import Run
from .objective import ReferenceLoss
from .statistics import ridge, slices
from .._threads import blas_single_threaded

__all__ = ["DECAY", "run", "train_sgd"]

# Work (sum of d_m * k) between two checks for Ctrl-C inside an epoch: a few
# milliseconds, so that an interrupt is prompt and the GIL is rarely taken.
_WORK_PER_SIGNAL_CHECK = 2**23
# The learning rate's decay after every epoch (docs/maths.md §3).
DECAY = 0.999


def _split(flat, widths, k, transpose):
    """Per-model matrices (views) of a flat concatenation of weights."""
    views, start = [], 0
    for d in widths.tolist():
        views.append(flat[start : start + d * k].reshape((k, d) if transpose else (d, k)))
        start += d * k
    return views


def _diverged(epoch, loss, learning_rate, blocks, names):
    """The error for a divergence, naming the learning rate that is stable.

    The per-sample update ``P -= lr * outer(x, ...)`` is stable while ``lr *
    ||x||^2`` stays below about one for every sample (measured: it diverged
    from 1.5 / max ||x||^2 and trained at 1 / max ||x||^2 on features of
    several widths and scales), so the error names the largest squared row
    norm and suggests half its inverse.
    """
    norms = [np.einsum("ij,ij->i", X, X, dtype=np.float64) for X in blocks]
    m = int(np.argmax([v.max() for v in norms]))
    row = int(np.argmax(norms[m]))
    largest = float(norms[m][row])
    return TrainingDivergedError(
        f"training diverged in epoch {epoch} (mean loss {loss}); the space keeps its "
        f"previous weights. The per-sample SGD is stable while learning_rate * "
        f"||x||^2 stays below about 1, and the largest squared row norm is "
        f"{largest:.4g} (model {names[m]!r}, row {row}), so learning_rate="
        f"{learning_rate:g} gives {learning_rate * largest:.3g}: try "
        f"learning_rate={0.5 / largest:.2g}, or scale the features, or "
        "solver='cca' (the default), which needs no learning rate"
    )


def _kernels(X, widths, k, observed, rates, P, R, w):
    """``restart()``, to call before an epoch after the weights changed, and
    ``epoch(learning_rate)``, the compiled epoch."""
    dtype, n_models = X.dtype, len(widths)
    check_every = max(1, _WORK_PER_SIGNAL_CHECK // (X.shape[1] * k))
    Z = np.empty((n_models, k), dtype)
    E = np.empty((2, X.shape[1]), dtype)
    V = np.empty((n_models, k), dtype)
    A = np.empty((n_models, k), dtype)
    g = np.empty(k, dtype)

    def epoch(lr):
        return sgd_epoch(X, widths, observed, rates, P, R, Z, E, V, A, g, lr, w,
                         check_every)

    return (lambda: sgd_prime(X, widths, P, R, Z, E, V)), epoch


def train_sgd(blocks, projections, reconstructions, config, *, names, observed=None,
              rates=None, monitor=None, alignment_weight=None, retract=None,
              loss=None):
    """Train copies of the weights with the reference per-sample SGD.

    Parameters
    ----------
    blocks : list of (n, d_m) ndarray
        Aligned, validated, C-contiguous samples, one block per model, zero
        where the model did not observe a sample.
    projections, reconstructions : list of ndarray
        Starting ``P_m`` (d_m, k) and ``R_m`` (k, d_m); not modified.
    config : ProjectionConfig
    names : sequence of str
        The models, for messages.
    observed : (n, M) bool ndarray, optional
        Which model observed which sample (default: all of them).
    rates : sequence of float, optional
        Relative step size of every model (default 1; 0 freezes a model).
    monitor : Monitor, optional
        Records the loss after every epoch and may stop training early.
    alignment_weight : float, optional
        The ``w`` of the kernel (default ``config.alignment_weight``).
    retract : callable, optional
        ``retract(Ps, Rs)`` modifies the weights in place before the first
        epoch and after every epoch (the whitened objective re-whitens there).
    loss : callable, optional
        ``loss(Ps, Rs)``, the mean loss reported (default the
        reference loss).

    Returns
    -------
    Run
        The trained weights (new arrays); the loss of every epoch is in the
        ``monitor``.

    Raises
    ------
    TrainingDivergedError
        If the loss stops being finite (the caller checks the weights).
    KeyboardInterrupt
        If interrupted; nothing is returned then.
    """
    dtype = blocks[0].dtype
    widths = np.array([X.shape[1] for X in blocks], dtype=np.intp)
    n, n_models, k = len(blocks[0]), len(blocks), projections[0].shape[1]
    X = np.concatenate(blocks, axis=1)
    P = np.concatenate([p.ravel() for p in projections])
    R = np.concatenate([r.ravel() for r in reconstructions])
    Ps, Rs = _split(P, widths, k, False), _split(R, widths, k, True)
    mask = None if observed is None else observed.view(np.uint8)
    rates = np.ones(n_models, dtype) if rates is None else np.asarray(rates, dtype)
    w = config.alignment_weight if alignment_weight is None else alignment_weight
    restart, epoch = _kernels(X, widths, k, mask, rates, P, R, w)
    if loss is None:
        objective = ReferenceLoss(X, widths, k, observed)

        def loss(Ps, Rs):
            return objective(P, R, w)  # Ps and Rs are views of P and R

    if retract is not None:
        retract(Ps, Rs)
    initial_loss = loss(Ps, Rs)
    if monitor is not None:
        monitor.start(initial_loss)
    restart()
    learning_rate = config.learning_rate
    for number in range(1, config.n_epochs + 1):
        done = epoch(learning_rate)
        if done == n and retract is not None:
            retract(Ps, Rs)
            restart()
        value = loss(Ps, Rs) if done == n else math.nan
        if not math.isfinite(value):
            raise _diverged(number, value, config.learning_rate, blocks, names)
        learning_rate *= DECAY
        if monitor is not None and monitor.step(value):
            break
    return Run(Ps, Rs, False)


def run(problem, Ps, Rs, monitor):
    """The solver "sgd": the reference per-sample SGD (docs/maths.md §3) on
    ``problem`` (a `latentspace._training.fitting.Problem`) from ``Ps``, ``Rs``; the
    whitened objective re-whitens every epoch.

    Re-whitening (``P <- P W g``, ``R <- W^-1 R / g``, ``g = sqrt(tau / k)``)
    changes no reconstruction and no whitened latent, so the whitened loss
    stays the same; the epoch then runs the reference kernel with alignment
    weight ``w * k``, on whose (whitened, scaled by ``g``) latents the
    reference alignment is the whitened one. This is
    projected SGD on the constraint that every model's latent covariance is
    the identity, which is what removes the shrinking direction.
    """
    objective, config, moments = problem.objective, problem.config, problem.moments
    kwargs = {
        "names": problem.names,
        "observed": problem.observed,
        "rates": [0.0 if f else 1.0 for f in problem.frozen],
    }
    if objective.kind == "whitened":
        cols = slices(objective.widths)
        grams = [moments.observed(m, s) for m, s in enumerate(cols)]
        ridges = [ridge(G, r) for G, r in zip(grams, objective.regularization)]

        # Latents are whitened to variance tau / k per dimension rather than
        # 1, so that their squared norm is that of a sample, as in the
        # reference: the step sizes that are stable for one are for the other.
        # The kernel's alignment weight is then w * tau / (tau / k) = w * k.
        gain = np.sqrt(objective.scale / objective.k)

        def retract(Ps, Rs):
            for G, shift, P, R in zip(grams, ridges, Ps, Rs):
                S = P.T @ (G @ P) + shift * (P.T @ P)
                W, lam, V = whitening(S, P.dtype)
                if not np.isfinite(lam).all():  # zero latents: nothing to whiten
                    continue
                root = ((V * np.sqrt(lam)) @ V.T).astype(P.dtype)
                P[...] = (P @ W) * gain
                R[...] = (root @ R) / gain

        kwargs.update(
            alignment_weight=objective.w * objective.k,
            retract=retract,
            loss=lambda Ps, Rs: objective(Ps, Rs, moments, gradient=False),
        )
    with blas_single_threaded(problem.entries):
        return train_sgd(problem.blocks, Ps, Rs, config, monitor=monitor, **kwargs)
