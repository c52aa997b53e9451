# SPDX-License-Identifier: BSD-3-Clause
"""A user's ``mypy --strict`` sees the public API's types (mypy is in the
test extra; skipped without it)."""

import pathlib
import site
import textwrap

import pytest

import latentspace

USER = """
    import numpy as np
    from numpy.typing import NDArray

    from latentspace import LatentSpace, ProjectionConfig, SearchResult, metrics
    from latentspace.sklearn import SharedLatentSpace, Views, retrieval_scorer


    def main() -> float:
        rng = np.random.default_rng(0)
        space = LatentSpace(4, dtype="float32", seed=1)
        space.register("a", 6)
        space.register("b", 5)
        data = {"a": rng.normal(size=(50, 6)), "b": rng.normal(size=(50, 5))}
        result = space.train_projections(data, ProjectionConfig(solver="cca"))
        z: NDArray[np.floating] = space.project("a", data["a"])
        x: NDArray[np.floating] = space.translate("a", "b", data["a"])
        P, R = space.weights("a")
        hits: SearchResult = space.search("a", data["a"], "b", data["b"], k=3)
        index = space.index("b", data["b"]).add_reference("a", data["a"])
        indices: NDArray[np.int64] = index.search("a", data["a"][:2], k=2).indices
        evaluation = space.evaluate(data)
        r2: dict[str, float] = metrics.reconstruction_r2(space, data)
        ranks: NDArray[np.int64] = metrics.retrieval_ranks(
            space, "a", data["a"], "b", data["b"]
        )
        space.save("space.npz", config=result)
        models: dict[str, int] = LatentSpace.load("space.npz").models
        estimator = SharedLatentSpace(latent_dim=2).fit(Views([data["a"], data["b"]]))
        scorer = retrieval_scorer(k=1)
        return (
            result.final_loss + evaluation.mean("top1") + space.loss(data)
            + float(z.sum() + x.sum() + P.sum() + R.sum() + hits.scores.sum())
            + float(indices.sum() + ranks.sum()) + len(r2) + len(models)
            + estimator.score([data["a"], data["b"]]) + space.dim
            + scorer(estimator, [data["a"], data["b"]])
        )
"""


def _mypy(tmp_path, source):
    """``(report, exit status)`` of ``mypy --strict`` on ``source``, with the
    package's own modules checked as an installed package's are (their
    internal errors not reported). An editable install is an import hook that
    mypy does not follow: it is then given the source directory."""
    api = pytest.importorskip("mypy.api")
    user = tmp_path / "user.py"
    user.write_text(textwrap.dedent(source), encoding="utf-8")
    root = pathlib.Path(latentspace.__file__).parent.parent
    installed = any(root == pathlib.Path(path) for path in site.getsitepackages())
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = True\n"
        + ("" if installed else f"mypy_path = {root}\n")
        + "[mypy-latentspace.*]\nignore_errors = True\n",
        encoding="utf-8",
    )
    report, errors, status = api.run([
        "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
        str(user),
    ])
    return report + errors, status


def test_strict_mypy_accepts_typed_use_of_the_public_api(tmp_path):
    report, status = _mypy(tmp_path, USER)
    assert status == 0, report


def test_strict_mypy_sees_real_types(tmp_path):
    """Not Any: a result used as the wrong type is an error."""
    report, status = _mypy(tmp_path, """
        from latentspace import LatentSpace

        space = LatentSpace(4)
        name: str = space.project("a", [1.0, 2.0])
        count: str = space.dim
    """)
    assert status == 1
    assert report.count("Incompatible types in assignment") == 2, report
