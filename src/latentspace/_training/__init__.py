# SPDX-License-Identifier: BSD-3-Clause
"""Training: configuration, data sources, statistics, objectives, and one module per solver
(described by the table in `solvers`); `fitting` runs a training call.
"""
