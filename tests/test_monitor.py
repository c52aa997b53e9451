# SPDX-License-Identifier: BSD-3-Clause
"""What every solver does between iterations (`latentspace._monitor`): the
loss history, early stopping after `PATIENCE` small steps, the callback."""

import math

import pytest

from latentspace._monitor import PATIENCE, Monitor, TrainingState


def _run(losses, tol=None, callback=None):
    """Feed ``losses`` (the first is the initial loss) until the monitor
    says stop; the monitor and the number of steps taken."""
    with Monitor(len(losses), tol, callback, False, started=0.0) as monitor:
        monitor.start(losses[0])
        for steps, loss in enumerate(losses[1:], 1):
            if monitor.step(loss):
                return monitor, steps
    return monitor, len(losses) - 1


def test_history_and_initial_loss():
    monitor, steps = _run([4.0, 3.0, 2.0])
    assert steps == 2 and monitor.history == [3.0, 2.0] and monitor.initial_loss == 4.0
    assert monitor.iterations == 2 and not monitor.converged and not monitor.stopped


def test_stops_after_patience_steps_below_tol():
    # Relative decreases: 0.5, then 1e-6 three times in a row.
    losses = [2.0, 1.0, 1.0 - 1e-6, 1.0 - 2e-6, 1.0 - 3e-6, 0.5]
    monitor, steps = _run(losses, tol=1e-4)
    assert monitor.converged and steps == 1 + PATIENCE


def test_a_large_step_resets_the_count():
    losses = [2.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    monitor, steps = _run(losses, tol=1e-4)
    # Two flat steps, a large one, then PATIENCE flat ones.
    assert monitor.converged and steps == 4 + PATIENCE


def test_a_rising_loss_counts_as_settled():
    monitor, steps = _run([1.0, 1.1, 1.2, 1.3, 0.1], tol=1e-9)
    assert monitor.converged and steps == PATIENCE


def test_no_tol_never_stops_and_non_finite_losses_do_not_settle():
    monitor, steps = _run([1.0] * 10)
    assert steps == 9 and not monitor.converged
    monitor, steps = _run([1.0, math.nan, math.nan, math.nan, math.nan], tol=1e-4)
    assert steps == 4 and not monitor.converged


def test_the_callback_sees_every_iteration_and_may_stop():
    seen = []

    def callback(state):
        assert isinstance(state, TrainingState)
        seen.append((state.iteration, state.loss))
        return state.iteration == 3

    monitor, steps = _run([5.0, 4.0, 3.0, 2.0, 1.0], callback=callback)
    assert steps == 3 and monitor.stopped and not monitor.converged
    assert seen == [(1, 4.0), (2, 3.0), (3, 2.0)]


def test_a_callback_error_propagates():
    def callback(state):
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        _run([2.0, 1.0], callback=callback)


def test_replace_last():
    monitor, _ = _run([2.0, 1.0])
    monitor.replace_last(0.75)
    assert monitor.history == [0.75]
    empty = Monitor(1, None, None, False, started=0.0)
    empty.replace_last(3.0)
    assert empty.history == [3.0]
