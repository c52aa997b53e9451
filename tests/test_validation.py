# SPDX-License-Identifier: BSD-3-Clause
"""Every validation error (docs/maths.md §8), its message, and that it changes nothing."""

import re

import numpy as np
import pytest
from numpy.testing import assert_allclose
from reference import reference_sgd, xavier
from support import MAP_TOL, WEIGHT_TOL, assert_unchanged, dtype_params, snapshot

import latentspace
from latentspace import (
    InvalidParameterError,
    ProjectionConfig,
    TrainingDivergedError,
    UnknownModelError,
)
from latentspace._kernels import affine

N = 10
_RNG = np.random.default_rng(20)
XA = _RNG.standard_normal((N, 3))
XB = _RNG.standard_normal((N, 5))
XC = _RNG.standard_normal((N, 2))


def build(dtype="float64"):
    """The space every failing call starts from: a(3), b(5), c(2), k=4, trained."""
    space = latentspace.LatentSpace(4, dtype=dtype, seed=42)
    space.register("a", 3)
    space.register("b", 5)
    space.register("c", 2)
    space.train_projections({"a": XA, "b": XB}, n_epochs=2, solver="sgd")
    return space


def assert_fails_cleanly(call, exc, match, dtype="float64"):
    """``call(space)`` raises ``exc`` matching ``match`` and changes nothing:
    the weights, models and dim stay bit-identical, and the space's generator
    was not consumed (a later registration draws what it would have drawn)."""
    space = build(dtype)
    before = snapshot(space)
    with pytest.raises(exc, match=match) as info:
        call(space)
    assert_unchanged(space, before)
    twin = build(dtype)
    space.register("probe", 6)
    twin.register("probe", 6)
    for got, expected in zip(space.weights("probe"), twin.weights("probe")):
        assert got.tobytes() == expected.tobytes()
    return info.value


def train(**overrides):
    return lambda space: space.train_projections({"a": XA, "b": XB},
                                                 **{"solver": "sgd", **overrides})


def train_data(data, **overrides):
    return lambda space: space.train_projections(data, **{"solver": "sgd", **overrides})


def with_value(array, row, col, value):
    array = np.array(array, dtype=np.float64, copy=True)
    array[row, col] = value
    return array


# id, call, exception class, message pattern
CONFIG_FAILURES = [
    ("lr-zero", train(learning_rate=0), ValueError,
     r"learning_rate must be finite and > 0, got 0\.0"),
    ("lr-negative", train(learning_rate=-0.5), ValueError,
     r"learning_rate must be finite and > 0, got -0\.5"),
    ("lr-nan", train(learning_rate=float("nan")), ValueError,
     r"learning_rate must be finite and > 0, got nan"),
    ("lr-inf", train(learning_rate=float("inf")), ValueError,
     r"learning_rate must be finite and > 0, got inf"),
    ("lr-bool", train(learning_rate=True), TypeError,
     r"learning_rate must be a real number, got True"),
    ("lr-str", train(learning_rate="0.1"), TypeError,
     r"learning_rate must be a real number, got '0\.1'"),
    ("lr-none", train(learning_rate=None), TypeError,
     r"learning_rate must be a real number, got None"),
    ("epochs-zero", train(n_epochs=0), ValueError, r"n_epochs must be >= 1, got 0"),
    ("epochs-negative", train(n_epochs=-3), ValueError,
     r"n_epochs must be >= 1, got -3"),
    ("epochs-float", train(n_epochs=2.0), TypeError,
     r"n_epochs must be an integer, got 2\.0"),
    ("epochs-bool", train(n_epochs=True), TypeError,
     r"n_epochs must be an integer, got True"),
    ("weight-negative", train(alignment_weight=-1), ValueError,
     r"alignment_weight must be finite and >= 0, got -1\.0"),
    ("weight-nan", train(alignment_weight=float("nan")), ValueError,
     r"alignment_weight must be finite and >= 0, got nan"),
    ("weight-inf", train(alignment_weight=float("inf")), ValueError,
     r"alignment_weight must be finite and >= 0, got inf"),
    ("weight-bool", train(alignment_weight=False), TypeError,
     r"alignment_weight must be a real number, got False"),
    ("latent-zero", train(latent_dim=0), ValueError, r"latent_dim must be >= 1, got 0"),
    ("latent-negative", train(latent_dim=-2), ValueError,
     r"latent_dim must be >= 1, got -2"),
    ("latent-float", train(latent_dim=2.5), TypeError,
     r"latent_dim must be an integer, got 2\.5"),
    ("latent-bool", train(latent_dim=True), TypeError,
     r"latent_dim must be an integer, got True"),
    ("unknown-option", train(learn_rate=0.1), TypeError,
     r"unknown training option\(s\) 'learn_rate'.*learning_rate"),
    ("config-dict",
     lambda space: space.train_projections({"a": XA, "b": XB}, {"n_epochs": 3}, solver="sgd"),
     TypeError, r"config must be a ProjectionConfig or None, got dict"),
]

