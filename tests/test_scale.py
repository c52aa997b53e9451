# SPDX-License-Identifier: BSD-3-Clause
"""Training at scale: streams of chunks, memory-mapped files and Dask arrays.

A stream, a memory-mapped file and a Dask array hold the same samples as an
in-memory mapping, so every solver must give the same space from them (to
rounding: the statistics are summed in another order); the checks and errors
must name where the problem is and leave the space as it was. Dask runs on a
local cluster of two worker processes, as in production.
"""

import os
import re
import threading

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from numpy.testing import assert_allclose

from latentspace import InvalidParameterError, LatentSpace, UnknownModelError
from support import LineInterrupter, assert_unchanged, dtype_params, snapshot

import latentspace._training.reading
import latentspace._training.sources

WIDTHS = (6, 4, 5)
NAMES = ("m0", "m1", "m2")
N = 300

# The statistics of a stream are merged in another order than those of one
# mapping: float64 agrees to rounding, float32 to its precision (measured
# over the splits below: at most 2.4e-13 and 2.7e-5 absolute, on weights of
# up to 3.3 in magnitude; 25 L-BFGS iterations on missing views amplify the
# float64 difference to 1.2e-10).
TOL = {
    np.dtype(np.float64): {"rtol": 0.0, "atol": 1e-9},
    np.dtype(np.float32): {"rtol": 1e-4, "atol": 1e-4},
}

# L-BFGS stops after a fixed number of iterations (a callback), so that both
# runs take the same path rather than stopping on a tolerance near rounding.
SOLVERS = {
    "cca": {},
    "lbfgs": {"n_epochs": 100, "init": "current",
              "callback": lambda state: state.iteration >= 25},
}
solver_params = pytest.mark.parametrize("solver", list(SOLVERS))
# The per-sample SGD loads the samples (a few epochs: the same path either way).
OPTIONS = {**SOLVERS, "sgd": {"n_epochs": 3}}


