# SPDX-License-Identifier: BSD-3-Clause
"""Saving, loading and pickling a `LatentSpace`.

A saved space is one ``.npz`` archive (a zip of ``.npy`` members, readable
with ``numpy.load(path, allow_pickle=False)``):

``header``
    A ``uint8`` array holding UTF-8 JSON: ``format`` ("latentspace"),
    ``version`` (`FORMAT_VERSION`), ``library_version``, ``dtype``, ``dim``,
    ``models`` (in registration order: ``name``, ``input_dim``, ``offset``
    (whether the model has an input offset)), ``rng`` (the state of the
    space's random generator, so that a loaded space registers exactly as the
    original would), ``config`` (the training configuration recorded with
    the space, or null) and ``checksum``.
``model<i>.projection``, ``model<i>.reconstruction``, ``model<i>.offset``
    The arrays of the ``i``-th model: ``P`` (``d x k``), ``R`` (``k x d``)
    and, if the model has one, the offset ``mu`` (``d``), in the space's
    dtype (little-endian).

``checksum`` is the SHA-256 of the canonical JSON of the header without the
checksum, followed by every array's name, dtype, shape and bytes in header
order: any edit of the header or of an array is detected, also one that
keeps the zip's own CRC-32 valid.

Writing goes to a temporary file in the target's directory, which is flushed,
fsynced and renamed over the target (``os.replace``, atomic on POSIX and
Windows): a crash or an error mid-save never leaves a partial file at the
target, and an existing file there stays as it was unless the save succeeds.
"""

import dataclasses
import hashlib
import io
import json
import math
import os
import secrets

import numpy as np

from ._validation import check_dtype

__all__ = ["FORMAT_VERSION", "SpaceFileError", "load", "read_header", "save"]

FORMAT = "latentspace"
FORMAT_VERSION = 1
_HEADER = "header"
_ARRAYS = ("projection", "reconstruction", "offset")
# Bit generators whose state we can restore, by the name their state records.
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
# Largest header we read (the JSON of a space with many thousand models).
_MAX_HEADER_BYTES = 64 << 20


class SpaceFileError(ValueError):
    """A file is not a valid saved latent space.

    Raised by `LatentSpace.load` for a file that is truncated, corrupted,
    edited, of an unsupported format version or not a latentspace file at
    all; nothing is loaded.
    """


# --------------------------------------------------------------------- state


def _array_key(index, what):
    return f"model{index}.{what}"


def _jsonable(value):
    """``value`` if JSON can hold it faithfully, else its repr; None for a
    callable (a callback says nothing about the weights)."""
    if value is None or callable(value):
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return repr(value)


def config_record(config):
    """The JSON record of a training configuration (None, a ProjectionConfig,
    a TrainingResult or a dict)."""
    if config is None:
        return None
    from ._config import ProjectionConfig, TrainingResult

    if isinstance(config, TrainingResult):
        config = config.config
    if isinstance(config, ProjectionConfig):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if not isinstance(config, dict):
        raise TypeError(
            "config must be a ProjectionConfig, a TrainingResult, a dict or None, "
            f"got {type(config).__name__}"
        )
    return {str(key): _jsonable(value) for key, value in config.items()}


def _encode_rng_state(state):
    """A bit generator's state with arrays turned into JSON lists."""
    if isinstance(state, dict):
        return {key: _encode_rng_state(value) for key, value in state.items()}
    if isinstance(state, np.ndarray):
        return {"__ndarray__": state.dtype.str, "data": state.tolist()}
    if isinstance(state, np.generic):
        return state.item()
    return state


def _decode_rng_state(state):
    if isinstance(state, dict):
        if set(state) == {"__ndarray__", "data"}:
            return np.array(state["data"], dtype=np.dtype(state["__ndarray__"]))
        return {key: _decode_rng_state(value) for key, value in state.items()}
    return state


