# SPDX-License-Identifier: BSD-3-Clause
"""Models and snapshots (`latentspace._model`): immutable aligned weights,
the checks a model's arrays pass, publishing a training, refusals."""

import numpy as np
import pytest

from latentspace import LatentSpace
from latentspace._model import (
    Snapshot,
    make_model,
    published,
    read_only,
    refusal,
    xavier,
)
from latentspace._training.fitting import Fit


def _weights(d=5, k=3, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((d, k)).astype(dtype),
            rng.standard_normal((k, d)).astype(dtype),
            rng.standard_normal(d).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weights_are_aligned_immutable_private_copies(dtype):
    P, R, mu = _weights(dtype=dtype)
    model = make_model(P, R, mu)
    arrays = (model.projection, model.reconstruction, model.offset)
    for mine, theirs in zip(arrays, (P, R, mu)):
        np.testing.assert_array_equal(mine, theirs)
        assert mine.dtype == dtype and mine.flags.c_contiguous
        assert mine.ctypes.data % 64 == 0
        assert not np.shares_memory(mine, theirs)
        with pytest.raises(ValueError):
            mine.flags.writeable = True
        with pytest.raises(ValueError):
            mine[0] = 0
    P[0, 0] = 99.0  # the caller's arrays stay theirs
    assert model.projection[0, 0] != 99.0


def test_the_projection_shift_is_minus_the_projected_offset():
    P, R, mu = _weights()
    model = make_model(P, R, mu)
    x = np.random.default_rng(1).standard_normal(5)
    np.testing.assert_allclose(model.project(x), (x - mu) @ P, atol=1e-12)
    np.testing.assert_allclose(model.retrieve(x[:3]), x[:3] @ R + mu, atol=1e-12)
    assert make_model(P, R).offset is None


def test_read_only_of_one_array():
    a = np.arange(7.0)
    b = read_only(a)
    np.testing.assert_array_equal(a, b)
    assert b.ctypes.data % 64 == 0 and not b.flags.writeable


@pytest.mark.parametrize("change", [
    lambda P, R, mu: (P, R.T.copy(), mu),                  # R not (k, d)
    lambda P, R, mu: (P, R.astype(np.float32), mu),        # dtypes differ
    lambda P, R, mu: (P, R, mu[:-1]),                      # offset not (d,)
    lambda P, R, mu: (P.astype(np.int64), R.astype(np.int64), None),
    lambda P, R, mu: (P[0], R, mu),                        # P not 2-D
])
def test_weights_that_do_not_fit_together_are_refused(change):
    with pytest.raises(ValueError, match="inconsistent model weights"):
        make_model(*change(*_weights()))


def test_xavier_draws_in_its_range_and_repeats_with_the_seed():
    a = xavier(np.random.default_rng(3), 40, 8, np.float32)
    b = xavier(np.random.default_rng(3), 40, 8, np.float32)
    limit = np.sqrt(6 / 48)
    for w in (a.projection, a.reconstruction):
        assert w.dtype == np.float32 and np.abs(w).max() <= limit
    np.testing.assert_array_equal(a.projection, b.projection)
    np.testing.assert_array_equal(a.reconstruction, b.reconstruction)
    assert a.offset is None


def test_refusal_names_the_first_bad_row_or_the_overflow():
    x = np.ones((4, 3))
    x[2, 1] = np.inf
    error = refusal(x, "features", "a", np.float64, first_row=10)
    assert str(error) == "features for model 'a' contains NaN or Inf (first in row 12)"
    error = refusal(np.ones(3), "latent", "b", np.float32)
    assert "latent for model 'b': the result overflowed float32" in str(error)


def _space():
    space = LatentSpace(3, seed=0)
    space.register("a", 4)
    space.register("b", 5)
    return space


def _fit(snapshot, trained, dim=None):
    dim = snapshot.dim if dim is None else dim
    return Fit(dim, snapshot.models, trained, list(snapshot.models), None, {}, None)


def test_publishing_installs_the_trained_models_and_keeps_the_others():
    space = _space()
    start = space._snapshot
    new_a = xavier(np.random.default_rng(9), 4, 3, np.float64)
    space.register("c", 2)  # another writer, meanwhile: not a model of the fit
    fit = Fit(3, start.models, {"a": new_a}, ["a", "b"], None, {}, None)
    snapshot = published(space._snapshot, start, fit, "config", np.float64)
    assert snapshot.models["a"] is new_a
    assert snapshot.models["b"] is start.models["b"]
    assert snapshot.models["c"] is space._snapshot.models["c"]
    assert snapshot.config == "config" and snapshot.rng is space._snapshot.rng


def test_publishing_over_a_replaced_model_is_refused():
    space = _space()
    start = space._snapshot
    fit = _fit(start, {"a": xavier(np.random.default_rng(9), 4, 3, np.float64)})
    space.register("b", 5, replace=True)  # a model the fit used
    with pytest.raises(RuntimeError, match=r"space changed while training.*'b'"):
        published(space._snapshot, start, fit, None, np.float64)


def test_publishing_a_re_dimensioned_fit_over_a_changed_space_is_refused():
    space = _space()
    start = space._snapshot
    fit = _fit(start, {}, dim=5)
    space.register("c", 2)
    with pytest.raises(RuntimeError, match=r"trained concurrently: all"):
        published(space._snapshot, start, fit, None, np.float64)


def test_pair_maps_of_replaced_models_are_dropped():
    space = _space()
    models = space._snapshot.models
    M = read_only(np.eye(3))
    start = Snapshot(3, models, space._snapshot.rng, None,
                     {("a", "b"): (models["a"], models["b"], M, M)})
    assert set(start.valid_pair_maps()) == {("a", "b")}
    new_a = xavier(np.random.default_rng(9), 4, 3, np.float64)
    fit = Fit(3, models, {"a": new_a}, ["a"], None, {}, None)
    assert published(start, start, fit, None, np.float64).pair_maps == {}
    fit = Fit(3, models, {"a": new_a}, ["a", "b"], None, {("a", "b"): (M, M)}, None)
    maps = published(start, start, fit, None, np.float64).valid_pair_maps()
    assert set(maps) == {("a", "b")}
    np.testing.assert_array_equal(maps["a", "b"][0], np.eye(3))