DATA_FAILURES = [
    ("width-a", train_data({"a": np.ones((N, 4)), "b": XB}), ValueError,
     r"data for model 'a' must have shape \(n, 3\), got shape \(10, 4\)"),
    ("width-b", train_data({"a": XA, "b": np.ones((N, 3))}), ValueError,
     r"data for model 'b' must have shape \(n, 5\), got shape \(10, 3\)"),
    ("one-dim", train_data({"a": np.ones(N), "b": XB}), ValueError,
     r"data for model 'a' must have shape \(n, 3\), got shape \(10,\)"),
    ("three-dim", train_data({"a": XA, "b": np.ones((N, 5, 1))}), ValueError,
     r"data for model 'b' must have shape \(n, 5\), got shape \(10, 5, 1\)"),
    ("nan", train_data({"a": with_value(XA, 3, 1, np.nan), "b": XB}), ValueError,
     r"data for model 'a' contains NaN or Inf \(first in row 3\)"),
    ("inf", train_data({"a": XA, "b": with_value(XB, 7, 4, np.inf)}), ValueError,
     r"data for model 'b' contains NaN or Inf \(first in row 7\)"),
    ("minus-inf", train_data({"a": with_value(XA, 0, 0, -np.inf), "b": XB}),
     ValueError, r"data for model 'a' contains NaN or Inf \(first in row 0\)"),
    ("first-bad-row",
     train_data({"a": with_value(with_value(XA, 8, 0, np.nan), 2, 2, np.inf),
                 "b": XB}),
     ValueError, r"data for model 'a' contains NaN or Inf \(first in row 2\)"),
    ("strings", train_data({"a": np.full((N, 3), "x"), "b": XB}), TypeError,
     r"data for model 'a' must hold real numbers, got dtype <U1"),
    ("object", train_data({"a": XA.astype(object), "b": XB}), TypeError,
     r"data for model 'a' must hold real numbers, got dtype object"),
    ("complex", train_data({"a": XA, "b": XB.astype(complex)}), TypeError,
     r"data for model 'b' must hold real numbers, got dtype complex128"),
    ("bool", train_data({"a": XA > 0, "b": XB}), TypeError,
     r"data for model 'a' must hold real numbers, got dtype bool"),
    ("ragged", train_data({"a": [[1.0, 2.0, 3.0], [1.0]] * 5, "b": XB}), TypeError,
     r"data for model 'a' is not a numeric array"),
    ("list-of-arrays", train_data([XA, XB]), TypeError,
     r"data must be a mapping of model name to array, or an iterable of such "
     r"mappings \(chunks of rows\), got list of ndarray"),
    ("pairs", train_data((("a", XA), ("b", XB))), TypeError,
     r"data must be a mapping of model name to array, or an iterable of such "
     r"mappings \(chunks of rows\), got tuple of tuple"),
    ("none", train_data(None), TypeError,
     r"data must be a mapping of model name to array, or an iterable of such "
     r"mappings \(chunks of rows\), got NoneType"),
]

# The Go package's checks, in the order of docs/maths.md §8. A case that breaks several rules
# must be reported by the earliest check.
ORDER_FAILURES = [
    ("no-models", train_data({}), ValueError, r"at least two models, got 0"),
    ("one-model", train_data({"a": XA}), ValueError,
     r"at least two models, got 1 \('a'\)"),
    ("one-unregistered-model", train_data({"zzz": XA[:0]}), ValueError,
     r"at least two models, got 1 \('zzz'\)"),
    ("unregistered-before-counts", train_data({"a": XA, "zzz": XB[:3]}),
     UnknownModelError, r"model 'zzz' is not registered \(registered: 'a', 'b', 'c'\)"),
    ("unregistered-before-zero", train_data({"a": XA[:0], "zzz": XB[:0]}),
     UnknownModelError, r"model 'zzz' is not registered"),
    ("unregistered-non-str", train_data({"a": XA, 7: XB}), UnknownModelError,
     r"model 7 is not registered"),
    ("counts-before-zero", train_data({"a": XA[:0], "b": XB}), ValueError,
     r"same number of samples \(aligned by index\), got 'a': 0, 'b': 10"),
    ("counts", train_data({"a": XA, "b": XB[:7], "c": XC}), ValueError,
     r"same number of samples.*'a': 10, 'b': 7, 'c': 10"),
    ("zero-samples", train_data({"a": XA[:0], "b": XB[:0]}), ValueError,
     r"data holds zero samples"),
]

LOSS_FAILURES = [
    ("loss-no-models", lambda s: s.loss({}), ValueError, r"at least one model, got 0"),
    ("loss-unknown", lambda s: s.loss({"a": XA, "zzz": XB}), UnknownModelError,
     r"model 'zzz' is not registered"),
    ("loss-nan", lambda s: s.loss({"a": XA, "c": with_value(XC, 4, 1, np.nan)}),
     ValueError, r"data for model 'c' contains NaN or Inf \(first in row 4\)"),
    ("loss-width", lambda s: s.loss({"b": XA}), ValueError,
     r"data for model 'b' must have shape \(n, 5\), got shape \(10, 3\)"),
    ("loss-weight-negative", lambda s: s.loss({"a": XA}, alignment_weight=-0.5),
     ValueError, r"alignment_weight must be finite and >= 0, got -0\.5"),
    ("loss-weight-nan", lambda s: s.loss({"a": XA}, alignment_weight=float("nan")),
     ValueError, r"alignment_weight must be finite and >= 0, got nan"),
]

