# SPDX-License-Identifier: BSD-3-Clause
"""Models and snapshots: the weights every service reads.

A `Model` is one model's immutable weights with their compiled maps; a
`Snapshot` is what a `LatentSpace` publishes (dimension, models, generator,
recorded configuration, pair maps), replaced as a whole and never modified.
Files, search, metrics and Dask build on these, never on `LatentSpace`'s
internals.
"""

import ctypes
from typing import NamedTuple

import numpy as np

from ._exceptions import InvalidParameterError
from ._kernels.affine import AffineMap
from ._validation import unknown_model

__all__ = [
    "Model",
    "Snapshot",
    "kept_pair_maps",
    "lookup",
    "make_model",
    "published",
    "read_only",
    "refusal",
    "xavier",
]

_ALIGNMENT = 64  # bytes: a cache line, and AVX-512's vector


class Model(NamedTuple):
    """One model's weights; the arrays are read-only and never change."""

    input_dim: int
    offset: np.ndarray | None  # mu, (d,)
    project: AffineMap  # x -> x @ P - mu @ P
    retrieve: AffineMap  # z -> z @ R + mu

    @property
    def projection(self) -> np.ndarray:
        return self.project.W

    @property
    def reconstruction(self) -> np.ndarray:
        return self.retrieve.W


def read_only(array):
    """A read-only copy of ``array``, C-contiguous, on a 64-byte boundary (the
    kernels' loads are up to a fifth slower off it), seen through a read-only
    buffer: NumPy refuses to make it writeable again, so no caller can change
    arrays that readers share."""
    return _read_only_copies([array])[0]


