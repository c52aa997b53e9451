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
_depth = {}  # filepath -> contexts open on that library, in all threads
_limiters = {}  # filepath -> the limit in force while its depth > 0


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

    Every library keeps one count of the contexts open on it, in all threads:
    the first to enter limits it, the last to leave restores its previous
    number of threads, so nested and concurrent uses never leave it limited.
    """
    global _controllers
    with _lock:
        if _controllers is None:
            _controllers = _find_blas()
        paths = [p for p, (_, scipy) in _controllers.items() if scipy or not scipy_only]
        for path in paths:
            if _depth.get(path, 0) == 0:
                _limiters[path] = _controllers[path][0].limit(limits=1)
            _depth[path] = _depth.get(path, 0) + 1
    try:
        yield
    finally:
        with _lock:
            for path in paths:
                _depth[path] -= 1
                if _depth[path] == 0:
                    _limiters.pop(path).restore_original_limits()


def scipy_blas_single_threaded():
    """A context in which SciPy's BLAS (if threadpoolctl finds it) has one thread."""
    return _single_threaded(scipy_only=True)


def blas_single_threaded():
    """A context in which every BLAS threadpoolctl finds (NumPy's too) has one
    thread: for the per-sample SGD, which runs on one core anyway, and whose
    loss between epochs would otherwise stall on OpenBLAS's threads when the
    other core is busy."""
    return _single_threaded(scipy_only=False)
