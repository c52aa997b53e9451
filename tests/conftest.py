# SPDX-License-Identifier: BSD-3-Clause
"""Shared test setup: make the helper modules of this folder importable.

pytest runs with ``--import-mode=importlib``, which does not put the test folder
on ``sys.path``; the oracle (`reference`) and the helpers (`support`) live here.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
