# SPDX-License-Identifier: BSD-3-Clause
"""Saving and loading an index (`GalleryIndex.save`, `GalleryIndex.load`)."""

import hashlib
import hmac
import importlib.util
import io
import json
import os
import zipfile

import numpy as np
import pytest

from latentspace import GalleryIndex, LatentSpace, SpaceFileError
from latentspace._files import index_file
from latentspace._files.index_file import _canonical

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


def _npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def _craft(source, target, edit, key=None):
    """Copy the index file ``source`` to ``target`` after ``edit(header,
    members)`` changed its header or members (name -> bytes), with the
    checksum recomputed (signed under ``key``), as a deliberate edit would."""
    with zipfile.ZipFile(source) as archive:
        header = json.loads(archive.read("header.json"))
        members = {name: archive.read(name) for name in header["members"]}
    del header["checksum"]
    edit(header, members)
    digest = (hashlib.sha256() if key is None
              else hmac.new(key, digestmod=hashlib.sha256))
    digest.update(_canonical(header))
    for name in header["members"]:
        digest.update(name.encode())
        digest.update(members.get(name, b""))
    header["checksum"] = {"algorithm": "sha256" if key is None else "hmac-sha256",
                          "digest": digest.hexdigest()}
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("header.json", _canonical(header))
    return target


@pytest.mark.filterwarnings("ignore::latentspace.DimensionWarning")  # dim 8 > width 6
def test_an_edited_index_with_a_valid_checksum_and_inconsistent_weights_is_refused(
        tmp_path):
    """A crafted file (checksum recomputed) whose reconstruction is wider than
    its offset: refused before any kernel sees the arrays."""
    space = _space()
    rng = np.random.default_rng(1)
    space.train_projections({"a": rng.normal(size=(50, 6)) + 3,
                             "b": rng.normal(size=(50, 10)) - 1}, solver="cca")
    queries, gallery = _data()
    space.index("b", gallery).save(tmp_path / "x.index")

    def widen(header, members):
        members["models/0.reconstruction.npy"] = _npy(np.zeros((space.dim, 50)))

    crafted = _craft(tmp_path / "x.index", tmp_path / "crafted.index", widen)
    with pytest.raises(SpaceFileError, match="inconsistent model weights"):
        GalleryIndex.load(crafted)


def _set(entry, value):
    def edit(header, members):
        header[entry] = value
    return edit


def _member(name, array):
    def edit(header, members):
        members[name] = _npy(array)
    return edit


