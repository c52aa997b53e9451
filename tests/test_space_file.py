# SPDX-License-Identifier: BSD-3-Clause
"""Saving, loading and pickling a space (`LatentSpace.save`/`load`, `space_file`)."""

import copy
import io
import json
import os
import pickle
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import latentspace
from latentspace import LatentSpace, ProjectionConfig, SpaceFileError
from latentspace._files import archive as _archive, space_file
from latentspace._model import make_model

DTYPES = ["float64", "float32"]


def _trained_space(dtype="float64", offsets=False, seed=3):
    space = LatentSpace(6, dtype=dtype, seed=seed)
    space.register("text", 5)
    space.register("image", 7)
    space.register("audio", 4)
    rng = np.random.default_rng(0)
    data = {name: rng.normal(size=(30, d)) * 0.3 for name, d in space.models.items()}
    space.train_projections(data, n_epochs=2, solver="sgd")
    if offsets:  # give "image" an input offset, as centering solvers do
        P, R = (np.array(w) for w in space.weights("image"))
        mu = np.linspace(-1, 1, 7).astype(dtype)
        mu.flags.writeable = False
        models = dict(space._snapshot.models)
        models["image"] = make_model(P, R, mu)
        space._snapshot = space._snapshot._replace(models=models)
    return space


def _assert_identical(a, b):
    assert (a.dim, a.dtype, list(a.models.items())) == (
        b.dim,
        b.dtype,
        list(b.models.items()),
    )
    for name in a.models:
        for x, y in zip(a.weights(name), b.weights(name)):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.tobytes() == y.tobytes(), name
            assert not y.flags.writeable
        ox, oy = a.offset(name), b.offset(name)
        assert (ox is None) == (oy is None)
        if ox is not None:
            assert ox.tobytes() == oy.tobytes() and not oy.flags.writeable


def _assert_same_future(a, b):
    """Registering the same model next gives bit-identical weights."""
    a.register("next", 9)
    b.register("next", 9)
    for x, y in zip(a.weights("next"), b.weights("next")):
        assert x.tobytes() == y.tobytes()


@pytest.fixture
def saved(tmp_path):
    space = _trained_space(offsets=True)
    path = tmp_path / "space.npz"
    space.save(path)
    return space, path


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offsets", [False, True])
def test_round_trip_is_bit_exact(tmp_path, dtype, offsets):
    space = _trained_space(dtype, offsets)
    path = tmp_path / "s.npz"
    space.save(path)
    loaded = LatentSpace.load(path)
    _assert_identical(space, loaded)
    x = np.random.default_rng(1).normal(size=(3, 7)).astype(dtype)
    assert space.project("image", x).tobytes() == loaded.project("image", x).tobytes()
    _assert_same_future(space, loaded)


def test_round_trip_keeps_registration_order_and_odd_names(tmp_path):
    space = LatentSpace(3)
    names = ["zeta", "a/b\\c", "ünïcødé ✓", "model0.projection", "header", "x" * 300]
    for i, name in enumerate(names):
        space.register(name, i + 1)
    space.save(tmp_path / "s.npz")
    loaded = LatentSpace.load(str(tmp_path / "s.npz"))
    assert list(loaded.models) == names
    _assert_identical(space, loaded)


def test_empty_space_round_trips(tmp_path):
    space = LatentSpace(4, dtype="float32", seed=7)
    space.save(tmp_path / "s.npz")
    loaded = LatentSpace.load(tmp_path / "s.npz")
    _assert_identical(space, loaded)
    _assert_same_future(space, loaded)


def test_fresh_generator_state_continues(tmp_path):
    # Saved before any registration and after some: both continue exactly.
    space = LatentSpace(5, seed=11)
    space.save(tmp_path / "before.npz")
    space.register("a", 3)
    space.save(tmp_path / "after.npz")
    before, after = (
        LatentSpace.load(tmp_path / f) for f in ("before.npz", "after.npz")
    )
    before.register("a", 3)
    _assert_identical(space, before)
    _assert_same_future(space, after)


def test_file_is_a_plain_npz_with_a_json_header(saved):
    space, path = saved
    with np.load(path, allow_pickle=False) as archive:
        header = json.loads(archive["header"].tobytes())
        assert header["format"] == "latentspace"
        assert header["version"] == space_file.FORMAT_VERSION
        assert header["dim"] == space.dim and header["dtype"] == "float64"
        assert [m["name"] for m in header["models"]] == list(space.models)
        assert [m["offset"] for m in header["models"]] == [False, True, False]
        assert header["checksum"]["algorithm"] == "sha256"
        np.testing.assert_array_equal(archive["model1.offset"], space.offset("image"))
    assert space_file.read_header(path) == header


