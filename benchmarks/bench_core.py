# SPDX-License-Identifier: BSD-3-Clause
"""Benchmarks of the compiled core against NumPy, measured in one run.

    python benchmarks/bench_core.py            # full run (about 2 minutes)
    python benchmarks/bench_core.py --quick    # fewer repeats

Prints two tables of medians and ratios:

1. The reference optimiser (per-sample SGD of SPEC.md): seconds per epoch of
   `LatentSpace.train_projections` (loss evaluation after every epoch
   included) against the fastest NumPy transcription we could write (in-place
   BLAS ``ger``/``gemv`` through SciPy on Fortran-ordered weights, BLAS on
   one thread), and against the floor set by the bytes an epoch must move:
   every sample reads and writes every model's ``P`` and ``R`` once, at the
   read+write bandwidth measured here on an array of the same size.
2. `LatentSpace.project` of one vector against NumPy's ``x @ P``, with
   NumPy's BLAS on its default threads and on one thread, timed in
   interleaved rounds; plus the cost of a call at (4, 4), and the ratio that
   this call overhead alone would allow at each size.
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np
from scipy.linalg import blas
from threadpoolctl import threadpool_info, threadpool_limits

import latentspace


def median_seconds(fn, repeats, number=1):
    """Median over ``repeats`` of the mean time of ``number`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def numpy_sgd_epoch(Xs, Ps, Rs, learning_rate, alignment_weight):
    """One epoch of SPEC.md's reference loop with in-place BLAS, on F-ordered
    ``Ps`` (d, k) and ``Rs`` (k, d), updated in place."""
    dtype = Xs[0].dtype
    ger, gemv = (
        (blas.dger, blas.dgemv) if dtype == np.float64 else (blas.sger, blas.sgemv)
    )
    lr, w = learning_rate, alignment_weight
    for i in range(len(Xs[0])):
        xs = [X[i] for X in Xs]
        # z = x @ P
        zs = [gemv(1.0, P, x, trans=1) for x, P in zip(xs, Ps)]
        zbar = sum(zs) / len(zs)
        for x, z, P, R in zip(xs, zs, Ps, Rs):
            # e = z @ R - x
            e = gemv(1.0, R, z, beta=-1.0, y=x, trans=1)
            # R -= lr * outer(z, e)
            ger(-lr, z, e, a=R, overwrite_a=True)
            # g = R @ e + w * (z - zbar)
            g = gemv(1.0, R, e, beta=w, y=z - zbar, overwrite_y=True)
            # P -= lr * outer(x, g)
            ger(-lr, x, g, a=P, overwrite_a=True)


def _rw_bandwidth(n_bytes, dtype, repeats):
    """Read+write bandwidth (bytes/s) of an in-place update of ``n_bytes``."""
    a = np.ones(n_bytes // np.dtype(dtype).itemsize, dtype)
    seconds = median_seconds(lambda: np.add(a, 1, out=a), repeats, number=20)
    return 2 * a.nbytes / seconds


def bench_sgd(repeats):
    rows = []
    cases = [((3, 5), 4, 200, 200), ((384, 768), 128, 2000, 2)]
    for dtype in (np.float64, np.float32):
        for widths, k, n, epochs in cases:
            rng = np.random.default_rng(0)
            Xs = [(rng.standard_normal((n, d)) * 0.1).astype(dtype) for d in widths]
            space = latentspace.LatentSpace(k, dtype=dtype)
            for m, d in enumerate(widths):
                space.register(f"m{m}", d)
            data = {f"m{m}": X for m, X in enumerate(Xs)}
            ours = median_seconds(
                lambda: space.train_projections(data, n_epochs=epochs), repeats
            ) / epochs
            Ps = [np.asfortranarray(space.weights(f"m{m}")[0]) for m in range(2)]
            Rs = [np.asfortranarray(space.weights(f"m{m}")[1]) for m in range(2)]
            numpy_epochs = max(1, epochs // 20)
            with threadpool_limits(1, user_api="blas"):
                ref = median_seconds(
                    lambda: [
                        numpy_sgd_epoch(Xs, Ps, Rs, 0.01, 1.0)
                        for _ in range(numpy_epochs)
                    ],
                    repeats,
                ) / numpy_epochs
            weight_bytes = 2 * sum(widths) * k * np.dtype(dtype).itemsize
            # Tiny weights sit in L1 and the epoch is bound by instructions, not
            # bytes: no floor then.
            floor = (
                n * 2 * weight_bytes / _rw_bandwidth(weight_bytes, dtype, repeats)
                if weight_bytes > 2**20
                else float("nan")
            )
            rows.append(
                (
                    np.dtype(dtype).name,
                    f"{widths[0]}+{widths[1]}->{k}",
                    n,
                    ours * 1e3,
                    ref * 1e3,
                    ref / ours,
                    floor * 1e3,
                    floor / ours,
                )
            )
    print("\nReference SGD: milliseconds per epoch (median of", repeats, "runs)")
    header = ("dtype", "widths->k", "n", "latentspace", "numpy+blas", "speed-up",
              "mem floor", "of floor")
    print("{:<8} {:<14} {:>5} {:>12} {:>11} {:>9} {:>10} {:>9}".format(*header))
    for r in rows:
        line = "{:<8} {:<14} {:>5} {:>12.3f} {:>11.3f} {:>8.1f}x".format(*r[:6])
        if r[6] == r[6]:  # not NaN
            line += " {:>10.3f} {:>8.0%}".format(*r[6:])
        print(line)


def interleaved_medians(fns, repeats, number):
    """Median seconds per call of every ``fns`` value over ``repeats`` rounds,
    each round timing ``number`` calls of each in turn (so that a change in
    the machine's load hits all of them alike). ``fns`` maps a label to a
    function, or to ``(function, blas_threads)``."""
    times = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            fn, threads = fn if isinstance(fn, tuple) else (fn, None)
            with threadpool_limits(threads, user_api="blas"):
                times[label].append(median_seconds(fn, 1, number))
    return {label: statistics.median(values) for label, values in times.items()}


def bench_project(repeats):
    def timings(d, k, dtype, number):
        space = latentspace.LatentSpace(k, dtype=dtype)
        space.register("m", d)
        P = space.weights("m")[0]
        x = np.random.default_rng(0).standard_normal(d).astype(dtype)
        return interleaved_medians(
            {
                "ours": lambda: space.project("m", x),
                "numpy": lambda: x @ P,
                "numpy1": (lambda: x @ P, 1),
            },
            repeats,
            number,
        )

    rows = []
    for dtype in (np.float64, np.float32):
        # The cost of a call that does (almost) no arithmetic.
        overhead = timings(4, 4, dtype, 20_000)
        for d, k in [(384, 64), (768, 256), (4096, 1024)]:
            t = timings(d, k, dtype, max(10, 200_000 // (d * k // 64)))
            # Our time if our product took exactly as long as NumPy's
            # single-threaded one: what our call overhead alone allows.
            bound = (t["numpy1"] - overhead["numpy1"] + overhead["ours"]) / t["numpy"]
            rows.append((np.dtype(dtype).name, f"({d}, {k})", t["ours"] * 1e6,
                         t["numpy"] * 1e6, t["ours"] / t["numpy"],
                         t["numpy1"] * 1e6, t["ours"] / t["numpy1"], bound))
        rows.append((np.dtype(dtype).name, "(4, 4)", overhead["ours"] * 1e6,
                     overhead["numpy"] * 1e6, overhead["ours"] / overhead["numpy"],
                     overhead["numpy1"] * 1e6, overhead["ours"] / overhead["numpy1"],
                     float("nan")))
    print("\nproject() of one vector: microseconds per call (median of", repeats,
          "interleaved rounds)")
    header = ("dtype", "shape of P", "latentspace", "x @ P", "ratio",
              "x @ P (1 thr)", "ratio", "bound")
    print("{:<8} {:<13} {:>12} {:>9} {:>7} {:>14} {:>7} {:>7}".format(*header))
    for r in rows:
        line = ("{:<8} {:<13} {:>12.2f} {:>9.2f} {:>6.2f}x {:>14.2f} {:>6.2f}x"
                .format(*r[:7]))
        if r[7] == r[7]:  # not NaN
            line += f" {r[7]:>6.2f}x"
        print(line)
    print("(4, 4) is the cost of a call; bound: the ratio if our product took as "
          "long as\nsingle-threaded NumPy's, i.e. what the call overhead alone "
          "allows")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    print(f"latentspace {latentspace.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.1f} at the start")
    for lib in threadpool_info():
        print(f"  {lib['internal_api']} {lib.get('version')} "
              f"({lib.get('architecture')}, {lib['num_threads']} threads): "
              f"{os.path.basename(lib['filepath'])}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"  {var}={os.environ[var]}")
    bench_sgd(repeats)
    bench_project(repeats)


if __name__ == "__main__":
    main()
