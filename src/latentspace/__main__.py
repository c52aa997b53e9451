# SPDX-License-Identifier: BSD-3-Clause
"""Command line: ``python -m latentspace demo [options]``.

Run ``python -m latentspace demo --help`` for what the demo does and its options.
"""

import argparse
import json
import sys

from . import __version__

__all__ = ["main"]

_DEMO_HELP = "align three models of handwritten digits in one latent space"

_DEMO_DESCRIPTION = """\
Show what latentspace is for, on real data that ships with scikit-learn (no
download): the 1797 8x8 handwritten digits are split into train and test
images, and every image is embedded by three different "models" fitted on the
training images only: PCA of the pixels (32 dims), an RBF kernel feature map
(100 dims) and the hidden layer of a small neural-network classifier (64 dims).
The three models are registered in one LatentSpace, which learns a projection
of each into a shared space from the training images.

Then, on the held-out test images, for every pair of models A -> B: take a
test image as model A sees it, project it, and look for the nearest test image
as model B sees it (cosine similarity). The table shows how often that is the
very same image (top 1, top 10) and how often it shows the same digit, for
the untrained space, the trained space and pure chance, plus the training time
and loss and the latency of one `project` call. Takes about 5-30 seconds.

Needs scikit-learn: pip install "latentspace[demo]"
"""


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m latentspace",
        description="latentspace: one shared latent space for embeddings from "
        "many models.",
    )
    parser.add_argument(
        "--version", action="version", version=f"latentspace {__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    demo = commands.add_parser(
        "demo",
        help=_DEMO_HELP,
        description=_DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the train/test split, the models and the space's "
        "initialisation (default: %(default)s)",
    )
    demo.add_argument(
        "--dim",
        type=_positive_int,
        default=32,
        help="dimension of the shared latent space (default: %(default)s)",
    )
    demo.add_argument(
        "--epochs",
        type=_positive_int,
        default=100,
        help="training passes over the training images (default: %(default)s)",
    )
    demo.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=0.01,
        help="initial SGD step size; above about 0.03 training diverges "
        "(default: %(default)s)",
    )
    demo.add_argument(
        "--alignment-weight",
        type=_non_negative_float,
        default=1.0,
        help="weight of pulling the models' latents together, relative to "
        "reconstructing each model's features (default: %(default)s)",
    )
    demo.add_argument(
        "--test-size",
        type=_fraction,
        default=0.3,
        help="fraction of the images held out for testing (default: %(default)s)",
    )
    demo.add_argument(
        "--latency-calls",
        type=_positive_int,
        default=2000,
        help="single-vector project() calls timed per model (default: %(default)s)",
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help="print the numbers as JSON instead of the table",
    )
    return parser


def main(argv=None):
    """Parse ``argv`` (default: the command line), run the command; the exit code.

    Returns
    -------
    int
        0 on success, 1 if training diverged, 2 on a usage error or a missing
        optional dependency.
    """
    args = _parser().parse_args(argv)
    # Imported here so that --help works without scikit-learn.
    from ._demo import INSTALL_HINT, MissingDependencyError, format_report, run
    from ._exceptions import TrainingDivergedError

    try:
        numbers = run(
            seed=args.seed,
            dim=args.dim,
            n_epochs=args.epochs,
            learning_rate=args.learning_rate,
            alignment_weight=args.alignment_weight,
            test_size=args.test_size,
            latency_calls=args.latency_calls,
        )
    except MissingDependencyError:
        print(f"latentspace demo: {INSTALL_HINT}", file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f"latentspace demo: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(numbers, indent=2) if args.json else format_report(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
