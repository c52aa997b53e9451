# SPDX-License-Identifier: BSD-3-Clause
"""Saving and loading a `GalleryIndex` or `FaissIndex`: one file.

The format is described in docs/file-format.md. The file is a zip archive
(stored, not compressed; ZIP64 for large indexes) whose members are written
and read as streams, so that an index of several gigabytes is never held twice
in memory:

``models/<i>.<projection|reconstruction|offset>.npy``
    The weights of the space the index was built with (every model, in
    registration order): queries of any of them can be searched.
``latents.npy``, ``r_source/<j>.npy``, ``pair_maps/<j>.<source|target>.npy``
    An exact index's unit latents, its CSLS reference statistics and the
    pair maps through which it compares queries of each source model.
``faiss.index``
    A FAISS index in FAISS's own format (``faiss.write_index``).
``header.json``
    Written last: ``format`` ("latentspace-index"), ``version``,
    ``library_version``, ``backend``, ``kind``, ``options``, ``target``,
    ``csls_k``, ``dtype``, ``n_items``, ``references``, ``pair_maps`` (the
    source of every pair map), ``models`` (name,
    input width, whether it has an offset), ``members`` (every other member,
    in the order of the checksum) and ``checksum``: the SHA-256 (saved with
    a ``key``: the HMAC-SHA256 under it) of the canonical JSON of the header
    without the checksum, followed by every member's name and bytes.

`load` treats the file as untrusted: it checks the header's entries, then
the checksum over every member (and zip's CRC-32) before it parses any
member, then every array's dtype, shape and values against the header: a
truncated, corrupted or edited file is refused with `SpaceFileError` and no
index is returned. FAISS parses its member only once the checksum matches;
since a plain checksum can be recomputed by whoever edits the file, load a
FAISS index from a source you do not trust only if it is signed with your
key. `save` writes to a temporary file in the target's directory and renames
it into place once complete.
"""

import json
import os
import zipfile

import numpy as np

from .archive import (
    check_algorithm,
    check_digest,
    check_key,
    new_digest,
    open_regular,
    parse_json,
    write_atomically,
)
from .._exceptions import SpaceFileError
from .._model import make_model
from .._version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "save"]

FORMAT = "latentspace-index"
FORMAT_VERSION = 1
_HEADER = "header.json"
_FAISS = "faiss.index"
_MAX_HEADER_BYTES = 64 << 20
# Bytes of a member hashed at a time.
_READ_BYTES = 16 << 20
_MODEL_ARRAYS = ("projection", "reconstruction", "offset")
_PAIR_SIDES = ("source", "target")


class _Hashing:
    """A writable file-like wrapper that feeds every byte written to a hash."""

    def __init__(self, file, digest):
        self._file, self._digest = file, digest

    def write(self, data):
        self._digest.update(data)
        return self._file.write(data)


def _canonical(header):
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _arrays(index):
    """Every array member of ``index``, name to array, in writing order."""
    arrays = {}
    for i, model in enumerate(index._models.values()):
        for what, array in zip(
            _MODEL_ARRAYS, (model.projection, model.reconstruction, model.offset)
        ):
            if array is not None:
                arrays[f"models/{i}.{what}.npy"] = array
    if index.backend == "exact":
        arrays["latents.npy"] = index.latents
        for j, r in enumerate(index._r_source.values()):
            arrays[f"r_source/{j}.npy"] = r
        for j, maps in enumerate(index._pair_maps.values()):
            for side, array in zip(_PAIR_SIDES, maps):
                arrays[f"pair_maps/{j}.{side}.npy"] = array
    return arrays


def _header(index):
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "library_version": __version__,
        "backend": index.backend,
        "kind": getattr(index, "kind", "flat"),
        "options": getattr(index, "options", {}),
        "target": index.target,
        "csls_k": index.csls_k,
        "dtype": index.dtype.name,
        "n_items": len(index),
        "references": list(index.references),
        "pair_maps": list(index._pair_maps),
        "models": [
            {"name": name, "input_dim": m.input_dim, "offset": m.offset is not None}
            for name, m in index._models.items()
        ],
    }


