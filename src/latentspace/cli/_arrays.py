# SPDX-License-Identifier: BSD-3-Clause
"""Arrays in and out: the NumPy files named on the command line, and the
files and lines the commands write."""

import os

import numpy as np

from .._files.archive import write_atomically
from ._common import UsageError, check_writable


def read_matrix(spec, what):
    """The 2-D array of ``FILE.npy``, ``FILE.npz`` or ``FILE.npz:KEY``
    (memory-mapped if .npy)."""
    path, key = spec, None
    if not os.path.exists(path) and ".npz:" in spec:
        path, _, key = spec.rpartition(":")
    if not os.path.exists(path):
        raise UsageError(f"{what}: no such file {path!r}")
    if os.path.isdir(path):
        raise UsageError(f"{what}: {path!r} is a directory, not a .npy/.npz file")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(
            f"{what}: {path!r} is not a readable NumPy .npy/.npz file ({exc})"
        ) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = loaded.files
            if key is None:
                if len(keys) != 1:
                    raise UsageError(
                        f"{what}: {path!r} holds {len(keys)} arrays "
                        f"({', '.join(keys[:8]) or 'none'}); pick one as "
                        f"{path}:KEY"
                    )
                key = keys[0]
            if key not in keys:
                raise UsageError(
                    f"{what}: {path!r} has no array {key!r} "
                    f"(it holds {', '.join(keys[:8]) or 'none'})"
                )
            try:
                array = loaded[key]
            except (ValueError, OSError, EOFError) as exc:
                raise UsageError(f"{what}: cannot read {spec!r} ({exc})") from None
            if not isinstance(array, np.ndarray):  # a member that is not .npy
                raise UsageError(f"{what}: {spec!r} is not a NumPy array (.npy)")
    elif key is not None:
        raise UsageError(f"{what}: {path!r} is a .npy file; drop ':{key}'")
    else:
        array = loaded
    if array.ndim != 2:
        raise UsageError(
            f"{what}: {spec!r} must be a 2-D array (one row per item), "
            f"got shape {array.shape}"
        )
    if array.dtype.kind not in "iuf":
        raise UsageError(
            f"{what}: {spec!r} must hold real numbers, got dtype {array.dtype}"
        )
    return array


def read_models(pairs):
    """``{name: array}`` of ``NAME=FILE`` arguments."""
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"model {repeated[0]!r} is given twice")
    return {name: read_matrix(path, f"model {name!r}") for name, path in pairs}


def read_masks(pairs):
    """The ``observed`` mapping of ``--observed NAME=FILE`` options (the
    library checks the names, dtypes and shapes)."""
    masks = {}
    for name, path in pairs:
        if not os.path.isfile(path):
            raise UsageError(f"--observed {name}: no such file {path!r}")
        try:
            mask = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UsageError(
                f"--observed {name}: {path!r} is not a readable .npy file ({exc})"
            ) from None
        if not isinstance(mask, np.ndarray):
            mask.close()
            raise UsageError(
                f"--observed {name}: {path!r} must be a .npy file, got an .npz archive"
            )
        masks[name] = mask
    return masks or None


def write_output(path, arrays):
    """Save one array (``.npy``) or several (``.npz``) at ``path``, atomically
    (a full disk leaves an existing file as it was)."""
    check_writable(path)
    if path.endswith(".npz"):
        write_atomically(path, lambda file: np.savez(file, **arrays))
    else:
        if len(arrays) != 1:
            raise UsageError(f"{path!r}: several arrays need a .npz output file")
        write_atomically(path, lambda file: np.save(file, *arrays.values()))


def show_hits(args, scores, indices, n_items, n_queries):
    """Save the hits with -o, else print the first queries' hits."""
    if args.output:
        write_output(args.output, {"indices": indices, "scores": scores})
        print(
            f"top {indices.shape[1]} of {n_items} items for {n_queries} "
            f"queries: {args.output} (arrays 'scores' and 'indices', one row per "
            "query, best first)"
        )
        return
    shown = min(len(indices), args.show)
    for i in range(shown):
        hits = ", ".join(
            f"{j} ({s:.3f})" for j, s in zip(indices[i], scores[i]) if j >= 0
        )
        print(f"query {i}: {hits}")
    if shown < len(indices):
        print(f"... {len(indices) - shown} more queries; use -o FILE.npz to save all")
