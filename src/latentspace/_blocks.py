# SPDX-License-Identifier: BSD-3-Clause
"""Arrays of rows read and projected a block at a time.

A gallery of 10^7 items embedded by a 768-d model is 30 GB of float32: held
in a memory-mapped ``.npy`` file or a Dask array, it is read one block of
rows (about `BLOCK_BYTES`) at a time, so that projecting it needs memory for
one block and the result only.
"""

import numpy as np

from ._data import is_dask_array
from ._exceptions import InvalidParameterError
from ._validation import as_kernel_array, as_numeric, check_finite

__all__ = ["BLOCK_BYTES", "check_rows", "project_block", "row_blocks"]

# Bytes of input per block of rows.
BLOCK_BYTES = 64 << 20


def check_rows(values, width, what):
    """Raise unless ``values`` (an ndarray or a Dask array) is a real 2-D
    array of rows of length ``width``."""
    if values.dtype.kind not in "iuf":
        raise InvalidParameterError(
            f"{what} must hold real numbers, got dtype {values.dtype}"
        )
    if values.ndim != 2 or values.shape[1] != width:
        raise InvalidParameterError(
            f"{what} must have shape ({width},) or (n, {width}), got shape "
            f"{values.shape}"
        )


def row_blocks(values):
    """Yield ``(start, block)``: consecutive blocks of rows of the 2-D array
    ``values`` as NumPy arrays (slices of an ndarray or a memory-mapped one,
    about `BLOCK_BYTES` each; the computed blocks of a Dask array, as
    chunked)."""
    if is_dask_array(values):
        values = values.rechunk({1: -1})
        start = 0
        for i in range(values.numblocks[0]):
            block = np.asarray(values.blocks[i].compute())
            yield start, block
            start += len(block)
        return
    row_bytes = max(1, values.shape[1] * values.dtype.itemsize)
    step = max(1, BLOCK_BYTES // row_bytes)
    for start in range(0, len(values), step):
        yield start, values[start : start + step]


def project_block(affine_map, block, dtype, what, first_row=0):
    """``affine_map`` applied to a block of rows (or one vector); errors name
    the row, counted from ``first_row``."""
    x = as_kernel_array(as_numeric(block, what), dtype, what, first_row=first_row)
    result = affine_map(x)
    if result is None:
        check_finite(np.atleast_2d(x), what, first_row=first_row)
        raise ValueError(f"{what}: the result overflowed")
    return result
