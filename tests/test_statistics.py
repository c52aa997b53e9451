# SPDX-License-Identifier: BSD-3-Clause
"""One-pass statistics (`latentspace._training.statistics`) against a plain NumPy
computation of the same sums.

Per observation pattern, merged over chunks, against per-sample sums. The
sums are taken a chunk of rows at a time into one buffer, about a centre
sampled from the rows: every count, mean and scatter must equal NumPy's
float64 computation on the same values (float64 to ~1e-12 of the spread,
float32 to its precision), across chunk boundaries, for float32 features far
from zero (where ``E[xx'] - E[x]E[x]'`` would lose every digit), and whatever
the source of the rows (mapping, stream, memory-mapped file, Dask array).
"""

import errno
import fcntl
import functools
import os
import threading
import tracemalloc
from contextlib import closing
from types import SimpleNamespace

import dask
import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from support import (
    correlated,
    dtype_params,
    masked,
    random_observed,
    statistics_of,
    zero_filled,
)

import latentspace._training.data
import latentspace._training.sources
import latentspace._training.statistics
from latentspace import InvalidParameterError
from latentspace._training.data import training_data
from latentspace._training.gradient import _batch_moments
from latentspace._training.reading import blocks, mapped_file
from latentspace._training.sources import magnitude_bounds
from latentspace._training.statistics import chunk_sums


@pytest.mark.parametrize("chunks", [1, 3, 40])
def test_statistics_with_missing_views_match_per_sample_sums(chunks):
    widths, n = (3, 4, 2), 40
    Xs = correlated(widths, n, seed=8)
    observed = random_observed(n, 3, seed=9)
    stats = statistics_of(masked(Xs, observed), observed, chunks)
    assert stats.n_samples == n
    assert_allclose(stats.counts, observed.sum(axis=0))
    cols = np.cumsum([0, *widths])
    mus = [X[o].mean(axis=0) for X, o in zip(Xs, observed.T)]
    assert_allclose(stats.mean, np.concatenate(mus), rtol=1e-12, atol=1e-14)
    for m in range(3):
        for l in range(3):
            both = observed[:, m] & observed[:, l]
            A = Xs[m][both] - mus[m]
            B = Xs[l][both] - mus[l]
            block = stats.gram[cols[m] : cols[m + 1], cols[l] : cols[l + 1]]
            assert_allclose(block, A.T @ B / both.sum(), rtol=1e-12, atol=1e-14)
    shift = np.concatenate(mus) + 0.1
    moments = stats.moments(shift)
    Z = zero_filled([X - shift[a:b] for X, a, b in zip(Xs, cols, cols[1:])], observed)
    Z = np.concatenate(Z, axis=1)
    weight = 1 / np.maximum(observed.sum(axis=1), 1)
    assert_allclose(moments.gram, Z.T @ Z / n, rtol=1e-12, atol=1e-14)
    assert_allclose(moments.consensus, (Z * weight[:, None]).T @ Z / n,
                    rtol=1e-12, atol=1e-14)
    assert_allclose(moments.coverage, observed.mean(axis=0))
    # a mini-batch of all the rows has the same moments
    batch = np.concatenate([X - shift[a:b] for X, a, b in zip(Xs, cols, cols[1:])], 1)
    for got, expected in zip(_batch_moments(batch, observed, widths), moments):
        assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_statistics_of_features_far_from_zero(dtype, tol):
    """float32 features around 1e4 with unit spread, and rows spaced as the
    provisional centre samples them atypical (so the chunk is re-centred):
    the covariance is still that of NumPy in float64."""
    rng = np.random.default_rng(33)
    n = 4096
    X = rng.standard_normal((n, 3)) + 1e4
    X[:: n // 256] += 50.0  # exactly the rows the provisional centre reads
    Y = rng.standard_normal((n, 2)) - 3e3
    stats = statistics_of([X.astype(dtype), Y.astype(dtype)], np.ones((n, 2), bool))
    both = np.concatenate([X.astype(dtype), Y.astype(dtype)], 1).astype(np.float64)
    mean = both.mean(axis=0)
    assert_allclose(stats.mean, mean, rtol=1e-13, atol=tol / 100)
    cov = (both - mean).T @ (both - mean) / n
    assert_allclose(stats.gram, cov, rtol=tol, atol=tol * np.abs(cov).max())


# -- chunked sums against NumPy --------------------------------------------------

NAMES = ("a", "b")
WIDTHS = (5, 3)
# Error of a scatter entry (i, j) over sqrt(scatter_ii scatter_jj), and of a
# mean over the feature's standard deviation plus its magnitude (the rounding
# of the values themselves). Measured on data as below: at most 5e-14
# (float64) and 2e-6 (float32, offset 1e5, 20 000 rows in one chunk).
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}


