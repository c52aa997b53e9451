# SPDX-License-Identifier: BSD-3-Clause
"""Training configuration and the result of a training run."""

import dataclasses
from dataclasses import dataclass

from ._exceptions import InvalidParameterError
from ._validation import check_float, check_int

__all__ = ["ProjectionConfig", "TrainingResult", "resolve_config"]


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
        Step size of the first epoch; it decays by a factor 0.999 per epoch.
    n_epochs : int, default=100
        Passes over the data.
    alignment_weight : float, default=1.0
        Weight ``w`` of the alignment term relative to reconstruction.

    Raises
    ------
    InvalidParameterError
        If a field has a wrong type or is out of range.
    """

    latent_dim: int | None = None
    learning_rate: float = 0.01
    n_epochs: int = 100
    alignment_weight: float = 1.0

    def __post_init__(self):
        if self.latent_dim is not None:
            latent_dim = check_int("latent_dim", self.latent_dim, 1)
            object.__setattr__(self, "latent_dim", latent_dim)
        checked = {
            "learning_rate": check_float(
                "learning_rate", self.learning_rate, positive=True
            ),
            "n_epochs": check_int("n_epochs", self.n_epochs, 1),
            "alignment_weight": check_float(
                "alignment_weight", self.alignment_weight, positive=False
            ),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def resolve_config(config, overrides):
    """The `ProjectionConfig` for ``config`` (or the defaults) with ``overrides``."""
    if config is None:
        config = ProjectionConfig()
    elif not isinstance(config, ProjectionConfig):
        raise InvalidParameterError(
            f"config must be a ProjectionConfig or None, got {type(config).__name__}"
        )
    fields = {f.name for f in dataclasses.fields(ProjectionConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InvalidParameterError(
            f"unknown training option(s) {', '.join(map(repr, unknown))}; "
            f"ProjectionConfig fields are {', '.join(sorted(fields))}"
        )
    return dataclasses.replace(config, **overrides) if overrides else config


@dataclass(frozen=True)
class TrainingResult:
    """What a training run did.

    Attributes
    ----------
    n_epochs : int
        Epochs run.
    initial_loss : float
        Mean per-sample loss (SPEC.md's ``L / n``) before the first epoch.
    loss_history : tuple of float
        Mean per-sample loss after each epoch.
    seconds : float
        Wall time of the run, validation included.
    config : ProjectionConfig
        The configuration used.
    """

    n_epochs: int
    initial_loss: float
    loss_history: tuple
    seconds: float
    config: ProjectionConfig

    @property
    def final_loss(self) -> float:
        """Mean per-sample loss after the last epoch."""
        return self.loss_history[-1]
