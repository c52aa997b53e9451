# SPDX-License-Identifier: BSD-3-Clause
"""latentspace: one shared latent space for embeddings from many models.

Each model registers with its own input width and learns a linear projection
into the space and a reconstruction back out; then anything one model produces
can be compared with, retrieved by, or translated into another model's
representation.
"""

from ._config import ProjectionConfig, TrainingResult, TrainingState
from ._exceptions import (
    AlignmentNotFoundError,
    ConvergenceWarning,
    DimensionWarning,
    InvalidParameterError,
    SpaceFileError,
    TrainingDivergedError,
    UnknownModelError,
)
from ._faiss import FaissIndex
from ._matching import Matching
from ._index import GalleryIndex
from ._scoring import SearchResult
from ._space import LatentSpace
from ._version import __version__ as __version__

__all__ = [
    "AlignmentNotFoundError",
    "ConvergenceWarning",
    "DimensionWarning",
    "FaissIndex",
    "GalleryIndex",
    "InvalidParameterError",
    "LatentSpace",
    "Matching",
    "ProjectionConfig",
    "SearchResult",
    "SpaceFileError",
    "TrainingDivergedError",
    "TrainingResult",
    "TrainingState",
    "UnknownModelError",
]
