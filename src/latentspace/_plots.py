# SPDX-License-Identifier: BSD-3-Clause
"""Pictures of a space (optional, needs matplotlib): a loss curve and a 2-D map.

The figures are drawn with matplotlib's object API on an Agg canvas (no
pyplot, no global state, no window) and written to files.
"""

import numpy as np

__all__ = ["loss_curve", "require", "space_map"]

INSTALL_HINT = "pictures need matplotlib: pip install matplotlib"


def require():
    """matplotlib's `Figure` and Agg canvas, or an ImportError with a hint."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return Figure, FigureCanvasAgg


def _save(figure, canvas_class, path):
    canvas_class(figure)
    figure.savefig(path, dpi=120)
    return path


def loss_curve(result, path):
    """Plot a `TrainingResult`'s loss per iteration to ``path``; returns ``path``."""
    Figure, Canvas = require()
    losses = np.array([result.initial_loss, *result.loss_history], dtype=float)
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(np.arange(len(losses)), losses, marker="." if len(losses) < 50 else None)
    if (losses > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("iteration (0 = before training)")
    ax.set_ylabel(f"mean loss per item ({result.objective})")
    ax.set_title(
        f"training: {result.solver}, {result.n_epochs} iterations, "
        f"{result.seconds:.2f} s"
    )
    ax.grid(True, alpha=0.3)
    return _save(figure, Canvas, path)


def space_map(space, data, path, *, n_items=300, n_joined=40, seed=0):
    """A 2-D map of the shared space to ``path``; returns ``path``.

    Up to ``n_items`` aligned items of every model in ``data`` are projected
    into the space, and the latents of all models together are reduced to
    their first two principal components. Each model is one colour; for
    ``n_joined`` of the items, a line joins the points of the same item
    across models: short lines mean the models agree.
    """
    Figure, Canvas = require()
    names = list(data)
    n = len(data[names[0]])
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, n_items), replace=False))
    latents = [
        np.asarray(space.project(name, np.asarray(data[name])[rows]), dtype=float)
        for name in names
    ]
    stacked = np.concatenate(latents)
    centre = stacked.mean(axis=0)
    # The two directions of largest variance of all latents together.
    _, _, Vt = np.linalg.svd(stacked - centre, full_matrices=False)
    axes = Vt[:2].T if len(Vt) >= 2 else np.eye(stacked.shape[1], 2)
    points = [(Z - centre) @ axes for Z in latents]

    figure = Figure(figsize=(6.5, 6), layout="constrained")
    ax = figure.add_subplot()
    joined = rng.choice(len(rows), size=min(len(rows), n_joined), replace=False)
    for i in joined:
        path_xy = np.array([P[i] for P in points])
        ax.plot(path_xy[:, 0], path_xy[:, 1], color="0.6", linewidth=0.6, zorder=1)
    for name, P in zip(names, points):
        ax.scatter(P[:, 0], P[:, 1], s=10, alpha=0.7, label=name, zorder=2)
    ax.legend(title="model", markerscale=2)
    ax.set_xlabel("principal component 1 of the latents")
    ax.set_ylabel("principal component 2")
    ax.set_title(
        f"{len(rows)} items in the shared space (dim {space.dim})\n"
        f"grey lines join the same item across models ({len(joined)} shown)",
        fontsize="medium",
    )
    return _save(figure, Canvas, path)
