# SPDX-License-Identifier: BSD-3-Clause
"""``evaluate``: score how well a saved space aligns its models."""

import json
import sys

from ._args import add_key, add_method, model_file, positive_int
from ._arrays import read_models
from ._common import Command, UsageError, check_models, check_plot, check_rows
from ._common import load_space


def add_arguments(parser):
    parser.add_argument("space", metavar="SPACE")
    add_key(parser)
    parser.add_argument(
        "models",
        metavar="NAME=FILE",
        nargs="+",
        type=model_file,
        help="held-out embeddings of registered models",
    )
    parser.add_argument(
        "-k",
        type=positive_int,
        nargs="+",
        default=[1, 10],
        help="top-k cut-offs (default: 1 10)",
    )
    add_method(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--plot",
        metavar="PREFIX",
        help="also save PREFIX-map.png, a 2-D map of the items in the space "
        "(needs matplotlib)",
    )


def run(args, report):
    space = load_space(args.space, args.key)
    check_models(space, [name for name, _ in args.models])
    data = read_models(args.models)
    for name, array in data.items():
        check_rows(space, name, array, "data")
    counts = {len(array) for array in data.values()}
    if len(counts) > 1:
        raise UsageError("the evaluation files must have the same number of rows")
    if args.plot:
        check_plot(args.plot)
    report(f"evaluating {len(data)} models on {counts.pop()} items ({args.method})")
    result = space.evaluate(data, k=args.k, method=args.method)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    if args.plot:
        from .. import _plots

        written = _plots.space_map(space, data, f"{args.plot}-map.png")
        print(f"picture: {written}", file=sys.stderr if args.json else sys.stdout)
    return 0


COMMAND = Command(
    name="evaluate",
    help="score how well a saved space aligns its models",
    description="On held-out aligned items (row i of every file is the same item): "
    "for every ordered\npair of models A -> B, how often an item of A finds "
    "the same item among all items of B\n(top-k accuracy, mean reciprocal "
    "rank), and how well every model is reconstructed\nfrom the space "
    "(R^2).\n\nexample:\n  python -m latentspace evaluate space.npz "
    "small=test_small.npy large=test_large.npy",
    add_arguments=add_arguments,
    run=run,
)
