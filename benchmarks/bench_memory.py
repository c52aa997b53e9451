# SPDX-License-Identifier: BSD-3-Clause
"""Memory over many calls: does anything leak?

    python benchmarks/bench_memory.py            # 10^6 calls per project variant
    python benchmarks/bench_memory.py --quick    # a tenth of every count

Measures the resident set (RSS) of this process while it repeats, phase by
phase:

- `project` of one vector and of a batch of ``--batch`` rows, float64 and
  float32, returning a new array and writing into ``out=`` (``--calls``
  calls each);
- `train_projections`, ``--fits`` fits in turn with the solvers "sgd" (two
  epochs), "cca", "lbfgs" (five iterations) and "minibatch" (two epochs),
  float64 and float32, on 200 aligned synthetic rows of two models (one space
  per solver and dtype, trained again and again from its current weights);
- `save` then `LatentSpace.load` of a trained space, ``--cycles`` times, to a
  file in a temporary directory.

Every phase first runs a warm-up (a tenth of its count, at least one round of
what it does: the first calls allocate caches, NumPy's and BLAS's buffers and
Python's free lists), then ``gc.collect()`` and the first reading; then the
run, with ``gc.collect()`` and a reading at each tenth of it. The table shows
RSS after the warm-up, after the run, the growth per 1,000 operations and a
verdict: ``flat`` if the run added at most 1 MiB, ``plateau`` if it added more
but not over its second half, ``GROWS`` otherwise. A leak of one byte per
call is 1 MB over 10^6 calls.

RSS is read with psutil if installed, else from /proc/self/statm, else as the
peak RSS from `resource` (then only growth beyond the peak shows).
"""

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np

import latentspace
from latentspace import LatentSpace

MiB = 2**20
FLAT = 1 * MiB


def _rss_reader():
    """A function returning the current RSS in bytes, and its source's name."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        process = psutil.Process()
        return (lambda: process.memory_info().rss), "psutil"
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as f:
            f.read()

        def statm():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        return statm, "/proc/self/statm"
    except (OSError, ValueError, AttributeError):
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024   # bytes on macOS, KiB on Linux
    return (
        lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "resource (peak RSS)",
    )


rss, RSS_SOURCE = _rss_reader()


def reading():
    gc.collect()
    return rss()


def measure(step, count, warmup):
    """Run ``step(i)`` ``warmup`` then ``count`` times; RSS readings and seconds."""
    for i in range(warmup):
        step(i)
    samples = [reading()]
    tenth = max(1, count // 10)
    start = time.perf_counter()
    done = 0
    while done < count:
        for i in range(done, min(count, done + tenth)):
            step(i)
        done = min(count, done + tenth)
        samples.append(reading())
    return samples, time.perf_counter() - start


def verdict(samples):
    if samples[-1] - samples[0] <= FLAT:
        return "flat"
    if samples[-1] - samples[len(samples) // 2] <= FLAT / 2:
        return "plateau"
    return "GROWS"


# ---------------------------------------------------------------- the phases


def project_phases(calls, batch, d=64, k=32):
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        space = LatentSpace(k, dtype=dtype)
        space.register("a", d)
        x = rng.standard_normal(d).astype(dtype)
        X = rng.standard_normal((batch, d)).astype(dtype)
        name = np.dtype(dtype).name
        for what, features in (("1 vector", x), (f"{batch} rows", X)):
            out = np.empty(features.shape[:-1] + (k,), dtype)

            def new(i, features=features, project=space.project):
                project("a", features)

            def into(i, features=features, out=out, project=space.project):
                project("a", features, out=out)

            yield f"project {name} {what}", new, calls
            yield f"project {name} {what} out=", into, calls


SOLVERS = (
    ("sgd", {"n_epochs": 2, "learning_rate": 0.002}),
    ("cca", {}),
    ("lbfgs", {"n_epochs": 5}),
    ("minibatch", {"n_epochs": 2, "batch_size": 64}),
)


def fit_phase(fits, n=200, widths=(64, 48), k=16):
    rng = np.random.default_rng(1)
    shared = rng.standard_normal((n, 8))
    data64 = {
        f"m{j}": 0.3 * (shared @ rng.standard_normal((8, w)) / np.sqrt(8)
                        + 0.5 * rng.standard_normal((n, w)))
        for j, w in enumerate(widths)
    }
    runs = []
    for dtype in (np.float64, np.float32):
        data = {name: X.astype(dtype) for name, X in data64.items()}
        for solver, options in SOLVERS:
            space = LatentSpace(k, dtype=dtype)
            for name, X in data.items():
                space.register(name, X.shape[1])
            runs.append((space, data, dict(options, solver=solver)))

    def step(i):
        space, data, options = runs[i % len(runs)]
        space.train_projections(data, **options)

    return "fit (sgd/cca/lbfgs/minibatch x f64/f32)", step, fits, len(runs)


def save_load_phase(cycles, directory):
    rng = np.random.default_rng(2)
    space = LatentSpace(32)
    data = {"a": rng.standard_normal((300, 64)), "b": rng.standard_normal((300, 48))}
    for name, X in data.items():
        space.register(name, X.shape[1])
    space.train_projections(data, solver="cca")
    path = os.path.join(directory, "space.npz")

    def step(i):
        space.save(path)
        LatentSpace.load(path)

    return "save + load (64+48 -> 32)", step, cycles


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000,
                        help="project calls per variant (default 10^6)")
    parser.add_argument("--batch", type=int, default=16,
                        help="rows of a small batch (default 16)")
    parser.add_argument("--fits", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=1000,
                        help="save/load cycles (default 1000)")
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of every count")
    args = parser.parse_args()
    # "lbfgs" stops after its five iterations, on purpose.
    warnings.simplefilter("ignore", latentspace.ConvergenceWarning)
    if args.quick:
        args.calls, args.fits, args.cycles = (
            max(10, v // 10) for v in (args.calls, args.fits, args.cycles))

    print(f"{platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, NumPy {np.__version__}, "
          f"latentspace {latentspace.__version__}; RSS from {RSS_SOURCE}")
    print(f"RSS at start: {reading() / MiB:.1f} MiB\n")
    header = (f"{'operation':<40} {'ops':>10} {'warm-up':>9} {'after':>9} "
              f"{'peak':>9} {'growth/1000 ops':>16} {'s':>6}  verdict")
    print(header)
    print("-" * len(header))

    with tempfile.TemporaryDirectory() as directory:
        phases = list(project_phases(args.calls, args.batch))
        label, step, count, per_round = fit_phase(args.fits)
        phases.append((label, step, count, max(per_round, count // 10)))
        phases.append(save_load_phase(args.cycles, directory))
        for phase in phases:
            label, step, count = phase[:3]
            warmup = phase[3] if len(phase) > 3 else max(1, count // 10)
            samples, seconds = measure(step, count, warmup)
            growth = samples[-1] - samples[0]
            print(f"{label:<40} {count:>10,} {samples[0] / MiB:>5.1f} MiB "
                  f"{samples[-1] / MiB:>5.1f} MiB {max(samples) / MiB:>5.1f} MiB "
                  f"{growth / count * 1000 / 1024:>+12.2f} KiB {seconds:>6.1f}  "
                  f"{verdict(samples)}", flush=True)
    print(f"\nflat: the run added at most {FLAT // MiB} MiB to RSS (after the "
          "warm-up, gc.collect() before every reading)")


if __name__ == "__main__":
    main()
