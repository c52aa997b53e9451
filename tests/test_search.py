# SPDX-License-Identifier: BSD-3-Clause
"""Cross-model search (`LatentSpace.search`, `LatentSpace.index`, and `_search`:
its exact index, blocks and scoring).

The index tests run on every backend: the exact `GalleryIndex` and FAISS's
flat index (`FaissIndex`), which must find the same items.
"""

import importlib.util
import pickle
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import latentspace
from latentspace import (
    GalleryIndex,
    InvalidParameterError,
    LatentSpace,
    SearchResult,
    UnknownModelError,
    _monitor,
)
from latentspace._search import blocks, scoring
from latentspace._search.exact_index import GalleryIndex as ExactIndex
from latentspace._model import make_model

# Score tolerance: FAISS computes in float32 whatever the space's dtype (and
# its float32 sums depend on how rows are blocked).
SAME = {"exact": 1e-12, "faiss": 1e-6}
TOL = {
    ("exact", "float64"): 1e-12,
    ("exact", "float32"): 1e-5,
    ("faiss", "float64"): 1e-5,
    ("faiss", "float32"): 1e-5,
}
BACKENDS = [
    "exact",
    pytest.param("faiss", marks=pytest.mark.skipif(
        importlib.util.find_spec("faiss") is None, reason="faiss is not installed")),
]


def _space(dtype="float64"):
    space = LatentSpace(8, dtype=dtype, seed=5)
    space.register("a", 6)
    space.register("b", 10)
    return space


def _data(n_queries=37, n_gallery=53, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_queries, 6)), rng.normal(size=(n_gallery, 10))


def _index(space, backend, gallery, **kwargs):
    return space.index("b", gallery, backend=backend, **kwargs)


def _unit(Z):
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


def _brute_force(space, queries, gallery, method, csls_k, reference=None):
    """The full score matrix, straight from the definition, in float64."""
    Q = _unit(space.project("a", queries).astype(np.float64))
    G = _unit(space.project("b", gallery).astype(np.float64))
    S = Q @ G.T
    if method == "cosine":
        return S
    R = Q if reference is None else _unit(space.project("a", reference).astype(float))
    kt, ks = min(csls_k, len(G)), min(csls_k, len(R))
    r_t = np.sort(S, axis=1)[:, ::-1][:, :kt].mean(axis=1)
    r_s = np.sort(G @ R.T, axis=1)[:, ::-1][:, :ks].mean(axis=1)
    return 2 * S - r_t[:, None] - r_s[None, :]


def _expected_top(S, k):
    order = np.lexsort((np.broadcast_to(np.arange(S.shape[1]), S.shape), -S), axis=1)
    top = order[:, :k]
    return np.take_along_axis(S, top, axis=1), top


def _assert_top(result, S, k, tol, exact_indices):
    """``result`` holds the top ``k`` of the score matrix ``S``: the right
    scores, best first, of the items it names (the very indices if
    ``exact_indices``, else items whose scores tie within ``tol``)."""
    expected_scores, expected = _expected_top(S, k)
    assert result.indices.shape == result.scores.shape == expected.shape
    np.testing.assert_allclose(result.scores, expected_scores, atol=tol, rtol=0)
    named = np.take_along_axis(S, result.indices, axis=1)
    np.testing.assert_allclose(named, expected_scores, atol=tol, rtol=0)
    assert all(len(set(row)) == k for row in result.indices.tolist())
    assert (np.diff(result.scores.astype(float), axis=1) <= tol).all()  # best first
    if exact_indices:
        np.testing.assert_array_equal(result.indices, expected)


def test_public_names_and_result_order():
    assert latentspace.GalleryIndex is ExactIndex
    assert latentspace.SearchResult is scoring.SearchResult
    assert SearchResult._fields == ("scores", "indices")
    space = _space()
    queries, gallery = _data()
    scores, indices = space.search("a", queries, "b", gallery, k=3)
    assert scores.dtype == np.float64 and indices.dtype == np.int64


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", ["cosine", "csls"])
@pytest.mark.parametrize("k", [1, 5, 53])
def test_search_matches_brute_force(dtype, method, k):
    space = _space(dtype)
    queries, gallery = _data()
    result = space.search("a", queries, "b", gallery, k=k, method=method)
    assert result.indices.dtype == np.int64 and result.scores.dtype == np.dtype(dtype)
    S = _brute_force(space, queries, gallery, method, csls_k=10)
    _assert_top(result, S, k, TOL["exact", dtype], dtype == "float64")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", ["cosine", "csls"])
