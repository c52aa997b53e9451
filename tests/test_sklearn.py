# SPDX-License-Identifier: BSD-3-Clause
"""The scikit-learn estimator `latentspace.sklearn.SharedLatentSpace`."""

import dataclasses
import importlib
import inspect
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_validate  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import get_tags  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import latentspace  # noqa: E402
from latentspace import LatentSpace, ProjectionConfig  # noqa: E402
from latentspace.sklearn import (  # noqa: E402
    MultiViewInputTags,
    SharedLatentSpace,
    Views,
    retrieval_scorer,
)

CONFIG_FIELDS = [f.name for f in dataclasses.fields(ProjectionConfig)]
DEFAULT_SOLVER = ProjectionConfig().solver


def _views(n=80, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, 4))
    views = []
    for width in (6, 9):
        X = items @ rng.normal(size=(4, width)) + 0.05 * rng.normal(size=(n, width))
        views.append(X / np.sqrt((X**2).sum(1).mean()))
    return views


# measured: mean top-1 0.9+ on the training items (chance 1/80)
FAST = dict(
    latent_dim=4, solver="sgd", n_epochs=60, learning_rate=0.05, alignment_weight=5.0
)


# ------------------------------------------------------ scikit-learn's checks


def _expected_failed_checks(estimator):
    """Checks that cannot pass, with the reason."""
    if estimator.get_params()["solver"] != "sgd":
        return {}
    # Not a matter of multi-view input: these checks' data reach |x| = 100,
    # on which the reference optimiser at learning_rate=0.01 diverges.
    reason = (
        "the reference per-sample SGD diverges on features of magnitude 100 "
        "(fit raises TrainingDivergedError; scale the features)"
    )
    return {
        name: reason
        for name in ("check_fit_idempotent", "check_fit_check_is_fitted",
                     "check_n_features_in")
    }


# The default estimator, and one with the other of the two main solvers.
@parametrize_with_checks(
    [
        SharedLatentSpace(),
        SharedLatentSpace(solver="cca" if DEFAULT_SOLVER == "sgd" else "sgd"),
    ],
    expected_failed_checks=_expected_failed_checks,
    xfail_strict=True,
)
# The checks' data are a few columns wide, fewer than latent_dim=16 can fill:
# the DimensionWarning is right there (its own tests are in test_solvers.py).
@pytest.mark.filterwarnings("ignore::latentspace.DimensionWarning")
def test_scikit_learn_checks(estimator, check):
    check(estimator)


