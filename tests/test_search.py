# SPDX-License-Identifier: BSD-3-Clause
"""Cross-model search (`LatentSpace.search`, `LatentSpace.index`, `_search`)."""

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from latentspace import InvalidParameterError, LatentSpace, UnknownModelError, _search
from latentspace._space import _make_model

TOL = {"float64": 1e-12, "float32": 1e-5}


def _space(dtype="float64"):
    space = LatentSpace(8, dtype=dtype, seed=5)
    space.register("a", 6)
    space.register("b", 10)
    return space


def _data(n_queries=37, n_gallery=53, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_queries, 6)), rng.normal(size=(n_gallery, 10))


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
    return top, np.take_along_axis(S, top, axis=1)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", ["cosine", "csls"])
@pytest.mark.parametrize("k", [1, 5, 53, 100])
def test_search_matches_brute_force(dtype, method, k):
    space = _space(dtype)
    queries, gallery = _data()
    indices, scores = space.search("a", queries, "b", gallery, k=k, method=method)
    S = _brute_force(space, queries, gallery, method, csls_k=10)
    expected, expected_scores = _expected_top(S, min(k, 53))
    assert indices.shape == scores.shape == (37, min(k, 53))
    assert indices.dtype == np.int64 and scores.dtype == np.dtype(dtype)
    if dtype == "float64":
        np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, atol=TOL[dtype], rtol=0)
    assert (np.diff(scores.astype(float), axis=1) <= TOL[dtype]).all()  # best first


@pytest.mark.parametrize("method", ["cosine", "csls"])
@pytest.mark.parametrize("csls_k", [1, 3, 10, 1000])
@pytest.mark.parametrize("batch_size", [1, 4, 37, 1000])
def test_blocks_do_not_change_the_result(method, csls_k, batch_size):
    space = _space()
    queries, gallery = _data()
    reference = space.search(
        "a", queries, "b", gallery, k=7, method=method, csls_k=csls_k
    )
    result = space.search(
        "a",
        queries,
        "b",
        gallery,
        k=7,
        method=method,
        csls_k=csls_k,
        batch_size=batch_size,
    )
    np.testing.assert_array_equal(result.indices, reference.indices)
    np.testing.assert_allclose(result.scores, reference.scores, atol=1e-12, rtol=0)
    S = _brute_force(space, queries, gallery, method, csls_k)
    np.testing.assert_allclose(
        result.scores, _expected_top(S, 7)[1], atol=1e-12, rtol=0
    )


def test_small_blocks_by_memory_budget(monkeypatch):
    space = _space()
    queries, gallery = _data()
    reference = space.search("a", queries, "b", gallery, k=3)
    monkeypatch.setattr(_search, "CHUNK_BYTES", 3 * 53 * 8)  # 3 rows per block
    assert _search.chunk_rows(53, np.float64) == 3
    result = space.search("a", queries, "b", gallery, k=3)
    np.testing.assert_array_equal(result.indices, reference.indices)


def test_callback_reports_every_block():
    space = _space()
    queries, gallery = _data()
    calls = []
    index = space.index("b", gallery)
    result = index.search(
        "a", queries, k=3, batch_size=10, callback=lambda *a: calls.append(a)
    )
    assert calls == [(10, 37), (20, 37), (30, 37), (37, 37)]
    np.testing.assert_array_equal(result.indices, index.search("a", queries, k=3)[0])
    with pytest.raises(ValueError, match="callback must be callable"):
        index.search("a", queries, callback=3)


def test_one_query_vector_and_empty_batches():
    space = _space()
    queries, gallery = _data()
    indices, scores = space.search("a", queries[4], "b", gallery, k=3, method="cosine")
    assert indices.shape == scores.shape == (3,)
    batch = space.search("a", queries, "b", gallery, k=3, method="cosine")
    np.testing.assert_array_equal(indices, batch.indices[4])
    empty = space.search("a", queries[:0], "b", gallery, k=3)
    assert empty.indices.shape == empty.scores.shape == (0, 3)


def test_ties_go_to_the_lower_index():
    space = _space()
    queries, gallery = _data()
    gallery = np.repeat(gallery[:5], 4, axis=0)  # every item four times
    for method in ("cosine", "csls"):
        indices, scores = space.search("a", queries, "b", gallery, k=4, method=method)
        assert (np.diff(indices, axis=1) > 0).all()  # the four copies, in order
        assert (indices // 4 == indices[:, :1] // 4).all()
        assert np.ptp(scores, axis=1).max() < 1e-12


def test_zero_latents_score_zero():
    space = _space()
    queries, gallery = _data()
    gallery[3] = 0.0
    indices, scores = space.search("a", queries, "b", gallery, k=53, method="cosine")
    assert np.isfinite(scores).all()
    assert (scores[indices == 3] == 0).all()


def test_csls_reduces_hubness():
    # Model a sees 500 items in 48 dims with a decaying spectrum, model b
    # the same items plus isotropic noise; both project by the identity.
    # Under cosine a few gallery items ("hubs") are the top hit of many
    # queries; CSLS spreads the hits and finds more true pairs.
    d, n = 48, 500
    space = LatentSpace(d, seed=1)
    space.register("a", d)
    space.register("b", d)
    identity = {name: _make_model(np.eye(d), np.eye(d)) for name in ("a", "b")}
    space._snapshot = space._snapshot._replace(models=identity)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) / np.sqrt(np.arange(1, d + 1))
    Y = X + 0.6 * rng.normal(size=X.shape)
    cosine = space.search("a", X, "b", Y, k=1, method="cosine").indices[:, 0]
    csls = space.search("a", X, "b", Y, k=1, method="csls").indices[:, 0]
    # measured: the biggest hub is the top hit of 13 queries (cosine), 5 (CSLS);
    # top-1 accuracy 0.34 (cosine), 0.46 (CSLS)
    assert np.bincount(csls).max() * 2 <= np.bincount(cosine).max()
    items = np.arange(n)
    assert np.mean(csls == items) > np.mean(cosine == items) + 0.05


