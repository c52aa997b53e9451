# SPDX-License-Identifier: BSD-3-Clause
"""What the commands share: the command record, usage errors, progress lines,
output paths and the space file."""

import dataclasses
import os
import sys
import time
from collections.abc import Callable


class UsageError(Exception):
    """A bad file or argument: reported in one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of ``python -m latentspace``.

    Attributes
    ----------
    name, help, description : str
        The command's name, its line in the main help and its own help text.
    add_arguments : callable
        ``add_arguments(parser)`` adds the command's arguments.
    run : callable
        ``run(args, report)`` runs it and returns the exit code; ``report``
        prints a progress line on stderr.
    managed : bool
        Whether `main` gives the command ``-q/--quiet``, one-line warnings and
        its error handling (the demo has its own).
    """

    name: str
    help: str
    description: str
    add_arguments: Callable
    run: Callable
    managed: bool = True


class Reporter:
    """Progress lines on stderr (silenced by --quiet)."""

    def __init__(self, quiet):
        self.quiet = quiet
        self.started = time.perf_counter()

    def __call__(self, message):
        if not self.quiet:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:6.1f} s] {message}", file=sys.stderr, flush=True)


def every(seconds, callback):
    """``callback`` called at most once per ``seconds`` (and at the end)."""
    last = [time.perf_counter()]

    def throttled(done, total):
        now = time.perf_counter()
        if now - last[0] >= seconds or done == total:
            last[0] = now
            callback(done, total)

    return throttled


def progress(report, quiet, what):
    """A ``callback(done, total)`` drawing a tqdm bar on stderr (a line every
    2 seconds without tqdm); nothing with --quiet."""
    from .._monitor import bar_callback

    if quiet:
        return None
    try:
        return bar_callback(what)
    except ImportError:
        return every(2.0, lambda done, n: report(f"{done}/{n} {what}"))


def check_writable(path):
    """Fail early (before the work) if ``path`` cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {path!r}: no directory {directory!r}")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {path!r}: it is a directory")


def check_plot(prefix):
    """Fail early (before a long run) if pictures cannot be written."""
    from .. import _plots

    _plots.require()
    check_writable(f"{prefix}-map.png")


def load_space(path, key=None):
    """The `LatentSpace` saved at ``path`` (signed under ``key``, if given)."""
    from .._space import LatentSpace

    if not os.path.exists(path):
        raise UsageError(f"no such space file {path!r}")
    if os.path.isdir(path):
        raise UsageError(f"{path!r} is a directory, not a saved space")
    return LatentSpace.load(path, key=key)


def check_models(space, names):
    """Raise the library's error for the first name ``space`` does not have."""
    for name in names:
        space.offset(name)  # UnknownModelError naming the registered models


def check_rows(space, name, array, what):
    """Fail before any progress line if ``array``'s rows are not model
    ``name``'s width."""
    width = space.models[name]
    if array.shape[1] != width:
        raise UsageError(
            f"{what} for model {name!r} must have shape (n, {width}), got shape "
            f"{array.shape}"
        )
