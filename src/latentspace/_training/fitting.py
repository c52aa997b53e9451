# SPDX-License-Identifier: BSD-3-Clause
"""One training call, from its inputs to the models to publish.

`fit` reads the data, checks what the call asks against it, runs `train` on
copies of the weights and makes the new models. `train` prepares the problem
(offsets, sufficient statistics, objective, starting weights) as the solver's
entry of `latentspace._training.solvers.SOLVERS` asks, runs the solver and,
for the whitened objective, puts the result in the agreement-ordered,
weighted basis of the closed form. `evaluate_loss` is `LatentSpace.loss`.
"""

import copy
import math
import time
import warnings
from typing import NamedTuple

import numpy as np

from .cca import (
    canonicalise,
    fit_cca,
    fit_to_frozen,
    least_squares_inverse,
    pair_maps,
)
from .._exceptions import (
    ConvergenceWarning,
    DimensionWarning,
    InvalidParameterError,
    TrainingDivergedError,
)
from .config import TrainingResult, check_objective, check_regularization
from .data import training_data
from .losses import MomentObjective, sample_scale, whitened_loss
from .objective import mean_loss
from .._model import make_model, xavier
from .._monitor import Monitor, check_progress_available
from .solvers import SOLVERS
from .._threads import scipy_blas_single_threaded
from .._validation import check_alignment_weight, check_frozen

__all__ = ["Fit", "Outcome", "Problem", "evaluate_loss", "fit", "train"]

INTERRUPTED = "latentspace: training interrupted; the space is unchanged"


class Fit(NamedTuple):
    """The result of `fit`: what a space publishes (`latentspace._model.published`)."""

    dim: int
    start: dict  # name -> Model: the models training started from
    trained: dict  # name -> Model: the new models (not the frozen ones)
    used: list  # the models of the data, trained or frozen
    rng: object  # the generator of a re-dimensioned space, or None
    pair_maps: dict  # (name_a, name_b) -> (M_a, M_b), spaces of 3+ models
    result: TrainingResult


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
    regularization: tuple | None  # every model's relative ridge, if used
    pair_maps: dict  # (name_a, name_b) -> (M_a, M_b), spaces of 3+ models


class Problem(NamedTuple):
    """Everything a solver needs besides the starting weights."""

    names: list  # the models, for messages
    blocks: list | None  # (n, d_m) samples (shifted by the new offsets for "sgd")
    observed: np.ndarray | None  # (n, M) bool: which model observed which sample
    shift: np.ndarray | None  # (D,) new offsets the blocks still carry, or None
    stats: object  # Statistics of the samples before the shift, or None
    moments: object  # Moments of the shifted samples, or None
    objective: MomentObjective
    config: object
    frozen: tuple  # per model: whether its weights stay
    entries: int  # of the largest matrix multiplied (see `_threads`)


def fit(snapshot, dtype, data, config, *, observed=None, unpaired=None,
        frozen=(), matching=None, started=None):
    """Train the models of ``data`` from ``snapshot``'s weights.

    Parameters
    ----------
    snapshot : Snapshot
        The space's weights at the start (not modified).
    dtype : numpy dtype
        The space's dtype.
    data, observed, unpaired, frozen
        As for `LatentSpace.train_projections`.
    config : ProjectionConfig
        Resolved.
    matching : Matching, optional
        What ``refine`` found, for the result.
    started : float, optional
        ``time.perf_counter()`` at the start of the call.

    Returns
    -------
    Fit
    """
    if started is None:
        started = time.perf_counter()
    dim = snapshot.dim if config.latent_dim is None else config.latent_dim
    # Re-dimensioning draws every model afresh, from a copy of the generator.
    rng = copy.deepcopy(snapshot.rng) if dim != snapshot.dim else None
    start = snapshot.models
    with training_data(
        data, start, dtype, observed=observed, unpaired=unpaired
    ) as source:
        names = source.names
        frozen = check_frozen(frozen, names, config, dim != snapshot.dim)
        if source.streamed and not SOLVERS[config.solver].streams:
            streaming = " or ".join(
                repr(name) for name, solver in SOLVERS.items() if solver.streams
            )
            raise InvalidParameterError(
                f"solver={config.solver!r} visits samples; a stream of chunks "
                f"trains with {streaming} (or pass a mapping of arrays; "
                "memory-mapped files work)"
            )
        if dim != snapshot.dim:  # every model afresh, after the checks
            start = {
                name: xavier(rng, m.input_dim, dim, dtype)
                for name, m in start.items()
            }
        check_progress_available(config.progress)
        try:
            outcome = train(
                source,
                [start[n].offset for n in names],
                [start[n].projection for n in names],
                [start[n].reconstruction for n in names],
                config,
                {"started": started},
                [n in frozen for n in names],
            )
        except KeyboardInterrupt as exc:
            exc.add_note(INTERRUPTED)
            raise
        except TrainingDivergedError:
            source.check_unchanged()  # data changed by another thread?
            raise
    trained = {
        name: make_model(p, r, _plus(start[name].offset, shift))
        for name, p, r, shift in zip(
            names, outcome.projections, outcome.reconstructions, outcome.shifts
        )
        if name not in frozen
    }
    result = TrainingResult(
        n_epochs=len(outcome.history),
        initial_loss=outcome.initial_loss,
        loss_history=tuple(outcome.history),
        seconds=time.perf_counter() - started,
        config=config,
        solver=config.solver,
        objective=outcome.objective,
        converged=outcome.converged,
        agreement=outcome.agreement,
        regularization=outcome.regularization,
        matching=matching,
    )
    return Fit(dim, start, trained, names, rng, outcome.pair_maps, result)