def test_array_api_check_with_scipy_array_api():
    # scikit-learn skips this check unless SCIPY_ARRAY_API=1 is set before
    # SciPy is imported: run it in a fresh interpreter.
    code = (
        "from sklearn.utils.estimator_checks import check_array_api_input\n"
        "from latentspace.sklearn import SharedLatentSpace\n"
        "check_array_api_input('SharedLatentSpace', SharedLatentSpace(solver='cca'),"
        " array_namespace='numpy', expect_only_array_outputs=False)\n"
        "print('passed')\n"
    )
    env = {**os.environ, "SCIPY_ARRAY_API": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "passed"


def test_tags_declare_multi_view_input_and_float32():
    tags = get_tags(SharedLatentSpace())
    assert isinstance(tags.input_tags, MultiViewInputTags)
    assert tags.input_tags.multi_view and tags.input_tags.two_d_array
    assert tags.transformer_tags.preserves_dtype == ["float64", "float32"]


# ------------------------------------------------------------- parameters


def test_parameters_mirror_projection_config():
    signature = inspect.signature(SharedLatentSpace)
    assert all(
        p.kind is not inspect.Parameter.VAR_KEYWORD
        for p in signature.parameters.values()
    )
    params = SharedLatentSpace().get_params()
    for name in CONFIG_FIELDS:
        assert name in params
        if name != "latent_dim":
            assert params[name] == getattr(ProjectionConfig(), name)
    assert params["latent_dim"] == 16
    assert {"view_widths", "random_state", "method", "csls_k"} <= set(params)
    assert set(params) == set(CONFIG_FIELDS) | {
        "view_widths", "random_state", "method", "csls_k"
    }
    with pytest.raises(TypeError, match="unexpected keyword"):
        SharedLatentSpace(n_components=3)
    with pytest.raises(TypeError, match="positional"):
        SharedLatentSpace(4, "cca")


def test_fit_equals_the_library():
    views = _views()
    model = SharedLatentSpace(**FAST, random_state=42).fit(views)
    space = LatentSpace(4, seed=42)
    space.register("view0", 6)
    space.register("view1", 9)
    options = {k: v for k, v in FAST.items() if k != "latent_dim"}
    result = space.train_projections(dict(zip(["view0", "view1"], views)), **options)
    assert model.view_names_ == ["view0", "view1"]
    assert model.n_views_ == 2 and model.view_widths_ == [6, 9]
    assert model.n_features_in_ == 15 and not hasattr(model, "feature_names_in_")
    assert model.loss_history_ == result.loss_history
    assert model.n_iter_ == result.n_epochs == 60
    Z = model.transform(views)
    assert [z.shape for z in Z] == [(80, 4), (80, 4)]
    np.testing.assert_array_equal(Z[0], space.project("view0", views[0]))
    np.testing.assert_array_equal(model.fit_transform(views)[1], Z[1])


def test_random_state():
    views = _views(30)
    fit = dict(FAST, n_epochs=2)
    a = SharedLatentSpace(**fit, random_state=3).fit(views).transform(views)
    b = SharedLatentSpace(**fit, random_state=3).fit(views).transform(views)
    c = SharedLatentSpace(**fit, random_state=4).fit(views).transform(views)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    # A RandomState draws the seed: the same state gives the same weights.
    d = SharedLatentSpace(**fit, random_state=np.random.RandomState(0)).fit(views)
    e = SharedLatentSpace(**fit, random_state=np.random.RandomState(0)).fit(views)
    np.testing.assert_array_equal(d.transform(views)[0], e.transform(views)[0])
    with pytest.raises(ValueError, match="cannot be used to seed"):
        SharedLatentSpace(random_state="x").fit(views)


# -------------------------------------------------------- the 2-D form of X


def test_a_2d_array_is_the_views_side_by_side():
    views = _views()
    X = np.hstack(views)
    listed = SharedLatentSpace(**FAST, random_state=0).fit(views)
    stacked = SharedLatentSpace(**FAST, random_state=0, view_widths=[6, 9]).fit(X)
    assert stacked.view_widths_ == [6, 9] and stacked.n_features_in_ == 15
    for name in ("view0", "view1"):
        for a, b in zip(listed.space_.weights(name), stacked.space_.weights(name)):
            np.testing.assert_array_equal(a, b)
    # One row per item: the mean of the views' latents.
    Z = stacked.transform(X)
    Z0, Z1 = stacked.transform(views)
    assert Z.shape == (80, 4)
    np.testing.assert_allclose(Z, (Z0 + Z1) / 2, rtol=0, atol=1e-15)
    # Either form transforms a space fitted on the other; the score too.
    np.testing.assert_array_equal(listed.transform(X), Z)
    assert stacked.score(X) == listed.score(views)
    # A plain list of rows is one 2-D array, not a list of views.
    np.testing.assert_array_equal(stacked.transform(X.tolist()), Z)


def test_default_view_widths_split_the_columns_in_two():
    rng = np.random.default_rng(0)
    model = SharedLatentSpace(2, solver="cca").fit(rng.normal(size=(30, 7)))
    assert model.view_widths_ == [4, 3] and model.n_features_in_ == 7
    three = SharedLatentSpace(2, solver="cca", view_widths=(2, 2, 3))
    assert three.fit(rng.normal(size=(30, 7))).n_views_ == 3


@pytest.mark.parametrize(
    "view_widths, match",
    [
        ([6, 8], "add up to 14 columns, but X has 15 features"),
        ([15], "at least two views"),
        ([6, 0, 9], "widths >= 1"),
        ([6.0, 9], "must hold integers"),
        (6, "a sequence of view widths"),
    ],
)
def test_bad_view_widths(view_widths, match):
    X = np.hstack(_views())
    with pytest.raises(ValueError, match=match):
        SharedLatentSpace(view_widths=view_widths).fit(X)


def test_view_widths_must_match_a_list_of_views():
    with pytest.raises(ValueError, match=r"view_widths=\[9, 6\], but the views"):
        SharedLatentSpace(view_widths=[9, 6]).fit(_views())
    SharedLatentSpace(**FAST, view_widths=[6, 9]).fit(_views())


def test_float32_in_float32_out():
    views = [v.astype(np.float32) for v in _views()]
    model = SharedLatentSpace(**FAST).fit(views)
    assert model.space_.dtype == np.float32
    assert all(z.dtype == np.float32 for z in model.transform(views))
    assert model.transform(np.hstack(views)).dtype == np.float32
    mixed = SharedLatentSpace(**FAST).fit([views[0], views[1].astype(np.float64)])
    assert mixed.space_.dtype == np.float64


def test_pipeline_with_a_scaler():
    views = _views()
    X = np.hstack(views)
    model = SharedLatentSpace(4, solver="cca", view_widths=[6, 9])
    pipe = make_pipeline(StandardScaler(), model).fit(X)
    scaled = StandardScaler().fit_transform(X)
    alone = SharedLatentSpace(4, solver="cca", view_widths=[6, 9]).fit(scaled)
    np.testing.assert_array_equal(pipe.transform(X), alone.transform(scaled))
    # A list of views cannot go through a scaler (scikit-learn's message).
    with pytest.raises(ValueError, match="inhomogeneous"):
        make_pipeline(StandardScaler(), SharedLatentSpace()).fit(views)


def test_set_output_pandas():
    pd = pytest.importorskip("pandas")
    views = _views()
    model = SharedLatentSpace(**FAST, random_state=0)
    model.set_output(transform="pandas").fit(views)
    Z = model.transform(views)
    assert [type(z) for z in Z] == [pd.DataFrame, pd.DataFrame]
    names = [f"sharedlatentspace{i}" for i in range(4)]
    assert list(Z[0].columns) == names
    frame = pd.DataFrame(np.hstack(views), index=np.arange(80) + 100)
    frame.columns = [f"f{i}" for i in range(15)]
    stacked = SharedLatentSpace(**FAST, random_state=0, view_widths=[6, 9]).set_output(
        transform="pandas"
    )
    out = stacked.fit_transform(frame)
    assert list(out.columns) == names and list(out.index) == list(frame.index)
    assert list(stacked.feature_names_in_) == list(frame.columns)
    np.testing.assert_allclose(
        out.to_numpy(), (Z[0].to_numpy() + Z[1].to_numpy()) / 2, atol=1e-12
    )


def test_convergence_warning_is_caught_by_scikit_learns_filters():
    views = _views()
    model = SharedLatentSpace(4, solver="lbfgs", n_epochs=2, tol=1e-12)
    with pytest.warns(SklearnConvergenceWarning, match="lbfgs") as record:
        model.fit(views)
    assert isinstance(record[0].message, latentspace.ConvergenceWarning)
    assert record[0].filename == __file__  # points at the caller's fit
    with warnings.catch_warnings():
        warnings.simplefilter("error", SklearnConvergenceWarning)
        with pytest.raises(SklearnConvergenceWarning):
            SharedLatentSpace(4, solver="lbfgs", n_epochs=2, tol=1e-12).fit(views)
        warnings.simplefilter("ignore", latentspace.ConvergenceWarning)
        SharedLatentSpace(4, solver="lbfgs", n_epochs=2, tol=1e-12).fit(views)


def test_score_is_mean_top1_retrieval():
    views = _views()
    # Seeded: from some random starts the SGD of FAST aligns these views less
    # (over 60 seeds the score ranged from 0.51 to above 0.9).
    model = SharedLatentSpace(**FAST, random_state=0).fit(views)
    score = model.score(views)
    evaluation = model.space_.evaluate(dict(zip(model.view_names_, views)), k=1)
    assert score == pytest.approx(evaluation.mean("top1"))
    assert score > 0.5
    assert retrieval_scorer()(model, views) == score
    assert retrieval_scorer(k=5, method="cosine")(model, views) >= score - 0.2


def test_get_set_params_and_clone():
    model = SharedLatentSpace(latent_dim=3, solver="sgd", n_epochs=7, method="cosine")
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
        SharedLatentSpace(**{**FAST, "n_epochs": 20}, random_state=0),
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
    with pytest.raises(ValueError, match="Expected 2D array"):
        SharedLatentSpace().fit(np.ones(4))
    with pytest.raises(ValueError, match="same number of rows"):
        SharedLatentSpace().fit([views[0], views[1][:-1]])
    with pytest.raises(ValueError, match="learning_rate"):
        SharedLatentSpace(learning_rate=-1).fit(views)
    with pytest.raises(ValueError, match="method"):
        SharedLatentSpace(method="l2").fit(views)
    model = SharedLatentSpace(**FAST).fit(views)
    with pytest.raises(ValueError, match="expected 2 views"):
        model.transform(views + views)
    with pytest.raises(ValueError, match=r"widths \[9, 6\], but .* widths \[6, 9\]"):
        model.transform(views[::-1])
    with pytest.raises(ValueError, match="X has 14 features, but"):
        model.transform(np.hstack(views)[:, 1:])
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        SharedLatentSpace(latent_dim=0).fit(views)


def test_missing_scikit_learn_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.base", None)
    monkeypatch.delitem(sys.modules, "latentspace.sklearn")
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        importlib.import_module("latentspace.sklearn")
    monkeypatch.undo()
    importlib.import_module("latentspace.sklearn")
