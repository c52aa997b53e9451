# SPDX-License-Identifier: BSD-3-Clause
"""One BLAS thread for SciPy's small dense linear algebra (and for the gradient
solvers), when threadpoolctl is installed.

The solvers call SciPy's LAPACK on matrices of at most a few hundred rows
(Cholesky factors, eigendecompositions and SVDs of Gram blocks, ``k x k``
whitenings) and L-BFGS-B's level-1 BLAS on vectors of a few thousand entries.
Threads barely speed these up, and OpenBLAS's threads slow them down many
times when the cores are busy (measured on 2 shared cores: a 384 x 384
Cholesky took 18 ms on two threads, 1 ms on one; L-BFGS-B 50x slower). NumPy's
BLAS, which computes the large Gram products, keeps its threads
(`scipy_blas_single_threaded`: SciPy links its own OpenBLAS), except during
the per-sample SGD, L-BFGS and mini-batches, whose products are small or
one-vector (`blas_single_threaded`: measured on a busy machine, mini-batches
took 8.9 s with NumPy's two threads and 2.3 s with one, L-BFGS 7.6 s and
0.6 s).
"""

import contextlib
import os
import threading

__all__ = ["blas_single_threaded", "scipy_blas_single_threaded"]

_lock = threading.Lock()
_controllers = None  # filepath -> (threadpoolctl controller of it, is SciPy's)
# filepath -> [the contexts limiting it, in any thread; its original number
# of threads, restored when the last of them closes]
_open = {}


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
def _in_control():
    """Let this thread set OpenBLAS's limits, then let go.

    threadpoolctl (3.7 and later) lets only one Python thread at a time set
    the process-wide limit of OpenBLAS, and silently ignores the others; the
    contexts below are serialised by ``_lock`` and act for every thread, so
    the thread that sets or restores a limit takes control for that moment
    and leaves it free for the caller's own threadpoolctl contexts.
    """
    import threadpoolctl

    controller = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(controller, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    try:
        yield
    finally:
        if clear is not None:
            clear(force=True)


# OpenBLAS runs a product on one thread anyway below these sizes (interface/
# gemv.c: m n < 2304 * 4; ger.c: m n <= 2048 * 4; gemm.c: m n k < 65536 * 4):
# a problem whose matrices all have fewer entries is not limited (setting and
# restoring the limits costs more than its whole training, tens of us).
SMALL_ENTRIES = 8192


@contextlib.contextmanager
def _single_threaded(scipy_only, entries=None):
    """One thread for the selected BLAS libraries while the context is open.

    A library's thread count is a setting of the whole process, so the
    contexts of all threads share it: the first to open sets one thread and
    remembers the original number, the last to close restores it, whatever
    the order in which threads open and close them (nested contexts count
    too). Every step of the bookkeeping can be repeated, and closing finishes
    it before passing on a Ctrl-C that lands in it: no interrupt leaves a
    library limited or a context counted. Nothing is limited if
    ``entries``, the size of the largest matrix the work multiplies, is
    below `SMALL_ENTRIES`.
    """
    if entries is not None and entries < SMALL_ENTRIES:
        yield
        return
    token = object()
    try:
        with _lock:
            _limit(token, scipy_only)
        yield
    finally:
        interrupt = None
        while True:
            try:
                with _lock:
                    _restore(token)
                break
            except KeyboardInterrupt as exc:
                interrupt = exc
        if interrupt is not None:
            raise interrupt


def _limit(token, scipy_only):
    global _controllers
    if _controllers is None:
        _controllers = _find_blas()
    for path, (controller, scipy) in _controllers.items():
        if scipy or not scipy_only:
            if path not in _open:
                original = controller.lib_controllers[0].num_threads
                _open[path] = [set(), original]
            _open[path][0].add(token)
            if len(_open[path][0]) == 1:
                with _in_control():
                    controller.limit(limits=1)


def _restore(token):
    for path, (holders, original) in list(_open.items()):
        holders.discard(token)
        if not holders:
            with _in_control():
                _controllers[path][0].limit(limits=original)
            del _open[path]


def scipy_blas_single_threaded(entries=None):
    """A context in which SciPy's BLAS (if threadpoolctl finds it) has one
    thread (unless the largest matrix has fewer than `SMALL_ENTRIES`
    ``entries``)."""
    return _single_threaded(True, entries)


def blas_single_threaded(entries=None):
    """A context in which every BLAS threadpoolctl finds (NumPy's too) has one
    thread (unless the largest matrix has fewer than `SMALL_ENTRIES`
    ``entries``): for the per-sample SGD, which runs on one core anyway, and
    whose loss between epochs would otherwise stall on OpenBLAS's threads
    when the other core is busy."""
    return _single_threaded(False, entries)
