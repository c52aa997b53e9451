# SPDX-License-Identifier: BSD-3-Clause
"""A scikit-learn estimator over `LatentSpace`: `SharedLatentSpace`.

Multi-view data follows cca-zoo's convention: ``views`` is a list of arrays,
one per model, whose row ``i`` describes the same item::

    from latentspace.sklearn import SharedLatentSpace, Views, retrieval_scorer
    from sklearn.model_selection import GridSearchCV

    model = SharedLatentSpace(latent_dim=16, n_epochs=50).fit([X_text, X_image])
    Z_text, Z_image = model.transform([X_text, X_image])
    model.score([X_text_test, X_image_test])     # mean top-1 retrieval

    # Model selection: wrap the views in `Views` so that scikit-learn can
    # split them by rows (a plain list would be split by view).
    search = GridSearchCV(
        SharedLatentSpace(), {"latent_dim": [8, 16], "alignment_weight": [1, 5]},
        scoring=retrieval_scorer(k=1),
    ).fit(Views([X_text, X_image]))

scikit-learn is an optional dependency: importing this module without it
raises an ImportError that says how to install it.
"""

import dataclasses
import inspect

import numpy as np

try:
    from sklearn.base import BaseEstimator
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:  # pragma: no cover - tested by monkeypatching
    raise ImportError(
        "latentspace.sklearn needs scikit-learn (an optional dependency): "
        'pip install scikit-learn, or pip install "latentspace[demo]"'
    ) from exc

from . import metrics
from ._config import ProjectionConfig
from ._exceptions import InvalidParameterError
from ._search import check_method
from ._space import LatentSpace

__all__ = ["SharedLatentSpace", "Views", "retrieval_scorer"]

# The estimator's own parameters (not ProjectionConfig fields), with defaults.
_OWN_PARAMS = {"dtype": "float64", "seed": 42, "method": "csls", "csls_k": 10}
_LATENT_DIM = 16  # ProjectionConfig's latent_dim=None means "the space's"


def _config_defaults():
    """ProjectionConfig's fields and defaults, in order, latent_dim first."""
    defaults = {"latent_dim": _LATENT_DIM}
    for field in dataclasses.fields(ProjectionConfig):
        if field.name != "latent_dim":
            defaults[field.name] = field.default
    return defaults


class Views:
    """Aligned views as one object that model selection can split by rows.

    ``Views([X1, X2])[rows]`` is ``Views([X1[rows], X2[rows]])``; ``len``
    and ``shape[0]`` are the number of items. Pass it where scikit-learn
    expects ``X`` (``GridSearchCV.fit``, ``cross_validate``).

    Parameters
    ----------
    views : sequence of array-like of shape (n, d_m)
    """

    def __init__(self, views):
        if isinstance(views, Views):
            views = views.views
        self.views = [np.asarray(view) for view in views]
        counts = {len(view) for view in self.views}
        if len(counts) > 1:
            raise InvalidParameterError(
                "views must have the same number of rows (aligned items), got "
                + ", ".join(str(len(view)) for view in self.views)
            )

    @property
    def shape(self):
        return (len(self), len(self.views))

    def __len__(self):
        return len(self.views[0]) if self.views else 0

    def __getitem__(self, rows):
        if isinstance(rows, tuple):  # scikit-learn indexes as X[rows, ...]
            rows = rows[0]
        return Views([view[rows] for view in self.views])

    def __repr__(self):
        widths = ", ".join(str(view.shape[1:]) for view in self.views)
        return f"Views(n={len(self)}, views=[{widths}])"


def _as_views(views):
    if isinstance(views, Views):
        return views.views
    if isinstance(views, np.ndarray) or not isinstance(views, (list, tuple)):
        raise InvalidParameterError(
            "views must be a list of arrays, one per model (row i of every "
            f"array is item i), or a Views; got {type(views).__name__}"
        )
    return list(views)


