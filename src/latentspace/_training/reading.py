# SPDX-License-Identifier: BSD-3-Clause
"""Rows of memory-mapped files, read from the files rather than through
their pages.

A pass over memory-mapped arrays that touches their pages as it computes
waits for the disk a page at a time, and the pages it brings in cost the
CPU that the computation needs. Here the rows of an array that views a
file (``np.memmap``, ``np.load(..., mmap_mode="r")``) are read from the
file into a buffer: through the page cache if it holds most of them,
else directly from the disk, around the page cache (``O_DIRECT``), which
costs the CPU next to nothing and keeps a pass over files larger than
memory from evicting everything else that is cached. `read_ahead` does it in one
background thread, a chunk ahead of the caller, `blocks` for blocks of
aligned arrays; `read_rows` does it at once (samples loaded whole).
"""

import ctypes
import errno
import itertools
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["blocks", "mapped_file", "read_ahead", "read_rows"]

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


def _owner(array):
    """``(mapping, owner)``: the `mmap.mmap` and the `np.memmap` that owns it,
    if ``array`` is a 2-D C-contiguous view of a file mapped by
    ``np.memmap`` (not copy-on-write, not closed); else None."""
    owner = array
    for _ in range(64):  # a chain of views; never a loop, whatever a base is
        base = getattr(owner, "base", None)
        if base is None or isinstance(base, mmap.mmap):
            break
        owner = base
    if (
        isinstance(base, mmap.mmap)
        and not base.closed
        and isinstance(owner, np.memmap)
        and owner.filename
        and owner.mode != "c"
        and array.ndim == 2
        and array.flags.c_contiguous
    ):
        return base, owner
    return None


def _position(array, owner):
    """The byte of the file at which ``array``, a view of ``owner``, starts."""
    return owner.offset + array.ctypes.data - owner.ctypes.data


def mapped_file(array):
    """``(path, position, identity)`` if ``array`` is a C-contiguous view of
    a file mapped by ``np.memmap`` (not copy-on-write): the file's name, the
    byte at which ``array`` starts in it and ``(st_dev, st_ino)`` of the file
    mapped (which the file at that name may no longer be); else None.
    """
    found = _owner(array)
    if found is None:
        return None
    identity = _mapped_identity(array.ctypes.data)
    if identity is None:
        return None
    return found[1].filename, _position(array, found[1]), identity