UNKNOWN_NAME_FAILURES = [
    ("project", lambda s: s.project("zzz", np.ones(3)), "'zzz'"),
    ("retrieve", lambda s: s.retrieve("zzz", np.ones(4)), "'zzz'"),
    ("translate-source", lambda s: s.translate("zzz", "a", np.ones(3)), "'zzz'"),
    ("translate-target", lambda s: s.translate("a", "zzz", np.ones(3)), "'zzz'"),
    ("weights", lambda s: s.weights("zzz"), "'zzz'"),
    ("case-sensitive", lambda s: s.project("A", np.ones(3)), "'A'"),
    ("none", lambda s: s.project(None, np.ones(3)), "None"),
    ("unhashable", lambda s: s.weights(["a"]), r"\['a'\]"),
]

MAP_FAILURES = [
    ("project-length", lambda s: s.project("a", np.ones(4)), ValueError,
     r"features for model 'a' must have shape \(3,\) or \(n, 3\), got shape \(4,\)"),
    ("project-batch-width", lambda s: s.project("a", np.ones((2, 5))), ValueError,
     r"features for model 'a' must have shape \(3,\) or \(n, 3\), got shape \(2, 5\)"),
    ("project-3d", lambda s: s.project("a", np.ones((2, 3, 1))), ValueError,
     r"features for model 'a' must have shape .*, got shape \(2, 3, 1\)"),
    ("project-scalar", lambda s: s.project("a", 1.0), ValueError,
     r"features for model 'a' must have shape .*, got shape \(\)"),
    ("project-empty-vector", lambda s: s.project("a", []), ValueError,
     r"features for model 'a' must have shape .*, got shape \(0,\)"),
    ("retrieve-length", lambda s: s.retrieve("b", np.ones(5)), ValueError,
     r"latent for model 'b' must have shape \(4,\) or \(n, 4\), got shape \(5,\)"),
    ("retrieve-batch-width", lambda s: s.retrieve("b", np.ones((3, 3))), ValueError,
     r"latent for model 'b' must have shape .*, got shape \(3, 3\)"),
    ("translate-length", lambda s: s.translate("a", "b", np.ones(5)), ValueError,
     r"features for model 'a' must have shape \(3,\) or \(n, 3\), got shape \(5,\)"),
    ("project-strings", lambda s: s.project("a", ["x", "y", "z"]), TypeError,
     r"features for model 'a' must hold real numbers, got dtype <U1"),
    ("project-complex", lambda s: s.project("a", np.ones(3, complex)), TypeError,
     r"features for model 'a' must hold real numbers, got dtype complex128"),
    ("project-bool", lambda s: s.project("a", np.ones(3, bool)), TypeError,
     r"features for model 'a' must hold real numbers, got dtype bool"),
    ("retrieve-object", lambda s: s.retrieve("c", np.ones(4, object)), TypeError,
     r"latent for model 'c' must hold real numbers, got dtype object"),
    ("project-nan-row", lambda s: s.project("a", with_value(np.ones((5, 3)), 2, 1,
                                                            np.nan)),
     ValueError, r"features for model 'a' contains NaN or Inf \(first in row 2\)"),
    ("project-inf-vector",
     lambda s: s.project("a", np.array([1.0, np.inf, 0.0])), ValueError,
     r"features for model 'a' contains NaN or Inf \(first in row 0\)"),
    ("retrieve-nan-row", lambda s: s.retrieve("b", with_value(np.ones((3, 4)), 1, 3,
                                                              np.nan)),
     ValueError, r"latent for model 'b' contains NaN or Inf \(first in row 1\)"),
    ("translate-nan-row",
     lambda s: s.translate("a", "c", with_value(np.ones((4, 3)), 3, 0, -np.inf)),
     ValueError, r"features for model 'a' contains NaN or Inf \(first in row 3\)"),
]

REGISTER_FAILURES = [
    ("duplicate", lambda s: s.register("a", 3), ValueError,
     r"model 'a' is already registered \(input_dim=3\); pass replace=True"),
    ("duplicate-other-width", lambda s: s.register("b", 7), ValueError,
     r"model 'b' is already registered \(input_dim=5\)"),
    ("duplicate-replace-false", lambda s: s.register("c", 2, replace=False),
     ValueError, r"model 'c' is already registered"),
    ("dim-zero", lambda s: s.register("d", 0), ValueError,
     r"input_dim must be >= 1, got 0"),
    ("dim-negative", lambda s: s.register("d", -1), ValueError,
     r"input_dim must be >= 1, got -1"),
    ("dim-float", lambda s: s.register("d", 2.5), TypeError,
     r"input_dim must be an integer, got 2\.5"),
    ("dim-bool", lambda s: s.register("d", True), TypeError,
     r"input_dim must be an integer, got True"),
    ("dim-str", lambda s: s.register("d", "3"), TypeError,
     r"input_dim must be an integer, got '3'"),
    ("dim-none", lambda s: s.register("d", None), TypeError,
     r"input_dim must be an integer, got None"),
    ("replace-bad-dim", lambda s: s.register("a", 0, replace=True), ValueError,
     r"input_dim must be >= 1, got 0"),
    ("name-int", lambda s: s.register(3, 3), TypeError,
     r"a model name must be a str, got 3 \(int\)"),
    ("name-none", lambda s: s.register(None, 3), TypeError,
     r"a model name must be a str, got None \(NoneType\)"),
    ("name-bytes", lambda s: s.register(b"d", 3), TypeError,
     r"a model name must be a str, got b'd' \(bytes\)"),
    ("name-empty", lambda s: s.register("", 3), ValueError,
     r"a model name must not be empty"),
]


