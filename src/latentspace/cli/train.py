# SPDX-License-Identifier: BSD-3-Clause
"""``train``: train a shared space from aligned embeddings and save it."""

import dataclasses
import time

from .._training.config import INITS, OBJECTIVES, ProjectionConfig
from .._training.solvers import SOLVERS
from .._space import LatentSpace
from ._args import add_key, model_file, non_negative_float, positive_float
from ._args import positive_int
from ._args import regularization
from ._arrays import read_masks, read_models
from ._common import Command, UsageError, check_plot, check_writable, load_space


def add_arguments(parser):
    parser.add_argument("space", metavar="SPACE", help="the .npz file to write")
    add_key(parser)
    parser.add_argument(
        "models",
        metavar="NAME=FILE",
        nargs="+",
        type=model_file,
        help="a model's name and its embeddings of the training items (.npy, "
        ".npz or FILE.npz:KEY), at least two",
    )
    _add_training_options(parser)
    parser.add_argument(
        "--observed",
        metavar="NAME=FILE",
        action="append",
        type=model_file,
        default=[],
        help="missing views: a boolean .npy vector, one entry per row, true "
        "where model NAME observed the item (its other rows are ignored and "
        "may hold NaN); repeatable",
    )
    parser.add_argument(
        "--freeze",
        metavar="NAME",
        action="append",
        default=[],
        help="with --continue: keep model NAME's weights as they are and fit "
        "the other models to the space it defines (to add a new model to a "
        "trained space); repeatable",
    )
    parser.add_argument(
        "--plot",
        metavar="PREFIX",
        help="also save PREFIX-loss.png (loss per iteration) and PREFIX-map.png "
        "(a 2-D map of the space, same items joined); needs matplotlib",
    )


def _add_training_options(parser):
    defaults = {
        field.name: field.default for field in dataclasses.fields(ProjectionConfig)
    }
    group = parser.add_argument_group("training")
    group.add_argument(
        "--dim",
        type=positive_int,
        help="dimension of the shared latent space (default: 64, or that of "
        "the --continue space)",
    )
    group.add_argument(
        "--epochs",
        type=positive_int,
        default=defaults["n_epochs"],
        help="passes over the data (default: %(default)s)",
    )
    group.add_argument(
        "--learning-rate",
        type=positive_float,
        default=defaults["learning_rate"],
        help="initial step size of --solver sgd; lower it if training diverges "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--alignment-weight",
        type=non_negative_float,
        default=defaults["alignment_weight"],
        help="weight of pulling the models' latents together, relative to "
        "reconstructing each model's features (default: %(default)s)",
    )
    group.add_argument(
        "--solver",
        choices=list(SOLVERS),
        default=defaults["solver"],
        help="training algorithm (default: %(default)s, the closed form: fast, and "
        "the best alignment; 'sgd' is the Go package's per-sample SGD)",
    )
    group.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default=defaults["objective"],
        help="loss the gradient solvers minimise",
    )
    group.add_argument(
        "--init",
        choices=list(INITS),
        default=defaults["init"],
        help="starting weights (default: %(default)s)",
    )
    group.add_argument(
        "--regularization",
        type=regularization,
        default=defaults["regularization"],
        help="ridge of the closed-form solutions, a number >= 0 or 'auto' (chosen "
        "per model from its data) (default: %(default)s)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults["batch_size"],
        help="rows per mini-batch (default: %(default)s)",
    )
    group.add_argument(
        "--tol",
        type=non_negative_float,
        default=defaults["tol"],
        help="early-stopping tolerance",
    )
    group.add_argument(
        "--seed",
        type=int,
        help="seed of the initial weights (default: 42; a --continue space "
        "has its own generator)",
    )
    group.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        help="precision of the weights (default: float64, or that of the "
        "--continue space)",
    )
    group.add_argument(
        "--continue",
        dest="resume",
        metavar="SPACE",
        help="start from the weights of a saved space instead of a new one",
    )


