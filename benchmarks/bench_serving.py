# SPDX-License-Identifier: BSD-3-Clause
"""Serving benchmarks: batch throughput, thread scaling, latency under training.

    python benchmarks/bench_serving.py [--quick]

Prints, in one run:

1. batch `project` (rows/s) against NumPy's ``X @ P``, both on BLAS's
   default threads;
2. single-vector `project` throughput from one and from two threads (the
   kernels release the GIL, so two threads should come close to 2x);
3. p50/p99 latency of single-vector `project` calls from one thread, alone
   and while another thread runs `train_projections` on the same space.
"""

import argparse
import os
import statistics
import threading
import time

import numpy as np

import latentspace
from bench_core import median_seconds


def _space(d, k, dtype=np.float64):
    space = latentspace.LatentSpace(k, dtype=dtype)
    space.register("a", d)
    space.register("b", d)
    return space


def bench_batch(repeats):
    print("\nBatch project (1000 rows): million rows per second (median)")
    print(f"{'dtype':<8} {'shape of P':<13} {'latentspace':>12} {'X @ P':>8} {'ratio':>7}")
    for dtype in (np.float64, np.float32):
        for d, k in [(384, 64), (768, 256)]:
            space = _space(d, k, dtype)
            P = space.weights("a")[0]
            X = np.random.default_rng(0).standard_normal((1000, d)).astype(dtype)
            ours = median_seconds(lambda: space.project("a", X), repeats, 20)
            ref = median_seconds(lambda: X @ P, repeats, 20)
            print(f"{np.dtype(dtype).name:<8} {f'({d}, {k})':<13} "
                  f"{1000 / ours / 1e6:>12.2f} {1000 / ref / 1e6:>8.2f} "
                  f"{ref / ours:>6.2f}x")


def _calls_per_second(space, x, n_threads, seconds):
    """Calls of ``space.project("a", x)`` per second from ``n_threads`` threads
    that call it in a loop for about ``seconds``."""
    counts = [0] * n_threads
    stop = threading.Event()

    def worker(i):
        while not stop.is_set():
            space.project("a", x)
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def bench_threads(repeats):
    print("\nSingle-vector project from 1 and 2 threads: thousand calls per second "
          f"(median of {repeats} interleaved rounds of 0.5 s each)")
    print(f"{'dtype':<8} {'shape of P':<13} {'1 thread':>9} {'2 threads':>10} "
          f"{'scaling':>8}")
    for dtype in (np.float64, np.float32):
        for d, k in [(384, 64), (768, 256), (4096, 1024)]:
            space = _space(d, k, dtype)
            x = np.random.default_rng(0).standard_normal(d).astype(dtype)
            rates = {1: [], 2: []}
            for _ in range(repeats):
                for n_threads, values in rates.items():
                    values.append(_calls_per_second(space, x, n_threads, 0.5))
            one, two = (statistics.median(rates[n]) for n in (1, 2))
            print(f"{np.dtype(dtype).name:<8} {f'({d}, {k})':<13} {one / 1e3:>9.2f} "
                  f"{two / 1e3:>10.2f} {two / one:>7.2f}x")


def _latencies(space, x, n_calls):
    out = np.empty(n_calls)
    for i in range(n_calls):
        start = time.perf_counter()
        space.project("a", x)
        out[i] = time.perf_counter() - start
        time.sleep(0.0002)  # a service answering requests, not a busy loop
    return out


def bench_latency_under_training(n_calls):
    d, k, n = 384, 64, 2000
    space = _space(d, k)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(d)
    data = {name: rng.standard_normal((n, d)) * 0.1 for name in ("a", "b")}
    idle = _latencies(space, x, n_calls)
    done = threading.Event()

    def train():
        while not done.is_set():
            space.train_projections(data, n_epochs=2, learning_rate=0.001)

    trainer = threading.Thread(target=train)
    trainer.start()
    time.sleep(0.2)
    busy = _latencies(space, x, n_calls)
    done.set()
    trainer.join()
    print(f"\nproject() latency of one vector, P ({d}, {k}), {n_calls} calls: "
          "microseconds")
    print(f"{'':<22} {'p50':>7} {'p99':>7}")
    for label, values in (("alone", idle), ("while training", busy)):
        p50, p99 = np.percentile(values, [50, 99]) * 1e6
        print(f"{label:<22} {p50:>7.1f} {p99:>7.1f}")
    ratio = np.percentile(busy, 99) / np.percentile(idle, 99)
    print(f"p99 while training / p99 alone: {ratio:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    bench_batch(repeats)
    bench_threads(repeats)
    bench_latency_under_training(2000 if args.quick else 10000)


if __name__ == "__main__":
    main()
