# SPDX-License-Identifier: BSD-3-Clause
"""What every source of training data shares, and the source of arrays.

Checks of model names, alignment, masks of observed samples and unpaired
rows; `checked_sums`, the statistics of a chunk with its values checked;
`Source`, the base of the sources of `latentspace._training.data.training_data`; and
`Arrays`, the source of a mapping of array-likes (NumPy arrays,
memory-mapped files), read a block of rows at a time (`reading.blocks`).
"""

from collections.abc import Mapping
from contextlib import closing

import numpy as np

from .._exceptions import InvalidParameterError
from .reading import blocks, read_rows
from .statistics import CHUNK_ENTRIES, chunk_sums, merge_sums, slices, statistics
from .._validation import (
    BLAS_INT_MAX,
    as_kernel_array,
    as_numeric,
    check_finite,
    check_values,
    is_dask_array,
    unknown_model,
)

__all__ = [
    "Arrays",
    "Source",
    "aligned_rows",
    "block_sums",
    "check_counts",
    "check_model_count",
    "checked_sums",
    "magnitude_bounds",
    "masks",
    "model_names",
    "shifted",
    "unpaired_pools",
]

# Entries (rows x D) of the blocks of a mapping's rows summed at once (each
# a chunk of CHUNK_ENTRIES at a time), then merged: it bounds the memory of
# the row indices of the patterns of missing views, of the rows of a model
# that `check_values` reads and of the two blocks of memory-mapped files
# read ahead (`reading.blocks`).
BLOCK_ENTRIES = 2**25


def check_model_count(data, min_models):
    """Raise unless the mapping ``data`` names at least ``min_models`` models."""
    if len(data) < min_models:
        needed = "two models" if min_models == 2 else "one model"
        raise InvalidParameterError(
            f"data must hold at least {needed}, got {len(data)}"
            + (f" ({', '.join(map(repr, data))})" if data else "")
        )


def model_names(data, models):
    """The models of a mapping, in registration order."""
    for name in data:
        if name not in models:
            raise unknown_model(name, models)
    return [name for name in models if name in data]


def aligned_rows(names, arrays, models, where=""):
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


def masks(observed, names, n, lazy):
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
    check_counts(names, counts)
    return None if counts.min() == n else matrix


def check_counts(names, counts, where="(observed)"):
    """Raise if a model observed no sample."""
    for name, count in zip(names, counts):
        if not count:
            raise InvalidParameterError(f"model {name!r} observed no sample {where}")


def unpaired_pools(unpaired, names, models):
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