def views(n, offset=0.0, seed=0):
    """Two correlated views, ``offset`` added to every feature."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, 2))
    return [
        shared @ rng.standard_normal((2, d)) + rng.standard_normal((n, d))
        + offset + rng.uniform(-1, 1, d)
        for d in WIDTHS
    ]


def numpy_sums(blocks):
    """Count, mean and scatter of the concatenated rows, in float64."""
    X = np.hstack([np.asarray(b, dtype=np.float64) for b in blocks])
    mean = X.mean(axis=0)
    return len(X), mean, (X - mean).T @ (X - mean)


def assert_sums_match(sums, blocks, dtype):
    count, mean, scatter = numpy_sums(blocks)
    assert sums.count == count
    std = np.sqrt(np.diag(scatter))
    tol = TOL[np.dtype(dtype)]
    assert np.all(np.abs(sums.mean - mean) <= tol * (std / np.sqrt(count) + np.abs(mean)))
    assert np.all(np.abs(sums.scatter - scatter) <= tol * np.outer(std, std))


def chunk_rows(monkeypatch, rows):
    """Make the statistics copy ``rows`` rows (of both views) at a time."""
    monkeypatch.setattr(latentspace._training.statistics, "CHUNK_ENTRIES", rows * (sum(WIDTHS) + 1))


@dtype_params
@pytest.mark.parametrize("offset", [0.0, 1e3, 1e5], ids=["centred", "1e3", "1e5"])
@pytest.mark.parametrize("rows", [1, 7, 250, 1000, 2000], ids=lambda r: f"{r}rows")
def test_sums_match_numpy_across_chunks(monkeypatch, dtype, offset, rows):
    # 1000 rows in chunks of 1 (every row a chunk), 7 (a partial last chunk),
    # 250 (whole chunks), 1000 and 2000 (one chunk, the buffer of all rows
    # or more).
    blocks = [x.astype(dtype) for x in views(1000, offset)]
    chunk_rows(monkeypatch, rows)
    sums = chunk_sums(NAMES, blocks, None)
    assert list(sums) == [NAMES]
    assert sums[NAMES].mean.dtype == sums[NAMES].scatter.dtype == np.float64
    assert_sums_match(sums[NAMES], blocks, dtype)


def test_float32_far_from_zero_needs_the_centre():
    # The comparison above can fail: the same sums without centring (the
    # moments E[xx'] - E[x]E[x]' in float32) lose every digit at offset 1e3.
    X = np.hstack(views(1000, 1e3)).astype(np.float32)
    raw = (X.T @ X) / 1000 - np.outer(X.mean(axis=0), X.mean(axis=0))
    _, _, scatter = numpy_sums([X])
    std = np.sqrt(np.diag(scatter / 1000))
    assert np.max(np.abs(raw - scatter / 1000) / np.outer(std, std)) > 1e-2


@dtype_params
@pytest.mark.parametrize("rows", [999, 100_000], ids=lambda r: f"{r}rows")
def test_sums_recentre_when_the_sampled_rows_are_not_typical(monkeypatch, dtype, rows):
    # The centre is the mean of every 1000th row of 256 000: make those rows
    # 1000 away from the others, so that the centre is 30 standard deviations
    # from the mean (about it, float32 would lose 3 digits): the rows are
    # summed again about the mean.
    blocks = [x.astype(dtype) for x in views(256_000)]
    for x in blocks:
        x[::1000] += 1000
    chunk_rows(monkeypatch, rows)
    count, mean, scatter = numpy_sums(blocks)
    centre = np.hstack([x[::1000].mean(axis=0) for x in blocks])
    assert np.all((mean - centre) ** 2 > 900 * np.diag(scatter) / count)
    assert_sums_match(chunk_sums(NAMES, blocks, None)[NAMES], blocks, dtype)


@dtype_params
@pytest.mark.parametrize("rows", [1, 7, 1000], ids=lambda r: f"{r}rows")
def test_sums_of_patterns_of_missing_views_match_numpy(monkeypatch, dtype, rows):
    blocks = [x.astype(dtype) for x in views(600, 1e3)]
    rng = np.random.default_rng(3)
    observed = rng.random((600, 2)) < [0.7, 0.8]
    chunk_rows(monkeypatch, rows)
    sums = chunk_sums(NAMES, blocks, observed)
    patterns = {(): ~observed.any(axis=1), ("a",): observed[:, 0] & ~observed[:, 1],
                ("b",): ~observed[:, 0] & observed[:, 1], NAMES: observed.all(axis=1)}
    assert set(sums) == set(patterns)
    for key, rows_of in patterns.items():
        assert sums[key].count == rows_of.sum()
        if key:
            assert_sums_match(
                sums[key], [x[rows_of] for x, n in zip(blocks, NAMES) if n in key], dtype
            )


def test_sums_of_no_rows_are_empty():
    assert chunk_sums(NAMES, [np.zeros((0, d)) for d in WIDTHS], None) == {}


def test_sums_copy_one_chunk_at_a_time():
    # 25 MB of float32 features: the statistics allocate the 16 MB buffer of
    # a chunk and the products, not a copy of the rows.
    blocks = [np.ones((2**19, 8), np.float32), np.zeros((2**19, 4), np.float32)]
    tracemalloc.start()
    try:
        chunk_sums(["a", "b"], blocks, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 18 * 2**20


def test_magnitude_bounds_are_at_most_the_largest_magnitude():
    # A model whose sums do not show a large enough magnitude is read again
    # (`check_scale`): the bounds must never exceed the true magnitude.
    rng = np.random.default_rng(7)
    for scale in (1e-30, 1e-12, 1.0, 1e15):
        for offset in (0.0, 3.0, -40.0):
            blocks = [(rng.standard_normal((50, d)) + offset).astype(np.float32) * scale
                      for d in WIDTHS]
            blocks[1][:, 0] = 0.0
            observed = rng.random((50, 2)) < 0.7
            for mask in (None, observed):
                sums = chunk_sums(NAMES, blocks, mask, np.float32)
                bounds = magnitude_bounds(NAMES, WIDTHS, sums)
                for m, name in enumerate(NAMES):
                    rows = slice(None) if mask is None else mask[:, m]
                    largest = np.abs(blocks[m][rows]).max(initial=0.0)
                    assert bounds[name] <= largest
                    if scale > 1e-30:  # squares that float32 holds: shown
                        assert bounds[name] >= largest / 100


# -- every source: the same statistics ----------------------------------------


def _statistics(data, dtype):
    models = {name: SimpleNamespace(input_dim=d) for name, d in zip(NAMES, WIDTHS)}
    with training_data(data, models, np.dtype(dtype)) as source:
        return source.statistics([None, None])


@pytest.fixture
def small_blocks(monkeypatch):
    """Chunks of 7 rows in blocks of 3 chunks (a mapping's and Dask's)."""
    chunk_rows(monkeypatch, 7)
    monkeypatch.setattr(latentspace._training.sources, "BLOCK_ENTRIES", 21 * sum(WIDTHS))
    monkeypatch.setattr(latentspace._training.data, "MERGED_PER_TASK", 3)


@dtype_params
def test_every_source_gives_the_statistics_of_numpy(small_blocks, tmp_path, dtype):
    arrays = [x.astype(dtype) for x in views(500, 1e3)]
    for name, x in zip(NAMES, arrays):
        np.save(tmp_path / f"{name}.npy", x)
    maps = [np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in NAMES]
    bounds = [0, 1, 60, 61, 300, 500]
    sources = {
        "mapping": dict(zip(NAMES, arrays)),
        "memmap": dict(zip(NAMES, maps)),
        "stream": [{n: x[a:b] for n, x in zip(NAMES, maps)}
                   for a, b in zip(bounds, bounds[1:])],
        # The Dask blocks of the two models differ (rechunked to the first's).
        "dask": {n: da.from_array(x, chunks=(rows, -1))
                 for n, x, rows in zip(NAMES, arrays, (45, 64))},
    }
    count, mean, scatter = numpy_sums(arrays)
    gram = scatter / count
    std = np.sqrt(np.diag(gram))
    found = {}
    with dask.config.set(scheduler="sync"):  # the small chunks above apply
        for kind, data in sources.items():
            stats = _statistics(data, dtype)
            assert stats.n_samples == count and stats.gram.dtype == dtype, kind
            assert np.all(np.abs(stats.mean - mean)
                          <= TOL[np.dtype(dtype)] * (std + np.abs(mean))), kind
            assert np.all(np.abs(stats.gram - gram)
                          <= TOL[np.dtype(dtype)] * np.outer(std, std)), kind
            found[kind] = stats
    # The mapping and the memory-mapped file are summed in the same order.
    assert_array_equal(found["memmap"].gram, found["mapping"].gram)
    assert_array_equal(found["memmap"].mean, found["mapping"].mean)


# -- memory-mapped files, read ahead ---------------------------------------------


def saved(tmp_path, arrays):
    """``arrays`` saved as .npy files and opened memory-mapped, read-only."""
    for name, x in zip(NAMES, arrays):
        np.save(tmp_path / f"{name}.npy", x)
    return [np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in NAMES]


@pytest.fixture
def blocks_of_37(monkeypatch):
    """Blocks of 37 rows, each summed 7 rows at a time: 500 rows are 14."""
    chunk_rows(monkeypatch, 7)
    monkeypatch.setattr(latentspace._training.sources, "BLOCK_ENTRIES",
                        37 * sum(WIDTHS))


def summed_blocks(monkeypatch, module=latentspace._training.sources):
    """The blocks ``module``'s `checked_sums` sums, as it sums them (recorded):
    those of a mapping's and of Dask's (`block_sums`) by default, a stream's
    with `latentspace._training.data`."""
    seen = []
    real = module.checked_sums

    def spy(names, blocks, *args):
        seen.append(list(blocks))
        return real(names, blocks, *args)

    monkeypatch.setattr(module, "checked_sums", spy)
    return seen


def root(array):
    """The array that owns the memory of ``array``."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def reader_threads():
    return [t for t in threading.enumerate()
            if t.name.startswith("latentspace-read-ahead")]


