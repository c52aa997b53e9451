# SPDX-License-Identifier: BSD-3-Clause
"""``.npz`` archives: written atomically, read as untrusted input.

Reading opens a regular file only (without blocking), reads each ``.npy``
member into an array of the shape and dtype its caller expects after checking
the member's declared size and ``.npy`` header, and parses JSON of bounded
integers and nesting; every failure is a `SpaceFileError` naming the path.
Writing goes to a temporary file in the target's directory, which is flushed,
fsynced and renamed over the target.
"""

import errno
import hashlib
import hmac
import json
import math
import os
import secrets
import stat
import zipfile

import numpy as np

from .._exceptions import InvalidParameterError, SpaceFileError

__all__ = [
    "MAX_HEADER_BYTES",
    "check_algorithm",
    "check_digest",
    "check_key",
    "fail",
    "new_digest",
    "npy_members",
    "open_regular",
    "parse_json",
    "read_npy",
    "write_atomically",
    "write_npz",
]

# Largest header we read (the JSON of a space with many thousand models).
MAX_HEADER_BYTES = 64 << 20
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


def fail(path, problem):
    return SpaceFileError(f"cannot load {os.fspath(path)!r}: {problem}")


def check_key(key):
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


def new_digest(key):
    """A SHA-256 hash (an HMAC-SHA256 under ``key``) and its algorithm's name
    in a file's header."""
    if key is None:
        return hashlib.sha256(), "sha256"
    return hmac.new(key, digestmod=hashlib.sha256), "hmac-sha256"


def check_algorithm(algorithm, key, path):
    """Raise unless a file whose checksum is of ``algorithm`` can be checked
    with ``key`` (a signed file needs its key; a key needs a signed file)."""
    if algorithm not in ("sha256", "hmac-sha256"):
        raise fail(path, f"unknown checksum algorithm {algorithm!r:.40}")
    if key is None and algorithm == "hmac-sha256":
        raise fail(path, "it is signed with a key (HMAC-SHA256): pass its key")
    if key is not None and algorithm == "sha256":
        raise fail(
            path,
            "it is not signed with a key (its checksum is a plain SHA-256), so "
            "it cannot be authenticated",
        )


def check_digest(found, recorded, key, path):
    """Raise unless the hex digest ``found`` is the ``recorded`` one."""
    if not (isinstance(recorded, str) and hmac.compare_digest(found, recorded)):
        raise fail(
            path,
            "checksum mismatch: the file was modified or corrupted after it was "
            "written"
            if key is None
            else "signature mismatch: the file was modified after it was signed, "
            "or the key is not the one it was signed with",
        )


def open_regular(path):
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
        raise fail(path, "it is a directory") from None
    try:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise fail(path, "not a regular file (a FIFO, a device or a socket?)")
        if nonblocking:
            os.set_blocking(file.fileno(), True)
    except BaseException:
        file.close()
        raise
    return file, info.st_size


def npy_members(archive, path):
    """Array name (a ``.npy`` member's name without the suffix, any other
    member's as it is) -> `zipfile.ZipInfo`, each name once."""
    members = {}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if name in members:
            raise fail(path, f"member {info.filename!r:.80} appears twice")
        members[name] = info
    return members


def read_npy(archive, info, dtype, shape, path):
    """The array of the ``.npy`` member ``info``, of ``dtype`` and ``shape``
    (None: 1-D, at most `MAX_HEADER_BYTES`), checked against the member's
    declared size and its ``.npy`` header before its data is read."""
    name = info.filename.removesuffix(".npy")
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise fail(
            path,
            f"array {name!r} is compressed or encrypted (a saved space stores "
            "its arrays as they are)",
        )
    expected = "" if shape is None else f"{dtype} {shape}, "
    problem = f"array {name!r} is not {expected}as the header declares"
    if shape is None:
        problem = "not a latentspace file (malformed header member)"
        limit = MAX_HEADER_BYTES
    else:
        limit = math.prod(shape) * dtype.itemsize
    if not (info.file_size <= limit + _MAX_NPY_HEADER + 12 and (
            shape is None or info.file_size >= limit)):
        raise fail(path, f"{problem} (member of {info.file_size} bytes)")
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                read = np.lib.format.read_array_header_1_0
            elif version == (2, 0):
                read = np.lib.format.read_array_header_2_0
            else:
                raise fail(path, f"{problem} (.npy format {version})")
            found, fortran, found_dtype = read(member, max_header_size=_MAX_NPY_HEADER)
            if shape is None and len(found) == 1 and found[0] <= limit:
                shape = found
            if fortran or found_dtype != dtype or found != shape:
                raise fail(
                    path,
                    f"array {name!r} has dtype {found_dtype} and shape {found}; "
                    f"the header says {dtype} and {shape}"
                    if expected
                    else problem,
                )
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            if info.file_size != member.tell() + nbytes:
                raise fail(path, f"{problem} (member of {info.file_size} bytes)")
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
        raise fail(
            path,
            f"array data is corrupted or truncated: {type(exc).__name__}: {exc}",
        ) from None
    return array


def parse_json(raw, path):
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
        raise fail(path, f"the header is not valid JSON ({exc})") from None
    level = [header]
    for _ in range(_MAX_JSON_DEPTH):
        level = [
            item
            for value in level if isinstance(value, (dict, list))
            for item in (value.values() if isinstance(value, dict) else value)
        ]
    if any(isinstance(value, (dict, list)) for value in level):
        raise fail(path, f"the header nests more than {_MAX_JSON_DEPTH} levels")
    return header


def _json_int(text):
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _json_constant(name):
    raise ValueError(f"{name} is not a number of JSON")


class _Archive(zipfile.ZipFile):
    """A zip archive being written that an interrupt inside its constructor
    leaves without a complaint when it is collected (`zipfile.ZipFile`'s
    ``__del__`` assumes a complete object; the caller discards the file)."""

    def __del__(self):
        if "_writing" in self.__dict__:  # the constructor got that far
            super().__del__()


def write_npz(file, members):
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
