# SPDX-License-Identifier: BSD-3-Clause
"""Cross-model search and evaluation: throughput and peak memory.

    python benchmarks/bench_search.py                 # 20k x 20k and 100k x 100k
    python benchmarks/bench_search.py --sizes 5000    # one size, quicker

For each size ``n`` (queries = gallery = ``n`` items, two models of widths 96
and 128 in a 64-dim space, float32 and float64) it times:

- ``index``: `LatentSpace.index` (projects and normalises the gallery);
- ``search cosine`` / ``search csls``: `GalleryIndex.search` of all ``n``
  queries for the top 10 (CSLS with the batch as reference set: two GEMM
  passes);
- ``numpy cosine``: the full-matrix NumPy equivalent ``Q @ G.T`` then
  ``argpartition`` (only where the ``n x n`` matrix fits in ``--max-gb``);
- ``evaluate``: `LatentSpace.evaluate` (both directions, ranks of the pair).

Peak memory above the inputs is measured with `tracemalloc` (NumPy reports
its allocations to it), in one separate run per operation.
"""

import argparse
import os
import platform
import time
import tracemalloc

import numpy as np

import latentspace


def _seconds(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _peak_mib(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def _numpy_cosine(space, queries, gallery, k):
    def unit(Z):
        return Z / np.linalg.norm(Z, axis=1, keepdims=True)

    Q, G = unit(space.project("a", queries)), unit(space.project("b", gallery))
    S = Q @ G.T
    top = np.argpartition(S, S.shape[1] - k, axis=1)[:, -k:]
    return top


def run(n, dtype, repeats, max_gb):
    rng = np.random.default_rng(0)
    space = latentspace.LatentSpace(64, dtype=dtype, seed=0)
    space.register("a", 96)
    space.register("b", 128)
    queries = rng.normal(size=(n, 96)).astype(dtype)
    gallery = rng.normal(size=(n, 128)).astype(dtype)
    index = space.index("b", gallery)
    ops = {
        "index": lambda: space.index("b", gallery),
        "search cosine": lambda: index.search("a", queries, k=10, method="cosine"),
        "search csls": lambda: index.search("a", queries, k=10, method="csls"),
    }
    if n * n * np.dtype(dtype).itemsize <= max_gb * 2**30:
        ops["numpy cosine"] = lambda: _numpy_cosine(space, queries, gallery, 10)
    if n <= 20_000:  # evaluate is 2x csls search plus the ranks
        data = {"a": queries, "b": gallery}
        ops["evaluate"] = lambda: space.evaluate(data, k=(1, 10))
    rows = []
    for name, fn in ops.items():
        seconds = _seconds(fn, repeats)
        rows.append((name, seconds, n / seconds, _peak_mib(fn)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--max-gb",
        type=float,
        default=2.0,
        help="largest full n x n matrix the NumPy comparison may build",
    )
    args = parser.parse_args()
    print(
        f"latentspace {latentspace.__version__}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')}"
    )
    print(
        f"{'n':>7} {'dtype':>7}  {'operation':<14} {'seconds':>9} "
        f"{'queries/s':>10} {'peak MiB':>9}"
    )
    for n in args.sizes:
        for dtype in ("float32", "float64"):
            for name, seconds, rate, peak in run(n, dtype, args.repeats, args.max_gb):
                print(
                    f"{n:>7} {dtype:>7}  {name:<14} {seconds:9.3f} {rate:10.0f} "
                    f"{peak:9.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
