# SPDX-License-Identifier: BSD-3-Clause
"""Benchmarks of the compiled core against NumPy, measured in one run.

    python benchmarks/bench_core.py                # full run (about 2 minutes)
    python benchmarks/bench_core.py --quick        # fewer repeats
    python benchmarks/bench_core.py --only sgd --repeats 15 --clock cpu

Prints medians and ratios of interleaved rounds (each round times every
contender once, so that a change in the machine's load hits all alike):

1. The reference optimiser (per-sample SGD, docs/maths.md §3): milliseconds per
   epoch of the compiled epoch alone and of `LatentSpace.train_projections`
   (which also evaluates the loss before the first epoch and after every
   epoch), against the fastest NumPy transcription we could write (in-place
   BLAS ``ger``/``gemv`` through SciPy on Fortran-ordered weights, BLAS on
   one thread). Then, for weights larger than 1 MiB, microseconds per sample
   against the floor set by the bytes a sample must move (every weight read
   and written once) at three rates measured in the same rounds: a STREAM-like
   copy and an in-place update of as many bytes, and a single-vector gemv of
   a matrix that stays in L2.
2. The fixed cost of a training call: a 1-epoch `train_projections` with
   solver="sgd" at the Go package tests' size (3+5 -> 4, 200 samples), against
   the epoch it runs, and what each of its steps costs alone.
3. `LatentSpace.project` of one vector against NumPy's ``x @ P``, with
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
from latentspace._training import sgd as _sgd
from latentspace._training.data import training_data
from latentspace._model import make_model
from latentspace._training.objective import ReferenceLoss
from latentspace._kernels.sgd import sgd_avx


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
    """One epoch of the reference loop (docs/maths.md §3) with in-place BLAS, on F-ordered
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


def _compiled_epoch(Xs, Ps, Rs, learning_rate, alignment_weight):
    """The compiled epoch alone (no loss evaluation, no validation), on copies
    of the weights. Reaches into the private driver of `train_projections`:
    the public API always evaluates the loss."""
    widths = np.array([X.shape[1] for X in Xs], dtype=np.intp)
    X = np.concatenate(Xs, axis=1)
    P = np.concatenate([p.ravel() for p in Ps])
    R = np.concatenate([r.ravel() for r in Rs])
    rates = np.ones(len(Xs), X.dtype)
    restart, epoch = _sgd._kernels(X, widths, Ps[0].shape[1], None, rates, P, R,
                                   alignment_weight)
    restart()
    return lambda: epoch(learning_rate)


def _rounds(fns, repeats, clock):
    """Seconds per call of every ``fns`` value (``label: (function, number of
    calls per timing)``) in each of ``repeats`` interleaved rounds."""
    times = {label: [] for label in fns}
    for _ in range(repeats):
        for label, (fn, number) in fns.items():
            start = clock()
            for _ in range(number):
                fn()
            times[label].append((clock() - start) / number)
    return times


