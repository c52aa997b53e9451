# SPDX-License-Identifier: BSD-3-Clause
"""One BLAS thread for SciPy's small dense linear algebra, when threadpoolctl is
installed.

The solvers call SciPy's LAPACK on matrices of at most a few hundred rows
(Cholesky factors, eigendecompositions and SVDs of Gram blocks, ``k x k``
whitenings) and L-BFGS-B's level-1 BLAS on vectors of a few thousand entries.
Threads barely speed these up, and OpenBLAS's threads slow them down many
times when the cores are busy (measured on 2 shared cores: a 384 x 384
Cholesky took 18 ms on two threads, 1 ms on one; L-BFGS-B 50x slower). NumPy's
BLAS, which computes the large Gram products, keeps its threads: SciPy links
its own OpenBLAS, which is the only library limited here.
"""

import contextlib
import os
import threading

__all__ = ["scipy_blas_single_threaded"]

_controller = None  # SciPy's BLAS as a threadpoolctl controller; False: none
_lock = threading.Lock()
_depth = 0  # contexts open, in all threads
_limiter = None  # the limit in force while _depth > 0


def _scipy_blas():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return False
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)

    controller = ThreadpoolController().select(user_api="blas")
    libraries = [
        lib.filepath
        for lib in controller.lib_controllers
        if os.path.basename(os.path.dirname(lib.filepath)).startswith("scipy")
    ]
    return controller.select(filepath=libraries) if libraries else False


@contextlib.contextmanager
def scipy_blas_single_threaded():
    """A context in which SciPy's BLAS runs on one thread (if it can be found).

    Nested and concurrent uses share one limit: the first to enter sets it,
    the last to leave restores the previous number of threads.
    """
    global _controller, _depth, _limiter
    with _lock:
        if _controller is None:
            _controller = _scipy_blas()
        if _controller and _depth == 0:
            _limiter = _controller.limit(limits=1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None
