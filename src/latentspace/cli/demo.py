# SPDX-License-Identifier: BSD-3-Clause
"""``demo``: align three models of handwritten digits in one latent space."""

import json
import sys

from .. import _demo
from .._exceptions import TrainingDivergedError
from .._training.solvers import SOLVERS
from ._args import fraction, non_negative_float, positive_float, positive_int
from ._common import Command, UsageError, check_plot


def add_arguments(parser):
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the train/test split, the models and the space's "
        "initialisation (default: %(default)s)",
    )
    parser.add_argument(
        "--dim",
        type=positive_int,
        default=32,
        help="dimension of the shared latent space (default: %(default)s)",
    )
    parser.add_argument(
        "--solver",
        choices=list(SOLVERS),
        help="training algorithm (default: the library's, the closed form 'cca')",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        help="passes over the training images of the gradient solvers",
    )
    parser.add_argument(
        "--learning-rate",
        type=positive_float,
        help="initial step size of --solver sgd/minibatch",
    )
    parser.add_argument(
        "--alignment-weight",
        type=non_negative_float,
        help="weight of pulling the models' latents together, relative to "
        "reconstructing each model's features",
    )
    parser.add_argument(
        "--test-size",
        type=fraction,
        default=0.3,
        help="fraction of the images held out for testing (default: %(default)s)",
    )
    parser.add_argument(
        "--latency-calls",
        type=positive_int,
        default=2000,
        help="single-vector project() calls timed per model (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the numbers as JSON instead of the table",
    )
    parser.add_argument(
        "--plot",
        metavar="PREFIX",
        help="also save PREFIX-loss.png (loss per epoch) and PREFIX-map.png (the "
        "test images of every model in the trained space, in 2-D, the same image "
        "joined); needs matplotlib",
    )


def run(args, report):
    training = {
        name: value
        for name, value in (
            ("solver", args.solver),
            ("n_epochs", args.epochs),
            ("learning_rate", args.learning_rate),
            ("alignment_weight", args.alignment_weight),
        )
        if value is not None
    }
    try:
        if args.plot:
            check_plot(args.plot)
        numbers = _demo.run(
            seed=args.seed,
            dim=args.dim,
            test_size=args.test_size,
            latency_calls=args.latency_calls,
            plot=args.plot,
            **training,
        )
    except _demo.MissingDependencyError:
        print(f"latentspace demo: {_demo.INSTALL_HINT}", file=sys.stderr)
        return 2
    except (ImportError, UsageError) as exc:  # no matplotlib, or a bad --plot
        print(f"latentspace demo: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f"latentspace demo: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(numbers, indent=2) if args.json else _demo.format_report(numbers))
    return 0


COMMAND = Command(
    name="demo",
    help="align three models of handwritten digits in one latent space",
    description="""\
Show what latentspace is for, on real data that ships with scikit-learn (no
download): the 1797 8x8 handwritten digits are split into train and test
images, and every image is embedded by three different "models" fitted on the
training images only: PCA of the pixels (32 dims), an RBF kernel feature map
(100 dims) and the hidden layer of a small neural-network classifier (64 dims).
The three models are registered in one LatentSpace, which learns a projection
of each into a shared space from their raw embeddings of the training images,
with the library's defaults.

Then, on the held-out test images, for every pair of models A -> B: take a
test image as model A sees it, project it, and look for the nearest test image
as model B sees it (CSLS: cosine corrected for hubs). The table shows how
often that is the very same image (top 1, top 10) and how often it shows the
same digit, for the untrained space, the trained space and pure chance, plus
the training time and the latency of one `project` call. Takes about 5-30
seconds.

Needs scikit-learn: pip install "latentspace[demo]"
""",
    add_arguments=add_arguments,
    run=run,
    managed=False,
)