def evaluate_loss(models, dtype, data, alignment_weight, observed, objective,
                  regularization):
    """`LatentSpace.loss` of ``models`` (a snapshot's) of ``dtype``."""
    w = check_alignment_weight(alignment_weight)
    check_objective(objective)
    with training_data(
        data, models, dtype, observed=observed,
        min_models=1 if objective == "reference" else 2,
    ) as source:
        names = source.names
        offsets = [models[n].offset for n in names]
        Ps = [models[n].projection for n in names]
        Rs = [models[n].reconstruction for n in names]
        if objective == "whitened":
            return whitened_loss(source.statistics(offsets), Ps, Rs, w,
                                 check_regularization(regularization))
        blocks, mask = source.samples(offsets)
    return mean_loss(blocks, Ps, Rs, w, mask)


def _finite(arrays):
    return all(np.isfinite(a).all() for a in arrays)


def train(source, offsets, projections, reconstructions, config, monitor_args,
          frozen):
    """Run ``config.solver`` on copies of the weights.

    Parameters
    ----------
    source : training data
        ``statistics(offsets)`` and ``samples(offsets)`` (`latentspace._training.data`).
    offsets : list of (d_m,) ndarray or None
        The models' current offsets.
    projections, reconstructions : lists of ndarray
        Starting weights (not modified).
    config : ProjectionConfig
    monitor_args : dict
        ``started`` (perf_counter at the start) for the `Monitor`.
    frozen : sequence of bool
        Per model: its weights and offset stay; the others learn to land on
        the space the frozen ones define, with the reference objective, from
        centred features.

    Returns
    -------
    Outcome

    Raises
    ------
    TrainingDivergedError
        If the statistics, the loss or the weights stopped being finite.

    Warns
    -----
    DimensionWarning
        If the data cannot fill the latent dimension.
    ConvergenceWarning
        If a ``tol`` was not met.
    """
    # Overflow is detected from the results (non-finite loss or weights).
    entries = _entries(source.widths, projections[0].shape[1])
    with (
        np.errstate(over="ignore", invalid="ignore", divide="ignore"),
        scipy_blas_single_threaded(entries),
    ):
        return _train(source, offsets, projections, reconstructions, config,
                      monitor_args, tuple(frozen))


def _entries(widths, k):
    """Entries of the largest matrix a training multiplies (the Gram matrix
    of all features, or a features x latents block)."""
    width = sum(widths)
    return width * max(width, k)


def _plus(offset, shift):
    """An offset plus a shift, either possibly None."""
    if shift is None:
        return offset
    return shift if offset is None else offset + shift


def _diverged(solver, what):
    """The error for a run whose ``what`` stopped being finite (the solvers
    that visit samples name their learning rate themselves)."""
    return TrainingDivergedError(
        f"training with solver={solver!r} diverged ({what} not finite); the space "
        "keeps its previous weights: scale the features or raise regularization"
    )


def _multiview(stats, names):
    """`Statistics.multiview`, refusing a model that shares no sample."""
    aligned = stats.multiview()
    for name, count in zip(names, aligned.counts):
        if not count:
            raise InvalidParameterError(
                f"model {name!r} shares no sample with another model (every row "
                "it observed is unpaired): nothing aligns it"
            )
    return aligned


def _inverse(stats, centres, m, projection):
    """Model ``m``'s least-squares reconstruction over every row it observed,
    about the mean of ``centres``, the statistics that set its offset."""
    return least_squares_inverse(stats.about(m, centres.means()[m]), projection)


def _paired(stats, blocks, observed):
    """The number of samples that at least two models observed."""
    if stats is not None:
        return sum(sums.count for members, sums in stats.patterns if len(members) > 1)
    if observed is None:
        return len(blocks[0])
    return int(np.count_nonzero(observed.sum(axis=1) > 1))


def _check_dimension(k, widths, paired):
    """Warn if the data cannot fill ``k`` latent dimensions of the closed
    form's basis: a dimension needs two models (there are at most as many as
    the second largest width) and centred paired samples (at most their
    number less one)."""
    by_width = sorted(widths)[-2]
    by_pairs = max(paired - 1, 0)
    supported = min(by_width, by_pairs)
    if k <= supported:
        return
    reason = (
        f"the second largest model width is {by_width}" if by_width <= by_pairs
        else f"only {paired} samples are paired (centred, {by_pairs} dimensions)"
    )
    warnings.warn(
        f"latent_dim={k} is more than the data can fill: {reason}, so at most "
        f"{supported} latent dimensions carry signal shared by two models and the "
        f"other {k - supported} are zero. Use latent_dim <= {supported}",
        DimensionWarning,
        stacklevel=6,
    )


