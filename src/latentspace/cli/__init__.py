# SPDX-License-Identifier: BSD-3-Clause
"""Command line: ``python -m latentspace COMMAND [options]``.

Run ``python -m latentspace --help`` for the commands, and
``python -m latentspace COMMAND --help`` for each one's options. Each command
is a module of this package with a `Command` record; `COMMANDS` lists them in
the order of the help.
"""

import argparse
import os
import sys
import warnings

from .. import __version__
from .._exceptions import TrainingDivergedError
from . import bench, demo, evaluate, index, info, project, query, search, train
from . import translate
from ._common import Reporter, UsageError

__all__ = ["COMMANDS", "main"]

COMMANDS = tuple(
    module.COMMAND
    for module in (
        train, info, project, translate, search, index, query, evaluate, bench, demo
    )
)

_DESCRIPTION = """\
latentspace: one shared latent space for embeddings from many models.

You have embeddings of the same items from several models (say a 384-d and a
768-d text encoder). `train` learns one shared space from them and saves it to
a file; the other commands use that file to map new embeddings into the space
(`project`), from one model's embeddings to another's (`translate`), to find
the items of one model that match queries of another (`search`) and to score
how well the models line up (`evaluate`). `index` projects a stored corpus of
one model into a search index file once (exact, or FAISS for millions of
items), which `query` then searches with embeddings of any model: to move a
vector index to a new embedding model without re-embedding the corpus.

Embeddings are read from NumPy files: .npy (one 2-D array, one row per item)
or .npz (one array, or FILE.npz:KEY for one of several). Models are named on
the command line as NAME=FILE; row i of every training file must describe the
same item.

example:
  python -m latentspace train space.npz small=small.npy large=large.npy --dim 64
  python -m latentspace info space.npz
  python -m latentspace search space.npz small=queries.npy large=gallery.npy -k 5
  python -m latentspace evaluate space.npz small=test_small.npy large=test_large.npy
  python -m latentspace index space.npz large=corpus.npy -o corpus.index
  python -m latentspace query corpus.index small=queries.npy -k 5
  python -m latentspace demo            # see it work on real data (scikit-learn)
"""


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m latentspace",
        description=_DESCRIPTION,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(
            prog, max_help_position=32
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"latentspace {__version__}"
    )
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND"
    )
    commands.required = True
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        if command.managed:
            sub.add_argument(
                "-q", "--quiet", action="store_true", help="no progress on stderr"
            )
        sub.set_defaults(run=command.run, managed=command.managed)
    return parser


def main(argv=None):
    """Parse ``argv`` (default: the command line), run the command; the exit code.

    Returns
    -------
    int
        0 on success, 1 if training diverged, 2 on a usage error (bad
        arguments or files) or a missing optional dependency, 130 if
        interrupted, 141 if the reader of the output went away (``| head``;
        the status of a process ended by SIGPIPE).

    Warnings (a solver that ran out of iterations, ...) are printed as one
    line on stderr, ``latentspace COMMAND: warning: ...``; ``--quiet``
    silences them.
    """
    args = _parser().parse_args(argv)
    if not args.managed:
        return args.run(args, None)
    with warnings.catch_warnings():
        if args.quiet:
            warnings.simplefilter("ignore")
        else:
            warnings.showwarning = _warning_line(args.command)
        return _run(args)


def _warning_line(command):
    """A `warnings.showwarning` that prints one line, without the source."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"latentspace {command}: warning: {text}", file=sys.stderr, flush=True)

    return show


def _run(args):
    """Run the parsed command; its exit code."""
    report = Reporter(args.quiet)
    prefix = f"latentspace {args.command}: error:"
    try:
        code = args.run(args, report)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader closed the pipe (``| head``): stop quietly. Python would
        # report the error again when it flushes stdout at exit, unless
        # stdout now points elsewhere (the recipe of Python's signal docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + 13  # SIGPIPE
    except TrainingDivergedError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"latentspace {args.command}: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:  # a missing optional dependency
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except (UsageError, OSError, ValueError, TypeError, KeyError) as exc:
        # SpaceFileError, UnknownModelError and InvalidParameterError included.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{prefix} {message}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{prefix} out of memory", file=sys.stderr)
        return 2
