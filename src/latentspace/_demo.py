# SPDX-License-Identifier: BSD-3-Clause
"""The demo that ``python -m latentspace demo`` runs: cross-model retrieval on digits.

It does the library's main job on real data that ships with scikit-learn (the
8x8 handwritten digits of `sklearn.datasets.load_digits`, no download):

1. split the images into train and test items with a fixed seed;
2. embed every image with three genuinely different "models", each fitted on
   the training images only: PCA of the left half of the pixels, an RBF
   kernel feature map (`sklearn.kernel_approximation.Nystroem`) of the right
   half and the hidden layer of a small `sklearn.neural_network.MLPClassifier`
   of the whole image;
3. register the three models in one `LatentSpace` and train it on the
   training items, with the library's defaults, on the raw embeddings
   (`LatentSpace.train_projections`);
4. on the held-out test items, for every ordered pair of models A -> B,
   project the items of A and of B into the space and, for each A item, rank
   the B items by CSLS: how often is the same image the top hit or among the
   top 10, and how often is the top hit the same digit? The same numbers for
   the untrained (Xavier-initialised) space and the chance levels are printed
   next to them, so that the effect of training is visible;
5. optionally (``plot``, needs matplotlib) save the loss curve and a 2-D map
   of the test items in the shared space (`latentspace._plots`).

`run` returns every number as a dict (tests call it with a small
configuration); `format_report` makes the printed table.
"""

import contextlib
import time
import warnings

import numpy as np

from . import _plots, metrics
from ._training.solvers import SOLVERS
from ._space import LatentSpace

__all__ = ["MissingDependencyError", "format_report", "run"]

INSTALL_HINT = 'the demo needs scikit-learn: pip install "latentspace[demo]"'

# The three models, in registration order: name -> what it is.
MODELS = {
    "pca": "PCA of the left half of the image",
    "kernel": "RBF kernel map (Nystroem) of the right half",
    "mlp": "hidden ReLU layer of an MLPClassifier of the whole image",
}
_PCA_DIM = 24
_KERNEL_DIM = 100
_MLP_HIDDEN = 64
_TOP = 10  # the "top-10" of the retrieval table


class MissingDependencyError(ImportError):
    """scikit-learn (needed for the data and the models) is not installed."""