def _cases(table):
    return pytest.mark.parametrize(
        "call, exc, match", [case[1:] for case in table], ids=[c[0] for c in table]
    )


@dtype_params
@_cases(CONFIG_FAILURES)
def test_config_out_of_range(dtype, call, exc, match):
    error = assert_fails_cleanly(call, exc, match, dtype)
    assert isinstance(error, InvalidParameterError)


@pytest.mark.parametrize(
    "field, value, exc, match",
    [
        ("learning_rate", 0.0, ValueError, "learning_rate must be finite and > 0"),
        ("learning_rate", float("nan"), ValueError, "learning_rate must be finite"),
        ("learning_rate", True, TypeError, "learning_rate must be a real number"),
        ("n_epochs", 0, ValueError, "n_epochs must be >= 1"),
        ("n_epochs", 1.5, TypeError, "n_epochs must be an integer"),
        ("alignment_weight", -1e-9, ValueError, "alignment_weight must be finite"),
        ("alignment_weight", float("-inf"), ValueError, "alignment_weight must be"),
        ("latent_dim", 0, ValueError, "latent_dim must be >= 1"),
        ("latent_dim", "4", TypeError, "latent_dim must be an integer"),
    ],
)
def test_projection_config_validates_on_construction(field, value, exc, match):
    with pytest.raises(exc, match=match):
        ProjectionConfig(**{field: value})


def test_projection_config_accepts_numpy_scalars_and_zero_weight():
    config = ProjectionConfig(
        latent_dim=np.int64(3), learning_rate=np.float32(0.5), n_epochs=np.int32(2),
        alignment_weight=0,
    )
    assert config.latent_dim == 3 and type(config.latent_dim) is int
    assert config.n_epochs == 2 and type(config.n_epochs) is int
    assert config.learning_rate == 0.5 and config.alignment_weight == 0.0


@dtype_params
@_cases(DATA_FAILURES)
def test_bad_training_data(dtype, call, exc, match):
    assert_fails_cleanly(call, exc, match, dtype)


@_cases(ORDER_FAILURES)
def test_go_checks_in_spec_order(call, exc, match):
    assert_fails_cleanly(call, exc, match)


def test_unregistered_model_error_is_a_key_error():
    error = assert_fails_cleanly(
        train_data({"a": XA, "zzz": XB}), KeyError, "model 'zzz' is not registered"
    )
    assert isinstance(error, UnknownModelError)
    # str() is the plain message, without the quotes KeyError adds.
    assert str(error).startswith("model 'zzz'")


@_cases(LOSS_FAILURES)
def test_bad_loss_arguments(call, exc, match):
    assert_fails_cleanly(call, exc, match)


@pytest.mark.parametrize(
    "call, name", [c[1:] for c in UNKNOWN_NAME_FAILURES],
    ids=[c[0] for c in UNKNOWN_NAME_FAILURES],
)
def test_unknown_model_names(call, name):
    pattern = rf"model {name} is not registered \(registered: 'a', 'b', 'c'\)"
    error = assert_fails_cleanly(call, UnknownModelError, pattern)
    assert isinstance(error, KeyError)


def test_unknown_model_in_an_empty_space():
    space = latentspace.LatentSpace(3)
    pattern = r"model 'a' is not registered \(registered: none\)"
    with pytest.raises(KeyError, match=pattern):
        space.project("a", np.ones(3))


@dtype_params
@_cases(MAP_FAILURES)
def test_bad_map_inputs(dtype, call, exc, match):
    assert_fails_cleanly(call, exc, match, dtype)


@dtype_params
def test_project_overflow_is_reported(dtype):
    space = build(dtype)
    P = np.asarray(space.weights("a")[0], dtype=np.float64)
    # Every feature at the largest finite value, signed so that column j adds up
    # to more than that value.
    j = int(np.argmax(np.abs(P).sum(axis=0)))
    assert np.abs(P[:, j]).sum() > 1.01  # so x @ P[:, j] overflows
    x = (np.sign(P[:, j]) * np.finfo(dtype).max).astype(dtype)
    before = snapshot(space)
    pattern = r"features for model 'a': the result overflowed"
    with pytest.raises(ValueError, match=pattern):
        space.project("a", x)
    assert_unchanged(space, before)


@_cases(REGISTER_FAILURES)
def test_bad_registrations(call, exc, match):
    assert_fails_cleanly(call, exc, match)