def test_config_is_recorded(tmp_path):
    space = _trained_space()
    config = ProjectionConfig(n_epochs=3, learning_rate=0.02)
    space.save(tmp_path / "s.npz", config=config)
    header = space_file.read_header(tmp_path / "s.npz")
    assert header["config"]["n_epochs"] == 3
    assert header["config"]["learning_rate"] == 0.02
    # A loaded space keeps it on the next save, until its weights change.
    loaded = LatentSpace.load(tmp_path / "s.npz")
    loaded.save(tmp_path / "again.npz")
    assert space_file.read_header(tmp_path / "again.npz")["config"] == header["config"]
    # Retraining replaces it with the new training's configuration.
    data = {n: np.ones((4, d)) * 0.1 for n, d in loaded.models.items()}
    loaded.train_projections(data, n_epochs=1, solver="sgd")
    loaded.save(tmp_path / "retrained.npz")
    assert space_file.read_header(tmp_path / "retrained.npz")["config"]["n_epochs"] == 1
    # An explicit config wins.
    loaded.save(tmp_path / "explicit.npz", config={"note": "by hand"})
    assert space_file.read_header(tmp_path / "explicit.npz")["config"] == {"note": "by hand"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_save_records_the_last_training(tmp_path, dtype):
    space = LatentSpace(3, dtype=dtype)
    space.register("a", 4)
    space.register("b", 5)
    space.save(tmp_path / "untrained.npz")
    assert space_file.read_header(tmp_path / "untrained.npz")["config"] is None
    rng = np.random.default_rng(1)
    data = {"a": rng.normal(size=(20, 4)), "b": rng.normal(size=(20, 5))}
    result = space.train_projections(
        data, n_epochs=2, learning_rate=0.005, callback=lambda state: False
    , solver="sgd")
    space.save(tmp_path / "trained.npz")
    config = space_file.read_header(tmp_path / "trained.npz")["config"]
    assert config == space_file.config_record(result.config)
    assert config["n_epochs"] == 2 and config["learning_rate"] == 0.005
    assert config["solver"] == "sgd" and config["callback"] is None
    # The record travels through load, save and pickle unchanged.
    loaded = LatentSpace.load(tmp_path / "trained.npz")
    loaded.save(tmp_path / "again.npz")
    assert space_file.read_header(tmp_path / "again.npz")["config"] == config
    pickle.loads(pickle.dumps(space)).save(tmp_path / "pickled.npz")
    assert space_file.read_header(tmp_path / "pickled.npz")["config"] == config
    # A failed training keeps the record of the weights the space still has.
    with pytest.raises(ValueError):
        space.train_projections({"a": data["a"], "b": data["b"][:3]}, n_epochs=7, solver="sgd")
    space.save(tmp_path / "failed.npz")
    assert space_file.read_header(tmp_path / "failed.npz")["config"] == config
    # A newly registered model was not trained with it: no record.
    space.register("c", 2)
    space.save(tmp_path / "registered.npz")
    assert space_file.read_header(tmp_path / "registered.npz")["config"] is None


def test_config_with_unserialisable_values():
    record = space_file.config_record({"callback": print, "tol": float("nan"), "n": 2})
    json.dumps(record)
    assert record["n"] == 2 and record["tol"] == "nan"
    assert record["callback"] is None
    with pytest.raises(TypeError, match="config must be"):
        space_file.config_record(3)


def test_save_overwrites_and_keeps_mode(tmp_path):
    path = tmp_path / "s.npz"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    _trained_space().save(path)
    assert LatentSpace.load(path).models
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["s.npz"]


# ------------------------------------------------------------------ corruption


def _refused(path, match=None):
    with pytest.raises(SpaceFileError, match=match) as info:
        LatentSpace.load(path)
    assert isinstance(info.value, ValueError)
    assert os.fspath(path) in str(info.value)
    return str(info.value)


def _members(path):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return json.loads(arrays.pop("header").tobytes()), arrays


def _rewrite(path, header, arrays, *, checksum=False):
    """Write a (tampered) file whose zip is valid; optionally re-sign it."""
    if checksum:
        names = list(space_file._expected_arrays(header))
        header["checksum"]["digest"] = space_file._checksum(header, arrays, names)
    raw = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, header=raw, **arrays)


@pytest.mark.parametrize("keep", [0, 1, 10, 100, 0.25, 0.5, 0.9, -22, -1])
def test_truncated_file_is_refused(saved, tmp_path, keep):
    _, path = saved
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    bad = tmp_path / "cut.npz"
    bad.write_bytes(data[:cut])
    _refused(bad)


def _zip_structure(data):
    """Positions of the zip's own bytes: local headers, central directory, end."""
    positions = set()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        start_of_directory = archive.start_dir
    for info in infos:
        start = info.header_offset
        names, extra = (
            int.from_bytes(data[start + i : start + i + 2], "little") for i in (26, 28)
        )
        positions.update(range(start, start + 30 + names + extra))
    positions.update(range(start_of_directory, len(data)))
    return positions


def test_flipped_byte_anywhere_never_loads_a_different_space(saved, tmp_path):
    # Every byte of the arrays and the header is covered by the checksum (and
    # the zip's CRC); a few bytes of zip metadata (timestamps, zip64 extra
    # fields) are not content. So a flipped byte is refused, or loads the
    # very same space: never a different one, never another exception.
    # Tried: every 3rd byte of the zip's structure (headers, directory), every
    # 17th byte of the file (about 600 loads).
    space, path = saved
    data = path.read_bytes()
    structure = sorted(_zip_structure(data))[::3]
    positions = sorted(set(structure) | set(range(0, len(data), 17)))
    bad = tmp_path / "flipped.npz"
    refused = 0
    for position in positions:
        flipped = bytearray(data)
        flipped[position] ^= 0x40
        bad.write_bytes(bytes(flipped))
        try:
            loaded = LatentSpace.load(bad)
        except SpaceFileError:
            refused += 1
        else:
            _assert_identical(space, loaded)
    assert refused > 0.5 * len(positions), refused


