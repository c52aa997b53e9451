# SPDX-License-Identifier: BSD-3-Clause
"""The demo that ``python -m latentspace demo`` runs: cross-model retrieval on digits.

It does the library's main job on real data that ships with scikit-learn (the
8x8 handwritten digits of `sklearn.datasets.load_digits`, no download):

1. split the images into train and test items with a fixed seed;
2. embed every image with three genuinely different "models", each fitted on
   the training images only: PCA of the pixels, an RBF kernel feature map
   (`sklearn.kernel_approximation.Nystroem`) and the hidden layer of a small
   `sklearn.neural_network.MLPClassifier`;
3. register the three models in one `LatentSpace` and train it on the
   training items with the reference SGD (`LatentSpace.train_projections`);
4. on the held-out test items, for every ordered pair of models A -> B,
   project the items of A and of B into the space and, for each A item, rank
   the B items by cosine similarity: how often is the same image the top hit
   or among the top 10, and how often is the top hit the same digit? The same
   numbers for the untrained (Xavier-initialised) space and the chance levels
   are printed next to them, so that the effect of training is visible;
5. optionally (``plot``, needs matplotlib) save the loss curve and a 2-D map
   of the test items in the shared space (`latentspace._plots`).

`run` returns every number as a dict (tests call it with a small
configuration); `main` runs it and prints a table.
"""

import contextlib
import math
import time
import warnings

import numpy as np

from . import _plots
from ._space import LatentSpace

__all__ = ["MissingDependencyError", "format_report", "main", "run"]

INSTALL_HINT = 'the demo needs scikit-learn: pip install "latentspace[demo]"'

# The three models, in registration order: name -> what it is.
MODELS = {
    "pca": "PCA of the 64 pixels",
    "kernel": "RBF kernel map (Nystroem)",
    "mlp": "hidden ReLU layer of an MLPClassifier",
}
_PCA_DIM = 32
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
        from sklearn.preprocessing import StandardScaler
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
        "StandardScaler": StandardScaler,
        "threadpool_limits": threadpool_limits,
    }


