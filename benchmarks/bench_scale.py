# SPDX-License-Identifier: BSD-3-Clause
"""Out-of-core fit of `LatentSpace.train_projections` (solver="cca"), in one run.

    python benchmarks/bench_scale.py                     # 500 000 and 2 M rows (5 GB)
    python benchmarks/bench_scale.py --rows 2000000 20000000 --data /big/dir
    python benchmarks/bench_scale.py --paths stream dask  # some ways

Writes SYNTHETIC aligned embeddings of two models (widths 384 and 256,
float32: 32 shared factors plus noise) as two memory-mapped ``.npy`` files of
the largest ``--rows``, a chunk at a time (never the whole in memory), into a
temporary directory deleted at the end, or into ``--data``, where they are
kept and reused by the next run. Then fits a space of dimension 64 on the
first ``n`` rows, for every ``n`` of ``--rows``, these ways:

- ``stream``: a generator of ``{name: chunk}`` mappings of ``--chunk-rows``
  rows sliced from the memory-mapped files;
- ``memmap``: the memory-mapped arrays passed directly as the mapping;
- ``dask``: Dask arrays of blocks of ``--dask-rows`` rows, each read from the
  files by a task (``map_blocks`` of a loader, which graph optimisation fuses
  with the statistics of the block), on a ``distributed.LocalCluster`` of two
  single-threaded worker processes (started before the clock);
- ``dask-threads``: the same Dask arrays on Dask's default threaded
  scheduler, two threads (``dask.array.from_array`` of the memory-mapped
  arrays would copy them into memory whole: dask/dask#11850);
- ``read``: no fit, the limit of the disk: the same rows of both files read
  into a buffer, ``--chunk-rows`` at a time (``readinto``).

Every fit runs in a fresh subprocess whose process tree (Dask's workers
included) is sampled every 20 ms for the resident set: ``peak RSS`` counts
the pages of the files mapped into memory (page cache the kernel may reclaim
at any time), ``peak anon`` only the process's own memory (RSS minus
file-backed and shared pages), which is what a fit needs. Throughput is rows
per second of the whole `train_projections` call, against the in-memory Gram
throughput measured by the same process just before, so under the same load:
``X.T @ X`` of one in-memory chunk of ``--chunk-rows`` rows of both models'
features (640 columns), BLAS on its default threads (median of 5; its
GFLOP/s count ``n D^2`` flops). ``CPU`` is the same ratio per CPU second
(the fit's: every process of the tree, Dask's scheduler and workers
included; the Gram's: this process), which leaves out the share of the
cores that other jobs take, and also the waits for the disk. The ways run
interleaved, ``--repeats`` rounds; medians of rows/s, seconds, Gram rows/s,
the ratios and the peaks.
``--cold`` drops the files' pages from the page cache before every run
(``posix_fadvise``; the host may still cache them).
"""

import argparse
import functools
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
PATHS = ("stream", "memmap", "dask", "dask-threads", "read")


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
        if start // chunk_rows % 64 == 63:  # written back as we go
            for out in files.values():
                out.flush()
    for out in files.values():
        out.flush()
    del files


def open_files(directory):
    return {
        name: np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r")
        for name in WIDTHS
    }


def have_files(directory, rows):
    """Whether ``directory`` holds files of at least ``rows`` rows."""
    try:
        files = open_files(directory)
    except (OSError, ValueError):
        return False
    return all(
        x.dtype == DTYPE and x.shape[1] == WIDTHS[name] and len(x) >= rows
        for name, x in files.items()
    )


