# SPDX-License-Identifier: BSD-3-Clause
"""Type aliases of the public API."""

import os
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Data", "FloatArray", "IntArray", "Path", "PathOrFile"]

FloatArray = NDArray[np.floating[Any]]
"""An array of the space's dtype (float64 or float32)."""
IntArray = NDArray[np.int64]
Data = Mapping[str, ArrayLike]
"""Aligned samples: model name to array-like of shape (n, d_m)."""
Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]
PathOrFile = Path | BinaryIO
