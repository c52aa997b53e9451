# SPDX-License-Identifier: BSD-3-Clause
"""The training configuration (`ProjectionConfig`, `TrainingResult`): allowed
values and their messages, the solver names, the result's fields."""

import math
import warnings

import pytest
from support import assert_unchanged, correlated, make_space, snapshot

from latentspace import InvalidParameterError, ProjectionConfig, TrainingResult


BAD_CONFIG = [
    ({"solver": "adam"}, "solver must be one of 'cca', 'sgd', 'minibatch', 'lbfgs'"),
    ({"solver": None}, "solver must be one of"),
    ({"objective": "mse"}, "objective must be one of 'reference', 'whitened' or None"),
    ({"init": "xavier"}, "init must be one of 'current', 'cca' or None"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"batch_size": 2.0}, "batch_size must be an integer"),
    ({"regularization": -0.1}, "regularization must be 'auto' or a finite number >= 0"),
    ({"regularization": math.inf}, "regularization must be 'auto' or a finite"),
    ({"regularization": "automatic"}, "regularization must be one of 'auto'"),
    ({"tol": -1e-9}, "tol must be finite and >= 0"),
    ({"tol": "small"}, "tol must be a real number"),
    ({"callback": 3}, "callback must be a callable or None"),
    ({"progress": "yes"}, "progress must be True or False"),
]


@pytest.mark.parametrize("overrides, match", BAD_CONFIG)
def test_config_values_out_of_range(overrides, match):
    with pytest.raises(InvalidParameterError, match=match):
        ProjectionConfig(**overrides)
    space, names = make_space(3, (6, 5))
    before = snapshot(space)
    with pytest.raises(InvalidParameterError, match=match):
        space.train_projections(dict(zip(names, correlated((6, 5), 10))), **overrides)
    assert_unchanged(space, before)


def test_solver_names_come_from_the_registry():
    from latentspace._training.solvers import SOLVERS

    for name, solver in SOLVERS.items():
        assert ProjectionConfig(solver=name).solver == name
        assert solver.needs in ("samples", "statistics")
        assert solver.objective in ("reference", "whitened")
        assert callable(solver.run)


def test_result_defaults_keep_the_old_fields():
    Xs = correlated((3, 2), 10, seed=29)
    space, names = make_space(2, (3, 2))
    result = space.train_projections(dict(zip(names, Xs)), solver="sgd", n_epochs=2)
    assert result.config == ProjectionConfig(solver="sgd", n_epochs=2)
    assert result.final_loss == result.loss_history[-1]
    assert result.iterations == result.n_epochs == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainingResult(1, 0.0, (0.0,), 0.1, ProjectionConfig())
