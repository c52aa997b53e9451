# SPDX-License-Identifier: BSD-3-Clause
"""``python -m latentspace``: the command line (`latentspace.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