def source_statistics(data, offsets, dtype, observed=None):
    models = {name: SimpleNamespace(input_dim=d) for name, d in zip(NAMES, WIDTHS)}
    with training_data(data, models, np.dtype(dtype), observed=observed) as source:
        return source.statistics(offsets)


def assert_same_statistics(got, expected):
    assert got.n_samples == expected.n_samples
    assert_array_equal(got.counts, expected.counts)
    assert_array_equal(got.mean, expected.mean)
    assert_array_equal(got.gram, expected.gram)
    assert [m for m, _ in got.patterns] == [m for m, _ in expected.patterns]
    for (_, a), (_, b) in zip(got.patterns, expected.patterns):
        assert a.count == b.count
        assert_array_equal(a.mean, b.mean)
        assert_array_equal(a.scatter, b.scatter)


@dtype_params
@pytest.mark.parametrize("case", ["complete", "observed", "masked"])
def test_memory_mapped_blocks_are_read_ahead_into_two_buffers(
        blocks_of_37, tmp_path, monkeypatch, dtype, case):
    """Every block of a memory-mapped file is summed from one of two buffers
    that a thread filled from the file (never from the file's pages), and
    the statistics are bit-identical to those of the same arrays in memory,
    summed in the same blocks: with masks of observed rows, masked arrays
    and offsets."""
    arrays = [x.astype(dtype) for x in views(500, 1e3)]
    maps = saved(tmp_path, arrays)
    offsets = [np.linspace(900, 1100, WIDTHS[0]), None]
    observed = None
    if case != "complete":
        observed = {"a": random_observed(500, 1, seed=4)[:, 0],
                    "b": random_observed(500, 1, seed=5)[:, 0]}
    if case == "masked":
        maps = [np.ma.masked_array(x, mask=np.broadcast_to(~observed[name][:, None],
                                                           x.shape))
                for name, x in zip(NAMES, maps)]
        arrays = [np.ma.masked_array(x.data.copy(), mask=x.mask) for x in maps]
        observed = None
    expected = source_statistics(dict(zip(NAMES, arrays)), offsets, dtype, observed)
    seen = summed_blocks(monkeypatch)
    got = source_statistics(dict(zip(NAMES, maps)), offsets, dtype, observed)
    assert_same_statistics(got, expected)
    assert len(seen) == 14 and not reader_threads()
    for m in range(len(NAMES)):
        assert all(mapped_file(blocks[m]) is None for blocks in seen)
        buffers = [root(blocks[m]) for blocks in seen]
        assert len({id(b) for b in buffers}) == 2  # used in turn
        assert buffers[0] is buffers[2] is not buffers[1]