def test_flipped_array_byte_with_valid_zip_is_refused(saved, tmp_path):
    _, path = saved
    header, arrays = _members(path)
    P = arrays["model0.projection"].copy()
    P.reshape(-1).view(np.uint8)[5] ^= 1
    arrays["model0.projection"] = P
    _rewrite(tmp_path / "bad.npz", header, arrays)
    _refused(tmp_path / "bad.npz", "checksum")


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h.update(dim=h["dim"] + 1),
        lambda h: h.update(dtype="float32"),
        lambda h: h["models"][0].update(name="renamed"),
        lambda h: h["models"].reverse(),
        lambda h: h["models"][1].update(offset=False),
        lambda h: h["rng"]["state"].update(state=1),
        lambda h: h.update(config={"n_epochs": 5}),
        lambda h: h.update(library_version="9.9"),
        lambda h: h["checksum"].update(digest="0" * 64),
    ],
    ids=["dim", "dtype", "name", "order", "offset", "rng", "config", "lib", "digest"],
)
def test_edited_header_is_refused(saved, tmp_path, edit):
    _, path = saved
    header, arrays = _members(path)
    edit(header)
    _rewrite(tmp_path / "bad.npz", header, arrays)
    _refused(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: h.pop("dim"), "lacks dim"),
        (lambda h: h.pop("checksum"), "lacks checksum"),
        (lambda h: h.update(dim=0), "invalid dim"),
        (lambda h: h.update(dim=True), "invalid dim"),
        (lambda h: h.update(dtype="int8"), "unsupported dtype"),
        (lambda h: h.update(models={}), "not a list"),
        (lambda h: h["models"][0].update(name=""), "model entry 0"),
        (lambda h: h["models"][2].update(input_dim="4"), "model entry 2"),
        (lambda h: h["models"][1].update(name="text"), "appears twice"),
        (lambda h: h.update(format="other"), "not a latentspace file"),
        (lambda h: h.update(checksum="abc"), "checksum entry"),
        (lambda h: h.update(rng={"bit_generator": "Evil"}), "random generator"),
    ],
)
def test_malformed_but_signed_header_is_refused(saved, tmp_path, edit, match):
    # Even a header re-signed after editing is refused if it makes no sense.
    _, path = saved
    header, arrays = _members(path)
    edit(header)
    try:
        _rewrite(tmp_path / "bad.npz", header, arrays, checksum=True)
    except (KeyError, TypeError, AttributeError):
        _rewrite(tmp_path / "bad.npz", header, arrays)
    _refused(tmp_path / "bad.npz", match)


def test_header_that_is_not_json_is_refused(saved, tmp_path):
    _, path = saved
    _, arrays = _members(path)
    raw = np.frombuffer(b'{"format": "latentspace", "vers', dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", header=raw, **arrays)
    _refused(tmp_path / "bad.npz", "not valid JSON")
    np.savez(tmp_path / "bad2.npz", header=np.array([1.5, 2.0]), **arrays)
    _refused(tmp_path / "bad2.npz", "malformed header")


@pytest.mark.parametrize("version", [0, 2, 999, "1", None])
def test_wrong_version_is_refused(saved, tmp_path, version):
    _, path = saved
    header, arrays = _members(path)
    header["version"] = version
    _rewrite(tmp_path / "bad.npz", header, arrays, checksum=True)
    message = _refused(tmp_path / "bad.npz", "version")
    if version in (2, 999):
        assert "newer latentspace" in message and "upgrade" in message


def test_missing_model_arrays_are_refused(saved, tmp_path):
    _, path = saved
    header, arrays = _members(path)
    del arrays["model2.reconstruction"]
    _rewrite(tmp_path / "a.npz", header, arrays)
    _refused(tmp_path / "a.npz", "'model2.reconstruction' is missing")
    # A model dropped from header and arrays alike: the checksum catches it.
    header, arrays = _members(path)
    header["models"].pop()
    del arrays["model2.projection"], arrays["model2.reconstruction"]
    _rewrite(tmp_path / "b.npz", header, arrays)
    _refused(tmp_path / "b.npz", "checksum")


def test_extra_or_reshaped_arrays_are_refused(saved, tmp_path):
    _, path = saved
    header, arrays = _members(path)
    _rewrite(tmp_path / "a.npz", header, {**arrays, "model9.offset": np.zeros(3)})
    _refused(tmp_path / "a.npz", "unexpected array 'model9.offset'")
    header, arrays = _members(path)
    arrays["model0.projection"] = arrays["model0.projection"].reshape(-1)
    _rewrite(tmp_path / "b.npz", header, arrays)
    _refused(tmp_path / "b.npz", "shape")
    header, arrays = _members(path)
    arrays["model0.projection"] = arrays["model0.projection"].astype(">f8")
    _rewrite(tmp_path / "c.npz", header, arrays)
    _refused(tmp_path / "c.npz", "dtype")


def test_non_finite_weights_are_refused_even_if_signed(saved, tmp_path):
    _, path = saved
    header, arrays = _members(path)
    arrays["model1.offset"] = arrays["model1.offset"].copy()
    arrays["model1.offset"][2] = np.nan
    _rewrite(tmp_path / "bad.npz", header, arrays, checksum=True)
    _refused(tmp_path / "bad.npz", "NaN")


def test_foreign_npz_is_refused(tmp_path):
    np.savez(tmp_path / "foreign.npz", x=np.arange(3), y=np.ones(2))
    _refused(tmp_path / "foreign.npz", "without a latentspace header")
    np.savez(tmp_path / "header.npz", header=np.frombuffer(b"[1, 2]", np.uint8))
    _refused(tmp_path / "header.npz", "not a latentspace file")


def test_pickled_object_arrays_are_never_unpickled(tmp_path, saved):
    _, path = saved
    header, arrays = _members(path)
    arrays["model0.projection"] = np.array([object()], dtype=object)
    _rewrite(tmp_path / "bad.npz", header, arrays)
    _refused(tmp_path / "bad.npz", "dtype object")


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, world\n", b"PK", b"\x93NUMPY", b"\x80\x04\x95", bytes(range(256))],
    ids=["empty", "text", "zip-magic", "npy-magic", "pickle", "binary"],
)
def test_not_a_zip_is_refused(tmp_path, content):
    (tmp_path / "bad.npz").write_bytes(content)
    _refused(tmp_path / "bad.npz")


