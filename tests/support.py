# SPDX-License-Identifier: BSD-3-Clause
"""Helpers shared by the tests (not an oracle: see `reference`)."""

import inspect
import linecache
import os
import sys

import numpy as np
import pytest

import latentspace

# Per-dtype tolerance of the trained weights against the float64 NumPy oracle.
# Measured: float64 differs by at most ~2e-16 absolute, float32 by at most
# ~3e-7 absolute on the shapes tested (at most 1/15 of this tolerance).
WEIGHT_TOL = {
    np.dtype(np.float64): {"rtol": 0.0, "atol": 1e-10},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 2e-6},
}

# Tolerance of a single affine map (x @ W) or of the loss against NumPy in float64.
MAP_TOL = {
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-6},
}

DTYPES = [np.dtype(np.float64), np.dtype(np.float32)]
dtype_params = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)


def snapshot(space):
    """Everything observable about ``space``: dim, dtype, models and weight copies."""
    return {
        "dim": space.dim,
        "dtype": space.dtype,
        "models": dict(space.models),
        "order": list(space.models),
        "weights": {
            name: tuple(np.array(w, copy=True) for w in space.weights(name))
            for name in space.models
        },
    }


def assert_unchanged(space, before):
    """Assert ``space`` is exactly (bit for bit) as recorded by `snapshot`."""
    after = snapshot(space)
    assert after["dim"] == before["dim"]
    assert after["dtype"] == before["dtype"]
    assert after["models"] == before["models"]
    assert after["order"] == before["order"]
    for name, (P0, R0) in before["weights"].items():
        P1, R1 = after["weights"][name]
        assert P1.dtype == P0.dtype and R1.dtype == R0.dtype, name
        assert P1.shape == P0.shape and R1.shape == R0.shape, name
        # Bit-identical: compare the raw bytes, so that even -0.0/+0.0 or NaN
        # payload changes would be caught.
        assert P1.tobytes() == P0.tobytes(), f"P of {name!r} changed"
        assert R1.tobytes() == R0.tobytes(), f"R of {name!r} changed"


def float64_weights(space, names):
    """Copies of the weights of ``names`` as float64 lists (Ps, Rs)."""
    Ps = [np.asarray(space.weights(n)[0], dtype=np.float64).copy() for n in names]
    Rs = [np.asarray(space.weights(n)[1], dtype=np.float64).copy() for n in names]
    return Ps, Rs


def make_space(dim, widths, *, dtype="float64", seed=42):
    """A space with models ``m0, m1, ...`` of the given widths."""
    space = latentspace.LatentSpace(dim, dtype=dtype, seed=seed)
    names = [f"m{i}" for i in range(len(widths))]
    for name, width in zip(names, widths):
        space.register(name, width)
    return space, names


def random_data(widths, n, *, seed=0, scale=1.0):
    """Aligned float64 samples: a list of ``(n, d)`` arrays."""
    rng = np.random.default_rng(seed)
    return [scale * rng.standard_normal((n, d)) for d in widths]


def correlated(widths, n, *, shared=3, noise=0.5, seed=0):
    """Aligned views: ``shared`` common factors of decreasing strength, mixed
    into every model, plus noise and a non-zero mean."""
    rng = np.random.default_rng(seed)
    S = rng.standard_normal((n, shared)) * np.linspace(2.0, 0.7, shared)
    # features of order 1 / sqrt(d): rows of norm about 1, as embeddings have
    return [
        (
            S @ rng.standard_normal((shared, d))
            + noise * rng.standard_normal((n, d))
            + rng.uniform(-3, 3, d)
        )
        / (2 * d)
        for d in widths
    ]