@pytest.mark.parametrize("k", [1, 5, 53])
def test_index_matches_brute_force(backend, dtype, method, k):
    space = _space(dtype)
    queries, gallery = _data()
    index = _index(space, backend, gallery, references={"a": queries})
    result = index.search("a", queries, k=k, method=method)
    assert result.indices.dtype == np.int64 and result.scores.dtype == np.dtype(dtype)
    S = _brute_force(space, queries, gallery, method, csls_k=10, reference=queries)
    _assert_top(result, S, k, TOL[backend, dtype], (backend, dtype) == ("exact", "float64"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_find_the_same_items(backend):
    space = _space()
    queries, gallery = _data(200, 300)
    exact = space.index("b", gallery, references={"a": queries[:50]})
    index = _index(space, backend, gallery, references={"a": queries[:50]})
    for method in ("cosine", "csls"):
        want = exact.search("a", queries, k=10, method=method)
        got = index.search("a", queries, k=10, method=method)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5, rtol=0)


def test_k_larger_than_the_gallery_is_an_error():
    space = _space()
    queries, gallery = _data()
    with pytest.raises(InvalidParameterError, match="k=54 is more than the 53 items"):
        space.search("a", queries, "b", gallery, k=54)
    with pytest.raises(InvalidParameterError, match="k=100 is more than the 53 items"):
        space.index("b", gallery).search("a", queries[0], k=100)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["cosine", "csls"])
@pytest.mark.parametrize("csls_k", [1, 3, 10, 1000])
@pytest.mark.parametrize("batch_size", [1, 4, 37, 1000])
def test_blocks_do_not_change_the_result(backend, method, csls_k, batch_size):
    space = _space()
    queries, gallery = _data()
    reference = queries[:20]
    plain = _index(space, backend, gallery, references={"a": reference},
                   csls_k=csls_k)
    want = plain.search("a", queries, k=7, method=method)
    index = _index(space, backend, gallery, references={"a": reference},
                   csls_k=csls_k, batch_size=batch_size)
    got = index.search("a", queries, k=7, method=method)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.scores, want.scores, atol=SAME[backend], rtol=0)
    S = _brute_force(space, queries, gallery, method, csls_k, reference)
    tol = TOL[backend, "float64"]
    np.testing.assert_allclose(got.scores, _expected_top(S, 7)[0], atol=tol, rtol=0)


def test_batch_reference_blocks_do_not_change_the_result():
    space = _space()
    queries, gallery = _data()
    for method in ("cosine", "csls"):
        want = space.search("a", queries, "b", gallery, k=7, method=method)
        for batch_size in (1, 4, 37):
            got = space.search("a", queries, "b", gallery, k=7, method=method,
                               batch_size=batch_size)
            np.testing.assert_array_equal(got.indices, want.indices)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-12, rtol=0)


def test_small_blocks_by_memory_budget(monkeypatch):
    space = _space()
    queries, gallery = _data()
    reference = space.search("a", queries, "b", gallery, k=3)
    monkeypatch.setattr(scoring, "CHUNK_BYTES", 3 * 53 * 8)  # 3 rows per block
    assert scoring.chunk_rows(53, np.float64) == 3
    result = space.search("a", queries, "b", gallery, k=3)
    np.testing.assert_array_equal(result.indices, reference.indices)


