# SPDX-License-Identifier: BSD-3-Clause
"""A scikit-learn estimator over `LatentSpace`: `SharedLatentSpace`.

Multi-view input
----------------
Row ``i`` of every view describes item ``i``. ``X`` is given in one of two
equivalent forms:

- **a list of views** (cca-zoo's convention): ``[X_text, X_image]``, arrays
  of shapes ``(n, d_0)``, ``(n, d_1)``, ...; ``transform`` returns the list
  of every view's latents, shapes ``(n, latent_dim)``;
- **one 2-D array**, the views side by side (``np.hstack([X_text,
  X_image])``), which is what scikit-learn's pipelines, scalers and
  model-selection tools pass: the parameter ``view_widths`` says how many
  columns each view has (by default the columns are split into two views of
  equal width). ``transform`` returns one row per item, the item's position
  in the shared space: the mean of its views' latents (the consensus that
  training pulls every view towards), shape ``(n, latent_dim)``.

A space fitted on one form transforms the other. ``n_features_in_`` counts the
columns of the 2-D form (the sum of the view widths) and ``view_widths_``
holds every view's width. ::

    from latentspace.sklearn import SharedLatentSpace, Views, retrieval_scorer
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = SharedLatentSpace(latent_dim=16).fit([X_text, X_image])
    Z_text, Z_image = model.transform([X_text, X_image])
    model.score([X_text_test, X_image_test])     # mean top-1 retrieval

    # In a pipeline: one array, the views side by side.
    X = np.hstack([X_text, X_image])
    pipe = make_pipeline(
        StandardScaler(), SharedLatentSpace(16, view_widths=[384, 768])
    ).fit(X)
    Z = pipe.transform(X)                           # (n, 16): the consensus

    # Model selection on a list of views: wrap it in `Views` so that
    # scikit-learn splits it by rows (a plain list would be split by view).
    search = GridSearchCV(
        SharedLatentSpace(), {"latent_dim": [8, 16], "alignment_weight": [1, 5]},
        scoring=retrieval_scorer(k=1),
    ).fit(Views([X_text, X_image]))

The estimator declares this input in its tags: ``get_tags(estimator)
.input_tags`` is a `MultiViewInputTags` with ``multi_view=True``.

scikit-learn is an optional dependency: importing this module without it
raises an ImportError that says how to install it.
"""

import dataclasses
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

try:
    from sklearn.base import (
        BaseEstimator,
        ClassNamePrefixFeaturesOutMixin,
        TransformerMixin,
    )
    from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning
    from sklearn.utils import InputTags
    from sklearn.utils._set_output import _wrap_data_with_container
    from sklearn.utils.validation import (
        check_array,
        check_is_fitted,
        check_random_state,
        validate_data,
    )
except ImportError as exc:  # pragma: no cover - tested by monkeypatching
    raise ImportError(
        "latentspace.sklearn needs scikit-learn >= 1.6 (an optional dependency): "
        'pip install scikit-learn, or pip install "latentspace[demo]"'
    ) from exc

from . import _exceptions, metrics
from ._training.config import ProjectionConfig
from ._exceptions import InvalidParameterError
from ._search.scoring import check_method
from ._space import LatentSpace
from ._validation import check_dim

__all__ = [
    "ConvergenceWarning",
    "MultiViewInputTags",
    "SharedLatentSpace",
    "Views",
    "retrieval_scorer",
]

# ProjectionConfig's defaults: the estimator's training parameters follow the
# library's (latent_dim=None there means "the space's dimension").
_CONFIG = {f.name: f.default for f in dataclasses.fields(ProjectionConfig)}
_TRAINING = [name for name in _CONFIG if name != "latent_dim"]
_FLOATS = [np.float64, np.float32]


class ConvergenceWarning(_exceptions.ConvergenceWarning, _SklearnConvergenceWarning):
    """A solver ran out of iterations before meeting its ``tol``.

    Both a `latentspace.ConvergenceWarning` and a
    `sklearn.exceptions.ConvergenceWarning`: filters on either catch it.
    """


@dataclasses.dataclass(slots=True)
class MultiViewInputTags(InputTags):
    """scikit-learn's `InputTags` with one more tag.

    Attributes
    ----------
    multi_view : bool, default=True
        ``X`` may be a list of views (arrays with the same rows); a 2-D
        array holds the views side by side.
    """

    multi_view: bool = True


