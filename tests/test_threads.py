# SPDX-License-Identifier: BSD-3-Clause
"""BLAS thread limits during training (`latentspace._threads`, docs/threads.md):
shared by every thread, restored in any order, skipped for small problems."""

import threading

import pytest
from support import correlated, make_space

from latentspace._threads import SMALL_ENTRIES, blas_single_threaded


def _blas_threads(threadpoolctl):
    """The thread counts of NumPy's and SciPy's BLAS (FAISS, if a test
    loaded it, brings its own)."""
    return [info["num_threads"] for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas"
            and ("numpy" in info["filepath"] or "scipy" in info["filepath"])]


@pytest.mark.filterwarnings("ignore::latentspace.ConvergenceWarning")
def test_blas_thread_limits_are_restored_after_concurrent_training():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from concurrent.futures import ThreadPoolExecutor

    before = [info["num_threads"] for info in threadpoolctl.threadpool_info()]
    Xs = correlated((6, 5), 200, seed=31)

    def fit(solver):
        space, names = make_space(3, (6, 5))
        result = space.train_projections(dict(zip(names, Xs)), solver=solver,
                                         n_epochs=20)
        return result.final_loss

    solvers = ["cca", "lbfgs", "sgd"]
    with ThreadPoolExecutor(4) as pool:
        losses = list(pool.map(fit, solvers * 3))
    for i in range(3):
        assert losses[i::3] == [losses[i]] * 3, solvers[i]
    assert [info["num_threads"] for info in threadpoolctl.threadpool_info()] == before


def test_blas_limits_of_overlapping_trainings_are_restored_in_any_order():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def threads():
        return _blas_threads(threadpoolctl)

    before = threads()
    first_in, second_in, first_out = (threading.Event() for _ in range(3))
    seen = {}

    def first():
        with blas_single_threaded():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with blas_single_threaded():
            second_in.set()
            first_out.wait(10)
            seen["while the second trains"] = threads()

    workers = [threading.Thread(target=f) for f in (first, second)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # The first opened first and closed first: the limit held until the
    # second closed, and then the original numbers came back.
    assert seen["while the second trains"] == [1] * len(before)
    assert threads() == before


def test_small_problems_are_not_limited():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = _blas_threads(threadpoolctl)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        two = _blas_threads(threadpoolctl)
        with blas_single_threaded(SMALL_ENTRIES - 1):
            assert _blas_threads(threadpoolctl) == two
        with blas_single_threaded(SMALL_ENTRIES):
            assert _blas_threads(threadpoolctl) == [1] * len(two)
        assert _blas_threads(threadpoolctl) == two
    assert _blas_threads(threadpoolctl) == before
