# SPDX-License-Identifier: BSD-3-Clause
"""The training objectives as functions of second moments, with their gradients.

Both objectives are mean per-sample losses of aligned data, and both only see
the data through ``G = X.T @ X / n`` (``X`` the concatenated features, shifted
by the models' offsets; block ``G_ml`` pairs models ``m`` and ``l``). With
``Z_m = X_m P_m``:

**reference** (docs/maths.md §2): ``L = sum_m 1/2 E||z_m R_m - x_m||^2 + w/2 E||z_m - zbar||^2``.
Scaling ``P_m`` by ``eps`` and ``R_m`` by ``1 / eps`` keeps every
reconstruction and multiplies the alignment term by ``eps**2``: the loss has no
minimiser, and descending it shrinks the latents instead of aligning them.

**whitened** (the well-posed variant): the alignment is measured on whitened
latents ``u_m = z_m W_m``, ``W_m = (S_m + delta_m I)^(-1/2)`` with ``S_m =
P_m.T (G_mm + r_m I) P_m`` the (regularised) covariance of model ``m``'s
latents, and put in the units of the data by ``tau``, the mean over models of
``E||x_m||^2``::

    L = sum_m 1/2 E||z_m R_m - x_m||^2 + (w tau / 2) E||u_m - ubar||^2

``u_m`` does not change when ``P_m`` is scaled (or, at whitened weights,
multiplied by any positive-definite matrix), so no direction of the weights
lowers the alignment without aligning the models: for two models (and no
regularisation) its smallest value over rotations is ``(w tau / 2) (k -
sum_j rho_j)``, ``rho_j`` the canonical correlations of their latent
subspaces. ``r_m = regularization_m * trace(G_mm) / d_m`` is the ridge of the
closed form (`latentspace._training.cca`); ``delta_m`` is a jitter of ``sqrt(eps) *
trace(S_m) / k`` that keeps ``W_m`` finite when a model's latents are rank
deficient (``d_m < k``). A latent dimension on which the models disagree
costs as much as a sample's whole squared norm, so with ``w`` of order one
the optimum is near the closed-form CCA subspace, pulled towards directions
that reconstruct well (a larger ``w`` pulls less).

**Missing views.** If a sample is observed by only some models (the set
``S``), it counts for those models, about the mean (whitened) latent of those
models, and every model is whitened over the samples it observed. The sums
then need two second moments (`latentspace._training.statistics.Moments`): ``G`` with
block ``(m, l)`` ``E[o_m o_l x_m x_l']`` (``o_m`` whether model ``m`` observed
the sample, ``x`` zero where not), for the reconstructions and the within-model
terms, and the consensus ``C`` with blocks ``E[o_m o_l x_m x_l' / |S|]`` for
``E||sum_m o_m q_m||^2 / |S|``; for complete data ``C = G / M``.

Every evaluation costs ``O(D^2 k)`` for ``D`` the summed widths, whatever the
number of samples.
"""

import numpy as np
import scipy.linalg

from .statistics import ridge, slices

__all__ = ["MomentObjective", "sample_scale", "whitened_loss", "whitening"]


def _dot(a, b):
    """sum(a * b) in float64."""
    return float(np.dot(a.ravel().astype(np.float64), b.ravel().astype(np.float64)))


def whitening(S, dtype):
    """``W = (S + delta I)^(-1/2)`` and what its adjoint derivative needs.

    Returns ``W`` (in ``dtype``), and the eigendecomposition ``(lam, V)`` of
    ``S + delta I`` (float64) with ``delta = sqrt(eps) * trace(S) / k``. If
    ``S`` is zero (all latents zero), ``W`` is zero and ``lam`` infinite, which
    makes the derivative through ``W`` zero as well.
    """
    S = np.asarray(S, dtype=np.float64)
    S = (S + S.T) / 2
    k = len(S)
    delta = np.sqrt(np.finfo(dtype).eps) * max(np.trace(S), 0.0) / k
    if not delta > 0:
        return np.zeros((k, k), dtype), np.full(k, np.inf), np.eye(k)
    lam, V = scipy.linalg.eigh(S + delta * np.eye(k), check_finite=False)
    lam = np.maximum(lam, np.finfo(np.float64).tiny)
    W = (V / np.sqrt(lam)) @ V.T
    return W.astype(dtype), lam, V