class LineInterrupter:
    """Ctrl-C at every line: runs a call once per line it executes (in files
    under ``roots``), raising KeyboardInterrupt just before that line.

    ``lines(call)`` runs ``call`` once, traced, and returns the file of every
    line it executed, in order; ``run(call, at)`` runs it again and raises
    KeyboardInterrupt at the ``at``-th of those lines, returning the
    exception (None if the call returned). Calls must be deterministic, so
    that the ``at``-th line is the same line in every run.

    CPython runs a signal handler (raising KeyboardInterrupt) only after a
    call returns, on function entry and at loop back-edges. Some line events
    come where no signal can: those points are skipped, because an
    exception raised there would do what Ctrl-C cannot, and a real
    interrupt at the nearest possible point is simulated by the previous
    line anyway:

    - a line already executed in the same function call, or in the same
      generator over its resumptions (a ``with`` statement's exit is
      reported as its ``with`` line again, before ``__exit__`` is called;
      loops are interrupted in their first pass);
    - a ``try:`` line (a no-op before the protected block starts);
    - the first line of a ``finally:`` block (reached after the try block's
      last call, with no call in between);
    - any line run by a ``__del__`` method, its own or those of the calls
      it makes (Python does not propagate an exception raised in a
      finaliser).
    """

    def __init__(self, *roots):
        self.roots = tuple(os.fspath(root) for root in roots)
        self._skipped = {}

    def _skip(self, code, lineno):
        key = (code.co_filename, lineno)
        if key not in self._skipped:
            line = linecache.getline(code.co_filename, lineno).strip()
            previous = ""
            for before in range(lineno - 1, 0, -1):
                previous = linecache.getline(code.co_filename, before).strip()
                if previous and not previous.startswith("#"):
                    break
            self._skipped[key] = line == "try:" or previous == "finally:"
        return self._skipped[key]

    @staticmethod
    def _in_finaliser(frame):
        """Whether ``frame`` runs inside a ``__del__`` method."""
        while frame is not None:
            if frame.f_code.co_name == "__del__":
                return True
            frame = frame.f_back
        return False

    def _trace(self, on_line):
        generators = {}  # a generator's frame to its lines, over its resumptions

        def start(frame, event, arg):
            if not frame.f_code.co_filename.startswith(self.roots):
                return None
            if frame.f_code.co_flags & inspect.CO_GENERATOR:
                seen = generators.setdefault(frame, set())
            else:
                seen = set()

            def local(frame, event, arg):
                lineno = frame.f_lineno
                if event == "line" and lineno not in seen:
                    seen.add(lineno)
                    if not (self._skip(frame.f_code, lineno)
                            or self._in_finaliser(frame)):
                        on_line(frame.f_code.co_filename)
                return local

            return local

        return start

    def lines(self, call):
        files = []
        sys.settrace(self._trace(files.append))
        try:
            call()
        finally:
            sys.settrace(None)
        return files

    def run(self, call, at):
        count = [0]

        def on_line(filename):
            count[0] += 1
            if count[0] == at:
                raise KeyboardInterrupt(f"line {at}")

        sys.settrace(self._trace(on_line))
        try:
            call()
        except KeyboardInterrupt as exc:
            return exc
        finally:
            sys.settrace(None)
        return None

    @staticmethod
    def chosen(files, every_line_in, every_other):
        """Positions (1-based) of ``files`` to interrupt at: every line of a
        file whose name ends with one of ``every_line_in``, every
        ``every_other``-th of the others."""
        return [
            at for at, name in enumerate(files, 1)
            if name.endswith(every_line_in) or at % every_other == 0
        ]


def random_observed(n, M, *, seed=0, p=0.7, nobody=True):
    """(n, M) bool: every model observes about ``p`` of the samples; rows
    with one model and (if ``nobody``) with none are included."""
    rng = np.random.default_rng(seed)
    observed = rng.random((n, M)) < p
    observed[0] = True
    observed[1] = False
    observed[1, 0] = True  # one model only
    if nobody:
        observed[2] = False
    return observed


def masked(Xs, observed, value=np.nan):
    """Copies of ``Xs`` holding ``value`` where a model did not observe."""
    out = []
    for m, X in enumerate(Xs):
        X = np.array(X, copy=True)
        X[~observed[:, m]] = value
        out.append(X)
    return out


def zero_filled(Xs, observed):
    return masked(Xs, observed, 0.0)


def statistics_of(Xs, observed=None, chunks=1):
    """The `Statistics` of in-memory blocks (every sample observed by every
    model if ``observed`` is None), merged over ``chunks`` chunks of rows."""
    from latentspace._training.statistics import chunk_sums, merge_sums, statistics

    names = list(range(len(Xs)))
    sums = {}
    for rows in np.array_split(np.arange(len(Xs[0])), chunks):
        mask = None if observed is None else observed[rows]
        sums = merge_sums(sums, chunk_sums(names, [X[rows] for X in Xs], mask))
    return statistics(names, [X.shape[1] for X in Xs], Xs[0].dtype, sums)
