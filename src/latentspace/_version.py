# SPDX-License-Identifier: BSD-3-Clause
"""The installed version (written only in meson.build)."""

from importlib.metadata import version

__all__ = ["__version__"]

__version__ = version("latentspace")
