# SPDX-License-Identifier: BSD-3-Clause
"""latentspace: one shared latent space for embeddings from many models.

Each model registers with its own input width and learns a linear projection
into the space and a reconstruction back out; then anything one model produces
can be compared with, retrieved by, or translated into another model's
representation.
"""

from ._training.config import ProjectionConfig, TrainingResult, TrainingState
from ._exceptions import (
    AlignmentNotFoundError,
    ConvergenceWarning,
    DimensionWarning,
    InvalidParameterError,
    SpaceFileError,
    TrainingDivergedError,
    UnknownModelError,
)
from ._search.faiss_index import FaissIndex
from ._training.matching import Matching
from ._search.exact_index import GalleryIndex
from ._search.scoring import SearchResult
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
