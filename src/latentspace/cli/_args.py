# SPDX-License-Identifier: BSD-3-Clause
"""Argument types and the options several commands share."""

import argparse

from .._search.scoring import METHODS


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _float(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def positive_float(text):
    value = _float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text):
    value = _float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def regularization(text):
    if text == "auto":
        return text
    try:
        return non_negative_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto' or a number >= 0, got {text!r}"
        ) from None


def fraction(text):
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def model_file(text):
    """``NAME=FILE`` -> ``(name, file)``."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"expected NAME=FILE (a model name, '=', a .npy/.npz file), got {text!r}"
        )
    return name, path


def key_value(text):
    """``KEY=VALUE`` (an integer value) -> ``(key, value)``."""
    key, sep, value = text.partition("=")
    if sep and key:
        try:
            return key, int(value)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"expected KEY=INTEGER, got {text!r}")


def key_file(path):
    """The secret key in the file ``path`` (its bytes, as they are)."""
    try:
        with open(path, "rb") as file:
            key = file.read(1 << 16)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the key file: {exc}") from None
    if not key:
        raise argparse.ArgumentTypeError(f"the key file {path!r} is empty")
    return key


def add_key(parser, files="space"):
    """The ``--key-file`` option of the commands that read or write signed
    files."""
    parser.add_argument(
        "--key-file", type=key_file, dest="key", metavar="PATH",
        help=f"a file holding the secret key (its bytes; 32 random bytes, say) that "
        f"signs the {files} files this command reads and writes (HMAC-SHA256; "
        "without it, files carry a plain checksum and signed files are refused)",
    )


def add_method(parser, default="csls"):
    """The ``--method`` option of the commands that search."""
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=default,
        help="how items are compared in the space: cosine similarity, or CSLS "
        "(cosine corrected for hubs, items that are close to everything) "
        "(default: %(default)s)",
    )


def add_hits_output(parser):
    """The ``-o`` and ``--show`` options of the commands that print hits."""
    parser.add_argument(
        "-o", "--output", help="save 'scores' and 'indices' to this .npz file"
    )
    parser.add_argument(
        "--show",
        type=positive_int,
        default=20,
        help="queries printed without -o (default: %(default)s)",
    )
