# SPDX-License-Identifier: BSD-3-Clause
"""``bench``: quick timings of project and search on this machine."""

import os
import platform
import time

import numpy as np

from .. import __version__
from .._search.scoring import METHODS
from .._space import LatentSpace
from ._args import positive_int
from ._common import Command


def add_arguments(parser):
    parser.add_argument(
        "--size",
        type=positive_int,
        default=5000,
        help="items (rows) of the batch and of the search (default: %(default)s)",
    )
    parser.add_argument("--dim", type=positive_int, default=64)
    parser.add_argument("--width", type=positive_int, default=256)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")


def _median(fn, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _line(label, seconds, rate):
    shown = f"{seconds * 1e6:8.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:8.1f} ms"
    print(f"  {label:<40} {shown}  {rate}".rstrip())


def run(args, report):
    rng = np.random.default_rng(0)
    space = LatentSpace(args.dim, dtype=args.dtype)
    space.register("a", args.width)
    space.register("b", args.width)
    X = rng.normal(size=(args.size, args.width)).astype(args.dtype)
    x = np.ascontiguousarray(X[0])
    print(
        f"latentspace {__version__}, numpy {np.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus"
    )
    print(
        f"quick, indicative timings (median of a few runs, random weights, "
        f"dim={args.dim}, width={args.width}, {args.dtype}); other load on the "
        "machine changes them"
    )
    one = _median(lambda: space.project("a", x), 2000)
    _line("project, one vector", one, "")
    batch = _median(lambda: space.project("a", X), 5)
    _line(f"project, {args.size} rows", batch, f"({args.size / batch:,.0f} rows/s)")
    index = space.index("b", X)
    for method in METHODS:
        seconds = _median(lambda m=method: index.search("a", X, k=10, method=m), 3)
        _line(
            f"search {args.size} x {args.size}, top 10, {method}",
            seconds,
            f"({args.size / seconds:,.0f} queries/s)",
        )
    print(
        "For the full benchmarks (against NumPy, with the machine's details), "
        "from a source checkout:\n  python benchmarks/bench_core.py\n"
        "  python benchmarks/bench_search.py"
    )
    return 0


COMMAND = Command(
    name="bench",
    help="quick timings of project and search on this machine",
    description="A few seconds of indicative timings on random data: project (one "
    "vector, a batch)\nand search. The full benchmarks live in the source "
    "checkout's benchmarks/ folder.",
    add_arguments=add_arguments,
    run=run,
)
