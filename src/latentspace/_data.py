# SPDX-License-Identifier: BSD-3-Clause
"""Training data: aligned samples of registered models, checked as they are read.

`training_data` turns what `LatentSpace.train_projections` accepts into one
of three sources with the same two methods:

- a mapping of array-likes (NumPy arrays, memory-mapped files), optionally
  with per-model masks of the samples each model observed;
- a stream, an iterable of such mappings (chunks of rows; a model missing from
  a chunk did not observe its rows), read once;
- a mapping of Dask arrays, whose statistics are a Dask reduction.

Sources are context managers (a stream is spent on exit).
``statistics(offsets)`` makes one pass, a chunk of rows at a time, and returns
the `Statistics` of the samples minus the models' offsets; ``samples(offsets)``
returns them in memory, shifted, zero where a model did not observe a sample,
for the solvers that visit samples. Values are checked (finite where observed)
as they are read, so a memory-mapped file larger than memory is never loaded.
"""

import inspect
import itertools
from collections.abc import Iterable, Mapping

import numpy as np

from ._exceptions import InvalidParameterError
from ._solvers import SOLVERS
from ._statistics import CHUNK_ENTRIES, chunk_sums, merge_sums, statistics
from ._validation import (
    BLAS_INT_MAX,
    as_kernel_array,
    as_numeric,
    check_finite,
    check_scale,
    unknown_model,
)

__all__ = ["is_dask_array", "training_data"]


def is_dask_array(value):
    """Whether ``value`` is a Dask array (without importing Dask)."""
    return type(value).__module__.startswith("dask.") and hasattr(value, "chunks")


def _check_model_count(data, min_models):
    """Raise unless the mapping ``data`` names at least ``min_models`` models."""
    if len(data) < min_models:
        needed = "two models" if min_models == 2 else "one model"
        raise InvalidParameterError(
            f"data must hold at least {needed}, got {len(data)}"
            + (f" ({', '.join(map(repr, data))})" if data else "")
        )


def _names(data, models):
    """The models of a mapping, in registration order."""
    for name in data:
        if name not in models:
            raise unknown_model(name, models)
    return [name for name in models if name in data]


def _aligned(names, arrays, models, where=""):
    """Check widths and counts of numeric arrays; return the sample count."""
    for name, array in zip(names, arrays):
        width = models[name].input_dim
        if array.ndim != 2 or array.shape[1] != width:
            raise InvalidParameterError(
                f"data for model {name!r}{where} must have shape (n, {width}), "
                f"got shape {array.shape}"
            )
    counts = {name: len(a) for name, a in zip(names, arrays)}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name!r}: {count}" for name, count in counts.items())
        raise InvalidParameterError(
            f"models must have the same number of samples (aligned by index)"
            f"{where}, got {listed}"
        )
    return next(iter(counts.values()))


def _unmasked(value):
    """``(value, rows)``: a 2-D masked array's data and which of its rows hold
    no masked entry (None: all of them); anything else as it is."""
    if not isinstance(value, np.ma.MaskedArray) or value.ndim != 2:
        return value, None
    masked = np.ma.getmaskarray(value)
    return value.data, (~masked.any(axis=1) if masked.any() else None)


def _masks(observed, names, n, lazy):
    """The (n, M) bool matrix of which model observed which sample, or None."""
    if observed is None:
        return None
    if not isinstance(observed, Mapping):
        raise InvalidParameterError(
            "observed must be a mapping of model name to a boolean array of "
            f"shape (n,), got {type(observed).__name__}"
        )
    columns = []
    for name in observed:
        if name not in names:
            raise InvalidParameterError(
                f"observed names model {name!r}, which is not in the data "
                f"({', '.join(map(repr, names))})"
            )
    for name in names:
        if name not in observed:
            columns.append(np.ones(n, dtype=bool))
            continue
        mask = observed[name]
        mask = np.asarray(mask) if not (lazy and is_dask_array(mask)) else mask
        if mask.dtype != bool or mask.shape != (n,):
            raise InvalidParameterError(
                f"observed[{name!r}] must be a boolean array of shape ({n},), got "
                f"dtype {mask.dtype} and shape {mask.shape}"
            )
        columns.append(mask)
    if lazy:
        import dask.array as da

        return da.stack([da.asarray(c) for c in columns], axis=1)
    matrix = np.stack(columns, axis=1)
    counts = matrix.sum(axis=0)
    _check_counts(names, counts)
    return None if counts.min() == n else matrix