def _crafted_edits(index):
    """(label, edit, message) of deliberate edits that a recomputed checksum
    lets through the checksum: each must be refused by what it breaks."""
    n, dim = len(index), index.dim
    nan_latents = np.array(index.latents, dtype=np.float64)
    nan_latents[3, 1] = np.nan
    return [
        ("csls_k 0", _set("csls_k", 0), "malformed header entries: csls_k"),
        ("n_items text", _set("n_items", "many"), "malformed header entries: n_items"),
        ("dtype", _set("dtype", "int8"), "malformed header entries: dtype"),
        ("backend", _set("backend", "annoy"), "malformed header entries: backend"),
        ("models", _set("models", []), "malformed header entries: models"),
        ("target", _set("target", "nope"), "target is not one of its models"),
        ("references", _set("references", ["nope"]), "names models it does not hold"),
        ("members", _set("members", ["latents.npy"]), "members are not those"),
        ("more items", _set("n_items", n + 1), r"latents.npy.*\(%d, %d\)" % (n + 1, dim)),
        ("latents shape", _member("latents.npy", np.zeros((n, dim + 1))),
         "array 'latents.npy' has dtype"),
        ("latents NaN", _member("latents.npy", nan_latents),
         "'latents.npy' contains NaN or Inf"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_crafted_index_files_are_refused_with_what_is_wrong(tmp_path, case):
    """Edits with the checksum recomputed (as anyone may) pass the checksum;
    the header's entries, the members it calls for and every array's dtype,
    shape and values are checked against each other, and the edit is named."""
    _, index = _index()
    index.save(tmp_path / "x.index")
    label, edit, message = _crafted_edits(index)[case]
    crafted = _craft(tmp_path / "x.index", tmp_path / "crafted.index", edit)
    with pytest.raises(SpaceFileError, match=message):
        GalleryIndex.load(crafted)


@pytest.mark.parametrize("options", [{"nprobe": 0}, {"nlist": 10**6}, {"bogus": 1}])
def test_crafted_faiss_options_are_refused(tmp_path, options):
    pytest.importorskip("faiss")
    _, index = _index("faiss", "ivf", {"nlist": 4})
    index.save(tmp_path / "x.index")

    def edit(header, members):
        header["options"] = {**header["options"], **options}

    crafted = _craft(tmp_path / "x.index", tmp_path / "crafted.index", edit)
    with pytest.raises(SpaceFileError, match="not a valid saved index"):
        GalleryIndex.load(crafted)


def test_faiss_parses_nothing_that_fails_the_checksum(tmp_path, monkeypatch):
    """A damaged FAISS member is refused by the checksum before FAISS's
    reader sees a byte of it."""
    faiss = pytest.importorskip("faiss")
    _, index = _index("faiss", "hnsw", {"m": 8})
    index.save(tmp_path / "x.index")
    with zipfile.ZipFile(tmp_path / "x.index") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    damaged = bytearray(members["faiss.index"])
    damaged[len(damaged) // 2] ^= 0xFF
    members["faiss.index"] = bytes(damaged)
    with zipfile.ZipFile(tmp_path / "damaged.index", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    parsed = []
    original = faiss.read_index
    monkeypatch.setattr(faiss, "read_index",
                        lambda *args: parsed.append(args) or original(*args))
    with pytest.raises(SpaceFileError, match="checksum mismatch"):
        GalleryIndex.load(tmp_path / "damaged.index")
    assert parsed == []
    assert len(GalleryIndex.load(tmp_path / "x.index")) == len(index)
    assert len(parsed) == 1  # the spy sees a load that parses


@pytest.mark.parametrize("backend, kind, options", KINDS[:2])
def test_signed_index_files(tmp_path, backend, kind, options):
    """With a key the file is signed (HMAC-SHA256), as a space file: only the
    key loads it, and a crafted file signed without the key is refused."""
    space, index = _index(backend, kind, options)
    key = b"k" * 32
    index.save(tmp_path / "signed.index", key=key)
    index.save(tmp_path / "plain.index")
    queries, _ = _data()
    loaded = GalleryIndex.load(tmp_path / "signed.index", key=key)
    expected = index.search("a", queries, k=3)
    np.testing.assert_array_equal(loaded.search("a", queries, k=3).indices,
                                  expected.indices)
    with pytest.raises(SpaceFileError, match="signed with a key"):
        GalleryIndex.load(tmp_path / "signed.index")
    with pytest.raises(SpaceFileError, match="signature mismatch"):
        GalleryIndex.load(tmp_path / "signed.index", key=b"x" * 32)
    with pytest.raises(SpaceFileError, match="not signed with a key"):
        GalleryIndex.load(tmp_path / "plain.index", key=key)
    forged = _craft(tmp_path / "signed.index", tmp_path / "forged.index",
                    _set("csls_k", 3), key=b"attacker")
    with pytest.raises(SpaceFileError, match="signature mismatch"):
        GalleryIndex.load(forged, key=key)
    with pytest.raises(ValueError, match="key must be bytes"):
        index.save(tmp_path / "x.index", key="secret")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_is_refused_without_waiting(tmp_path):
    _, index = _index()
    os.mkfifo(tmp_path / "pipe.index")
    with pytest.raises(SpaceFileError, match="not a regular file"):
        GalleryIndex.load(tmp_path / "pipe.index")


def test_save_into_a_missing_directory_names_the_directory(tmp_path):
    _, index = _index()
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError) as info:
        index.save(missing / "x.index")
    assert info.value.filename == str(missing)
    assert ".tmp" not in str(info.value) and "no such directory" in str(info.value)