def _sgd_case(widths, k, n, epochs, dtype, repeats, clock):
    """Times of one case: a row of the first table and, for weights larger
    than 1 MiB, one of the second (else None)."""
    rng = np.random.default_rng(0)
    Xs = [(rng.standard_normal((n, d)) * 0.1).astype(dtype) for d in widths]
    space = latentspace.LatentSpace(k, dtype=dtype)
    for m, d in enumerate(widths):
        space.register(f"m{m}", d)
    data = {f"m{m}": X for m, X in enumerate(Xs)}
    weights = [space.weights(f"m{m}") for m in range(len(widths))]
    epoch = _compiled_epoch(Xs, [w[0] for w in weights], [w[1] for w in weights],
                            0.01, 1.0)
    Ps = [np.asfortranarray(w[0]) for w in weights]
    Rs = [np.asfortranarray(w[1]) for w in weights]
    numpy_epochs = max(1, epochs // 20)
    fns = {
        "epoch": (epoch, epochs),
        "train": (lambda: space.train_projections(data, solver="sgd",
                                                  n_epochs=epochs), 1),
        "numpy": (lambda: numpy_sgd_epoch(Xs, Ps, Rs, 0.01, 1.0), numpy_epochs),
    }
    itemsize = np.dtype(dtype).itemsize
    weight_bytes = 2 * sum(widths) * k * itemsize
    # Tiny weights sit in L1 and the epoch is bound by instructions, not
    # bytes: no floor then.
    if weight_bytes > 2**20:
        # STREAM-like copy of as many bytes as the weights, and the same bytes
        # updated in place, as the epoch does.
        src = np.ones(weight_bytes // itemsize, dtype)
        dst = np.empty_like(src)
        fns["copy"] = (lambda: np.copyto(dst, src), 20)
        fns["inplace"] = (lambda: np.multiply(dst, 1.0, out=dst), 20)
        # Level-2 BLAS streaming a 256 KiB matrix from L2; its call cost,
        # measured on a 1 x 1 matrix, is taken off.
        gemv = blas.dgemv if dtype == np.float64 else blas.sgemv
        A = np.ones((64, 2**18 // 64 // itemsize), dtype, order="F")
        x, y = np.ones(A.shape[1], dtype), np.zeros(64, dtype)
        one, y1 = np.ones((1, 1), dtype, order="F"), np.zeros(1, dtype)
        fns["gemv"] = (lambda: gemv(1.0, A, x, beta=1.0, y=y, overwrite_y=True), 200)
        fns["call"] = (lambda: gemv(1.0, one, y1, beta=1.0, y=y1, overwrite_y=True),
                       200)
    with threadpool_limits(1, user_api="blas"):
        t = _rounds(fns, repeats, clock)
    t["train"] = [v / epochs for v in t["train"]]
    med = {label: statistics.median(v) for label, v in t.items()}
    name = np.dtype(dtype).name
    shape = f"{'+'.join(map(str, widths))}->{k}"
    row = (name, shape, n, med["epoch"] * 1e3, med["train"] * 1e3, med["numpy"] * 1e3,
           statistics.median(a / b for a, b in zip(t["numpy"], t["epoch"])),
           statistics.median(a / b for a, b in zip(t["numpy"], t["train"])))
    if "copy" not in t:
        return row, None
    # Every sample reads and writes every weight once.
    moved = 2 * weight_bytes
    per_sample = [v / n for v in t["epoch"]]
    floor = [name, shape, statistics.median(per_sample) * 1e6, moved / 1e6]
    for bandwidth in (
        [2 * weight_bytes / v for v in t["copy"]],
        [2 * weight_bytes / v for v in t["inplace"]],
        [A.nbytes / (g - c) for g, c in zip(t["gemv"], t["call"])],
    ):
        floor += [
            statistics.median(bandwidth) / 1e9,
            statistics.median(moved / b for b in bandwidth) * 1e6,
            statistics.median(moved / b / s for b, s in zip(bandwidth, per_sample)),
        ]
    return row, floor


def bench_sgd(repeats, clock):
    rows, floors = [], []
    for dtype in (np.float64, np.float32):
        for widths, k, n, epochs in [((3, 5), 4, 200, 200), ((384, 768), 128, 2000, 2)]:
            row, floor = _sgd_case(widths, k, n, epochs, dtype, repeats, clock)
            rows.append(row)
            if floor is not None:
                floors.append(floor)
    avx = sgd_avx()
    print(f"\nReference SGD: milliseconds per epoch, medians of {repeats} interleaved "
          f"rounds ({'AVX' if avx else 'baseline'} loops)")
    header = ("dtype", "widths->k", "n", "epoch", "train", "numpy", "numpy/epoch",
              "numpy/train")
    print("{:<8} {:<14} {:>5} {:>9} {:>9} {:>9} {:>12} {:>12}".format(*header))
    for r in rows:
        print("{:<8} {:<14} {:>5} {:>9.3f} {:>9.3f} {:>9.3f} {:>11.2f}x {:>11.2f}x"
              .format(*r))
    print("epoch: the compiled epoch alone; train: train_projections per epoch, "
          "with\nthe loss after every epoch; numpy: the in-place BLAS transcription "
          "(10 level-2\ncalls per sample, reading P twice and R three times and "
          "writing each once).")
    print("\nThe compiled epoch against the memory: a sample reads and writes every "
          "weight\nonce (no BLAS call: one pass over R and one over P per model)")
    print("{:<8} {:<13} {:>6} {:>6}   {:^20}   {:^20}   {:^20}".format(
        "", "", "", "", "copy", "in place", "L2 gemv"))
    header = ("dtype", "widths->k", "us", "MB") + ("GB/s", "floor", "of it") * 3
    line = "{:<8} {:<13} {:>6} {:>6}" + "   {:>6} {:>6} {:>6}" * 3
    print(line.format(*header))
    line = "{:<8} {:<13} {:>6.1f} {:>6.2f}" + "   {:>6.1f} {:>6.1f} {:>6.0%}" * 3
    for r in floors:
        print(line.format(*r))
    print("us, MB: per sample; copy: np.copyto of as many bytes as the weights; in "
          "place:\nnp.multiply(a, 1, out=a) on them (read + write counted for both); "
          "L2 gemv: one\nvector through a 256 KiB matrix, its call cost taken off; "
          "floor: the MB of a\nsample at that rate, in us; of it: floor / us per "
          "sample.")


def bench_call(repeats, clock):
    """The 1-epoch call at the Go tests' size and its steps, interleaved."""
    rows = []
    for dtype in (np.float64, np.float32):
        rng = np.random.default_rng(0)
        data = {"a": rng.standard_normal((200, 3)).astype(dtype),
                "b": rng.standard_normal((200, 5)).astype(dtype)}
        space = latentspace.LatentSpace(4, dtype=dtype)
        space.register("a", 3)
        space.register("b", 5)
        config = latentspace.ProjectionConfig(n_epochs=1, solver="sgd")
        weights = [space.weights(name) for name in data]
        Ps, Rs = [w[0] for w in weights], [w[1] for w in weights]
        blocks = list(data.values())
        widths = np.array([3, 5], dtype=np.intp)
        loss = ReferenceLoss(np.concatenate(blocks, axis=1), widths, 4)
        P = np.concatenate([p.ravel() for p in Ps])
        R = np.concatenate([r.ravel() for r in Rs])
        models = space._snapshot.models

        def validate():
            with training_data(data, models, space.dtype) as source:
                source.samples([None, None])

        fns = {
            "call": lambda: space.train_projections(data, config),
            "epoch": _compiled_epoch(blocks, Ps, Rs, 0.01, 1.0),
            "loss": lambda: loss(P, R, 1.0),
            "validate": validate,
            "solver": lambda: _sgd.train_sgd(blocks, Ps, Rs, config, names=["a", "b"]),
            "models": lambda: [make_model(p, r) for p, r in zip(Ps, Rs)],
        }
        with threadpool_limits(1, user_api="blas"):
            t = _rounds({label: (fn, 200) for label, fn in fns.items()}, repeats, clock)
        med = {label: statistics.median(v) * 1e6 for label, v in t.items()}
        ratio = statistics.median(c / e for c, e in zip(t["call"], t["epoch"]))
        work = statistics.median(
            (e + 2 * v) / e for e, v in zip(t["epoch"], t["loss"])
        )
        rows.append((np.dtype(dtype).name, *(med[label] for label in fns), work,
                     ratio))
    print(f"\nA 1-epoch train_projections(solver='sgd') at 3+5->4, n=200: "
          f"microseconds,\nmedians of {repeats} interleaved rounds of 200 calls")
    header = ("dtype", "call", "epoch", "loss", "validate", "solver", "models",
              "work/epoch", "call/epoch")
    print("{:<8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>11} {:>11}".format(*header))
    for r in rows:
        print("{:<8} {:>8.1f} {:>8.1f} {:>8.1f} {:>9.1f} {:>8.1f} {:>8.1f} {:>10.2f}x "
              "{:>10.2f}x".format(*r))
    print("epoch: the compiled epoch alone; loss: one evaluation of the reference "
          "loss (a\ncall evaluates it before and after the epoch); validate: "
          "reading and checking\nthe data; solver: the SGD driver (copies, two "
          "losses, the epoch, checks);\nmodels: making the two trained models "
          "(read-only copies, compiled maps);\nwork/epoch: the epoch and the two "
          "losses, the compiled work of the call.")


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
    parser.add_argument("--only", choices=["sgd", "call", "project"],
                        help="one table")
    parser.add_argument("--repeats", type=int, help="rounds (default 7, quick 3)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this thread's CPU time, which leaves out the "
                             "time other processes hold the core")
    parser.add_argument("--no-avx", action="store_true",
                        help="the SGD epoch's baseline loops instead of its AVX ones "
                             "(NumPy's BLAS keeps its kernels)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    if args.no_avx:
        sgd_avx(False)
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
    print(f"clock: {args.clock}")
    if args.only in (None, "sgd"):
        bench_sgd(repeats, clock)
    if args.only in (None, "call"):
        bench_call(repeats, clock)
    if args.only in (None, "project"):
        bench_project(repeats)


if __name__ == "__main__":
    main()
