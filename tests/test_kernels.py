# SPDX-License-Identifier: BSD-3-Clause
"""The compiled kernels (`latentspace._kernels`) against the plain-NumPy oracle of
docs/maths.md (`reference`)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from reference import reference_loss, reference_sgd, xavier
from support import (
    DTYPES,
    MAP_TOL,
    WEIGHT_TOL,
    dtype_params,
    float64_weights,
    make_space,
    random_data,
)

import latentspace
from latentspace._kernels.affine import AffineMap

# id, model widths, latent dim k, samples n, epochs, learning rate, alignment weight
TRAINING_CASES = [
    ("basic", (3, 5), 4, 10, 3, 0.01, 1.0),
    ("one-wide-k1", (1, 1), 1, 5, 3, 0.01, 1.0),
    ("one-wide-and-k1", (1, 4), 1, 7, 2, 0.01, 1.0),
    ("k1-wide", (70, 1), 1, 6, 3, 0.001, 1.0),
    ("three-models", (6, 2, 3), 3, 9, 4, 0.01, 1.0),
    ("four-models", (4, 3, 2, 5), 2, 8, 3, 0.01, 0.5),
    ("n1", (3, 5), 4, 1, 3, 0.01, 1.0),
    ("n2", (3, 5), 4, 2, 3, 0.01, 1.0),
    ("n1-one-wide", (1, 2), 3, 1, 4, 0.05, 1.0),
    ("no-alignment", (4, 6), 3, 12, 3, 0.01, 0.0),
    ("heavy-alignment", (20, 30), 8, 30, 6, 0.005, 2.5),
    ("wider", (40, 30), 24, 20, 2, 0.002, 1.0),
    ("wider-n1", (40, 30), 24, 1, 3, 0.002, 1.0),
    ("wider-n2", (40, 30), 24, 2, 3, 0.002, 1.0),
    # Widths and k that are not multiples of the kernel's blocks of 4 rows and
    # of its vector lanes (4 float64, 8 float32), one narrower than a vector.
    ("odd-sizes", (45, 3, 27), 23, 15, 2, 0.002, 1.0),
    # Wide enough for BLAS in the look-ahead's start (sgd_prime).
    ("wide", (100, 70), 64, 12, 2, 0.001, 1.0),
    ("three-models-wide", (40, 90, 20), 32, 40, 3, 0.002, 1.5),
]


def _train_both(dtype, widths, k, n, epochs, lr, w, seed=0):
    """Train a space and the oracle from the same start; return both results."""
    space, names = make_space(k, widths, dtype=dtype, seed=7)
    # The oracle runs in float64 on exactly the values the space trains on.
    Xs = [X.astype(dtype) for X in random_data(widths, n, seed=seed)]
    P0, R0 = float64_weights(space, names)
    result = space.train_projections(
        dict(zip(names, Xs)), learning_rate=lr, n_epochs=epochs, alignment_weight=w,
        solver="sgd",
    )
    Xs64 = [X.astype(np.float64) for X in Xs]
    Ps, Rs = reference_sgd(Xs64, P0, R0, lr, epochs, w)
    return space, names, result, Xs64, Ps, Rs


def assert_trained_as_reference(space, names, Xs, P0, R0, dtype):
    """``space``'s weights of ``names`` are the oracle's after 3 epochs (the
    defaults' rate and weight) on ``Xs`` from ``P0``, ``R0``."""
    Ps, Rs = reference_sgd([X.astype(dtype).astype(float) for X in Xs],
                           P0, R0, 0.01, 3, 1.0)
    for name, P, R in zip(names, Ps, Rs):
        assert_allclose(space.weights(name)[0], P, **WEIGHT_TOL[dtype])
        assert_allclose(space.weights(name)[1], R, **WEIGHT_TOL[dtype])


@pytest.fixture(params=[True, False], ids=["avx", "baseline"])
def sgd_loops(request):
    """The SGD epoch's AVX loops, then its baseline ones."""
    from latentspace._kernels.sgd import sgd_avx

    if request.param and not sgd_avx():
        pytest.skip("this CPU has no AVX")
    before = sgd_avx()
    sgd_avx(request.param)
    yield
    sgd_avx(before)


@dtype_params
@pytest.mark.parametrize(
    "widths, k, n, epochs, lr, w",
    [case[1:] for case in TRAINING_CASES],
    ids=[case[0] for case in TRAINING_CASES],
)
def test_training_matches_reference_sgd(sgd_loops, dtype, widths, k, n, epochs, lr,
                                        w):
    space, names, _, _, Ps, Rs = _train_both(dtype, widths, k, n, epochs, lr, w)
    for name, P, R in zip(names, Ps, Rs):
        Pk, Rk = space.weights(name)
        assert Pk.dtype == dtype and Rk.dtype == dtype
        assert Pk.shape == P.shape and Rk.shape == R.shape
        assert_allclose(Pk, P, **WEIGHT_TOL[dtype], err_msg=f"P of {name}")
        assert_allclose(Rk, R, **WEIGHT_TOL[dtype], err_msg=f"R of {name}")
    # Training moved the weights: the comparison above is not between two
    # untouched initialisations.
    P0 = xavier(np.random.default_rng(7), widths[0], k, dtype)[0]
    assert not np.array_equal(space.weights(names[0])[0], P0)


@dtype_params
def test_training_leaves_models_outside_the_data_alone(dtype):
    space, names = make_space(3, (4, 2, 5), dtype=dtype)
    before = [np.array(w) for w in space.weights("m1")]
    X0, X2 = random_data((4, 5), 10, seed=3)
    P0, R0 = float64_weights(space, ["m0", "m2"])
    space.train_projections({"m2": X2, "m0": X0}, n_epochs=3, solver="sgd")
    P1, R1 = space.weights("m1")
    assert P1.tobytes() == before[0].tobytes() and R1.tobytes() == before[1].tobytes()
    assert_trained_as_reference(space, ["m0", "m2"], [X0, X2], P0, R0, dtype)


@dtype_params
def test_order_of_models_in_data_does_not_matter(dtype):
    widths = (3, 5, 2)
    Xs = random_data(widths, 15, seed=4)
    first, names = make_space(4, widths, dtype=dtype)
    second, _ = make_space(4, widths, dtype=dtype)
    first.train_projections(dict(zip(names, Xs)), n_epochs=4, solver="sgd")
    second.train_projections(dict(reversed(list(zip(names, Xs)))), n_epochs=4, solver="sgd")
    for name in names:
        for a, b in zip(first.weights(name), second.weights(name)):
            assert np.array_equal(a, b)


@dtype_params
def test_registration_order_matches_reference(dtype):
    """docs/maths.md §3: the order of models does not change the result. A space whose models
    were registered in the opposite order of the oracle's lists still matches it."""
    Xa, Xb = random_data((3, 5), 12, seed=5)
    forward = latentspace.LatentSpace(4, dtype=dtype)
    forward.register("a", 3)
    forward.register("b", 5)
    backward = latentspace.LatentSpace(4, dtype=dtype)
    backward.register("b", 5)
    backward.register("a", 3)
    for space in (forward, backward):
        P0, R0 = float64_weights(space, ["a", "b"])
        space.train_projections({"a": Xa, "b": Xb}, n_epochs=3, solver="sgd")
        assert_trained_as_reference(space, ["a", "b"], [Xa, Xb], P0, R0, dtype)


# ---------------------------------------------------------------- TrainingResult

LOSS_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


@dtype_params
@pytest.mark.parametrize("w", [1.0, 2.5])
def test_training_result(dtype, w):
    widths, k, n, epochs, lr = (3, 5, 2), 4, 10, 4, 0.02
    space, names = make_space(k, widths, dtype=dtype)
    Xs = [X.astype(dtype) for X in random_data(widths, n, seed=6)]
    Xs64 = [X.astype(np.float64) for X in Xs]
    P0, R0 = float64_weights(space, names)
    config = latentspace.ProjectionConfig(learning_rate=lr, n_epochs=epochs)
    result = space.train_projections(dict(zip(names, Xs)), config, alignment_weight=w, solver="sgd")

    assert isinstance(result, latentspace.TrainingResult)
    assert result.n_epochs == epochs
    assert len(result.loss_history) == epochs
    assert result.final_loss == result.loss_history[-1]
    assert result.seconds > 0
    assert result.config.learning_rate == lr
    assert result.config.n_epochs == epochs
    assert result.config.alignment_weight == w
    losses = (result.initial_loss, *result.loss_history)
    assert all(isinstance(v, float) for v in losses)

    rtol = LOSS_TOL[dtype]
    assert result.initial_loss == pytest.approx(
        reference_loss(Xs64, P0, R0, w), rel=rtol
    )
    # loss_history[i] is the loss of the weights after epoch i + 1: check all.
    for epoch in range(1, epochs + 1):
        Ps, Rs = reference_sgd(Xs64, P0, R0, lr, epoch, w)
        expected = reference_loss(Xs64, Ps, Rs, w)
        got = result.loss_history[epoch - 1]
        assert got == pytest.approx(expected, rel=rtol), epoch
    # ... and the last one is the loss of the published weights.
    assert result.final_loss == pytest.approx(
        space.loss(dict(zip(names, Xs)), alignment_weight=w), rel=1e-12
    )
    assert result.final_loss < result.initial_loss


def test_training_result_defaults():
    space, names = make_space(2, (2, 3))
    Xs = random_data((2, 3), 4, seed=1)
    result = space.train_projections(dict(zip(names, Xs)), solver="sgd")
    # The reference defaults: learning_rate 0.01, n_epochs 100, alignment_weight 1.
    assert result.config == latentspace.ProjectionConfig(solver="sgd")
    assert result.n_epochs == 100 and len(result.loss_history) == 100


def test_default_config_is_the_closed_form_with_go_sgd_settings():
    config = latentspace.ProjectionConfig()
    assert (config.solver, config.regularization, config.init) == ("cca", "auto", None)
    assert (config.learning_rate, config.n_epochs, config.alignment_weight) == (
        0.01, 100, 1.0
    )


def test_defaults_are_the_reference_defaults():
    space, names = make_space(2, (2, 3))
    twin, _ = make_space(2, (2, 3))
    Xs = random_data((2, 3), 4, seed=1)
    space.train_projections(dict(zip(names, Xs)), solver="sgd")
    twin.train_projections(
        dict(zip(names, Xs)), latentspace.ProjectionConfig(
            latent_dim=None, learning_rate=0.01, n_epochs=100, alignment_weight=1.0
        )
    , solver="sgd")
    P0, R0 = float64_weights(make_space(2, (2, 3))[0], names)
    Ps, Rs = reference_sgd(Xs, P0, R0, 0.01, 100, 1.0)
    for name, P, R in zip(names, Ps, Rs):
        assert np.array_equal(space.weights(name)[0], twin.weights(name)[0])
        assert_allclose(space.weights(name)[0], P, rtol=0, atol=1e-10)
        assert_allclose(space.weights(name)[1], R, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------- loss()


@dtype_params
@pytest.mark.parametrize("w", [0.0, 1.0, 3.5])
@pytest.mark.parametrize("subset", [("m0",), ("m0", "m2"), ("m0", "m1", "m2")])
def test_loss_matches_reference(dtype, w, subset):
    widths = (3, 5, 2)
    space, names = make_space(4, widths, dtype=dtype)
    Xs = random_data(widths, 9, seed=8)
    space.train_projections(dict(zip(names, Xs)), n_epochs=2, solver="sgd")
    data = {name: X for name, X in zip(names, Xs) if name in subset}
    Ps, Rs = float64_weights(space, list(data))
    expected = reference_loss(
        [X.astype(dtype).astype(np.float64) for X in data.values()], Ps, Rs, w
    )
    got = space.loss(data, alignment_weight=w)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=MAP_TOL[dtype]["rtol"])


def test_loss_default_alignment_weight_is_one():
    space, names = make_space(3, (2, 4))
    Xs = random_data((2, 4), 6, seed=2)
    data = dict(zip(names, Xs))
    assert space.loss(data) == space.loss(data, alignment_weight=1.0)
    assert space.loss(data) != space.loss(data, alignment_weight=0.0)


# ------------------------------------------------------- project / retrieve / translate


def _mapping_space(dtype, da, db, k):
    space, _ = make_space(k, (), dtype=dtype, seed=11)
    space.register("a", da)
    space.register("b", db)
    Xa, Xb = random_data((da, db), 8, seed=9)
    space.train_projections({"a": Xa, "b": Xb}, n_epochs=2, learning_rate=0.001, solver="sgd")
    return space


MAP_SHAPES = [(3, 5, 4), (1, 1, 1), (1, 6, 2), (100, 70, 64)]


@dtype_params
@pytest.mark.parametrize("da, db, k", MAP_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("n", [None, 0, 1, 7], ids=lambda n: f"n={n}")
def test_maps_match_numpy(dtype, da, db, k, n):
    space = _mapping_space(dtype, da, db, k)
    rng = np.random.default_rng(12)
    shape = (lambda d: (d,)) if n is None else (lambda d: (n, d))
    x = rng.standard_normal(shape(da)).astype(dtype)
    z = rng.standard_normal(shape(k)).astype(dtype)
    Pa, Ra = float64_weights(space, ["a"])
    Pb, Rb = float64_weights(space, ["b"])
    x64, z64 = x.astype(np.float64), z.astype(np.float64)
    tol = MAP_TOL[dtype]

    latent = space.project("a", x)
    assert latent.dtype == dtype and latent.shape == shape(k)
    assert_allclose(latent, x64 @ Pa[0], **tol)

    back = space.retrieve("b", z)
    assert back.dtype == dtype and back.shape == shape(db)
    assert_allclose(back, z64 @ Rb[0], **tol)

    translated = space.translate("a", "b", x)
    assert translated.dtype == dtype and translated.shape == shape(db)
    # Exactly retrieve(project(...)), and close to the NumPy product.
    assert np.array_equal(translated, space.retrieve("b", latent))
    assert_allclose(translated, (x64 @ Pa[0]) @ Rb[0], **tol)
    # A round trip through the same model.
    assert_allclose(space.translate("a", "a", x), (x64 @ Pa[0]) @ Ra[0], **tol)


def _unaligned(values, dtype):
    """A C-contiguous, native, but misaligned copy of ``values``."""
    dtype = np.dtype(dtype)
    size = np.size(values) * dtype.itemsize
    out = np.ndarray(np.shape(values), dtype, buffer=bytearray(size + 1), offset=1)
    out[...] = values
    assert out.flags.c_contiguous and not out.flags.aligned
    return out


def _read_only(values, dtype):
    out = np.array(values, dtype=dtype)
    out.flags.writeable = False
    return out


# Ways to hold the same (integer) values: each must give the same answers.
LAYOUTS = {
    "list": lambda v: v.tolist(),
    "int64": lambda v: v.astype(np.int64),
    "int32": lambda v: v.astype(np.int32),
    "float64": lambda v: v.astype(np.float64),
    "float32": lambda v: v.astype(np.float32),
    "fortran": lambda v: np.asfortranarray(v, dtype=np.float64),
    "fortran-float32": lambda v: np.asfortranarray(v, dtype=np.float32),
    "transposed": lambda v: np.ascontiguousarray(v.T).T,
    "strided-columns": lambda v: np.repeat(v, 2, axis=-1)[..., ::2],
    "strided-rows": lambda v: np.repeat(v, 2, axis=0)[::2],
    "negative-strides": lambda v: np.ascontiguousarray(v[..., ::-1])[..., ::-1],
    "big-endian": lambda v: v.astype(">f8"),
    "big-endian-float32": lambda v: v.astype(">f4"),
    "unaligned-float64": lambda v: _unaligned(v, np.float64),
    "unaligned-float32": lambda v: _unaligned(v, np.float32),
    "read-only": lambda v: _read_only(v, np.float64),
    "read-only-float32": lambda v: _read_only(v, np.float32),
}


@dtype_params
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("batch", [False, True], ids=["vector", "batch"])
@pytest.mark.parametrize("width", [1, 70])
def test_input_layouts_give_identical_results(dtype, layout, batch, width):
    space, _ = make_space(4, (), dtype=dtype)
    space.register("a", width)
    space.register("b", 5)
    rng = np.random.default_rng(13)
    shape = (6, width) if batch else (width,)
    base = rng.integers(-5, 6, size=shape).astype(np.float64)
    zbase = rng.integers(-5, 6, size=shape[:-1] + (4,)).astype(np.float64)
    # The canonical input: C-contiguous, the space's dtype.
    canonical = np.ascontiguousarray(base, dtype=dtype)
    zcanonical = np.ascontiguousarray(zbase, dtype=dtype)
    expected = {
        "project": space.project("a", canonical),
        "translate": space.translate("a", "b", canonical),
        "retrieve": space.retrieve("a", zcanonical),
    }
    x, z = LAYOUTS[layout](base), LAYOUTS[layout](zbase)
    x_copy, z_copy = np.array(x, copy=True), np.array(z, copy=True)
    for op, result in (
        ("project", space.project("a", x)),
        ("translate", space.translate("a", "b", x)),
        ("retrieve", space.retrieve("a", z)),
    ):
        assert result.dtype == dtype, op
        assert np.array_equal(result, expected[op]), op
    assert np.array_equal(np.asarray(x), x_copy), "features were modified"
    assert np.array_equal(np.asarray(z), z_copy), "latent was modified"


@dtype_params
def test_other_float_precision_is_converted_to_the_space_dtype(dtype):
    """Non-integer input of the other precision: converted first, then mapped."""
    space = _mapping_space(dtype, 3, 5, 4)
    other = np.float32 if dtype == np.float64 else np.float64
    x = np.random.default_rng(14).standard_normal((5, 3)).astype(other)
    got = space.project("a", x)
    assert got.dtype == dtype
    assert np.array_equal(got, space.project("a", x.astype(dtype)))
    got = space.translate("a", "b", x[0])
    assert got.dtype == dtype
    assert np.array_equal(got, space.translate("a", "b", x[0].astype(dtype)))


@dtype_params
def test_training_and_loss_accept_layouts_and_do_not_modify_data(dtype):
    widths = (3, 5)
    # float32-representable values, so that both precisions hold them exactly.
    base = [X.astype(np.float32) for X in random_data(widths, 10, seed=15)]
    variants = {
        "c": lambda X: X.astype(dtype),
        "float32": lambda X: X.astype(np.float32),
        "float64": lambda X: X.astype(np.float64),
        "fortran": lambda X: np.asfortranarray(X, dtype=dtype),
        "strided": lambda X: np.repeat(X, 2, axis=1)[:, ::2],
        "transposed": lambda X: np.ascontiguousarray(X.T).T,
        "list": lambda X: X.tolist(),
        "unaligned": lambda X: _unaligned(X, dtype),
    }
    results = []
    for what, make in variants.items():
        data = {f"m{i}": make(X) for i, X in enumerate(base)}
        for X in data.values():
            if isinstance(X, np.ndarray):
                X.flags.writeable = False  # read-only input is accepted
        copies = {name: np.array(X, copy=True) for name, X in data.items()}
        space, names = make_space(4, widths, dtype=dtype)
        loss = space.loss(data)
        space.train_projections(data, n_epochs=2, solver="sgd")
        weights = [np.array(w) for n in names for w in space.weights(n)]
        results.append((what, loss, weights))
        for name, X in data.items():
            assert np.array_equal(np.asarray(X), copies[name]), (what, name)
    _, loss0, weights0 = results[0]
    for what, loss, weights in results[1:]:
        assert loss == loss0, what
        for a, b in zip(weights, weights0):
            assert a.dtype == dtype
            assert np.array_equal(a, b), what


@dtype_params
def test_integer_training_data(dtype):
    widths = (3, 5)
    rng = np.random.default_rng(16)
    ints = [rng.integers(-2, 3, size=(6, d)) for d in widths]
    first, names = make_space(4, widths, dtype=dtype)
    second, _ = make_space(4, widths, dtype=dtype)
    first.train_projections(dict(zip(names, ints)), n_epochs=2, learning_rate=0.005, solver="sgd")
    second.train_projections(
        dict(zip(names, [X.astype(dtype) for X in ints])), n_epochs=2,
        learning_rate=0.005, solver="sgd",
    )
    for name in names:
        for a, b in zip(first.weights(name), second.weights(name)):
            assert a.dtype == dtype and np.array_equal(a, b)


@dtype_params
def test_weights_are_read_only_and_in_the_space_dtype(dtype):
    space, names = make_space(4, (3, 5), dtype=dtype)
    P, R = space.weights("m0")
    assert P.shape == (3, 4) and R.shape == (4, 3)
    assert P.dtype == dtype and R.dtype == dtype
    assert not P.flags.writeable and not R.flags.writeable
    with pytest.raises(ValueError):
        P[0, 0] = 1.0
    space.train_projections(dict(zip(names, random_data((3, 5), 4))), n_epochs=1, solver="sgd")
    P, R = space.weights("m0")
    assert P.dtype == dtype and R.dtype == dtype
    assert not P.flags.writeable and not R.flags.writeable


# ------------------------------------------------------------------ initialisation

REGISTRATIONS = [("a", 3), ("b", 1), ("c", 17), ("d", 64), ("e", 2)]


@dtype_params
@pytest.mark.parametrize("seed", [0, 42, 2024])
@pytest.mark.parametrize("k", [1, 5, 32])
def test_xavier_initialisation_is_the_reference(dtype, seed, k):
    space = latentspace.LatentSpace(k, dtype=dtype, seed=seed)
    for name, d in REGISTRATIONS:
        space.register(name, d)
    rng = np.random.default_rng(seed)
    for name, d in REGISTRATIONS:
        P, R = xavier(rng, d, k, dtype)
        Pk, Rk = space.weights(name)
        assert Pk.dtype == dtype and Rk.dtype == dtype
        assert Pk.shape == (d, k) and Rk.shape == (k, d)
        assert Pk.tobytes() == P.tobytes(), name
        assert Rk.tobytes() == R.tobytes(), name


@dtype_params
def test_default_seed_is_42(dtype):
    default = latentspace.LatentSpace(6, dtype=dtype)
    explicit = latentspace.LatentSpace(6, dtype=dtype, seed=42)
    other = latentspace.LatentSpace(6, dtype=dtype, seed=43)
    for space in (default, explicit, other):
        space.register("a", 4)
        space.register("b", 9)
    rng = np.random.default_rng(42)
    for name, d in (("a", 4), ("b", 9)):
        P, R = xavier(rng, d, 6, dtype)
        assert np.array_equal(default.weights(name)[0], P)
        assert np.array_equal(default.weights(name)[1], R)
        assert np.array_equal(default.weights(name)[0], explicit.weights(name)[0])
        assert not np.array_equal(default.weights(name)[0], other.weights(name)[0])


@dtype_params
def test_same_seed_and_registrations_give_identical_spaces(dtype):
    widths = (3, 5, 2)
    Xs = random_data(widths, 12, seed=17)
    spaces = [make_space(4, widths, dtype=dtype, seed=5) for _ in range(2)]
    for space, names in spaces:
        for name in names:
            for a, b in zip(space.weights(name), spaces[0][0].weights(name)):
                assert a.tobytes() == b.tobytes()
    # Training is deterministic too.
    for space, names in spaces:
        space.train_projections(dict(zip(names, Xs)), n_epochs=3, solver="sgd")
    for name in spaces[0][1]:
        for a, b in zip(spaces[0][0].weights(name), spaces[1][0].weights(name)):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_registration_after_training_continues_the_generator(dtype):
    """Training at the space's own size draws nothing from the generator."""
    space, names = make_space(4, (3, 5), dtype=dtype, seed=3)
    space.train_projections(dict(zip(names, random_data((3, 5), 5))), n_epochs=2, solver="sgd")
    space.register("late", 6)
    rng = np.random.default_rng(3)
    xavier(rng, 3, 4, dtype)
    xavier(rng, 5, 4, dtype)
    P, R = xavier(rng, 6, 4, dtype)
    assert np.array_equal(space.weights("late")[0], P)
    assert np.array_equal(space.weights("late")[1], R)


# (p, q) of x @ W around the kernel's thresholds: 64 entries (plain loop below,
# BLAS from there on) and blocks of 8192 entries (one-vector products are
# streamed through BLAS in blocks of rows: exactly one block, one more row, a
# last block of one row, rows wider than a block).
THRESHOLD_SHAPES = [
    (7, 9), (8, 8), (5, 13), (128, 64), (129, 64), (8193, 1), (2, 9000), (384, 64),
]


def _map_tol(dtype, terms):
    """Absolute tolerance against float64 NumPy of sums of ``terms`` products
    of values of about unit size, computed in ``dtype``."""
    eps = 1e-12 if dtype == np.float64 else 2e-6
    return {"rtol": 0, "atol": 4 * eps * np.sqrt(terms)}


@dtype_params
@pytest.mark.parametrize("p, q", THRESHOLD_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("n", [None, 1, 2, 3], ids=lambda n: f"n={n}")
@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shift"])
def test_affine_map_around_thresholds(dtype, p, q, n, shifted):
    rng = np.random.default_rng(p * q)
    W = rng.standard_normal((p, q)).astype(dtype)
    shift = rng.standard_normal(q).astype(dtype) if shifted else None
    affine_map = AffineMap(W, shift)
    x = rng.standard_normal((p,) if n is None else (n, p)).astype(dtype)
    expected = x.astype(np.float64) @ W.astype(np.float64)
    if shifted:
        expected += shift
    result = affine_map(x)
    assert result.dtype == dtype and result.shape == expected.shape
    assert_allclose(result, expected, **_map_tol(dtype, p))
    out = np.full(expected.shape, np.nan, dtype)
    assert affine_map(x, out) is out
    assert np.array_equal(out, result)
    # A non-finite entry anywhere gives None (the caller explains).
    x[..., p // 2] = np.inf
    assert affine_map(x) is None


@dtype_params
@pytest.mark.parametrize("d, k", [(129, 64), (2, 9000), (8193, 1)], ids=str)
def test_project_and_retrieve_of_blocked_sizes(dtype, d, k):
    space, _ = make_space(k, (d,), dtype=dtype)
    P, R = float64_weights(space, ["m0"])
    rng = np.random.default_rng(5)
    for shape in [(d,), (1, d), (4, d)]:
        x = rng.standard_normal(shape).astype(dtype)
        latent = space.project("m0", x)
        assert_allclose(latent, x.astype(np.float64) @ P[0], **_map_tol(dtype, d))
        out = np.empty(latent.shape, dtype)
        assert space.project("m0", x, out=out) is out
        assert np.array_equal(out, latent)
        back = space.retrieve("m0", latent)
        assert_allclose(
            back, latent.astype(np.float64) @ R[0], **_map_tol(dtype, k)
        )
        bad = x.copy()
        bad[..., -1] = np.nan
        with pytest.raises(ValueError, match="contains NaN or Inf"):
            space.project("m0", bad)


def test_training_cases_cover_the_blocks_of_the_epoch_kernel():
    """Whole and partial blocks of 4 rows, and of vector lanes (4 float64,
    8 float32), and widths narrower than a vector."""
    ks = [k for _, _, k, *_ in TRAINING_CASES]
    widths = [d for _, w, *_ in TRAINING_CASES for d in w]
    assert any(k % 4 == 0 for k in ks) and any(k % 4 and k > 4 for k in ks)
    for lanes in (4, 8):
        assert any(d % lanes == 0 for d in widths)
        assert any(d % lanes and d > lanes for d in widths)
        assert any(d < lanes for d in widths)
