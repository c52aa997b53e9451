# SPDX-License-Identifier: BSD-3-Clause
"""One BLAS thread for SciPy's small dense linear algebra (and for the SGD), when
threadpoolctl is installed.

The solvers call SciPy's LAPACK on matrices of at most a few hundred rows
(Cholesky factors, eigendecompositions and SVDs of Gram blocks, ``k x k``
whitenings) and L-BFGS-B's level-1 BLAS on vectors of a few thousand entries.
Threads barely speed these up, and OpenBLAS's threads slow them down many
times when the cores are busy (measured on 2 shared cores: a 384 x 384
Cholesky took 18 ms on two threads, 1 ms on one; L-BFGS-B 50x slower). NumPy's
BLAS, which computes the large Gram products, keeps its threads
(`scipy_blas_single_threaded`: SciPy links its own OpenBLAS), except during
the per-sample SGD, which runs on one core anyway (`blas_single_threaded`).
"""

import contextlib
import os
import threading

__all__ = ["blas_single_threaded", "scipy_blas_single_threaded"]

_lock = threading.Lock()
_controllers = None  # filepath -> (threadpoolctl controller of it, is SciPy's)


def _find_blas():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return {}
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)

    controller = ThreadpoolController().select(user_api="blas")
    return {
        lib.filepath: (
            controller.select(filepath=lib.filepath),
            os.path.basename(os.path.dirname(lib.filepath)).startswith("scipy"),
        )
        for lib in controller.lib_controllers
    }


@contextlib.contextmanager
def _single_threaded(scipy_only):
    """One thread for the selected BLAS libraries while the context is open.

    Limits are set and restored by the thread that opens the context, in
    last-in-first-out order (OpenBLAS does not reliably let another thread
    restore them); a nested context sets the limit again and restores it to
    one. Concurrent threads each set and restore their own limit, as
    threadpoolctl's contexts in scikit-learn do. No state outlives the
    context, so an interrupt anywhere in it can at worst leave a library on
    one thread.
    """
    global _controllers
    with _lock:
        if _controllers is None:
            _controllers = _find_blas()
    limiters = []
    try:
        for controller, scipy in _controllers.values():
            if scipy or not scipy_only:
                limiters.append(controller.limit(limits=1))
        yield
    finally:
        for limiter in reversed(limiters):
            limiter.restore_original_limits()


def scipy_blas_single_threaded():
    """A context in which SciPy's BLAS (if threadpoolctl finds it) has one thread."""
    return _single_threaded(scipy_only=True)


def blas_single_threaded():
    """A context in which every BLAS threadpoolctl finds (NumPy's too) has one
    thread: for the per-sample SGD, which runs on one core anyway, and whose
    loss between epochs would otherwise stall on OpenBLAS's threads when the
    other core is busy."""
    return _single_threaded(scipy_only=False)