def views(n=N, seed=0):
    """Three correlated views of ``n`` items, off-centre (offsets matter)."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, 3))
    return [
        shared @ rng.standard_normal((3, d))
        + 0.5 * rng.standard_normal((n, d))
        + rng.uniform(-3, 3, d)
        for d in WIDTHS
    ]


def make(dtype="float64"):
    space = LatentSpace(3, dtype=dtype)
    for name, width in zip(NAMES, WIDTHS):
        space.register(name, width)
    return space


def trained(data, solver, dtype="float64", **kwargs):
    space = make(dtype)
    result = space.train_projections(data, solver=solver, **OPTIONS[solver], **kwargs)
    return space, result


def chunks(arrays, bounds, missing=None):
    """A generator of chunks of rows ``bounds[i]:bounds[i+1]``; ``missing``
    maps a chunk number to the models left out of it."""
    missing = missing or {}
    for number, (a, b) in enumerate(zip(bounds, bounds[1:])):
        yield {
            name: x[a:b]
            for name, x in zip(NAMES, arrays)
            if name not in missing.get(number, ())
        }


def assert_same_space(space, expected, tol):
    for name in NAMES:
        for got, want in zip(space.weights(name), expected.weights(name)):
            assert_allclose(got, want, **tol)
        if expected.offset(name) is None:  # the reference optimiser adds none
            assert space.offset(name) is None
        else:
            assert_allclose(space.offset(name), expected.offset(name), **tol)


BOUNDS = {
    "uneven": [0, 1, 7, 7, 100, 101, 233, N],  # an empty chunk too
    "even": list(range(0, N + 1, 50)),
    "rows": list(range(N + 1)),  # one row per chunk
    "one": [0, N],
}


# -- streams -----------------------------------------------------------------


@solver_params
@dtype_params
@pytest.mark.parametrize("split", list(BOUNDS))
def test_stream_matches_memory(solver, dtype, split):
    arrays = [x.astype(dtype) for x in views()]
    expected, full = trained(dict(zip(NAMES, arrays)), solver, dtype)
    space, streamed = trained(chunks(arrays, BOUNDS[split]), solver, dtype)
    assert_same_space(space, expected, TOL[dtype])
    assert streamed.n_epochs == full.n_epochs
    assert_allclose(streamed.loss_history, full.loss_history, **TOL[dtype])
    assert space.offset("m0") is not None  # the offsets were learnt, and compared


def test_stream_is_not_the_untrained_space():
    # The comparison above can fail: another split of the data gives another
    # space, and the untrained one differs.
    arrays = views()
    expected, _ = trained(dict(zip(NAMES, arrays)), "cca")
    half, _ = trained(chunks(arrays, [0, N // 2]), "cca")
    with pytest.raises(AssertionError):
        assert_same_space(half, expected, TOL[np.dtype(np.float64)])
    with pytest.raises(AssertionError):
        assert_same_space(make(), expected, TOL[np.dtype(np.float64)])


@solver_params
def test_stream_with_missing_models_matches_observed_masks(solver):
    arrays = views()
    bounds = [0, 40, 90, 91, 150, 220, N]
    missing = {1: ("m2",), 2: ("m0", "m1"), 4: ("m0",)}
    observed = {name: np.ones(N, dtype=bool) for name in NAMES}
    for number, names in missing.items():
        for name in names:
            observed[name][bounds[number]:bounds[number + 1]] = False
    # Rows a model did not observe may hold anything: NaN here.
    holey = [x.copy() for x in arrays]
    for name, x in zip(NAMES, holey):
        x[~observed[name]] = np.nan
    expected, _ = trained(dict(zip(NAMES, holey)), solver, observed=observed)
    space, _ = trained(chunks(arrays, bounds, missing), solver)
    assert_same_space(space, expected, TOL[np.dtype(np.float64)])
    complete, _ = trained(dict(zip(NAMES, arrays)), solver)
    with pytest.raises(AssertionError):  # the missing views made a difference
        assert_same_space(space, complete, TOL[np.dtype(np.float64)])


def test_stream_of_a_list_can_be_read_again():
    arrays = views()
    stream = list(chunks(arrays, BOUNDS["even"]))
    first, _ = trained(stream, "cca")
    second, _ = trained(stream, "cca")
    assert_same_space(second, first, {"rtol": 0, "atol": 0})


def test_generator_is_read_once():
    space = make()
    stream = chunks(views(), BOUNDS["even"])
    space.train_projections(stream, solver="cca")
    before = snapshot(space)
    with pytest.raises(InvalidParameterError, match="generator that was read already"):
        space.train_projections(stream, solver="cca")
    assert_unchanged(space, before)


def test_generator_is_spent_by_a_failed_training():
    # A retry must not silently train on the chunks a failure left unread.
    arrays = views()
    space = make()
    stream = chunks(arrays, BOUNDS["even"])
    with pytest.raises(InvalidParameterError, match="trains with 'cca' or 'lbfgs'"):
        space.train_projections(stream, solver="sgd")
    with pytest.raises(InvalidParameterError, match="read already"):
        space.train_projections(stream, solver="cca")


@pytest.mark.parametrize("solver", ["sgd", "minibatch"])
def test_stream_refused_by_solvers_that_visit_samples(solver):
    space = make()
    before = snapshot(space)
    message = f"solver='{solver}' visits samples; a stream of chunks trains with"
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        space.train_projections(chunks(views(), BOUNDS["even"]), solver=solver)
    assert_unchanged(space, before)


@dtype_params
def test_nan_in_a_chunk_names_model_chunk_and_row(dtype):
    arrays = [x.astype(dtype) for x in views()]
    arrays[1][123, 2] = np.nan
    space = make(dtype)
    before = snapshot(space)
    message = (
        "data for model 'm1' in chunk 2 (from row 100 of the stream) contains "
        "NaN or Inf (first in row 123)"
    )
    for solver in SOLVERS:
        with pytest.raises(InvalidParameterError, match=re.escape(message)):
            space.train_projections(chunks(arrays, BOUNDS["even"]), solver=solver)
    assert_unchanged(space, before)


def bad_later_chunk(arrays, chunk):
    yield {name: x[:50] for name, x in zip(NAMES, arrays)}
    yield chunk


@pytest.mark.parametrize(
    "chunk, error, message",
    [
        ({"m0": np.zeros((5, 6)), "m1": np.zeros((5, 3))}, InvalidParameterError,
         "data for model 'm1' in chunk 1 (from row 50 of the stream) must have "
         "shape (n, 4), got shape (5, 3)"),
        ({"m0": np.zeros((5, 6)), "m1": np.zeros((4, 4))}, InvalidParameterError,
         "must have the same number of samples (aligned by index) in chunk 1 "
         "(from row 50 of the stream), got 'm0': 5, 'm1': 4"),
        ({"m0": np.zeros((5, 6)), "m9": np.zeros((5, 4))}, UnknownModelError,
         "model 'm9' is not registered"),
        ([np.zeros((5, 6))], InvalidParameterError,
         "chunk 1 of data must be a mapping of model name to array, got list"),
        ({"m0": np.full((5, 6), "x")}, InvalidParameterError,
         "data for model 'm0' in chunk 1 (from row 50 of the stream) must hold "
         "real numbers"),
    ],
    ids=["width", "rows", "unknown", "not-a-mapping", "not-numeric"],
)
def test_bad_later_chunk(chunk, error, message):
    space = make()
    before = snapshot(space)
    with pytest.raises(error, match=re.escape(message)):
        space.train_projections(bad_later_chunk(views(), chunk), solver="cca")
    assert_unchanged(space, before)


def test_model_not_in_the_first_chunk_is_refused():
    arrays = views()
    stream = chunks(arrays, [0, 50, N], missing={0: ("m2",)})
    with pytest.raises(InvalidParameterError, match="'m2' is in chunk 1 but not in chunk 0"):
        make().train_projections(stream, solver="cca")


@pytest.mark.parametrize(
    "stream, message",
    [
        ([], "data holds zero samples (empty stream)"),
        (iter([]), "data holds zero samples (empty stream)"),
        ([{"m0": np.zeros((0, 6)), "m1": np.zeros((0, 4))}] * 3,
         "data holds zero samples"),
        ([{"m0": np.zeros((0, 6)), "m1": np.zeros((0, 4))}, {"m0": np.ones((3, 6))}],
         "model 'm1' observed no sample in any chunk"),
    ],
    ids=["empty-list", "empty-iterator", "empty-chunks", "model-never-observed"],
)
def test_empty_stream(stream, message):
    space = make()
    before = snapshot(space)
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        space.train_projections(stream, solver="cca")
    assert_unchanged(space, before)


def test_stream_refuses_observed_masks():
    with pytest.raises(InvalidParameterError, match="a model missing from a chunk"):
        make().train_projections(
            chunks(views(), BOUNDS["even"]), solver="cca",
            observed={"m0": np.ones(N, dtype=bool)},
        )


# -- memory-mapped files -----------------------------------------------------


@pytest.fixture
def memmaps(tmp_path):
    """The views saved as .npy files and opened read-only, memory-mapped."""
    arrays = views()
    maps = []
    for name, x in zip(NAMES, arrays):
        np.save(tmp_path / f"{name}.npy", x)
        maps.append(np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    assert all(isinstance(m, np.memmap) and not m.flags.writeable for m in maps)
    return arrays, maps


@pytest.mark.parametrize("solver", list(OPTIONS))
def test_memmap_mapping_matches_memory(memmaps, solver):
    arrays, maps = memmaps
    expected, _ = trained(dict(zip(NAMES, arrays)), solver)
    space, _ = trained(dict(zip(NAMES, maps)), solver)
    assert_same_space(space, expected, TOL[np.dtype(np.float64)])


@solver_params
def test_stream_of_memmap_chunks_matches_memory(memmaps, solver):
    arrays, maps = memmaps
    expected, _ = trained(dict(zip(NAMES, arrays)), solver)
    space, _ = trained(chunks(maps, BOUNDS["uneven"]), solver)
    assert_same_space(space, expected, TOL[np.dtype(np.float64)])


def reader_threads():
    return [t for t in threading.enumerate()
            if t.name.startswith("latentspace-read-ahead")]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 20 rows: 15 blocks of N rows."""
    monkeypatch.setattr(latentspace._training.sources, "BLOCK_ENTRIES",
                        20 * sum(WIDTHS))