@dtype_params
def test_register_replace(dtype):
    space = build(dtype)
    before = snapshot(space)
    # The draws a twin space would make next.
    rng = np.random.default_rng(42)
    for d in (3, 5, 2):
        xavier(rng, d, 4, dtype)
    space.register("b", 7, replace=True)
    P, R = xavier(rng, 7, 4, dtype)
    assert space.models == {"a": 3, "b": 7, "c": 2}
    assert space.weights("b")[0].tobytes() == P.tobytes()
    assert space.weights("b")[1].tobytes() == R.tobytes()
    assert space.project("b", np.ones(7)).shape == (4,)
    assert space.retrieve("b", np.ones(4)).shape == (7,)
    for name in ("a", "c"):
        for got, old in zip(space.weights(name), before["weights"][name]):
            assert got.tobytes() == old.tobytes()
    # Replacing with the same width draws fresh weights, too.
    space.register("a", 3, replace=True)
    P, R = xavier(rng, 3, 4, dtype)
    assert space.weights("a")[0].tobytes() == P.tobytes()
    assert space.weights("a")[1].tobytes() == R.tobytes()
    # replace=True on a new name simply registers it.
    space.register("new", 2, replace=True)
    assert space.models["new"] == 2


def test_register_accepts_numpy_integers():
    space = latentspace.LatentSpace(np.int64(3))
    space.register("a", np.int32(4))
    assert space.dim == 3 and type(space.dim) is int
    assert space.models == {"a": 4} and type(space.models["a"]) is int


@pytest.mark.parametrize(
    "dim, exc, match",
    [
        (0, ValueError, r"dim must be >= 1, got 0"),
        (-1, ValueError, r"dim must be >= 1, got -1"),
        (2.5, TypeError, r"dim must be an integer, got 2\.5"),
        (True, TypeError, r"dim must be an integer, got True"),
        ("4", TypeError, r"dim must be an integer, got '4'"),
        (None, TypeError, r"dim must be an integer, got None"),
    ],
)
def test_bad_space_dim(dim, exc, match):
    with pytest.raises(exc, match=match):
        latentspace.LatentSpace(dim)


@pytest.mark.parametrize(
    "dtype", ["float16", "int32", np.int64, np.complex128, "bogus", object, "f2"]
)
def test_bad_space_dtype(dtype):
    with pytest.raises((ValueError, TypeError), match=re.escape(
        "dtype must be 'float64' or 'float32'"
    )) as info:
        latentspace.LatentSpace(3, dtype=dtype)
    assert isinstance(info.value, InvalidParameterError)


@pytest.mark.parametrize(
    "dtype, expected",
    [("float64", np.float64), (np.float32, np.float32), ("f4", np.float32),
     (np.dtype("float64"), np.float64)],
)
def test_space_dtype_spellings(dtype, expected):
    space = latentspace.LatentSpace(3, dtype=dtype)
    assert space.dtype == np.dtype(expected)
    space.register("a", 2)
    assert space.weights("a")[0].dtype == expected
    assert space.project("a", [1, 2]).dtype == expected


# -------------------------------------------------------------------- latent_dim


@dtype_params
def test_latent_dim_redimensions_every_model(dtype):
    space = build(dtype)
    # The generator after build(): three registrations at k=4; training at the
    # space's size drew nothing.
    rng = np.random.default_rng(42)
    for d in (3, 5, 2):
        xavier(rng, d, 4, dtype)
    fresh = {
        name: xavier(rng, d, 6, dtype) for name, d in (("a", 3), ("b", 5), ("c", 2))
    }

    result = space.train_projections(
        {"a": XA, "c": XC}, latent_dim=6, n_epochs=3, learning_rate=0.02
    , solver="sgd")
    assert result.config.latent_dim == 6
    assert space.dim == 6
    assert space.models == {"a": 3, "b": 5, "c": 2}
    # b was not trained: freshly initialised at the new size.
    assert space.weights("b")[0].tobytes() == fresh["b"][0].tobytes()
    assert space.weights("b")[1].tobytes() == fresh["b"][1].tobytes()
    # a and c were trained from their fresh weights.
    Xs = [XA.astype(dtype).astype(float), XC.astype(dtype).astype(float)]
    Ps, Rs = reference_sgd(
        Xs,
        [fresh[n][0].astype(float) for n in ("a", "c")],
        [fresh[n][1].astype(float) for n in ("a", "c")],
        0.02, 3, 1.0,
    )
    for name, P, R in zip(("a", "c"), Ps, Rs):
        assert space.weights(name)[0].shape == (space.models[name], 6)
        assert_allclose(space.weights(name)[0], P, **WEIGHT_TOL[np.dtype(dtype)])
        assert_allclose(space.weights(name)[1], R, **WEIGHT_TOL[np.dtype(dtype)])
    assert space.project("a", XA).shape == (N, 6)
    assert space.translate("a", "b", XA[0]).shape == (5,)
    # Later registrations continue the generator after the re-dimensioning.
    space.register("d", 4)
    P, R = xavier(rng, 4, 6, dtype)
    assert space.weights("d")[0].tobytes() == P.tobytes()
    assert space.weights("d")[1].tobytes() == R.tobytes()
    # And training without latent_dim now stays at the new size.
    space.train_projections({"a": XA, "b": XB}, n_epochs=1, solver="sgd")
    assert space.dim == 6


def test_latent_dim_equal_to_dim_is_a_plain_training():
    space, twin = build(), build()
    space.train_projections({"a": XA, "b": XB}, latent_dim=4, n_epochs=3, solver="sgd")
    twin.train_projections({"a": XA, "b": XB}, n_epochs=3, solver="sgd")
    for name in ("a", "b", "c"):
        for got, expected in zip(space.weights(name), twin.weights(name)):
            assert got.tobytes() == expected.tobytes()
    space.register("d", 3)
    twin.register("d", 3)
    assert space.weights("d")[0].tobytes() == twin.weights("d")[0].tobytes()


