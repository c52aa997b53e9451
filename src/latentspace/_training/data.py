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

import functools
import inspect
import itertools
from collections.abc import Iterable, Mapping
from contextlib import closing

import numpy as np

from .._exceptions import InvalidParameterError
from .reading import read_ahead
from .solvers import SOLVERS
from .sources import (
    Arrays,
    Source,
    aligned_rows,
    block_sums,
    check_counts,
    check_model_count,
    checked_sums,
    masks,
    model_names,
    shifted,
    unpaired_pools,
)
from .statistics import merge_sums, statistics
from .._validation import as_kernel_array, as_numeric, check_values, is_dask_array

__all__ = ["training_data"]

# Partial sums of Dask blocks merged by one task.
MERGED_PER_TASK = 8


class _Stream(Source):
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
            check_model_count(first, min_models)
            super().__init__(model_names(first, models), models, dtype)
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
        sums, rows = {}, 0
        with closing(read_ahead(self._checked(chunks))) as checked:
            for (names, where, first), arrays in checked:
                shift = [offsets[index[name]] for name in names]
                sums = merge_sums(sums, checked_sums(
                    names, arrays, None, shift, self.dtype, where, first
                ))
                rows = first + len(arrays[0])
        if rows == 0:
            raise InvalidParameterError("data holds zero samples")
        stats = statistics(self.names, self.widths, self.dtype, sums)
        check_counts(self.names, stats.counts, "in any chunk")
        return stats

    def _checked(self, chunks):
        """The chunks that hold rows, checked but for their values, for
        `read_ahead`: keyed by their models, where they are and their first
        row."""
        start = 0
        for number, chunk in enumerate(chunks):
            where = f" in chunk {number} (from row {start} of the stream)"
            if not isinstance(chunk, Mapping):
                raise InvalidParameterError(
                    f"chunk {number} of data must be a mapping of model name to "
                    f"array, got {type(chunk).__name__}"
                )
            names = model_names(chunk, self.models)
            for name in names:
                if name not in self.names:
                    raise InvalidParameterError(
                        f"model {name!r} is in chunk {number} but not in chunk 0, "
                        "which sets the models of a stream"
                    )
            whats = [f"data for model {name!r}{where}" for name in names]
            arrays = [as_numeric(chunk[name], what) for name, what in zip(names, whats)]
            rows = aligned_rows(names, arrays, self.models, where) if names else 0
            if rows:
                yield (names, where, start), arrays, whats, start
                start += rows

    def samples(self, offsets):
        streaming = " and ".join(
            repr(name) for name, solver in SOLVERS.items() if solver.streams
        )
        raise InvalidParameterError(
            "a stream of chunks trains only with the solvers that work on "
            f"statistics, {streaming}; pass a mapping of arrays (memory-mapped "
            "files work) to the others"
        )


def _dask_block_sums(names, offsets, dtype, *blocks, block_info=None):
    """`checked_sums` of one block of rows of Dask arrays (the mask of
    observed views last, if there is one more block than ``names``), in a
    (1, 1) object array (`block_sums`: a block that views a memory-mapped
    file is read from the file, a part ahead)."""
    first_row = block_info[0]["array-location"][0][0]
    blocks = [np.asarray(block) for block in blocks]
    observed = blocks[len(names)] if len(blocks) > len(names) else None
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = block_sums(names, blocks[: len(names)], observed, offsets, dtype,
                           first_row)
    return out


def _merged(*parts):
    """The merge of the (1, 1) object arrays of `_dask_block_sums`, in one."""
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = functools.reduce(merge_sums, (part[0, 0] for part in parts))
    return out


class _DaskArrays(Source):
    def __init__(self, data, models, dtype, observed, min_models, unpaired):
        check_model_count(data, min_models)
        names = model_names(data, models)
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
        n = aligned_rows(names, arrays, models)
        if n == 0:
            raise InvalidParameterError("data holds zero samples")
        super().__init__(names, models, dtype, unpaired_pools(unpaired, names, models))
        self.arrays = arrays
        self.observed = masks(observed, names, n, lazy=True)

    def _aligned_blocks(self):
        """Arrays (and mask) in blocks of whole rows, the first array's row
        blocks."""
        rows = self.arrays[0].chunks[0]
        arrays = [a.rechunk((rows, -1)) for a in self.arrays]
        observed = self.observed
        if observed is not None:
            import dask.array as da

            observed = da.asarray(observed).rechunk((rows, -1))
        return arrays, observed

    def statistics(self, offsets):
        import dask
        import dask.array as da

        arrays, observed = self._aligned_blocks()
        # One task per block of rows, which graph optimisation fuses with the
        # tasks that make the blocks where it can (a block is not moved to
        # another worker), then a tree of exact merges, on the workers.
        parts = da.map_blocks(
            functools.partial(_dask_block_sums, self.names, offsets, self.dtype),
            *arrays, *([] if observed is None else [observed]),
            chunks=((1,) * len(arrays[0].chunks[0]), (1,)),
            dtype=object, meta=np.empty((0, 0), dtype=object),
        )
        parts = list(parts.to_delayed(optimize_graph=True).ravel())
        while len(parts) > 1:
            parts = [
                dask.delayed(_merged)(*parts[i : i + MERGED_PER_TASK])
                for i in range(0, len(parts), MERGED_PER_TASK)
            ]
        sums = merge_sums(parts[0].compute()[0, 0], self._pool_sums(offsets))
        stats = statistics(self.names, self.widths, self.dtype, sums)
        check_counts(self.names, stats.counts)
        return stats

    def samples(self, offsets):
        import dask

        arrays, observed = dask.compute(self.arrays, self.observed)
        blocks = []
        for m, (name, array) in enumerate(zip(self.names, arrays)):
            what = f"data for model {name!r}"
            mask = None if observed is None else observed[:, m]
            block = as_kernel_array(array, self.dtype, what, mask)
            check_values(block, what, self.dtype, mask)
            blocks.append(block)
        if observed is not None and observed.all():
            observed = None
        return self._with_pools(shifted(blocks, observed, offsets), observed, offsets)


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
        return Arrays(data, *args)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, np.ndarray)):
        return _Stream(data, *args)
    raise InvalidParameterError(
        "data must be a mapping of model name to array, or an iterable of such "
        f"mappings (chunks of rows), got {type(data).__name__}"
    )