def drop_cache(directory):
    """Drop the pages of the files from the page cache (not the host's)."""
    for name in WIDTHS:
        fd = os.open(os.path.join(directory, f"{name}.npy"), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------- one fit (child)


class Sampler(threading.Thread):
    """Peak resident and anonymous memory of this process and its children,
    and the CPU seconds they used between the first and the last sample."""

    def __init__(self, interval=0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.rss = self.anon = 0
        self.first, self.last = {}, {}
        self.done = threading.Event()

    def sample(self):
        rss = anon = 0
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                info = process.memory_info()
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            rss += info.rss
            anon += info.rss - info.shared
            self.first.setdefault(process.pid, times.user + times.system)
            self.last[process.pid] = times.user + times.system
        self.rss, self.anon = max(self.rss, rss), max(self.anon, anon)

    @property
    def cpu(self):
        return sum(self.last[pid] - self.first[pid] for pid in self.last)

    def run(self):
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self):
        self.done.set()
        self.join()
        self.sample()


def _load(path, block_info=None):
    """The rows of a block of a .npy file, read by the task that needs them."""
    (start, stop), _ = block_info[None]["array-location"]
    return np.load(path, mmap_mode="r")[start:stop]


def dask_arrays(directory, n, block_rows):
    """Dask arrays of the first ``n`` rows, blocks read from the files."""
    import dask.array as da

    blocks = (block_rows,) * (n // block_rows) + ((n % block_rows,) if n % block_rows else ())
    return {
        name: da.map_blocks(
            functools.partial(_load, os.path.join(directory, f"{name}.npy")),
            chunks=(blocks, (width,)), dtype=DTYPE,
            meta=np.empty((0, 0), DTYPE),
        )
        for name, width in WIDTHS.items()
    }


def stream(files, n, chunk_rows):
    for start in range(0, n, chunk_rows):
        yield {name: x[start:min(start + chunk_rows, n)] for name, x in files.items()}


def read_rows(directory, n, chunk_rows):
    """Read the first ``n`` rows of both files, ``chunk_rows`` at a time."""
    opened = []
    for name, width in WIDTHS.items():
        path = os.path.join(directory, f"{name}.npy")
        header = np.load(path, mmap_mode="r").offset
        f = open(path, "rb", buffering=0)
        f.seek(header)
        opened.append((f, np.empty(chunk_rows * width * np.dtype(DTYPE).itemsize, np.uint8),
                       width * np.dtype(DTYPE).itemsize))
    try:
        for start in range(0, n, chunk_rows):
            rows = min(chunk_rows, n - start)
            for f, buffer, row_bytes in opened:
                view = memoryview(buffer)[: rows * row_bytes]
                while view:
                    view = view[f.readinto(view):]
    finally:
        for f, _, _ in opened:
            f.close()


def gram_rows_per_second(files, chunk_rows, repeats=5):
    """Rows per second and per CPU second of ``X.T @ X`` on one in-memory
    chunk (all columns)."""
    X = np.concatenate([np.array(x[:chunk_rows]) for x in files.values()], axis=1)
    times, cpu = [], []
    for _ in range(repeats):
        started, used = time.perf_counter(), time.process_time()
        X.T @ X
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - used)
    return len(X) / statistics.median(times), len(X) / statistics.median(cpu)


def fit(path, directory, n, chunk_rows, dask_rows, workers):
    """One fit in this process, after measuring the Gram throughput: rows per
    second of both, seconds, peak RSS and peak anonymous bytes of the fit."""
    import latentspace

    space = latentspace.LatentSpace(DIM, dtype="float32")
    for name, width in WIDTHS.items():
        space.register(name, width)
    files = open_files(directory)
    gram, gram_cpu = gram_rows_per_second(files, chunk_rows)
    context = None
    if path == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True,
            dashboard_address=None,
        )
        context = Client(cluster)
        context.run(importlib.import_module, "latentspace")  # not on the clock
        data = dask_arrays(directory, n, dask_rows)
    elif path == "dask-threads":
        import dask

        dask.config.set(num_workers=workers)
        data = dask_arrays(directory, n, dask_rows)
    elif path == "stream":
        data = stream(files, n, chunk_rows)
    else:
        data = {name: x[:n] for name, x in files.items()}
    sampler = Sampler()
    sampler.sample()
    sampler.start()
    started = time.perf_counter()
    if path == "read":
        read_rows(directory, n, chunk_rows)
    else:
        space.train_projections(data, solver="cca")
    seconds = time.perf_counter() - started
    sampler.stop()  # before the cluster closes: its CPU time counts
    if context is not None:
        context.close()
        cluster.close()
    return {"rate": n / seconds, "seconds": seconds, "gram": gram,
            "cpu_ratio": n / sampler.cpu / gram_cpu, "rss": sampler.rss,
            "anon": sampler.anon}


# -------------------------------------------------------------- driver (parent)


