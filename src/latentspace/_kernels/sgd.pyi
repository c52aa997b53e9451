# SPDX-License-Identifier: BSD-3-Clause
import numpy as np
from numpy.typing import NDArray

_Floats = NDArray[np.float64] | NDArray[np.float32]
_Indices = NDArray[np.intp]
_Mask = NDArray[np.uint8]

def loss_sum(
    X: _Floats,
    widths: _Indices,
    observed: _Mask | None,
    P: _Floats,
    R: _Floats,
    alignment_weight: float,
    Z: _Floats,
    Xhat: _Floats,
) -> float: ...
def sgd_prime(
    X: _Floats,
    widths: _Indices,
    P: _Floats,
    R: _Floats,
    Z: _Floats,
    E: _Floats,
    V: _Floats,
) -> None: ...
def sgd_epoch(
    X: _Floats,
    widths: _Indices,
    observed: _Mask | None,
    rates: _Floats,
    P: _Floats,
    R: _Floats,
    Z: _Floats,
    E: _Floats,
    V: _Floats,
    A: _Floats,
    g: _Floats,
    learning_rate: float,
    alignment_weight: float,
    check_every: int,
) -> int: ...
def sgd_avx(enable: bool | None = ...) -> bool: ...