@pytest.mark.parametrize(
    "how", ["cached", "direct", "direct refused", "through the cache", "mapping"])
def test_every_way_of_reading_gives_the_same_statistics(
        blocks_of_37, tmp_path, monkeypatch, how):
    """Rows the page cache holds (as ``mincore`` tells: just written) are
    read through it, others directly from the disk (``O_DIRECT``), or
    through the cache where there are no direct reads or they are refused
    (``EINVAL``); without ``preadv`` the blocks are the mapping's rows:
    every way, the statistics of the arrays in memory."""
    arrays = views(500, 1e3)
    maps = saved(tmp_path, arrays)
    expected = source_statistics(dict(zip(NAMES, arrays)), [None, None], np.float64)
    if how != "cached":
        monkeypatch.setattr(latentspace._training.reading, "_MINCORE", None)
    if how == "through the cache":
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    if how == "mapping":
        monkeypatch.delattr(os, "preadv")
    if how in ("cached", "direct"):
        try:
            os.close(os.open(tmp_path / "a.npy", os.O_RDONLY | os.O_DIRECT))
        except OSError:
            pytest.skip("no direct reads on this file system")
    reads = []  # whether each read was direct
    if how != "mapping":
        real = os.preadv

        def preadv(fd, buffers, at, *flags):
            direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0))
            reads.append(direct)
            if direct and how == "direct refused":
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return real(fd, buffers, at, *flags)

        monkeypatch.setattr(os, "preadv", preadv)
    seen = summed_blocks(monkeypatch)
    got = source_statistics(dict(zip(NAMES, maps)), [None, None], np.float64)
    assert_same_statistics(got, expected)
    from_files = [mapped_file(block) is not None for blocks in seen for block in blocks]
    assert all(from_files) if how == "mapping" else not any(from_files)
    if how == "cached" or how == "through the cache":
        assert reads and not any(reads)
    elif how == "direct":
        assert reads and all(reads)
    elif how == "direct refused":  # one refusal per file, then through the cache
        assert reads.count(True) == len(NAMES) and reads.count(False) >= len(seen)