def _inverse_sqrt_adjoint(lam, V, omega, dtype):
    """The gradient with respect to ``X`` of ``tr(omega.T @ X^(-1/2))``.

    Daleckii-Krein: with ``X = V diag(lam) V.T``, the derivative of
    ``f(X) = X^(-1/2)`` is ``V (F * (V.T E V)) V.T`` with ``F_ij = (f(l_i) -
    f(l_j)) / (l_i - l_j) = -1 / (s_i s_j (s_i + s_j))``, ``s = sqrt(lam)``;
    it is self-adjoint, and only the symmetric part of ``omega`` counts.
    """
    omega = np.asarray(omega, dtype=np.float64)
    omega = (omega + omega.T) / 2
    s = np.sqrt(lam)
    F = -1.0 / (s[:, None] * s[None, :] * (s[:, None] + s[None, :]))
    return V @ (F * (V.T @ omega @ V)) @ V.T


def sample_scale(moments, widths):
    """``tau``: the mean over models of ``E||x_m||^2`` over the samples each
    observed (trace of its observed second moment)."""
    return float(
        np.mean([np.trace(moments.observed(m, s)) for m, s in enumerate(slices(widths))])
    )


class MomentObjective:
    """One objective on fixed data, as a function of flat weights.

    Parameters
    ----------
    kind : {"reference", "whitened"}
    widths : sequence of int
    k : int
        Latent dimension.
    alignment_weight : float
    regularization : sequence of float
        Every model's relative ridge of the whitening (whitened objective
        only).
    scale : float
        ``tau`` of the whitened objective (ignored by the reference one).
    dtype : dtype
        Precision of the products with Gram matrices.
    frozen : sequence of bool, optional
        Models whose weights are constants: their gradients are zero.

    Notes
    -----
    Flat weights are ``concat(P_m.ravel() for m) + concat(R_m.ravel() for m)``,
    ``P_m`` (d_m, k) and ``R_m`` (k, d_m), as in the compiled core.
    """

    def __init__(self, kind, widths, k, alignment_weight, regularization, scale, dtype,
                 frozen=()):
        self.kind = kind
        self.widths = tuple(int(d) for d in widths)
        self.k = int(k)
        self.w = float(alignment_weight)
        self.regularization = tuple(float(r) for r in regularization)
        self.scale = float(scale)
        self.dtype = np.dtype(dtype)
        self.size = sum(self.widths) * self.k
        self.frozen = tuple(frozen) or (False,) * len(self.widths)

    def split(self, theta):
        """Views ``(Ps, Rs)`` of flat weights."""
        bounds = np.cumsum([0, *self.widths]) * self.k
        P = theta[: self.size]
        R = theta[self.size :]
        Ps = [P[a:b].reshape(-1, self.k) for a, b in zip(bounds, bounds[1:])]
        Rs = [R[a:b].reshape(self.k, -1) for a, b in zip(bounds, bounds[1:])]
        return Ps, Rs

    def join(self, Ps, Rs, dtype=None):
        """Flat weights of ``(Ps, Rs)``."""
        flat = np.concatenate([a.ravel() for a in (*Ps, *Rs)])
        return flat.astype(dtype or self.dtype, copy=False)

    def __call__(self, Ps, Rs, moments, norm=None, gradient=True):
        """The loss (and its gradient) for second moments ``moments``.

        Parameters
        ----------
        Ps, Rs : lists of ndarray
        moments : Moments
            Second moments of the (shifted) samples the loss averages over.
        norm : Moments, optional
            Second moments that define the whitening of the whitened objective
            (default ``moments``); minibatches pass the full data's here, so
            that the normaliser is exact and the batch gradient unbiased.
        gradient : bool

        Returns
        -------
        loss : float
        gPs, gRs : lists of ndarray (if ``gradient``)
        """
        dtype = self.dtype
        norm = moments if norm is None else norm
        gram = moments.gram
        cols = slices(self.widths)
        Ps = [np.asarray(P, dtype=dtype) for P in Ps]
        Rs = [np.asarray(R, dtype=dtype) for R in Rs]
        loss = 0.0
        gPs, gRs = [], []
        # Reconstruction: 1/2 E||x P R - x||^2
        #   = 1/2 [tr(G) - 2 tr(R G P) + tr(P.T G P R R.T)]
        GPs = []
        for s, P, R in zip(cols, Ps, Rs):
            G = gram[s, s]
            GP = G @ P  # G_mm P_m
            S = P.T @ GP
            RRt = R @ R.T
            loss += 0.5 * (float(np.trace(G)) - 2 * _dot(GP, R.T) + _dot(S, RRt))
            GPs.append(GP)
            if gradient:
                gRs.append(S @ R - GP.T)
                # G (P R R.T - R.T)
                gPs.append(GP @ RRt - G @ R.T)
        # Alignment on Q_m: P_m (reference) or P_m W_m (whitened), weight c.
        if self.kind == "reference":
            Qs, c, GQs = Ps, self.w, GPs
        else:
            c = self.w * self.scale
            Qs, GQs, eigs = [], [], []
            for m, (s, P, GP) in enumerate(zip(cols, Ps, GPs)):
                # whitened over the samples the model observed
                G = norm.observed(m, s)
                shift = ridge(G, self.regularization[m])
                same = norm is moments and norm.coverage[m] == 1
                GPn = GP if same else G @ P
                S = P.T @ GPn + shift * (P.T @ P)
                W, lam, V = whitening(S, dtype)
                Qs.append(P @ W)
                GQs.append(GP @ W)
                eigs.append((W, lam, V, GPn, shift))
        # E sum_m ||q_m - qbar||^2, qbar the mean over the models that
        # observed a sample, = sum_m tr(Q_m.T G_mm Q_m) - tr(Q.T C Q) for the
        # stacked Q and the consensus moments C (G / M for complete data)
        Q = np.concatenate(Qs, axis=0)
        Y = moments.consensus @ Q
        within = sum(_dot(Qm, GQm) for Qm, GQm in zip(Qs, GQs))
        loss += 0.5 * c * (within - _dot(Q, Y))
        if not gradient:
            return loss
        for m, (s, Qm, GQm) in enumerate(zip(cols, Qs, GQs)):
            # d/dQ_m = c (G_mm Q_m - (C Q)_m)
            gQ = c * (GQm - Y[s])
            if self.kind == "reference":
                gPs[m] += gQ
                continue
            W, lam, V, GPn, shift = eigs[m]
            P = Ps[m]
            gPs[m] += gQ @ W
            # through W = (S + delta I)^(-1/2), delta = sqrt(eps) tr(S) / k
            psi = _inverse_sqrt_adjoint(lam, V, P.T @ gQ, dtype)
            psi += (
                np.sqrt(np.finfo(dtype).eps) / self.k * np.trace(psi) * np.eye(self.k)
            )
            # through S = P.T (G + r I) P
            gPs[m] += 2 * ((GPn + shift * P) @ psi.astype(dtype))
        for m, frozen in enumerate(self.frozen):
            if frozen:
                gPs[m][...] = 0
                gRs[m][...] = 0
        return loss, gPs, gRs


def whitened_loss(stats, projections, reconstructions, alignment_weight,
                  regularization):
    """The whitened objective's mean per-sample loss of weights on data.

    Parameters
    ----------
    stats : Statistics
        Of the data less the models' offsets.
    projections, reconstructions : lists of ndarray
    alignment_weight : float
    regularization : "auto" or float
        As in `ProjectionConfig` (resolved with `Statistics.ridges`).

    Returns
    -------
    float
    """
    widths = stats.widths
    moments = stats.moments(np.zeros(sum(widths)))
    objective = MomentObjective(
        "whitened",
        widths,
        projections[0].shape[1],
        alignment_weight,
        stats.ridges(regularization),
        sample_scale(moments, widths),
        stats.gram.dtype,
    )
    return objective(projections, reconstructions, moments, gradient=False)