def make_generator(state):
    """A new `numpy.random.Generator` in the (JSON-decoded) ``state``."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unsupported random bit generator {name!r}")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = _decode_rng_state(state)
    return np.random.Generator(bit_generator)


def space_state(space):
    """The header (without checksum) and the named arrays of ``space``.

    The snapshot and the random state are read together under the space's
    lock, so they belong to the same moment.
    """
    with space._lock:
        snapshot = space._snapshot
        rng_state = space._rng.bit_generator.state
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "library_version": _library_version(),
        "dtype": space.dtype.name,
        "dim": snapshot.dim,
        "models": [],
        "rng": _encode_rng_state(rng_state),
        "config": _recorded_config(space, snapshot),
    }
    arrays = {}
    little = space.dtype.newbyteorder("<")
    for index, (name, model) in enumerate(snapshot.models.items()):
        header["models"].append(
            {
                "name": name,
                "input_dim": model.input_dim,
                "offset": model.offset is not None,
            }
        )
        values = (model.projection, model.reconstruction, model.offset)
        for what, value in zip(_ARRAYS, values):
            if value is not None:
                arrays[_array_key(index, what)] = value.astype(little, copy=False)
    return header, arrays


def _recorded_config(space, snapshot):
    """The config recorded with ``space`` (by its last training, or by the
    file it was loaded from) if its models are still those it was recorded
    with."""
    recorded = getattr(space, "_saved_config", None)
    if recorded is None or recorded[0] is not snapshot:
        return None
    return recorded[1]


def _library_version():
    from . import __version__

    return __version__


def _expected_arrays(header):
    """Array name -> expected shape, in header order."""
    dim, expected = header["dim"], {}
    for index, model in enumerate(header["models"]):
        d = model["input_dim"]
        expected[_array_key(index, "projection")] = (d, dim)
        expected[_array_key(index, "reconstruction")] = (dim, d)
        if model["offset"]:
            expected[_array_key(index, "offset")] = (d,)
    return expected


def _checksum(header, arrays, names):
    """SHA-256 of the canonical header (without checksum) and the arrays."""
    content = {key: value for key, value in header.items() if key != "checksum"}
    digest = hashlib.sha256(_canonical(content))
    for name in names:
        array = arrays[name]
        digest.update(
            f"\n{name}:{array.dtype.str}:{list(array.shape)}\n".encode("ascii")
        )
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _canonical(value):
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def restore(space, header, arrays):
    """Install a validated ``header``/``arrays`` state into ``space``.

    ``space`` may be bare (made by ``object.__new__`` when unpickling): it is
    initialised by its constructor first, which makes its lock and whatever
    else a new space has, then its snapshot and generator are replaced.
    """
    from ._space import LatentSpace, _make_model, _Snapshot

    dtype = check_dtype(header["dtype"])
    LatentSpace.__init__(space, header["dim"], dtype=dtype, seed=0)
    models = {}
    for index, info in enumerate(header["models"]):
        P, R, offset = (arrays.get(_array_key(index, what)) for what in _ARRAYS)
        P, R = _owned(P, dtype), _owned(R, dtype)
        if offset is not None:
            offset = _owned(offset, dtype)
            offset.flags.writeable = False
        models[info["name"]] = _make_model(P, R, offset)
    snapshot = _Snapshot(header["dim"], models)
    space._snapshot = snapshot
    space._rng = make_generator(header["rng"])
    space._saved_config = (snapshot, header.get("config"))
    return space


def _owned(array, dtype):
    """A private, writeable, aligned, C-contiguous native copy of ``array``."""
    return np.array(array, dtype=dtype, order="C", copy=True)


# ------------------------------------------------------------------ validate


def _fail(path, problem):
    return SpaceFileError(f"cannot load {os.fspath(path)!r}: {problem}")


def _check_header(header, path):
    """Raise `SpaceFileError` unless ``header`` is a well-formed header."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(path, "not a latentspace file (its header is not ours)")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _fail(path, f"invalid format version {version!r}")
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise _fail(
            path,
            f"format version {version} "
            + (
                f"was written by a newer latentspace ({header.get('library_version')}"
                f"); this version reads format version {FORMAT_VERSION}: upgrade "
                "latentspace"
                if newer
                else f"is not supported (this version reads {FORMAT_VERSION})"
            ),
        )
    missing = [
        key
        for key in ("dtype", "dim", "models", "rng", "checksum")
        if key not in header
    ]
    if missing:
        raise _fail(path, f"the header lacks {', '.join(missing)}")
    if header["dtype"] not in ("float64", "float32"):
        raise _fail(path, f"unsupported dtype {header['dtype']!r}")
    if not _is_count(header["dim"]):
        raise _fail(path, f"invalid dim {header['dim']!r}")
    models = header["models"]
    if not isinstance(models, list):
        raise _fail(path, "the header's models are not a list")
    names = set()
    for index, model in enumerate(models):
        if not (
            isinstance(model, dict)
            and isinstance(model.get("name"), str)
            and model["name"]
            and _is_count(model.get("input_dim"))
            and isinstance(model.get("offset"), bool)
        ):
            raise _fail(path, f"model entry {index} of the header is invalid")
        if model["name"] in names:
            raise _fail(path, f"model {model['name']!r} appears twice")
        names.add(model["name"])
    checksum = header["checksum"]
    if not (
        isinstance(checksum, dict)
        and checksum.get("algorithm") == "sha256"
        and isinstance(checksum.get("digest"), str)
    ):
        raise _fail(path, "the header's checksum entry is invalid")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_arrays(header, arrays, path):
    """Raise unless ``arrays`` are exactly the header's, intact and finite."""
    expected = _expected_arrays(header)
    missing = [name for name in expected if name not in arrays]
    extra = sorted(set(arrays) - set(expected))
    if missing:
        raise _fail(path, f"array {missing[0]!r} is missing")
    if extra:
        raise _fail(path, f"unexpected array {extra[0]!r} (not in the header)")
    dtype = np.dtype(header["dtype"]).newbyteorder("<")
    for name, shape in expected.items():
        array = arrays[name]
        if array.dtype != dtype or array.shape != shape:
            raise _fail(
                path,
                f"array {name!r} has dtype {array.dtype} and shape {array.shape}; "
                f"the header says {dtype} and {shape}",
            )
    digest = _checksum(header, arrays, expected)
    if digest != header["checksum"]["digest"]:
        raise _fail(
            path,
            "checksum mismatch: the file was modified or corrupted after it was "
            "written",
        )
    for name in expected:
        if not np.isfinite(arrays[name]).all():
            raise _fail(path, f"array {name!r} contains NaN or Inf")


