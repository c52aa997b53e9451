# SPDX-License-Identifier: BSD-3-Clause
"""Files: space files (`space_file`), index files (`index_file`), and what both share
(`archive`: atomic, untrusted-input `.npz` archives; `rng_state`).
"""
