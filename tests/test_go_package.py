# SPDX-License-Identifier: BSD-3-Clause
"""The tests of the Go package whose API latentspace carries, on the real training.

Defaults as in Go: seed 42. The thresholds are the Go tests' own.
"""

import numpy as np
import pytest

import latentspace


def _three_five(n=200):
    """200 aligned samples of a 3-wide model A and a 5-wide model B, s = i / n."""
    s = np.arange(n) / n
    A = np.column_stack([s, s / 2, 1 - s])
    B = np.column_stack([0.8 * s, 0.3 * s, 1 - 0.9 * s, 0.2 * s, 0.5 - 0.5 * s])
    return A, B


@pytest.fixture(scope="module")
def trained_three_five():
    A, B = _three_five()
    space = latentspace.LatentSpace(4)
    space.register("A", 3)
    space.register("B", 5)
    result = space.train_projections(
        {"A": A, "B": B}, learning_rate=0.005, n_epochs=300, alignment_weight=2.0
    , solver="sgd")
    assert result.n_epochs == 300
    assert result.final_loss < result.initial_loss
    return space, A, B


def test_aligned_pairs_are_closer_than_other_pairs(trained_three_five):
    space, A, B = trained_three_five
    za = {i: space.project("A", A[i]) for i in (10, 190)}
    zb = {i: space.project("B", B[i]) for i in (10, 190)}

    def dist(u, v):
        return float(np.linalg.norm(u - v))

    for i, j in ((10, 190), (190, 10)):
        # A's latent is closer to its partner B_i than to B_j, and vice versa.
        assert dist(za[i], zb[i]) < dist(za[i], zb[j]), (i, j)
        assert dist(zb[i], za[i]) < dist(zb[i], za[j]), (i, j)


def test_translation_beats_random_latents(trained_three_five):
    space, A, B = trained_three_five
    test_indices = np.arange(5, 200, 10)  # 20 indices
    assert len(test_indices) == 20
    translated = space.translate("A", "B", A[test_indices])
    translation_mse = float(np.mean((translated - B[test_indices]) ** 2))
    random_latents = np.random.default_rng(42).standard_normal((20, space.dim))
    random_mse = float(
        np.mean((space.retrieve("B", random_latents) - B[test_indices]) ** 2)
    )
    assert translation_mse < random_mse
    # One vector at a time gives the same reconstructions.
    for row, i in zip(translated, test_indices):
        np.testing.assert_allclose(
            space.translate("A", "B", A[i]), row, rtol=1e-12, atol=1e-12
        )


def test_register_project_retrieve_shapes():
    space = latentspace.LatentSpace(4)
    space.register("A", 3)
    space.register("B", 5)
    assert space.dim == 4
    assert space.models == {"A": 3, "B": 5}
    assert space.project("A", [1.0, 2.0, 3.0]).shape == (4,)
    assert space.project("B", np.ones(5)).shape == (4,)
    assert space.retrieve("A", np.ones(4)).shape == (3,)
    assert space.retrieve("B", np.ones(4)).shape == (5,)
    assert space.project("A", np.ones((7, 3))).shape == (7, 4)
    assert space.retrieve("B", np.ones((7, 4))).shape == (7, 5)
    assert space.translate("A", "B", np.ones(3)).shape == (5,)
    P, R = space.weights("B")
    assert P.shape == (5, 4) and R.shape == (4, 5)


def _space():
    space = latentspace.LatentSpace(4)
    space.register("A", 3)
    space.register("B", 5)
    return space


def test_training_needs_two_models():
    A, _ = _three_five(10)
    with pytest.raises(ValueError, match=r"at least two models, got 1 \('A'\)"):
        _space().train_projections({"A": A}, solver="sgd")
    with pytest.raises(ValueError, match="at least two models, got 0"):
        _space().train_projections({}, solver="sgd")


def test_training_rejects_unregistered_model():
    A, B = _three_five(10)
    with pytest.raises(KeyError, match="model 'C' is not registered"):
        _space().train_projections({"A": A, "C": B}, solver="sgd")


def test_training_rejects_mismatched_sample_counts():
    A, B = _three_five(10)
    with pytest.raises(
        ValueError, match=r"same number of samples.*'A': 10, 'B': 9"
    ):
        _space().train_projections({"A": A, "B": B[:9]}, solver="sgd")


def test_training_rejects_zero_samples():
    with pytest.raises(ValueError, match="zero samples"):
        _space().train_projections({"A": np.empty((0, 3)), "B": np.empty((0, 5))}, solver="sgd")


def test_similar_models_align():
    n = 100
    s = np.arange(n) / n
    A = np.column_stack([s, 1 - s, s**2])
    B = np.column_stack([0.9 * s, 1 - 0.95 * s, 1.1 * s**2])
    space = latentspace.LatentSpace(4)
    space.register("A", 3)
    space.register("B", 3)
    space.train_projections(
        {"A": A, "B": B}, learning_rate=0.005, n_epochs=200, alignment_weight=2.0
    , solver="sgd")
    za = space.project("A", A[50])
    zb = space.project("B", B[50])
    cosine = float(za @ zb / (np.linalg.norm(za) * np.linalg.norm(zb)))
    assert cosine > 0.5
