# SPDX-License-Identifier: BSD-3-Clause
"""The command line, ``python -m latentspace`` (`latentspace.cli`).

Most tests call `main` in-process (fast); a few run the real command in a
subprocess, in a temporary folder, end to end.
"""

import errno
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from latentspace import LatentSpace
from latentspace._files import space_file
from latentspace.cli import main


def _aligned(n=40, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, 4))
    a = items @ rng.normal(size=(4, 6))
    b = items @ rng.normal(size=(4, 9))
    return a / np.sqrt((a**2).sum(1).mean()), b / np.sqrt((b**2).sum(1).mean())


@pytest.fixture
def files(tmp_path):
    a, b = _aligned()
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", b=b)
    np.savez(tmp_path / "both.npz", a=a, b=b)
    return tmp_path


@pytest.fixture
def trained(files, capsys):
    argv = [
        "train",
        str(files / "space.npz"),
        f"a={files / 'a.npy'}",
        f"b={files / 'b.npz'}",
        "--dim",
        "4",
        "--epochs",
        "5",
        "--solver",
        "sgd",
        "--quiet",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    return files


def _run(argv, cwd):
    return subprocess.run(
        [sys.executable, "-m", "latentspace", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=300,
    )


def _error(capsys, argv, code=2):
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err  # one line, no traceback
    assert "Traceback" not in captured.err
    return captured.err


# ---------------------------------------------------------------- end to end


def test_end_to_end_in_a_subprocess(files):
    done = _run(
        [
            "train",
            "space.npz",
            "a=a.npy",
            "b=both.npz:b",
            "--dim",
            "4",
            "--epochs",
            "20",
            "--learning-rate",
            "0.05",
        ],
        files,
    )
    assert done.returncode == 0, done.stderr
    assert "saved to space.npz" in done.stdout
    assert "training a 4-d space on 40 items" in done.stderr  # progress
    space = LatentSpace.load(files / "space.npz")
    assert space.models == {"a": 6, "b": 9} and space.dim == 4

    done = _run(
        [
            "search",
            "space.npz",
            "a=a.npy",
            "b=b.npz",
            "-k",
            "3",
            "-o",
            "hits.npz",
            "-q",
        ],
        files,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    with np.load(files / "hits.npz") as hits:
        a, b = _aligned()
        expected = space.search("a", a, "b", b, k=3)
        np.testing.assert_array_equal(hits["indices"], expected.indices)
        np.testing.assert_array_equal(hits["scores"], expected.scores)

    done = _run(["search", "space.npz", "a=a.npy", "b=missing.npy"], files)
    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert "no such file 'missing.npy'" in done.stderr


def test_help_is_for_newcomers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in (
        "train",
        "project",
        "translate",
        "search",
        "evaluate",
        "bench",
        "demo",
        "info",
    ):
        assert f"    {command}" in out
    assert "NAME=FILE" in out and "example" in out


@pytest.mark.parametrize(
    "command", ["train", "info", "project", "translate", "search", "evaluate", "bench"]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: python -m latentspace " + command in capsys.readouterr().out


# ---------------------------------------------------------------- commands


def test_train_records_the_configuration(trained, capsys):
    assert main(["info", str(trained / "space.npz")]) == 0
    out = capsys.readouterr().out
    assert "dim=4" in out and "input_dim=6" in out and "n_epochs=5" in out
    assert main(["info", str(trained / "space.npz"), "--json"]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["config"]["n_epochs"] == 5


def _train_argv(files, *options):
    return [
        "train",
        str(files / "space.npz"),
        f"a={files / 'a.npy'}",
        f"b={files / 'b.npz'}",
        "--dim",
        "4",
        *options,
    ]


def test_info_shows_the_options_of_the_solver(files, capsys):
    assert main(_train_argv(files, "--solver", "cca", "-q")) == 0
    assert main(["info", str(files / "space.npz")]) == 0
    shown = capsys.readouterr().out.split("trained with ")[1]
    assert "solver=cca" in shown and "regularization=" in shown
    for unused in ("learning_rate", "n_epochs", "batch_size", "init=", "progress"):
        assert unused not in shown
    assert main(_train_argv(files, "--solver", "sgd", "--epochs", "3", "-q")) == 0
    assert main(["info", str(files / "space.npz")]) == 0
    shown = capsys.readouterr().out.split("trained with ")[1]
    # (init: None, the solver's default, is not shown)
    assert "learning_rate=" in shown and "n_epochs=3" in shown
    assert "batch_size" not in shown and "regularization" not in shown
    assert main(["info", str(files / "space.npz"), "--json"]) == 0
    assert "batch_size" in json.loads(capsys.readouterr().out)["config"]


def test_closed_form_progress_counts_one_iteration(files, capsys):
    assert main(_train_argv(files, "--solver", "cca")) == 0
    err = capsys.readouterr().err
    assert "iteration 1/1," in err and "/100" not in err


def test_warnings_are_one_line_and_quiet_silences_them(files, capsys):
    argv = _train_argv(files, "--solver", "lbfgs", "--epochs", "2", "--tol", "1e-12")
    # Recorded: a warning main lets through (pytest would record it too, not
    # print it).
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")  # not pytest's "error"
        assert main(argv) == 0
        err = capsys.readouterr().err.splitlines()
        assert not any("Warning" in line or ".py:" in line for line in err)
        lines = [line for line in err if ": warning:" in line]
        assert lines == [
            "latentspace train: warning: solver='lbfgs' stopped after 2 "
            "iterations (n_epochs) before the loss settled to tol=1e-12; "
            "raise n_epochs or tol"
        ]
        assert main([*argv, "-q"]) == 0
        assert capsys.readouterr().err == ""
    assert escaped == []


def test_a_closed_pipe_ends_quietly(trained):
    argv = ["evaluate", str(trained / "space.npz"), f"a={trained / 'a.npy'}",
            f"b={trained / 'b.npz'}", "--json", "-q"]
    with subprocess.Popen(
        [sys.executable, "-m", "latentspace", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=trained,
    ) as process:
        process.stdout.close()  # as `| head` does once it has read enough
        err = process.stderr.read().decode()
        assert process.wait() == 141
    assert err == ""


def test_train_matches_the_library(trained):
    a, b = _aligned()
    space = LatentSpace(4, seed=42)
    space.register("a", 6)
    space.register("b", 9)
    space.train_projections({"a": a, "b": b}, n_epochs=5, solver="sgd")
    saved = LatentSpace.load(trained / "space.npz")
    for name in ("a", "b"):
        for x, y in zip(space.weights(name), saved.weights(name)):
            assert x.tobytes() == y.tobytes()


def test_train_continues_a_saved_space(trained, capsys):
    out = trained / "more.npz"
    argv = [
        "train",
        str(out),
        f"a={trained / 'a.npy'}",
        f"b={trained / 'b.npz'}",
        "--continue",
        str(trained / "space.npz"),
        "--epochs",
        "2",
        "-q",
    ]
    assert main(argv) == 0
    before = LatentSpace.load(trained / "space.npz")
    a, b = _aligned()
    before.train_projections({"a": a, "b": b}, n_epochs=2)
    after = LatentSpace.load(out)
    assert after.weights("a")[0].tobytes() == before.weights("a")[0].tobytes()


def test_train_adds_a_model_to_a_frozen_space(trained, capsys):
    rng = np.random.default_rng(3)
    a, b = _aligned()
    np.save(trained / "c.npy", a @ rng.normal(size=(6, 5)))
    out = trained / "grown.npz"
    argv = [
        "train", str(out), f"a={trained / 'a.npy'}", f"c={trained / 'c.npy'}",
        "--continue", str(trained / "space.npz"), "--freeze", "a",
        "--solver", "cca", "-q",
    ]
    assert main(argv) == 0
    before = LatentSpace.load(trained / "space.npz")
    grown = LatentSpace.load(out)
    for name in ("a", "b"):
        for x, y in zip(before.weights(name), grown.weights(name)):
            assert x.tobytes() == y.tobytes()
    expected = LatentSpace.load(trained / "space.npz")
    expected.register("c", 5)
    expected.train_projections(
        {"a": a, "c": np.load(trained / "c.npy")}, frozen=["a"], solver="cca"
    )
    assert grown.weights("c")[0].tobytes() == expected.weights("c")[0].tobytes()


def test_train_with_missing_views(files, capsys):
    a, b = _aligned()
    seen = np.ones(len(b), dtype=bool)
    seen[::3] = False
    b[~seen] = np.nan
    np.save(files / "b-missing.npy", b)
    np.save(files / "b-seen.npy", seen)
    argv = [
        "train", str(files / "space.npz"), f"a={files / 'a.npy'}",
        f"b={files / 'b-missing.npy'}", "--observed", f"b={files / 'b-seen.npy'}",
        "--solver", "cca", "--dim", "3", "-q",
    ]
    assert main(argv) == 0
    space = LatentSpace(3, seed=42)
    space.register("a", 6)
    space.register("b", 9)
    space.train_projections({"a": a, "b": b}, observed={"b": seen}, solver="cca")
    saved = LatentSpace.load(files / "space.npz")
    assert saved.weights("b")[0].tobytes() == space.weights("b")[0].tobytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        # The library checks the masks (names, dtype, shape).
        (["--observed", "z={dir}/seen.npy"], "observed names model 'z', which is not"),
        (["--observed", "a={dir}/nope.npy"], "--observed a: no such file"),
        (["--observed", "a={dir}/a.npy"], "observed['a'] must be a boolean array of "
                                           "shape (40,)"),
        (["--freeze", "a"], "--freeze keeps trained weights: use it with --continue"),
    ],
)
def test_bad_missing_view_and_freeze_options(files, capsys, extra, message):
    np.save(files / "seen.npy", np.ones(40, dtype=bool))
    argv = [
        "train", str(files / "space.npz"), f"a={files / 'a.npy'}",
        f"b={files / 'b.npz'}", "-q",
        *[e.format(dir=files) for e in extra],
    ]
    assert message in _error(capsys, argv)


def test_freeze_an_unknown_model(trained, capsys):
    argv = [
        "train", str(trained / "x.npz"), f"a={trained / 'a.npy'}",
        f"b={trained / 'b.npz'}", "--continue", str(trained / "space.npz"),
        "--freeze", "zz", "-q",
    ]
    assert "--freeze zz: " in _error(capsys, argv)


def test_project_and_translate(trained, capsys):
    space = LatentSpace.load(trained / "space.npz")
    a, _ = _aligned()
    out = trained / "latent.npy"
    assert (
        main(
            [
                "project",
                str(trained / "space.npz"),
                "a",
                str(trained / "a.npy"),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(out), space.project("a", a))
    out = trained / "as_b.npy"
    assert (
        main(
            [
                "translate",
                str(trained / "space.npz"),
                "a",
                "b",
                str(trained / "a.npy"),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(out), space.translate("a", "b", a))
    assert "translated 40 items" in capsys.readouterr().out


def test_search_prints_hits(trained, capsys):
    argv = [
        "search",
        str(trained / "space.npz"),
        f"a={trained / 'a.npy'}",
        f"b={trained / 'b.npz'}",
        "-k",
        "2",
        "--show",
        "3",
        "--method",
        "cosine",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("query 0: ") and len(lines) == 4
    assert "37 more queries" in lines[-1]
    assert "searching 40 queries" in captured.err
    argv += ["--reference", str(trained / "a.npy"), "--method", "csls", "-q"]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""


def test_evaluate_json(trained, capsys):
    argv = [
        "evaluate",
        str(trained / "space.npz"),
        f"a={trained / 'a.npy'}",
        f"b={trained / 'b.npz'}",
        "--json",
        "-q",
    ]
    assert main(argv) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert set(numbers["retrieval"]) == {"a -> b", "b -> a"}
    assert numbers["method"] == "csls" and numbers["n_items"] == 40


def test_evaluate_prints_a_table(trained, capsys):
    argv = [
        "evaluate",
        str(trained / "space.npz"),
        f"a={trained / 'a.npy'}",
        f"b={trained / 'b.npz'}",
        "-k",
        "1",
        "5",
        "-q",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "a -> b" in out and "top5" in out and "R^2" in out


def test_bench_is_quick_and_honest(capsys):
    assert main(["bench", "--size", "200", "--dim", "8", "--width", "16", "-q"]) == 0
    out = capsys.readouterr().out
    assert "indicative" in out and "benchmarks/bench_core.py" in out
    assert "search 200 x 200" in out


# ------------------------------------------------------------------ errors


def test_bad_files_are_one_line_errors(trained, capsys):
    space = str(trained / "space.npz")
    a, b = f"a={trained / 'a.npy'}", f"b={trained / 'b.npz'}"
    (trained / "junk.npy").write_bytes(b"not numpy at all")
    (trained / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    np.save(trained / "vector.npy", np.ones(6))
    np.save(trained / "text.npy", np.array([["x", "y"]]))
    np.save(trained / "short.npy", np.ones((10, 9)))
    cases = {
        ("info", str(trained / "a.npy")): "not an .npz",
        ("info", str(trained / "nothing.npz")): "no such space file",
        ("info", str(trained / "bad.npz")): "cannot load",
        ("search", space, f"a={trained / 'junk.npy'}", b): "not a readable NumPy",
        ("search", space, f"a={trained / 'vector.npy'}", b): "must be a 2-D array",
        ("search", space, f"a={trained / 'text.npy'}", b): "must hold real numbers",
        ("search", space, f"a={trained / 'both.npz'}", b): "holds 2 arrays",
        ("search", space, f"a={trained / 'both.npz'}:c", b): "has no array 'c'",
        ("search", space, f"c={trained / 'a.npy'}", b): "'c' is not registered",
        ("search", space, f"a={trained / 'b.npz'}", b): "must have shape",
        ("train", str(trained / "x.npz"), a): "at least two models",
        ("train", str(trained / "x.npz"), a, a): "given twice",
        (
            "train",
            str(trained / "x.npz"),
            a,
            f"b={trained / 'short.npy'}",
        ): "same number of rows",
        ("train", str(trained / "no" / "x.npz"), a, b): "no directory",
        ("evaluate", space, a, f"b={trained / 'short.npy'}"): "same number of rows",
        (
            "project",
            space,
            "a",
            str(trained / "b.npz"),
            "-o",
            str(trained / "o.npy"),
        ): "must have shape",
        (
            "project",
            space,
            "a",
            str(trained / "a.npy"),
            "-o",
            str(trained / "no" / "o.npy"),
        ): "no directory",
    }
    for argv, message in cases.items():
        err = _error(capsys, list(argv))
        assert message in err, (argv, err)
        assert err.startswith(f"latentspace {argv[0]}: error:"), err


def test_bad_arguments_show_usage(capsys):
    for argv in (
        ["train"],
        ["search", "s.npz"],
        ["train", "s.npz", "a=x", "--dim", "0"],
        ["search", "s.npz", "a=x", "b=y", "--method", "l2"],
        ["evaluate", "s.npz", "a=x", "-k", "zero"],
        ["nonsense"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "usage:" in capsys.readouterr().err


def test_model_without_file_shows_the_form(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "s.npz", "a=x.npy", "gallery.npy"])
    assert exc.value.code == 2
    assert "expected NAME=FILE" in capsys.readouterr().err


def test_divergence_exits_1(files, capsys):
    argv = [
        "train",
        str(files / "s.npz"),
        f"a={files / 'a.npy'}",
        f"b={files / 'b.npz'}",
        "--solver",
        "sgd",
        "--learning-rate",
        "50",
        "--epochs",
        "3",
        "-q",
    ]
    err = _error(capsys, argv, code=1)
    assert "diverged" in err
    assert not os.path.exists(files / "s.npz")


def test_invalid_training_option_is_a_usage_error(files, capsys):
    argv = [
        "train",
        str(files / "s.npz"),
        f"a={files / 'a.npy'}",
        f"b={files / 'b.npz'}",
        "--alignment-weight",
        "nan",
        "-q",
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    capsys.readouterr()


# ---------------------------------------------------------------- pictures


def test_train_and_evaluate_save_pictures(files, capsys):
    pytest.importorskip("matplotlib")
    argv = [
        "train",
        str(files / "s.npz"),
        f"a={files / 'a.npy'}",
        f"b={files / 'b.npz'}",
        "--dim",
        "4",
        "--epochs",
        "3",
        "-q",
        "--plot",
        str(files / "run"),
    ]
    assert main(argv) == 0
    assert "pictures:" in capsys.readouterr().out
    for name in ("run-loss.png", "run-map.png"):
        assert (files / name).read_bytes().startswith(b"\x89PNG")
    argv = [
        "evaluate",
        str(files / "s.npz"),
        f"a={files / 'a.npy'}",
        f"b={files / 'b.npz'}",
        "-q",
        "--plot",
        str(files / "test"),
    ]
    assert main(argv) == 0
    assert (files / "test-map.png").read_bytes().startswith(b"\x89PNG")


def test_pictures_without_matplotlib_fail_before_training(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    argv = [
        "train",
        str(files / "s.npz"),
        f"a={files / 'a.npy'}",
        f"b={files / 'b.npz'}",
        "--plot",
        str(files / "run"),
        "-q",
    ]
    err = _error(capsys, argv)
    assert "pip install matplotlib" in err
    assert not os.path.exists(files / "s.npz")


def test_signed_files_with_a_key_file(files, capsys):
    """--key-file signs what train and index write, and the commands that
    read those files need it (and refuse a wrong one) in one line."""
    key = files / "key.bin"
    key.write_bytes(bytes(range(32)))
    data = [f"a={files / 'a.npy'}", f"b={files / 'b.npz'}"]
    space, index = str(files / "signed.npz"), str(files / "signed.index")
    assert main(["train", space, *data, "--dim", "4", "-q", "--key-file", str(key)]) == 0
    assert LatentSpace.load(space, key=bytes(range(32))).models == {"a": 6, "b": 9}
    assert main(["project", space, "a", str(files / "a.npy"), "-o",
                 str(files / "z.npy"), "--key-file", str(key)]) == 0
    np.testing.assert_array_equal(
        np.load(files / "z.npy"),
        LatentSpace.load(space, key=bytes(range(32))).project("a", np.load(files / "a.npy")),
    )
    assert main(["info", space, "--key-file", str(key)]) == 0
    assert main(["index", space, f"b={files / 'b.npz'}", "-o", index, "-q",
                 "--key-file", str(key)]) == 0
    assert main(["query", index, f"a={files / 'a.npy'}", "--show", "1",
                 "--key-file", str(key)]) == 0
    capsys.readouterr()
    err = _error(capsys, ["project", space, "a", str(files / "a.npy"), "-o",
                          str(files / "z2.npy")])
    assert "signed with a key" in err
    err = _error(capsys, ["query", index, f"a={files / 'a.npy'}"])
    assert "signed with a key" in err
    wrong = files / "wrong.bin"
    wrong.write_bytes(b"w" * 32)
    err = _error(capsys, ["info", space, "--key-file", str(wrong)])
    assert "signature mismatch" in err
    (files / "empty.bin").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["info", space, "--key-file", str(files / "empty.bin")])
    assert exc.value.code == 2
    assert "is empty" in capsys.readouterr().err


# ------------------------------------------------------------------ reliability


@pytest.mark.parametrize(
    "option, message",
    [
        (["--dim", "7"], "--dim 7: .* is a 4-d space"),
        (["--dtype", "float32"], "--dtype float32: .* is a float64 space"),
        (["--seed", "3"], "--seed: .* its own random generator"),
    ],
)
def test_continue_refuses_options_the_saved_space_contradicts(trained, capsys,
                                                               option, message):
    argv = ["train", str(trained / "more.npz"), f"a={trained / 'a.npy'}",
            f"b={trained / 'b.npz'}", "--continue", str(trained / "space.npz"),
            *option]
    err = _error(capsys, argv)
    assert re.search(message, err), err
    assert not (trained / "more.npz").exists()
    # The saved space's own values are accepted.
    same = {"--dim": "4", "--dtype": "float64"}.get(option[0])
    if same is not None:
        assert main(argv[:-1] + [same, "-q"]) == 0


def test_a_full_disk_leaves_an_existing_output_as_it_was(trained, capsys,
                                                         monkeypatch):
    def full_disk(file, *args, **kwargs):
        file.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    monkeypatch.setattr(np, "savez", full_disk)
    space = str(trained / "space.npz")
    for output, argv in [
        ("latent.npy", ["project", space, "a", str(trained / "a.npy")]),
        ("hits.npz", ["search", space, f"a={trained / 'a.npy'}",
                      f"b={trained / 'b.npz'}", "-q"]),
    ]:
        (trained / output).write_bytes(b"the previous output")
        err = _error(capsys, [*argv, "-o", str(trained / output)])
        assert "No space left on device" in err
        assert (trained / output).read_bytes() == b"the previous output"
        assert not [f for f in os.listdir(trained) if f.endswith(".tmp")]


def test_an_input_member_that_is_not_npy_is_a_one_line_error(trained, capsys):
    import zipfile

    with zipfile.ZipFile(trained / "odd.npz", "w") as archive:
        archive.writestr("x.txt", b"not an array")
    err = _error(capsys, ["project", str(trained / "space.npz"), "a",
                          str(trained / "odd.npz"), "-o", str(trained / "o.npy")])
    assert "is not a NumPy array" in err


def test_out_of_memory_is_a_one_line_error(trained, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(LatentSpace, "project", exhausted)
    err = _error(capsys, ["project", str(trained / "space.npz"), "a",
                          str(trained / "a.npy"), "-o", str(trained / "o.npy")])
    assert "out of memory" in err


def test_info_calls_crafted_files_invalid(trained, capsys):
    """Files whose checksum matches but whose content is hostile: one line,
    exit 2, like any invalid file."""
    path = trained / "space.npz"
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays.pop("header").tobytes())
    crafted = {
        "rng": {"bit_generator": "MT19937", "state": {
            "key": {"__ndarray__": "<u4", "data": [1] * 624}, "pos": 10**8}},
        "config": [1, 2],
        "dim": 2**31,
    }
    for key, value in crafted.items():
        bad = json.loads(json.dumps(header))
        bad[key] = value
        names = list(space_file._expected_arrays(bad)) if key != "dim" else []
        bad["checksum"]["digest"] = space_file._checksum(bad, arrays, names)
        raw = np.frombuffer(json.dumps(bad).encode(), np.uint8)
        np.savez(trained / "crafted.npz", header=raw, **arrays)
        for command in (["info"], ["info", "--json"]):
            argv = [command[0], str(trained / "crafted.npz"), *command[1:]]
            err = _error(capsys, argv)
            assert "cannot load" in err, (key, err)
        argv = ["train", str(trained / "x.npz"), f"a={trained / 'a.npy'}",
                f"b={trained / 'b.npz'}", "--continue", str(trained / "crafted.npz")]
        assert "cannot load" in _error(capsys, argv)
    nested = np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8)
    np.savez(trained / "nested.npz", header=nested, **arrays)
    assert "not valid JSON" in _error(capsys, ["info", str(trained / "nested.npz")])


# ------------------------------------------------- migration: index and query


@pytest.fixture
def corpus(trained):
    a, b = _aligned(300, seed=3)
    np.save(trained / "corpus_b.npy", b.astype(np.float64))
    np.save(trained / "queries_a.npy", a[-50:])
    return trained


def test_index_then_query_equals_the_library(corpus, capsys):
    space = LatentSpace.load(corpus / "space.npz")
    gallery = np.load(corpus / "corpus_b.npy")
    queries = np.load(corpus / "queries_a.npy")
    argv = ["index", str(corpus / "space.npz"), f"b={corpus / 'corpus_b.npy'}",
            "-o", str(corpus / "corpus.index"), "--reference",
            f"a={corpus / 'a.npy'}", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "indexed 300 items of 'b'" in out and "CSLS references: a" in out
    argv = ["query", str(corpus / "corpus.index"), f"a={corpus / 'queries_a.npy'}",
            "-k", "4", "-o", str(corpus / "hits.npz"), "-q"]
    assert main(argv) == 0
    assert "top 4 of 300 items for 50 queries" in capsys.readouterr().out
    expected = space.index("b", gallery, references={"a": np.load(corpus / "a.npy")})
    want = expected.search("a", queries, k=4)
    with np.load(corpus / "hits.npz") as hits:
        np.testing.assert_array_equal(hits["indices"], want.indices)
        np.testing.assert_array_equal(hits["scores"], want.scores)
    # Printed: one line per query, 'row (score)'.
    assert main(argv[:-3] + ["--show", "2", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"query 0: {want.indices[0, 0]} (")
    assert lines[-1] == "... 48 more queries; use -o FILE.npz to save all"


def test_index_with_faiss_and_its_options(corpus, capsys):
    pytest.importorskip("faiss")
    argv = ["index", str(corpus / "space.npz"), f"b={corpus / 'corpus_b.npy'}",
            "-o", str(corpus / "corpus.index"), "--backend", "faiss", "--kind",
            "hnsw", "--option", "m=8", "--option", "ef_search=16", "-q"]
    assert main(argv) == 0
    assert "(faiss, hnsw)" in capsys.readouterr().out
    from latentspace import GalleryIndex

    index = GalleryIndex.load(corpus / "corpus.index")
    assert index.kind == "hnsw" and index.options["m"] == 8
    queries = np.load(corpus / "queries_a.npy")
    argv = ["query", str(corpus / "corpus.index"), f"a={corpus / 'queries_a.npy'}",
            "-k", "3", "--method", "cosine", "--ef-search", "300",
            "-o", str(corpus / "hits.npz"), "-q"]
    assert main(argv) == 0
    capsys.readouterr()
    want = index.search("a", queries, k=3, method="cosine", ef_search=300)
    with np.load(corpus / "hits.npz") as hits:
        np.testing.assert_array_equal(hits["indices"], want.indices)
    # CSLS without a reference: the library's message, one line.
    err = _error(capsys, argv[:5] + ["-q"])
    assert "needs a reference sample of 'a'" in err


def test_index_shows_progress(corpus, capsys):
    argv = ["index", str(corpus / "space.npz"), f"b={corpus / 'corpus_b.npy'}",
            "-o", str(corpus / "corpus.index")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "indexing 300 items of 'b' (exact, flat)" in err
    assert "300/300" in err  # tqdm's bar (or a progress line)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["index", "{space}", "c={a}", "-o", "{out}"], "'c' is not registered"),
        (["index", "{space}", "b={a}", "-o", "{out}"],
         "corpus for model 'b' must have shape (n, 9)"),
        (["index", "{space}", "b={b}", "-o", "{out}", "--option", "m=8"],
         "the exact backend takes no options"),
        (["index", "{space}", "b={b}", "-o", "{out}", "--backend", "faiss",
          "--kind", "ivf", "--option", "nlist=1000"], "nlist=1000 is more cells"),
        (["index", "{space}", "b={b}", "-o", "{dir}/missing/x.index"],
         "no directory"),
        # The library's messages:
        (["query", "{out}", "c={a}"], "model 'c' is not registered (registered: 'a', 'b')"),
        (["query", "{out}", "a={b}"],
         "queries for model 'a' must have shape (6,) or (n, 6)"),
        (["query", "{out}", "a={a}", "--nprobe", "3"],
         "--nprobe is for a FAISS index"),
        (["query", "{out}", "a={a}", "-k", "41"], "k=41 is more than the 40 items"),
        (["query", "{dir}/missing.index", "a={a}"], "no such index file"),
        (["query", "{space}", "a={a}"], "not a valid saved index"),
    ],
)
def test_index_and_query_errors(trained, capsys, argv, message):
    if "faiss" in argv:
        pytest.importorskip("faiss")
    out = trained / "corpus.index"
    assert main(["index", str(trained / "space.npz"), f"b={trained / 'b.npz'}",
                 "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    values = {"space": trained / "space.npz", "a": trained / "a.npy",
              "b": trained / "b.npz", "out": out, "dir": trained}
    argv = [part.format(**values) for part in argv] + ["-q"]
    assert message in _error(capsys, argv)


def test_bad_option_syntax(capsys):
    with pytest.raises(SystemExit):
        main(["index", "s.npz", "b=x.npy", "-o", "x.index", "--option", "m"])
    assert "expected KEY=INTEGER, got 'm'" in capsys.readouterr().err
