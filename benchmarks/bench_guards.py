# SPDX-License-Identifier: BSD-3-Clause
"""What the reliability guards cost on the serving path.

    python benchmarks/bench_guards.py [--quick]

Prints, in one run, interleaved rounds and median ratios:

1. `project` with the weights as the space holds them (read-only copies on a
   64-byte boundary, which no caller can make writeable) against the same
   weights as NumPy allocates them (what the space held before: writeable
   arrays whose ``writeable`` flag was cleared, at whatever alignment
   ``malloc`` gave);
2. `project` into ``out=`` (the input is checked for NaN and Inf first, so
   that a refused call leaves ``out`` alone) against a new result array
   (both with the frozen weights).
"""

import argparse

import numpy as np

from bench_core import median_seconds
from latentspace._kernels.affine import AffineMap
from latentspace._model import read_only

SHAPES = [(384, 64, None), (768, 256, None), (4096, 1024, None), (384, 64, 1000),
          (768, 256, 1000)]


def interleaved(calls, repeats, number, rounds):
    """Median seconds of every call over ``rounds`` rounds, alternating the
    order of the calls from round to round."""
    times = {name: [] for name in calls}
    for r in range(rounds):
        for name in (list(calls) if r % 2 else list(calls)[::-1]):
            times[name].append(median_seconds(calls[name], repeats, number))
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    rounds = 3 if parser.parse_args().quick else 9
    rng = np.random.default_rng(0)
    print("project: microseconds per call (median of interleaved rounds)")
    print(f"{'dtype':<8} {'shape of P':<13} {'rows':>5} {'numpy W':>9} {'frozen W':>9}"
          f" {'ratio':>6} {'out=':>9} {'ratio':>6}")
    for dtype in ("float64", "float32"):
        for d, k, n in SHAPES:
            W = rng.uniform(-0.1, 0.1, (d, k)).astype(dtype)  # as registering does
            plain, frozen = AffineMap(W), AffineMap(read_only(W))
            x = rng.standard_normal(d if n is None else (n, d)).astype(dtype)
            out = np.empty(k if n is None else (n, k), dtype)
            number = 1000 if n is None and d < 4096 else 10
            t = interleaved(
                {
                    "numpy W": lambda: plain(x),
                    "frozen W": lambda: frozen(x),
                    "out=": lambda: frozen(x, out),
                },
                repeats=7,
                number=number,
                rounds=rounds,
            )
            print(
                f"{dtype:<8} {f'({d}, {k})':<13} {n or 1:>5} {t['numpy W'] * 1e6:>9.2f}"
                f" {t['frozen W'] * 1e6:>9.2f} {t['frozen W'] / t['numpy W']:>5.2f}x"
                f" {t['out='] * 1e6:>9.2f} {t['out='] / t['frozen W']:>5.2f}x"
            )


if __name__ == "__main__":
    main()