def save(index, path, key=None):
    """Write ``index`` to ``path`` atomically (see the module docstring),
    signed under ``key`` if given."""
    key = check_key(key)
    header = _header(index)
    arrays = _arrays(index)
    header["members"] = list(arrays) + ([_FAISS] if index.backend == "faiss" else [])
    digest, algorithm = new_digest(key)
    digest.update(_canonical(header))

    def write(file):
        with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                digest.update(name.encode())
                with archive.open(name, "w", force_zip64=True) as member:
                    np.lib.format.write_array(
                        _Hashing(member, digest), np.ascontiguousarray(array),
                        allow_pickle=False,
                    )
            if index.backend == "faiss":
                import faiss

                digest.update(_FAISS.encode())
                with archive.open(_FAISS, "w", force_zip64=True) as member:
                    writer = faiss.PyCallbackIOWriter(_Hashing(member, digest).write)
                    faiss.write_index(index.faiss_index, writer)
                    del writer  # flushes
            header["checksum"] = {"algorithm": algorithm, "digest": digest.hexdigest()}
            archive.writestr(_HEADER, _canonical(header))

    write_atomically(path, write)


def _fail(path, problem):
    return SpaceFileError(f"{os.fspath(path)!r} is not a valid saved index: {problem}")


def load(path, classes, key=None):
    """The index saved at ``path``; ``classes`` maps a backend to the class
    of its indexes; ``key``: the one it was signed with."""
    key = check_key(key)
    path = os.fspath(path)
    file, _ = open_regular(path)
    with file:
        try:
            archive = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise _fail(path, f"not a readable zip archive (truncated?): {exc}") from None
        with archive:
            header = _read_header(archive, path)
            _check_header(header, classes, path)
            _check_members(archive, header, key, path)
            try:
                arrays, faiss_index = _read_members(archive, header)
            except Exception as exc:  # zip CRC, .npy format, FAISS
                raise _fail(
                    path, f"corrupted or truncated: {type(exc).__name__}: {exc}"
                ) from None
    models = _check_arrays(header, arrays, faiss_index, path)
    try:
        return _build(header, models, arrays, faiss_index, classes)
    except ValueError as exc:  # a FAISS kind or options out of range
        raise _fail(path, str(exc)) from None


def _read_header(archive, path):
    try:
        info = archive.getinfo(_HEADER)
    except KeyError:
        raise _fail(path, "no index header (not a latentspace index file)") from None
    if info.file_size > _MAX_HEADER_BYTES:
        raise _fail(path, "malformed header")
    try:
        raw = archive.read(_HEADER)
    except Exception as exc:  # zip CRC, truncation
        raise _fail(path, f"the header is corrupted: {exc}") from None
    header = parse_json(np.frombuffer(raw, np.uint8), path)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(path, "not a latentspace index file")
    if header.get("version") != FORMAT_VERSION:
        raise _fail(
            path,
            f"format version {header.get('version')!r:.40}; this version of "
            f"latentspace reads version {FORMAT_VERSION}",
        )
    return header


def _is_int(value, low):
    return type(value) is int and value >= low


def _is_names(value):
    return isinstance(value, list) and all(type(v) is str for v in value)


def _expected_members(header):
    """The members the header's entries call for, in the order of the
    checksum."""
    members = [
        f"models/{i}.{what}.npy"
        for i, model in enumerate(header["models"])
        for what in _MODEL_ARRAYS
        if what != "offset" or model["offset"]
    ]
    if header["backend"] == "faiss":
        return [*members, _FAISS]
    members.append("latents.npy")
    members += [f"r_source/{j}.npy" for j in range(len(header["references"]))]
    members += [
        f"pair_maps/{j}.{side}.npy"
        for j in range(len(header["pair_maps"]))
        for side in _PAIR_SIDES
    ]
    return members


def _check_header(header, classes, path):
    """Raise unless every entry of the header has its type and range, and
    its members are those the entries call for."""
    models = header.get("models")
    problems = [
        ("backend", header.get("backend") in classes),
        ("dtype", header.get("dtype") in ("float32", "float64")),
        ("csls_k", _is_int(header.get("csls_k"), 1)),
        ("n_items", _is_int(header.get("n_items"), 1)),
        ("references", _is_names(header.get("references"))),
        ("pair_maps", _is_names(header.get("pair_maps"))),
        ("kind", type(header.get("kind")) is str),
        ("options", isinstance(header.get("options"), dict)),
        ("checksum", isinstance(header.get("checksum"), dict)),
        ("members", _is_names(header.get("members"))),
        ("models", isinstance(models, list) and models and all(
            isinstance(m, dict) and type(m.get("name")) is str
            and _is_int(m.get("input_dim"), 1) and type(m.get("offset")) is bool
            for m in models
        )),
    ]
    bad = [name for name, good in problems if not good]
    if bad:
        raise _fail(path, f"malformed header entries: {', '.join(bad)}")
    names = [m["name"] for m in models]
    if len(set(names)) != len(names):
        raise _fail(path, "a model appears twice in the header")
    for entry in ("references", "pair_maps"):
        if not set(header[entry]) <= set(names) or len(set(header[entry])) != len(
            header[entry]
        ):
            raise _fail(path, f"header entry {entry!r} names models it does not hold")
    if header.get("target") not in names:
        raise _fail(path, "the header's target is not one of its models")
    if header["members"] != _expected_members(header):
        raise _fail(path, "its members are not those its header describes")


