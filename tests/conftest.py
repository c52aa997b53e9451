# SPDX-License-Identifier: BSD-3-Clause
"""Shared test setup: helper modules on ``sys.path``, hypothesis profiles and the
``--stress`` option.

pytest runs with ``--import-mode=importlib``, which does not put the test folder
on ``sys.path``; the oracle (`reference`) and the helpers (`support`) live here.

Hypothesis profiles (tests/test_fuzz.py):

- ``ci`` (the default): a few dozen examples per fuzzed function, seconds in all;
- ``fuzz``: at least 10,000 examples per function, for a long run by hand::

      python -m pytest tests/test_fuzz.py --hypothesis-profile=fuzz

``LATENTSPACE_STRESS=long`` or ``--stress=long`` makes tests/test_stress.py run
for minutes instead of seconds.
"""

import os
import sys
from datetime import timedelta

from hypothesis import HealthCheck, settings

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# No deadline that wall time on a shared 2-core machine could miss by chance;
# a generous one still catches a call that runs away (checked on a re-run).
_COMMON = {
    "deadline": timedelta(seconds=20),
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=30, **_COMMON)
settings.register_profile("fuzz", max_examples=10_000, **_COMMON)
# --hypothesis-profile on the command line (hypothesis' pytest plugin) wins.
settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption(
        "--stress",
        choices=["short", "long"],
        default=os.environ.get("LATENTSPACE_STRESS", "short"),
        help="length of tests/test_stress.py: short (default, seconds) or long "
        "(minutes); also LATENTSPACE_STRESS",
    )