@pytest.mark.parametrize("backend", BACKENDS)
def test_callback_reports_every_block(backend):
    space = _space()
    queries, gallery = _data()
    calls = []
    index = _index(space, backend, gallery)
    result = index.search(
        "a", queries, k=3, method="cosine", batch_size=10,
        callback=lambda *a: calls.append(a),
    )
    assert calls == [(10, 37), (20, 37), (30, 37), (37, 37)]
    np.testing.assert_array_equal(
        result.indices, index.search("a", queries, k=3, method="cosine").indices
    )
    with pytest.raises(ValueError, match="callback must be callable"):
        index.search("a", queries, callback=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_query_vector_and_empty_batches(backend):
    space = _space()
    queries, gallery = _data()
    index = _index(space, backend, gallery, references={"a": queries})
    for method in ("cosine", "csls"):
        scores, indices = index.search("a", queries[4], k=3, method=method)
        assert indices.shape == scores.shape == (3,)
        batch = index.search("a", queries, k=3, method=method)
        np.testing.assert_array_equal(indices, batch.indices[4])
        np.testing.assert_allclose(scores, batch.scores[4], atol=SAME[backend], rtol=0)
    empty = index.search("a", queries[:0], k=3)
    assert empty.indices.shape == empty.scores.shape == (0, 3)
    assert empty.scores.dtype == np.float64 and empty.indices.dtype == np.int64


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lower_index(backend):
    space = _space()
    queries, gallery = _data()
    gallery = np.repeat(gallery[:5], 4, axis=0)  # every item four times
    index = _index(space, backend, gallery, references={"a": queries})
    for method in ("cosine", "csls"):
        scores, indices = index.search("a", queries, k=4, method=method)
        assert (np.diff(indices, axis=1) > 0).all()  # the four copies, in order
        assert (indices // 4 == indices[:, :1] // 4).all()
        assert np.ptp(scores, axis=1).max() < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_latents_score_zero(backend):
    space = _space()
    queries, gallery = _data()
    gallery[3] = 0.0
    index = _index(space, backend, gallery)
    scores, indices = index.search("a", queries, k=53, method="cosine")
    assert np.isfinite(scores).all()
    assert (scores[indices == 3] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_csls_reduces_hubness(backend):
    # Model a sees 500 items in 48 dims with a decaying spectrum, model b
    # the same items plus isotropic noise; both project by the identity.
    # Under cosine a few gallery items ("hubs") are the top hit of many
    # queries; CSLS spreads the hits and finds more true pairs.
    d, n = 48, 500
    space = LatentSpace(d, seed=1)
    space.register("a", d)
    space.register("b", d)
    identity = {name: make_model(np.eye(d), np.eye(d)) for name in ("a", "b")}
    space._snapshot = space._snapshot._replace(models=identity)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) / np.sqrt(np.arange(1, d + 1))
    Y = X + 0.6 * rng.normal(size=X.shape)
    index = space.index("b", Y, backend=backend, references={"a": X})
    cosine = index.search("a", X, k=1, method="cosine").indices[:, 0]
    csls = index.search("a", X, k=1, method="csls").indices[:, 0]
    # measured: the biggest hub is the top hit of 13 queries (cosine), 5 (CSLS);
    # top-1 accuracy 0.34 (cosine), 0.46 (CSLS)
    assert np.bincount(csls).max() * 2 <= np.bincount(cosine).max()
    items = np.arange(n)
    assert np.mean(csls == items) > np.mean(cosine == items) + 0.05


# --------------------------------------------------------------------- index


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_is_reusable_and_equals_search(backend):
    space = _space()
    queries, gallery = _data()
    index = _index(space, backend, gallery, references={"a": queries})
    assert len(index) == 53 and index.target == "b" and index.backend == backend
    assert isinstance(index, GalleryIndex)
    for method in ("cosine", "csls"):
        for _ in range(2):
            got = index.search("a", queries, k=5, method=method)
            want = space.search("a", queries, "b", gallery, k=5, method=method)
            np.testing.assert_array_equal(got.indices, want.indices)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-5, rtol=0)
    # The same model on both sides: a gallery finds itself.
    found = index.search("b", gallery, k=1, method="cosine")
    np.testing.assert_array_equal(found.indices[:, 0], np.arange(53))


def test_exact_index_latents():
    space = _space()
    index = space.index("b", _data()[1])
    assert not index.latents.flags.writeable
    np.testing.assert_allclose(np.linalg.norm(index.latents, axis=1), 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_makes_single_queries_match_the_batch(backend):
    space = _space()
    queries, gallery = _data()
    batch = space.search("a", queries, "b", gallery, k=5, method="csls")
    index = _index(space, backend, gallery, references={"a": queries})
    assert index.references == ("a",)
    for i in (0, 11, 36):
        single = index.search("a", queries[i], k=5)
        np.testing.assert_array_equal(single.indices, batch.indices[i])
        np.testing.assert_allclose(single.scores, batch.scores[i], atol=1e-5)
    # With a reference, results do not depend on the other queries.
    part = index.search("a", queries[:3], k=5)
    np.testing.assert_array_equal(part.indices, batch.indices[:3])
    S = _brute_force(space, queries[:3], gallery, "csls", 10, reference=queries)
    np.testing.assert_allclose(part.scores, _expected_top(S, 5)[0], atol=1e-5)


def test_without_a_reference_one_exact_query_ranks_by_cosine():
    space = _space()
    queries, gallery = _data()
    plain = space.index("b", gallery)
    np.testing.assert_array_equal(
        plain.search("a", queries[0], k=5).indices,
        plain.search("a", queries[0], k=5, method="cosine").indices,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_pickles(backend):
    space = _space()
    queries, gallery = _data()
    index = _index(space, backend, gallery, references={"a": queries[:20]})
    clone = pickle.loads(pickle.dumps(index))
    assert clone.references == ("a",) and len(clone) == len(index)
    assert type(clone) is type(index)
    for method in ("cosine", "csls"):
        got = clone.search("a", queries, k=4, method=method)
        want = index.search("a", queries, k=4, method=method)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.scores, want.scores)


def test_exact_index_pickles_with_its_own_references():
    space = _space()
    queries, gallery = _data()
    index = space.index("b", gallery, references={"a": queries[:20]})
    clone = pickle.loads(pickle.dumps(index))
    assert not clone.latents.flags.writeable
    clone.add_reference("b", gallery)
    assert index.references == ("a",) and clone.references == ("a", "b")


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_keeps_the_weights_it_was_built_with(backend):
    space = _space()
    queries, gallery = _data()
    index = _index(space, backend, gallery)
    before = index.search("a", queries, k=5, method="cosine")
    rng = np.random.default_rng(3)
    space.train_projections(
        {"a": rng.normal(size=(20, 6)), "b": rng.normal(size=(20, 10))},
        solver="sgd", n_epochs=3,
    )
    after = index.search("a", queries, k=5, method="cosine")
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_array_equal(after.scores, before.scores)
    fresh = _index(space, backend, gallery).search("a", queries, k=5, method="cosine")
    assert not np.array_equal(fresh.scores, before.scores)


@pytest.mark.parametrize("backend", BACKENDS)
def test_searches_from_threads_match_a_single_thread(backend):
    space = _space()
    queries, gallery = _data(200, 300)
    index = _index(space, backend, gallery, references={"a": queries[:50]})
    calls = [
        (method, rows, k)
        for method in ("cosine", "csls")
        for rows in (slice(0, 200), slice(3, 4), slice(50, 120))
        for k in (1, 10)
    ] * 3
    expected = [
        index.search("a", queries[rows], k=k, method=method)
        for method, rows, k in calls
    ]
    oneoff = space.search("a", queries, "b", gallery, k=10)

    def run(call):
        method, rows, k = call
        return index.search("a", queries[rows], k=k, method=method)

    def run_oneoff(_):
        return space.search("a", queries, "b", gallery, k=10)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, calls))
        oneoffs = list(pool.map(run_oneoff, range(6)))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.scores, want.scores)
    for got in oneoffs:
        np.testing.assert_array_equal(got.indices, oneoff.indices)
        np.testing.assert_array_equal(got.scores, oneoff.scores)