class Views:
    """Aligned views as one object that model selection can split by rows.

    ``Views([X1, X2])[rows]`` is ``Views([X1[rows], X2[rows]])``; ``len``
    and ``shape[0]`` are the number of items. Pass it where scikit-learn
    expects ``X`` (``GridSearchCV.fit``, ``cross_validate``).

    Parameters
    ----------
    views : sequence of array-like of shape (n, d_m)
    """

    def __init__(self, views: "Sequence[ArrayLike] | Views") -> None:
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
    def shape(self) -> tuple[int, int]:
        return (len(self), len(self.views))

    def __len__(self) -> int:
        return len(self.views[0]) if self.views else 0

    def __getitem__(self, rows: Any) -> "Views":
        if isinstance(rows, tuple):  # scikit-learn indexes as X[rows, ...]
            rows = rows[0]
        return Views([view[rows] for view in self.views])

    def __repr__(self) -> str:
        widths = ", ".join(str(view.shape[1:]) for view in self.views)
        return f"Views(n={len(self)}, views=[{widths}])"


def _view_list(X):
    """The views of ``X`` if it is a list of views (a `Views`, or a list or
    tuple of 2-D arrays), else None (``X`` is one array-like, perhaps a list
    of rows)."""
    if isinstance(X, Views):
        return X.views
    if isinstance(X, (list, tuple)) and X and all(np.ndim(x) == 2 for x in X):
        return list(X)
    return None


def _seed(random_state):
    """The space's seed for ``random_state`` (scikit-learn's convention)."""
    generator = check_random_state(random_state)  # refuses what it cannot use
    if random_state is None or isinstance(random_state, numbers.Integral):
        return random_state
    return int(generator.randint(np.iinfo(np.int32).max))


