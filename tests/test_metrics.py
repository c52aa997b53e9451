# SPDX-License-Identifier: BSD-3-Clause
"""Retrieval and reconstruction scores (`latentspace.metrics`, `space.evaluate`)."""

import json

import numpy as np
import pytest

from latentspace import InvalidParameterError, LatentSpace, UnknownModelError, metrics
from latentspace._model import make_model


def _space_and_data(n=60, seed=0, dtype="float64"):
    """Three models that see the same items through noisy linear maps, trained."""
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, 5))
    widths = {"a": 6, "b": 9, "c": 4}
    data = {
        name: items @ rng.normal(size=(5, d)) + 0.05 * rng.normal(size=(n, d))
        for name, d in widths.items()
    }
    space = LatentSpace(5, dtype=dtype, seed=seed)
    for name, d in widths.items():
        space.register(name, d)
    scale = {name: 1 / np.sqrt((X**2).sum(1).mean()) for name, X in data.items()}
    data = {name: X * scale[name] for name, X in data.items()}
    # measured: mean top-1 0.93 over the pairs (chance 1/60)
    space.train_projections(data, solver="sgd", n_epochs=100, learning_rate=0.05,
                            alignment_weight=5)
    return space, data


def _ranks_by_definition(space, a, b, data, method, csls_k=10):
    """Position of the pair in a full stable sort of the score matrix."""

    def unit(Z):
        return Z / np.linalg.norm(Z, axis=1, keepdims=True)

    Q, G = unit(space.project(a, data[a])), unit(space.project(b, data[b]))
    S = Q @ G.T
    if method == "csls":
        K = min(csls_k, len(G))
        r_t = np.sort(S, axis=1)[:, -K:].mean(axis=1)
        r_s = np.sort(S.T, axis=1)[:, -K:].mean(axis=1)
        S = 2 * S - r_s[None, :]  # r_t does not change the ranking
        del r_t
    order = np.argsort(-S, axis=1, kind="stable")
    return 1 + np.argmax(order == np.arange(len(S))[:, None], axis=1)


@pytest.mark.parametrize("method", ["cosine", "csls"])
@pytest.mark.parametrize("batch_size", [None, 1, 7])
def test_ranks_match_the_definition(method, batch_size):
    space, data = _space_and_data()
    for a, b in [("a", "b"), ("c", "a")]:
        ranks = metrics.retrieval_ranks(
            space, a, data[a], b, data[b], method=method, batch_size=batch_size
        )
        np.testing.assert_array_equal(
            ranks, _ranks_by_definition(space, a, b, data, method)
        )


def test_rank_one_is_the_top_hit_of_search():
    space, data = _space_and_data()
    for method in ("cosine", "csls"):
        ranks = metrics.retrieval_ranks(
            space, "a", data["a"], "b", data["b"], method=method
        )
        top = space.search("a", data["a"], "b", data["b"], k=1, method=method)
        items = np.arange(len(ranks))
        np.testing.assert_array_equal(ranks == 1, top.indices[:, 0] == items)


def test_ties_rank_like_search():
    space, data = _space_and_data()
    gallery = np.repeat(data["b"][:10], 6, axis=0)  # item j appears 6 times
    queries = data["a"]
    ranks = metrics.retrieval_ranks(space, "a", queries, "b", gallery, method="cosine")
    top = space.search("a", queries, "b", gallery, k=60, method="cosine").indices
    expected = 1 + np.argmax(top == np.arange(60)[:, None], axis=1)
    np.testing.assert_array_equal(ranks, expected)


@pytest.mark.parametrize("method", ["cosine", "csls"])
def test_evaluate_reports_every_ordered_pair(method):
    space, data = _space_and_data()
    result = space.evaluate(data, k=(10, 1, 5), method=method)
    assert result.k == (1, 5, 10) and result.n_items == 60 and result.method == method
    pairs = [(a, b) for a in "abc" for b in "abc" if a != b]
    assert list(result.retrieval) == pairs
    for (a, b), scores in result.retrieval.items():
        ranks = _ranks_by_definition(space, a, b, data, method)
        assert scores["top1"] == np.mean(ranks <= 1)
        assert scores["top5"] == np.mean(ranks <= 5)
        assert scores["top10"] == np.mean(ranks <= 10)
        assert scores["mrr"] == pytest.approx(np.mean(1 / ranks), abs=1e-15)
        assert scores["median_rank"] == np.median(ranks)
        translated = space.translate(a, b, data[a])
        sse = ((translated - data[b]) ** 2).sum()
        sst = ((data[b] - data[b].mean(0)) ** 2).sum()
        assert scores["translation_r2"] == pytest.approx(1 - sse / sst, abs=1e-12)
    # Trained on these very items, the models align: far above chance (1/60).
    assert result.mean("top1") > 0.5
    assert result.mean("top1") == np.mean(
        [s["top1"] for s in result.retrieval.values()]
    )
    json.dumps(result.to_dict())
    assert "a -> b" in result.to_dict()["retrieval"]
    text = str(result)
    assert "a -> b" in text and "mean" in text and "R^2" in text