def test_plain_npy_is_refused(tmp_path):
    np.save(tmp_path / "array.npy", np.ones((3, 3)))
    _refused(tmp_path / "array.npy", "not an .npz")


@pytest.mark.parametrize("reader", [LatentSpace.load, space_file.read_header])
def test_file_descriptor_is_not_a_path(saved, reader):
    # Found by fuzzing: open() took an int for a descriptor, read it and
    # closed it (it closed pytest's capture descriptor).
    _, path = saved
    descriptor = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TypeError, match="int"):
            reader(descriptor)
        os.fstat(descriptor)  # still open
    finally:
        os.close(descriptor)
    for value in (True, 3.5, None, ["s.npz"]):
        with pytest.raises(TypeError):
            reader(value)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        LatentSpace.load(tmp_path / "nothing.npz")


# --------------------------------------------------------------- failed saves


def _other_space():
    space = LatentSpace(6, seed=99)
    space.register("other", 3)
    return space


def test_failure_mid_write_leaves_the_existing_file(saved, monkeypatch):
    _, path = saved
    before = path.read_bytes()

    def broken(file, members):
        file.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(space_file, "write_npz", broken)
    with pytest.raises(OSError, match="disk full"):
        _other_space().save(path)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failure_at_commit_leaves_the_existing_file(saved, monkeypatch, step):
    _, path = saved
    before = path.read_bytes()

    def broken(*args):
        raise OSError(f"{step} failed")

    monkeypatch.setattr(space_file.os, step, broken)
    with pytest.raises(OSError, match=f"{step} failed"):
        _other_space().save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