def test_interrupted_memmap_training_leaves_no_thread(
        memmaps, small_blocks, monkeypatch):
    """Ctrl-C while a block is summed (the next one being read): the
    training stops, the reading thread ends, the space is unchanged."""
    _, maps = memmaps
    space = make()
    before = snapshot(space)
    calls = []
    real = latentspace._training.sources.checked_sums

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(latentspace._training.sources, "checked_sums", interrupted)
    with pytest.raises(KeyboardInterrupt):
        space.train_projections(dict(zip(NAMES, maps)), solver="cca")
    assert not reader_threads()
    assert_unchanged(space, before)


@pytest.mark.parametrize("kind", ["mapping", "stream"])
def test_ctrl_c_at_any_line_of_the_read_ahead_leaves_no_thread(
        memmaps, small_blocks, kind):
    _, maps = memmaps
    space = make()
    before = snapshot(space)
    interrupter = LineInterrupter(latentspace._training.reading.__file__)

    def training():
        data = dict(zip(NAMES, maps))
        if kind == "stream":
            data = ({name: x[a : a + 100] for name, x in zip(NAMES, maps)}
                    for a in range(0, len(maps[0]), 100))
        space.train_projections(data, solver="cca")

    lines = interrupter.lines(training)
    space = make()
    assert len(lines) > 20
    for at in range(1, len(lines) + 1):
        assert interrupter.run(training, at) is not None, at
        assert not reader_threads(), at
        assert_unchanged(space, before)