# ------------------------------------------- memory-mapped and Dask galleries


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_mapped_gallery_is_read_in_blocks(backend, tmp_path, monkeypatch):
    space = _space("float32")
    queries, gallery = _data(20, 203)
    np.save(tmp_path / "gallery.npy", gallery.astype(np.float32))
    mapped = np.load(tmp_path / "gallery.npy", mmap_mode="r")
    want = _index(space, backend, gallery, references={"a": queries})
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 50 * 10 * 4)  # 50 rows a block
    calls = []
    index = _index(space, backend, mapped, references={"a": queries},
                   callback=lambda *a: calls.append(a))
    assert calls == [(50, 203), (100, 203), (150, 203), (200, 203), (203, 203)]
    for method in ("cosine", "csls"):
        got = index.search("a", queries, k=5, method=method)
        expected = want.search("a", queries, k=5, method=method)
        np.testing.assert_array_equal(got.indices, expected.indices)
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-6, rtol=0)
    if backend == "exact":
        assert isinstance(index.latents, np.ndarray)
        assert not isinstance(index.latents, np.memmap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dask_gallery_and_queries(backend):
    da = pytest.importorskip("dask.array")
    space = _space()
    queries, gallery = _data()
    lazy_gallery = da.from_array(gallery, chunks=(10, 5))
    lazy_queries = da.from_array(queries, chunks=(8, 6))
    want = _index(space, backend, gallery, references={"a": queries})
    index = _index(space, backend, lazy_gallery, references={"a": lazy_queries})
    for method in ("cosine", "csls"):
        got = index.search("a", lazy_queries, k=5, method=method)
        expected = want.search("a", queries, k=5, method=method)
        np.testing.assert_array_equal(got.indices, expected.indices)
        np.testing.assert_allclose(got.scores, expected.scores, atol=SAME[backend],
                                   rtol=0)
    oneoff = space.search("a", lazy_queries, "b", lazy_gallery, k=5)
    expected = space.search("a", queries, "b", gallery, k=5)
    np.testing.assert_array_equal(oneoff.indices, expected.indices)


def test_bad_rows_in_a_block_name_the_row(monkeypatch):
    space = _space()
    queries, gallery = _data()
    gallery[41, 2] = np.inf
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 10 * 10 * 8)  # 10 rows a block
    with pytest.raises(ValueError, match=r"gallery for model 'b' contains NaN or "
                       r"Inf \(first in row 41\)"):
        space.index("b", gallery)