def _widths(view_widths, n_features):
    """The width of every view of a 2-D X with ``n_features`` columns."""
    if view_widths is None:  # two views of equal width, the first one wider
        return [n_features - n_features // 2, n_features // 2]
    if isinstance(view_widths, (str, bytes)) or not hasattr(view_widths, "__len__"):
        raise InvalidParameterError(
            "view_widths must be a sequence of view widths (positive integers) "
            f"or None, got {view_widths!r}"
        )
    widths = []
    for width in view_widths:
        if isinstance(width, bool) or not isinstance(width, numbers.Integral):
            raise InvalidParameterError(
                f"view_widths must hold integers, got {width!r} in {view_widths!r}"
            )
        if width < 1:
            raise InvalidParameterError(
                f"view_widths must hold widths >= 1, got {view_widths!r}"
            )
        widths.append(int(width))
    if len(widths) < 2:
        raise InvalidParameterError(
            f"view_widths must name at least two views, got {view_widths!r}"
        )
    if sum(widths) != n_features:
        raise InvalidParameterError(
            f"view_widths {widths} add up to {sum(widths)} columns, but X has "
            f"{n_features} features"
        )
    return widths


class SharedLatentSpace(
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    BaseEstimator,
    auto_wrap_output_keys=None,  # transform wraps its outputs itself (below)
):
    """Learn one latent space shared by several views (models) of the same items.

    A scikit-learn transformer around `LatentSpace`: ``fit`` registers one
    model per view (``"view0"``, ``"view1"``, ...) and trains them with
    `LatentSpace.train_projections`; ``transform`` projects the views into
    the space. ``X`` is a list of views or one 2-D array of the views side by
    side (see the module documentation).

    Parameters
    ----------
    latent_dim : int, default=16
        Dimension of the shared space.
    view_widths : sequence of int or None, default=None
        How the columns of a 2-D ``X`` divide into views: view ``m`` is the
        next ``view_widths[m]`` columns. None: two views of equal width (the
        first one column wider if the number of columns is odd). For a list
        of views, None or their widths.
    solver, objective, init, regularization, n_epochs, learning_rate, \
alignment_weight, batch_size, tol, callback, progress
        Training options, the fields of `ProjectionConfig` with its defaults,
        passed to `LatentSpace.train_projections`.
    random_state : int, RandomState instance or None, default=None
        Seed of the space's initial weights (the solvers that start from
        them: "sgd", "minibatch", "lbfgs"). An int gives the weights of
        ``LatentSpace(latent_dim, seed=random_state)``.
    method : {"csls", "cosine"}, default="csls"
        Search method of `score` (see `LatentSpace.search`).
    csls_k : int, default=10
        Neighbourhood size of CSLS in `score`.

    Attributes
    ----------
    space_ : LatentSpace
        The trained space, in float32 if every view was float32 (else
        float64); its models are ``view_names_``.
    view_names_ : list of str
    n_views_ : int
    view_widths_ : list of int
        Width of every view.
    n_features_in_ : int
        Number of columns of the 2-D form of ``X`` (the sum of
        ``view_widths_``).
    feature_names_in_ : ndarray of str
        Column names of a 2-D ``X`` that had string column names (a
        DataFrame).
    n_iter_ : int
        Iterations the solver ran (epochs, L-BFGS iterations, 1 for "cca").
    training_result_ : TrainingResult
    loss_history_ : tuple of float

    Warns
    -----
    ConvergenceWarning
        This module's, a subclass of both `latentspace.ConvergenceWarning`
        and scikit-learn's: the solver ran out of iterations before its
        ``tol``.
    """

    def __init__(
        self,
        latent_dim: int = 16,
        *,
        view_widths: Sequence[int] | None = None,
        solver: str = _CONFIG["solver"],
        objective: str | None = _CONFIG["objective"],
        init: str | None = _CONFIG["init"],
        regularization: float | str = _CONFIG["regularization"],
        n_epochs: int = _CONFIG["n_epochs"],
        learning_rate: float = _CONFIG["learning_rate"],
        alignment_weight: float = _CONFIG["alignment_weight"],
        batch_size: int = _CONFIG["batch_size"],
        tol: float | None = _CONFIG["tol"],
        callback: Callable[..., object] | None = _CONFIG["callback"],
        progress: bool = _CONFIG["progress"],
        random_state: int | None = None,
        method: str = "csls",
        csls_k: int = 10,
    ) -> None:
        self.latent_dim = latent_dim
        self.view_widths = view_widths
        self.solver = solver
        self.objective = objective
        self.init = init
        self.regularization = regularization
        self.n_epochs = n_epochs
        self.learning_rate = learning_rate
        self.alignment_weight = alignment_weight
        self.batch_size = batch_size
        self.tol = tol
        self.callback = callback
        self.progress = progress
        self.random_state = random_state
        self.method = method
        self.csls_k = csls_k

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags = MultiViewInputTags(
            **{
                field.name: getattr(tags.input_tags, field.name)
                for field in dataclasses.fields(InputTags)
            }
        )
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    @property
    def _n_features_out(self):
        return self.space_.dim

    # --------------------------------------------------------------- input

    def _views(self, X, reset):
        """``(views, listed)``: the validated views of ``X`` and whether ``X``
        was a list of views. ``reset`` (fit) records their widths."""
        with np.errstate(invalid="ignore", over="ignore"):
            # scikit-learn's finiteness check sums the values first: inf + -inf
            # would warn before it raises its own "contains infinity" error.
            return self._checked_views(X, reset)

    def _checked_views(self, X, reset):
        given = _view_list(X)
        if given is None:
            X = validate_data(
                self,
                X,
                reset=reset,
                dtype=_FLOATS,
                ensure_min_samples=2 if reset else 1,
                ensure_min_features=2 if reset else 1,  # else: n_features_in_
            )
            if reset:
                widths = _widths(self.view_widths, X.shape[1])
            else:
                widths = self.view_widths_
            edges = np.cumsum([0] + widths)
            return [X[:, a:b] for a, b in zip(edges[:-1], edges[1:])], False
        views = [
            check_array(
                view,
                dtype=_FLOATS,
                ensure_min_samples=2 if reset else 1,
                input_name=f"view {i}",
            )
            for i, view in enumerate(given)
        ]
        rows = [len(view) for view in views]
        if len(set(rows)) > 1:
            raise InvalidParameterError(
                "the views must have the same number of rows (row i of every "
                f"view is item i), got {rows}"
            )
        widths = [view.shape[1] for view in views]
        if reset:
            if len(views) < 2:
                raise InvalidParameterError(
                    f"fit needs at least two views, got {len(views)}"
                )
            if self.view_widths is not None and _widths(
                self.view_widths, sum(widths)
            ) != widths:
                raise InvalidParameterError(
                    f"view_widths={list(self.view_widths)}, but the views have "
                    f"widths {widths}"
                )
            self.n_features_in_ = sum(widths)
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif len(views) != self.n_views_:
            raise InvalidParameterError(
                f"expected {self.n_views_} views (as in fit), got {len(views)}"
            )
        elif widths != self.view_widths_:
            raise InvalidParameterError(
                f"the views have widths {widths}, but {type(self).__name__} was "
                f"fitted on views of widths {self.view_widths_}"
            )
        return views, True

    # -------------------------------------------------------------- fitting

    def fit(self, X: "ArrayLike | Views", y: object = None) -> "SharedLatentSpace":
        """Train the shared space on aligned views.

        Parameters
        ----------
        X : list of array-like of shape (n, d_m), Views, or array-like of \
shape (n, sum of d_m)
            At least two views; row ``i`` of every view is item ``i``.
        y : ignored

        Returns
        -------
        self
        """
        check_method(self.method)
        latent_dim = check_dim("latent_dim", self.latent_dim)
        seed = _seed(self.random_state)
        views, _ = self._views(X, reset=True)
        float32 = all(view.dtype == np.float32 for view in views)
        space = LatentSpace(
            latent_dim, dtype="float32" if float32 else "float64", seed=seed
        )
        names = [f"view{i}" for i in range(len(views))]
        for name, view in zip(names, views):
            space.register(name, view.shape[1])
        options = {name: getattr(self, name) for name in _TRAINING}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = space.train_projections(dict(zip(names, views)), **options)
        for warning in caught:  # again, under the caller's filters
            category = warning.category
            if issubclass(category, _exceptions.ConvergenceWarning):
                category = ConvergenceWarning
            warnings.warn(str(warning.message), category, stacklevel=2)
        self.space_ = space
        self.view_names_ = names
        self.n_views_ = len(names)
        self.view_widths_ = [view.shape[1] for view in views]
        self.n_iter_ = result.n_epochs
        self.training_result_ = result
        self.loss_history_ = result.loss_history
        return self

    def transform(self, X: "ArrayLike | Views") -> Any:
        """Project the views into the shared space.

        Parameters
        ----------
        X : list of array-like of shape (n, d_m), Views, or array-like of \
shape (n, sum of d_m)

        Returns
        -------
        list of ndarray of shape (n, latent_dim), or ndarray of shape (n, latent_dim)
            For a list of views, every view's latents; for a 2-D ``X``, the
            mean of the views' latents. In the space's dtype; a DataFrame
            (one per view) if `set_output` asks for one.
        """
        check_is_fitted(self, "space_")
        views, listed = self._views(X, reset=False)
        latents = [
            self.space_.project(name, view)
            for name, view in zip(self.view_names_, views)
        ]
        if listed:
            return [
                _wrap_data_with_container("transform", Z, view, self)
                for Z, view in zip(latents, _view_list(X))
            ]
        consensus = sum(latents[1:], latents[0]) / len(latents)
        return _wrap_data_with_container("transform", consensus, X, self)

    def fit_transform(self, X: "ArrayLike | Views", y: object = None) -> Any:
        """``fit(X).transform(X)``."""
        return self.fit(X, y).transform(X)

    def score(self, X: "ArrayLike | Views", y: object = None) -> float:
        """Mean top-1 cross-model retrieval accuracy over all ordered pairs.

        For every ordered pair of views ``A -> B`` and every item, is the same
        item the best match (by ``method``) among all items of ``B``? Higher
        is better; chance is ``1 / n``.

        Parameters
        ----------
        X : list of array-like of shape (n, d_m), Views, or array-like of \
shape (n, sum of d_m)
        y : ignored

        Returns
        -------
        float
        """
        return _mean_top_k(self, X, 1, None)


# set_output is offered by scikit-learn's mixin to classes whose transform it
# wraps; this one wraps its outputs itself, one container per view for a list
# of views (the mixin would try to make one DataFrame of the whole list).
SharedLatentSpace._sklearn_auto_wrap_output_keys = {"transform"}


def _mean_top_k(estimator, X, k, method):
    check_is_fitted(estimator, "space_")
    views, _ = estimator._views(X, reset=False)
    scores = metrics.retrieval_scores(
        estimator.space_,
        dict(zip(estimator.view_names_, views)),
        k=k,
        method=estimator.method if method is None else method,
        csls_k=estimator.csls_k,
    )
    return float(np.mean([value[f"top{k}"] for value in scores.values()]))


def retrieval_scorer(
    k: int = 1, method: str | None = None
) -> Callable[..., float]:
    """A scorer for model selection: mean top-``k`` retrieval over all pairs.

    Parameters
    ----------
    k : int, default=1
    method : {"csls", "cosine"} or None, default=None
        None: the estimator's ``method``.

    Returns
    -------
    callable
        ``scorer(estimator, X, y=None) -> float``, for ``scoring=`` of
        `GridSearchCV` or `cross_validate`.
    """
    if method is not None:
        check_method(method)

    def scorer(estimator, X, y=None):
        return _mean_top_k(estimator, X, k, method)

    scorer.__name__ = f"retrieval_top{k}"
    return scorer
