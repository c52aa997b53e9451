# SPDX-License-Identifier: BSD-3-Clause
"""``translate``: map embeddings of one model to another model's embeddings."""

from ._args import add_key
from ._arrays import read_matrix, write_output
from ._common import Command, load_space


def add_arguments(parser):
    parser.add_argument("space", metavar="SPACE")
    add_key(parser)
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("target", metavar="TARGET")
    parser.add_argument("input", metavar="INPUT")
    parser.add_argument("-o", "--output", required=True, help="the .npy file to write")


def run(args, report):
    space = load_space(args.space, args.key)
    features = read_matrix(args.input, "input")
    out = space.translate(args.source, args.target, features)
    write_output(args.output, {"features": out})
    print(
        f"translated {len(out)} items {args.source!r} -> {args.target!r}: "
        f"{args.output} {out.shape}"
    )
    return 0


COMMAND = Command(
    name="translate",
    help="map embeddings of one model to another model's embeddings",
    description="Write INPUT's rows, embeddings of SOURCE, as TARGET would embed "
    "them (through the\nshared space) to OUTPUT.\n\nexample:\n  python -m "
    "latentspace translate space.npz small large items.npy -o as_large.npy",
    add_arguments=add_arguments,
    run=run,
)
