# SPDX-License-Identifier: BSD-3-Clause
"""Saving, loading and pickling a `LatentSpace`.

The format is described in docs/file-format.md. A saved space is one
``.npz`` archive (a zip of uncompressed ``.npy`` members, readable with
``numpy.load(path, allow_pickle=False)``):

``header``
    A ``uint8`` array holding UTF-8 JSON: ``format`` ("latentspace"),
    ``version`` (`FORMAT_VERSION`), ``library_version``, ``dtype``, ``dim``,
    ``models`` (in registration order: ``name``, ``input_dim``, ``offset``
    (whether the model has an input offset)), ``rng`` (the state of the
    space's random bit generator, so that a loaded space registers exactly as
    the original would: PCG64, or another of NumPy's bit generators in files
    of spaces seeded with a generator by earlier versions), ``config`` (the
    training configuration recorded with the space, or null) and
    ``checksum``.
``model<i>.projection``, ``model<i>.reconstruction``, ``model<i>.offset``
    The arrays of the ``i``-th model: ``P`` (``d x k``), ``R`` (``k x d``)
    and, if the model has one, the offset ``mu`` (``d``), in the space's
    dtype (little-endian).

``checksum`` is ``{"algorithm": "sha256", "digest": ...}``: the SHA-256 of the
canonical JSON of the header without the checksum, followed by every array's
name, dtype, shape and bytes in header order, so that any edit of the header
or of an array is detected, also one that keeps the zip's own CRC-32 valid.
Saved with a ``key``, it is ``"hmac-sha256"``, the HMAC-SHA256 of the same
bytes under that key, which only a holder of the key can recompute.

Reading treats a file as untrusted input and checks, in this order, before
anything that a crafted file could make expensive or unsafe:

- the path is a regular file (not a FIFO, a device or a directory), opened
  without blocking;
- the zip directory: every member stored uncompressed, unencrypted and once;
- the header member, at most `_MAX_HEADER_BYTES`, parsed as JSON with
  integers of at most 40 digits and no NaN, then every field's type and
  range (dims and widths fit a BLAS ``int``); the generator state must be
  that of a supported bit generator with every integer in range and every
  array of its exact dtype and length (positions within their buffers), so
  no crafted state reaches NumPy's generator;
- the members against the header: exactly the arrays it implies, their
  total size at most the file's, each one's declared size that of its
  ``.npy`` header and data, and the ``.npy`` header's dtype, order and shape,
  before its data is read (a piece at a time into an array of that shape);
- the checksum (or signature), then that every weight is finite.

Every failure is a `SpaceFileError`, except that a file that cannot be opened
raises the `OSError` of ``open``. What the checksum protects against, and what
it does not, is in docs/reliability.md.

Writing goes to a temporary file in the target's directory, which is flushed,
fsynced and renamed over the target (``os.replace``, atomic on POSIX and
Windows): a crash or an error mid-save never leaves a partial file at the
target, and an existing file there stays as it was unless the save succeeds.
"""

import dataclasses
import errno
import hashlib
import hmac
import io
import json
import math
import os
import re
import secrets
import stat
import zipfile

import numpy as np

from ._exceptions import InvalidParameterError
from ._model import Snapshot, make_model
from ._version import __version__
from ._validation import BLAS_INT_MAX, check_dtype

__all__ = [
    "FORMAT_VERSION",
    "SpaceFileError",
    "load",
    "read_header",
    "save",
    "write_atomically",
]

FORMAT = "latentspace"
FORMAT_VERSION = 1
_HEADER = "header"
_ARRAYS = ("projection", "reconstruction", "offset")
_ALGORITHMS = ("sha256", "hmac-sha256")  # checksum without, with a key
# Largest header we read (the JSON of a space with many thousand models).
_MAX_HEADER_BYTES = 64 << 20
# Largest .npy header of a member (NumPy's own limit by default).
_MAX_NPY_HEADER = 10_000
# Longest integer in the header: 2**128 has 39 digits.
_MAX_INT_DIGITS = 40
# Deepest nesting of the header's JSON (a saved one nests 4 levels).
_MAX_JSON_DEPTH = 32
# Bytes of array data read at a time.
_READ_BYTES = 16 << 20
# Bytes of the target's name in a temporary file's name.
_TEMPORARY_NAME_BYTES = 64

