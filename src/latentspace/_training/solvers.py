# SPDX-License-Identifier: BSD-3-Clause
"""The solver table.

`SOLVERS` maps each name that `ProjectionConfig.solver` accepts to its
`Solver`: what it needs, its defaults and the function that runs it. Adding a
solver is a module with its run function and an entry here (and its tests).
"""

from collections.abc import Callable
from typing import NamedTuple

from . import cca, gradient, sgd

__all__ = ["SOLVERS", "Solver"]


class Solver(NamedTuple):
    """One solver of `SOLVERS`.

    Attributes
    ----------
    needs : {"samples", "statistics"}
        "samples": it visits the samples (they are loaded; a stream of chunks
        is refused); "statistics": it works on the one-pass sufficient
        statistics.
    statistics : bool
        Whether it needs the statistics too when the samples are not centred.
    shifts_batches : bool
        Whether it subtracts the new offsets from its batches of samples
        itself (else the samples it gets carry them).
    closed_form : bool
        Whether its start is the solution (one iteration, no learning rate).
    objective : {"reference", "whitened"}
        What ``objective=None`` means.
    tol : float or None
        What ``tol=None`` means.
    init : {"current", "cca"}
        What ``init=None`` means (without frozen models).
    ignores : frozenset of str
        `ProjectionConfig` fields that do not change its result.
    run : callable
        ``run(problem, Ps, Rs, monitor) -> Run`` (`latentspace._monitor.Run`)
        on a `latentspace._training.fitting.Problem`, from copies of the starting
        weights; raises `TrainingDivergedError` if it diverges.
    """

    needs: str
    statistics: bool
    shifts_batches: bool
    closed_form: bool
    objective: str
    tol: float | None
    init: str
    ignores: frozenset
    run: Callable

    @property
    def streams(self):
        """Whether it trains on a stream of chunks of rows (read once)."""
        return self.needs == "statistics"


# The table: ProjectionConfig.solver accepts exactly these names.
SOLVERS = {
    "cca": Solver(
        "statistics", True, False, True, "whitened", None, "cca",
        frozenset({"learning_rate", "n_epochs", "batch_size", "init", "tol"}),
        cca.run,
    ),
    "sgd": Solver(
        "samples", False, False, False, "reference", None, "current",
        frozenset({"batch_size"}), sgd.run,
    ),
    "minibatch": Solver(
        "samples", True, True, False, "whitened", None, "cca", frozenset(),
        gradient.run_minibatch,
    ),
    "lbfgs": Solver(
        "statistics", True, False, False, "whitened", 1e-8, "cca",
        frozenset({"learning_rate", "batch_size"}), gradient.run_lbfgs,
    ),
}
