# SPDX-License-Identifier: BSD-3-Clause
"""Out-of-core fit of `LatentSpace.train_projections` (solver="cca"), in one run.

    python benchmarks/bench_scale.py                    # 2 million rows (5 GB)
    python benchmarks/bench_scale.py --rows 20000000 --repeats 1   # 51 GB
    python benchmarks/bench_scale.py --paths stream dask            # some ways

Writes SYNTHETIC aligned embeddings of two models (widths 384 and 256,
float32: 32 shared factors plus noise) as two memory-mapped ``.npy`` files,
a chunk at a time, into a temporary directory that it deletes at the end,
then fits a space of dimension 64 on the first ``n`` rows, for ``n`` a
quarter of ``--rows`` and ``--rows``, three ways:

- ``stream``: a generator of ``{name: chunk}`` mappings of ``--chunk-rows``
  rows sliced from the memory-mapped files;
- ``dask``: Dask arrays of blocks of ``--chunk-rows`` rows, each read from
  the files by a task, on a ``distributed.LocalCluster`` of two
  single-threaded worker processes (started before the clock);
- ``memmap``: the memory-mapped arrays passed directly as the mapping.

Every fit runs in a fresh subprocess whose process tree (Dask's workers
included) is sampled every 20 ms for the resident set: ``peak RSS`` counts
the pages of the files mapped into memory (page cache the kernel may reclaim
at any time), ``peak anon`` only the process's own memory (RSS minus
file-backed and shared pages), which is what a fit needs. Throughput is rows
per second of the whole `train_projections` call (Dask: cluster started and
workers' imports done before the clock), against the in-memory Gram
throughput measured by the same process just before the fit, so under the
same load: ``X.T @ X`` of one in-memory chunk of ``--chunk-rows`` rows of both
models' features (640 columns), BLAS on its default threads (median of 5).
Medians over ``--repeats`` fits of rows/s, Gram rows/s, their ratio and the
peaks.
"""

import argparse
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

WIDTHS = {"text": 384, "image": 256}
DIM = 64
DTYPE = np.float32
PATHS = ("stream", "dask", "memmap")


# ----------------------------------------------------------------------- data


def write_files(directory, rows, chunk_rows, seed=0):
    """Write ``rows`` aligned synthetic rows of every model as .npy files.

    The shared factors are drawn for every row; the noise of a model is drawn
    once, ``chunk_rows`` rows of it, and rolled by a random number of rows for
    every chunk (drawing it all would take longer than the fits here).
    """
    rng = np.random.default_rng(seed)
    factors = 32
    loadings = {
        name: rng.standard_normal((factors, width)).astype(DTYPE) / np.sqrt(factors)
        for name, width in WIDTHS.items()
    }
    noise = {
        name: rng.standard_normal((chunk_rows, width), dtype=DTYPE)
        for name, width in WIDTHS.items()
    }
    files = {
        name: np.lib.format.open_memmap(
            os.path.join(directory, f"{name}.npy"), mode="w+", dtype=DTYPE,
            shape=(rows, width),
        )
        for name, width in WIDTHS.items()
    }
    for start in range(0, rows, chunk_rows):
        stop = min(start + chunk_rows, rows)
        shared = rng.standard_normal((stop - start, factors), dtype=DTYPE)
        for name, out in files.items():
            out[start:stop] = shared @ loadings[name]
            shift = int(rng.integers(chunk_rows))
            out[start:stop] += np.roll(noise[name], shift, axis=0)[: stop - start]
    for out in files.values():
        out.flush()
    del files


def open_files(directory):
    return {
        name: np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r")
        for name in WIDTHS
    }


# ------------------------------------------------------------- one fit (child)


class Sampler(threading.Thread):
    """Peak resident and anonymous memory of this process and its children."""

    def __init__(self, interval=0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.rss = self.anon = 0
        self.done = threading.Event()

    def sample(self):
        rss = anon = 0
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                info = process.memory_info()
            except psutil.NoSuchProcess:
                continue
            rss += info.rss
            anon += info.rss - info.shared
        self.rss, self.anon = max(self.rss, rss), max(self.anon, anon)

    def run(self):
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self):
        self.done.set()
        self.join()
        self.sample()


def _rows(path, start, stop):
    """Rows ``start:stop`` of a .npy file, read by the task that needs them."""
    return np.load(path, mmap_mode="r")[start:stop]