def test_reconstruction_r2_matches_the_definition():
    space, data = _space_and_data()
    r2 = metrics.reconstruction_r2(space, data)
    assert list(r2) == ["a", "b", "c"]
    for name, X in data.items():
        X_hat = space.retrieve(name, space.project(name, X))
        expected = 1 - ((X - X_hat) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()
        assert r2[name] == pytest.approx(expected, abs=1e-12)
        assert 0.5 < r2[name] <= 1
    assert space.evaluate(data).reconstruction_r2 == pytest.approx(r2)


def test_perfect_and_constant_reconstruction():
    space = LatentSpace(3)
    space.register("m", 3)
    models = {"m": make_model(np.eye(3), np.eye(3))}
    space._snapshot = space._snapshot._replace(models=models)
    X = np.random.default_rng(0).normal(size=(20, 3))
    assert metrics.reconstruction_r2(space, {"m": X}) == {"m": 1.0}
    assert metrics.reconstruction_r2(space, {"m": np.ones((4, 3))}) == {"m": 1.0}


def test_blocks_do_not_change_the_scores(monkeypatch):
    space, data = _space_and_data(n=50)
    whole = space.evaluate(data)
    monkeypatch.setattr(metrics, "_ROWS", 7)
    blocked = space.evaluate(data, batch_size=3)
    assert blocked.retrieval.keys() == whole.retrieval.keys()
    for pair, scores in whole.retrieval.items():
        assert blocked.retrieval[pair] == pytest.approx(scores, abs=1e-12)
    assert blocked.reconstruction_r2 == pytest.approx(whole.reconstruction_r2)


def test_untrained_space_scores_near_chance():
    rng = np.random.default_rng(1)
    space = LatentSpace(4, seed=3)
    space.register("a", 6)
    space.register("b", 6)
    data = {"a": rng.normal(size=(400, 6)), "b": rng.normal(size=(400, 6))}
    result = space.evaluate(data, k=10, method="cosine")
    for scores in result.retrieval.values():
        assert scores["top10"] < 0.1  # chance: 10/400
        assert scores["mrr"] < 0.05


def test_single_model_has_reconstruction_only():
    space, data = _space_and_data()
    result = space.evaluate({"a": data["a"]})
    assert result.retrieval == {} and list(result.reconstruction_r2) == ["a"]
    with pytest.raises(ValueError, match="no pairs"):
        result.mean("top1")
    assert "R^2" in str(result)
    with pytest.raises(ValueError, match="at least two models"):
        metrics.retrieval_scores(space, {"a": data["a"]})


def test_retrieval_scores_equal_evaluate():
    space, data = _space_and_data()
    scores = metrics.retrieval_scores(space, data, k=(1, 3), method="cosine")
    result = space.evaluate(data, k=(1, 3), method="cosine")
    for pair, values in scores.items():
        assert {key: result.retrieval[pair][key] for key in values} == values


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be >= 1"),
        (dict(k=()), "k must not be empty"),
        (dict(k="10"), "k must be"),
        (dict(method="l2"), "method must be one of"),
        (dict(csls_k=0), "csls_k must be >= 1"),
    ],
)
def test_bad_parameters(kwargs, match):
    space, data = _space_and_data()
    with pytest.raises(InvalidParameterError, match=match):
        space.evaluate(data, **kwargs)


def test_bad_data():
    space, data = _space_and_data()
    with pytest.raises(UnknownModelError):
        space.evaluate({**data, "z": data["a"]})
    with pytest.raises(ValueError, match="same number of samples"):
        space.evaluate({"a": data["a"], "b": data["b"][:10]})
    bad = data["b"].copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="row 3"):
        space.evaluate({"a": data["a"], "b": bad})


def test_float32_space():
    space, data = _space_and_data(dtype="float32")
    result = space.evaluate(data)
    assert result.mean("top1") > 0.5
    assert all(np.isfinite(v) for v in result.reconstruction_r2.values())
