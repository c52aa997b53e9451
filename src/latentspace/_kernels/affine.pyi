# SPDX-License-Identifier: BSD-3-Clause
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Floats = NDArray[np.float64] | NDArray[np.float32]

MAX_ROWS: int

class AffineMap:
    @property
    def W(self) -> _Floats: ...
    @property
    def shift(self) -> _Floats | None: ...
    def __init__(self, W: _Floats, shift: _Floats | None = ...) -> None: ...
    def __call__(
        self, x: object, out: NDArray[np.floating[Any]] | None = ...
    ) -> _Floats | None: ...
