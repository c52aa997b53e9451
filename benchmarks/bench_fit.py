# SPDX-License-Identifier: BSD-3-Clause
"""Time to quality of `LatentSpace.train_projections`, in one run.

    python benchmarks/bench_fit.py              # everything: scikit-learn's CCA
                                                # on table 3 alone takes minutes
                                                # (50 on two busy cores here)
    python benchmarks/bench_fit.py --quick      # skip scikit-learn on the
                                                # large synthetic problem

Prints three tables; every time is the median over ``--repeats`` fits within
this run (one fit for scikit-learn and cca-zoo, whose single fits take
seconds to minutes), with BLAS on its default threads:

1. Real data that ships with scikit-learn: the 1,797 handwritten digits, each
   "embedded" by two different models, i.e. two different feature maps of
   two independently noised copies of the image (random Fourier features,
   width 96, and a Nystroem polynomial map of a blurred copy, width 64).
   Fit on 1,200 digits, then cross-model retrieval on the other 597: for each
   digit's model-A latent, is its own model-B latent the nearest (top-1) or
   among the 10 nearest (top-10) by cosine similarity? Every solver of
   latentspace, against scikit-learn's CCA, cca-zoo's MCCA and GCCA (if
   installed) and a plain NumPy closed-form CCA.
2. The same digits with a third model (tanh of a random projection of pooled
   and gradient features of a third noisy copy, width 48): top-1 of every
   pair in one three-model space against a space fitted on that pair alone.
3. SYNTHETIC data (clearly not real): n = 10,000 training pairs of widths 384
   and 256 with 128 shared factors of geometrically decaying strength,
   private structure and noise, latent 128, float32: the size of the
   fit-time target of solver="cca" (<= 0.3 s, >= 100x faster than
   scikit-learn's CCA at equal or better top-1 on 2,000 held-out pairs).
"""

import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np

import latentspace

FLOAT = "float32"


# ----------------------------------------------------------------------- data


def _noisy(images, rng, noise):
    return images + noise * rng.standard_normal(images.shape)


def digits_models(n_models, noise=0.2):
    """The digits, embedded by 2 or 3 different models (row-normalised)."""
    from sklearn.datasets import load_digits
    from sklearn.kernel_approximation import Nystroem, RBFSampler

    images = load_digits().data.reshape(-1, 8, 8) / 16.0
    n = len(images)
    rng = np.random.default_rng(0)
    a = _noisy(images, rng, noise).reshape(n, -1)
    views = [RBFSampler(gamma=0.02, n_components=96, random_state=0).fit_transform(a)]
    b = _noisy(images, rng, noise)
    b = ((b + np.roll(b, 1, axis=1)) / 2).reshape(n, -1)
    views.append(
        Nystroem(
            kernel="poly", degree=2, n_components=64, random_state=1
        ).fit_transform(b)
    )
    if n_models >= 3:
        c = _noisy(images, rng, noise)
        pooled = c.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(n, -1)
        gradient = np.diff(c, axis=1).reshape(n, -1)
        features = np.hstack([pooled, gradient])
        W = rng.standard_normal((features.shape[1], 48)) / np.sqrt(features.shape[1])
        views.append(np.tanh(3 * features @ W))
    views = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in views]
    order = np.random.default_rng(1).permutation(n)
    train, test = order[:1200], order[1200:]
    return [v[train] for v in views], [v[test] for v in views]


def synthetic_views(n, widths=(384, 256), shared=128, private=64, noise=3.0, seed=0):
    """SYNTHETIC correlated views (see the module docstring), float32."""
    rng = np.random.default_rng(seed)
    S = rng.standard_normal((n, shared)) * np.geomspace(1.0, 0.05, shared)
    views = []
    for d in widths:
        mixing = 4 * rng.standard_normal((shared, d)) / np.sqrt(shared)
        structure = rng.standard_normal((n, private)) @ (
            rng.standard_normal((private, d)) / np.sqrt(private)
        )
        X = S @ mixing + structure + noise * rng.standard_normal((n, d))
        views.append((X + rng.standard_normal(d)).astype(np.float32))
    return views


# -------------------------------------------------------------------- metrics


def top_k(A, B, ks=(1, 10)):
    """Fraction of rows of A whose own row of B is among its k nearest rows of
    B by cosine similarity."""
    A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-30)
    B = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-30)
    S = A @ B.T
    rank = (S > np.diag(S)[:, None]).sum(axis=1)
    return [float(np.mean(rank < k)) for k in ks]