def dask_arrays(directory, n, chunk_rows):
    import dask
    import dask.array as da

    arrays = {}
    for name, width in WIDTHS.items():
        path = os.path.join(directory, f"{name}.npy")
        blocks = [
            da.from_delayed(
                dask.delayed(_rows)(path, start, min(start + chunk_rows, n)),
                shape=(min(start + chunk_rows, n) - start, width), dtype=DTYPE,
            )
            for start in range(0, n, chunk_rows)
        ]
        arrays[name] = da.concatenate(blocks)
    return arrays


def stream(files, n, chunk_rows):
    for start in range(0, n, chunk_rows):
        yield {name: x[start:min(start + chunk_rows, n)] for name, x in files.items()}


def gram_rows_per_second(files, chunk_rows, repeats=5):
    """Rows per second of ``X.T @ X`` on one in-memory chunk (all columns)."""
    X = np.concatenate([x[:chunk_rows] for x in files.values()], axis=1)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        X.T @ X
        times.append(time.perf_counter() - started)
    return len(X) / statistics.median(times)


def fit(path, directory, n, chunk_rows):
    """One fit in this process, after measuring the Gram throughput: rows per
    second of both, peak RSS and peak anonymous bytes of the fit."""
    import latentspace

    space = latentspace.LatentSpace(DIM, dtype="float32")
    for name, width in WIDTHS.items():
        space.register(name, width)
    files = open_files(directory)
    gram = gram_rows_per_second(files, chunk_rows)
    context = None
    if path == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        context = Client(cluster)
        context.run(importlib.import_module, "latentspace")  # not on the clock
        data = dask_arrays(directory, n, chunk_rows)
    elif path == "stream":
        data = stream(files, n, chunk_rows)
    else:
        data = {name: x[:n] for name, x in files.items()}
    sampler = Sampler()
    sampler.sample()
    sampler.start()
    started = time.perf_counter()
    space.train_projections(data, solver="cca")
    seconds = time.perf_counter() - started
    sampler.stop()
    if context is not None:
        context.close()
        cluster.close()
    return {"rate": n / seconds, "gram": gram, "rss": sampler.rss,
            "anon": sampler.anon}


# -------------------------------------------------------------- driver (parent)


def run_child(path, directory, n, chunk_rows):
    command = [
        sys.executable, os.path.abspath(__file__), "--child", path,
        "--dir", directory, "--rows", str(n), "--chunk-rows", str(chunk_rows),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{path} fit of {n} rows failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--chunk-rows", type=int, default=16_384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="where to make the temp dir")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                        help="which ways to fit (default: all)")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fit(args.child, args.dir, args.rows, args.chunk_rows)))
        return

    needed = args.rows * sum(WIDTHS.values()) * np.dtype(DTYPE).itemsize
    base = args.tmp or tempfile.gettempdir()
    free = shutil.disk_usage(base).free
    if free < needed + 2**31:
        sys.exit(f"{needed / 1e9:.1f} GB of files need more than the "
                 f"{free / 1e9:.1f} GB free in {base}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}")
    directory = tempfile.mkdtemp(prefix="bench_scale_", dir=base)
    try:
        started = time.perf_counter()
        write_files(directory, args.rows, args.chunk_rows)
        print(f"wrote {needed / 1e9:.1f} GB ({args.rows:,} rows of widths "
              f"{'+'.join(map(str, WIDTHS.values()))}, float32) in "
              f"{time.perf_counter() - started:.0f} s")
        print(f"solver='cca', dim {DIM}, chunks of {args.chunk_rows} rows: median "
              f"of {args.repeats} fits; Gram: X.T @ X of {args.chunk_rows} x "
              f"{sum(WIDTHS.values())} in memory, just before each fit")
        print(f"{'path':8} {'rows':>12} {'k rows/s':>9} {'Gram':>7} {'ratio':>6} "
              f"{'peak RSS':>10} {'peak anon':>10}")
        for n in (args.rows // 4, args.rows):
            for path in args.paths:
                runs = [run_child(path, directory, n, args.chunk_rows)
                        for _ in range(args.repeats)]
                rate, gram, ratio, rss, anon = (
                    statistics.median(values) for values in zip(*(
                        (r["rate"], r["gram"], r["rate"] / r["gram"], r["rss"],
                         r["anon"])
                        for r in runs
                    ))
                )
                print(f"{path:8} {n:>12,} {rate / 1e3:>9,.1f} {gram / 1e3:>7,.1f} "
                      f"{ratio:>5.2f}x {rss / 2**20:>6,.0f} MiB "
                      f"{anon / 2**20:>6,.0f} MiB", flush=True)
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
