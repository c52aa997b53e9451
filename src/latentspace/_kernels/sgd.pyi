# SPDX-License-Identifier: BSD-3-Clause
from typing import Any

from numpy.typing import NDArray

MAX_ROWS: int

class AffineMap:
    W: NDArray[Any]
    shift: NDArray[Any] | None
    def __init__(self, W: NDArray[Any], shift: NDArray[Any] | None = ...) -> None: ...
    def __call__(
        self, x: object, out: NDArray[Any] | None = ...
    ) -> NDArray[Any] | None: ...

def loss_sum(
    X: NDArray[Any],
    widths: NDArray[Any],
    observed: NDArray[Any] | None,
    P: NDArray[Any],
    R: NDArray[Any],
    alignment_weight: float,
    Z: NDArray[Any],
    Xhat: NDArray[Any],
) -> float: ...
def sgd_prime(
    X: NDArray[Any],
    widths: NDArray[Any],
    P: NDArray[Any],
    R: NDArray[Any],
    Z: NDArray[Any],
    E: NDArray[Any],
    V: NDArray[Any],
) -> None: ...
def sgd_epoch(
    X: NDArray[Any],
    widths: NDArray[Any],
    observed: NDArray[Any] | None,
    rates: NDArray[Any],
    P: NDArray[Any],
    R: NDArray[Any],
    Z: NDArray[Any],
    E: NDArray[Any],
    V: NDArray[Any],
    A: NDArray[Any],
    g: NDArray[Any],
    learning_rate: float,
    alignment_weight: float,
    check_every: int,
) -> int: ...
def sgd_avx(enable: bool | None = ...) -> bool: ...
