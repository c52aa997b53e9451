# SPDX-License-Identifier: BSD-3-Clause
"""What every solver does between two iterations: history, early stopping,
the user's callback and the progress bar; and what a solver returns, `Run`."""

import math
import time
from typing import NamedTuple

__all__ = [
    "PATIENCE",
    "Monitor",
    "Run",
    "TrainingState",
    "bar_callback",
    "check_progress_available",
]

# Consecutive iterations that must each lower the loss by less than tol (or
# raise it) before training stops: one small step of a stochastic or
# quasi-Newton solver is not convergence.
PATIENCE = 3


class Run(NamedTuple):
    """What every solver returns: the trained weights (new arrays) and
    whether the solver itself found them final (an exact solution, or its
    own convergence test met); a solver that diverges raises
    `TrainingDivergedError` instead."""

    projections: list
    reconstructions: list
    finished: bool


class TrainingState(NamedTuple):
    """What a `ProjectionConfig.callback` receives after every iteration.

    Attributes
    ----------
    iteration : int
        Iterations (epochs, L-BFGS iterations, 1 for the closed form) done.
    loss : float
        Mean per-sample loss of the objective being minimised, after it.
    seconds : float
        Wall time since `LatentSpace.train_projections` was called.
    """

    iteration: int
    loss: float
    seconds: float


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "progress=True shows a tqdm progress bar, but tqdm is not installed; "
            "install it (pip install tqdm) or pass progress=False"
        ) from None
    return tqdm


def check_progress_available(progress):
    """Fail before any work if a progress bar is asked for and tqdm is missing."""
    if progress:
        _tqdm()


class Monitor:
    """Records the loss of every iteration and decides when to stop.

    Training stops once the relative decrease of the loss,
    ``(previous - loss) / max(|previous|, |loss|)``, has been at most ``tol``
    for `PATIENCE` consecutive iterations (then ``converged`` is true), or if
    the callback returns true (``stopped``).
    An exception raised by the callback propagates: training is abandoned
    and the space keeps its weights.

    Parameters
    ----------
    total : int
        Maximum number of iterations (for the progress bar).
    tol : float or None
        None: never stop early.
    callback : callable or None
        Called as ``callback(TrainingState)``.
    progress : bool
        Show a tqdm bar.
    started : float
        ``time.perf_counter()`` at the start of training.
    """

    def __init__(self, total, tol, callback, progress, started):
        self.tol = tol
        self.callback = callback
        self.started = started
        self.initial_loss = math.nan
        self.history = []
        self.converged = False
        self.stopped = False
        self._settled = 0
        self._bar = _tqdm()(total=total, unit="it") if progress else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
        return False

    @property
    def iterations(self):
        return len(self.history)

    def start(self, loss):
        """Record the loss before the first iteration."""
        self.initial_loss = float(loss)

    def step(self, loss):
        """Record one iteration; return True if training should stop."""
        loss = float(loss)
        previous = self.history[-1] if self.history else self.initial_loss
        self.history.append(loss)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
            self._bar.update(1)
        if self.callback is not None:
            state = TrainingState(
                self.iterations, loss, time.perf_counter() - self.started
            )
            if self.callback(state):
                self.stopped = True
        if self.tol is not None and math.isfinite(previous) and math.isfinite(loss):
            scale = max(abs(previous), abs(loss))
            self._settled = (
                self._settled + 1 if previous - loss <= self.tol * scale else 0
            )
            self.converged = self._settled >= PATIENCE
        return self.stopped or self.converged

    def replace_last(self, loss):
        """Replace the last recorded loss (the published weights' loss)."""
        if self.history:
            self.history[-1] = float(loss)
        else:
            self.history.append(float(loss))


def bar_callback(unit, callback=None):
    """A ``callback(done, total)`` that draws a tqdm progress bar on stderr
    (created at the first call, closed at the last, timed from now) and then
    calls ``callback``; ImportError now if tqdm is missing."""
    tqdm = _tqdm()
    started = time.time()  # tqdm's clock
    bar = None

    def draw(done, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit=" " + unit, unit_scale=total >= 100_000)
            # The work began before its first block was done: timed from
            # there, a job done in one block does not read as millions a second.
            bar.start_t = bar.last_print_t = started
        bar.update(done - bar.n)
        if done == total:
            bar.close()
        if callback is not None:
            callback(done, total)

    return draw
