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
    in the order of the checksum) and ``checksum``: the SHA-256 of the
    canonical JSON of the header without the checksum, followed by every
    member's name and bytes.

`load` checks the checksum while it reads (and zip's CRC-32 of every
member): a truncated, corrupted or edited file is refused with
`SpaceFileError` and no index is returned. `save` writes to a temporary file
in the target's directory and renames it into place once complete.
"""

import hashlib
import json
import os
import zipfile

import numpy as np

from .archive import write_atomically
from .._exceptions import SpaceFileError
from .._model import make_model
from .._version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "save"]

FORMAT = "latentspace-index"
FORMAT_VERSION = 1
_HEADER = "header.json"
_FAISS = "faiss.index"
_MAX_HEADER_BYTES = 64 << 20
_MODEL_ARRAYS = ("projection", "reconstruction", "offset")
_PAIR_SIDES = ("source", "target")


class _Hashing:
    """A file-like wrapper that feeds every byte written or read to a hash."""

    def __init__(self, file, digest):
        self._file, self._digest = file, digest

    def write(self, data):
        self._digest.update(data)
        return self._file.write(data)

    def read(self, size=-1):
        data = self._file.read(size)
        self._digest.update(data)
        return data


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


def save(index, path):
    """Write ``index`` to ``path`` atomically (see the module docstring)."""
    header = _header(index)
    arrays = _arrays(index)
    header["members"] = list(arrays) + ([_FAISS] if index.backend == "faiss" else [])
    digest = hashlib.sha256(_canonical(header))

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
            header["checksum"] = {"algorithm": "sha256", "digest": digest.hexdigest()}
            archive.writestr(_HEADER, _canonical(header))

    write_atomically(path, write)


def _fail(path, problem):
    return SpaceFileError(f"{os.fspath(path)!r} is not a valid saved index: {problem}")


def _read_header(archive, path):
    try:
        info = archive.getinfo(_HEADER)
    except KeyError:
        raise _fail(path, "no index header (not a latentspace index file)") from None
    if info.file_size > _MAX_HEADER_BYTES:
        raise _fail(path, "malformed header")
    try:
        header = json.loads(archive.read(_HEADER).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(path, "not a latentspace index file")
    if header.get("version") != FORMAT_VERSION:
        raise _fail(
            path,
            f"format version {header.get('version')!r}; this version of "
            f"latentspace reads version {FORMAT_VERSION}",
        )
    return header


def load(path, classes):
    """The index saved at ``path``; ``classes`` maps a backend to the class
    of its indexes."""
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise _fail(path, f"not a readable zip archive (truncated?): {exc}") from None
    with archive:
        header = _read_header(archive, path)
        try:
            return _read(archive, header, path, classes)
        except SpaceFileError:
            raise
        except Exception as exc:  # zip CRC, .npy format, FAISS, missing keys
            raise _fail(
                path, f"corrupted or truncated: {type(exc).__name__}: {exc}"
            ) from None


def _read(archive, header, path, classes):
    recorded = header.pop("checksum")
    digest = hashlib.sha256(_canonical(header))
    arrays, faiss_index = {}, None
    for name in header["members"]:
        digest.update(name.encode())
        with archive.open(name) as member:
            source = _Hashing(member, digest)
            if name == _FAISS:
                import faiss

                faiss_index = faiss.read_index(faiss.PyCallbackIOReader(source.read))
            else:
                arrays[name] = np.lib.format.read_array(source, allow_pickle=False)
            if source.read():
                raise _fail(path, f"member {name!r} has trailing bytes")
    if digest.hexdigest() != recorded.get("digest"):
        raise _fail(path, "checksum mismatch (the file was modified or damaged)")
    return _build(header, arrays, faiss_index, classes)


def _build(header, arrays, faiss_index, classes):
    """The index of a checked file; ``classes``: backend -> index class."""
    for array in arrays.values():
        array.flags.writeable = False
    models = {
        model["name"]: make_model(
            *[arrays.get(f"models/{i}.{what}.npy") for what in _MODEL_ARRAYS]
        )
        for i, model in enumerate(header["models"])
    }
    faiss = header["backend"] == "faiss"
    index = classes[header["backend"]].__new__(classes[header["backend"]])
    pair_maps = {
        source: tuple(arrays[f"pair_maps/{j}.{side}.npy"] for side in _PAIR_SIDES)
        for j, source in enumerate(header.get("pair_maps", ()))
    }
    index._setup(models, np.dtype(header["dtype"]), header["target"],
                 header["csls_k"], pair_maps=pair_maps)
    if faiss:
        index.kind = header["kind"]
        index.options = header["options"]
        index._sources = tuple(header["references"])
        index.faiss_index = faiss_index
    else:
        index.latents = arrays["latents.npy"]
        index._r_source = {
            source: arrays[f"r_source/{j}.npy"]
            for j, source in enumerate(header["references"])
        }
    return index