def _check_counts(names, counts, where="(observed)"):
    """Raise if a model observed no sample."""
    for name, count in zip(names, counts):
        if not count:
            raise InvalidParameterError(f"model {name!r} observed no sample {where}")


def _pools(unpaired, names, models):
    """Model index to its unpaired rows (array-likes, not loaded), checked."""
    if unpaired is None:
        return {}
    if not isinstance(unpaired, Mapping):
        raise InvalidParameterError(
            "unpaired must be a mapping of model name to an array of that model's "
            f"rows with no known partner, got {type(unpaired).__name__}"
        )
    pools = {}
    for name, pool in unpaired.items():
        if name not in names:
            raise InvalidParameterError(
                f"unpaired names model {name!r}, which is not in the data "
                f"({', '.join(map(repr, names))})"
            )
        what = f"unpaired rows of model {name!r}"
        if not is_dask_array(pool):
            pool = as_numeric(pool, what)
        elif pool.dtype.kind not in "iuf":
            raise InvalidParameterError(
                f"{what} must hold real numbers, got dtype {pool.dtype}"
            )
        width = models[name].input_dim
        if pool.ndim != 2 or pool.shape[1] != width:
            raise InvalidParameterError(
                f"{what} must have shape (n, {width}), got shape {pool.shape}"
            )
        if len(pool):
            pools[names.index(name)] = pool
    return pools