# --------------------------------------------------------------------- index


def test_index_is_reusable_and_equals_search():
    space = _space()
    queries, gallery = _data()
    index = space.index("b", gallery)
    assert len(index) == 53 and index.target == "b"
    assert not index.latents.flags.writeable
    np.testing.assert_allclose(np.linalg.norm(index.latents, axis=1), 1)
    for method in ("cosine", "csls"):
        for _ in range(2):
            got = index.search("a", queries, k=5, method=method)
            want = space.search("a", queries, "b", gallery, k=5, method=method)
            np.testing.assert_array_equal(got.indices, want.indices)
            np.testing.assert_array_equal(got.scores, want.scores)
    # The same model on both sides: a gallery finds itself.
    found = index.search("b", gallery, k=1, method="cosine")
    np.testing.assert_array_equal(found.indices[:, 0], np.arange(53))


def test_reference_makes_single_queries_match_the_batch():
    space = _space()
    queries, gallery = _data()
    batch = space.search("a", queries, "b", gallery, k=5, method="csls")
    index = space.index("b", gallery, references={"a": queries})
    assert index.references == ("a",)
    for i in (0, 11, 36):
        single = index.search("a", queries[i], k=5)
        np.testing.assert_array_equal(single.indices, batch.indices[i])
        np.testing.assert_allclose(single.scores, batch.scores[i], atol=1e-12)
    # With a reference, results do not depend on the other queries.
    part = index.search("a", queries[:3], k=5)
    np.testing.assert_array_equal(part.indices, batch.indices[:3])
    S = _brute_force(space, queries[:3], gallery, "csls", 10, reference=queries)
    np.testing.assert_allclose(part.scores, _expected_top(S, 5)[1], atol=1e-12)
    # Without one, a single query falls back to cosine ranking.
    plain = space.index("b", gallery)
    np.testing.assert_array_equal(
        plain.search("a", queries[0], k=5).indices,
        plain.search("a", queries[0], k=5, method="cosine").indices,
    )


def test_index_pickles():
    space = _space()
    queries, gallery = _data()
    index = space.index("b", gallery, references={"a": queries[:20]})
    clone = pickle.loads(pickle.dumps(index))
    assert clone.references == ("a",) and len(clone) == len(index)
    assert not clone.latents.flags.writeable
    for method in ("cosine", "csls"):
        got = clone.search("a", queries, k=4, method=method)
        want = index.search("a", queries, k=4, method=method)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.scores, want.scores)
    clone.add_reference("b", gallery)
    assert index.references == ("a",)


def test_index_keeps_the_weights_it_was_built_with():
    space = _space()
    queries, gallery = _data()
    index = space.index("b", gallery)
    before = index.search("a", queries, k=5)
    rng = np.random.default_rng(3)
    space.train_projections(
        {"a": rng.normal(size=(20, 6)), "b": rng.normal(size=(20, 10))},
        solver="sgd", n_epochs=3,
    )
    after = index.search("a", queries, k=5)
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_array_equal(after.scores, before.scores)
    fresh = space.index("b", gallery).search("a", queries, k=5)
    assert not np.array_equal(fresh.scores, before.scores)


def test_searches_from_threads_match_a_single_thread():
    space = _space()
    queries, gallery = _data(200, 300)
    index = space.index("b", gallery, references={"a": queries[:50]})
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


def test_bad_inputs_name_the_problem():
    space = _space()
    queries, gallery = _data()
    with pytest.raises(UnknownModelError, match="'c' is not registered"):
        space.search("c", queries, "b", gallery)
    with pytest.raises(UnknownModelError, match="'c' is not registered"):
        space.index("c", gallery)
    with pytest.raises(ValueError, match=r"queries for model 'a' must have shape"):
        space.search("a", gallery, "b", gallery)
    bad = gallery.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="row 7 of the gallery contains NaN"):
        space.search("a", queries, "b", bad)
    with pytest.raises(ValueError, match="one vector"):
        space.index("b", gallery[0])
    with pytest.raises(ValueError, match="no items"):
        space.index("b", gallery[:0])
    with pytest.raises(TypeError):
        space.search("a", [["x"] * 6], "b", gallery)
    index = space.index("b", gallery)
    with pytest.raises(ValueError, match="reference"):
        index.add_reference("a", queries[:0])