def _train(source, offsets, projections, reconstructions, config, monitor_args,
           frozen):
    solver = config.solver
    spec = SOLVERS[solver]
    closed = spec.closed_form
    transfer = any(frozen)
    kind = config.objective or ("reference" if transfer else spec.objective)
    tol = config.tol if config.tol is not None else spec.tol
    init = config.init or ("cca" if transfer else spec.init)
    dtype = source.dtype
    widths = source.widths
    k = projections[0].shape[1]
    # Centre (new offsets = data means) unless the reference objective is
    # minimised from the current weights, as the reference optimiser does; the
    # frozen models keep their offsets.
    centre = closed or kind == "whitened" or init == "cca" or transfer
    stats = aligned = moments = pending = None
    shifts = [None] * len(widths)
    regularization = (0.0,) * len(widths)
    if centre or spec.statistics:
        stats = source.statistics(offsets)
        # The alignment comes from the samples two or more models observed; a
        # sample one model observed alone only improves its reconstruction.
        aligned = _multiview(stats, source.names)
        regularization = aligned.ridges(config.regularization)
        # The closed form centres on the shared samples; the objectives of
        # the gradient solvers average over every observed sample.
        centres = aligned if closed else stats
        if centre:
            shifts = [
                None if f else mu.astype(dtype)
                for f, mu in zip(frozen, centres.means())
            ]
        shift = np.concatenate(
            [np.zeros(d) if s is None else s for d, s in zip(widths, shifts)]
        )
        moments = stats.moments(shift)
        if not np.isfinite(moments.gram).all():
            raise TrainingDivergedError(
                f"the features' second moments overflow {dtype} (the statistics "
                f"of solver={solver!r} are not finite); the space keeps its "
                "previous weights: scale the features down"
            )
        if centre and spec.shifts_batches:
            pending = shift.astype(dtype)
    blocks = observed = None
    if spec.needs == "samples":
        if not spec.shifts_batches:  # the blocks carry the new offsets
            offsets = [_plus(o, s) for o, s in zip(offsets, shifts)]
        blocks, observed = source.samples(offsets)
    if closed or kind == "whitened":  # the closed form's basis
        _check_dimension(k, widths, _paired(stats, blocks, observed))
    objective = MomentObjective(
        kind,
        widths,
        k,
        config.alignment_weight,
        regularization,
        sample_scale(moments, widths) if moments is not None else 1.0,
        dtype,
        frozen,
    )
    agreement = None
    Ps = [np.array(P, dtype=dtype) for P in projections]
    Rs = [np.array(R, dtype=dtype) for R in reconstructions]
    if closed or init == "cca":
        if transfer:
            Ps = fit_to_frozen(moments, widths, Ps, frozen, regularization)
        else:
            Ps, agreement = fit_cca(aligned, k, regularization)
        Rs = [
            R if f else _inverse(stats, centres, m, P)
            for m, (f, P, R) in enumerate(zip(frozen, Ps, Rs))
        ]
    problem = Problem(source.names, blocks, observed, pending, stats, moments,
                       objective, config, frozen, _entries(widths, k))
    total = 1 if closed else config.n_epochs
    with Monitor(
        total, tol, config.callback, config.progress, **monitor_args
    ) as monitor:
        if closed:
            monitor.start(
                objective(
                    [np.asarray(P, dtype=dtype) for P in projections],
                    [np.asarray(R, dtype=dtype) for R in reconstructions],
                    moments,
                    gradient=False,
                )
            )
        Ps, Rs, finished = spec.run(problem, Ps, Rs, monitor)
        if not (_finite(Ps) and _finite(Rs)):
            raise _diverged(solver, "loss or weights")
        if kind == "whitened" and not closed:
            Ps, agreement = canonicalise(stats, Ps, k, regularization)
            Rs = [_inverse(stats, centres, m, P) for m, P in enumerate(Ps)]
            monitor.replace_last(objective(Ps, Rs, moments, gradient=False))
        if not math.isfinite(monitor.history[-1] if monitor.history else 0.0):
            raise _diverged(solver, "loss")
    converged = bool(finished or monitor.converged)
    if tol is not None and not (converged or monitor.stopped):
        # Before publishing: warnings turned into errors leave the space as it was.
        warnings.warn(
            f"solver={solver!r} stopped after {monitor.iterations} iterations "
            f"(n_epochs) before the loss settled to tol={tol}; raise n_epochs "
            "or tol",
            ConvergenceWarning,
            stacklevel=5,
        )
    if kind == "reference" and not closed:
        agreement = None  # that of the start, if init="cca": no longer true
    maps = {}
    if agreement is not None and len(widths) > 2:
        names = source.names
        maps = {
            (names[a], names[b]): value
            for (a, b), value in pair_maps(aligned, Ps, config.regularization).items()
        }
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
        regularization=None if stats is None else regularization,
        pair_maps=maps,
    )
