"""Index files: round trips, the header fields, checksum, atomic writes, view() and verify()."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest

from medhash_sdk import _index_file
from medhash_sdk.codes import brute_force_search
from medhash_sdk.exceptions import IndexFileError, ModelMismatchError
from medhash_sdk.index import Index

FP = "sha256:" + "ab" * 32


def _codes(n, nbytes=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, nbytes), dtype=np.uint8)


def _same(a: Index, b: Index) -> None:
    assert (a.nbits, a.fingerprint, a.id_type, len(a)) == (b.nbits, b.fingerprint, b.id_type, len(b))
    assert np.array_equal(a._codes.data, b._codes.data)
    assert a.ids.tolist() == b.ids.tolist()


@pytest.fixture
def int_index():
    idx = Index(64, fingerprint=FP)
    idx.add(_codes(300), ids=np.arange(1000, 1300) * 7)
    idx.remove([1000 * 7, 1010 * 7])
    return idx


@pytest.fixture
def str_index():
    idx = Index(128)
    ids = [f"1.2.840.{i}.{i * i}" for i in range(200)] + ["ACC-ü-東京", "x"]
    idx.add(_codes(202, 16), ids=ids)
    idx.remove(["1.2.840.5.25"])
    return idx


@pytest.mark.parametrize("which", ["int_index", "str_index"])
def test_round_trip_load_and_view(which, request, tmp_path):
    idx = request.getfixturevalue(which)
    path = tmp_path / "a.mhi"
    idx.save(path)
    loaded = Index.load(path)
    _same(idx, loaded)
    q = _codes(5, idx.nbits // 8, seed=9)
    want = idx.search(q, k=7)
    for other in (loaded, Index.view(path)):
        got = other.search(q, k=7)
        assert got.ids.tolist() == want.ids.tolist()
        assert np.array_equal(got.distances, want.distances)
        assert list(other.ids) == list(idx.ids)
    view = Index.view(str(path))
    view.verify()
    _same(idx, view)
    view.close()


def test_ids_survive_and_auto_ids_continue_after_load(tmp_path):
    idx = Index(32)
    idx.add(_codes(3, 4), ids=[5, 9, 2])
    idx.remove([9])  # the largest id ever given is still 9: auto ids start at 10
    idx.save(tmp_path / "a")
    loaded = Index.load(tmp_path / "a")
    assert loaded.ids.tolist() == [5, 2]
    assert loaded.add(_codes(2, 4)).tolist() == [10, 11]


def test_empty_index_round_trip(tmp_path):
    Index(16, fingerprint=FP).save(tmp_path / "e")
    for idx in (Index.load(tmp_path / "e"), Index.view(tmp_path / "e")):
        assert len(idx) == 0 and idx.nbits == 16 and idx.fingerprint == FP
        res = idx.search(np.zeros(2, np.uint8), k=3)
        assert res.ids.tolist() == [-1, -1, -1] and res.distances.tolist() == [-1, -1, -1]
    loaded = Index.load(tmp_path / "e")
    loaded.add(_codes(1, 2), ids=["a"])  # an empty index takes either id type
    assert loaded.id_type == "str"


def test_header_fields(int_index, tmp_path):
    path = tmp_path / "a.mhi"
    int_index.save(path)
    raw = path.read_bytes()
    magic, version, hsize, nbits, id_code, count, next_id, fsize = struct.unpack_from("<8sIIIIQqQ", raw)
    assert magic == b"MHINDEX\x00" and version == _index_file.FORMAT_VERSION == 1 and hsize == 192
    assert (nbits, id_code, count, fsize) == (64, 1, 298, len(raw))
    assert next_id == 1299 * 7 + 1
    h = _index_file.parse_header(raw[:192], len(raw))
    off, size = h.sections["fingerprint"]
    assert raw[off:off + size].decode() == FP
    off, size = h.sections["codes"]
    assert off % 64 == 0 and size == 298 * 8
    assert raw[off:off + size] == int_index._codes.data.tobytes()


def _flip(path, byte, bit=0):
    raw = bytearray(path.read_bytes())
    raw[byte] ^= 1 << bit
    path.write_bytes(bytes(raw))


def test_flipped_bit_in_codes_caught_by_load_and_verify_not_by_view(int_index, tmp_path):
    path = tmp_path / "a.mhi"
    int_index.save(path)
    h = _index_file.parse_header(path.read_bytes()[:192], path.stat().st_size)
    _flip(path, h.sections["codes"][0] + 100, 3)
    with pytest.raises(IndexFileError, match="checksum"):
        Index.load(path)
    view = Index.view(path)  # header and sizes only: it must not read the codes
    assert len(view) == len(int_index)
    with pytest.raises(IndexFileError, match="checksum"):
        view.verify()


def test_damaged_files_raise_index_file_error(int_index, tmp_path):
    path = tmp_path / "a.mhi"
    int_index.save(path)
    raw = path.read_bytes()
    cases = {
        "empty": b"",
        "tiny": raw[:10],
        "half header": raw[:100],
        "header only": raw[:192],
        "truncated": raw[:-1],
        "extended": raw + b"\0",
        "wrong magic": b"NOTANIDX" + raw[8:],
        "text": b"hello world\n" * 50,
        "flipped nbits": raw[:16] + struct.pack("<I", 72) + raw[20:],
    }
    for name, data in cases.items():
        path.write_bytes(data)
        for opener in (Index.load, Index.view):
            with pytest.raises(IndexFileError):
                opener(path)
    path.write_bytes(b"NOTANIDX" + raw[8:])
    with pytest.raises(IndexFileError, match="not a medhash index"):
        Index.load(path)
    path.write_bytes(raw[:-5])
    with pytest.raises(IndexFileError, match="truncated"):
        Index.load(path)


def _with_version(raw: bytes, version: int) -> bytes:
    head = bytearray(raw[:192])
    struct.pack_into("<I", head, 8, version)
    struct.pack_into("<I", head, 152, 0)
    struct.pack_into("<I", head, 152, zlib.crc32(bytes(head)))
    return bytes(head) + raw[192:]


def test_format_version_dispatch(int_index, tmp_path):
    path = tmp_path / "a.mhi"
    int_index.save(path)
    raw = path.read_bytes()
    assert sorted(_index_file._PARSERS) == [1]
    path.write_bytes(_with_version(raw, 2))
    with pytest.raises(IndexFileError, match="newer.*upgrade medhash-sdk"):
        Index.load(path)
    path.write_bytes(_with_version(raw, 0))
    with pytest.raises(IndexFileError, match="not supported.*save"):
        Index.view(path)


def test_header_crc_catches_header_edits_in_view(int_index, tmp_path):
    path = tmp_path / "a.mhi"
    int_index.save(path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<Q", raw, 24, 297)  # count one smaller, CRC not updated
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError, match="header"):
        Index.view(path)


def test_fingerprint_checked_on_load_and_view(int_index, tmp_path):
    path = tmp_path / "a.mhi"
    int_index.save(path)
    assert Index.load(path, fingerprint=FP).fingerprint == FP
    for opener in (Index.load, Index.view):
        with pytest.raises(ModelMismatchError, match="another model"):
            opener(path, fingerprint="sha256:" + "cd" * 32)


def test_view_is_read_only_and_can_be_saved_elsewhere(int_index, tmp_path):
    int_index.save(tmp_path / "a")
    with Index.view(tmp_path / "a") as view:
        assert view.read_only
        with pytest.raises(ValueError, match="read-only view.*Index.load"):
            view.add(_codes(1))
        with pytest.raises(ValueError, match="read-only view"):
            view.remove([1001 * 7])
        assert 1001 * 7 in view and 1000 * 7 not in view
        view.save(tmp_path / "b")
    _same(int_index, Index.load(tmp_path / "b"))
    assert len(view) == 0  # closed


def test_view_search_matches_reference(tmp_path):
    codes = _codes(5000, 32, seed=3)
    idx = Index(256)
    idx.add(codes)
    idx.save(tmp_path / "a")
    view = Index.view(tmp_path / "a")
    q = _codes(4, 32, seed=4)
    rows, dist = brute_force_search(q, codes, 20)
    res = view.search(q, k=20, threads=2)
    assert np.array_equal(res.ids, rows) and np.array_equal(res.distances, dist)


def test_save_is_atomic_and_fsynced(int_index, str_index, tmp_path, monkeypatch):
    path = tmp_path / "a.mhi"
    int_index.save(path)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    str_index.save(path)
    assert len(synced) == 2  # the temp file, then the directory
    assert os.listdir(tmp_path) == ["a.mhi"]  # no temp file left behind

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        int_index.save(path)
    assert os.listdir(tmp_path) == ["a.mhi"]
    _same(str_index, Index.load(path))  # the previous file is untouched


def test_load_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        Index.view(tmp_path / "nope")


def test_load_checks_contents_behind_a_valid_checksum(tmp_path):
    """A file crafted with a correct checksum but inconsistent string offsets is refused."""
    idx = Index(8)
    idx.add(_codes(3, 1), ids=["a", "b", "c"])
    store = idx._ids
    bad_offsets = np.array([0, 2, 1, 3], dtype=np.int64)
    _index_file.write(tmp_path / "x", nbits=8, id_type="str", next_id=0, fingerprint=None,
                      codes=idx._codes.data, ids=bad_offsets, blob=store.blob.data, hashes=store.hashes.data)
    with pytest.raises(IndexFileError, match="offsets"):
        Index.load(tmp_path / "x")
    with pytest.raises(IndexFileError):
        Index.view(tmp_path / "x").verify()