class SharedLatentSpace(BaseEstimator):
    """Learn one latent space shared by several views (models) of the same items.

    A scikit-learn estimator around `LatentSpace`: ``fit`` registers one model
    per view (``"view0"``, ``"view1"``, ...) and trains them with
    `LatentSpace.train_projections`; ``transform`` projects every view into
    the space.

    Parameters
    ----------
    latent_dim : int, default=16
        Dimension of the shared space.
    **training parameters
        Every field of `ProjectionConfig` of the installed latentspace, with
        its default (``learning_rate``, ``n_epochs``, ``alignment_weight``
        and, where available, ``solver``, ``init``, ``tol``, ...), passed
        to `LatentSpace.train_projections`. ``get_params()`` lists them.
    dtype : {"float64", "float32"}, default="float64"
    seed : int or None, default=42
        Seed of the space's initial weights.
    method : {"csls", "cosine"}, default="csls"
        Search method of `score` (see `LatentSpace.search`).
    csls_k : int, default=10

    Attributes
    ----------
    space_ : LatentSpace
        The trained space; its models are ``view_names_``.
    view_names_ : list of str
    n_views_ : int
    n_features_ : list of int
        Width of every view.
    training_result_ : TrainingResult
    loss_history_ : tuple of float

    Notes
    -----
    scikit-learn's ``check_estimator`` assumes a single 2-D ``X`` and does
    not apply to multi-view input.
    """

    def __init__(self, **params):
        defaults = {**_config_defaults(), **_OWN_PARAMS}
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise TypeError(
                f"SharedLatentSpace got unexpected parameter(s) "
                f"{', '.join(map(repr, unknown))}; its parameters are "
                f"{', '.join(defaults)}"
            )
        for name, default in defaults.items():
            setattr(self, name, params.get(name, default))

    # -------------------------------------------------------------- fitting

    def _training_options(self):
        return {
            name: getattr(self, name)
            for name in _config_defaults()
            if name != "latent_dim"
        }

    def _data(self, views, fitted):
        views = _as_views(views)
        if fitted:
            if len(views) != self.n_views_:
                raise InvalidParameterError(
                    f"expected {self.n_views_} views (as in fit), got {len(views)}"
                )
            names = self.view_names_
        else:
            if len(views) < 2:
                raise InvalidParameterError(
                    f"fit needs at least two views, got {len(views)}"
                )
            names = [f"view{i}" for i in range(len(views))]
        return dict(zip(names, views))

    def fit(self, views, y=None):
        """Train the shared space on aligned ``views``.

        Parameters
        ----------
        views : list of array-like of shape (n, d_m), or Views
            At least two views; row ``i`` of every view is item ``i``.
        y : ignored

        Returns
        -------
        self
        """
        check_method(self.method)
        data = self._data(views, fitted=False)
        space = LatentSpace(self.latent_dim, dtype=self.dtype, seed=self.seed)
        for name, view in data.items():
            shape = np.shape(view)
            if len(shape) != 2:
                raise InvalidParameterError(
                    f"every view must be a 2-D array, got shape {shape} for {name}"
                )
            space.register(name, shape[1])
        result = space.train_projections(data, **self._training_options())
        self.space_ = space
        self.view_names_ = list(data)
        self.n_views_ = len(data)
        self.n_features_ = [space.models[name] for name in data]
        self.training_result_ = result
        self.loss_history_ = result.loss_history
        return self

    def transform(self, views):
        """Project every view into the shared space.

        Parameters
        ----------
        views : list of array-like of shape (n, d_m), or Views

        Returns
        -------
        list of ndarray of shape (n, latent_dim)
        """
        check_is_fitted(self, "space_")
        data = self._data(views, fitted=True)
        return [self.space_.project(name, view) for name, view in data.items()]

    def fit_transform(self, views, y=None):
        """``fit(views).transform(views)``."""
        return self.fit(views, y).transform(views)

    def score(self, views, y=None):
        """Mean top-1 cross-model retrieval accuracy over all ordered pairs.

        For every ordered pair of views ``A -> B`` and every item, is the same
        item the best match (by ``method``) among all items of ``B``? Higher
        is better; chance is ``1 / n``.

        Parameters
        ----------
        views : list of array-like of shape (n, d_m), or Views
        y : ignored

        Returns
        -------
        float
        """
        return _mean_top_k(self, views, 1, None)


# Let scikit-learn (get_params, clone, repr) see the parameters: the
# signature is built from ProjectionConfig's fields, so that new training
# options are available without changes here.
SharedLatentSpace.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in {**_config_defaults(), **_OWN_PARAMS}.items()
    ]
)


def _mean_top_k(estimator, views, k, method):
    check_is_fitted(estimator, "space_")
    data = estimator._data(views, fitted=True)
    scores = metrics.retrieval_scores(
        estimator.space_,
        data,
        k=k,
        method=estimator.method if method is None else method,
        csls_k=estimator.csls_k,
    )
    return float(np.mean([value[f"top{k}"] for value in scores.values()]))


def retrieval_scorer(k=1, method=None):
    """A scorer for model selection: mean top-``k`` retrieval over all pairs.

    Parameters
    ----------
    k : int, default=1
    method : {"csls", "cosine"} or None, default=None
        None: the estimator's ``method``.

    Returns
    -------
    callable
        ``scorer(estimator, views, y=None) -> float``, for ``scoring=`` of
        `GridSearchCV` or `cross_validate`.
    """
    if method is not None:
        check_method(method)

    def scorer(estimator, views, y=None):
        return _mean_top_k(estimator, views, k, method)

    scorer.__name__ = f"retrieval_top{k}"
    return scorer
