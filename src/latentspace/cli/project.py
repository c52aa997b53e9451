# SPDX-License-Identifier: BSD-3-Clause
"""``project``: map embeddings of one model into the shared space."""

from ._args import add_key
from ._arrays import read_matrix, write_output
from ._common import Command, load_space


def add_arguments(parser):
    parser.add_argument("space", metavar="SPACE")
    add_key(parser)
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("input", metavar="INPUT", help=".npy/.npz, one row per item")
    parser.add_argument("-o", "--output", required=True, help="the .npy file to write")


def run(args, report):
    space = load_space(args.space, args.key)
    features = read_matrix(args.input, "input")
    latent = space.project(args.model, features)
    write_output(args.output, {"latent": latent})
    print(
        f"projected {len(latent)} items of {args.model!r}: {args.output} {latent.shape}"
    )
    return 0


COMMAND = Command(
    name="project",
    help="map embeddings of one model into the shared space",
    description="Write INPUT's rows, embeddings of MODEL, mapped into the space "
    "(n x dim) to OUTPUT.\n\nexample:\n  python -m latentspace project "
    "space.npz small new_items.npy -o latent.npy",
    add_arguments=add_arguments,
    run=run,
)