def run(args, report):
    check_writable(args.space)  # before training, not after
    if args.plot:
        check_plot(args.plot)
    data = read_models(args.models)
    if len(data) < 2:
        raise UsageError("train needs at least two models (NAME=FILE NAME=FILE ...)")
    counts = {name: len(array) for name, array in data.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name}: {n}" for name, n in counts.items())
        raise UsageError(
            f"the training files must have the same number of rows (row i of "
            f"every file is item i), got {listed}"
        )
    observed = read_masks(args.observed)
    if args.freeze and not args.resume:
        raise UsageError("--freeze keeps trained weights: use it with --continue SPACE")
    if args.resume:
        space = load_space(args.resume, args.key)
        _check_resumed(space, args)
        for name in args.freeze:
            if name not in space.models:
                raise UsageError(
                    f"--freeze {name}: {args.resume!r} has no model {name!r} "
                    f"(it has {', '.join(space.models) or 'none'})"
                )
        for name, array in data.items():
            if name not in space.models:
                space.register(name, array.shape[1])
    else:
        dim = 64 if args.dim is None else args.dim
        seed = 42 if args.seed is None else args.seed
        space = LatentSpace(dim, dtype=args.dtype or "float64", seed=seed)
        for name, array in data.items():
            space.register(name, array.shape[1])
    options = {
        "n_epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "alignment_weight": args.alignment_weight,
        "solver": args.solver,
        "objective": args.objective,
        "init": args.init,
        "regularization": args.regularization,
        "batch_size": args.batch_size,
        "tol": args.tol,
    }
    # The closed form is one iteration, whatever --epochs says.
    closed_form = SOLVERS[args.solver].closed_form
    if not args.quiet:
        total = 1 if closed_form else args.epochs
        options["callback"] = _training_progress(report, total)
    shapes = ", ".join(f"{n} {a.shape[1]}-d" for n, a in data.items())
    report(
        f"training a {space.dim}-d space on {len(next(iter(data.values())))} items "
        f"({shapes}), solver {args.solver}"
        + ("" if closed_form else f", at most {args.epochs} epochs")
    )
    result = space.train_projections(
        data, observed=observed, frozen=args.freeze, **options
    )
    space.save(args.space, config=result, key=args.key)
    report(f"saved {args.space}")
    print(
        f"trained {space!r} in {result.seconds:.2f} s: {result.n_epochs} "
        f"iterations, mean loss per item {result.initial_loss:.6g} -> "
        f"{result.final_loss:.6g}; saved to {args.space}"
    )
    if args.plot:
        _plot(args.plot, space, data, observed, result)
    return 0


def _check_resumed(space, args):
    """Refuse options that the saved space contradicts (they would be ignored)."""
    if args.dim is not None and args.dim != space.dim:
        raise UsageError(
            f"--dim {args.dim}: {args.resume!r} is a {space.dim}-d space (drop "
            "--dim to continue it, or train a new space)"
        )
    if args.dtype is not None and args.dtype != space.dtype.name:
        raise UsageError(
            f"--dtype {args.dtype}: {args.resume!r} is a {space.dtype.name} space"
        )
    if args.seed is not None:
        raise UsageError(
            f"--seed: {args.resume!r} continues with its own random generator"
        )


def _training_progress(report, n_epochs):
    """A ``callback(state)`` printing a line at most every 2 seconds."""
    last = [0.0]

    def callback(state):
        now = time.perf_counter()
        if now - last[0] >= 2.0 or state.iteration == n_epochs:
            last[0] = now
            report(f"iteration {state.iteration}/{n_epochs}, loss {state.loss:.6g}")
        return False

    return callback


def _plot(prefix, space, data, observed, result):
    """Save the loss curve and a map of the items every model observed."""
    import numpy as np

    from .. import _plots

    if observed is not None:
        rows = np.logical_and.reduce([observed.get(n, True) for n in data])
        data = {name: array[rows] for name, array in data.items()}
    written = [_plots.loss_curve(result, f"{prefix}-loss.png")]
    if len(next(iter(data.values()))):
        written.append(_plots.space_map(space, data, f"{prefix}-map.png"))
    print("pictures: " + ", ".join(written))


COMMAND = Command(
    name="train",
    help="train a shared space from aligned embeddings and save it",
    description="Register one model per NAME=FILE, train the shared space on the "
    "files (row i of every\nfile is the same item) and save it to SPACE (.npz). "
    "Progress goes to stderr.\n\nexample:\n  python -m latentspace train "
    "space.npz small=small.npy large=large.npy --dim 64",
    add_arguments=add_arguments,
    run=run,
)
