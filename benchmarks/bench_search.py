# SPDX-License-Identifier: BSD-3-Clause
"""Search at corpus scale: the exact index and FAISS's, 10^5 to 10^7 items.

    nice python benchmarks/bench_search.py --sizes 100000 1000000 \\
        --docstrings /path/to/docstring_views.npz
    nice python benchmarks/bench_search.py --sizes 10000000 --kinds exact flat ivf
    python benchmarks/bench_search.py --sizes --pairs 20000 100000   # all pairs

**Corpus scale** (``--sizes``). SYNTHETIC embeddings of two models, "a"
(queries) and "b" (the gallery), 128-d float32 each: every item is one of
1024 cluster centres in 32 dimensions plus its own offset (``--clusters 0``:
32 Gaussian factors, no clusters), mixed into each model by a random 32 x
128 map, plus noise. A space of dimension k = 128
(float32) is fitted with ``solver="cca"`` on 20,000 pairs; then for every
gallery size ``n`` and every index (``exact``: `GalleryIndex`; ``flat``,
``hnsw``, ``ivf``: `FaissIndex` with its default options, see ``--options``)
one subprocess:

- builds the index of the first ``n`` gallery items with a CSLS reference
  sample of 2,000 other items of "a": ``build s`` is the wall time of
  `LatentSpace.index` (projection, normalisation, r_S, FAISS training and
  adding), ``peak MiB`` the peak anonymous memory above what the process
  held before (sampled every 20 ms; the gallery is read from the ``.npy``
  file memory-mapped from 10^7 items on, ``--mmap-from``, loaded into
  memory below);
- searches 1,000 queries (the "a" embeddings of gallery items 0-999) for
  their top 10, by cosine and by CSLS, for every search setting
  (``ef_search`` for hnsw, ``nprobe`` for ivf): ``batch q/s`` (one call with
  all 1,000, median of ``--repeats``), ``recall@10`` (the share of the exact
  index's top 10 found), ``pair@1`` (queries whose own item is the top
  hit), and the latency of one query (``--latency`` single-query calls:
  median and 99th percentile, milliseconds).

The exact index runs first at every size and writes the ground truth.
Before and after the table, ``limits now:`` measures the rates that bound
the scans on the machine as it is (see `limits`).

**Real embeddings** (``--docstrings PATH``): the four views of
docstring_views.npz (minilm, mpnet, lsa, charsvd; 12,000 docstrings), a
space of dimension 128 fitted with ``solver="cca"`` on the training rows
(0-9999); for every ordered pair of models A -> B, the gallery is all 12,000
items of B, the queries the 2,000 test items of A, the CSLS reference
sample the 10,000 training items of A: CSLS top-1 (the share of test queries
whose own item, or an identical copy of it, is the top hit: lsa has 879
duplicate rows, charsvd 15, and identical items score the same up to
rounding, so which copy comes first is arbitrary) with the exact index and
with every FAISS kind (default options).

**All pairs** (``--pairs N ...``): the earlier table, ``n`` queries against
``n`` items (widths 96 and 128, a 64-dim space, float32 and float64): index,
search of all queries (cosine, CSLS with the batch as reference set), the
full-matrix NumPy equivalent where it fits in ``--max-gb``, evaluate;
tracemalloc peaks.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

import latentspace

K = 128
WIDTH = 128
FACTORS = 32
N_QUERIES = 1000
N_REFERENCE = 2000
N_FIT = 20_000
SWEEP = {
    "exact": [None],
    "flat": [None],
    "hnsw": [16, 32, 64, 128, 256],
    "ivf": [1, 4, 16, 64],
}
SETTING = {"hnsw": "ef_search", "ivf": "nprobe"}


# ------------------------------------------------------------ synthetic data


def write_data(directory, n_max, clusters, seed=0, block=500_000):
    """space.npz, gallery.npy (n_max rows of model b), queries.npy (model a
    of items 0..999), reference.npy (model a of 2,000 items beyond n_max)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(clusters, 1), FACTORS)).astype(np.float32)
    maps = {m: rng.standard_normal((FACTORS, WIDTH)).astype(np.float32)
            for m in "ab"}

    def items(n, model, item_rng):
        if not clusters:  # Gaussian factors, no clusters
            return item_rng.standard_normal((n, FACTORS), dtype=np.float32)
        z = centres[item_rng.integers(0, clusters, n)]
        z += 0.6 * item_rng.standard_normal((n, FACTORS), dtype=np.float32)
        return z

    def view(z, model, view_rng):
        x = z @ maps[model]
        x += 1.5 * view_rng.standard_normal(x.shape, dtype=np.float32)
        return x

    # Items 0..n_max-1 are the gallery; n_max.. the reference and fit items.
    gallery = np.lib.format.open_memmap(
        os.path.join(directory, "gallery.npy"), mode="w+", dtype=np.float32,
        shape=(n_max, WIDTH))
    first = None
    for start in range(0, n_max, block):
        stop = min(start + block, n_max)
        block_rng = np.random.default_rng([seed, start])
        z = items(stop - start, "b", block_rng)
        gallery[start:stop] = view(z, "b", block_rng)
        if start == 0:
            first = z[:N_QUERIES]
    gallery.flush()
    del gallery
    extra = items(N_REFERENCE + N_FIT, "a", rng)
    np.save(os.path.join(directory, "queries.npy"), view(first, "a", rng))
    np.save(os.path.join(directory, "reference.npy"),
            view(extra[:N_REFERENCE], "a", rng))
    fit = extra[N_REFERENCE:]
    space = latentspace.LatentSpace(K, dtype="float32")
    space.register("a", WIDTH)
    space.register("b", WIDTH)
    space.train_projections({"a": view(fit, "a", rng), "b": view(fit, "b", rng)},
                            solver="cca")
    space.save(os.path.join(directory, "space.npz"))


