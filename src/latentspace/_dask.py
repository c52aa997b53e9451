# SPDX-License-Identifier: BSD-3-Clause
"""`project`, `retrieve` and `translate` of Dask arrays: lazy, block by block.

Imported only when one of them is given a Dask array. The result is a Dask
array of the same row blocks (the column axis in one chunk) whose every block
is the compiled map of the corresponding input block; the graph holds the
weights of the moment it was built, so training the space later does not
change a pending result. Shapes and dtypes are checked at once; values (NaN
or Inf) when a block is computed.
"""

import dask.array as da
import numpy as np

from ._kernels.affine import AffineMap
from ._exceptions import InvalidParameterError
from ._model import refusal
from ._validation import as_kernel_array

__all__ = ["apply"]


def _map_block(block, weights, shift, dtype, name, what, block_info=None):
    """One block of `apply`: ``block @ weights + shift`` by the compiled map."""
    x = as_kernel_array(block, dtype, f"{what} for model {name!r}")
    result = AffineMap(weights, shift)(x)
    if result is not None:
        return result
    first = block_info[0]["array-location"][0][0] if x.ndim == 2 else 0
    raise refusal(x, what, name, dtype, first if np.isfinite(first) else 0)


def apply(affine_map, values, name, what, dtype):
    """``affine_map`` applied lazily to the Dask array ``values``.

    Parameters
    ----------
    affine_map : AffineMap
        A model's projection or reconstruction (its arrays never change).
    values : dask.array.Array of shape (p,) or (n, p)
    name : str
        The model, for messages.
    what : str
        "features" or "latent", for messages.
    dtype : dtype
        The space's.

    Returns
    -------
    dask.array.Array of shape (q,) or (n, q), in ``dtype``

    Raises
    ------
    InvalidParameterError
        If ``values`` is not numeric or not of shape (p,) or (n, p).
    """
    weights, shift = affine_map.W, affine_map.shift
    p, q = weights.shape
    if values.dtype.kind not in "iuf":
        raise InvalidParameterError(
            f"{what} for model {name!r} must hold real numbers, got dtype "
            f"{values.dtype}"
        )
    if values.ndim not in (1, 2) or values.shape[-1] != p:
        raise InvalidParameterError(
            f"{what} for model {name!r} must have shape ({p},) or (n, {p}), "
            f"got shape {values.shape}"
        )
    values = values.rechunk({values.ndim - 1: -1})
    chunks = values.chunks[:-1] + ((q,),)
    return values.map_blocks(
        _map_block, weights, shift, dtype, name, what,
        chunks=chunks, dtype=dtype, meta=np.empty((0,) * values.ndim, dtype),
    )
