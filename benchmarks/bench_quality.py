# SPDX-License-Identifier: BSD-3-Clause
"""Quality of the spaces latentspace trains, on real embeddings, in one run.

    python benchmarks/bench_quality.py PATH/docstring_views.npz
    python benchmarks/bench_quality.py PATH --sections ridge --pairs 300 1000
    python benchmarks/bench_quality.py PATH --json quality.json

The data: 12,000 Python docstrings embedded by four genuinely different text
models (minilm 384-d and mpnet 768-d sentence encoders, lsa 256-d word TF-IDF
+ SVD, charsvd 128-d character n-gram TF-IDF + SVD), raw model outputs
(unnormalised, not centred); train rows 0-9,999, test rows 10,000-11,999.
Training uses the first N train rows as known pairs.

Every score is cross-model retrieval on the 2,000 test items
(`latentspace.metrics.retrieval_scores`): for each item of model A, the rank
of the same item among the 2,000 items of model B, by cosine similarity or by
CSLS with the queries as the source reference set; ties go to the lower
index, as in `LatentSpace.search` (lsa gives 86 test items an exact
duplicate). Printed: top-1; the JSON file has top-1 and top-10 of both
methods for every ordered pair, and the fit times.

Sections:

``ridge``
    Two-model spaces for every pair of models and N in ``--pairs``:
    ``regularization="auto"`` (the default) against every fixed value of
    ``--fixed``; the table gives, per ordered pair, auto's CSLS top-1, the
    best fixed value's, and the gap.
``joint``
    Spaces of 3 and 4 models (N = 10,000 and 1,000): CSLS top-1 of every
    ordered pair against that pair's own two-model space at the same k.
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import time
import warnings

import numpy as np

import latentspace
from latentspace import metrics

VIEWS = ("minilm", "mpnet", "lsa", "charsvd")
PAIRS = (100, 300, 1000, 3000, 10000)
FIXED = (0.001, 0.01, 0.1, 0.3, 1.0, 3.0, 10.0)
K = 128
N_TRAIN = 10_000


def load(path):
    """``(train, test)``: dicts of view name to float32 rows."""
    with np.load(path) as npz:
        views = {name: np.asarray(npz[name]) for name in VIEWS}
    return (
        {n: X[:N_TRAIN] for n, X in views.items()},
        {n: X[N_TRAIN:] for n, X in views.items()},
    )


def latent_dim(widths, n_pairs, k=K):
    """``k``, capped by what the data can fill (see docs/maths.md, 5.5)."""
    return min(k, sorted(widths)[-2], n_pairs - 1)


def fit(train, n_pairs, k, **options):
    """A space trained on the first ``n_pairs`` rows of ``train``; seconds."""
    space = latentspace.LatentSpace(k)
    for name, X in train.items():
        space.register(name, X.shape[1])
    data = {name: X[:n_pairs] for name, X in train.items()}
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", latentspace.ConvergenceWarning)
        space.train_projections(data, **options)
    return space, time.perf_counter() - started


def scores(space, test):
    """``{"a -> b": {"cosine": {"top1", "top10"}, "csls": {...}}}``."""
    out = {}
    for method in ("cosine", "csls"):
        evaluation = metrics.retrieval_scores(
            space, test, k=(1, 10), method=method
        )
        for (a, b), values in evaluation.items():
            out.setdefault(f"{a} -> {b}", {})[method] = {
                "top1": values["top1"], "top10": values["top10"]
            }
    return out


def _top1(record, pair):
    return record["scores"][pair]["csls"]["top1"]


# -------------------------------------------------------------------- ridge


def ridge_section(train, test, pairs, fixed):
    """Auto against every fixed regularization, two-model spaces."""
    records = []
    for a, b in itertools.combinations(VIEWS, 2):
        for n in pairs:
            views = {a: train[a], b: train[b]}
            k = latent_dim([X.shape[1] for X in views.values()], n)
            for regularization in ("auto", *fixed):
                space, seconds = fit(views, n, k, regularization=regularization)
                records.append({
                    "models": [a, b], "n_pairs": n, "k": k,
                    "regularization": regularization, "seconds": seconds,
                    "scores": scores(space, {a: test[a], b: test[b]}),
                })
    print("\nregularization='auto' against fixed values: CSLS top-1 on 2,000 test "
          f"items, k = min({K}, second width, N - 1)")
    print(f"{'pair':<20}" + "".join(f"{'N=' + str(n):>22}" for n in pairs))
    print(f"{'':<20}" + f"{'auto  best (value)':>22}" * len(pairs))
    gaps = []
    for a, b in itertools.combinations(VIEWS, 2):
        for pair in (f"{a} -> {b}", f"{b} -> {a}"):
            cells = []
            for n in pairs:
                rows = [r for r in records
                        if r["models"] == [a, b] and r["n_pairs"] == n]
                auto = next(_top1(r, pair) for r in rows if r["regularization"] == "auto")
                best = max((r for r in rows if r["regularization"] != "auto"),
                           key=lambda r: _top1(r, pair))
                gaps.append((_top1(best, pair) - auto, pair, n))
                cells.append(f"{auto:6.3f} {_top1(best, pair):6.3f} "
                             f"({best['regularization']:g})")
            print(f"{pair:<20}" + "".join(f"{c:>22}" for c in cells))
    worst = max(gaps)
    print(f"largest gap of auto below the best fixed value: {100 * worst[0]:.1f} "
          f"points ({worst[1]}, N={worst[2]}); auto at or above the best fixed "
          f"value in {sum(g <= 0 for g, _, _ in gaps)} of {len(gaps)} cases")
    return records


# -------------------------------------------------------------------- joint


def joint_section(train, test, pairs, ks):
    """Spaces of 3 and 4 models against every pair's own space."""
    records = []
    print("\nJoint spaces: CSLS top-1 of every ordered pair, in one space of all "
          "the models against the pair's own two-model space")
    for n in pairs:
        for k in ks:
            own = {}
            for a, b in itertools.combinations(VIEWS, 2):
                views = {a: train[a], b: train[b]}
                space, seconds = fit(views, n, latent_dim([384, 768, 256, 128], n, k))
                own.update(scores(space, {a: test[a], b: test[b]}))
            for members in (("minilm", "lsa", "charsvd"), VIEWS):
                views = {m: train[m] for m in members}
                kk = latent_dim([X.shape[1] for X in views.values()], n, k)
                space, seconds = fit(views, n, kk)
                joint = scores(space, {m: test[m] for m in members})
                records.append({"models": list(members), "n_pairs": n, "k": kk,
                                "seconds": seconds, "scores": joint,
                                "own": {p: own[p] for p in joint}})
                costs = sorted(
                    (own[p]["csls"]["top1"] - joint[p]["csls"]["top1"], p)
                    for p in joint
                )
                print(f"N={n:<6} k={kk:<4} {len(members)} models ({', '.join(members)}),"
                      f" fit {seconds:.2f} s: largest cost {100 * costs[-1][0]:.1f} "
                      f"points ({costs[-1][1]}), mean "
                      f"{100 * statistics.mean(c for c, _ in costs):.1f}")
                for cost, pair in costs[::-1]:
                    print(f"    {pair:<20} joint {joint[pair]['csls']['top1']:.3f}  "
                          f"own {own[pair]['csls']['top1']:.3f}")
    return records


# --------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="docstring_views.npz")
    parser.add_argument("--sections", nargs="+", default=["ridge", "joint"],
                        choices=["ridge", "joint"])
    parser.add_argument("--pairs", nargs="+", type=int, default=list(PAIRS))
    parser.add_argument("--fixed", nargs="+", type=float, default=list(FIXED))
    parser.add_argument("--joint-pairs", nargs="+", type=int, default=[10_000, 1000])
    parser.add_argument("--joint-k", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)

    print(f"latentspace {latentspace.__version__}, numpy {np.__version__}, Python "
          f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}")
    train, test = load(args.path)
    out = {}
    if "ridge" in args.sections:
        out["ridge"] = ridge_section(train, test, args.pairs, args.fixed)
    if "joint" in args.sections:
        out["joint"] = joint_section(train, test, args.joint_pairs, args.joint_k)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(out, file, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
