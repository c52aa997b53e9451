# SPDX-License-Identifier: BSD-3-Clause
"""Arrays of rows read and projected a block at a time, into unit latents.

A gallery of 10^7 items embedded by a 768-d model is 30 GB of float32: held
in a memory-mapped ``.npy`` file or a Dask array, it is read one block of
rows (about `BLOCK_BYTES`) at a time, so that projecting it needs memory for
one block and the result only.
"""

import numpy as np

from .._exceptions import InvalidParameterError
from .._model import lookup, refusal
from .._validation import as_kernel_array, as_numeric, as_rows, is_dask_array

__all__ = [
    "BLOCK_BYTES",
    "check_rows",
    "is_rows",
    "normalise",
    "project_block",
    "row_blocks",
    "unit_latent_blocks",
    "unit_latents",
]

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


def project_block(affine_map, block, dtype, what, name, first_row=0):
    """``affine_map`` of model ``name`` applied to a block of rows (or one
    vector) of ``what``; errors name the row, counted from ``first_row``."""
    described = f"{what} for model {name!r}"
    x = as_kernel_array(as_numeric(block, described), dtype, described,
                        first_row=first_row)
    result = affine_map(x)
    if result is None:
        raise refusal(x, what, name, dtype, first_row)
    return result


def normalise(Z):
    """Scale the rows of ``Z`` to unit length, in place; a zero row stays 0."""
    tiny = np.finfo(Z.dtype).tiny
    # Divide by the largest entry first: the squares of a latent beyond
    # sqrt(max) (1e154 in float64, 1e19 in float32) would overflow, and its
    # norm become inf (cosine 0 with everything instead of +-1).
    if len(Z) and Z.shape[1]:
        Z /= np.maximum(np.abs(Z).max(axis=1), tiny)[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", Z, Z))
    # A zero latent has cosine 0 with everything rather than NaN.
    Z /= np.maximum(norms, tiny)[:, None]
    return Z


def is_rows(features):
    """Whether ``features`` is a 2-D ndarray (memory-mapped ones included) or
    a Dask array: read a block of rows at a time."""
    return is_dask_array(features) or (
        isinstance(features, np.ndarray) and features.ndim == 2
    )


def unit_latent_blocks(models, dtype, name, features, what="features"):
    """Yield ``(start, Z)``: blocks of the rows of ``features`` (a 2-D
    ndarray, memory-mapped or not, or a Dask array) of model ``name``,
    projected with ``models`` and scaled to unit length."""
    model = lookup(models, name)
    described = f"{what} for model {name!r}"
    check_rows(features, model.input_dim, described)
    for start, block in row_blocks(features):
        yield start, normalise(
            project_block(model.project, block, dtype, what, name, start)
        )


def unit_latents(models, dtype, name, features, what="features"):
    """``features`` of model ``name`` projected with ``models`` (one snapshot)
    and scaled to unit length: ``(Z, was_one_vector)``.

    2-D ndarrays (memory-mapped ones too) and Dask arrays are read a block
    of rows at a time; only the latents are held in memory."""
    model = lookup(models, name)
    if is_rows(features):
        Z = np.empty((features.shape[0], model.project.W.shape[1]), dtype=dtype)
        for start, block in unit_latent_blocks(models, dtype, name, features, what):
            Z[start : start + len(block)] = block
        return Z, False
    if is_dask_array(features):  # a vector
        features = features.compute()
    latent = model.project(features)
    if latent is None:
        described = f"{what} for model {name!r}"
        x = as_rows(features, model.input_dim, dtype, described)
        latent = project_block(model.project, x, dtype, what, name)
    one = latent.ndim == 1
    # A new array: ours to scale.
    return normalise(latent.reshape(1, -1) if one else latent), one
