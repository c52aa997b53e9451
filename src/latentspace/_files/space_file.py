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
- the header member, at most `latentspace._files.archive.MAX_HEADER_BYTES`, parsed as JSON with
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
import io
import json
import math
import os
import re
import zipfile

import numpy as np

from .archive import (
    check_algorithm,
    check_digest,
    check_key,
    fail,
    new_digest,
    npy_members,
    open_regular,
    parse_json,
    read_npy,
    write_atomically,
    write_npz,
)
from .._exceptions import InvalidParameterError, SpaceFileError
from .._model import Snapshot, make_model
from .rng_state import encode_rng_state, is_int, make_generator
from .._validation import BLAS_INT_MAX, check_dtype
from .._version import __version__

__all__ = [
    "FORMAT_VERSION",
    "SpaceFileError",
    "load",
    "read_header",
    "save",
]

FORMAT = "latentspace"
FORMAT_VERSION = 1
_HEADER = "header"
_ARRAYS = ("projection", "reconstruction", "offset")
_ALGORITHMS = ("sha256", "hmac-sha256")  # checksum without, with a key


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
    from .._training.config import ProjectionConfig, TrainingResult

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
        "rng": encode_rng_state(rng_state),
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
    digest = new_digest(key)[0]
    digest.update(_canonical(content))
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


def _check_header(header, path):
    """Raise `SpaceFileError` unless ``header`` is a well-formed header."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise fail(path, "not a latentspace file (its header is not ours)")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise fail(path, f"invalid format version {version!r}")
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        written_by = header.get("library_version")
        raise fail(
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
        raise fail(path, f"the header lacks {', '.join(missing)}")
    if not isinstance(header.get("library_version", ""), str):
        raise fail(path, "the header's library_version is not a string")
    if header["dtype"] not in ("float64", "float32"):
        raise fail(path, f"unsupported dtype {header['dtype']!r:.40}")
    if not _is_count(header["dim"]):
        raise fail(path, f"invalid dim {header['dim']!r:.40}")
    models = header["models"]
    if not isinstance(models, list):
        raise fail(path, "the header's models are not a list")
    names = set()
    for index, model in enumerate(models):
        if not (
            isinstance(model, dict)
            and isinstance(model.get("name"), str)
            and model["name"]
            and _is_count(model.get("input_dim"))
            and isinstance(model.get("offset"), bool)
        ):
            raise fail(path, f"model entry {index} of the header is invalid")
        if model["name"] in names:
            raise fail(path, f"model {model['name']!r:.80} appears twice")
        names.add(model["name"])
    if not isinstance(header.get("config"), (dict, type(None))):
        raise fail(path, "the header's config is not a mapping")
    pairs = header.get("pair_maps", [])
    if not isinstance(pairs, list):
        raise fail(path, "the header's pair_maps are not a list")
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
            raise fail(path, f"pair map entry {index} of the header is invalid")
        seen.add(frozenset((pair["a"], pair["b"])))
    checksum = header["checksum"]
    if not (
        isinstance(checksum, dict)
        and checksum.get("algorithm") in _ALGORITHMS
        and isinstance(checksum.get("digest"), str)
        and re.fullmatch("[0-9a-f]{64}", checksum["digest"])
    ):
        raise fail(path, "the header's checksum entry is invalid")
    try:
        make_generator(header["rng"])
    except ValueError as exc:
        raise fail(path, f"invalid random generator state ({exc})") from None


def _is_count(value):
    """A dimension: an int in [1, BLAS_INT_MAX]."""
    return is_int(value, BLAS_INT_MAX + 1) and value >= 1


def _check_arrays(header, arrays, path, key):
    """Raise unless ``arrays`` (of the header's names, dtypes and shapes)
    match the checksum (or the signature under ``key``) and are finite."""
    names = list(_expected_arrays(header))
    check_algorithm(header["checksum"]["algorithm"], key, path)
    check_digest(_checksum(header, arrays, names, key), header["checksum"]["digest"],
                 key, path)
    for name in names:
        if not np.isfinite(arrays[name]).all():
            raise fail(path, f"array {name!r} contains NaN or Inf")


# ---------------------------------------------------------------- save, load


def save(snapshot, dtype, path, *, config=None, key=None):
    """Write a space's ``snapshot`` of ``dtype`` to ``path`` atomically, or
    into the binary file object ``path`` (see the module docstring)."""
    key = check_key(key)
    header, arrays = snapshot_state(snapshot, dtype)
    if config is not None:
        header["config"] = config_record(config)
    names = list(_expected_arrays(header))
    header["checksum"] = {
        "algorithm": new_digest(key)[1],
        "digest": _checksum(header, arrays, names, key),
    }
    members = {_HEADER: np.frombuffer(_canonical(header), dtype=np.uint8)}
    members.update((name, arrays[name]) for name in names)
    if hasattr(path, "write") and not isinstance(path, (str, bytes, os.PathLike)):
        if isinstance(path, io.TextIOBase):
            raise InvalidParameterError(
                "save needs a binary file object (open(..., 'wb')), got a text one"
            )
        write_npz(path, members)
    else:
        write_atomically(path, lambda file: write_npz(file, members))


def _read(path):
    """The header and the arrays of the file at ``path``, checked but for the
    checksum and the values (see the module docstring)."""
    file, size = open_regular(path)
    with file:
        if file.read(4) != b"PK\x03\x04":
            raise fail(path, "not a latentspace file (not an .npz/zip archive)")
        try:
            archive = zipfile.ZipFile(file)
        except Exception as exc:  # BadZipFile, struct, overflow errors alike
            # A damaged zip directory can fail in many ways; all mean the same.
            raise fail(
                path, f"not a readable .npz archive (truncated?): {exc}"
            ) from None
        with archive:
            members = npy_members(archive, path)
            if _HEADER not in members:
                listed = ", ".join(sorted(members)[:5]) or "none"
                raise fail(
                    path,
                    "not a latentspace file (an .npz without a latentspace header; "
                    f"its arrays: {listed})",
                )
            raw = read_npy(archive, members.pop(_HEADER), np.uint8, None, path)
            header = parse_json(raw, path)
            _check_header(header, path)
            expected = _expected_arrays(header)
            missing = [name for name in expected if name not in members]
            extra = sorted(set(members) - set(expected))
            if missing:
                raise fail(path, f"array {missing[0]!r} is missing")
            if extra:
                raise fail(
                    path, f"unexpected array {extra[0]!r:.80} (not in the header)"
                )
            dtype = np.dtype(header["dtype"]).newbyteorder("<")
            total = dtype.itemsize * sum(math.prod(s) for s in expected.values())
            if total > size:
                raise fail(
                    path,
                    f"its header declares {total} bytes of weights, more than the "
                    f"file's {size} bytes",
                )
            arrays = {
                name: read_npy(archive, members[name], dtype, shape, path)
                for name, shape in expected.items()
            }
    return header, arrays


def read_header(path, *, key=None):
    """The checked JSON header of the saved space at ``path``.

    Raises
    ------
    SpaceFileError
        If the file is not a valid saved space (arrays are checked too).
    """
    key = check_key(key)
    header, arrays = _read(path)
    _check_arrays(header, arrays, path, key)
    return header


def load(path, *, key=None):
    """``(dtype, snapshot)`` of the space saved at ``path``."""
    key = check_key(key)
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
