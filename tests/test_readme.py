# SPDX-License-Identifier: BSD-3-Clause
"""The README's short tour runs as written, with its stated shapes, and aligns."""

import contextlib
import io
import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "README.md")


def _section_code(heading):
    """The first ```python block after ``heading`` in the README."""
    with open(README, encoding="utf-8") as file:
        text = file.read()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_short_tour_runs_verbatim_and_aligns():
    code = _section_code("## A short tour")
    namespace = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md (A short tour)", "exec"), namespace)
    space, result = namespace["space"], namespace["result"]
    assert result.solver == "cca"
    assert namespace["Z"].shape == (100, 64) and namespace["y"].shape == (5, 768)
    assert namespace["x"].shape == (768,) and namespace["z"].shape == (64,)
    # The held-out top-1 that the tour prints, and its loss claim.
    top1 = float(printed.getvalue().split()[-1])
    assert top1 == np.mean(namespace["hits"].indices[:, 0] == np.arange(500))
    assert top1 >= 0.99
    assert space.loss(namespace["data"], objective=result.objective) == result.final_loss
