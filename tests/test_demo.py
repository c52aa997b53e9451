# SPDX-License-Identifier: BSD-3-Clause
"""The demo (`latentspace._demo`) and its command line (``python -m latentspace``)."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from latentspace import _demo  # noqa: E402
from latentspace.cli import main  # noqa: E402

# Small and fast (about a second): the default training in a 16-dim space, a
# briefly trained MLP. Measured over seeds 0-3, every ordered pair of models
# then finds a same-digit top hit for at least 74% of the test items
# (untrained: at most 20%, chance about 10%) and the very image for at least
# 12% (untrained: at most 0.7%), so the margins below are wide.
SMALL = dict(dim=16, mlp_max_iter=30, latency_calls=20)


@pytest.fixture(scope="module")
def numbers():
    return _demo.run(seed=0, **SMALL)


def _pairs(retrieval):
    return [(a, b) for a in retrieval for b in retrieval[a]]


def test_run_reports_every_ordered_pair(numbers):
    names = list(_demo.MODELS)
    expected = sorted((a, b) for a in names for b in names if a != b)
    for stage in ("untrained", "trained"):
        assert sorted(_pairs(numbers["retrieval"][stage])) == expected
        for a, b in expected:
            scores = numbers["retrieval"][stage][a][b]
            assert set(scores) == {"top1", "top10", "class_top1"}
            assert all(0.0 <= v <= 1.0 for v in scores.values())
            assert scores["top1"] <= scores["top10"]
    data = numbers["data"]
    assert data["n_train"] + data["n_test"] == 1797
    assert numbers["chance"]["top1"] == pytest.approx(1 / data["n_test"])
    assert {n: m["input_dim"] for n, m in numbers["models"].items()} == {
        "pca": 24,
        "kernel": 100,
        "mlp": 64,
    }
    json.dumps(numbers)  # plain numbers only: `--json` can print them


def test_training_beats_untrained_space(numbers):
    training = numbers["training"]
    assert (training["solver"], training["objective"]) == ("cca", "whitened")
    assert training["final_loss"] < training["initial_loss"]
    assert list(training["regularization"]) == list(_demo.MODELS)
    chance = numbers["chance"]["class_top1"]
    for a, b in _pairs(numbers["retrieval"]["trained"]):
        trained = numbers["retrieval"]["trained"][a][b]
        untrained = numbers["retrieval"]["untrained"][a][b]
        assert trained["class_top1"] > untrained["class_top1"] + 0.3, (a, b)
        assert trained["class_top1"] > 3 * chance, (a, b)
        assert trained["top1"] > untrained["top1"] + 0.05, (a, b)


def test_the_reference_sgd_runs_on_the_raw_embeddings_with_a_stable_rate():
    numbers = _demo.run(seed=0, solver="sgd", n_epochs=3, learning_rate=1e-5,
                        **SMALL)
    training = numbers["training"]
    assert (training["solver"], training["n_epochs"]) == ("sgd", 3)
    assert training["final_loss"] < training["initial_loss"]
    text = _demo.format_report(numbers)
    assert "solver=sgd (solver='sgd', n_epochs=3, learning_rate=1e-05)" in text
    assert "3 epochs; reference loss per item" in text


def test_timings_are_reported(numbers):
    assert numbers["training"]["seconds"] > 0
    for info in numbers["models"].values():
        assert 0 < info["project_seconds"] < 0.01


def _assert_png(path):
    """``path`` is a complete PNG file (signature, IHDR first, IEND last)."""
    with open(path, "rb") as file:
        data = file.read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    assert data.endswith(b"IEND\xaeB`\x82")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


def test_run_saves_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    prefix = str(tmp_path / "demo")
    numbers = _demo.run(seed=0, plot=prefix, **SMALL)
    assert numbers["pictures"] == [f"{prefix}-loss.png", f"{prefix}-map.png"]
    for path in numbers["pictures"]:
        _assert_png(path)
    assert f"Pictures: {prefix}-loss.png" in _demo.format_report(numbers)
    json.dumps(numbers)


def test_no_pictures_unless_asked(numbers):
    assert numbers["pictures"] == []
    assert "Pictures" not in _demo.format_report(numbers)


def test_run_without_matplotlib_fails_before_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(_demo, "_run", lambda *args: pytest.fail("ran the demo"))
    with pytest.raises(ImportError, match="pip install matplotlib"):
        _demo.run(plot="unused", **SMALL)


def test_report_shows_the_table(numbers):
    text = _demo.format_report(numbers)
    assert "pca    -> kernel" in text
    assert "chance" in text and "untrained" in text
    assert "solver=cca (defaults)" in text and "ridge pca" in text
    assert all(np.isfinite(v) for v in numbers["chance"].values())


def test_cli_help_exits_zero():
    done = subprocess.run(
        [sys.executable, "-m", "latentspace", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "--seed" in done.stdout and "--solver" in done.stdout
    assert "--dim" in done.stdout


def test_cli_without_scikit_learn(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    assert main(["demo"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert 'pip install "latentspace[demo]"' in captured.err


@pytest.mark.parametrize(
    "argv", [["demo", "--epochs", "0"], ["demo", "--learning-rate", "-1"], []]
)
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cli_reports_divergence(capsys):
    # The MLP's raw features reach ||x||^2 = 113: 0.1 is ten times the stable rate.
    argv = ["demo", "--solver", "sgd", "--learning-rate", "0.1", "--epochs", "2",
            "--latency-calls", "1"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "diverged" in captured.err and captured.err.count("\n") == 1
    assert "try learning_rate=" in captured.err


def test_cli_saves_pictures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    prefix = tmp_path / "run"
    argv = ["demo", "--dim", "8", "--latency-calls", "1"]
    assert main([*argv, "--plot", str(prefix)]) == 0
    assert f"Pictures: {prefix}-loss.png, {prefix}-map.png" in capsys.readouterr().out
    _assert_png(f"{prefix}-loss.png")
    _assert_png(f"{prefix}-map.png")


def test_cli_pictures_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(_demo, "_run", lambda *args: pytest.fail("ran the demo"))
    assert main(["demo", "--plot", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "pip install matplotlib" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_cli_pictures_into_a_missing_directory(capsys, tmp_path):
    assert main(["demo", "--plot", str(tmp_path / "missing" / "run")]) == 2
    assert "no directory" in capsys.readouterr().err
