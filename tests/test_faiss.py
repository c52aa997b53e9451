# SPDX-License-Identifier: BSD-3-Clause
"""What only a FAISS index does: approximate kinds, their options, padding.

The search tests of tests/test_search.py also run on FAISS's flat index.
"""

import sys

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from latentspace import FaissIndex, InvalidParameterError, LatentSpace  # noqa: E402


def _space(dtype="float64"):
    space = LatentSpace(8, dtype=dtype, seed=5)
    space.register("a", 6)
    space.register("b", 10)
    return space


def _data(n_queries=60, n_gallery=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_queries, 6)), rng.normal(size=(n_gallery, 10))


@pytest.mark.parametrize("method", ["cosine", "csls"])
def test_ivf_probing_every_cell_is_exact(method):
    space = _space()
    queries, gallery = _data()
    exact = space.index("b", gallery, references={"a": queries})
    ivf = space.index("b", gallery, backend="faiss", kind="ivf",
                      options={"nlist": 8}, references={"a": queries})
    assert ivf.options == {"nlist": 8, "nprobe": 64, "train_size": 320, "seed": 0}
    want = exact.search("a", queries, k=10, method=method)
    got = ivf.search("a", queries, k=10, method=method, nprobe=8)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["cosine", "csls"])
def test_hnsw_with_a_wide_search_finds_the_exact_hits(method):
    space = _space()
    queries, gallery = _data()
    exact = space.index("b", gallery, references={"a": queries})
    hnsw = space.index("b", gallery, backend="faiss", kind="hnsw",
                       options={"m": 16}, references={"a": queries})
    assert hnsw.options == {"m": 16, "ef_construction": 80, "ef_search": 128}
    want = exact.search("a", queries, k=10, method=method)
    got = hnsw.search("a", queries, k=10, method=method, ef_search=400)
    np.testing.assert_array_equal(got.indices, want.indices)
    # A narrow search misses some (measured: recall@10 0.8-0.9 at ef_search=10).
    narrow = hnsw.search("a", queries, k=10, method=method, ef_search=10)
    recall = np.mean([len(set(a) & set(b)) / 10
                      for a, b in zip(narrow.indices, want.indices)])
    assert 0.5 < recall <= 1


def test_missing_hits_are_padded_at_the_end():
    space = _space()
    queries, gallery = _data()
    ivf = space.index("b", gallery, backend="faiss", kind="ivf",
                      options={"nlist": 10, "nprobe": 1}, references={"a": queries})
    for method in ("cosine", "csls"):
        scores, indices = ivf.search("a", queries, k=400, method=method)
        missing = indices == -1
        assert missing.any(axis=1).all()  # one cell of 10 holds fewer than 400
        assert (scores[missing] == -np.inf).all()
        assert np.isfinite(scores[~missing]).all()
        for row, lost in zip(indices, missing):
            found = row[~lost]
            assert len(set(found)) == len(found) and (found >= 0).all()
            assert not lost[: len(found)].any()  # the missing ones come last
        for row, lost in zip(scores, missing):
            assert (np.diff(row[~lost]) <= 1e-6).all()  # best first


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_scores_in_the_space_dtype(dtype):
    space = _space(dtype)
    queries, gallery = _data()
    index = space.index("b", gallery, backend="faiss")
    scores, _ = index.search("a", queries, k=3, method="cosine")
    assert scores.dtype == np.dtype(dtype)


def test_memory_mapped_and_dask_galleries_train_on_the_same_sample(tmp_path):
    da = pytest.importorskip("dask.array")
    space = _space("float32")
    queries, gallery = _data()
    gallery = gallery.astype(np.float32)
    np.save(tmp_path / "g.npy", gallery)
    options = {"nlist": 8, "train_size": 320, "seed": 3}
    indexes = [
        space.index("b", g, backend="faiss", kind="ivf", options=options)
        for g in (gallery, np.load(tmp_path / "g.npy", mmap_mode="r"),
                  da.from_array(gallery, chunks=(64, 10)))
    ]
    results = [i.search("a", queries, k=5, method="cosine", nprobe=2)
               for i in indexes]
    for result in results[1:]:
        np.testing.assert_array_equal(result.indices, results[0].indices)
        np.testing.assert_allclose(result.scores, results[0].scores, atol=1e-6)


def test_one_query_leaves_the_thread_count_as_it_was():
    space = _space()
    queries, gallery = _data()
    index = space.index("b", gallery, backend="faiss")
    before = faiss.omp_get_max_threads()
    index.search("a", queries[0], k=3, method="cosine")
    index.search("a", queries, k=3, method="cosine", batch_size=7)
    assert faiss.omp_get_max_threads() == before


# -------------------------------------------------------------------- errors


def test_csls_needs_a_reference_given_at_build():
    space = _space()
    queries, gallery = _data()
    index = space.index("b", gallery, backend="faiss", references={"b": gallery})
    assert index.references == ("b",)
    with pytest.raises(InvalidParameterError, match="needs a reference sample of 'a'"):
        index.search("a", queries)
    index.search("b", gallery[:3])  # CSLS from b: its reference is there
    with pytest.raises(InvalidParameterError, match="when it is built"):
        index.add_reference("a", queries)


@pytest.mark.parametrize(
    "kind, options, match",
    [
        ("annoy", None, "kind must be one of 'flat', 'hnsw', 'ivf'"),
        ("flat", {"m": 8}, r"unknown option\(s\) 'm' for kind='flat' \(its options: "
         "none\\)"),
        ("hnsw", {"nlist": 8}, r"its options: m, ef_construction, ef_search"),
        ("hnsw", {"m": 0}, "m must be >= 1"),
        ("hnsw", {"ef_search": 2.5}, "ef_search must be an integer"),
        ("ivf", {"nlist": 401}, "nlist=401 is more cells than the 400 items"),
        ("ivf", {"nlist": 8, "train_size": 4}, "train_size must be from nlist"),
        ("ivf", {"seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_options(kind, options, match):
    space = _space()
    with pytest.raises(InvalidParameterError, match=match):
        space.index("b", _data()[1], backend="faiss", kind=kind, options=options)


def test_search_options_belong_to_their_kind():
    space = _space()
    queries, gallery = _data()
    flat = space.index("b", gallery, backend="faiss")
    with pytest.raises(InvalidParameterError, match="ef_search is an option of "
                       "kind='hnsw'; this index is kind='flat'"):
        flat.search("a", queries, method="cosine", ef_search=10)
    hnsw = space.index("b", gallery, backend="faiss", kind="hnsw")
    with pytest.raises(InvalidParameterError, match="nprobe is an option of"):
        hnsw.search("a", queries, method="cosine", nprobe=2)
    with pytest.raises(InvalidParameterError, match="ef_search must be >= 1"):
        hnsw.search("a", queries, method="cosine", ef_search=0)


def test_without_faiss_the_error_says_how_to_install_it(monkeypatch):
    space = _space()
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r'pip install "latentspace\[faiss\]"'):
        space.index("b", _data()[1], backend="faiss")
    assert issubclass(FaissIndex, object)  # the class imports without FAISS