def test_what_is_not_a_plain_view_of_a_file_is_not_read_ahead(tmp_path):
    """Not C-contiguous (Fortran order, a column slice), copy-on-write,
    in memory: no file to read the rows from (the blocks are slices)."""
    x = views(50)[0]
    fortran = tmp_path / "f.npy"
    np.save(fortran, np.asfortranarray(x))
    maps = saved(tmp_path, views(50))
    np.save(tmp_path / "c.npy", x)
    for array in [np.load(fortran, mmap_mode="r"), maps[0][:, 1:],
                  np.load(tmp_path / "c.npy", mmap_mode="c"), x]:
        assert mapped_file(array) is None
        for start, (block,) in blocks([array], 50, 20, ["a"]):
            assert block.base is not None and root(block) is root(array)
    assert mapped_file(maps[0]) is not None


def test_mapped_file_finds_the_position_of_a_view(tmp_path):
    """The position of the first byte of a view, through any chain of views
    and wherever the mapping starts in the file."""
    path = tmp_path / "x.bin"
    np.arange(40000.0).tofile(path)
    mapped = np.memmap(path, np.float64, "r", offset=8 * 1000, shape=(3000, 4))
    for view in [mapped, mapped[7:], np.asarray(mapped)[100:][3:], mapped[2999:]]:
        name, position, identity = mapped_file(view)
        assert os.fspath(name) == str(path)
        assert identity == (os.stat(path).st_dev, os.stat(path).st_ino)
        assert np.fromfile(path, np.float64, 4, offset=position)[0] == view[0, 0]


