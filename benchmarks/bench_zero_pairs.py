# SPDX-License-Identifier: BSD-3-Clause
"""Alignment with no known pair, and self-learning from a few, on real embeddings.

    python benchmarks/bench_zero_pairs.py PATH/docstring_views.npz
    python benchmarks/bench_zero_pairs.py PATH --models minilm:mpnet --items 8000 --seeds 5
    python benchmarks/bench_zero_pairs.py PATH --section refine --pairs 100 300 1000
    python benchmarks/bench_zero_pairs.py PATH --json zero.json

The data: 12,000 Python docstrings embedded by four text models (see
bench_quality.py); train rows 0-9,999, test rows 10,000-11,999.

``zero`` (the default section): for each pair of models, number of items N
and seed, N random train items (drawn by the seed) of each model, the second
model's rows shuffled (no correspondence known), trained with
``train_projections(None, unpaired=..., refine=True)`` in a 128-d float32
space. Printed per run: whether it reported an alignment, its criterion (the
share of mutual nearest neighbours), the pairs it found and how many are
true, CSLS top-1 of the 2,000 test items (model A's queries among model B's),
and the wall time. A run that reports failure (AlignmentNotFoundError) is
counted as one; the target is that a reported success is never near chance.

``refine``: N known pairs (random train rows) and the other train rows of
each model as shuffled pools: CSLS top-1 with the known pairs alone, with
``refine=True``, and with all 10,000 pairs known, with the rounds' figures.
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

import latentspace
from latentspace import AlignmentNotFoundError, LatentSpace

N_TRAIN = 10_000
K = 128


def load(path):
    with np.load(path) as npz:
        return {name: np.asarray(npz[name], np.float32) for name in npz.files
                if npz[name].ndim == 2}


def space_of(views, a, b):
    space = LatentSpace(K, dtype="float32", seed=0)
    space.register(a, views[a].shape[1])
    space.register(b, views[b].shape[1])
    return space


def test_top1(space, views, a, b):
    test = slice(N_TRAIN, N_TRAIN + 2000)
    hits = space.search(a, views[a][test], b, views[b][test], k=1)
    return float(np.mean(hits.indices[:, 0] == np.arange(2000)))


def zero(views, a, b, n, seed):
    rng = np.random.default_rng(seed)
    items = rng.permutation(N_TRAIN)[:n]
    order = rng.permutation(items)
    space = space_of(views, a, b)
    started = time.perf_counter()
    try:
        result = space.train_projections(
            None, unpaired={a: views[a][items], b: views[b][order]}, refine=True)
    except AlignmentNotFoundError as exc:
        m = exc.matching
        return {"aligned": False, "criterion": m.criterion, "rounds": m.rounds,
                "seconds": time.perf_counter() - started, "top1": None}
    seconds = time.perf_counter() - started
    m = result.matching
    return {"aligned": True, "criterion": m.criterion, "rounds": m.rounds,
            "pairs": m.n_pairs, "seconds": seconds,
            "top1": test_top1(space, views, a, b)}


def refine(views, a, b, n, seed):
    rng = np.random.default_rng(seed)
    rows = rng.permutation(N_TRAIN)
    known, pool = rows[:n], rows[n:]
    shuffled = rng.permutation(pool)
    data = {a: views[a][known], b: views[b][known]}
    alone = space_of(views, a, b)
    alone.train_projections(data)
    space = space_of(views, a, b)
    started = time.perf_counter()
    result = space.train_projections(
        data, unpaired={a: views[a][pool], b: views[b][shuffled]}, refine=True)
    seconds = time.perf_counter() - started
    m = result.matching
    return {"known_alone": test_top1(alone, views, a, b),
            "refined": test_top1(space, views, a, b), "accepted": m.accepted,
            "z": m.criterion, "pseudo_pairs": m.n_pairs, "rounds": m.rounds,
            "history": list(m.history), "seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="docstring_views.npz")
    parser.add_argument("--section", choices=("zero", "refine"), default="zero")
    parser.add_argument("--models", nargs="+",
                        default=["minilm:mpnet", "minilm:lsa", "mpnet:charsvd"],
                        help="pairs of views, A:B")
    parser.add_argument("--items", type=int, nargs="+", default=[2000, 4000, 8000, 10000],
                        help="zero: items per model")
    parser.add_argument("--pairs", type=int, nargs="+", default=[100, 300, 1000],
                        help="refine: known pairs")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", help="write every run here")
    args = parser.parse_args()
    views = load(args.path)
    print(f"latentspace {latentspace.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    runs = []
    sizes = args.items if args.section == "zero" else args.pairs
    for pair in args.models:
        a, b = pair.split(":")
        for n in sizes:
            rows = []
            for seed in range(args.seeds):
                run = (zero if args.section == "zero" else refine)(views, a, b, n, seed)
                run.update(section=args.section, a=a, b=b, n=n, seed=seed)
                rows.append(run)
                runs.append(run)
                if args.section == "zero":
                    top1 = "-" if run["top1"] is None else f"{run['top1']:.3f}"
                    print(f"{a}<->{b} N={n} seed {seed}: "
                          f"{'aligned' if run['aligned'] else 'FAILED (reported)'}, "
                          f"criterion {run['criterion']:.3f}, rounds {run['rounds']}, "
                          f"test CSLS top-1 {top1}, {run['seconds']:.1f} s", flush=True)
                else:
                    print(f"{a}->{b} N={n} seed {seed}: known pairs alone "
                          f"{run['known_alone']:.3f}, refined {run['refined']:.3f} "
                          f"({'accepted' if run['accepted'] else 'rejected'}, z "
                          f"{run['z']:.1f}, {run['pseudo_pairs']} pseudo pairs, "
                          f"{run['rounds']} rounds), {run['seconds']:.1f} s", flush=True)
            if args.section == "zero":
                ok = [r for r in rows if r["aligned"]]
                print(f"  {a}<->{b} N={n}: {len(ok)}/{len(rows)} aligned; median "
                      f"seconds {statistics.median(r['seconds'] for r in rows):.1f}"
                      + (f"; test top-1 of the aligned: min "
                         f"{min(r['top1'] for r in ok):.3f}, median "
                         f"{statistics.median(r['top1'] for r in ok):.3f}" if ok else ""))
    if args.section == "refine":
        for pair in args.models:
            a, b = pair.split(":")
            space = space_of(views, a, b)
            space.train_projections({a: views[a][:N_TRAIN], b: views[b][:N_TRAIN]})
            print(f"{a}->{b} all {N_TRAIN} pairs known: {test_top1(space, views, a, b):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1, default=float)


if __name__ == "__main__":
    main()
