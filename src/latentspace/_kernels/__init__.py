# SPDX-License-Identifier: BSD-3-Clause
"""The compiled kernels: `affine` serves the maps of a trained space, `sgd`
trains with the reference optimiser and evaluates its loss; both cimport the
inline BLAS helpers of ``_blas.pxd``.

Every kernel assumes validated, C-contiguous arrays of one floating dtype with
matching, non-empty shapes that fit a BLAS ``int``; the Python layer guarantees
that. Kernels never raise, except that a training epoch lets a pending signal
(Ctrl-C) interrupt it.
"""
