# SPDX-License-Identifier: BSD-3-Clause
"""The scikit-learn estimator `latentspace.sklearn.SharedLatentSpace`."""

import dataclasses
import importlib
import pickle
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_validate  # noqa: E402

from latentspace import LatentSpace, ProjectionConfig  # noqa: E402
from latentspace.sklearn import (  # noqa: E402
    SharedLatentSpace,
    Views,
    retrieval_scorer,
)

CONFIG_FIELDS = [f.name for f in dataclasses.fields(ProjectionConfig)]


def _views(n=80, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, 4))
    views = []
    for width in (6, 9):
        X = items @ rng.normal(size=(4, width)) + 0.05 * rng.normal(size=(n, width))
        views.append(X / np.sqrt((X**2).sum(1).mean()))
    return views


# measured: mean top-1 0.9+ on the training items (chance 1/80)
FAST = dict(latent_dim=4, solver="sgd", n_epochs=60, learning_rate=0.05,
            alignment_weight=5.0)


def test_parameters_mirror_projection_config():
    params = SharedLatentSpace().get_params()
    for name in CONFIG_FIELDS:
        assert name in params
        if name != "latent_dim":
            assert params[name] == getattr(ProjectionConfig(), name)
    assert params["latent_dim"] == 16
    assert {"dtype", "seed", "method", "csls_k"} <= set(params)
    with pytest.raises(TypeError, match="unexpected parameter"):
        SharedLatentSpace(n_components=3)


def test_fit_equals_the_library():
    views = _views()
    model = SharedLatentSpace(**FAST).fit(views)
    space = LatentSpace(4, seed=42)
    space.register("view0", 6)
    space.register("view1", 9)
    options = {k: v for k, v in FAST.items() if k != "latent_dim"}
    result = space.train_projections(dict(zip(["view0", "view1"], views)), **options)
    assert model.view_names_ == ["view0", "view1"]
    assert model.n_views_ == 2 and model.n_features_ == [6, 9]
    assert model.loss_history_ == result.loss_history
    Z = model.transform(views)
    assert [z.shape for z in Z] == [(80, 4), (80, 4)]
    np.testing.assert_array_equal(Z[0], space.project("view0", views[0]))
    np.testing.assert_array_equal(model.fit_transform(views)[1], Z[1])


def test_score_is_mean_top1_retrieval():
    views = _views()
    model = SharedLatentSpace(**FAST).fit(views)
    score = model.score(views)
    evaluation = model.space_.evaluate(dict(zip(model.view_names_, views)), k=1)
    assert score == pytest.approx(evaluation.mean("top1"))
    assert score > 0.5
    assert retrieval_scorer()(model, views) == score
    assert retrieval_scorer(k=5, method="cosine")(model, views) >= score - 0.2


def test_get_set_params_and_clone():
    model = SharedLatentSpace(latent_dim=3, n_epochs=7, method="cosine")
    assert model.set_params(n_epochs=9) is model and model.n_epochs == 9
    twin = clone(model)
    assert twin is not model and twin.get_params() == model.get_params()
    assert "n_epochs=9" in repr(model) and "latent_dim=3" in repr(model)
    fitted = model.fit(_views())
    assert not hasattr(clone(fitted), "space_")
    with pytest.raises(ValueError):
        model.set_params(n_components=2)


def test_fitted_estimator_pickles():
    views = _views()
    model = SharedLatentSpace(**FAST).fit(views)
    again = pickle.loads(pickle.dumps(model))
    for a, b in zip(model.transform(views), again.transform(views)):
        np.testing.assert_array_equal(a, b)


def test_grid_search_with_the_retrieval_scorer():
    views = _views(60)
    grid = GridSearchCV(
        SharedLatentSpace(**{**FAST, "n_epochs": 20}),
        {"alignment_weight": [0.0, 5.0]},
        scoring=retrieval_scorer(k=1),
        cv=KFold(3),
    ).fit(Views(views))
    # Without the alignment term the views are not aligned at all.
    assert grid.best_params_ == {"alignment_weight": 5.0}
    assert grid.best_score_ > 0.3
    assert isinstance(grid.best_estimator_.space_, LatentSpace)
    results = cross_validate(SharedLatentSpace(**FAST), Views(views), cv=KFold(2))
    assert len(results["test_score"]) == 2  # the estimator's own score


def test_views_split_by_rows():
    views = Views(_views(10))
    assert len(views) == 10 and views.shape == (10, 2)
    part = views[np.array([1, 3])]
    assert [v.shape for v in part.views] == [(2, 6), (2, 9)]
    assert len(views[np.array([1, 3]), ...]) == 2
    with pytest.raises(ValueError, match="same number of rows"):
        Views([np.ones((3, 2)), np.ones((4, 2))])


def test_errors():
    views = _views()
    with pytest.raises(NotFittedError):
        SharedLatentSpace().transform(views)
    with pytest.raises(ValueError, match="at least two views"):
        SharedLatentSpace().fit(views[:1])
    with pytest.raises(ValueError, match="list of arrays"):
        SharedLatentSpace().fit(np.ones((3, 4)))
    with pytest.raises(ValueError, match="learning_rate"):
        SharedLatentSpace(learning_rate=-1).fit(views)
    with pytest.raises(ValueError, match="method"):
        SharedLatentSpace(method="l2").fit(views)
    model = SharedLatentSpace(**FAST).fit(views)
    with pytest.raises(ValueError, match="expected 2 views"):
        model.transform(views + views)


def test_missing_scikit_learn_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.base", None)
    monkeypatch.delitem(sys.modules, "latentspace.sklearn")
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        importlib.import_module("latentspace.sklearn")
    monkeypatch.undo()
    importlib.import_module("latentspace.sklearn")
