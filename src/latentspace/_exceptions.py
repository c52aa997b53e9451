# SPDX-License-Identifier: BSD-3-Clause
"""Exceptions raised by latentspace."""

__all__ = [
    "AlignmentNotFoundError",
    "ConvergenceWarning",
    "DimensionWarning",
    "InvalidParameterError",
    "SpaceFileError",
    "TrainingDivergedError",
    "UnknownModelError",
]


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a wrong type or a value out of range."""


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered in the space."""

    def __str__(self) -> str:
        # KeyError would show the message with quotes around it.
        return str(self.args[0]) if self.args else ""


class TrainingDivergedError(FloatingPointError):
    """Training produced a non-finite loss or weights; the space was left as it was."""


class ConvergenceWarning(UserWarning):
    """A solver ran out of iterations before meeting its ``tol``."""


class DimensionWarning(UserWarning):
    """The latent dimension is larger than the training data can fill."""


class AlignmentNotFoundError(RuntimeError):
    """Training from unpaired rows found no correspondence between the models;
    the space was left as it was.

    Attributes
    ----------
    matching : Matching
        The figures of the best attempt (its ``criterion``).
    """

    def __init__(self, message, matching=None):
        super().__init__(message)
        self.matching = matching


class SpaceFileError(ValueError):
    """A file is not a valid saved latent space.

    Raised by `LatentSpace.load` for a file that is truncated, corrupted,
    edited, of an unsupported format version or not a latentspace file at
    all; nothing is loaded.
    """