def median_seconds(fit, repeats):
    """(median seconds, result of the last call)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fit()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


# --------------------------------------------------------------- contenders


def latentspace_fit(train, k, **config):
    """A fitted space and its project function."""
    space = latentspace.LatentSpace(k, dtype=FLOAT)
    names = [f"m{i}" for i in range(len(train))]
    for name, X in zip(names, train):
        space.register(name, X.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", latentspace.ConvergenceWarning)
        result = space.train_projections(dict(zip(names, train)), **config)

    def project(i, X):
        return space.project(names[i], X)

    return project, result


def numpy_cca(train, k, regularization=1e-2):
    """Closed-form two-view CCA in plain NumPy (float64, no weighting)."""
    Xa, Xb = train
    mus = [Xa.mean(axis=0), Xb.mean(axis=0)]
    A, B = Xa - mus[0], Xb - mus[1]
    n = len(A)

    def inv_sqrt(C):
        C = C + regularization * np.trace(C) / len(C) * np.eye(len(C))
        values, vectors = np.linalg.eigh(C)
        return (vectors / np.sqrt(values)) @ vectors.T

    Wa, Wb = inv_sqrt(A.T @ A / n), inv_sqrt(B.T @ B / n)
    U, s, Vt = np.linalg.svd(Wa @ (A.T @ B / n) @ Wb)
    Ps = [Wa @ U[:, :k], Wb @ Vt[:k].T]

    def project(i, X):
        return (X - mus[i]) @ Ps[i]

    return project, None


def sklearn_cca(train, k):
    from sklearn.cross_decomposition import CCA

    cca = CCA(n_components=k, max_iter=500).fit(*train)

    def project(i, X):
        if i == 0:
            return cca.transform(X)
        return cca.transform(np.zeros((len(X), train[0].shape[1])), X)[1]

    return project, None


def ccazoo(kind):
    def fit(train, k):
        from cca_zoo import linear

        model = getattr(linear, kind)(n_components=k, shrinkage=1e-2).fit(train)

        def project(i, X):
            blanks = [np.zeros((len(X), v.shape[1])) for v in train]
            blanks[i] = X
            return model.transform(blanks)[i]

        return project, None

    return fit


def _available(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------- tables


def table_digits(repeats):
    train, test = digits_models(2)
    k = 32
    contenders = [
        ("latentspace cca", repeats, lambda: latentspace_fit(train, k, solver="cca")),
        (
            "latentspace lbfgs (whitened, Xavier start)",
            repeats,
            lambda: latentspace_fit(train, k, solver="lbfgs", n_epochs=500),
        ),
        (
            "latentspace lbfgs init=cca",
            repeats,
            lambda: latentspace_fit(train, k, solver="lbfgs", init="cca", n_epochs=500),
        ),
        (
            "latentspace minibatch (whitened, 50 epochs)",
            repeats,
            lambda: latentspace_fit(
                train, k, solver="minibatch", n_epochs=50, batch_size=128
            ),
        ),
        (
            "latentspace sgd objective=whitened (20 ep.)",
            repeats,
            lambda: latentspace_fit(
                train,
                k,
                solver="sgd",
                objective="whitened",
                n_epochs=20,
                learning_rate=0.1,
            ),
        ),
        (
            "latentspace sgd (reference, seed; 100 ep.)",
            1,
            lambda: latentspace_fit(train, k),
        ),
        (
            "latentspace lbfgs objective=reference",
            1,
            lambda: latentspace_fit(
                train, k, solver="lbfgs", objective="reference", n_epochs=500
            ),
        ),
        ("NumPy closed-form CCA (unweighted)", repeats, lambda: numpy_cca(train, k)),
        ("scikit-learn CCA", 1, lambda: sklearn_cca(train, k)),
    ]
    if _available("cca_zoo"):
        contenders += [
            (f"cca-zoo {kind}", 1, (lambda kind=kind: ccazoo(kind)(train, k)))
            for kind in ("MCCA", "GCCA")
        ]
    print(
        f"\n1. Digits (real, scikit-learn), 2 models (96 + 64) -> {k}, {FLOAT}; "
        f"fit on {len(train[0])}, retrieval among {len(test[0])}"
    )
    print(f"{'method':46s} {'fit s':>8s} {'iters':>6s} {'top-1':>6s} {'top-10':>6s}")
    for name, runs, fit in contenders:
        seconds, (project, result) = median_seconds(fit, runs)
        t1, t10 = top_k(project(0, test[0]), project(1, test[1]))
        iters = "" if result is None else str(result.n_epochs)
        print(f"{name:46s} {seconds:8.3f} {iters:>6s} {t1:6.3f} {t10:6.3f}")


def table_three_models(repeats):
    train, test = digits_models(3)
    k = 32
    pairs = [(0, 1), (0, 2), (1, 2)]
    print(
        f"\n2. Digits, 3 models (96 + 64 + 48) -> {k}: top-1 of every pair "
        "(a -> b and b -> a, mean)"
    )
    print(
        f"{'method':46s} {'fit s':>8s} "
        + " ".join(f"{f'{a}-{b}':>6s}" for a, b in pairs)
    )

    def pair_scores(project, which=None):
        scores = []
        for a, b in pairs:
            ia, ib = (0, 1) if which else (a, b)
            p = project[(a, b)] if which else project
            ab = top_k(p(ia, test[a]), p(ib, test[b]), ks=(1,))[0]
            ba = top_k(p(ib, test[b]), p(ia, test[a]), ks=(1,))[0]
            scores.append((ab + ba) / 2)
        return scores

    seconds, (project, _) = median_seconds(
        lambda: latentspace_fit(train, k, solver="cca"), repeats
    )
    joint = pair_scores(project)
    print(
        f"{'latentspace cca, one space for all 3':46s} {seconds:8.3f} "
        + " ".join(f"{s:6.3f}" for s in joint)
    )
    separate, total = {}, 0.0
    for a, b in pairs:
        seconds, (project, _) = median_seconds(
            lambda a=a, b=b: latentspace_fit([train[a], train[b]], k, solver="cca"),
            repeats,
        )
        separate[(a, b)] = project
        total += seconds
    alone = pair_scores(separate, which=True)
    print(
        f"{'latentspace cca, a separate space per pair':46s} {total:8.3f} "
        + " ".join(f"{s:6.3f}" for s in alone)
    )
    seconds, (project, _) = median_seconds(
        lambda: latentspace_fit(train, k, solver="lbfgs", n_epochs=500), 1
    )
    print(
        f"{'latentspace lbfgs (whitened), one space':46s} {seconds:8.3f} "
        + " ".join(f"{s:6.3f}" for s in pair_scores(project))
    )
    if _available("cca_zoo"):
        for kind in ("MCCA", "GCCA"):
            seconds, (project, _) = median_seconds(lambda: ccazoo(kind)(train, k), 1)
            print(
                f"{'cca-zoo ' + kind + ', one space':46s} {seconds:8.3f} "
                + " ".join(f"{s:6.3f}" for s in pair_scores(project))
            )
    gap = [j - s for j, s in zip(joint, alone)]
    print(
        "joint minus separate (top-1 points): "
        + ", ".join(f"{g * 100:+.1f}" for g in gap)
    )


def table_synthetic(repeats, slow):
    from threadpoolctl import threadpool_limits

    k, n = 128, 10_000
    views = synthetic_views(n + 2000)
    train = [v[:n] for v in views]
    test = [v[n:] for v in views]
    print(
        f"\n3. SYNTHETIC correlated views, n={n}, widths 384 + 256 -> {k}, "
        "float32; retrieval among 2,000 held-out pairs"
    )
    print(f"{'method':46s} {'fit s':>8s} {'top-1':>6s} {'top-10':>6s}")
    rows = []
    seconds, (project, _) = median_seconds(
        lambda: latentspace_fit(train, k, solver="cca"), repeats
    )
    rows.append(("latentspace cca (BLAS default threads)", seconds, project))
    with threadpool_limits(1):
        seconds1, _ = median_seconds(
            lambda: latentspace_fit(train, k, solver="cca"), repeats
        )
    rows.append(("latentspace cca (BLAS 1 thread)", seconds1, project))
    seconds, (p, _) = median_seconds(lambda: numpy_cca(train, k), repeats)
    rows.append(("NumPy closed-form CCA (float32 in, unweighted)", seconds, p))
    if _available("cca_zoo"):
        seconds, (p, _) = median_seconds(lambda: ccazoo("MCCA")(train, k), 1)
        rows.append(("cca-zoo MCCA", seconds, p))
    if slow:
        seconds, (p, _) = median_seconds(lambda: sklearn_cca(train, k), 1)
        rows.append(("scikit-learn CCA", seconds, p))
    for name, seconds, project in rows:
        t1, t10 = top_k(project(0, test[0]), project(1, test[1]))
        print(f"{name:46s} {seconds:8.3f} {t1:6.3f} {t10:6.3f}")
    if slow:
        print(
            f"scikit-learn / latentspace cca fit time: {rows[-1][1] / rows[0][1]:.0f}x"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="skip scikit-learn's CCA on the synthetic problem",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["digits", "three", "synthetic"])
    args = parser.parse_args()
    from threadpoolctl import threadpool_info

    print(
        f"latentspace {latentspace.__version__}, NumPy {np.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    for info in threadpool_info():
        print(
            f"  {info['internal_api']} {info.get('version')} "
            f"{info['num_threads']} threads ({os.path.basename(info['filepath'])})"
        )
    print(f"  OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    if args.only in (None, "digits"):
        table_digits(args.repeats)
    if args.only in (None, "three"):
        table_three_models(args.repeats)
    if args.only in (None, "synthetic"):
        table_synthetic(args.repeats, slow=not args.quick)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