def test_a_file_replaced_since_it_was_mapped_is_read_through_the_mapping(
        blocks_of_37, tmp_path):
    """A file of the same size put at the mapped file's name (an atomic
    rename, as a pipeline rewrites its embeddings) is not read: the
    statistics are those of the mapped arrays."""
    arrays = views(500, 1e3)
    maps = saved(tmp_path, arrays)
    expected = source_statistics(dict(zip(NAMES, arrays)), [None, None], np.float64)
    for name, x in zip(NAMES, arrays):
        np.save(tmp_path / "new.npy", x + 1.0)
        os.replace(tmp_path / "new.npy", tmp_path / f"{name}.npy")
    assert all(mapped_file(x) is not None for x in maps)
    got = source_statistics(dict(zip(NAMES, maps)), [None, None], np.float64)
    assert_same_statistics(got, expected)


def memory_mapped_chunks(arrays, bounds):
    """A stream of chunks of ``arrays`` between ``bounds``; model "b" is
    missing from the third."""
    for number, (a, b) in enumerate(zip(bounds, bounds[1:])):
        chunk = {name: x[a:b] for name, x in zip(NAMES, arrays)}
        if number == 2:
            del chunk["b"]
        yield chunk


@dtype_params
def test_a_stream_of_memory_mapped_chunks_is_read_ahead(
        small_blocks, tmp_path, monkeypatch, dtype):
    """Chunks sliced from memory-mapped files (any sizes, a model missing
    from one) are summed from buffers a thread filled from the files, with
    the statistics of the same chunks in memory, bit for bit."""
    arrays = [x.astype(dtype) for x in views(500, 1e3)]
    maps = saved(tmp_path, arrays)
    bounds = [0, 1, 60, 61, 300, 500]
    expected = source_statistics(memory_mapped_chunks(arrays, bounds), [None, None],
                                 dtype)
    seen = summed_blocks(monkeypatch, latentspace._training.data)
    got = source_statistics(memory_mapped_chunks(maps, bounds), [None, None], dtype)
    assert_same_statistics(got, expected)
    assert [len(blocks) for blocks in seen] == [2, 2, 1, 2, 2]
    assert not any(mapped_file(b) is not None for blocks in seen for b in blocks)
    assert not reader_threads()


