# SPDX-License-Identifier: BSD-3-Clause
"""``info``: show what a saved space holds."""

import json
import os

from .._files.space_file import read_header
from .._training.solvers import SOLVERS
from ._args import add_key
from ._common import Command, UsageError


def add_arguments(parser):
    parser.add_argument("space", metavar="SPACE")
    add_key(parser)
    parser.add_argument("--json", action="store_true", help="print the raw header")


def run(args, report):
    if not os.path.exists(args.space):
        raise UsageError(f"no such space file {args.space!r}")
    header = read_header(args.space, key=args.key)
    if args.json:
        print(json.dumps(header, indent=2))
        return 0
    print(
        f"{args.space}: latentspace file format {header['version']} "
        f"(written by latentspace {header.get('library_version', '?')})"
    )
    print(f"  space   dim={header['dim']}, dtype={header['dtype']}")
    print(f"  models  {len(header['models'])}, in registration order:")
    for model in header["models"]:
        offset = ", with input offset" if model["offset"] else ""
        print(f"    {model['name']:<20} input_dim={model['input_dim']}{offset}")
    config = header.get("config")
    if config:
        unused = _unused_fields(config)
        shown = ", ".join(
            f"{k}={v}" for k, v in config.items() if v is not None and k not in unused
        )
        print(f"  trained with {shown}")
    return 0


def _unused_fields(config):
    """The fields of a recorded configuration that did not shape the weights
    (``info`` leaves them out; ``--json`` shows everything)."""
    unused = {"progress", "callback"}
    name = config.get("solver")
    solver = SOLVERS.get(name) if isinstance(name, str) else None
    if solver is None:
        return unused
    unused |= solver.ignores
    objective = config.get("objective") or solver.objective
    init = config.get("init") or solver.init
    if not (solver.closed_form or objective == "whitened" or init == "cca"):
        unused.add("regularization")
    return unused


COMMAND = Command(
    name="info",
    help="show what a saved space holds",
    description="Check a saved space (checksum included) and print its dimension, "
    "models and training configuration.",
    add_arguments=add_arguments,
    run=run,
)