def _sklearn():
    """Import what the demo uses from scikit-learn, or raise with an install hint."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.decomposition import PCA
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.kernel_approximation import Nystroem
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    except ImportError as exc:
        raise MissingDependencyError(f"{INSTALL_HINT} ({exc})") from None
    return {
        "load_digits": load_digits,
        "PCA": PCA,
        "ConvergenceWarning": ConvergenceWarning,
        "Nystroem": Nystroem,
        "train_test_split": train_test_split,
        "MLPClassifier": MLPClassifier,
        "threadpool_limits": threadpool_limits,
    }


def _half(images, side):
    """The left (``side=0``) or right (1) four columns of 8x8 images, flattened."""
    columns = images.reshape(-1, 8, 8)[:, :, 4 * side : 4 * side + 4]
    return columns.reshape(len(images), -1)


def _embed(sk, X_train, X_test, y_train, seed, mlp_max_iter):
    """Fit the three models on the training images; embed train and test images.

    Returns ``{name: (train_features, test_features, fit_seconds, info)}``.
    """
    out = {}

    started = time.perf_counter()
    left = [_half(X, 0) for X in (X_train, X_test)]
    pca = sk["PCA"](n_components=_PCA_DIM, random_state=seed).fit(left[0])
    explained = float(pca.explained_variance_ratio_.sum())
    out["pca"] = (
        pca.transform(left[0]),
        pca.transform(left[1]),
        time.perf_counter() - started,
        f"{_PCA_DIM} components, {explained:.0%} of its pixels' variance",
    )

    # gamma by the "scale" heuristic of sklearn.svm.SVC: 1 / (n_features * var).
    started = time.perf_counter()
    right = [_half(X, 1) for X in (X_train, X_test)]
    gamma = 1.0 / (right[0].shape[1] * right[0].var())
    kernel = sk["Nystroem"](
        gamma=gamma, n_components=_KERNEL_DIM, random_state=seed
    ).fit(right[0])
    out["kernel"] = (
        kernel.transform(right[0]),
        kernel.transform(right[1]),
        time.perf_counter() - started,
        f"{_KERNEL_DIM} components, gamma={gamma:.3g}",
    )

    # A small classifier trained on the digit labels; its hidden activations
    # relu(x @ W1 + b1) are the embedding. Stopping at mlp_max_iter epochs
    # before sklearn's convergence criterion is deliberate (speed), so its
    # ConvergenceWarning is silenced.
    started = time.perf_counter()
    mlp = sk["MLPClassifier"](
        hidden_layer_sizes=(_MLP_HIDDEN,), max_iter=mlp_max_iter, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sk["ConvergenceWarning"])
        mlp.fit(X_train, y_train)
    weights, bias = mlp.coefs_[0], mlp.intercepts_[0]
    out["mlp"] = (
        np.maximum(X_train @ weights + bias, 0.0),
        np.maximum(X_test @ weights + bias, 0.0),
        time.perf_counter() - started,
        f"{_MLP_HIDDEN} hidden units, {mlp_max_iter} epochs of adam",
    )
    return out, mlp


def _retrieval(space, test, labels):
    """Cross-model retrieval scores for every ordered pair of models.

    Returns ``{source: {target: {"top1", "top10", "class_top1"}}}``: the
    fractions of the test items whose own image is the top hit or among the
    top 10 (`metrics.retrieval_scores`), and whose top hit shows the same
    digit (`LatentSpace.search`), ranking by CSLS.
    """
    scores = metrics.retrieval_scores(space, test, k=(1, _TOP))
    out = {}
    for (source, target), pair in scores.items():
        hits = space.search(source, test[source], target, test[target], k=1).indices
        out.setdefault(source, {})[target] = {
            "top1": pair["top1"],
            "top10": pair[f"top{_TOP}"],
            "class_top1": float(np.mean(labels[hits[:, 0]] == labels)),
        }
    return out


def _project_latency(space, name, x, calls):
    """Median wall time, in seconds, of ``space.project(name, x)`` for one vector."""
    timings = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        started = clock()
        space.project(name, x)
        timings[i] = clock() - started
    return float(np.median(timings)) * 1e-9


def run(
    *,
    seed=0,
    dim=32,
    test_size=0.3,
    mlp_max_iter=100,
    latency_calls=2000,
    blas_threads=1,
    plot=None,
    **training,
):
    """Run the demo and return its numbers.

    Parameters
    ----------
    seed : int, default=0
        Seeds everything: the train/test split, the three models and the
        space's initial weights.
    dim : int, default=32
        Latent dimension ``k`` of the space.
    test_size : float, default=0.3
        Fraction of the 1797 images held out for testing (stratified by digit).
    mlp_max_iter : int, default=100
        Training epochs of the MLP classifier.
    latency_calls : int, default=2000
        Calls to `LatentSpace.project` timed per model.
    blas_threads : int or None, default=1
        BLAS threads while the demo runs (None: leave as is). The matrices
        are tiny: on a small shared machine several BLAS threads only compete
        (the MLP fit measured 5x slower with two threads than with one).
    plot : str, optional
        Also save ``{plot}-loss.png`` (the training loss per iteration) and
        ``{plot}-map.png`` (the test items of every model in the trained
        space, reduced to 2-D, the same image joined across models).
    **training
        `ProjectionConfig` fields for `LatentSpace.train_projections`
        (default: none, the library's defaults).

    Returns
    -------
    dict
        ``config`` (the arguments), ``data`` (``n_train``, ``n_test``,
        ``n_classes``), ``models`` (per model: ``input_dim``, ``description``,
        ``fit_seconds``, ``project_seconds`` = median single-vector latency),
        ``mlp_accuracy`` (the classifier's test accuracy), ``training``
        (``solver``, ``objective``, ``seconds``, ``n_epochs``,
        ``initial_loss``, ``final_loss``, ``agreement`` and
        ``regularization``), ``chance`` and ``retrieval`` (``{"untrained",
        "trained"}`` -> source -> target -> ``top1``, ``top10``,
        ``class_top1``: fractions of the test items), ``pictures`` (the files
        written, if ``plot``) and ``seconds`` (whole run).

    Raises
    ------
    MissingDependencyError
        If scikit-learn is not installed.
    ImportError
        If ``plot`` is given and matplotlib is not installed (before any work).
    """
    started = time.perf_counter()
    config = {
        "seed": seed,
        "dim": dim,
        "test_size": test_size,
        "mlp_max_iter": mlp_max_iter,
        "latency_calls": latency_calls,
        "blas_threads": blas_threads,
        "plot": plot,
        "training": training,
    }
    sk = _sklearn()
    if plot is not None:
        _plots.require()
    limits = (
        contextlib.nullcontext()
        if blas_threads is None
        else sk["threadpool_limits"](limits=blas_threads, user_api="blas")
    )
    with limits:
        result = _run(sk, config)
    result["seconds"] = time.perf_counter() - started
    return result


def _run(sk, config):
    seed = config["seed"]
    digits = sk["load_digits"]()
    X = digits.data / 16.0  # pixel intensities 0..16 -> 0..1
    y = digits.target
    X_train, X_test, y_train, y_test = sk["train_test_split"](
        X, y, test_size=config["test_size"], random_state=seed, stratify=y
    )

    embedded, mlp = _embed(sk, X_train, X_test, y_train, seed, config["mlp_max_iter"])
    # The embeddings as the models give them: not centred, not scaled.
    train, test, models = {}, {}, {}
    for name, (F_train, F_test, fit_seconds, info) in embedded.items():
        train[name], test[name] = F_train, F_test
        models[name] = {
            "input_dim": F_train.shape[1],
            "description": f"{MODELS[name]}: {info}",
            "fit_seconds": fit_seconds,
        }

    space = LatentSpace(config["dim"], seed=seed)
    for name, X_model in train.items():
        space.register(name, X_model.shape[1])

    untrained = _retrieval(space, test, y_test)
    result = space.train_projections(train, **config["training"])
    trained = _retrieval(space, test, y_test)

    for name, info in models.items():
        x = np.ascontiguousarray(test[name][0])
        info["project_seconds"] = _project_latency(
            space, name, x, config["latency_calls"]
        )

    pictures = []
    if config["plot"] is not None:
        pictures = [
            _plots.loss_curve(result, f"{config['plot']}-loss.png"),
            _plots.space_map(space, test, f"{config['plot']}-map.png"),
        ]

    n_test = len(y_test)
    class_shares = np.bincount(y_test) / n_test
    return {
        "config": config,
        "data": {
            "n_train": len(y_train),
            "n_test": n_test,
            "n_classes": len(class_shares),
        },
        "models": models,
        "mlp_accuracy": float(mlp.score(X_test, y_test)),
        "training": {
            "solver": result.solver,
            "objective": result.objective,
            "seconds": result.seconds,
            "n_epochs": result.n_epochs,
            "initial_loss": result.initial_loss,
            "final_loss": result.final_loss,
            "agreement": None if result.agreement is None else list(result.agreement),
            "regularization": (
                None if result.regularization is None
                else dict(zip(train, result.regularization))
            ),
        },
        # A random B item is the same image with probability 1/n, one of 10
        # random items with 10/n, and the same digit with sum_c share_c^2.
        "chance": {
            "top1": 1.0 / n_test,
            "top10": min(_TOP, n_test) / n_test,
            "class_top1": float(np.sum(class_shares**2)),
        },
        "retrieval": {"untrained": untrained, "trained": trained},
        "pictures": pictures,
    }


def _pct(value):
    return f"{100 * value:5.1f}%"


def format_report(numbers):
    """The printed report of `run`'s numbers, as one string."""
    config, data = numbers["config"], numbers["data"]
    models, training = numbers["models"], numbers["training"]
    chance, retrieval = numbers["chance"], numbers["retrieval"]
    width = max(map(len, models))
    lines = [
        "latentspace demo: cross-model retrieval on scikit-learn's digits "
        "(8x8 images)",
        "",
        f"data      {data['n_train'] + data['n_test']} images, {data['n_classes']} "
        f"digits; {data['n_train']} train / {data['n_test']} test "
        f"(stratified split, seed {config['seed']})",
        "models    fitted on the training images only; their raw embeddings "
        "(not centred, not scaled)",
    ]
    for name, info in models.items():
        lines.append(
            f"  {name:<{width}} {info['input_dim']:4d} dims  {info['description']}"
            f"  (fit {info['fit_seconds']:.2f} s)"
        )
    lines.append(
        f"  (the MLP classifies {numbers['mlp_accuracy']:.1%} of the test digits "
        "correctly)"
    )
    lines += [
        f"space     LatentSpace(dim={config['dim']}), "
        + _training_summary(config["training"], training),
        "latency   space.project(name, one vector), median of "
        f"{config['latency_calls']} calls: "
        + ", ".join(
            f"{name} {info['project_seconds'] * 1e6:.1f} us"
            for name, info in models.items()
        ),
        "",
        f"Retrieval on the {data['n_test']} test images. For each ordered pair "
        "A -> B, project the test",
        "images of A and of B into the space; for each A image rank the B images "
        "by CSLS (cosine",
        f"corrected for hubs). item@1 / item@{_TOP}: the same image is the top hit "
        f"/ in the top {_TOP}.",
        "digit@1: the top hit shows the same digit. untrained = the "
        "Xavier-initialised space.",
        "",
    ]
    heads = ("item@1", f"item@{_TOP}", "digit@1")
    keys = ("top1", "top10", "class_top1")
    pair_width = 2 * width + 4
    lines.append(" " * pair_width + "".join(f"  {head:^17}" for head in heads))
    lines.append(
        f"{'A -> B':<{pair_width}}" + "  untrained trained" * len(heads)
    )

    def row(label, pairs):
        text = ""
        for key in keys:
            before, after = (
                np.mean([retrieval[stage][a][b][key] for a, b in pairs])
                for stage in ("untrained", "trained")
            )
            text += f"  {_pct(before):>9} {_pct(after):>7}"
        return f"{label:<{pair_width}}{text}"

    pairs = [(a, b) for a in retrieval["trained"] for b in retrieval["trained"][a]]
    for a, b in pairs:
        lines.append(row(f"{a:<{width}} -> {b}", [(a, b)]))
    lines.append(row("mean", pairs))
    lines.append(
        f"{'chance':<{pair_width}}"
        + "".join(f"  {_pct(chance[key]):>17}" for key in keys)
    )
    lines += [
        "",
        "pca and kernel see different halves of each image: they share no pixel, "
        "only the digit",
        "and its strokes across the middle, so finding the very image between "
        "them is hard.",
        f"Whole demo: {numbers['seconds']:.1f} s.",
    ]
    if numbers["pictures"]:
        lines.append("Pictures: " + ", ".join(numbers["pictures"]))
    return "\n".join(line.rstrip() for line in lines)


def _training_summary(options, training):
    """One line on how the space was trained and what it achieved."""
    given = ", ".join(f"{key}={value!r}" for key, value in options.items())
    line = f"solver={training['solver']}" + (f" ({given})" if given else " (defaults)")
    line += f"\ntraining  {training['seconds']:.2f} s"
    if not SOLVERS[training["solver"]].closed_form:
        line += (
            f", {training['n_epochs']} epochs; {training['objective']} loss per "
            f"item {training['initial_loss']:.4g} -> {training['final_loss']:.4g}"
        )
    if training["regularization"] is not None:
        line += "; ridge " + ", ".join(
            f"{name} {value:.3g}" for name, value in training["regularization"].items()
        )
    if training["agreement"] is not None:
        first = ", ".join(f"{a:.2f}" for a in training["agreement"][:5])
        line += f"\n          agreement of the models on the first dimensions: {first}"
    return line
