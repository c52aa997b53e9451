# SPDX-License-Identifier: BSD-3-Clause
"""Training configuration and the result of a training run."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._exceptions import InvalidParameterError
from .._monitor import TrainingState
from .solvers import SOLVERS
from .._validation import check_dim, check_float, check_int

if TYPE_CHECKING:
    from .matching import Matching

OBJECTIVES = ("reference", "whitened")
INITS = ("current", "cca")

__all__ = [
    "ProjectionConfig",
    "TrainingResult",
    "TrainingState",
    "check_objective",
    "check_regularization",
    "resolve_config",
]


def _check_choice(name, value, allowed, *, none=False):
    """``value`` if it is one of ``allowed`` (or None when ``none``)."""
    if (none and value is None) or (isinstance(value, str) and value in allowed):
        return value
    options = ", ".join(map(repr, allowed)) + (" or None" if none else "")
    raise InvalidParameterError(f"{name} must be one of {options}, got {value!r}")


def check_objective(value):
    """One of the objectives (None refused)."""
    return _check_choice("objective", value, OBJECTIVES)


def check_regularization(value):
    """"auto" or a finite number >= 0."""
    if isinstance(value, str):
        return _check_choice("regularization", value, ("auto",))
    try:
        return check_float("regularization", value, positive=False)
    except InvalidParameterError:
        raise InvalidParameterError(
            f"regularization must be 'auto' or a finite number >= 0, got {value!r}"
        ) from None


@dataclass(frozen=True)
class ProjectionConfig:
    """How `LatentSpace.train_projections` trains.

    Parameters
    ----------
    latent_dim : int or None, default=None
        Latent dimension to train at. ``None`` keeps the space's dimension; any
        other value re-dimensions the space: every registered model is freshly
        initialised at that size, then the models in the data are trained.
    learning_rate : float, default=0.01
        Step size of the first epoch; it decays by a factor 0.999 per epoch
        ("sgd", "minibatch"). The per-sample SGD is stable while
        ``learning_rate`` is well below ``1 / max_i ||x_i||^2``.
    n_epochs : int, default=100
        Passes over the data ("sgd", "minibatch"), or the maximum number of
        iterations ("lbfgs"); ignored by "cca".
    alignment_weight : float, default=1.0
        Weight ``w`` of the alignment term relative to reconstruction.
    solver : {"cca", "sgd", "minibatch", "lbfgs"}, default="cca"
        - "cca" (the default): closed-form regularised multi-view CCA
          (MAXVAR generalised CCA, any number of models) from statistics
          accumulated in one pass: centres the inputs (per-model offsets),
          orders latent dimensions by how strongly the models agree on them
          and weights them by that agreement; the reconstructions are the
          least-squares inverses of the projections. No learning rate, no
          epochs: the best space the data allows, on raw (unnormalised)
          embeddings too.
        - "sgd": the reference optimiser of the Go package (per-sample SGD,
          see ``docs/maths.md``), kept exactly: with ``learning_rate=0.01``
          and ``n_epochs=100`` its results are those of the Go package's
          algorithm, bit for bit with its NumPy transcription.
        - "minibatch": Adam on mini-batches of ``batch_size`` consecutive rows.
        - "lbfgs": full-batch L-BFGS (SciPy's) on sufficient statistics (the
          Gram and cross-Gram matrices, accumulated in one pass): every
          iteration costs ``O(D^2 k)`` for ``D`` the summed input widths,
          whatever the number of samples.
    objective : {"reference", "whitened"} or None, default=None
        The loss the gradient solvers minimise and every solver reports.
        "reference" is the Go package's; it has no minimiser (scaling ``P``
        by ``eps`` and ``R`` by ``1/eps`` lowers it for ever), so descending
        it shrinks the latents rather than aligning them. "whitened" measures
        the alignment on whitened latents (see ``docs/maths.md``): no
        direction of the weights lowers it without aligning the models; the
        solution is then expressed in the agreement-ordered, weighted basis
        of "cca" and the offsets are the data means. ``None``: "reference"
        for "sgd" (and with ``frozen`` models), "whitened" for the other
        solvers ("cca" minimises no loss: the objective only selects the
        loss reported).
    init : {"current", "cca"} or None, default=None
        Starting weights of the gradient solvers: the space's ("current", as
        the reference optimiser does) or the closed-form solution ("cca",
        which also sets the offsets to the data means). ``None``: "current"
        for "sgd", "cca" for "minibatch" and "lbfgs", and "cca" for the free
        models whenever ``frozen`` models are given (a gradient solver
        started elsewhere ends far from the frozen space).
    regularization : "auto" or float, default="auto"
        Ridge added to every model's covariance, relative to the mean
        variance of its features (``G_m + r_m * trace(G_m) / d_m * I``), by
        "cca", ``init="cca"`` and the whitened objective. "auto": ``r_m = d_m /
        n_m``, the model's width over the number of samples it shares with
        another model (large for few samples and small for many, see
        ``docs/maths.md``); a number is used for every model. Larger values
        trust correlations in low-variance directions less.
    batch_size : int, default=256
        Rows per mini-batch ("minibatch").
    tol : float or None, default=None
        Early stopping: training stops after three consecutive iterations
        that each lowered the loss by at most ``tol`` times its magnitude (or
        raised it), and the result says it converged. ``None``: never for
        "sgd" and "minibatch", ``1e-8`` for "lbfgs". A solver that runs out
        of iterations with a ``tol`` set emits a `ConvergenceWarning`.
    callback : callable or None, default=None
        Called after every iteration as ``callback(state)`` with a
        `TrainingState` (iteration, loss, seconds). Returning true stops
        training (the weights so far are published); raising abandons it and
        leaves the space unchanged.
    progress : bool, default=False
        Show a tqdm progress bar (tqdm must be installed).

    Raises
    ------
    InvalidParameterError
        If a field has a wrong type or is out of range.
    """

    latent_dim: int | None = None
    learning_rate: float = 0.01
    n_epochs: int = 100
    alignment_weight: float = 1.0
    solver: str = "cca"
    objective: str | None = None
    init: str | None = None
    regularization: float | str = "auto"
    batch_size: int = 256
    tol: float | None = None
    callback: Callable[[TrainingState], object] | None = None
    progress: bool = False

    def __post_init__(self):
        if self.latent_dim is not None:
            latent_dim = check_dim("latent_dim", self.latent_dim)
            object.__setattr__(self, "latent_dim", latent_dim)
        checked = {
            "learning_rate": check_float(
                "learning_rate", self.learning_rate, positive=True
            ),
            "n_epochs": check_int("n_epochs", self.n_epochs, 1),
            "alignment_weight": check_float(
                "alignment_weight", self.alignment_weight, positive=False
            ),
            "solver": _check_choice("solver", self.solver, tuple(SOLVERS)),
            "objective": _check_choice("objective", self.objective, OBJECTIVES,
                                       none=True),
            "init": _check_choice("init", self.init, INITS, none=True),
            "regularization": check_regularization(self.regularization),
            "batch_size": check_int("batch_size", self.batch_size, 1),
            "tol": None if self.tol is None else check_float(
                "tol", self.tol, positive=False
            ),
        }
        if self.callback is not None and not callable(self.callback):
            raise InvalidParameterError(
                f"callback must be a callable or None, got {self.callback!r} "
                f"({type(self.callback).__name__})"
            )
        if not isinstance(self.progress, (bool, np.bool_)):
            raise InvalidParameterError(
                f"progress must be True or False, got {self.progress!r}"
            )
        checked["progress"] = bool(self.progress)
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def resolve_config(config, overrides):
    """The `ProjectionConfig` for ``config`` (or the defaults) with ``overrides``,
    validated once."""
    if config is not None and not isinstance(config, ProjectionConfig):
        raise InvalidParameterError(
            f"config must be a ProjectionConfig or None, got {type(config).__name__}"
        )
    if not overrides:
        return ProjectionConfig() if config is None else config
    fields = {f.name for f in dataclasses.fields(ProjectionConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InvalidParameterError(
            f"unknown training option(s) {', '.join(map(repr, unknown))}; "
            f"ProjectionConfig fields are {', '.join(sorted(fields))}"
        )
    if config is None:
        return ProjectionConfig(**overrides)
    return dataclasses.replace(config, **overrides)


@dataclass(frozen=True)
class TrainingResult:
    """What a training run did.

    Attributes
    ----------
    n_epochs : int
        Iterations run: epochs ("sgd", "minibatch"), L-BFGS iterations
        ("lbfgs"), 1 for the closed form ("cca"). Same as `iterations`.
    initial_loss : float
        Mean per-sample loss of `objective` before the first iteration, on
        the data as the solver sees it (shifted by the new offsets).
    loss_history : tuple of float
        Mean per-sample loss after each iteration; the last entry is that of
        the published weights.
    seconds : float
        Wall time of the run, validation included.
    config : ProjectionConfig
        The configuration used, as given.
    solver : str
        The solver that ran.
    objective : str
        The objective whose values the history holds ("reference" is
        the ``L / n`` of docs/maths.md §2).
    converged : bool
        Whether the solver met its stopping criterion (``tol``, or L-BFGS-B's
        own); always true for "cca", false when it ran out of iterations or
        the callback stopped it.
    agreement : tuple of float or None
        For "cca" and the whitened objective: how strongly the models agree
        on every latent dimension (mean pairwise correlation, decreasing; the
        canonical correlations for two models). None otherwise.
    regularization : tuple of float or None
        Every trained model's relative ridge as used (what "auto" chose), in
        the order of the data's models; None if no solver step used one
        ("sgd" with the reference objective).
    matching : Matching or None
        With ``refine=True``: the correspondences found among the unpaired
        rows (method, whether accepted, how many, the criterion, rounds).
    """

    n_epochs: int
    initial_loss: float
    loss_history: tuple[float, ...]
    seconds: float
    config: ProjectionConfig
    solver: str = "sgd"
    objective: str = "reference"
    converged: bool = False
    agreement: tuple[float, ...] | None = None
    regularization: tuple[float, ...] | None = None
    matching: "Matching | None" = None

    @property
    def iterations(self) -> int:
        """Iterations run (`n_epochs`)."""
        return self.n_epochs

    @property
    def final_loss(self) -> float:
        """Mean per-sample loss after the last iteration (`initial_loss` if
        none ran: L-BFGS-B stops before its first where the gradient is 0)."""
        return self.loss_history[-1] if self.loss_history else self.initial_loss