def _identity(fd):
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def _mincore():
    """libc's ``mincore``, or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


_MINCORE = _mincore()


def _cached(address, size):
    """Whether the page cache holds at least half of the pages of the
    ``size`` mapped bytes at ``address`` (False if it cannot be told).

    Asked of the mapping (``mincore``), which reads nothing: a read of the
    file that may not wait (``RWF_NOWAIT``) starts reading what it misses
    into the cache, beside the direct read (measured: a pass over chunks of
    16,384 rows took 2.7 times as long)."""
    if _MINCORE is None:
        return False
    start = address - address % _ALIGN
    length = address + size - start
    pages = np.empty(-(-length // _ALIGN), np.uint8)
    if _MINCORE(start, length, pages.ctypes.data):
        return False
    return 2 * np.count_nonzero(pages & 1) >= len(pages)


class _File:
    """A mapped file, opened to be read."""

    def __init__(self, fd, direct):
        self.fd = fd
        self.direct = direct  # a descriptor of direct reads, or None

    @classmethod
    def open(cls, array):
        """The `_File` of the file ``array`` views, or None if `mapped_file`
        finds none, or the file at its name cannot be opened or is not the
        file mapped (replaced since)."""
        found = mapped_file(array)
        if found is None:
            return None
        path, _, identity = found
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        if _identity(fd) != identity:
            os.close(fd)
            return None
        try:
            direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except (AttributeError, OSError):
            direct = None
        if direct is not None and _identity(direct) != identity:
            os.close(direct)
            direct = None
        return cls(fd, direct)

    def read(self, array, first, buffer, what, first_row):
        """The rows of ``array``, which starts at byte ``first`` of the file,
        read into ``buffer`` (`_buffer`) as bytes: through the page cache if
        it holds most of them, else directly from the disk (through the
        cache if that cannot be). Errors name ``what``, and the row
        (counted from ``first_row``) where a file cut short ends."""
        size, row_bytes = array.nbytes, array.shape[1] * array.itemsize
        end = first + size
        base = first - first % _ALIGN
        skip = -buffer.ctypes.data % _ALIGN
        memory = memoryview(buffer)[skip : skip + end - base + -end % _ALIGN]
        fd = self.direct
        if fd is not None and _cached(array.ctypes.data, size):
            fd = self.fd
        at = base
        while at < end:
            fd = self.fd if self.direct is None else fd
            try:
                got = os.preadv(fd, [memory[at - base :]], at)
            except OSError as exc:
                if fd == self.direct and exc.errno == errno.EINVAL:
                    self.direct = None  # refused after all: read through the cache
                    os.close(fd)
                    continue
                raise OSError(exc.errno, f"cannot read {what}: {exc.strerror}"
                              ) from exc
            if not got:
                row = first_row + (at - first) // row_bytes
                raise OSError(f"cannot read {what}: its file ends at byte {at}, "
                              f"in row {row} (was it cut short?)")
            at += got
        offset = skip + first - base
        return buffer[offset : offset + size]

    def close(self):
        for fd in (self.fd, self.direct):
            if fd is not None:
                os.close(fd)


def _buffer(pool, slot, size):
    """``pool[slot]``, memory for `_File.read` of ``size`` bytes, made anew
    if it is smaller."""
    buffer = pool.get(slot)
    if buffer is None or len(buffer) < size + 3 * _ALIGN:
        buffer = pool[slot] = np.empty(size + 3 * _ALIGN, np.uint8)
    return buffer


class _Reader:
    """The files of the mappings it meets, each opened once."""

    def __init__(self):
        self.files = {}  # id(mapping) -> (mapping, _File or None)

    def source(self, array):
        """``(file, position)`` to read ``array`` from, or None."""
        found = _owner(array) if hasattr(os, "preadv") else None
        if found is None:
            return None
        mapping, owner = found
        entry = self.files.get(id(mapping))
        if entry is None:  # the mapping is kept: its id is not reused
            entry = self.files[id(mapping)] = (mapping, _File.open(array))
        return None if entry[1] is None else (entry[1], _position(array, owner))

    def read(self, arrays, whats, first_row, pool):
        """``arrays``, those that view files read from them into the buffers
        of ``pool`` (by index), the others as they are."""
        out = list(arrays)
        for m, array in enumerate(arrays):
            found = self.source(array) if array.size else None
            if found is not None:
                file, first = found
                raw = file.read(array, first, _buffer(pool, m, array.nbytes),
                                whats[m], first_row)
                out[m] = raw.view(array.dtype).reshape(array.shape)
        return out

    def close(self):
        for _, file in self.files.values():
            if file is not None:
                file.close()
        self.files.clear()


def read_rows(arrays, whats, first_row=0):
    """``arrays`` (2-D), those that view files (`mapped_file`) read from the
    files into new memory; ``whats`` name them in errors (`OSError`), rows
    counted from ``first_row``."""
    reader = _Reader()
    try:
        return reader.read(arrays, whats, first_row, {})
    finally:
        reader.close()


def read_ahead(chunks):
    """The chunks of an iterable of ``(key, arrays, whats, first_row)``, as
    ``(key, arrays)``, taken from it in this thread, one ahead of the
    caller.

    If the arrays of the first chunk include views of files
    (`mapped_file`), one thread reads those of every chunk from the files
    (errors, `OSError`, name ``whats``, rows counted from ``first_row``),
    a chunk ahead, into two sets of buffers used in turn: as large as the
    two largest chunks' such arrays (``nbytes`` plus 3 pages each). A chunk
    is valid until the next is taken. Else the chunks are passed on as
    they are. Close the generator (`contextlib.closing`) to stop the thread
    when not every chunk is taken: it ends once the chunk it reads is read.
    """
    items = iter(chunks)
    reader = _Reader()
    try:
        item = next(items, None)
        if item is None:
            return
        if not any(reader.source(a) for a in item[1] if a.size):
            while item is not None:
                yield item[:2]
                item = next(items, None)
            return
        pools = ({}, {})

        def read(item, pool):
            key, arrays, whats, first_row = item
            return key, reader.read(arrays, whats, first_row, pool)

        name = "latentspace-read-ahead"
        with ThreadPoolExecutor(1, thread_name_prefix=name) as thread:
            pending = thread.submit(read, item, pools[0])
            try:
                for i in itertools.count(1):
                    chunk = pending.result()
                    item = next(items, None)
                    if item is not None:
                        pending = thread.submit(read, item, pools[i % 2])
                    yield chunk
                    if item is None:
                        return
            finally:
                pending.cancel()
    finally:
        reader.close()


def blocks(arrays, n, step, names):
    """The blocks of ``step`` rows of aligned 2-D ``arrays`` of ``n`` rows,
    in order: ``(start, [array[start:start + step] for array in arrays])``,
    those of files read ahead (`read_ahead`: two buffers of ``step * d *
    itemsize`` bytes and 3 pages for an ``(n, d)`` array that views a file,
    whatever ``n``); ``names`` are the arrays' models, for errors."""
    whats = [f"data for model {name!r}" for name in names]
    return read_ahead(
        (start, [array[start : start + step] for array in arrays], whats, start)
        for start in range(0, n, step)
    )
