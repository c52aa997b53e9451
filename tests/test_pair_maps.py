"""Pair maps: searches between two models of a joint space of three or more."""

import json
import pickle

import numpy as np
import pytest

from latentspace import GalleryIndex, LatentSpace, SpaceFileError, metrics

WIDTHS = {"a": 5, "b": 6, "c": 7}


def _data(n=300, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n, 4))
    return {name: hidden @ rng.standard_normal((4, d)) + 3
            + noise * rng.standard_normal((n, d)) for name, d in WIDTHS.items()}


def _joint(dim=6, names=("a", "b", "c"), dtype="float64"):
    space = LatentSpace(dim, dtype=dtype, seed=0)
    for name in names:
        space.register(name, WIDTHS[name])
    data = _data()
    space.train_projections({n: data[n] for n in names})
    return space


def _unit(Z):
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


def test_three_models_have_a_map_per_pair_and_two_have_none():
    maps = _joint()._snapshot.valid_pair_maps()
    assert sorted(maps) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert _joint(dim=5, names=("a", "b"))._snapshot.valid_pair_maps() == {}


def test_search_compares_latents_through_the_pair_map():
    """Against a plain computation: unit latents times each side's map,
    unit rows, cosine."""
    space = _joint()
    test = _data(60, seed=1)
    hits = space.search("a", test["a"], "c", test["c"], k=5, method="cosine")
    Ma, Mc = space._snapshot.valid_pair_maps()["a", "c"]
    Q = _unit(_unit(space.project("a", test["a"])) @ Ma)
    G = _unit(_unit(space.project("c", test["c"])) @ Mc)
    S = Q @ G.T
    expected = np.argsort(-S, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(hits.indices, expected)
    np.testing.assert_allclose(hits.scores, np.take_along_axis(S, expected, 1),
                               atol=1e-12)
    # The map of (c, a) is the same pair, sides swapped.
    back = space.search("c", test["c"], "a", test["a"], k=5, method="cosine")
    S = G @ Q.T
    np.testing.assert_array_equal(back.indices,
                                  np.argsort(-S, axis=1, kind="stable")[:, :5])


def test_with_latents_as_wide_as_the_pair_the_map_gives_the_pairs_own_space():
    """At k >= both widths, comparing through the map is comparing in the
    pair's own two-model space (cosine scores equal)."""
    space = _joint(dim=6)
    own = _joint(dim=5, names=("a", "b"))
    test = _data(40, seed=2)
    joint = space.search("a", test["a"], "b", test["b"], k=40, method="cosine")
    alone = own.search("a", test["a"], "b", test["b"], k=40, method="cosine")
    np.testing.assert_allclose(joint.scores, alone.scores, atol=1e-8)


def test_evaluate_and_ranks_use_the_maps_too():
    space = _joint()
    test = _data(80, seed=3)
    ranks = metrics.retrieval_ranks(space, "b", test["b"], "c", test["c"],
                                    method="cosine")
    hits = space.search("b", test["b"], "c", test["c"], k=1, method="cosine")
    np.testing.assert_array_equal(ranks == 1, hits.indices[:, 0] == np.arange(80))
    scores = space.evaluate(test, k=1, method="cosine")
    assert scores.retrieval["b", "c"]["top1"] == np.mean(ranks == 1)


def test_an_index_applies_the_map_of_each_source_and_keeps_it():
    space = _joint()
    test = _data(50, seed=4)
    index = space.index("c", test["c"], references={"a": test["a"]})
    want = space.index("c", test["c"], references={"a": test["a"]})
    for source in ("a", "b"):
        direct = space.search(source, test[source], "c", test["c"], k=3,
                              method="cosine")
        got = index.search(source, test[source], k=3, method="cosine")
        np.testing.assert_array_equal(got.indices, direct.indices)
    copy = pickle.loads(pickle.dumps(index))
    for source in ("a", "b"):
        np.testing.assert_array_equal(copy.search(source, test[source], k=3).indices,
                                      want.search(source, test[source], k=3).indices)


def test_an_index_file_keeps_the_maps(tmp_path):
    space = _joint()
    test = _data(50, seed=5)
    index = space.index("c", test["c"], references={"b": test["b"]})
    index.save(tmp_path / "x.index")
    loaded = GalleryIndex.load(tmp_path / "x.index")
    for source in ("a", "b"):
        a = loaded.search(source, test[source], k=3)
        b = index.search(source, test[source], k=3)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_a_changed_model_loses_its_maps():
    space = _joint()
    space.register("b", WIDTHS["b"], replace=True)
    assert sorted(space._snapshot.valid_pair_maps()) == [("a", "c")]
    space = _joint()
    data = _data()
    space.train_projections({"a": data["a"], "b": data["b"]}, solver="sgd",
                            n_epochs=1, learning_rate=1e-4)
    assert space._snapshot.valid_pair_maps() == {}  # every pair has a or b
    # A new joint training brings them back.
    space.train_projections(data)
    assert len(space._snapshot.valid_pair_maps()) == 3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_save_load_and_pickle_keep_the_maps(tmp_path, dtype):
    space = _joint(dtype=dtype)
    test = _data(30, seed=6)
    space.save(tmp_path / "s.npz")
    for other in (LatentSpace.load(tmp_path / "s.npz"), pickle.loads(pickle.dumps(space))):
        maps = other._snapshot.valid_pair_maps()
        assert sorted(maps) == sorted(space._snapshot.valid_pair_maps())
        for pair, (Ma, Mb) in space._snapshot.valid_pair_maps().items():
            assert maps[pair][0].dtype == np.dtype(dtype)
            assert maps[pair][0].tobytes() == Ma.tobytes()
            assert maps[pair][1].tobytes() == Mb.tobytes()
        a = other.search("a", test["a"], "b", test["b"], k=3)
        b = space.search("a", test["a"], "b", test["b"], k=3)
        np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("entry", [
    "not a list",
    [{"a": "a", "b": "a", "width": 2}],
    [{"a": "a", "b": "zz", "width": 2}],
    [{"a": ["a"], "b": "b", "width": 2}],
    [{"a": "a", "b": "b", "width": 99}],
    [{"a": "a", "b": "b", "width": 0}],
    [{"a": "a", "b": "b", "width": 2, "extra": 1}],
    [{"a": "a", "b": "b", "width": 2}, {"a": "b", "b": "a", "width": 2}],
])
def test_crafted_pair_map_headers_are_refused(tmp_path, entry):
    from latentspace._files import space_file

    space = _joint()
    space.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays.pop("header").tobytes())
    header["pair_maps"] = entry
    names = list(space_file._expected_arrays({**header, "pair_maps": []}))
    header["checksum"]["digest"] = space_file._checksum(header, arrays, names)
    raw = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "crafted.npz", header=raw, **arrays)
    with pytest.raises(SpaceFileError, match="pair.map"):
        LatentSpace.load(tmp_path / "crafted.npz")