@dtype_params
def test_failed_redimensioning_training_changes_nothing(dtype):
    """Divergence after re-initialising at a new size: the old size and weights
    stay, and the generator is as if the training never happened."""
    error = assert_fails_cleanly(
        train_data({"a": 10 * XA, "b": 10 * XB}, latent_dim=6, learning_rate=1e3),
        TrainingDivergedError, r"diverged.*try learning_rate=", dtype,
    )
    assert isinstance(error, FloatingPointError)


@pytest.mark.parametrize(
    "data, exc, match",
    [
        ({"a": with_value(XA, 1, 1, np.nan), "b": XB}, ValueError,
         r"data for model 'a' contains NaN or Inf \(first in row 1\)"),
        ({"a": XA, "b": XB[:5]}, ValueError, r"same number of samples"),
        ({"a": XA, "b": np.ones((N, 4))}, ValueError,
         r"data for model 'b' must have shape \(n, 5\)"),
        ({"a": XA, "zzz": XB}, KeyError, r"model 'zzz' is not registered"),
    ],
    ids=["nan", "counts", "width", "unregistered"],
)
def test_failed_redimensioning_validation_changes_nothing(data, exc, match):
    assert_fails_cleanly(train_data(data, latent_dim=7), exc, match)


@pytest.mark.parametrize("solver", ["sgd", "cca"])
def test_float32_training_data_beyond_range_is_named(solver):
    data = {"a": with_value(XA, 3, 1, 1e300), "b": XB}
    match = (r"data for model 'a' holds 1e\+300 \(at index \(3, 1\)\), beyond the "
             r"range of the space's float32")
    assert_fails_cleanly(
        lambda space: space.train_projections(data, solver=solver), ValueError, match,
        "float32",
    )


# ------------------------------------------------------ out=, aliasing, big batches


def _square_space(dtype):
    """Models as wide as the space, so that an input can be its own ``out``."""
    space = latentspace.LatentSpace(4, dtype=dtype, seed=1)
    space.register("a", 4)
    space.register("b", 4)
    rng = np.random.default_rng(2)
    data = {name: rng.standard_normal((30, 4)) + 1.0 for name in ("a", "b")}
    space.train_projections(data, solver="cca")  # offsets too
    return space


_CALLS = {
    "project": lambda space, x, out: space.project("a", x, out=out),
    "retrieve": lambda space, x, out: space.retrieve("a", x, out=out),
    "translate": lambda space, x, out: space.translate("a", "b", x, out=out),
}


@dtype_params
@pytest.mark.parametrize("call", list(_CALLS))
@pytest.mark.parametrize("shape", [(4,), (1, 4), (6, 4)], ids=str)
@pytest.mark.parametrize("shift", [0, 1, -1, 3])
def test_out_overlapping_the_input_gives_the_right_answer(dtype, call, shape, shift):
    """``out`` that is the input, or overlaps it shifted by some entries
    either way: the result is that of a separate ``out``."""
    space = _square_space(dtype)
    size = int(np.prod(shape))
    buffer = np.random.default_rng(3).standard_normal(size + 8).astype(dtype)
    x = buffer[4 : 4 + size].reshape(shape)
    out = buffer[4 + shift : 4 + shift + size].reshape(shape)
    assert np.shares_memory(x, out) or size == 0
    expected = _CALLS[call](space, x.copy(), None)
    assert _CALLS[call](space, x, out) is out
    assert np.array_equal(out, expected)


@dtype_params
@pytest.mark.parametrize("call", list(_CALLS))
@pytest.mark.parametrize("aliased", [False, True], ids=["separate", "aliased"])
def test_a_refused_call_leaves_out_alone(dtype, call, aliased):
    space = _square_space(dtype)
    x = np.ones((3, 4), dtype)
    x[1, 2] = np.nan
    out = x if aliased else np.full((3, 4), 7.0, dtype)
    before = out.copy()
    what = "latent" if call == "retrieve" else "features"
    with pytest.raises(ValueError, match=rf"{what} for model .* contains NaN or Inf "
                                         r"\(first in row 1\)"):
        _CALLS[call](space, x, out)
    assert np.array_equal(out, before, equal_nan=True)


@dtype_params
@pytest.mark.parametrize("rows", [1, 2, 3, 7])
def test_batches_beyond_one_blas_call_are_computed_in_blocks(dtype, rows, monkeypatch):
    """More rows than one BLAS call takes (2**31 - 1; lowered here) are
    computed in blocks: every row, as one call would."""
    space = _square_space(dtype)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((10, 4)).astype(dtype)
    gallery = rng.standard_normal((9, 4)).astype(dtype)
    expected = {
        "project": space.project("a", x),
        "translate": space.translate("a", "b", x),
        "search": space.search("a", x, "b", gallery, k=3),
    }
    monkeypatch.setattr(affine, "MAX_ROWS", rows)
    tol = MAP_TOL[np.dtype(dtype)]
    assert_allclose(space.project("a", x), expected["project"], **tol)
    out = np.full((10, 4), np.nan, dtype)
    assert space.project("a", x, out=out) is out
    assert_allclose(out, expected["project"], **tol)
    assert_allclose(space.translate("a", "b", x), expected["translate"], **tol)
    scores, indices = space.search("a", x, "b", gallery, k=3)
    assert_allclose(scores, expected["search"].scores, **tol)
    assert np.array_equal(indices, expected["search"].indices)