def _read_only_copies(arrays):
    """`read_only` copies of ``arrays`` (None stays None), in one buffer."""
    arrays = [None if a is None else np.asarray(a) for a in arrays]
    starts, size = [], 0
    for a in arrays:
        starts.append(size)
        if a is not None:
            size += -(-a.nbytes // _ALIGNMENT) * _ALIGNMENT
    memory = bytearray(size + _ALIGNMENT)
    base = -ctypes.addressof(ctypes.c_char.from_buffer(memory)) % _ALIGNMENT
    writeable, readonly = memoryview(memory), memoryview(memory).toreadonly()
    copies = []
    for a, start in zip(arrays, starts):
        if a is None:
            copies.append(None)
            continue
        span = slice(base + start, base + start + a.nbytes)
        np.frombuffer(writeable[span], a.dtype).reshape(a.shape)[...] = a
        copies.append(np.frombuffer(readonly[span], a.dtype).reshape(a.shape))
    return copies


def make_model(projection, reconstruction, offset=None):
    """A `Model` of private, immutable copies of the arrays; ValueError if
    their shapes or dtypes do not fit together (a crafted file), which the
    kernels assume."""
    projection, reconstruction = np.asarray(projection), np.asarray(reconstruction)
    dtype = projection.dtype
    if not (
        dtype in (np.float64, np.float32)
        and projection.ndim == 2
        and reconstruction.shape == projection.shape[::-1]
        and reconstruction.dtype == dtype
        and (offset is None or (np.shape(offset) == projection.shape[:1]
                                and np.asarray(offset).dtype == dtype))
    ):
        raise ValueError(
            f"inconsistent model weights: projection {projection.shape} "
            f"{projection.dtype}, reconstruction {reconstruction.shape} "
            f"{reconstruction.dtype}, offset "
            f"{None if offset is None else (np.shape(offset), np.asarray(offset).dtype)}"
        )
    projection, reconstruction, offset, project_shift = _read_only_copies([
        projection, reconstruction, offset,
        None if offset is None else -(offset @ projection),
    ])
    return Model(
        len(projection),
        offset,
        AffineMap(projection, project_shift),
        AffineMap(reconstruction, offset),
    )


def xavier(rng, input_dim, dim, dtype):
    """A model with P then R drawn from ``rng``, each entry from U(-l, l) with
    l = sqrt(6 / (input_dim + dim))."""
    limit = np.sqrt(6.0 / (input_dim + dim))
    projection = rng.uniform(-limit, limit, (input_dim, dim)).astype(dtype, copy=False)
    reconstruction = rng.uniform(-limit, limit, (dim, input_dim))
    return make_model(projection, reconstruction.astype(dtype, copy=False))


def lookup(models, name):
    """``models[name]``, or `UnknownModelError` naming the registered models."""
    try:
        return models[name]
    except (KeyError, TypeError):
        raise unknown_model(name, models) from None


def kept_pair_maps(pair_maps, models):
    """The entries of ``pair_maps`` whose two models are still ``models``'."""
    return {
        pair: entry
        for pair, entry in pair_maps.items()
        if models.get(pair[0]) is entry[0] and models.get(pair[1]) is entry[1]
    }


def refusal(x, what, name, dtype, first_row=0):
    """The error to raise when a model's compiled map refused the checked
    kernel array ``x`` (``what`` for model ``name``): its first row holding
    NaN or Inf (counted from ``first_row``), else the overflow of ``dtype``.

    Decide on a private copy of ``x`` if another thread may be changing it.
    """
    bad = ~np.isfinite(np.atleast_2d(x)).all(axis=1)
    if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        return InvalidParameterError(
            f"{what} for model {name!r} contains NaN or Inf (first in row {row})"
        )
    return InvalidParameterError(
        f"{what} for model {name!r}: the result overflowed "
        f"{np.dtype(dtype)} (features too large for these weights)"
    )


class Snapshot(NamedTuple):
    """What readers see: replaced as a whole, never modified, so that a
    writer publishes all it changes in one assignment."""

    dim: int
    models: dict  # name -> Model, in registration order
    # The generator the next registration draws from; writers draw from a
    # copy, which the snapshot they publish holds.
    rng: np.random.Generator | None = None
    # The training that made it (for save): a ProjectionConfig, or the record
    # in the file it was loaded from.
    config: object = None
    # (a, b) -> (model a, model b, M_a, M_b): the pair maps of a joint
    # training, valid while both models are those it was computed for.
    pair_maps: dict = {}

    def valid_pair_maps(self):
        """``(a, b) -> (M_a, M_b)`` for the pair maps of the current models."""
        return {
            pair: (Ma, Mb)
            for pair, (ma, mb, Ma, Mb) in self.pair_maps.items()
            if self.models.get(pair[0]) is ma and self.models.get(pair[1]) is mb
        }

    def pair_maps_to(self, target):
        """``source -> (M_source, M_target)`` for every valid pair map of
        ``target`` (see `docs/maths.md`, pair maps)."""
        maps = {}
        for (a, b), (Ma, Mb) in self.valid_pair_maps().items():
            if a == target:
                maps[b] = (Mb, Ma)
            elif b == target:
                maps[a] = (Ma, Mb)
        return maps


def published(current, snapshot, fit, config, dtype):
    """The snapshot that publishes ``fit`` (a `latentspace._training.fitting.Fit` of
    a training that started from ``snapshot``) over ``current``, the space's
    snapshot now, with the ``config`` that made it (for `save`).

    Refused (RuntimeError) if a model the training used (trained or frozen)
    was replaced meanwhile; pair maps of ``fit`` replace any of its models'.
    """
    start = fit.start
    if current is not snapshot:
        moved = [n for n in fit.used if current.models.get(n) is not start.get(n)]
        if fit.dim != snapshot.dim or current.dim != snapshot.dim or moved:
            raise RuntimeError(
                "the space changed while training (models re-registered or "
                f"trained concurrently: {', '.join(map(repr, moved)) or 'all'}); "
                "the new weights were discarded"
            )
        start = current.models
    models = {**start, **fit.trained}
    maps = kept_pair_maps(current.pair_maps if fit.dim == current.dim else {}, models)
    for (a, b), (Ma, Mb) in fit.pair_maps.items():
        maps[a, b] = (models[a], models[b], read_only(Ma.astype(dtype)),
                      read_only(Mb.astype(dtype)))
    rng = current.rng if fit.rng is None else fit.rng
    return Snapshot(fit.dim, models, rng, config, maps)