# ------------------------------------------------------ one index (a child)


def measure(config):
    """Build one index and search it; a dict of figures."""
    from bench_scale import Sampler

    directory, n = config["data"], config["n"]
    backend, kind = ("exact", "flat") if config["kind"] == "exact" else (
        "faiss", config["kind"])
    space = latentspace.LatentSpace.load(os.path.join(directory, "space.npz"))
    queries = np.load(os.path.join(directory, "queries.npy"))
    reference = np.load(os.path.join(directory, "reference.npy"))
    gallery = np.load(os.path.join(directory, "gallery.npy"), mmap_mode="r")[:n]
    if not config["mmap"]:
        gallery = np.array(gallery)
    sampler = Sampler()
    sampler.sample()
    before = sampler.anon
    sampler.anon = 0
    sampler.start()
    started = time.perf_counter()
    index = space.index("b", gallery, backend=backend, kind=kind,
                        options=config["options"], references={"a": reference})
    build = time.perf_counter() - started
    sampler.stop()
    out = {"n": n, "kind": config["kind"], "build_s": build,
           "peak_mib": (sampler.anon - before) / 2**20,
           "options": getattr(index, "options", {}), "rows": []}
    for method in ("cosine", "csls"):
        truth_file = os.path.join(directory, f"truth-{n}-{method}.npy")
        for value in SWEEP[config["kind"]]:
            params = {} if value is None else {SETTING[kind]: value}
            seconds = []
            for _ in range(config["repeats"]):
                started = time.perf_counter()
                result = index.search("a", queries, k=10, method=method, **params)
                seconds.append(time.perf_counter() - started)
            if config["kind"] == "exact":
                np.save(truth_file, result.indices)
            truth = np.load(truth_file)
            recall = np.mean([len(set(a) & set(b)) / 10
                              for a, b in zip(result.indices, truth)])
            latency = []
            for q in queries[: config["latency"]]:
                started = time.perf_counter()
                index.search("a", q, k=10, method=method, **params)
                latency.append(time.perf_counter() - started)
            latency = np.array(latency) * 1e3
            out["rows"].append({
                "method": method, "setting": value,
                "batch_qps": len(queries) / statistics.median(seconds),
                "recall10": float(recall),
                "pair1": float(np.mean(result.indices[:, 0] == np.arange(len(queries)))),
                "p50_ms": float(np.median(latency)),
                "p99_ms": float(np.percentile(latency, 99)),
                "latency_n": len(latency),
            })
    return out