class _Source:
    """Common attributes: ``names`` (registration order), ``widths``,
    ``dtype`` and ``pools`` (model index to rows that model alone observed)."""

    streamed = False

    def __init__(self, names, models, dtype, pools=None):
        self.names = names
        self.widths = [models[name].input_dim for name in names]
        self.dtype = dtype
        self.pools = pools or {}

    def _pool_sums(self, offsets):
        """Per-pattern `Sums` of the unpaired rows: one pattern per model."""
        sums = {}
        step = self._chunk_rows()
        for m, pool in self.pools.items():
            where = " (unpaired rows)"
            for start in range(0, len(pool), step):
                rows = np.asarray(pool[start : start + step])
                sums = merge_sums(sums, _checked_sums(
                    [self.names[m]], [rows], None, [offsets[m]], self.dtype, where,
                    start,
                ))
        return sums

    def _with_pools(self, blocks, observed, offsets):
        """``(blocks, observed)`` of `samples` with the unpaired rows after the
        paired ones, each observed by its model alone."""
        if not self.pools:
            return blocks, observed
        n = len(blocks[0])
        counts = {m: len(pool) for m, pool in self.pools.items()}
        total = n + sum(counts.values())
        mask = np.zeros((total, len(blocks)), dtype=bool)
        mask[:n] = True if observed is None else observed
        out = [np.zeros((total, d), self.dtype) for d in self.widths]
        for block, full in zip(blocks, out):
            full[:n] = block
        at = n
        for m, pool in self.pools.items():
            what = f"data for model {self.names[m]!r} (unpaired rows)"
            rows = as_kernel_array(np.asarray(pool), self.dtype, what)
            check_finite(rows, what)
            out[m][at : at + len(rows)] = rows
            if offsets[m] is not None:
                out[m][at : at + len(rows)] -= offsets[m]
            mask[at : at + len(rows), m] = True
            at += len(rows)
        return out, mask

    def _chunk_rows(self):
        return max(1, CHUNK_ENTRIES // sum(self.widths))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Let go of the data; a stream is then spent (see `_Stream.close`)."""

    def check_unchanged(self):
        """Raise if the data no longer passes the checks it passed when read
        (another thread changed it); a stream, read once, is not re-read."""


class _Arrays(_Source):
    def __init__(self, data, models, dtype, observed, min_models, unpaired):
        _check_model_count(data, min_models)
        names = _names(data, models)
        # A masked array: its rows with a masked entry are not observed.
        arrays, unmasked = zip(*(_unmasked(data[name]) for name in names))
        arrays = [as_numeric(a, f"data for model {name!r}")
                  for name, a in zip(names, arrays)]
        n = _aligned(names, arrays, models)
        if n == 0:
            raise InvalidParameterError("data holds zero samples")
        if n > BLAS_INT_MAX:
            raise InvalidParameterError(f"data has {n} samples; at most {BLAS_INT_MAX}")
        super().__init__(names, models, dtype, _pools(unpaired, names, models))
        self.arrays = arrays
        self.n_samples = n
        self.observed = _masks(observed, names, n, lazy=False)
        if any(rows is not None for rows in unmasked):
            matrix = (
                np.ones((n, len(names)), dtype=bool)
                if self.observed is None
                else self.observed.copy()
            )
            for m, rows in enumerate(unmasked):
                if rows is not None:
                    matrix[:, m] &= rows
            counts = matrix.sum(axis=0)
            _check_counts(names, counts, "(observed, without masked entries)")
            self.observed = None if counts.min() == n else matrix

    def _block(self, m):
        """Model ``m``'s samples as a kernel array, checked."""
        what = f"data for model {self.names[m]!r}"
        mask = None if self.observed is None else self.observed[:, m]
        block = as_kernel_array(self.arrays[m], self.dtype, what, mask)
        check_finite(block, what, mask)
        check_scale(self.arrays[m], what, self.dtype, mask)
        return block

    def check_unchanged(self):
        for m in range(len(self.names)):
            try:
                self._block(m)
            except InvalidParameterError as exc:
                raise InvalidParameterError(
                    f"{exc}, which it did not when training started: the data "
                    "changed during training (another thread?); the space keeps "
                    "its previous weights"
                ) from None

    def statistics(self, offsets):
        sums = self._pool_sums(offsets)
        step = self._chunk_rows()
        for start in range(0, self.n_samples, step):
            rows = slice(start, start + step)
            blocks = [array[rows] for array in self.arrays]
            mask = None if self.observed is None else self.observed[rows]
            sums = merge_sums(sums, _checked_sums(
                self.names, blocks, mask, offsets, self.dtype, "", start
            ))
        return statistics(self.names, self.widths, self.dtype, sums)

    def samples(self, offsets):
        blocks = [self._block(m) for m in range(len(self.names))]
        return self._with_pools(
            _shifted(blocks, self.observed, offsets), self.observed, offsets
        )


def _shifted(blocks, observed, offsets):
    """``blocks`` minus their offsets (None: none), zero where not observed;
    never modifies the caller's arrays."""
    out = []
    for m, (block, offset) in enumerate(zip(blocks, offsets)):
        if offset is not None:
            block = block - offset
        if observed is not None:
            if offset is None:
                block = block.copy()
            block[~observed[:, m]] = 0
        out.append(block)
    return out


class _Stream(_Source):
    streamed = True

    def __init__(self, data, models, dtype, observed, min_models, unpaired):
        if observed is not None or unpaired is not None:
            raise InvalidParameterError(
                f"{'observed' if observed is not None else 'unpaired'} is for a "
                "mapping of arrays; in a stream, a model missing from a chunk did "
                "not observe its rows (a chunk of one model holds unpaired rows)"
            )
        if inspect.isgenerator(data) and (
            inspect.getgeneratorstate(data) == inspect.GEN_CLOSED
        ):
            raise InvalidParameterError(
                "data is a generator that was read already (a stream of chunks is "
                "read once): pass a new generator, or a list of chunks to train "
                "on them again"
            )
        self.generator = data if inspect.isgenerator(data) else None
        try:
            chunks = iter(data)
            first = next(chunks, None)
            if first is None:
                raise InvalidParameterError("data holds zero samples (empty stream)")
            if not isinstance(first, Mapping):
                raise InvalidParameterError(
                    "data must be a mapping of model name to array, or an iterable "
                    f"of such mappings (chunks of rows), got {type(data).__name__} "
                    f"of {type(first).__name__}"
                )
            _check_model_count(first, min_models)
            super().__init__(_names(first, models), models, dtype)
        except BaseException:
            # The first chunk was read: spend the generator, as when training
            # fails later, so that it is not reused without that chunk.
            self.close()
            raise
        self.models = models
        self.chunks = itertools.chain([first], chunks)

    def close(self):
        """Spend the stream: a generator is closed even if it was not read to
        the end (training failed), so that reading it again is refused rather
        than silently training on the chunks that were left."""
        self.chunks = None
        if self.generator is not None:
            self.generator.close()

    def statistics(self, offsets):
        if self.chunks is None:
            raise InvalidParameterError("a stream of chunks can be read only once")
        chunks, self.chunks = self.chunks, None
        index = {name: m for m, name in enumerate(self.names)}
        sums, start = {}, 0
        for number, chunk in enumerate(chunks):
            where = f" in chunk {number} (from row {start} of the stream)"
            if not isinstance(chunk, Mapping):
                raise InvalidParameterError(
                    f"chunk {number} of data must be a mapping of model name to "
                    f"array, got {type(chunk).__name__}"
                )
            names = _names(chunk, self.models)
            for name in names:
                if name not in index:
                    raise InvalidParameterError(
                        f"model {name!r} is in chunk {number} but not in chunk 0, "
                        "which sets the models of a stream"
                    )
            arrays = [as_numeric(chunk[name], f"data for model {name!r}{where}")
                      for name in names]
            rows = _aligned(names, arrays, self.models, where) if names else 0
            if not rows:
                continue
            shift = [offsets[index[name]] for name in names]
            sums = merge_sums(sums, _checked_sums(
                names, arrays, None, shift, self.dtype, where, start
            ))
            start += rows
        if start == 0:
            raise InvalidParameterError("data holds zero samples")
        stats = statistics(self.names, self.widths, self.dtype, sums)
        _check_counts(self.names, stats.counts, "in any chunk")
        return stats

    def samples(self, offsets):
        streaming = " and ".join(
            repr(name) for name, solver in SOLVERS.items() if solver.streams
        )
        raise InvalidParameterError(
            "a stream of chunks trains only with the solvers that work on "
            f"statistics, {streaming}; pass a mapping of arrays (memory-mapped "
            "files work) to the others"
        )


def _checked_sums(names, blocks, observed, offsets, dtype, where, first_row):
    """`chunk_sums` of a chunk, its values checked where observed: a value
    that ``dtype`` cannot hold is named (found by converting the chunk if it
    is of a wider dtype), as is the first row with NaN or Inf if the sums
    are not finite (without one, the features overflow the dtype, which the
    solvers report), and features too small for ``dtype``."""
    sums = chunk_sums(names, blocks, observed, offsets, dtype)
    finite = all(np.isfinite(s.scatter.diagonal()).all() for s in sums.values())
    for m, (name, block) in enumerate(zip(names, blocks)):
        what = f"data for model {name!r}{where}"
        mask = None if observed is None else observed[:, m]
        narrowing = block.dtype.kind == "f" and block.dtype.itemsize > dtype.itemsize
        if narrowing or not finite:
            checked = as_kernel_array(block, dtype, what, mask, first_row)
            if not finite:
                check_finite(checked, what, mask, first_row)
        check_scale(block, what, dtype, mask)
    return sums


def _dask_block_sums(names, blocks, observed, offsets, dtype, first_row, step):
    """`chunk_sums` of one block of rows of Dask arrays, ``step`` rows at a
    time, checked."""
    blocks = [np.asarray(block) for block in blocks]
    sums = {}
    for start in range(0, len(blocks[0]), step):
        rows = slice(start, start + step)
        mask = None if observed is None else observed[rows]
        sums = merge_sums(sums, _checked_sums(
            names, [X[rows] for X in blocks], mask, offsets, dtype, "", first_row + start
        ))
    return sums


class _DaskArrays(_Source):
    def __init__(self, data, models, dtype, observed, min_models, unpaired):
        _check_model_count(data, min_models)
        names = _names(data, models)
        import dask.array as da

        arrays = []
        for name in names:
            array = da.asarray(data[name])
            if array.dtype.kind not in "iuf":
                raise InvalidParameterError(
                    f"data for model {name!r} must hold real numbers, got dtype "
                    f"{array.dtype}"
                )
            if any(np.isnan(s) for s in array.shape):
                raise InvalidParameterError(
                    f"data for model {name!r} has unknown chunk sizes; call "
                    "compute_chunk_sizes() first"
                )
            arrays.append(array)
        n = _aligned(names, arrays, models)
        if n == 0:
            raise InvalidParameterError("data holds zero samples")
        super().__init__(names, models, dtype, _pools(unpaired, names, models))
        self.arrays = arrays
        self.observed = _masks(observed, names, n, lazy=True)

    def _aligned_blocks(self):
        """Arrays (and mask) in blocks of whole rows, the first array's row
        blocks (each read a chunk of rows at a time by `_dask_block_sums`)."""
        rows = self.arrays[0].chunks[0]
        arrays = [a.rechunk((rows, -1)) for a in self.arrays]
        observed = self.observed
        if observed is not None:
            import dask.array as da

            observed = da.asarray(observed).rechunk((rows, -1))
        return arrays, observed

    def statistics(self, offsets):
        import dask

        arrays, observed = self._aligned_blocks()
        parts = []
        start = 0
        for i, size in enumerate(arrays[0].chunks[0]):
            mask = None if observed is None else observed.blocks[i]
            parts.append(
                dask.delayed(_dask_block_sums)(
                    self.names,
                    [a.blocks[i] for a in arrays],
                    mask,
                    offsets,
                    self.dtype,
                    start,
                    self._chunk_rows(),
                )
            )
            start += size
        # A binary tree of exact merges: the reduction runs on the workers.
        while len(parts) > 1:
            merged = [
                dask.delayed(merge_sums)(a, b) for a, b in zip(parts[::2], parts[1::2])
            ]
            parts = merged + ([parts[-1]] if len(parts) % 2 else [])
        sums = merge_sums(parts[0].compute(), self._pool_sums(offsets))
        stats = statistics(self.names, self.widths, self.dtype, sums)
        _check_counts(self.names, stats.counts)
        return stats

    def samples(self, offsets):
        import dask

        arrays, observed = dask.compute(self.arrays, self.observed)
        blocks = []
        for m, (name, array) in enumerate(zip(self.names, arrays)):
            what = f"data for model {name!r}"
            mask = None if observed is None else observed[:, m]
            block = as_kernel_array(array, self.dtype, what, mask)
            check_finite(block, what, mask)
            check_scale(array, what, self.dtype, mask)
            blocks.append(block)
        if observed is not None and observed.all():
            observed = None
        return self._with_pools(_shifted(blocks, observed, offsets), observed, offsets)


def training_data(data, models, dtype, *, observed=None, unpaired=None, min_models=2):
    """The source of training data for ``data`` (see the module docstring).

    Parameters
    ----------
    data : mapping or iterable of mappings
    models : mapping of str to registered model (with ``input_dim``)
    dtype : dtype
        The space's.
    observed : mapping of str to (n,) bool array-like, optional
        Which samples every model observed (a mapping of arrays only; models
        not named observed all).
    unpaired : mapping of str to (n_m, d_m) array-like, optional
        Rows of a model with no known partner: samples that model alone
        observed, after the aligned ones (a mapping of arrays only).
    min_models : int

    Raises
    ------
    InvalidParameterError, UnknownModelError
        For what can be checked before reading the values.
    """
    args = (models, dtype, observed, min_models, unpaired)
    if isinstance(data, Mapping):
        if any(is_dask_array(value) for value in data.values()):
            return _DaskArrays(data, *args)
        return _Arrays(data, *args)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, np.ndarray)):
        return _Stream(data, *args)
    raise InvalidParameterError(
        "data must be a mapping of model name to array, or an iterable of such "
        f"mappings (chunks of rows), got {type(data).__name__}"
    )
