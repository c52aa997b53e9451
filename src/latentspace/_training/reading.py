# SPDX-License-Identifier: BSD-3-Clause
"""Blocks of rows of aligned arrays, those of memory-mapped files read ahead.

A pass over memory-mapped arrays that touches their pages as it computes
waits for the disk a page at a time, and the pages it brings in cost the
CPU that the computation needs. `blocks` reads the next block of every
array that views a file (``np.memmap``, ``np.load(..., mmap_mode="r")``)
from the file, in one background thread, while the caller computes on the
current block: from the page cache if the block is there, else directly
from the disk into the buffer, around the page cache (``O_DIRECT``), which
costs the CPU next to nothing and keeps a pass over files larger than memory
from evicting everything else that is cached.
"""

import errno
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["blocks", "mapped_file"]

# Alignment of the offsets, lengths and memory of direct reads: a page, at
# least the logical block size of a disk.
_ALIGN = mmap.PAGESIZE


def _mapped_identity(address):
    """``(st_dev, st_ino)`` of the file mapped at ``address`` in this process
    (``/proc/self/maps``), or None if it cannot be told."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                low, high = (int(a, 16) for a in fields[0].split("-"))
                if low <= address < high:
                    major, minor = (int(x, 16) for x in fields[3].split(":"))
                    return os.makedev(major, minor), int(fields[4])
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return None


def mapped_file(array):
    """``(path, position, identity)`` if ``array`` is a C-contiguous view of
    a file mapped by ``np.memmap`` (not copy-on-write): the file's name, the
    byte at which ``array`` starts in it and ``(st_dev, st_ino)`` of the file
    mapped (which the file at that name may no longer be); else None.
    """
    owner = array
    for _ in range(64):  # a chain of views; never a loop, whatever a base is
        base = getattr(owner, "base", None)
        if base is None or isinstance(base, mmap.mmap):
            break
        owner = base
    if not (
        isinstance(base, mmap.mmap)
        and isinstance(owner, np.memmap)
        and owner.filename
        and owner.mode != "c"
        and array.ndim == 2
        and array.flags.c_contiguous
    ):
        return None
    if base.closed:
        return None
    identity = _mapped_identity(array.ctypes.data)
    if identity is None:
        return None
    return (owner.filename, owner.offset + array.ctypes.data - owner.ctypes.data,
            identity)


def _identity(fd):
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


class _File:
    """The rows of an array that views a file, read from the file."""

    def __init__(self, array, fd, position, what):
        self.fd, self.position, self.what = fd, position, what
        self.dtype, self.width = array.dtype, array.shape[1]
        self.row_bytes = array.shape[1] * array.itemsize
        self.direct = None  # a descriptor of direct reads, if the file system has them

    @classmethod
    def open(cls, array, what):
        """The `_File` of ``array``, or None if `mapped_file` finds no file,
        or the file at its name cannot be opened or is not the file mapped
        (replaced since)."""
        found = mapped_file(array)
        if found is None:
            return None
        path, position, identity = found
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        if _identity(fd) != identity:
            os.close(fd)
            return None
        file = cls(array, fd, position, what)
        try:
            file.direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except (AttributeError, OSError):
            pass
        else:
            if _identity(file.direct) != identity:
                os.close(file.direct)
                file.direct = None
        return file

    def buffer(self, rows):
        """Memory for `read` of up to ``rows`` rows."""
        return np.empty(rows * self.row_bytes + 3 * _ALIGN, np.uint8)

    def read(self, start, rows, buffer):
        """Rows ``start`` to ``start + rows`` of the array, read into
        ``buffer``: what the page cache holds of them, then the rest
        directly from the disk (through the cache if it cannot be)."""
        first = self.position + start * self.row_bytes
        end = first + rows * self.row_bytes
        base = first - first % _ALIGN
        skip = -buffer.ctypes.data % _ALIGN
        memory = memoryview(buffer)[skip : skip + end - base + -end % _ALIGN]
        at = base
        cached = getattr(os, "RWF_NOWAIT", None)
        while cached is not None and at < end:
            try:
                got = os.preadv(self.fd, [memory[at - base :]], at, cached)
            except OSError:  # some of it is not cached (or no such reads)
                break
            if not got:
                break
            at += got
        if self.direct is not None:
            at -= at % _ALIGN
        while at < end:
            fd = self.fd if self.direct is None else self.direct
            try:
                got = os.preadv(fd, [memory[at - base :]], at)
            except OSError as exc:
                if fd == self.direct and exc.errno == errno.EINVAL:
                    self.direct = None  # refused after all: read through the cache
                    os.close(fd)
                    continue
                raise OSError(exc.errno, f"cannot read {self.what}: {exc.strerror}"
                              ) from exc
            if not got:
                row = (at - self.position) // self.row_bytes
                raise OSError(f"cannot read {self.what}: its file ends at byte {at}, "
                              f"in row {row} (was it cut short?)")
            at += got
        offset = skip + first - base
        rows_bytes = buffer[offset : offset + rows * self.row_bytes]
        return rows_bytes.view(self.dtype).reshape(rows, self.width)

    def close(self):
        for fd in (self.fd, self.direct):
            if fd is not None:
                os.close(fd)


def blocks(arrays, n, step, names):
    """The blocks of ``step`` rows of aligned 2-D ``arrays`` of ``n`` rows,
    in order: ``(start, [array[start:start + step] for array in arrays])``.

    The rows of an array that is a C-contiguous view of a memory-mapped file
    (`mapped_file`) are read from the file by one thread, a block ahead of
    the caller, into two buffers used in turn: ``2 * (step * d * itemsize
    + 3 pages)`` bytes for an ``(n, d)`` array, whatever ``n``. Such a block
    is valid until the next one is taken. Other arrays are sliced. Close the
    generator (`contextlib.closing`) to stop the thread when not every
    block is taken: it then ends once the block it reads is read.

    Parameters
    ----------
    arrays : sequence of (n, d_m) array-likes
    n, step : int
    names : sequence of str
        The models of the arrays, named by the errors of a read (`OSError`).
    """
    starts = range(0, n, step)
    files = {}
    try:
        if hasattr(os, "preadv"):
            for m, array in enumerate(arrays):
                file = _File.open(array, f"data for model {names[m]!r}")
                if file is not None:
                    files[m] = file
        if not files or not starts:
            for start in starts:
                yield start, [array[start : start + step] for array in arrays]
            return
        buffers = [{m: file.buffer(min(step, n)) for m, file in files.items()}
                   for _ in range(min(2, len(starts)))]

        def read(start, into):
            block = [array[start : start + step] for array in arrays]
            for m, file in files.items():
                block[m] = file.read(start, len(block[m]), into[m])
            return block

        reader = ThreadPoolExecutor(1, thread_name_prefix="latentspace-read-ahead")
        with reader:
            pending = reader.submit(read, 0, buffers[0])
            try:
                for i, start in enumerate(starts):
                    block = pending.result()
                    if start + step < n:
                        pending = reader.submit(read, start + step, buffers[1 - i % 2])
                    yield start, block
            finally:
                pending.cancel()
    finally:
        for file in files.values():
            file.close()