class Source:
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
        step = self._block_rows()
        for m, pool in self.pools.items():
            where = " (unpaired rows)"
            for start in range(0, len(pool), step):
                rows = np.asarray(pool[start : start + step])
                sums = merge_sums(sums, checked_sums(
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

    def _block_rows(self):
        return max(1, BLOCK_ENTRIES // sum(self.widths))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Let go of the data; a stream is then spent (see `_Stream.close`)."""

    def check_unchanged(self):
        """Raise if the data no longer passes the checks it passed when read
        (another thread changed it); a stream, read once, is not re-read."""


class Arrays(Source):
    def __init__(self, data, models, dtype, observed, min_models, unpaired):
        check_model_count(data, min_models)
        names = model_names(data, models)
        # A masked array: its rows with a masked entry are not observed.
        arrays, unmasked = zip(*(_unmasked(data[name]) for name in names))
        arrays = [as_numeric(a, f"data for model {name!r}")
                  for name, a in zip(names, arrays)]
        n = aligned_rows(names, arrays, models)
        if n == 0:
            raise InvalidParameterError("data holds zero samples")
        if n > BLAS_INT_MAX:
            raise InvalidParameterError(f"data has {n} samples; at most {BLAS_INT_MAX}")
        super().__init__(names, models, dtype, unpaired_pools(unpaired, names, models))
        self.arrays = arrays
        self.n_samples = n
        self.observed = masks(observed, names, n, lazy=False)
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
            check_counts(names, counts, "(observed, without masked entries)")
            self.observed = None if counts.min() == n else matrix

    def _block(self, m):
        """Model ``m``'s samples as a kernel array, checked (read from its
        file if it views one: `reading.read_rows`)."""
        what = f"data for model {self.names[m]!r}"
        mask = None if self.observed is None else self.observed[:, m]
        (rows,) = read_rows([self.arrays[m]], [what])
        block = as_kernel_array(rows, self.dtype, what, mask)
        check_values(block, what, self.dtype, mask)
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
        sums = merge_sums(self._pool_sums(offsets), block_sums(
            self.names, self.arrays, self.observed, offsets, self.dtype
        ))
        return statistics(self.names, self.widths, self.dtype, sums)

    def samples(self, offsets):
        blocks = [self._block(m) for m in range(len(self.names))]
        return self._with_pools(
            shifted(blocks, self.observed, offsets), self.observed, offsets
        )


def block_sums(names, arrays, observed, offsets, dtype, first_row=0):
    """`checked_sums` of aligned 2-D ``arrays`` (rows counted from
    ``first_row``), merged over blocks of `BLOCK_ENTRIES` entries, those of
    memory-mapped files read a block ahead (`reading.blocks`)."""
    sums = {}
    step = max(1, BLOCK_ENTRIES // sum(array.shape[1] for array in arrays))
    rows = blocks(arrays, len(arrays[0]), step, names)
    with closing(rows):
        for start, block in rows:
            mask = None if observed is None else observed[start : start + step]
            sums = merge_sums(sums, checked_sums(
                names, block, mask, offsets, dtype, "", first_row + start
            ))
    return sums


def shifted(blocks, observed, offsets):
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


def checked_sums(names, blocks, observed, offsets, dtype, where, first_row):
    """`chunk_sums` of some rows less ``offsets`` (a model's None: nothing),
    their values checked where observed: a value that ``dtype`` cannot hold
    is named (found by converting the rows, a chunk at a time, if they are of
    a wider dtype), as is the first row with NaN or Inf if the sums are not
    finite (without one, the features overflow the dtype, which the solvers
    report), and features too small for ``dtype`` (read only if the sums do
    not show a magnitude large enough)."""
    sums = chunk_sums(names, blocks, observed, dtype)
    finite = all(np.isfinite(s.scatter.diagonal()).all() for s in sums.values())
    widths = [block.shape[1] for block in blocks]
    bounds = magnitude_bounds(names, widths, sums)
    step = max(1, CHUNK_ENTRIES // sum(widths))
    for m, (name, block) in enumerate(zip(names, blocks)):
        what = f"data for model {name!r}{where}"
        mask = None if observed is None else observed[:, m]
        narrowing = block.dtype.kind == "f" and block.dtype.itemsize > dtype.itemsize
        for start in range(0, len(block), step) if narrowing or not finite else ():
            rows = slice(start, start + step)
            part = None if mask is None else mask[rows]
            checked = as_kernel_array(block[rows], dtype, what, part, first_row + start)
            if not finite:
                check_finite(checked, what, part, first_row + start)
        check_values(block, what, dtype, mask, first_row, bounds[name])
    index = {name: m for m, name in enumerate(names)}
    for key, value in sums.items():
        shifts = [offsets[index[name]] for name in key]
        if any(shift is not None for shift in shifts):
            sums[key] = value._replace(mean=value.mean - np.concatenate([
                np.zeros(widths[index[name]]) if shift is None else shift
                for name, shift in zip(key, shifts)
            ]))
    return sums


def magnitude_bounds(names, widths, sums):
    """Model name to a lower bound of the largest magnitude of its features
    in the rows of ``sums``: a quarter of the largest ``|mean|`` or standard
    deviation of a feature. Each is at most that magnitude; as summed about a
    rounded centre, the mean at most three times it, the deviation twice; not
    finite, they give 0."""
    bounds = dict.fromkeys(names, 0.0)
    index = {name: m for m, name in enumerate(names)}
    for key, value in sums.items():
        if not key:
            continue
        spread = np.sqrt(np.maximum(value.scatter.diagonal(), 0) / value.count)
        lower = np.maximum(np.abs(value.mean), spread) / 4
        for name, cols in zip(key, slices([widths[index[name]] for name in key])):
            bounds[name] = max(bounds[name], float(lower[cols].max()))
    return bounds