def test_dask_gallery_errors():
    da = pytest.importorskip("dask.array")
    space = _space()
    queries, gallery = _data()
    bad = gallery.copy()
    bad[17, 0] = np.nan
    with pytest.raises(ValueError, match=r"first in row 17\)"):
        space.index("b", da.from_array(bad, chunks=(10, 10)))
    with pytest.raises(ValueError, match=r"must have shape \(10,\) or \(n, 10\)"):
        space.index("b", da.from_array(gallery[:, :7]))


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="dot"), InvalidParameterError, "method must be one of"),
        (dict(k=0), InvalidParameterError, "k must be >= 1"),
        (dict(k=2.5), InvalidParameterError, "k must be an integer"),
        (dict(csls_k=0), InvalidParameterError, "csls_k must be >= 1"),
        (dict(batch_size=0), InvalidParameterError, "batch_size must be >= 1"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    space = _space()
    queries, gallery = _data()
    with pytest.raises(error, match=match):
        space.search("a", queries, "b", gallery, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(backend="annoy"), "backend must be one of 'exact', 'faiss'"),
        (dict(kind="hnsw"), "kind='hnsw' needs an approximate backend"),
        (dict(options={"m": 8}), "the exact backend takes no options"),
    ],
)
def test_bad_index_parameters(kwargs, match):
    space = _space()
    with pytest.raises(InvalidParameterError, match=match):
        space.index("b", _data()[1], **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_name_the_problem(backend):
    space = _space()
    queries, gallery = _data()
    with pytest.raises(UnknownModelError, match="'c' is not registered"):
        space.search("c", queries, "b", gallery)
    with pytest.raises(UnknownModelError, match="'c' is not registered"):
        space.index("c", gallery, backend=backend)
    with pytest.raises(ValueError, match=r"queries for model 'a' must have shape"):
        space.search("a", gallery, "b", gallery)
    bad = gallery.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"gallery for model 'b' contains NaN or "
                       r"Inf \(first in row 7\)"):
        space.index("b", bad, backend=backend)
    with pytest.raises(ValueError, match="one vector"):
        space.index("b", gallery[0], backend=backend)
    with pytest.raises(ValueError, match="no items"):
        space.index("b", gallery[:0], backend=backend)
    with pytest.raises(TypeError):
        space.search("a", [["x"] * 6], "b", gallery)
    index = _index(space, backend, gallery)
    with pytest.raises(ValueError, match=r"queries for model 'a' must have shape"):
        index.search("a", gallery, method="cosine")
    with pytest.raises(ValueError, match="reference"):
        space.index("b", gallery, backend=backend, references={"a": queries[:0]})


def test_index_progress_bar(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    space = _space()
    gallery = _data()[1]
    calls = []
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 20 * 10 * 8)  # 20 rows a block
    space.index("b", gallery, progress=True, callback=lambda *a: calls.append(a))
    assert calls == [(20, 53), (40, 53), (53, 53)]  # the callback still runs
    assert "53/53" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match="tqdm is not installed"):
        space.index("b", gallery, progress=True)


def test_progress_rate_counts_the_work_before_the_first_block(capsys):
    """A job done in one block (1,000 queries, one FAISS call): the bar's
    rate is the items over the time since the work began, not since the bar
    appeared at the end of that block (which read 35 million queries/s)."""
    pytest.importorskip("tqdm")
    draw = _monitor.bar_callback("queries")
    time.sleep(0.2)  # the one block's work
    draw(1000, 1000)
    rates = re.findall(r"([\d.]+) queries/s", capsys.readouterr().err)
    assert rates and max(map(float, rates)) <= 1000 / 0.2