def run_child(config):
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"child failed: {config}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scale(args):
    directory = args.data_dir
    n_max = max(args.sizes)
    # Gallery rows do not depend on how many are written: a larger file serves.
    marker = os.path.join(directory, "rows")
    if not os.path.exists(marker) or int(open(marker).read()) < n_max:
        os.makedirs(directory, exist_ok=True)
        started = time.perf_counter()
        write_data(directory, n_max, args.clusters)
        with open(marker, "w") as file:
            file.write(str(n_max))
        print(f"wrote the data ({n_max} gallery rows) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    print(f"{'n':>9} {'index':<6} {'build s':>8} {'peak MiB':>9} {'method':<7}"
          f" {'setting':>12} {'batch q/s':>10} {'recall@10':>9} {'pair@1':>7}"
          f" {'p50 ms':>8} {'p99 ms':>8}", flush=True)
    results = []
    for n in args.sizes:
        for kind in args.kinds:
            config = {"data": directory, "n": n, "kind": kind,
                      "options": args.options.get(kind),
                      "mmap": n >= args.mmap_from,
                      "repeats": args.repeats if n < 10**7 else 1,
                      "latency": args.latency if (kind, n >= 10**7) != ("exact", True)
                      else min(args.latency, 30)}
            out = run_child(config)
            results.append(out)
            for row in out["rows"]:
                setting = ("-" if row["setting"] is None
                           else f"{SETTING[kind]}={row['setting']}")
                print(f"{n:>9} {kind:<6} {out['build_s']:>8.1f} "
                      f"{out['peak_mib']:>9,.0f} {row['method']:<7} {setting:>12} "
                      f"{row['batch_qps']:>10,.0f} {row['recall10']:>9.3f} "
                      f"{row['pair1']:>7.3f} {row['p50_ms']:>8.3f} "
                      f"{row['p99_ms']:>8.3f}", flush=True)
    return results


# --------------------------------------------------------- machine limits