def run_child(path, directory, n, args):
    command = [
        sys.executable, os.path.abspath(__file__), "--child", path,
        "--dir", directory, "--rows", str(n), "--chunk-rows", str(args.chunk_rows),
        "--dask-rows", str(args.dask_rows), "--threads", str(args.threads),
    ]
    env = dict(os.environ)
    if args.threads == 1:
        env["OPENBLAS_NUM_THREADS"] = "1"
    if args.cold:
        drop_cache(directory)
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        sys.exit(f"{path} fit of {n} rows failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[500_000, 2_000_000],
                        help="the numbers of rows to fit (files of the largest)")
    parser.add_argument("--chunk-rows", type=int, default=16_384)
    parser.add_argument("--dask-rows", type=int, default=131_072,
                        help="rows of a block of the Dask arrays")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=None,
                        help="keep the files here (written if missing) for the next run")
    parser.add_argument("--tmp", default=None, help="where to make the temp dir")
    parser.add_argument("--cold", action="store_true",
                        help="drop the files' pages from the page cache before each run")
    parser.add_argument("--threads", type=int, choices=(1, 2), default=2,
                        help="1: BLAS on one thread, one Dask worker (or thread), "
                        "so each side of a ratio runs on one core")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                        help="which ways to fit (default: all)")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fit(args.child, args.dir, args.rows[0], args.chunk_rows,
                             args.dask_rows, args.threads)))
        return

    rows = max(args.rows)
    needed = rows * sum(WIDTHS.values()) * np.dtype(DTYPE).itemsize
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f} at "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    if args.data:
        os.makedirs(args.data, exist_ok=True)
        directory = args.data
    else:
        directory = tempfile.mkdtemp(prefix="bench_scale_", dir=args.tmp)
    try:
        if not have_files(directory, rows):
            free = shutil.disk_usage(directory).free
            if free < needed + 2**31:
                sys.exit(f"{needed / 1e9:.1f} GB of files need more than the "
                         f"{free / 1e9:.1f} GB free in {directory}")
            started = time.perf_counter()
            write_files(directory, rows, args.chunk_rows)
            print(f"wrote {needed / 1e9:.1f} GB ({rows:,} rows of widths "
                  f"{'+'.join(map(str, WIDTHS.values()))}, float32) in "
                  f"{time.perf_counter() - started:.0f} s")
        print(f"solver='cca', dim {DIM}, chunks of {args.chunk_rows} rows, Dask blocks "
              f"of {args.dask_rows} rows, {'cold' if args.cold else 'warm'} page cache, "
              f"{args.threads} thread(s) (BLAS, Dask workers): "
              f"median of {args.repeats} interleaved runs; Gram: X.T @ X of "
              f"{args.chunk_rows} x {sum(WIDTHS.values())} in memory, just before each")
        flops = sum(WIDTHS.values()) ** 2
        for n in args.rows:
            runs = {path: [] for path in args.paths}
            for _ in range(args.repeats):
                for path in args.paths:
                    r = run_child(path, directory, n, args)
                    runs[path].append(r)
                    print(f"  ({path} {n:,}: {r['seconds']:.1f} s, "
                          f"{r['rate'] / r['gram']:.2f}x, load average "
                          f"{os.getloadavg()[0]:.1f})", flush=True)
            print(f"{'path':13} {'rows':>11} {'seconds':>8} {'k rows/s':>9} {'Gram':>7} "
                  f"{'GFLOP/s':>8} {'ratio':>6} {'CPU':>6} {'peak RSS':>10} "
                  f"{'peak anon':>10}")
            for path, results in runs.items():
                seconds, rate, gram, ratio, cpu, rss, anon = (
                    statistics.median(values) for values in zip(*(
                        (r["seconds"], r["rate"], r["gram"], r["rate"] / r["gram"],
                         r["cpu_ratio"], r["rss"], r["anon"])
                        for r in results
                    ))
                )
                print(f"{path:13} {n:>11,} {seconds:>8.1f} {rate / 1e3:>9,.1f} "
                      f"{gram / 1e3:>7,.1f} {gram * flops / 1e9:>8.0f} {ratio:>5.2f}x "
                      f"{cpu:>5.2f}x {rss / 2**20:>6,.0f} MiB {anon / 2**20:>6,.0f} MiB",
                      flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        if not args.data:
            shutil.rmtree(directory)


if __name__ == "__main__":
    main()
