# SPDX-License-Identifier: BSD-3-Clause
"""Shared test setup: helper modules on ``sys.path``, hypothesis profiles and the
``--stress`` option.

pytest runs with ``--import-mode=importlib``, which does not put the test folder
on ``sys.path``; the oracle (`reference`) and the helpers (`support`) live here.

Hypothesis profiles (tests/test_fuzz.py):

- ``ci`` (the default): a few dozen examples per fuzzed function, seconds in all,
  derandomized (the same examples on every run and machine, drawn from a seed
  fixed per test) and without an example database, so that CI never fails on
  a fresh random example nor on one replayed from a local ``.hypothesis/``;
- ``fuzz``: 10,000 random examples per function, for a long run by hand
  (failures are saved to and replayed from the local example database)::

      python -m pytest tests/test_fuzz.py --hypothesis-profile=fuzz -p no:cacheprovider

  ``LATENTSPACE_FUZZ_EXAMPLES=N`` changes the count (for a time budget);
- ``fuzz-1k``: the same with 1,000 examples.

``--hypothesis-show-statistics`` prints the number of examples each test ran.

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
settings.register_profile(
    "ci", max_examples=30, derandomize=True, database=None, **_COMMON
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("LATENTSPACE_FUZZ_EXAMPLES", "10000")),
    **_COMMON,
)
settings.register_profile("fuzz-1k", max_examples=1_000, **_COMMON)
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