class _FailingFile:
    """A binary file whose ``fail_at``-th write raises ``error``."""

    def __init__(self, file, fail_at, error):
        self._file, self._fail_at, self._error, self._writes = file, fail_at, error, 0

    def write(self, data):
        self._writes += 1
        if self._writes == self._fail_at:
            self._file.write(bytes(data)[: len(data) // 2])  # a partial write
            raise self._error("write failed")
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)


_SAVE_STEPS = ["open", "write-1", "write-3", "fsync", "stat", "chmod", "replace"]


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
@pytest.mark.parametrize("step", _SAVE_STEPS)
def test_failure_at_every_step_of_save(saved, monkeypatch, step, error):
    """Whatever step of `save` fails (creating the temporary file, any write,
    fsync, copying the mode, the rename), with an OSError or Ctrl-C: the
    existing file is untouched, no temporary file is left, the space is as it
    was and a later save works."""
    space, path = saved
    os.chmod(path, 0o640)  # the mode is copied only onto an existing file
    before = path.read_bytes()
    other = _other_space()
    weights = [w.tobytes() for w in other.weights("other")]
    if step.startswith("write"):
        fail_at = int(step.split("-")[1])
        original = space_file.write_npz
        monkeypatch.setattr(
            space_file,
            "write_npz",
            lambda file, members: original(_FailingFile(file, fail_at, error), members),
        )
    else:
        function = getattr(space_file.os, step)
        calls = []

        def failing(*args, **kwargs):
            calls.append(args)
            if len(calls) == 1:  # the first call of save's step
                raise error(f"{step} failed")
            return function(*args, **kwargs)

        monkeypatch.setattr(space_file.os, step, failing)
    if step in ("stat", "chmod") and error is OSError:
        # Copying the mode is best effort: the save goes through.
        other.save(path)
        assert LatentSpace.load(path).models == {"other": 3}
        assert os.listdir(path.parent) == [path.name]
        return
    with pytest.raises(error, match="failed"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]
    assert [w.tobytes() for w in other.weights("other")] == weights
    other.save(path)
    assert LatentSpace.load(path).models == {"other": 3}


def test_interrupt_mid_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "new.npz"

    def interrupted(file, members):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(space_file, "write_npz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _other_space().save(path)
    assert os.listdir(tmp_path) == []


def test_save_into_missing_or_unwritable_directory(saved, tmp_path):
    _, path = saved
    with pytest.raises(FileNotFoundError):
        _other_space().save(tmp_path / "no-such-dir" / "s.npz")
    # A directory in the way of the target: the rename fails, nothing changes.
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(OSError):
        _other_space().save(tmp_path / "dir.npz")
    assert sorted(os.listdir(tmp_path)) == ["dir.npz", "space.npz"]
    if os.geteuid() != 0:  # root writes anywhere
        os.chmod(tmp_path, 0o500)
        try:
            with pytest.raises(PermissionError):
                _other_space().save(path)
        finally:
            os.chmod(tmp_path, 0o700)
    assert LatentSpace.load(path).models == {"text": 5, "image": 7, "audio": 4}


# ----------------------------------------------------------------- pickling


@pytest.mark.parametrize("dtype", DTYPES)
def test_pickle_round_trip(dtype):
    space = _trained_space(dtype, offsets=True)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        clone = pickle.loads(pickle.dumps(space, protocol=protocol))
        _assert_identical(space, clone)
        assert clone._lock is not space._lock
        assert isinstance(clone._lock, type(threading.Lock()))
    _assert_same_future(space, clone)


def test_copies_are_independent():
    space = _trained_space()
    deep, shallow = copy.deepcopy(space), copy.copy(space)
    _assert_identical(space, deep)
    _assert_identical(space, shallow)
    space.register("only-original", 3)
    assert "only-original" not in deep.models and "only-original" not in shallow.models
    deep.register("x", 3)
    shallow.register("x", 3)
    assert deep.weights("x")[0].tobytes() == shallow.weights("x")[0].tobytes()


def test_unpickled_space_trains_and_saves(tmp_path):
    space = pickle.loads(pickle.dumps(_trained_space()))
    data = {n: np.full((5, d), 0.1) for n, d in space.models.items()}
    space.train_projections(data, n_epochs=1, solver="sgd")
    space.save(tmp_path / "s.npz")
    _assert_identical(space, LatentSpace.load(tmp_path / "s.npz"))


def test_unpickling_another_version_is_refused():
    state = _trained_space().__getstate__()
    state["header"]["version"] = 2
    space = LatentSpace.__new__(LatentSpace)
    with pytest.raises(ValueError, match="format version 2"):
        space.__setstate__(state)


# ------------------------------------------------------------------ threads


def test_concurrent_saves_and_registrations(tmp_path):
    space = _trained_space()
    stop = threading.Event()

    def register():
        i = 0
        while not stop.is_set() and i < 200:
            space.register(f"extra{i}", 2)
            i += 1

    def save(i):
        path = tmp_path / f"s{i}.npz"
        space.save(path)
        return LatentSpace.load(path)

    writer = threading.Thread(target=register)
    writer.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            loaded = list(pool.map(save, range(8)))
    finally:
        stop.set()
        writer.join()
    for result in loaded:
        names = list(result.models)
        assert names[:3] == ["text", "image", "audio"]
        for name in names:
            for x, y in zip(space.weights(name), result.weights(name)):
                assert x.tobytes() == y.tobytes()
        # Each file is one consistent moment: the loaded copy registers the
        # next model exactly as the original did right after that moment.
        n = len(names) - 3
        if n < len(space.models) - 3:
            result.register(f"extra{n}", 2)
            assert (
                result.weights(f"extra{n}")[0].tobytes()
                == space.weights(f"extra{n}")[0].tobytes()
            )


@pytest.mark.parametrize("key", [None, b"secret"])
def test_save_into_a_binary_file_object(tmp_path, key):
    space = _trained_space(offsets=True)
    buffer = io.BytesIO()
    space.save(buffer, key=key)
    (tmp_path / "s.npz").write_bytes(buffer.getvalue())
    loaded = LatentSpace.load(tmp_path / "s.npz", key=key)
    _assert_identical(space, loaded)
    with open(tmp_path / "t.npz", "wb") as file:
        space.save(file)
    _assert_identical(space, LatentSpace.load(tmp_path / "t.npz"))
    with open(tmp_path / "u.npz", "w") as text, pytest.raises(TypeError, match="binary"):
        space.save(text)


def test_zip_members_are_npy(saved):
    _, path = saved
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert names[0] == "header.npy"
    assert set(names) == {
        "header.npy",
        "model0.projection.npy",
        "model0.reconstruction.npy",
        "model1.projection.npy",
        "model1.reconstruction.npy",
        "model1.offset.npy",
        "model2.projection.npy",
        "model2.reconstruction.npy",
    }


# ------------------------------------------------------ crafted (hostile) files
#
# Files that anyone can write, with a checksum that matches (SHA-256 is not a
# secret): loading one never crashes, never reads or allocates more than the
# file holds, and never raises anything but SpaceFileError.


def _resigned(path, tmp_path, edit, name="crafted.npz"):
    """A copy of the saved space at ``path`` with ``edit(header)`` applied and
    a matching checksum."""
    header, arrays = _members(path)
    edit(header)
    crafted = tmp_path / name
    _rewrite(crafted, header, arrays, checksum=True)
    return crafted


def _set(*keys_and_value):
    """An edit that sets ``header[k1][k2]... = value``."""
    *keys, value = keys_and_value

    def edit(header):
        target = header
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


_U64_ARRAY = {"__ndarray__": "<u8", "data": [1, 2, 3, 4]}

# Generator states that NumPy would take and misuse (read outside a buffer,
# or raise OverflowError / TypeError), each in an otherwise valid file.
BAD_RNG_STATES = {
    "mt19937-pos-huge": {"bit_generator": "MT19937", "state": {
        "key": {"__ndarray__": "<u4", "data": [5] * 624}, "pos": 10**8}},
    "mt19937-pos-700": {"bit_generator": "MT19937", "state": {
        "key": {"__ndarray__": "<u4", "data": [5] * 624}, "pos": 700}},
    "mt19937-pos-negative": {"bit_generator": "MT19937", "state": {
        "key": {"__ndarray__": "<u4", "data": [5] * 624}, "pos": -10**8}},
    "mt19937-short-key": {"bit_generator": "MT19937", "state": {
        "key": {"__ndarray__": "<u4", "data": [5] * 623}, "pos": 3}},
    "mt19937-key-overflow": {"bit_generator": "MT19937", "state": {
        "key": {"__ndarray__": "<u4", "data": [2**32] * 624}, "pos": 3}},
    "mt19937-key-float": {"bit_generator": "MT19937", "state": {
        "key": {"__ndarray__": "<f8", "data": [0.5] * 624}, "pos": 3}},
    "philox-buffer-pos-negative": {"bit_generator": "Philox", "state": {
        "counter": _U64_ARRAY, "key": {"__ndarray__": "<u8", "data": [1, 2]}},
        "buffer": _U64_ARRAY, "buffer_pos": -10**8, "has_uint32": 0, "uinteger": 0},
    "philox-buffer-pos-5": {"bit_generator": "Philox", "state": {
        "counter": _U64_ARRAY, "key": {"__ndarray__": "<u8", "data": [1, 2]}},
        "buffer": _U64_ARRAY, "buffer_pos": 5, "has_uint32": 0, "uinteger": 0},
    "philox-counter-overflow": {"bit_generator": "Philox", "state": {
        "counter": {"__ndarray__": "<u8", "data": [2**64, 0, 0, 0]},
        "key": {"__ndarray__": "<u8", "data": [1, 2]}},
        "buffer": _U64_ARRAY, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0},
    "pcg64-state-2**128": {"bit_generator": "PCG64", "state": {
        "state": 2**128, "inc": 1}, "has_uint32": 0, "uinteger": 0},
    "pcg64-state-negative": {"bit_generator": "PCG64", "state": {
        "state": -1, "inc": 1}, "has_uint32": 0, "uinteger": 0},
    "pcg64-state-string": {"bit_generator": "PCG64", "state": {
        "state": "1", "inc": 1}, "has_uint32": 0, "uinteger": 0},
    "pcg64-has-uint32-2": {"bit_generator": "PCG64", "state": {
        "state": 1, "inc": 1}, "has_uint32": 2, "uinteger": 0},
    "pcg64-uinteger-bool": {"bit_generator": "PCG64", "state": {
        "state": 1, "inc": 1}, "has_uint32": 0, "uinteger": True},
    "pcg64-extra-key": {"bit_generator": "PCG64", "state": {
        "state": 1, "inc": 1}, "has_uint32": 0, "uinteger": 0, "more": 1},
    "pcg64-missing-key": {"bit_generator": "PCG64", "state": {"state": 1},
                          "has_uint32": 0, "uinteger": 0},
    "sfc64-state-list": {"bit_generator": "SFC64", "state": {"state": [1, 2, 3, 4]},
                         "has_uint32": 0, "uinteger": 0},
    "unknown-generator": {"bit_generator": "RandomState", "state": {}},
    "not-a-mapping": [1, 2, 3],
    "null": None,
}


@pytest.mark.parametrize("state", list(BAD_RNG_STATES))
def test_crafted_generator_states_are_refused(saved, tmp_path, state):
    _, path = saved
    crafted = _resigned(path, tmp_path, _set("rng", BAD_RNG_STATES[state]))
    _refused(crafted, "random generator state")
    with pytest.raises(SpaceFileError, match="random generator state"):
        space_file.read_header(crafted)  # what `info` shows: not valid either


@pytest.mark.parametrize(
    "bit_generator", [np.random.MT19937, np.random.Philox, np.random.SFC64,
                      np.random.PCG64DXSM, np.random.PCG64]
)
def test_states_of_every_supported_generator_round_trip(tmp_path, bit_generator):
    # Earlier versions took any generator as seed and saved its state.
    space = _trained_space()
    rng = np.random.Generator(bit_generator(7))
    rng.random(3)  # a state with a position inside the buffers
    space._snapshot = space._snapshot._replace(rng=rng)
    space.save(tmp_path / "s.npz")
    loaded = LatentSpace.load(tmp_path / "s.npz")
    _assert_identical(space, loaded)
    _assert_same_future(space, loaded)


@pytest.mark.parametrize(
    "edit, match",
    [
        (_set("dim", 2**31), "invalid dim"),
        (_set("dim", 2**31 - 1), "bytes of weights"),  # 8 GiB declared
        (lambda h: [h.update(models=[]), h.update(dim=2**31)], "invalid dim"),
        (_set("models", 0, "input_dim", 2**40), "model entry 0"),
        (_set("dim", 1.5), "invalid dim"),
        (_set("config", [1, 2]), "config is not a mapping"),
        (_set("config", "fast"), "config is not a mapping"),
        (_set("library_version", 3), "library_version"),
        (_set("checksum", "algorithm", "md5"), "checksum entry"),
        (_set("version", True), "version"),
        (_set("models", 0, "name", 7), "model entry 0"),
    ],
)
def test_crafted_headers_are_refused(saved, tmp_path, edit, match):
    _, path = saved
    _refused(_resigned(path, tmp_path, edit), match)


def _zip(path, members, compression=zipfile.ZIP_STORED):
    """A zip of ``{name: bytes}``."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _raw_members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_member_that_is_not_npy_is_refused(saved, tmp_path):
    _, path = saved
    members = _raw_members(path)
    _zip(tmp_path / "a.npz", {**members, "notes.txt": b"hello"})
    _refused(tmp_path / "a.npz", "unexpected array 'notes.txt'")
    members["model0.projection.npy"] = b"not an npy file at all"
    _zip(tmp_path / "b.npz", members)
    _refused(tmp_path / "b.npz", "'model0.projection'")
    _zip(tmp_path / "c.npz", {"header.npy": b"\x93NUMPY garbage"})
    _refused(tmp_path / "c.npz", "malformed header")


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
def test_compressed_members_are_refused_before_decompressing(saved, tmp_path,
                                                             compression):
    _, path = saved
    members = _raw_members(path)
    _zip(tmp_path / "z.npz", members, compression)
    _refused(tmp_path / "z.npz", "compressed")


def test_a_member_declaring_more_data_is_refused_before_reading(saved, tmp_path):
    """A compression bomb: a member of a few KB that declares 300 million
    float64 (2.4 GB) is refused before any of it is inflated, whether the
    header declares it too or not."""
    import tracemalloc

    space, path = saved
    members = _raw_members(path)
    big = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    big["shape"] = (300_000_000,)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, big)
    data = header.getvalue() + bytes(1 << 20)  # bzip2 makes this a few bytes
    tracemalloc.start()
    try:
        # A bzip2 member, under a name the header does not declare, then
        # under one it does...
        for name, match in [("model9.projection.npy", "unexpected array"),
                            ("model0.projection.npy", "compressed")]:
            with zipfile.ZipFile(tmp_path / "a.npz", "w") as archive:
                for member, content in members.items():
                    if member != name:
                        archive.writestr(member, content)
                archive.writestr(name, data, compress_type=zipfile.ZIP_BZIP2)
            assert os.path.getsize(tmp_path / "a.npz") < 10_000
            _refused(tmp_path / "a.npz", match)
        # ... and a header that declares it.
        header_json, arrays = _members(path)
        header_json["models"][0]["input_dim"] = 300_000_000 // space.dim
        crafted = tmp_path / "b.npz"
        _rewrite(crafted, header_json, arrays, checksum=False)
        _refused(crafted, "bytes of weights")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_member_sizes_must_match_their_npy_headers(saved, tmp_path):
    _, path = saved
    members = _raw_members(path)
    P = np.frombuffer(members["model0.projection.npy"][128:], "<f8")
    # Same bytes, another shape, then Fortran order, then a longer member.
    members["model0.projection.npy"] = _npy(P.reshape(-1))
    _zip(tmp_path / "a.npz", members)
    _refused(tmp_path / "a.npz", "shape")
    members = _raw_members(path)
    header, arrays = _members(path)
    members["model0.projection.npy"] = _npy(np.asfortranarray(
        arrays["model0.projection"]))
    _zip(tmp_path / "b.npz", members)
    _refused(tmp_path / "b.npz", "model0.projection")
    members = _raw_members(path)
    members["model0.projection.npy"] += b"\0" * 8
    _zip(tmp_path / "c.npz", members)
    _refused(tmp_path / "c.npz", "model0.projection")


def test_duplicate_members_are_refused(saved, tmp_path):
    _, path = saved
    members = _raw_members(path)
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
            archive.writestr("model0.projection.npy", members["model0.projection.npy"])
    _refused(tmp_path / "d.npz", "appears twice")


@pytest.mark.parametrize(
    "text, match",
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"format": "latentspace", "version": 1' + "0" * 5000 + "}",
         "not valid JSON"),
        ('{"format": "latentspace", "version": 1' + "0" * 40 + "}",
         "not valid JSON"),
        ('{"format": "latentspace", "version": NaN}', "not valid JSON"),
        ('{"format": "latentspace", "dim": Infinity}', "not valid JSON"),
        ('{"format": "latentspace", "version": 1, "x": "\\ud800"}', "lacks"),
    ],
    ids=["nested", "digits", "41-digits", "nan", "infinity", "surrogate"],
)
def test_hostile_json_is_refused(saved, tmp_path, text, match):
    _, path = saved
    _, arrays = _members(path)
    np.savez(tmp_path / "j.npz", header=np.frombuffer(text.encode(), np.uint8),
             **arrays)
    _refused(tmp_path / "j.npz", match)


def test_a_huge_header_member_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(_archive, "MAX_HEADER_BYTES", 1000)
    np.savez(tmp_path / "h.npz", header=np.zeros(5000, np.uint8))
    _refused(tmp_path / "h.npz", "malformed header")


def test_a_huge_file_is_refused_from_its_first_bytes(tmp_path):
    import tracemalloc

    path = tmp_path / "zeros.npz"
    with open(path, "wb") as file:
        file.truncate(4 << 30)  # sparse: 4 GiB of zeros that take no disk
    tracemalloc.start()
    try:
        _refused(path, "not an .npz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("reader", [LatentSpace.load, space_file.read_header])
def test_special_files_are_refused_without_reading(tmp_path, reader):
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    outcome = []
    thread = threading.Thread(
        target=lambda: outcome.append(pytest.raises(SpaceFileError, reader, fifo)),
        daemon=True,
    )
    thread.start()
    thread.join(30)
    if thread.is_alive():  # unblock it before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert "not a regular file" in str(outcome[0].value)
    with pytest.raises(SpaceFileError, match="a directory"):
        reader(tmp_path)
    if os.path.exists("/dev/zero"):
        with pytest.raises(SpaceFileError, match="not a regular file"):
            reader("/dev/zero")


# ------------------------------------------------------------------ signatures


def test_a_signed_file_loads_only_with_its_key(saved, tmp_path):
    space, _ = saved
    key = os.urandom(32)
    path = tmp_path / "signed.npz"
    space.save(path, key=key)
    header = space_file.read_header(path, key=key)
    assert header["checksum"]["algorithm"] == "hmac-sha256"
    _assert_identical(space, LatentSpace.load(path, key=key))
    _refused(path, "signed with a key")
    with pytest.raises(SpaceFileError, match="signature mismatch"):
        LatentSpace.load(path, key=key[:-1] + bytes([key[-1] ^ 1]))
    # Anyone can re-sign an edit with a plain checksum: not with the key.
    unsigned = _resigned(path, tmp_path, _set("checksum", "algorithm", "sha256"))
    with pytest.raises(SpaceFileError, match="not signed with a key"):
        LatentSpace.load(unsigned, key=key)
    assert LatentSpace.load(unsigned).models == space.models
    # An edit re-signed with another key.
    header, arrays = _members(path)
    header["dim"] += 0
    names = list(space_file._expected_arrays(header))
    header["checksum"]["digest"] = space_file._checksum(header, arrays, names, b"other")
    _rewrite(tmp_path / "other.npz", header, arrays)
    with pytest.raises(SpaceFileError, match="signature mismatch"):
        LatentSpace.load(tmp_path / "other.npz", key=key)


@pytest.mark.parametrize("key, exc", [("text", TypeError), (b"", ValueError),
                                      (3, TypeError)])
def test_bad_keys_are_refused(saved, tmp_path, key, exc):
    space, path = saved
    with pytest.raises(exc, match="key"):
        space.save(tmp_path / "s.npz", key=key)
    with pytest.raises(exc, match="key"):
        LatentSpace.load(path, key=key)
    assert not (tmp_path / "s.npz").exists()


# ---------------------------------------------------------------- save paths


@pytest.mark.parametrize("length", [200, 237, 238, 250, 255])
def test_save_to_any_legal_file_name(tmp_path, length):
    space = _trained_space()
    path = tmp_path / ("s" * (length - 4) + ".npz")
    space.save(path)
    _assert_identical(space, LatentSpace.load(path))
    space.save(path)  # over an existing file
    assert os.listdir(tmp_path) == [path.name]


def test_save_and_load_bytes_paths(tmp_path):
    space = _trained_space()
    path = os.fsencode(tmp_path / "s.npz")
    space.save(path)
    _assert_identical(space, LatentSpace.load(path))
    assert space_file.read_header(path)["dim"] == space.dim


def test_save_into_a_missing_directory_names_the_directory(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError) as info:
        _other_space().save(missing / "s.npz")
    assert info.value.filename == str(missing)
    assert ".tmp" not in str(info.value)
    assert "no such directory" in str(info.value)


def test_ctrl_c_at_any_line_of_save(tmp_path):
    """Whichever line of `save` (or of the zip and .npy writers it calls)
    Ctrl-C interrupts: the exception is the KeyboardInterrupt, the target is
    the old file or the complete new one, no temporary file and no file
    descriptor are left behind. Every line of `space_file` and of the modules it
    writes with (`_archive`, `_rng_state`), every 10th of zipfile and numpy's
    .npy writer."""
    import gc
    import sys

    from support import LineInterrupter

    space = _trained_space(offsets=True)
    path = tmp_path / "s.npz"
    _other_space().save(path)
    old = path.read_bytes()
    interrupter = LineInterrupter(
        os.path.dirname(latentspace.__file__), zipfile.__file__, np.lib.format.__file__
    )
    files = interrupter.lines(lambda: space.save(path))
    descriptors = "/proc/self/fd"
    opened = len(os.listdir(descriptors)) if sys.platform == "linux" else None
    replaced = 0
    for at in interrupter.chosen(files, ("space_file.py", "archive.py", "rng_state.py"), 10):
        path.write_bytes(old)
        exc = interrupter.run(lambda: space.save(path), at)
        assert isinstance(exc, KeyboardInterrupt) or exc is None, (at, exc)
        assert os.listdir(tmp_path) == ["s.npz"], (at, files[at - 1])
        if path.read_bytes() != old:
            _assert_identical(space, LatentSpace.load(path))
            replaced += 1
    assert replaced >= 1
    del exc  # and the frames of its traceback
    gc.collect()
    if opened is not None:
        assert len(os.listdir(descriptors)) == opened


def test_json_nested_deeper_than_a_header_is_refused(saved, tmp_path):
    """Found by a probe of nesting depths: a header nested a little less than
    Python's recursion limit parsed, then could not be written back to check
    its checksum (RecursionError). Whatever the depth, a SpaceFileError."""
    import sys

    _, path = saved
    header, arrays = _members(path)
    prefix = json.dumps(header)[:-1] + ', "more": {"x": '
    limit = sys.getrecursionlimit()
    for depth in [40, *range(limit - 120, limit + 10)]:
        text = prefix + "[" * depth + "]" * depth + "}}"
        np.savez(tmp_path / "deep.npz", header=np.frombuffer(text.encode(), np.uint8),
                 **arrays)
        _refused(tmp_path / "deep.npz", "nests more than 32 levels|not valid JSON")