def _embed(sk, X_train, X_test, y_train, seed, mlp_max_iter):
    """Fit the three models on the training images; embed train and test images.

    Returns ``{name: (train_features, test_features, fit_seconds, info)}``.
    """
    out = {}

    started = time.perf_counter()
    pca = sk["PCA"](n_components=_PCA_DIM, random_state=seed).fit(X_train)
    explained = float(pca.explained_variance_ratio_.sum())
    out["pca"] = (
        pca.transform(X_train),
        pca.transform(X_test),
        time.perf_counter() - started,
        f"{_PCA_DIM} components, {explained:.0%} of the pixel variance",
    )

    # gamma by the "scale" heuristic of sklearn.svm.SVC: 1 / (n_features * var).
    started = time.perf_counter()
    gamma = 1.0 / (X_train.shape[1] * X_train.var())
    kernel = sk["Nystroem"](
        gamma=gamma, n_components=_KERNEL_DIM, random_state=seed
    ).fit(X_train)
    out["kernel"] = (
        kernel.transform(X_train),
        kernel.transform(X_test),
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


def _standardize(sk, train, test):
    """Standardize with train statistics, then scale rows to mean ||x||^2 = 1.

    The reference SGD updates ``P`` by ``lr * outer(x, ...)``, so its stable
    step size shrinks like ``1 / ||x||^2``. Standardized features have
    ``||x||^2 ~ d`` (32 to 100 here): with them the library's default
    learning rate diverges and models of different widths would need
    different rates. Dividing by ``sqrt(d)`` gives every model unit mean
    squared norm, so the defaults (lr=0.01, 100 epochs) are stable for all;
    divergence starts near lr=0.03 (measured).
    """
    scaler = sk["StandardScaler"]().fit(train)
    scale = 1.0 / math.sqrt(train.shape[1])
    return scaler.transform(train) * scale, scaler.transform(test) * scale


def _unit_rows(Z):
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.maximum(norms, np.finfo(Z.dtype).tiny)


def _retrieval(space, test, labels, top):
    """Cross-model retrieval scores for every ordered pair of models.

    Returns ``{source: {target: {"top1", "top10", "class_top1"}}}``; the keys
    name fractions of the test items.
    """
    latents = {name: _unit_rows(space.project(name, X)) for name, X in test.items()}
    items = np.arange(len(labels))
    scores = {}
    for source, Za in latents.items():
        scores[source] = {}
        for target, Zb in latents.items():
            if target == source:
                continue
            similarity = Za @ Zb.T  # cosine similarity, (n_test, n_test)
            # top hits, best first (a stable sort: ties go to the lower index)
            ranked = np.argsort(-similarity, axis=1, kind="stable")[:, :top]
            scores[source][target] = {
                "top1": float(np.mean(ranked[:, 0] == items)),
                "top10": float(np.mean((ranked == items[:, None]).any(axis=1))),
                "class_top1": float(np.mean(labels[ranked[:, 0]] == labels)),
            }
    return scores


def _mean_norms(space, test):
    return {
        name: float(np.linalg.norm(space.project(name, X), axis=1).mean())
        for name, X in test.items()
    }


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
    n_epochs=100,
    learning_rate=0.01,
    alignment_weight=1.0,
    test_size=0.3,
    mlp_max_iter=100,
    latency_calls=2000,
    blas_threads=1,
    plot=None,
):
    """Run the demo and return its numbers.

    Parameters
    ----------
    seed : int, default=0
        Seeds everything: the train/test split, the three models and the
        space's Xavier initialisation.
    dim : int, default=32
        Latent dimension ``k`` of the space.
    n_epochs, learning_rate, alignment_weight : default=100, 0.01, 1.0
        `ProjectionConfig` of the training (the defaults are the library's).
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
        Also save ``{plot}-loss.png`` (the training loss per epoch) and
        ``{plot}-map.png`` (the test items of every model in the trained
        space, reduced to 2-D, the same image joined across models).

    Returns
    -------
    dict
        ``config`` (the arguments), ``data`` (``n_train``, ``n_test``,
        ``n_classes``), ``models`` (per model: ``input_dim``, ``description``,
        ``fit_seconds``, ``latent_norm`` before and after training,
        ``project_seconds`` = median single-vector latency), ``mlp_accuracy``
        (the classifier's test accuracy), ``training`` (``seconds``,
        ``n_epochs``, ``initial_loss``, ``final_loss``, ``test_loss`` before
        and after), ``chance`` and ``retrieval`` (``{"untrained", "trained"}``
        -> source -> target -> ``top1``, ``top10``, ``class_top1``: fractions
        of the test items), ``pictures`` (the files written, if ``plot``)
        and ``seconds`` (whole run).

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
        "n_epochs": n_epochs,
        "learning_rate": learning_rate,
        "alignment_weight": alignment_weight,
        "test_size": test_size,
        "mlp_max_iter": mlp_max_iter,
        "latency_calls": latency_calls,
        "blas_threads": blas_threads,
        "plot": plot,
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
    train, test, models = {}, {}, {}
    for name, (F_train, F_test, fit_seconds, info) in embedded.items():
        train[name], test[name] = _standardize(sk, F_train, F_test)
        models[name] = {
            "input_dim": F_train.shape[1],
            "description": f"{MODELS[name]}: {info}",
            "fit_seconds": fit_seconds,
        }

    space = LatentSpace(config["dim"], seed=seed)
    for name, X_model in train.items():
        space.register(name, X_model.shape[1])

    w = config["alignment_weight"]
    untrained = _retrieval(space, test, y_test, _TOP)
    norms_before = _mean_norms(space, test)
    test_loss_before = space.loss(test, alignment_weight=w)
    result = space.train_projections(
        train,
        n_epochs=config["n_epochs"],
        learning_rate=config["learning_rate"],
        alignment_weight=w,
    )
    trained = _retrieval(space, test, y_test, _TOP)
    norms_after = _mean_norms(space, test)

    for name, info in models.items():
        info["latent_norm"] = {
            "untrained": norms_before[name],
            "trained": norms_after[name],
        }
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
            "seconds": result.seconds,
            "n_epochs": result.n_epochs,
            "initial_loss": result.initial_loss,
            "final_loss": result.final_loss,
            "test_loss": {
                "untrained": test_loss_before,
                "trained": space.loss(test, alignment_weight=w),
            },
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
        "models    fitted on the training images only; features standardized "
        "on train, scaled to mean ||x||^2 = 1",
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
    test_loss = training["test_loss"]
    lines += [
        f"space     LatentSpace(dim={config['dim']}), reference SGD: "
        f"learning_rate={config['learning_rate']:g}, n_epochs={config['n_epochs']}, "
        f"alignment_weight={config['alignment_weight']:g}",
        f"training  {training['seconds']:.2f} s for {training['n_epochs']} epochs; "
        f"mean loss per item: train {training['initial_loss']:.3f} -> "
        f"{training['final_loss']:.3f}, test {test_loss['untrained']:.3f} -> "
        f"{test_loss['trained']:.3f}",
        "latency   space.project(name, one vector), median of "
        f"{config['latency_calls']} calls: "
        + ", ".join(
            f"{name} {info['project_seconds'] * 1e6:.1f} us"
            for name, info in models.items()
        ),
        "|z|       mean latent norm on test, untrained -> trained: "
        + ", ".join(
            f"{name} {info['latent_norm']['untrained']:.2f} -> "
            f"{info['latent_norm']['trained']:.2f}"
            for name, info in models.items()
        ),
        "",
        f"Retrieval on the {data['n_test']} test images. For each ordered pair "
        "A -> B, project the test",
        "images of A and of B into the space; for each A image rank the B images "
        "by cosine",
        f"similarity. item@1 / item@{_TOP}: the same image is the top hit / in the "
        f"top {_TOP}. digit@1:",
        "the top hit shows the same digit. untrained = the Xavier-initialised "
        "space.",
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
        "Caveat: all three models read the same pixels of the same images, which "
        "makes this",
        "alignment comparatively easy; it says little about models of different "
        "inputs or modalities.",
        f"Whole demo: {numbers['seconds']:.1f} s.",
    ]
    if numbers["pictures"]:
        lines.append("Pictures: " + ", ".join(numbers["pictures"]))
    return "\n".join(line.rstrip() for line in lines)


def main(**options):
    """Run the demo with ``options`` (the arguments of `run`) and print the report.

    Returns
    -------
    dict
        The numbers from `run`.
    """
    numbers = run(**options)
    print(format_report(numbers), flush=True)
    return numbers