# ---------------------------------------------------------------- save, load


def save(space, path, *, config=None):
    """Write ``space`` to ``path`` atomically (see the module docstring)."""
    header, arrays = space_state(space)
    if config is not None:
        header["config"] = config_record(config)
    names = list(_expected_arrays(header))
    header["checksum"] = {
        "algorithm": "sha256",
        "digest": _checksum(header, arrays, names),
    }
    members = {_HEADER: np.frombuffer(_canonical(header), dtype=np.uint8)}
    members.update((name, arrays[name]) for name in names)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(
        directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp"
    )
    # O_EXCL: never follow or reuse an existing file; 0o666 minus the umask,
    # as for any new file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    descriptor = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            _write_npz(file, members)
            file.flush()
            os.fsync(file.fileno())
        if os.path.exists(path):
            _copy_mode(path, temporary)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _write_npz(file, members):
    """``numpy.savez`` of ``members`` into the open binary ``file``."""
    np.savez(file, **members)


def _copy_mode(source, destination):
    try:
        os.chmod(destination, os.stat(source).st_mode & 0o7777)
    except OSError:
        pass


def _fsync_directory(directory):
    """Make the rename durable (POSIX); a no-op where directories can't be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _read(path):
    """The parsed header and the arrays of the file at ``path``, unchecked."""
    # A path only: open() would take an int as a file descriptor, read
    # whatever it is and close it.
    path = os.fspath(path)
    with open(path, "rb") as file:
        data = file.read()
    if not data.startswith(b"PK"):
        raise _fail(path, "not a latentspace file (not an .npz/zip archive)")
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # BadZipFile, NotImplementedError, struct/zlib errors
        # A damaged zip directory can fail in many ways; all mean the same.
        raise _fail(path, f"not a readable .npz archive (truncated?): {exc}") from None
    arrays = {}
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy with a zip prefix
        raise _fail(path, "not a latentspace file (not an .npz archive)")
    with archive:
        if _HEADER not in archive.files:
            raise _fail(
                path,
                "not a latentspace file (an .npz without a latentspace header; "
                f"its arrays: {', '.join(archive.files[:5]) or 'none'})",
            )
        try:
            for name in archive.files:
                arrays[name] = archive[name]
        except Exception as exc:  # zlib, CRC, format and pickle errors alike
            raise _fail(
                path,
                f"array data is corrupted or truncated: {type(exc).__name__}: {exc}",
            ) from None
    raw = arrays.pop(_HEADER)
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_HEADER_BYTES:
        raise _fail(path, "not a latentspace file (malformed header member)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"the header is not valid JSON ({exc})") from None
    return header, arrays


def read_header(path):
    """The checked JSON header of the saved space at ``path``.

    Raises
    ------
    SpaceFileError
        If the file is not a valid saved space (arrays are checked too).
    """
    header, arrays = _read(path)
    _check_header(header, path)
    _check_arrays(header, arrays, path)
    return header


def load(cls, path):
    """A new ``cls`` (a `LatentSpace`) with the state saved at ``path``."""
    header, arrays = _read(path)
    _check_header(header, path)
    _check_arrays(header, arrays, path)
    try:
        make_generator(header["rng"])  # refuse a bad state before building
    except (ValueError, TypeError, KeyError) as exc:
        raise _fail(path, f"invalid random generator state ({exc})") from None
    space = cls.__new__(cls)
    return restore(space, header, arrays)


# -------------------------------------------------------------------- pickle


def getstate(space):
    """The pickled state of ``space``: plain dicts and arrays."""
    header, arrays = space_state(space)
    return {"header": header, "arrays": arrays}


def setstate(space, state):
    """Rebuild ``space`` (lock, models, maps, generator) from `getstate`'s state."""
    header = state["header"]
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"cannot unpickle a LatentSpace of format version {header.get('version')}"
            f"; this version reads {FORMAT_VERSION}"
        )
    restore(space, header, state["arrays"])
