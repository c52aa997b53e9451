# SPDX-License-Identifier: BSD-3-Clause
"""The reference objective (docs/maths.md §2), evaluated by the compiled kernel."""

import numpy as np

from .._kernels.sgd import loss_sum

__all__ = ["ReferenceLoss", "mean_loss"]

# Rows per chunk, so that scratch stays small however many samples there are.
_CHUNK = 256


class ReferenceLoss:
    """The mean per-sample reference loss ``L / n`` on fixed aligned samples.

    ``L = sum_i sum_m 1/2 ||x_mi @ P_m @ R_m - x_mi||^2 + w/2 ||z_mi - z_i||^2``
    with ``z_mi = x_mi @ P_m`` and ``z_i`` the mean of ``z_mi`` over models
    (over the models that observed sample ``i``, which alone count, if some
    did not).

    Parameters
    ----------
    X : (n, D) ndarray
        C-contiguous samples, model ``m`` in ``widths[m]`` consecutive columns,
        zero where a model did not observe a sample.
    widths : (M,) ndarray of intp
    k : int
        Latent dimension.
    observed : (n, M) bool ndarray, optional
        Which model observed which sample (default: all of them).
    """

    def __init__(self, X, widths, k, observed=None):
        self.X = X
        self.widths = widths
        self.observed = None if observed is None else observed.view(np.uint8)
        chunk = min(len(X), _CHUNK)
        self._Z = np.empty((len(widths), chunk, k), X.dtype)
        self._Xhat = np.empty((chunk, widths.max()), X.dtype)

    def __call__(self, P, R, alignment_weight):
        """The loss for flat concatenations ``P`` and ``R`` of the weights."""
        total = loss_sum(
            self.X, self.widths, self.observed, P, R, alignment_weight, self._Z,
            self._Xhat,
        )
        return total / len(self.X)


def mean_loss(blocks, projections, reconstructions, alignment_weight, observed=None):
    """`ReferenceLoss` for aligned ``(n, d_m)`` blocks (zero where ``observed``,
    an (n, M) bool array, says a model did not observe a sample) and per-model
    weights."""
    widths = np.array([X.shape[1] for X in blocks], dtype=np.intp)
    objective = ReferenceLoss(np.concatenate(blocks, axis=1), widths,
                          projections[0].shape[1], observed)
    return objective(
        np.concatenate([P.ravel() for P in projections]),
        np.concatenate([R.ravel() for R in reconstructions]),
        alignment_weight,
    )