def _check_members(archive, header, key, path):
    """Raise unless the checksum (the signature under ``key``) of the header
    and every member's name and bytes is the recorded one."""
    recorded = header.pop("checksum")
    check_algorithm(recorded.get("algorithm"), key, path)
    digest = new_digest(key)[0]
    digest.update(_canonical(header))
    try:
        for name in header["members"]:
            digest.update(name.encode())
            with archive.open(name) as member:
                while chunk := member.read(_READ_BYTES):
                    digest.update(chunk)
    except KeyError as exc:
        raise _fail(path, f"a member is missing: {exc}") from None
    except Exception as exc:  # zip CRC, truncation
        raise _fail(path, f"corrupted or truncated: {type(exc).__name__}: {exc}") from None
    check_digest(digest.hexdigest(), recorded.get("digest"), key, path)


def _read_members(archive, header):
    """The arrays and the FAISS index (or None) of a checked file."""
    arrays, faiss_index = {}, None
    for name in header["members"]:
        with archive.open(name) as member:
            if name == _FAISS:
                import faiss

                faiss_index = faiss.read_index(faiss.PyCallbackIOReader(member.read))
            else:
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays, faiss_index


def _check_arrays(header, arrays, faiss_index, path):
    """The models of a checked file; raise unless every array has the dtype,
    shape and finite values its header calls for."""
    dtype = np.dtype(header["dtype"])
    models = {}
    for i, entry in enumerate(header["models"]):
        weights = [arrays.get(f"models/{i}.{what}.npy") for what in _MODEL_ARRAYS]
        try:
            model = make_model(*weights)
        except ValueError as exc:
            raise _fail(path, f"model {entry['name']!r}: {exc}") from None
        if model.input_dim != entry["input_dim"] or weights[0].dtype != dtype:
            raise _fail(path, f"model {entry['name']!r} is not as its header says")
        models[entry["name"]] = model
    dims = {m.projection.shape[1] for m in models.values()}
    if len(dims) != 1:
        raise _fail(path, "its models have different latent dimensions")
    dim, n = dims.pop(), header["n_items"]
    expected = {}
    if faiss_index is not None:
        # One column per reference source holds CSLS's r_S of every item.
        if faiss_index.d != dim + len(header["references"]) or faiss_index.ntotal != n:
            raise _fail(path, "its FAISS index is not of the header's size")
    else:
        expected["latents.npy"] = (n, dim)
        expected.update({
            f"r_source/{j}.npy": (n,) for j in range(len(header["references"]))
        })
        for j in range(len(header["pair_maps"])):
            width = arrays[f"pair_maps/{j}.source.npy"].shape[-1]
            if not 1 <= width <= dim:
                raise _fail(path, f"pair map {j} has width {width}")
            expected.update({
                f"pair_maps/{j}.{side}.npy": (dim, width) for side in _PAIR_SIDES
            })
    for name, shape in expected.items():
        array = arrays[name]
        if array.dtype != dtype or array.shape != shape:
            raise _fail(
                path, f"array {name!r} has dtype {array.dtype} and shape "
                f"{array.shape}; the header calls for {dtype} and {shape}",
            )
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise _fail(path, f"array {name!r} contains NaN or Inf")
    return models


def _build(header, models, arrays, faiss_index, classes):
    """The index of a checked file; ``classes``: backend -> index class."""
    for array in arrays.values():
        array.flags.writeable = False
    faiss = header["backend"] == "faiss"
    index = classes[header["backend"]].__new__(classes[header["backend"]])
    pair_maps = {
        source: tuple(arrays[f"pair_maps/{j}.{side}.npy"] for side in _PAIR_SIDES)
        for j, source in enumerate(header["pair_maps"])
    }
    index._setup(models, np.dtype(header["dtype"]), header["target"],
                 header["csls_k"], pair_maps=pair_maps)
    if faiss:
        index._restore(header["kind"], header["options"], header["references"],
                       faiss_index)
    else:
        index.latents = arrays["latents.npy"]
        index._r_source = {
            source: arrays[f"r_source/{j}.npy"]
            for j, source in enumerate(header["references"])
        }
    return index