def test_the_rows_of_one_blas_call_fit_a_blas_int():
    assert 1 <= affine.MAX_ROWS <= 2**31 - 1


# ----------------------------------------------------------- weights are immutable


@dtype_params
def test_weights_and_offsets_cannot_be_made_writeable(dtype):
    space = _square_space(dtype)  # with offsets
    arrays = [*space.weights("a"), space.offset("a")]
    for array in arrays:
        with pytest.raises(ValueError):
            array.flags.writeable = True
        with pytest.raises(ValueError):
            array[...] = 0
        view = array.view()
        with pytest.raises(ValueError):
            view.flags.writeable = True
    copy = arrays[0].copy()
    copy[...] = 0  # a copy is the caller's own


# ------------------------------------------------------------------ masked arrays


def test_project_refuses_masked_entries():
    space = build()
    x = np.ma.masked_array(XA[:2], mask=[[False, True, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"masked array with 1 masked entries "
                                         r"\(the first at index \(0, 1\)\)"):
        space.project("a", x)
    with pytest.raises(ValueError, match="masked"):
        space.translate("a", "b", x)
    with pytest.raises(ValueError, match="masked"):
        space.search("a", x, "b", XB, k=1)
    unmasked = np.ma.masked_array(XA[:2], mask=False)
    assert np.array_equal(space.project("a", unmasked), space.project("a", XA[:2]))


@pytest.mark.filterwarnings("ignore::latentspace.DimensionWarning")  # dim 4 > width 3
@pytest.mark.filterwarnings("ignore::latentspace.ConvergenceWarning")
@pytest.mark.parametrize("solver", ["sgd", "cca", "lbfgs", "minibatch"])
def test_masked_entries_are_rows_a_model_did_not_observe(solver):
    """Training on masked arrays is training with ``observed=`` the rows
    without masked entries; what the masked entries hold (1e6, NaN) is not
    used."""
    rows = np.arange(N) % 3 != 0
    xb = XB.copy()
    xb[~rows, 1] = np.nan
    xb[~rows, 3] = 1e6
    mask = np.zeros(XB.shape, dtype=bool)
    mask[~rows, 1] = mask[~rows, 3] = True
    masked, plain = build(), build()
    masked.train_projections({"a": XA, "b": np.ma.masked_array(xb, mask)},
                             solver=solver, n_epochs=2)
    plain.train_projections({"a": XA, "b": np.where(rows[:, None], XB, 0.0)},
                            observed={"b": rows}, solver=solver, n_epochs=2)
    for name in ("a", "b"):
        for got, expected in zip(masked.weights(name), plain.weights(name)):
            assert got.tobytes() == expected.tobytes()
    assert masked.loss({"a": XA, "b": np.ma.masked_array(xb, mask)}) == plain.loss(
        {"a": XA, "b": XB}, observed={"b": rows})
    with pytest.raises(ValueError, match="'b' has masked entries"):
        masked.evaluate({"a": XA, "b": np.ma.masked_array(xb, mask)})


def test_a_model_with_every_row_masked_is_refused():
    space = build()
    before = snapshot(space)
    with pytest.raises(ValueError, match="'b' observed no sample"):
        space.train_projections({"a": XA, "b": np.ma.masked_all(XB.shape)})
    assert_unchanged(space, before)


# --------------------------------------------------------------- tiny magnitudes


@pytest.mark.parametrize("solver", ["sgd", "cca", "lbfgs", "minibatch"])
@pytest.mark.parametrize("dtype, scale", [("float32", 1e-25), ("float64", 1e-170)])
def test_features_too_small_for_the_dtype_are_named(dtype, scale, solver):
    """Products of such features underflow: the statistics and the gradients
    would be zeros (training "succeeded" at chance level)."""
    data = {"a": XA.astype(dtype) * scale, "b": XB}
    error = assert_fails_cleanly(
        train_data(data, solver=solver, n_epochs=2), ValueError,
        rf"data for model 'a' is at most [0-9.e-]+ in magnitude: too small for "
        rf"the space's {dtype}", dtype)
    assert "scale the features up" in str(error)


def test_tiny_features_in_a_stream_are_named():
    chunks = [{"a": XA[:5], "b": XB[:5]}, {"a": XA[5:] * 1e-170, "b": XB[5:]}]
    assert_fails_cleanly(train_data(chunks, solver="cca"), ValueError,
                         r"'a' in chunk 1 \(from row 5 of the stream\) is at most")


@pytest.mark.filterwarnings("ignore::latentspace.DimensionWarning")  # dim 4 > width 3
@pytest.mark.parametrize("scale", [1e-12, 1e-6, 1.0])
def test_small_but_representable_features_train(scale):
    space = build("float32")
    space.train_projections({"a": XA * scale, "b": XB}, solver="cca")


@pytest.mark.filterwarnings("ignore::latentspace.ConvergenceWarning")
@pytest.mark.parametrize("solver", ["sgd", "cca", "lbfgs", "minibatch"])
def test_float32_conversion_to_zero_is_named(solver):
    # (Fuzzing found the closed form and lbfgs, which read statistics, taking
    # what project then refused.)
    space = build("float32")
    x = XA.copy()
    x[1, 2] = 1e-100
    with pytest.raises(ValueError, match=r"holds 1e-100 \(at index \(1, 2\)\), so "
                                         r"small that the space's float32 rounds "
                                         r"it to 0"):
        space.project("a", x[:2])
    assert_fails_cleanly(train_data({"a": x, "b": XB}, solver=solver), ValueError,
                         r"'a' holds 1e-100 \(at index \(1, 2\)\)", "float32")
    chunks = [{"a": XA, "b": XB}, {"a": x, "b": XB}]
    if solver in ("cca", "lbfgs"):
        assert_fails_cleanly(train_data(chunks, solver=solver), ValueError,
                             r"'a' in chunk 1 \(from row 10 of the stream\) holds "
                             r"1e-100 \(at index \(11, 2\)\)", "float32")
    x[1, 2] = 1e-40  # a float32 subnormal: kept
    assert np.isfinite(space.project("a", x[:2])).all()


# ------------------------------------------------------------- other arguments


@pytest.mark.parametrize("seed", [-1, 1.5, "42", [1, 2], True, b"x",
                                  np.random.default_rng(0)])
def test_bad_seeds_are_named(seed):
    pattern = "seed must be an integer >= 0 or None"
    with pytest.raises(InvalidParameterError, match=pattern):
        latentspace.LatentSpace(3, seed=seed)


@pytest.mark.parametrize("seed", [None, 0, np.uint32(7), 2**100])
def test_good_seeds(seed):
    latentspace.LatentSpace(3, seed=seed).register("a", 2)


def test_index_references_must_be_a_mapping():
    space = build()
    with pytest.raises(InvalidParameterError, match="references must be a mapping"):
        space.index("b", XB, references=[XA])


def test_vectors_are_not_counted_as_items():
    from latentspace import metrics

    space = build()
    pattern = r"'a' must have shape \(n, 3\), got shape \(3,\)"
    with pytest.raises(ValueError, match=pattern):
        metrics.retrieval_ranks(space, "a", XA[0], "b", XB[0])
    with pytest.raises(ValueError, match=pattern):
        metrics.retrieval_scores(space, {"a": XA[0], "b": XB})


# ----------------------------------------- inputs changed by another thread mid-call


class _Racing:
    """An affine map raced by another thread: while it reads the caller's
    array, a row holds NaN, which is then taken back."""

    def __init__(self, affine_map, caller, row):
        self.map, self.W, self.calls = affine_map, affine_map.W, 0
        self.caller, self.row = caller, row

    def __call__(self, x, out=None):
        self.calls += 1
        if not (isinstance(x, np.ndarray) and np.shares_memory(x, self.caller)):
            return self.map(x, out)
        saved = self.caller[self.row].copy()
        self.caller[self.row] = np.nan
        try:
            return self.map(x, out)
        finally:
            self.caller[self.row] = saved


def test_an_input_changed_during_a_call_is_not_called_an_overflow():
    space = build()
    model = space._snapshot.models["a"]
    x = XA.copy()
    racing = _Racing(model.project, x, 2)
    space._snapshot = space._snapshot._replace(
        models={**space._snapshot.models, "a": model._replace(project=racing)})
    result = space.project("a", x)  # computed again, from a private copy
    assert racing.calls == 3
    assert np.array_equal(result, model.project(XA))


@pytest.mark.filterwarnings("ignore::latentspace.DimensionWarning")  # dim 4 > width 3
def test_training_data_changed_during_training_is_named():
    # (The minibatch solver reads the caller's arrays every epoch; sgd copies
    # them into one matrix first.)
    space = build()
    before = snapshot(space)
    xa = XA.copy()

    def callback(state):  # another thread, as it were, between two epochs
        xa[4, 1] = np.nan

    with pytest.raises(ValueError, match=r"data for model 'a' contains NaN or Inf "
                                         r"\(first in row 4\), which it did not when "
                                         r"training started"):
        space.train_projections({"a": xa, "b": XB}, solver="minibatch",
                                n_epochs=3, callback=callback)
    assert_unchanged(space, before)


def test_a_training_that_needs_no_iteration_has_a_final_loss(tmp_path, capsys):
    # Found by the long fuzz: one sample, L-BFGS-B from the closed form, whose
    # gradient is zero: no iteration ran, and final_loss raised IndexError
    # (so did `train` on the command line, which prints it).
    from latentspace.cli import main

    space = latentspace.LatentSpace(1, seed=0)
    space.register("a", 1)
    space.register("b", 1)
    x = np.array([[0.125]])
    result = space.train_projections({"a": x, "b": x}, solver="lbfgs", n_epochs=1,
                                     objective="reference", init="cca")
    assert result.n_epochs <= 1
    assert result.final_loss == result.initial_loss
    np.save(tmp_path / "x.npy", x)
    argv = ["train", str(tmp_path / "s.npz"), f"a={tmp_path / 'x.npy'}",
            f"b={tmp_path / 'x.npy'}", "--dim", "1", "--solver", "lbfgs",
            "--objective", "reference", "--init", "cca", "-q"]
    assert main(argv) == 0, capsys.readouterr().err
