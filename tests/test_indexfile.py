# SPDX-License-Identifier: BSD-3-Clause
"""Saving and loading an index (`GalleryIndex.save`, `GalleryIndex.load`)."""

import importlib.util
import io
import os
import zipfile

import numpy as np
import pytest

from latentspace import GalleryIndex, LatentSpace, SpaceFileError
from latentspace._files import index_file

HAVE_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed")
KINDS = [
    ("exact", "flat", None),
    pytest.param("faiss", "flat", None, marks=needs_faiss),
    pytest.param("faiss", "hnsw", {"m": 8, "ef_search": 20}, marks=needs_faiss),
    pytest.param("faiss", "ivf", {"nlist": 4, "nprobe": 2}, marks=needs_faiss),
]


def _space(dtype="float64"):
    space = LatentSpace(8, dtype=dtype, seed=5)
    space.register("a", 6)
    space.register("b", 10)
    space.register("c", 3)
    return space


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(37, 6)), rng.normal(size=(200, 10))


def _index(backend="exact", kind="flat", options=None, dtype="float64"):
    space = _space(dtype)
    queries, gallery = _data()
    index = space.index("b", gallery, backend=backend, kind=kind, options=options,
                        references={"a": queries[:20]}, csls_k=7)
    return space, index


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend, kind, options", KINDS)
def test_round_trip(tmp_path, backend, kind, options, dtype):
    space, index = _index(backend, kind, options, dtype)
    queries, gallery = _data()
    path = tmp_path / "corpus.index"
    index.save(path)
    loaded = GalleryIndex.load(path)
    assert type(loaded) is type(index) and loaded.backend == backend
    assert (loaded.target, loaded.csls_k, len(loaded)) == ("b", 7, 200)
    assert loaded.references == ("a",) and loaded.dtype == np.dtype(dtype)
    if backend == "faiss":
        assert loaded.kind == kind and loaded.options == index.options
    else:
        np.testing.assert_array_equal(loaded.latents, index.latents)
        assert not loaded.latents.flags.writeable
    for method in ("cosine", "csls"):
        for source, rows in (("a", queries), ("b", gallery[:9])):
            if method == "csls" and source == "b" and backend == "faiss":
                continue  # no reference of b in a FAISS index
            want = index.search(source, rows, k=5, method=method)
            got = loaded.search(source, rows, k=5, method=method)
            np.testing.assert_array_equal(got.indices, want.indices)
            np.testing.assert_array_equal(got.scores, want.scores)
    # The loaded index holds every model's weights, also those of "c".
    for name in ("a", "b", "c"):
        for want, got in zip(space.weights(name),
                             (loaded._models[name].projection,
                              loaded._models[name].reconstruction)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.filterwarnings("ignore::latentspace.DimensionWarning")  # dim 8 > width 6
def test_offsets_are_kept(tmp_path):
    space = _space()
    rng = np.random.default_rng(1)
    space.train_projections(
        {"a": rng.normal(size=(50, 6)) + 3, "b": rng.normal(size=(50, 10)) - 1},
        solver="cca",
    )
    queries, gallery = _data()
    index = space.index("b", gallery)
    index.save(tmp_path / "x.index")
    loaded = GalleryIndex.load(tmp_path / "x.index")
    np.testing.assert_array_equal(loaded._models["a"].offset, space.offset("a"))
    np.testing.assert_array_equal(
        loaded.search("a", queries, k=3).indices, index.search("a", queries, k=3).indices
    )


@pytest.mark.parametrize("backend, kind, options", KINDS[:2])
def test_damaged_files_are_refused(tmp_path, backend, kind, options):
    _, index = _index(backend, kind, options)
    path = tmp_path / "x.index"
    index.save(path)
    data = path.read_bytes()
    # A flipped byte in the middle of the data (a member, not the directory).
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x01
    (tmp_path / "flipped.index").write_bytes(bytes(flipped))
    with pytest.raises(SpaceFileError, match="not a valid saved index"):
        GalleryIndex.load(tmp_path / "flipped.index")
    (tmp_path / "short.index").write_bytes(data[: len(data) // 2])
    with pytest.raises(SpaceFileError, match="truncated"):
        GalleryIndex.load(tmp_path / "short.index")


def test_an_edited_member_with_a_valid_crc_is_refused(tmp_path):
    _, index = _index()
    path = tmp_path / "x.index"
    index.save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    latents = np.load(io.BytesIO(members["latents.npy"])).copy()
    latents[0, 0] += 1e-3
    buffer = io.BytesIO()
    np.save(buffer, latents)
    members["latents.npy"] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "edited.index", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(SpaceFileError, match="checksum mismatch"):
        GalleryIndex.load(tmp_path / "edited.index")


def test_other_files_are_refused(tmp_path):
    space = _space()
    space.save(tmp_path / "space.npz")
    with pytest.raises(SpaceFileError, match="no index header"):
        GalleryIndex.load(tmp_path / "space.npz")
    (tmp_path / "text.index").write_text("hello")
    with pytest.raises(SpaceFileError, match="not a readable zip archive"):
        GalleryIndex.load(tmp_path / "text.index")
    with pytest.raises(FileNotFoundError):
        GalleryIndex.load(tmp_path / "missing.index")


def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    _, index = _index()
    path = tmp_path / "x.index"
    index.save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(index_file.np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.index"]  # no temporary file left


@pytest.mark.filterwarnings("ignore::latentspace.DimensionWarning")  # dim 8 > width 6
def test_an_edited_index_with_a_valid_checksum_and_inconsistent_weights_is_refused(
        tmp_path):
    """A crafted file (checksum recomputed) whose reconstruction is wider than
    its offset: refused before any kernel sees the arrays."""
    import hashlib
    import io
    import json
    import zipfile

    from latentspace import SpaceFileError
    from latentspace._files.index_file import _canonical

    space = _space()
    rng = np.random.default_rng(1)
    space.train_projections({"a": rng.normal(size=(50, 6)) + 3,
                             "b": rng.normal(size=(50, 10)) - 1}, solver="cca")
    queries, gallery = _data()
    space.index("b", gallery).save(tmp_path / "x.index")
    with zipfile.ZipFile(tmp_path / "x.index") as archive:
        header = json.loads(archive.read("header.json"))
        members = {name: archive.read(name) for name in header["members"]}
    wide = np.zeros((space.dim, 50))
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, wide)
    members["models/0.reconstruction.npy"] = buffer.getvalue()
    del header["checksum"]
    digest = hashlib.sha256(_canonical(header))
    for name in header["members"]:
        digest.update(name.encode())
        digest.update(members[name])
    header["checksum"] = {"algorithm": "sha256", "digest": digest.hexdigest()}
    with zipfile.ZipFile(tmp_path / "crafted.index", "w") as archive:
        for name in header["members"]:
            archive.writestr(name, members[name])
        archive.writestr("header.json", _canonical(header))
    with pytest.raises(SpaceFileError, match="inconsistent model weights"):
        GalleryIndex.load(tmp_path / "crafted.index")


def test_save_into_a_missing_directory_names_the_directory(tmp_path):
    _, index = _index()
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError) as info:
        index.save(missing / "x.index")
    assert info.value.filename == str(missing)
    assert ".tmp" not in str(info.value) and "no such directory" in str(info.value)