# The state of every bit generator a file may hold, as NumPy's ``state``
# property gives it: nested keys down to an int ``b`` (an integer in
# [0, b)) or a ``(dtype, length)`` array (written as a JSON list).
_U32, _U128 = 2**32, 2**128
_PCG = {"state": {"state": _U128, "inc": _U128}, "has_uint32": 2, "uinteger": _U32}
_RNG_STATES = {
    "PCG64": _PCG,
    "PCG64DXSM": _PCG,
    "MT19937": {"state": {"key": ("u4", 624), "pos": 625}},
    "Philox": {
        "state": {"counter": ("u8", 4), "key": ("u8", 2)},
        "buffer": ("u8", 4),
        "buffer_pos": 5,
        "has_uint32": 2,
        "uinteger": _U32,
    },
    "SFC64": {"state": {"state": ("u8", 4)}, "has_uint32": 2, "uinteger": _U32},
}


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


def _is_int(value, bound):
    """Whether ``value`` is an int (not a bool) in [0, bound)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < bound


def _decoded(value, schema, where):
    """``value`` (JSON) checked against ``schema`` (see `_RNG_STATES`), with
    arrays decoded; ValueError naming what is wrong."""
    if isinstance(schema, dict):
        if not isinstance(value, dict) or set(value) != set(schema):
            raise ValueError(f"{where} must have the keys {', '.join(sorted(schema))}")
        return {key: _decoded(value[key], part, f"{where}.{key}")
                for key, part in schema.items()}
    if isinstance(schema, tuple):
        dtype, length = np.dtype(schema[0]), schema[1]
        if not (
            isinstance(value, dict)
            and set(value) == {"__ndarray__", "data"}
            and value["__ndarray__"] in ("<" + dtype.str[1:], ">" + dtype.str[1:])
            and isinstance(value["data"], list)
            and len(value["data"]) == length
            and all(_is_int(v, 2 ** (8 * dtype.itemsize)) for v in value["data"])
        ):
            raise ValueError(
                f"{where} must be an array of {length} {dtype.name} values"
            )
        return np.array(value["data"], dtype=dtype)
    if not _is_int(value, schema):
        raise ValueError(f"{where} must be an integer in [0, {schema - 1}]")
    return value


def make_generator(state):
    """A new `numpy.random.Generator` in the (JSON-decoded) ``state``.

    Raises ValueError unless ``state`` is the state of a bit generator of
    `_RNG_STATES` with every value of the right type and in range.
    """
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if not isinstance(name, str) or name not in _RNG_STATES:
        raise ValueError(f"unsupported random bit generator {name!r:.40}")
    fields = {key: value for key, value in state.items() if key != "bit_generator"}
    decoded = {"bit_generator": name, **_decoded(fields, _RNG_STATES[name], name)}
    bit_generator = getattr(np.random, name)()
    try:
        bit_generator.state = decoded
    except (TypeError, OverflowError) as exc:  # a state NumPy has more rules for
        raise ValueError(str(exc)) from None
    return np.random.Generator(bit_generator)


def snapshot_state(snapshot, dtype):
    """The header (without checksum) and the named arrays of a space's
    ``snapshot`` (models, generator and recorded configuration of one
    moment) of ``dtype``."""
    rng_state = snapshot.rng.bit_generator.state  # never drawn from: a copy is
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "library_version": __version__,
        "dtype": dtype.name,
        "dim": snapshot.dim,
        "models": [],
        "rng": _encode_rng_state(rng_state),
        "config": config_record(snapshot.config),
    }
    arrays = {}
    little = dtype.newbyteorder("<")
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
    maps = snapshot.valid_pair_maps()
    if maps:
        header["pair_maps"] = []
        for index, ((a, b), pair) in enumerate(maps.items()):
            header["pair_maps"].append({"a": a, "b": b, "width": pair[0].shape[1]})
            for side, value in zip("ab", pair):
                arrays[_pair_key(index, side)] = value.astype(little, copy=False)
    return header, arrays


def _pair_key(index, side):
    return f"pair_{index}_{side}"


def _expected_arrays(header):
    """Array name -> expected shape, in header order."""
    dim, expected = header["dim"], {}
    for index, model in enumerate(header["models"]):
        d = model["input_dim"]
        expected[_array_key(index, "projection")] = (d, dim)
        expected[_array_key(index, "reconstruction")] = (dim, d)
        if model["offset"]:
            expected[_array_key(index, "offset")] = (d,)
    for index, pair in enumerate(header.get("pair_maps", ())):
        for side in "ab":
            expected[_pair_key(index, side)] = (dim, pair["width"])
    return expected


def _checksum(header, arrays, names, key=None):
    """SHA-256 (HMAC-SHA256 with a ``key``) of the canonical header (without
    checksum) and the arrays."""
    content = {field: value for field, value in header.items() if field != "checksum"}
    if key is None:
        digest = hashlib.sha256(_canonical(content))
    else:
        digest = hmac.new(key, _canonical(content), hashlib.sha256)
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


def restore(header, arrays):
    """``(dtype, snapshot)`` of a validated ``header``/``arrays`` state."""
    dtype = check_dtype(header["dtype"])
    models = {}
    for index, info in enumerate(header["models"]):
        P, R, offset = (
            None if a is None else np.asarray(a, dtype=dtype)  # native byte order
            for a in (arrays.get(_array_key(index, what)) for what in _ARRAYS)
        )
        models[info["name"]] = make_model(P, R, offset)
    pair_maps = {}
    for index, pair in enumerate(header.get("pair_maps", ())):
        Ma, Mb = (np.array(arrays[_pair_key(index, side)], dtype=dtype) for side in "ab")
        Ma.flags.writeable = Mb.flags.writeable = False
        pair_maps[pair["a"], pair["b"]] = (models[pair["a"]], models[pair["b"]], Ma, Mb)
    snapshot = Snapshot(
        header["dim"], models, make_generator(header["rng"]), header.get("config"),
        pair_maps,
    )
    return dtype, snapshot


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
        written_by = header.get("library_version")
        raise _fail(
            path,
            f"format version {version} "
            + (
                f"was written by a newer latentspace ({written_by!s:.40}"
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
    if not isinstance(header.get("library_version", ""), str):
        raise _fail(path, "the header's library_version is not a string")
    if header["dtype"] not in ("float64", "float32"):
        raise _fail(path, f"unsupported dtype {header['dtype']!r:.40}")
    if not _is_count(header["dim"]):
        raise _fail(path, f"invalid dim {header['dim']!r:.40}")
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
            raise _fail(path, f"model {model['name']!r:.80} appears twice")
        names.add(model["name"])
    if not isinstance(header.get("config"), (dict, type(None))):
        raise _fail(path, "the header's config is not a mapping")
    pairs = header.get("pair_maps", [])
    if not isinstance(pairs, list):
        raise _fail(path, "the header's pair_maps are not a list")
    seen = set()
    for index, pair in enumerate(pairs):
        if not (
            isinstance(pair, dict)
            and set(pair) == {"a", "b", "width"}
            and isinstance(pair["a"], str)
            and isinstance(pair["b"], str)
            and pair["a"] in names
            and pair["b"] in names
            and pair["a"] != pair["b"]
            and _is_count(pair["width"])
            and pair["width"] <= header["dim"]
            and frozenset((pair["a"], pair["b"])) not in seen
        ):
            raise _fail(path, f"pair map entry {index} of the header is invalid")
        seen.add(frozenset((pair["a"], pair["b"])))
    checksum = header["checksum"]
    if not (
        isinstance(checksum, dict)
        and checksum.get("algorithm") in _ALGORITHMS
        and isinstance(checksum.get("digest"), str)
        and re.fullmatch("[0-9a-f]{64}", checksum["digest"])
    ):
        raise _fail(path, "the header's checksum entry is invalid")
    try:
        make_generator(header["rng"])
    except ValueError as exc:
        raise _fail(path, f"invalid random generator state ({exc})") from None


def _is_count(value):
    """A dimension: an int in [1, BLAS_INT_MAX]."""
    return _is_int(value, BLAS_INT_MAX + 1) and value >= 1


def _check_arrays(header, arrays, path, key):
    """Raise unless ``arrays`` (of the header's names, dtypes and shapes)
    match the checksum (or the signature under ``key``) and are finite."""
    names = list(_expected_arrays(header))
    algorithm = header["checksum"]["algorithm"]
    if key is None and algorithm == "hmac-sha256":
        raise _fail(path, "it is signed with a key (HMAC-SHA256): pass its key")
    if key is not None and algorithm == "sha256":
        raise _fail(
            path,
            "it is not signed with a key (its checksum is a plain SHA-256), so "
            "it cannot be authenticated",
        )
    digest = _checksum(header, arrays, names, key)
    if not hmac.compare_digest(digest, header["checksum"]["digest"]):
        raise _fail(
            path,
            "checksum mismatch: the file was modified or corrupted after it was "
            "written"
            if key is None
            else "signature mismatch: the file was modified after it was signed, "
            "or the key is not the one it was signed with",
        )
    for name in names:
        if not np.isfinite(arrays[name]).all():
            raise _fail(path, f"array {name!r} contains NaN or Inf")


def _check_key(key):
    """The key of a signature: None or non-empty bytes."""
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InvalidParameterError(
            f"key must be bytes (a secret of 32 random bytes, say), got "
            f"{type(key).__name__}"
        )
    key = bytes(key)
    if not key:
        raise InvalidParameterError("key must not be empty")
    return key


# ---------------------------------------------------------------- save, load


def save(snapshot, dtype, path, *, config=None, key=None):
    """Write a space's ``snapshot`` of ``dtype`` to ``path`` atomically, or
    into the binary file object ``path`` (see the module docstring)."""
    key = _check_key(key)
    header, arrays = snapshot_state(snapshot, dtype)
    if config is not None:
        header["config"] = config_record(config)
    names = list(_expected_arrays(header))
    header["checksum"] = {
        "algorithm": "sha256" if key is None else "hmac-sha256",
        "digest": _checksum(header, arrays, names, key),
    }
    members = {_HEADER: np.frombuffer(_canonical(header), dtype=np.uint8)}
    members.update((name, arrays[name]) for name in names)
    if hasattr(path, "write") and not isinstance(path, (str, bytes, os.PathLike)):
        if isinstance(path, io.TextIOBase):
            raise InvalidParameterError(
                "save needs a binary file object (open(..., 'wb')), got a text one"
            )
        _write_npz(path, members)
    else:
        write_atomically(path, lambda file: _write_npz(file, members))


def write_atomically(path, write):
    """Call ``write(file)`` on a new file next to ``path``, then rename it
    over ``path``: a failure or an interrupt at any point leaves ``path`` as
    it was and no temporary file behind.

    Parameters
    ----------
    path : str, bytes or os.PathLike
    write : callable
        Writes the content into the binary file object it is given.
    """
    path = os.fspath(path)
    target = os.path.abspath(os.fsencode(path))
    directory, name = os.path.split(target)
    temporary = os.path.join(directory, _temporary_name(name))
    try:
        # "x": a new file, never an existing one (nor one a link points to).
        with open(temporary, "xb", opener=_create) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if os.path.exists(target):
            _copy_mode(target, temporary)
        os.replace(temporary, target)
    except BaseException as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(exc, FileNotFoundError) and not os.path.isdir(directory):
            raise FileNotFoundError(
                errno.ENOENT,
                f"cannot write {path!r}: no such directory",
                os.fsdecode(directory),
            ) from None
        raise
    _fsync_directory(directory)


def _create(path, flags):
    """``os.open`` for a new file: 0o666 less the umask, as for any new file."""
    return os.open(path, flags, 0o666)


def _temporary_name(name):
    """``.NAME.RANDOM.tmp`` (bytes) with NAME cut short enough that the name
    is legal wherever ``name`` is."""
    token = secrets.token_hex(6).encode("ascii")
    return b"." + name[:_TEMPORARY_NAME_BYTES] + b"." + token + b".tmp"


class _Archive(zipfile.ZipFile):
    """A zip archive being written that an interrupt inside its constructor
    leaves without a complaint when it is collected (`zipfile.ZipFile`'s
    ``__del__`` assumes a complete object; the caller discards the file)."""

    def __del__(self):
        if "_writing" in self.__dict__:  # the constructor got that far
            super().__del__()


def _write_npz(file, members):
    """An ``.npz`` of ``members`` (uncompressed ``.npy`` members, as
    ``numpy.savez`` writes) into the binary ``file``."""
    archive = _Archive(file, "w", zipfile.ZIP_STORED, allowZip64=True)
    try:
        for name, array in members.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        archive.close()
    except BaseException:
        # Abandon the archive (the caller discards its file): closing it (now
        # or when it is collected) would write its directory, or raise if an
        # interrupt left a member open.
        archive.fp = None
        raise


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


def _open(path):
    """The regular file at ``path``, open for reading, and its size.

    Opened without blocking (a FIFO would wait for a writer), then checked.
    A path only: ``open`` would take an int as a file descriptor, read
    whatever it is and close it.
    """
    path = os.fspath(path)
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    try:
        file = open(path, "rb", opener=lambda p, f: os.open(p, f | nonblocking))
    except IsADirectoryError:
        raise _fail(path, "it is a directory") from None
    try:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _fail(path, "not a regular file (a FIFO, a device or a socket?)")
        if nonblocking:
            os.set_blocking(file.fileno(), True)
    except BaseException:
        file.close()
        raise
    return file, info.st_size


def _read(path):
    """The header and the arrays of the file at ``path``, checked but for the
    checksum and the values (see the module docstring)."""
    file, size = _open(path)
    with file:
        if file.read(4) != b"PK\x03\x04":
            raise _fail(path, "not a latentspace file (not an .npz/zip archive)")
        try:
            archive = zipfile.ZipFile(file)
        except Exception as exc:  # BadZipFile, struct, overflow errors alike
            # A damaged zip directory can fail in many ways; all mean the same.
            raise _fail(
                path, f"not a readable .npz archive (truncated?): {exc}"
            ) from None
        with archive:
            members = _members(archive, path)
            if _HEADER not in members:
                listed = ", ".join(sorted(members)[:5]) or "none"
                raise _fail(
                    path,
                    "not a latentspace file (an .npz without a latentspace header; "
                    f"its arrays: {listed})",
                )
            raw = _read_npy(archive, members.pop(_HEADER), np.uint8, None, path)
            header = _parse_json(raw, path)
            _check_header(header, path)
            expected = _expected_arrays(header)
            missing = [name for name in expected if name not in members]
            extra = sorted(set(members) - set(expected))
            if missing:
                raise _fail(path, f"array {missing[0]!r} is missing")
            if extra:
                raise _fail(
                    path, f"unexpected array {extra[0]!r:.80} (not in the header)"
                )
            dtype = np.dtype(header["dtype"]).newbyteorder("<")
            total = dtype.itemsize * sum(math.prod(s) for s in expected.values())
            if total > size:
                raise _fail(
                    path,
                    f"its header declares {total} bytes of weights, more than the "
                    f"file's {size} bytes",
                )
            arrays = {
                name: _read_npy(archive, members[name], dtype, shape, path)
                for name, shape in expected.items()
            }
    return header, arrays


def _members(archive, path):
    """Array name (a ``.npy`` member's name without the suffix, any other
    member's as it is) -> `zipfile.ZipInfo`, each name once."""
    members = {}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if name in members:
            raise _fail(path, f"member {info.filename!r:.80} appears twice")
        members[name] = info
    return members


def _read_npy(archive, info, dtype, shape, path):
    """The array of the ``.npy`` member ``info``, of ``dtype`` and ``shape``
    (None: 1-D, at most `_MAX_HEADER_BYTES`), checked against the member's
    declared size and its ``.npy`` header before its data is read."""
    name = info.filename.removesuffix(".npy")
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise _fail(
            path,
            f"array {name!r} is compressed or encrypted (a saved space stores "
            "its arrays as they are)",
        )
    expected = "" if shape is None else f"{dtype} {shape}, "
    problem = f"array {name!r} is not {expected}as the header declares"
    if shape is None:
        problem = "not a latentspace file (malformed header member)"
        limit = _MAX_HEADER_BYTES
    else:
        limit = math.prod(shape) * dtype.itemsize
    if not (info.file_size <= limit + _MAX_NPY_HEADER + 12 and (
            shape is None or info.file_size >= limit)):
        raise _fail(path, f"{problem} (member of {info.file_size} bytes)")
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                read = np.lib.format.read_array_header_1_0
            elif version == (2, 0):
                read = np.lib.format.read_array_header_2_0
            else:
                raise _fail(path, f"{problem} (.npy format {version})")
            found, fortran, found_dtype = read(member, max_header_size=_MAX_NPY_HEADER)
            if shape is None and len(found) == 1 and found[0] <= limit:
                shape = found
            if fortran or found_dtype != dtype or found != shape:
                raise _fail(
                    path,
                    f"array {name!r} has dtype {found_dtype} and shape {found}; "
                    f"the header says {dtype} and {shape}"
                    if expected
                    else problem,
                )
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            if info.file_size != member.tell() + nbytes:
                raise _fail(path, f"{problem} (member of {info.file_size} bytes)")
            array = np.empty(shape, dtype)
            view = memoryview(array.reshape(-1).view(np.uint8))
            # (The zip checks the CRC-32 as the last piece is read.)
            for start in range(0, nbytes, _READ_BYTES):
                stop = min(start + _READ_BYTES, nbytes)
                if member.readinto(view[start:stop]) != stop - start:
                    raise EOFError("the data ends early")
    except SpaceFileError:
        raise
    except Exception as exc:  # zip, CRC, .npy header and read errors alike
        raise _fail(
            path,
            f"array data is corrupted or truncated: {type(exc).__name__}: {exc}",
        ) from None
    return array


def _parse_json(raw, path):
    """The header's JSON, of bounded integers, no NaN or Infinity, and nested
    at most `_MAX_JSON_DEPTH` levels (JSON that Python can parse but not
    write back, to compute its checksum, is refused)."""
    try:
        header = json.loads(
            raw.tobytes().decode("utf-8"),
            parse_int=_json_int,
            parse_constant=_json_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"the header is not valid JSON ({exc})") from None
    level = [header]
    for _ in range(_MAX_JSON_DEPTH):
        level = [
            item
            for value in level if isinstance(value, (dict, list))
            for item in (value.values() if isinstance(value, dict) else value)
        ]
    if any(isinstance(value, (dict, list)) for value in level):
        raise _fail(path, f"the header nests more than {_MAX_JSON_DEPTH} levels")
    return header


def _json_int(text):
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _json_constant(name):
    raise ValueError(f"{name} is not a number of JSON")


def read_header(path, *, key=None):
    """The checked JSON header of the saved space at ``path``.

    Raises
    ------
    SpaceFileError
        If the file is not a valid saved space (arrays are checked too).
    """
    key = _check_key(key)
    header, arrays = _read(path)
    _check_arrays(header, arrays, path, key)
    return header


def load(path, *, key=None):
    """``(dtype, snapshot)`` of the space saved at ``path``."""
    key = _check_key(key)
    header, arrays = _read(path)
    _check_arrays(header, arrays, path, key)
    return restore(header, arrays)


# -------------------------------------------------------------------- pickle


def getstate(snapshot, dtype):
    """The pickled state of a space's ``snapshot`` of ``dtype``: plain dicts
    and arrays."""
    header, arrays = snapshot_state(snapshot, dtype)
    return {"header": header, "arrays": arrays}


def setstate(state):
    """``(dtype, snapshot)`` of `getstate`'s ``state``."""
    header = state["header"]
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"cannot unpickle a LatentSpace of format version {header.get('version')}"
            f"; this version reads {FORMAT_VERSION}"
        )
    return restore(header, state["arrays"])