@pytest.mark.parametrize("solver", ["cca", "sgd"])
def test_truncated_file_is_named(tmp_path, small_blocks, solver):
    """A file cut short after it was mapped (its later rows no longer
    exist), summed in blocks or loaded whole: an OSError naming the model,
    the space unchanged."""
    arrays = views()
    maps = []
    for name, x in zip(NAMES, arrays):
        np.save(tmp_path / f"{name}.npy", x)
        maps.append(np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    os.truncate(tmp_path / "m1.npy", maps[1].offset + 250 * maps[1][0].nbytes)
    space = make()
    before = snapshot(space)
    message = r"data for model 'm1': its file ends at byte \d+, in row 250 \("
    with pytest.raises(OSError, match=message):
        space.train_projections(dict(zip(NAMES, maps)), solver=solver)
    assert not reader_threads()
    assert_unchanged(space, before)


# -- Dask --------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    """A client of a local cluster of two single-threaded worker processes (its
    HTTP server on a free port: another cluster may hold the default one)."""
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def dask_views(arrays, rows=37):
    """Dask arrays of ``arrays`` in blocks of rows and of columns."""
    return [da.from_array(x, chunks=(rows, 3)) for x in arrays]


@pytest.mark.parametrize("solver", list(OPTIONS))
def test_dask_training_matches_numpy(client, solver):
    arrays = views()
    expected, full = trained(dict(zip(NAMES, arrays)), solver)
    space, result = trained(dict(zip(NAMES, dask_views(arrays))), solver)
    assert_same_space(space, expected, TOL[np.dtype(np.float64)])
    assert_allclose(result.loss_history, full.loss_history, rtol=1e-10)


@solver_params
@pytest.mark.parametrize("lazy_masks", [False, True], ids=["numpy-masks", "dask-masks"])
def test_dask_training_with_observed_masks(client, solver, lazy_masks):
    arrays = views()
    rng = np.random.default_rng(1)
    observed = {name: rng.random(N) < 0.8 for name in NAMES[:2]}
    for name, x in zip(NAMES, arrays):
        if name in observed:
            x[~observed[name]] = np.nan
    expected, _ = trained(dict(zip(NAMES, arrays)), solver, observed=observed)
    if lazy_masks:
        observed = {name: da.from_array(m, chunks=50) for name, m in observed.items()}
    space, _ = trained(
        dict(zip(NAMES, dask_views(arrays))), solver, observed=observed
    )
    assert_same_space(space, expected, TOL[np.dtype(np.float64)])


@pytest.mark.parametrize("scheduler", ["distributed", "sync"])
def test_dask_blocks_of_any_rows(client, monkeypatch, scheduler):
    """Models in different row blocks, each block read a few rows at a time
    (in this process: the workers import the module unchanged)."""
    import dask

    import latentspace._training.statistics

    monkeypatch.setattr(latentspace._training.statistics, "CHUNK_ENTRIES", 40)  # 2 rows
    arrays = views()
    expected, _ = trained(dict(zip(NAMES, arrays)), "cca")
    lazy = [da.from_array(x, chunks=(rows, -1)) for x, rows in zip(arrays, (37, 50, 64))]
    with dask.config.set(scheduler=scheduler):
        space, _ = trained(dict(zip(NAMES, lazy)), "cca")
        assert_same_space(space, expected, TOL[np.dtype(np.float64)])
        arrays[1][123, 0] = np.nan
        lazy[1] = da.from_array(arrays[1], chunks=(50, -1))
        message = "data for model 'm1' contains NaN or Inf (first in row 123)"
        with pytest.raises(InvalidParameterError, match=re.escape(message)):
            trained(dict(zip(NAMES, lazy)), "cca")


def test_dask_training_nan_names_model_and_row(client):
    arrays = views()
    arrays[2][200, 1] = np.inf
    space = make()
    before = snapshot(space)
    message = "data for model 'm2' contains NaN or Inf (first in row 200)"
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        space.train_projections(dict(zip(NAMES, dask_views(arrays))), solver="cca")
    assert_unchanged(space, before)


def test_dask_training_bad_input(client):
    arrays = dask_views(views())
    space = make()
    before = snapshot(space)
    with pytest.raises(InvalidParameterError, match=r"shape \(n, 4\), got shape"):
        space.train_projections({"m0": arrays[0], "m1": arrays[2]}, solver="cca")
    with pytest.raises(InvalidParameterError, match="same number of samples"):
        space.train_projections({"m0": arrays[0], "m1": arrays[1][:10]}, solver="cca")
    unknown = arrays[0][arrays[0][:, 0] > 0]
    with pytest.raises(InvalidParameterError, match="unknown chunk sizes"):
        space.train_projections({"m0": unknown, "m1": arrays[1]}, solver="cca")
    text = da.from_array(np.full((N, 4), "x"), chunks=50)
    with pytest.raises(InvalidParameterError, match="must hold real numbers"):
        space.train_projections({"m0": arrays[0], "m1": text}, solver="cca")
    assert_unchanged(space, before)


@pytest.fixture(scope="module")
def fitted():
    space, _ = trained(dict(zip(NAMES, views())), "cca")
    return space


def test_dask_project_retrieve_translate(client, fitted):
    x = views(seed=5)[0]
    dx = da.from_array(x, chunks=(41, 4))
    z = fitted.project("m0", dx)
    assert isinstance(z, da.Array) and z.dtype == fitted.dtype
    assert z.chunks == (dx.chunks[0], (3,))  # row blocks kept, columns in one
    assert_allclose(z.compute(), fitted.project("m0", x), rtol=1e-12, atol=1e-12)
    retrieved = fitted.retrieve("m1", z)
    assert isinstance(retrieved, da.Array)
    assert_allclose(
        retrieved.compute(), fitted.retrieve("m1", fitted.project("m0", x)),
        rtol=1e-12, atol=1e-12,
    )
    translated = fitted.translate("m0", "m2", dx)
    assert isinstance(translated, da.Array) and translated.shape == (N, 5)
    assert_allclose(
        translated.compute(), fitted.translate("m0", "m2", x), rtol=1e-12, atol=1e-12
    )


def test_dask_one_vector_and_unknown_row_counts(client, fitted):
    x = views(seed=5)[0]
    one = fitted.project("m0", da.from_array(x[7]))
    assert isinstance(one, da.Array) and one.shape == (3,)
    assert_allclose(one.compute(), fitted.project("m0", x[7]), rtol=1e-12, atol=1e-12)
    dx = da.from_array(x, chunks=50)
    keep = x[:, 0] > x[:, 0].mean()
    z = fitted.project("m0", dx[dx[:, 0] > x[:, 0].mean()])
    assert_allclose(z.compute(), fitted.project("m0", x[keep]), rtol=1e-12, atol=1e-12)


@dtype_params
def test_dask_project_converts_to_the_space_dtype(client, dtype):
    space, _ = trained(dict(zip(NAMES, views())), "cca", dtype)
    ints = np.arange(N * 6).reshape(N, 6) % 7
    z = space.project("m0", da.from_array(ints, chunks=100))
    assert z.dtype == dtype and z.compute().dtype == dtype
    assert_allclose(z.compute(), space.project("m0", ints), rtol=0, atol=0)


def test_dask_graph_keeps_the_weights_it_was_built_with(client):
    arrays = views()
    space, _ = trained(dict(zip(NAMES, arrays)), "cca")
    dx = da.from_array(arrays[0], chunks=60)
    pending = space.project("m0", dx)
    before = space.project("m0", arrays[0])
    space.train_projections(dict(zip(NAMES, (x[:100] for x in arrays))), solver="cca")
    after = space.project("m0", arrays[0])
    assert not np.allclose(before, after)
    assert_allclose(pending.compute(), before, rtol=0, atol=0)


def test_dask_project_errors(client, fitted):
    x = views(seed=5)[0]
    dx = da.from_array(x, chunks=50)
    with pytest.raises(InvalidParameterError, match=r"must have shape \(6,\) or \(n, 6\)"):
        fitted.project("m0", dx[:, :5])
    with pytest.raises(InvalidParameterError, match=r"got shape \(300, 6, 1\)"):
        fitted.project("m0", dx[:, :, None])
    with pytest.raises(InvalidParameterError, match="must hold real numbers"):
        fitted.project("m0", da.from_array(np.full((4, 6), "x")))
    with pytest.raises(InvalidParameterError, match="out cannot receive"):
        fitted.project("m0", dx, out=np.empty((N, 3)))
    with pytest.raises(InvalidParameterError, match="out cannot receive"):
        fitted.translate("m0", "m1", dx, out=np.empty((N, 4)))
    with pytest.raises(UnknownModelError, match="'nope' is not registered"):
        fitted.translate("m0", "nope", dx)
    bad = x.copy()
    bad[173, 4] = np.nan
    lazy = fitted.translate("m0", "m1", da.from_array(bad, chunks=50))  # not yet
    message = "features for model 'm0' contains NaN or Inf (first in row 173)"
    with pytest.raises(ValueError, match=re.escape(message)):
        lazy.compute()
