# SPDX-License-Identifier: BSD-3-Clause
"""Concurrency stress: readers, a trainer and a saver on one space.

Four threads project (one vector and batches), one trains again and again, one
saves and loads. Every projection must equal ``(x - mu) @ P`` under exactly one
published version of the weights (no torn read mixing two versions, no
half-published model), every saved file must load as one published version,
nothing may raise, and every thread must finish (joins have timeouts: a
deadlock fails the test instead of hanging it).

Short by default (a few seconds). The long mode runs minutes::

    python -m pytest tests/test_stress.py --stress=long
    LATENTSPACE_STRESS=long python -m pytest tests/test_stress.py
"""

import os
import tempfile
import threading
import time

import numpy as np
import pytest

from latentspace import LatentSpace

WIDTHS = {"a": 24, "b": 40}
K = 8
N_READERS = 4
JOIN_TIMEOUT = 120  # seconds: only a deadlock comes near it


def _settings(config):
    if config.getoption("--stress") == "long":
        return {"trainings": 400, "min_reads": 200_000}
    return {"trainings": 12, "min_reads": 4_000}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_readers_trainer_and_saver(request, dtype):
    settings = _settings(request.config)
    rng = np.random.default_rng(0)
    space = LatentSpace(K, dtype=dtype, seed=1)
    for name, width in WIDTHS.items():
        space.register(name, width)
    data = {n: rng.normal(size=(64, w)) for n, w in WIDTHS.items()}
    inputs = {
        n: [rng.normal(size=w), rng.normal(size=(1, w)), rng.normal(size=(7, w))]
        for n, w in WIDTHS.items()
    }

    def published():
        return {n: (space.weights(n)[0], space.offset(n)) for n in WIDTHS}

    versions = [published()]  # appended by the trainer only
    stop = threading.Event()
    problems = []
    reads = [[] for _ in range(N_READERS)]  # (name, input index, result)
    saved = []  # loaded copies: (P, mu) of every model

    def reader(r):
        try:
            i = 0
            while not stop.is_set() or i < settings["min_reads"] // N_READERS:
                name = "ab"[(i + r) % 2]
                j = (i // 2) % 3
                reads[r].append((name, j, space.project(name, inputs[name][j])))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(f"reader {r}: {exc!r}")

    def trainer():
        try:
            for t in range(settings["trainings"]):
                # Every run publishes different weights (cca ignores the
                # start: its regularization changes instead, slowly: sgd
                # started from a cca solution with regularization >= 1.7
                # diverges at these learning rates, as --stress=long found).
                solver = ("sgd", "cca", "minibatch")[t % 3]
                space.train_projections(
                    data, solver=solver, n_epochs=2, learning_rate=0.001 * (1 + t % 5),
                    regularization=0.1 + 1e-3 * t,
                )
                versions.append(published())  # the only writer: this is it
        except BaseException as exc:  # noqa: BLE001
            problems.append(f"trainer: {exc!r}")

    def saver(directory):
        try:
            i = 0
            while not stop.is_set():
                path = os.path.join(directory, f"s{i % 2}.npz")
                space.save(path)
                loaded = LatentSpace.load(path)
                saved.append({n: (np.array(loaded.weights(n)[0]), loaded.offset(n))
                              for n in WIDTHS})
                i += 1
        except BaseException as exc:  # noqa: BLE001
            problems.append(f"saver: {exc!r}")

    with tempfile.TemporaryDirectory() as directory:
        readers = [threading.Thread(target=reader, args=(r,)) for r in range(N_READERS)]
        train_thread = threading.Thread(target=trainer)
        save_thread = threading.Thread(target=saver, args=(directory,))
        started = time.monotonic()
        for thread in (*readers, train_thread, save_thread):
            thread.start()
        train_thread.join(JOIN_TIMEOUT)
        stop.set()
        for thread in (*readers, save_thread):
            thread.join(JOIN_TIMEOUT)
        hung = [t.name for t in (*readers, train_thread, save_thread) if t.is_alive()]
        seconds = time.monotonic() - started
    assert not hung, f"threads did not finish (deadlock?): {hung}"
    assert not problems, problems[:5]
    assert len(versions) == settings["trainings"] + 1

    # Every version answers differently, so a result names its version.
    tol = 1e-9 if dtype == "float64" else 1e-4
    expected = {}  # (name, j) -> list over versions of the float64 answer
    for name in WIDTHS:
        for j, x in enumerate(inputs[name]):
            answers = []
            for version in versions:
                P, mu = version[name]
                P = P.astype(np.float64)
                shift = 0.0 if mu is None else mu.astype(np.float64) @ P
                answers.append(x @ P - shift)
            expected[(name, j)] = answers
    grouped = {key: [] for key in expected}
    for results in reads:
        for name, j, result in results:
            assert result.dtype == dtype
            grouped[(name, j)].append(result)
    n_reads = sum(len(results) for results in reads)
    versions_seen = set()
    for key, results in grouped.items():
        answers = np.stack(expected[key])  # (versions, ...)
        # Reads against versions a block of reads at a time (--stress=long
        # has 2e5 reads and 401 versions: all at once would need 37 GiB).
        step = max(1, 2_000_000 // answers.size)
        for start in range(0, len(results), step):
            got = np.stack(results[start:start + step]).astype(np.float64)
            assert got.shape[1:] == answers.shape[1:]
            axes = tuple(range(2, got.ndim + 1))
            close = np.isclose(got[:, None], answers[None], rtol=tol, atol=tol).all(
                axis=axes)
            counts = close.sum(axis=1)
            assert (counts == 1).all(), (key, start + np.flatnonzero(counts != 1)[:5])
            versions_seen.update(np.argmax(close, axis=1).tolist())
    assert n_reads >= settings["min_reads"]
    assert len(versions_seen) >= 2  # readers ran while weights changed

    # Every saved file is one published version, bit for bit, all models alike.
    for copy in saved:
        match = [
            v for v, version in enumerate(versions)
            if all(copy[n][0].tobytes() == version[n][0].tobytes()
                   and ((copy[n][1] is None and version[n][1] is None)
                        or (copy[n][1] is not None and version[n][1] is not None
                            and copy[n][1].tobytes() == version[n][1].tobytes()))
                   for n in WIDTHS)
        ]
        assert len(match) == 1
    assert saved
    print(f"\nstress ({dtype}): {n_reads} projections, {settings['trainings']} "
          f"trainings, {len(saved)} save+load, {len(versions_seen)} versions seen "
          f"by readers, {seconds:.1f} s")