def _median_seconds(fn, repeats=5):
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def limits(n=1_000_000):
    """The rates that bound the scans, measured now (medians of 5): NumPy's
    sgemm at the shape of a FAISS flat batch (1,000 queries x 65,536 items),
    a plain copy of ``n`` latents (read + write), the read rate of one
    query's gemv over them (the exact one-query scan), and argpartition of a
    row of ``n`` scores (the exact index's top 10)."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((n, K), dtype=np.float32)
    Q = rng.standard_normal((N_QUERIES, K), dtype=np.float32)
    block = G[:65_536]
    gflops = 2 * block.size * len(Q) / _median_seconds(lambda: Q @ block.T) / 1e9
    copy = np.empty_like(G)
    copy_gbs = 2 * G.nbytes / _median_seconds(lambda: np.copyto(copy, G)) / 1e9
    del copy
    gemv_gbs = G.nbytes / _median_seconds(lambda: G @ Q[0]) / 1e9
    S = G[:, :8].T.copy()  # 8 rows of n scores
    select_ms = _median_seconds(lambda: np.argpartition(S, n - 10, axis=1)) / 8 * 1e3
    print(f"limits now: sgemm {gflops:.0f} GFLOP/s (1000 x 128 x 65536), copy "
          f"{copy_gbs:.1f} GB/s, gemv {gemv_gbs:.1f} GB/s and argpartition "
          f"{select_ms:.1f} ms per query over {n:,} latents", flush=True)


# ----------------------------------------------------------- real embeddings


DOC_SWEEP = {"exact": [None], "flat": [None], "hnsw": [64, 128, 256],
             "ivf": [16, 32, 64]}


def docstrings(path, kinds):
    data = np.load(path)
    names = [str(n) for n in data["view_names"]]
    train, test = data["train_idx"], data["test_idx"]
    space = latentspace.LatentSpace(128, dtype="float32")
    for name in names:
        space.register(name, data[name].shape[1])
    space.train_projections({n: data[n][train] for n in names}, solver="cca")
    columns = list(dict.fromkeys(
        (kind, value) for kind in ["exact", *kinds] for value in DOC_SWEEP[kind]))
    labels = [kind if value is None else f"{kind}{value}" for kind, value in columns]
    print("\nCSLS top-1, docstring_views: gallery all 12,000 items of B, 2,000 test "
          "queries of A\n(hnswN: ef_search=N, ivfN: nprobe=N)\n"
          f"{'A -> B':<18}" + "".join(f" {label:>8}" for label in labels),
          flush=True)
    rows = []
    for a in names:
        for b in names:
            if a == b:
                continue
            gallery, queries = data[b], data[a][test]
            # Identical items of B (lsa has 879 duplicate rows, charsvd 15)
            # score the same up to rounding: finding a copy of the item counts.
            copies = np.unique(gallery, axis=0, return_inverse=True)[1].ravel()
            truth = copies[test]
            top1 = {}
            for kind in dict.fromkeys(k for k, _ in columns):
                index = space.index(b, gallery,
                                    backend="exact" if kind == "exact" else "faiss",
                                    kind="flat" if kind == "exact" else kind,
                                    references={a: data[a][train]})
                for value in DOC_SWEEP[kind]:
                    params = {} if value is None else {SETTING[kind]: value}
                    hits = index.search(a, queries, k=1, method="csls",
                                        **params).indices[:, 0]
                    label = kind if value is None else f"{kind}{value}"
                    top1[label] = float(np.mean(copies[hits] == truth))
            rows.append({"pair": f"{a} -> {b}", **top1})
            print(f"{a + ' -> ' + b:<18}"
                  + "".join(f" {top1[label]:>8.3f}" for label in labels), flush=True)
    for label in labels[1:]:
        worst = max(abs(r[label] - r["exact"]) for r in rows)
        print(f"largest |{label} - exact|: {100 * worst:.2f} points", flush=True)
    return rows


# ---------------------------------------------------------------- all pairs


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
    return np.argpartition(S, S.shape[1] - k, axis=1)[:, -k:]


def all_pairs(n, dtype, repeats, max_gb):
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


# --------------------------------------------------------------------- main


def _options(pairs):
    """``KIND:KEY=VALUE`` strings -> {kind: {key: int}}."""
    options = {}
    for text in pairs:
        kind, _, rest = text.partition(":")
        key, _, value = rest.partition("=")
        options.setdefault(kind, {})[key] = int(value)
    return options


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*",
                        default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["exact", "flat", "hnsw", "ivf"],
                        choices=["exact", "flat", "hnsw", "ivf"])
    parser.add_argument("--options", nargs="*", default=[], metavar="KIND:KEY=VALUE",
                        help="FAISS options, e.g. hnsw:ef_construction=40")
    parser.add_argument("--latency", type=int, default=200,
                        help="single-query calls timed (30 for exact at 10^7)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mmap-from", type=int, default=10_000_000,
                        help="memory-map the gallery file from this size on "
                        "(smaller galleries are loaded into memory)")
    parser.add_argument("--clusters", type=int, default=1024,
                        help="cluster centres of the synthetic items (0: Gaussian "
                        "factors, no clusters; use another --data-dir)")
    parser.add_argument("--data-dir", default=os.path.join(
        tempfile.gettempdir(), "latentspace-bench-search"))
    parser.add_argument("--docstrings", metavar="PATH",
                        help="docstring_views.npz: CSLS top-1 exact vs approximate")
    parser.add_argument("--pairs", type=int, nargs="*", default=[],
                        help="sizes of the all-pairs table")
    parser.add_argument("--max-gb", type=float, default=2.0)
    parser.add_argument("--json", metavar="FILE", help="also save the figures")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    args.options = _options(args.options)
    import faiss

    load = os.getloadavg()[0]
    print(
        f"latentspace {latentspace.__version__}, numpy {np.__version__}, faiss "
        f"{faiss.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, load average {load:.1f} at the start", flush=True)
    figures = {}
    if args.sizes:
        limits()
        figures["scale"] = scale(args)
        limits()
    if args.docstrings:
        figures["docstrings"] = docstrings(args.docstrings, args.kinds)
    if args.pairs:
        print(f"\n{'n':>7} {'dtype':>7}  {'operation':<14} {'seconds':>9} "
              f"{'queries/s':>10} {'peak MiB':>9}")
        for n in args.pairs:
            for dtype in ("float32", "float64"):
                for name, seconds, rate, peak in all_pairs(n, dtype, 2, args.max_gb):
                    print(f"{n:>7} {dtype:>7}  {name:<14} {seconds:9.3f} "
                          f"{rate:10.0f} {peak:9.1f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(figures, file, indent=1)


if __name__ == "__main__":
    main()