def test_a_stream_cut_short_names_the_chunk_and_the_row(tmp_path):
    """A file cut short after it was mapped, read in a stream: an OSError
    naming the model, the chunk and the row of the stream."""
    maps = saved(tmp_path, views(500))
    os.truncate(tmp_path / "b.npy", maps[1].offset + 250 * maps[1][0].nbytes)
    message = (r"data for model 'b' in chunk 3 \(from row 61 of the stream\): its "
               r"file ends at byte \d+, in row 250 ")
    with pytest.raises(OSError, match=message):
        source_statistics(memory_mapped_chunks(maps, [0, 1, 60, 61, 300, 500]),
                          [None, None], np.float64)
    assert not reader_threads()


def _rows_of_file(path, block_info=None):
    (start, stop), _ = block_info[None]["array-location"]
    return np.load(path, mmap_mode="r")[start:stop]


def test_dask_blocks_that_view_files_are_read_from_them(tmp_path, monkeypatch):
    """A Dask task whose block views a memory-mapped file (a loader's
    slice) sums it as read from the file (a part ahead), with the
    statistics of the same blocks in memory, bit for bit."""
    arrays = views(500, 1e3)
    saved(tmp_path, arrays)
    in_memory = {name: da.from_array(x, chunks=(64, -1))
                 for name, x in zip(NAMES, arrays)}
    from_files = {
        name: da.map_blocks(
            functools.partial(_rows_of_file, tmp_path / f"{name}.npy"),
            chunks=(in_memory[name].chunks[0], (x.shape[1],)), dtype=x.dtype,
            meta=np.empty((0, 0), x.dtype),
        )
        for name, x in zip(NAMES, arrays)
    }
    with dask.config.set(scheduler="sync"):
        expected = source_statistics(in_memory, [None, None], np.float64)
        seen = summed_blocks(monkeypatch)
        got = source_statistics(from_files, [None, None], np.float64)
    assert_same_statistics(got, expected)
    assert len(seen) == 8
    assert not any(mapped_file(b) is not None for blocks in seen for b in blocks)


def test_nan_in_a_later_block_is_named_by_its_row(blocks_of_37, tmp_path):
    arrays = views(500)
    arrays[1][3 * 37 + 5, 2] = np.nan  # the fourth block
    maps = saved(tmp_path, arrays)
    message = r"data for model 'b' contains NaN or Inf \(first in row 116\)"
    with pytest.raises(InvalidParameterError, match=message):
        source_statistics(dict(zip(NAMES, maps)), [None, None], np.float64)
    assert not reader_threads()


def test_a_failed_read_names_the_model(blocks_of_37, tmp_path, monkeypatch):
    """An I/O error in the reading thread is raised by the pass, with the
    model's name; the thread ends."""
    maps = saved(tmp_path, views(500))
    calls = []
    real = os.preadv

    def failing(fd, buffers, at, *flags):
        calls.append(at)
        if len(calls) > 9:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, buffers, at, *flags)

    monkeypatch.setattr(os, "preadv", failing)
    message = "cannot read data for model '(a|b)': Input/output error"
    with pytest.raises(OSError, match=message):
        source_statistics(dict(zip(NAMES, maps)), [None, None], np.float64)
    assert not reader_threads()


def test_a_pass_stopped_early_leaves_no_thread(tmp_path):
    maps = saved(tmp_path, views(500))
    rows = blocks(maps, 500, 10, NAMES)
    with closing(rows):
        for start, _ in rows:
            if start == 30:
                break
    assert not reader_threads()


