"""Index: exact search against the numpy reference, ids, masks, ties, arguments, threads."""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

import medhash_sdk
from medhash_sdk import _ids, index as index_mod
from medhash_sdk.codes import brute_force_search, hamming_distances, pack_codes
from medhash_sdk.exceptions import ModelMismatchError
from medhash_sdk.index import Index, SearchResult


def _codes(n, nbytes=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, nbytes), dtype=np.uint8)


def _clustered(n, nbytes, seed=0):
    """Few distinct codes, so many exact ties."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, (5, nbytes), dtype=np.uint8)
    return centres[rng.integers(0, 5, n)]


def test_public_names():
    assert medhash_sdk.Index is Index and medhash_sdk.SearchResult is SearchResult


@pytest.mark.parametrize("nbits", [8, 24, 64, 72, 128, 256, 512])
def test_search_equals_brute_force(nbits):
    nb = nbits // 8
    codes = _clustered(700, nb, seed=nbits) if nbits % 16 else _codes(700, nb, seed=nbits)
    idx = Index(nbits)
    ids = idx.add(codes)
    assert ids.tolist() == list(range(700))
    q = np.concatenate([codes[:3], _codes(5, nb, seed=1)])
    for k in (1, 10, 699, 700, 1000):
        rows, dist = brute_force_search(q, codes, k)
        for threads in (1, 2, 0):
            res = idx.search(q, k=k, threads=threads)
            assert res.ids.shape == res.distances.shape == (8, k)
            assert res.distances.dtype == np.int32 and res.ids.dtype == np.int64
            assert np.array_equal(res.ids, rows) and np.array_equal(res.distances, dist)
    one = idx.search(q[0], k=5)
    assert one.ids.shape == (5,) and one.ids.tolist() == brute_force_search(q[:1], codes, 5)[0][0].tolist()


def test_padding_when_fewer_than_k():
    idx = Index(16)
    res = idx.search(np.zeros(2, np.uint8), k=3)  # empty index: no engine call needed
    assert res.ids.tolist() == [-1] * 3 and res.distances.tolist() == [-1] * 3
    idx.add(np.array([[0, 1], [0, 3]], np.uint8), ids=["a", "b"])
    res = idx.search(np.zeros((1, 2), np.uint8), k=4)
    assert res.ids.dtype == object
    assert res.ids.tolist() == [["a", "b", None, None]] and res.distances.tolist() == [[1, 2, -1, -1]]
    res = idx.search(np.zeros((0, 2), np.uint8), k=4)
    assert res.ids.shape == (0, 4)


def test_ties_rank_by_insertion_order_through_remove():
    """Equal distances: the earlier-added item first, whatever its id; still so after remove()."""
    code = np.full((1, 8), 7, np.uint8)
    ids = [50, 10, 40, 20, 30, 0]
    idx = Index(64)
    idx.add(np.repeat(code, 6, axis=0), ids=ids)
    assert idx.search(code[0], k=6).ids.tolist() == ids
    idx.remove([40, 50])
    idx.add(code, ids=[5])
    assert idx.search(code[0], k=6).ids.tolist() == [10, 20, 30, 0, 5, -1]
    assert idx.search(code[0], k=6).distances.tolist() == [0] * 5 + [-1]

    sidx = Index(64)
    sidx.add(np.repeat(code, 4, axis=0), ids=["z", "b", "y", "a"])
    sidx.remove("b")
    assert sidx.search(code[0], k=3).ids.tolist() == ["z", "y", "a"]


def test_ties_with_random_codes_after_removes_match_reference():
    codes = _clustered(400, 4, seed=5)
    idx = Index(32)
    idx.add(codes, ids=np.arange(400)[::-1] * 3)  # ids decreasing: id order != insertion order
    gone = np.random.default_rng(0).choice(400, 150, replace=False)
    idx.remove((399 - gone) * 3)
    kept = np.setdiff1d(np.arange(400), gone)
    q = codes[:4]
    rows, dist = brute_force_search(q, codes[kept], 50)
    res = idx.search(q, k=50)
    assert np.array_equal(res.distances, dist)
    assert np.array_equal(res.ids, (399 - kept[rows]) * 3)


def test_allow_and_deny_masks_match_reference():
    codes = _codes(500, 8, seed=2)
    ids = np.arange(500) + 1000
    idx = Index(64)
    idx.add(codes, ids=ids)
    q = codes[:3]
    allow = np.random.default_rng(1).random(500) < 0.3
    rows, dist = brute_force_search(q, codes, 20, allow=allow)
    want = np.where(rows >= 0, ids[rows], -1)
    for kwargs in ({"allow": allow}, {"deny": ~allow}, {"allow": ids[allow]},
                   {"deny": ids[~allow].tolist()}, {"allow": allow.tolist()}):
        res = idx.search(q, k=20, **kwargs)
        assert np.array_equal(res.ids, want) and np.array_equal(res.distances, dist), kwargs
    # leave out the query's own item; unknown ids are ignored
    res = idx.search(codes[7], k=3, deny=[1007, 99999])
    assert 1007 not in res.ids.tolist() and res.distances[0] > 0
    # fewer allowed rows than k: padding, not other rows
    res = idx.search(q, k=5, allow=[1001, 1002])
    assert set(res.ids[:, :2].ravel().tolist()) == {1001, 1002} and (res.ids[:, 2:] == -1).all()
    assert (idx.search(q, k=2, allow=[]).ids == -1).all()


def test_masks_with_string_ids():
    codes = _codes(50, 8, seed=4)
    names = [f"ACC{i:04d}" for i in range(50)]
    idx = Index(64)
    idx.add(codes, ids=names)
    res = idx.search(codes[3], k=50, deny=["ACC0003", "ACC0004"])
    assert "ACC0003" not in res.ids.tolist() and res.ids[-2:].tolist() == [None, None]
    res = idx.search(codes[3], k=1, allow=["ACC0010"])
    assert res.ids.tolist() == ["ACC0010"]


def test_mask_is_passed_to_the_scan_not_over_fetched(monkeypatch):
    """The engine gets the caller's k and a uint8 allow array; threads=0 means available_cpus()."""
    calls = []
    real = index_mod._engine()

    class Spy:
        @staticmethod
        def search(codes, queries, k, threads, allow, multi_index=None):
            calls.append((k, threads, allow))
            return real.search(codes, queries, k, threads, allow, multi_index)

    monkeypatch.setattr(index_mod, "_engine", lambda: Spy)
    monkeypatch.setattr(index_mod, "available_cpus", lambda: 3)
    idx = Index(64)
    idx.add(_codes(100))
    idx.search(_codes(1), k=4, deny=[0, 1, 2])
    k, threads, allow = calls[-1]
    assert k == 4 and threads == 3
    assert allow.dtype == np.uint8 and allow.shape == (100,) and allow[:3].tolist() == [0, 0, 0] and allow[3:].all()
    idx.search(_codes(1), k=4, threads=2)
    assert calls[-1][1] == 2 and calls[-1][2] is None


def test_mask_argument_errors():
    idx = Index(64)
    idx.add(_codes(10))
    q = _codes(1)
    with pytest.raises(ValueError, match="not both"):
        idx.search(q, allow=[1], deny=[2])
    with pytest.raises(ValueError, match=r"one entry per row.*\(10,\)"):
        idx.search(q, allow=np.ones(9, bool))
    with pytest.raises(TypeError, match="int64 ids"):
        idx.search(q, deny=["a"])


def test_argument_errors_name_the_fix():
    with pytest.raises(ValueError, match="multiple of 8"):
        Index(12)
    with pytest.raises(ValueError, match="multiple of 8"):
        Index(0)
    with pytest.raises(TypeError):
        Index("64")
    idx = Index(64)
    with pytest.raises(TypeError, match="pack_codes"):
        idx.add(np.zeros((2, 64), np.float32))
    with pytest.raises(TypeError, match="packbits"):
        idx.add(np.zeros((2, 64), bool))
    with pytest.raises(TypeError, match="uint8"):
        idx.add([[1] * 8])
    with pytest.raises(ValueError, match="16 bytes.*64-bit"):
        idx.add(np.zeros((2, 16), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        idx.add(np.zeros((2, 2, 8), np.uint8))
    idx.add(_codes(3))
    q = _codes(1)
    for bad_k in (0, -1):
        with pytest.raises(ValueError, match="k must be >= 1"):
            idx.search(q, k=bad_k)
    with pytest.raises(TypeError, match="k must be an int"):
        idx.search(q, k=2.5)
    with pytest.raises(TypeError, match="k must be an int"):
        idx.search(q, k=True)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        idx.search(q, threads=-1)
    with pytest.raises(ValueError, match="8 bytes"):
        idx.search(np.zeros(4, np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        idx.search(np.zeros(8, np.int64))
    assert len(idx) == 3


def test_add_ids_rules():
    idx = Index(64)
    assert idx.id_type is None
    assert idx.add(_codes(2), ids=[5, 9]).tolist() == [5, 9]
    assert idx.id_type == "int64"
    with pytest.raises(ValueError, match="duplicate ids in this call"):
        idx.add(_codes(2), ids=[1, 1])
    with pytest.raises(ValueError, match=r"already in the index, e.g. \[9\]"):
        idx.add(_codes(2), ids=[10, 9])
    with pytest.raises(ValueError, match="2 codes but 1 ids"):
        idx.add(_codes(2), ids=[11])
    with pytest.raises(ValueError, match=">= 0"):
        idx.add(_codes(1), ids=[-3])
    with pytest.raises(TypeError, match="int64 ids"):
        idx.add(_codes(1), ids=["a"])
    with pytest.raises(ValueError, match="int64"):
        idx.add(_codes(1), ids=np.array([2**63], dtype=np.uint64))
    assert len(idx) == 2 and idx.ids.tolist() == [5, 9]  # nothing added by failed calls
    assert idx.add(_codes(2)).tolist() == [10, 11]        # auto ids continue from the max
    idx.remove([11])
    assert idx.add(_codes(1)).tolist() == [12]            # never reuse a removed id
    assert idx.add(_codes(1)[0], ids=np.int64(100)).tolist() == [100]  # one code, one id

    s = Index(64)
    assert s.add(_codes(2), ids=np.array(["a", "b"])).tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="uses str ids"):
        s.add(_codes(1))
    with pytest.raises(TypeError, match="str ids"):
        s.add(_codes(1), ids=[3])
    with pytest.raises(TypeError, match="not a mix"):
        s.add(_codes(2), ids=["c", 3])
    with pytest.raises(ValueError, match="empty"):
        s.add(_codes(1), ids=[""])
    with pytest.raises(ValueError, match="already in the index"):
        s.add(_codes(1), ids="a")
    with pytest.raises(TypeError, match="decode bytes"):
        s.add(_codes(1), ids=[b"x"])
    assert s.ids.tolist() == ["a", "b"]


def test_remove_contains_get_codes():
    codes = _codes(6)
    idx = Index(64)
    idx.add(codes, ids=["p1/a", "p1/b", "p2/a", "p2/b", "p3/a", "é"])
    with pytest.raises(KeyError, match="not in the index.*nothing was removed"):
        idx.remove(["p1/a", "nope"])
    assert len(idx) == 6
    assert idx.remove(["p1/a", "é", "p1/a"]) == 2
    assert "p1/a" not in idx and "p1/b" in idx and 3 not in idx
    assert np.array_equal(idx.get_codes(["p3/a", "p1/b"]), codes[[4, 1]])
    with pytest.raises(KeyError):
        idx.get_codes(["p1/a"])
    iidx = Index(64)
    iidx.add(codes)
    assert iidx.remove(np.array([0, 5])) == 2 and iidx.ids.tolist() == [1, 2, 3, 4]
    with pytest.raises(KeyError):
        iidx.remove([0])
    assert Index(64).remove([]) == 0


def test_fingerprints_keep_models_apart():
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    idx = Index(64, fingerprint=a)
    idx.add(_codes(3), fingerprint=a)
    with pytest.raises(ModelMismatchError, match="model"):
        idx.add(_codes(3), fingerprint=b)
    with pytest.raises(ModelMismatchError):
        idx.search(_codes(1), fingerprint=b)
    with pytest.raises(ModelMismatchError):
        idx.check_fingerprint(b)
    idx.check_fingerprint(a)
    assert len(idx) == 3
    anon = Index(64)
    with pytest.raises(ValueError):
        anon.add(_codes(2), ids=[1, 1], fingerprint=b)
    assert anon.fingerprint is None  # a failed add changes nothing
    anon.add(_codes(1), fingerprint=b)  # an empty index without one adopts it
    assert anon.fingerprint == b
    with pytest.raises(TypeError):
        Index(64, fingerprint=123)


def test_search_result_is_frozen_and_unpacks():
    idx = Index(64)
    idx.add(_codes(5))
    res = idx.search(_codes(1)[0], k=2)
    ids, dist = res
    assert ids is res.ids and dist is res.distances
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.ids = None


def test_codes_from_pack_codes_are_accepted():
    logits = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    idx = Index(64)
    idx.add(pack_codes(logits))
    assert idx.search(pack_codes(logits[:1]), k=1).ids.tolist() == [[0]]


@pytest.mark.parametrize("kind", ["int", "str"])
def test_id_map_stays_right_through_many_small_adds_and_removes(kind, monkeypatch):
    """Exercise the sorted-run merges (threshold made small) and the remap on remove."""
    monkeypatch.setattr(_ids, "MERGE_MIN", 4)
    rng = np.random.default_rng(7)
    pool = rng.choice(10**9, 600, replace=False)
    make = (lambda a: a.astype(np.int64)) if kind == "int" else (lambda a: [f"id{x}" for x in a])
    idx = Index(8)
    present: list = []
    codes: dict = {}
    sizes = iter([1, 5, _ids.DROP_IN_PLACE_MAX + 4, 2, 1, _ids.DROP_IN_PLACE_MAX, 3, 20, 1] * 3)
    for step in range(60):
        chunk = pool[step * 10:(step + 1) * 10]
        new_codes = _codes(10, 1, seed=step)
        idx.add(new_codes, ids=make(chunk))
        present += list(make(chunk))
        codes.update(zip(make(chunk), new_codes.tobytes()))
        if step % 3 == 1:   # removes of a few rows (moved in place) and of many (one gather)
            gone = [present[i] for i in rng.choice(len(present), next(sizes), replace=False)]
            idx.remove(gone)
            present = [p for p in present if p not in set(gone)]
        probe = present[:: max(1, len(present) // 25)]
        assert all(p in idx for p in probe)
    assert list(idx.ids) == present
    assert idx.codes.tobytes() == bytes(codes[p] for p in present)
    absent = [x for x in make(pool) if x not in set(present)]
    assert not any(a in idx for a in absent)
    rows = idx._ids.rows(idx._ids.prepare(present))
    assert rows.tolist() == list(range(len(present)))


def test_removes_find_their_rows_among_equal_hashes(monkeypatch):
    """With every string id hashing alike, a remove must still take out exactly its rows."""
    monkeypatch.setattr(_ids, "hash_bytes", lambda enc: np.zeros(len(enc), np.uint64))
    idx = Index(8)
    ids = [f"u{i}" for i in range(30)]
    idx.add(_codes(30, 1), ids=ids)
    assert "u7" in idx       # builds the id -> row map
    idx.remove(["u17", "u3"])
    idx.remove(["u4"])
    kept = [i for i in ids if i not in {"u17", "u3", "u4"}]
    assert list(idx.ids) == kept
    assert idx._ids.rows(idx._ids.prepare(kept)).tolist() == list(range(len(kept)))
    assert not any(i in idx for i in ("u17", "u3", "u4"))


def test_drop_ranges_refuses_bad_ranges():
    """The in-place remover moves memory by address: bad ranges raise, they never write."""
    buf = np.arange(10, dtype=np.int64)
    for starts, stops in (([-1], [2]), ([8], [11]), ([5, 3], [6, 4]), ([2, 3], [5, 6]), ([4], [4])):
        with pytest.raises(ValueError, match="internal"):
            _ids.drop_ranges(buf, 10, np.array(starts), np.array(stops))
    assert buf.tolist() == list(range(10))
    assert _ids.drop_ranges(buf, 10, np.array([1, 4]), np.array([3, 5])) == 7
    assert buf[:7].tolist() == [0, 3, 5, 6, 7, 8, 9]


def test_string_ids_survive_hash_collisions(monkeypatch):
    """Every id hashing to the same key must still be found by its bytes."""
    monkeypatch.setattr(_ids, "hash_bytes", lambda enc: np.zeros(len(enc), np.uint64))
    idx = Index(8)
    idx.add(_codes(20, 1), ids=[f"u{i}" for i in range(20)])
    with pytest.raises(ValueError, match="already"):
        idx.add(_codes(1, 1), ids=["u7"])
    idx.remove(["u3", "u11"])
    assert "u3" not in idx and "u4" in idx
    res = idx.search(_codes(1, 1)[0], k=20, allow=["u5", "u19"])
    assert sorted(x for x in res.ids.tolist() if x) == ["u19", "u5"]


def test_storage_is_flat_arrays_with_amortised_growth():
    idx = Index(64)
    buffers = set()
    for i in range(2000):
        idx.add(_codes(1, seed=i))
        buffers.add(id(idx._codes.buf))
    assert len(buffers) < 25  # capacity grows geometrically, not one copy an add
    assert idx._codes.data.flags.c_contiguous and idx._codes.data.base is idx._codes.buf
    s = Index(64)
    s.add(_codes(3), ids=["a", "bb", "ccc"])
    assert s._ids.blob.data.tobytes() == b"abbccc" and s._ids.offsets.data.tolist() == [0, 1, 3, 6]


def test_concurrent_searches_give_serial_answers():
    codes = _codes(20000, 8, seed=11)
    idx = Index(64)
    idx.add(codes)
    queries = [_codes(3, seed=100 + i) for i in range(8)]
    want = [idx.search(q, k=25, threads=1) for q in queries]
    errors = []

    def worker(i):
        try:
            for _ in range(15):
                got = idx.search(queries[i], k=25, threads=1)
                if not (np.array_equal(got.ids, want[i].ids) and np.array_equal(got.distances, want[i].distances)):
                    errors.append(i)
        except Exception as e:  # noqa: BLE001 - any failure in a thread fails the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("kind", ["int", "str"])
def test_writes_during_searches_never_tear(kind):
    """A writer adds and removes whole groups of exact matches while readers search: every
    answer must be the answer of some whole state (0, 1 or 2 groups present), never a mix."""
    rng = np.random.default_rng(3)
    nb = 8
    base = rng.integers(0, 256, (3000, nb), dtype=np.uint8)
    q = rng.integers(0, 256, nb, dtype=np.uint8)
    base[(base == q).all(1)] ^= 1  # no base row equals q
    name = (lambda i: i) if kind == "int" else (lambda i: f"id{i}")
    idx = Index(64)
    idx.add(base, ids=[name(i) for i in range(3000)])
    groups = {g: [name(10000 + 100 * g + j) for j in range(5)] for g in (1, 2)}
    k = 12
    base_only = idx.search(q, k=k, threads=1)
    errors: list = []
    stop = threading.Event()

    def valid(res) -> bool:
        ids = res.ids.tolist()
        zeros = int((res.distances == 0).sum())
        head = ids[:zeros]
        if head not in ([], groups[1], groups[2], groups[1] + groups[2], groups[2] + groups[1]):
            return False
        rest = base_only.ids.tolist()[: k - zeros]
        return ids[zeros:] == rest and np.array_equal(res.distances[zeros:], base_only.distances[: k - zeros])

    seen: list[int] = []

    def reader():
        try:
            while not stop.is_set():
                res = idx.search(q, k=k, threads=1)
                if not valid(res):
                    errors.append(res)
                    return
                seen.append(int((res.distances == 0).sum()))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        deadline = time.monotonic() + 4.0  # bounded on a loaded machine
        for rounds in range(5000):  # until the readers have seen plenty of states
            if (rounds >= 30 and len(seen) >= 200) or time.monotonic() > deadline:
                break
            for g in (1, 2):
                idx.add(np.repeat(q[None], 5, axis=0), ids=groups[g])
                time.sleep(0.0005)  # let readers in between writes
            for g in (1, 2):
                idx.remove(groups[g])
                time.sleep(0.0005)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert len(set(seen)) >= 2  # the readers really ran between writes


def test_approximate_hook_uses_hnsw_and_refuses_stale_graphs():
    rng = np.random.default_rng(5)
    centres = rng.integers(0, 2, (20, 64), dtype=np.uint8)
    bits = centres[rng.integers(0, 20, 3000)] ^ (rng.random((3000, 64)) < 0.1)
    codes = np.packbits(bits.astype(np.uint8), axis=1)
    idx = Index(64)
    idx.add(codes, ids=[f"img{i}" for i in range(3000)])
    q = codes[:20]
    with pytest.raises(ValueError, match="build_approximate"):
        idx.search(q, k=10, approximate=True)
    idx.build_approximate(threads=1)
    exact = idx.search(q, k=10)
    approx = idx.search(q, k=10, approximate=True)
    assert approx.ids.shape == (20, 10) and approx.ids.dtype == object
    # distances reported are the true Hamming distances of the returned ids
    rows = np.array([[int(s[3:]) for s in r] for r in approx.ids])
    true = np.take_along_axis(hamming_distances(q, codes), rows, axis=1)
    assert np.array_equal(true, approx.distances)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.ids.tolist(), exact.ids.tolist())])
    assert recall >= 0.8
    assert approx.distances[:, -1].tolist() >= exact.distances[:, -1].tolist()
    with pytest.raises(ValueError, match="exact scan"):
        idx.search(q, k=10, approximate=True, deny=["img0"])
    idx.remove(["img0"])
    with pytest.raises(ValueError, match="after the last add"):
        idx.search(q, k=10, approximate=True)


@pytest.mark.parametrize("kind", ["int", "str"])
def test_large_lookups_find_every_id(kind):
    """Batches past 1024 ids take the sorted-probe path; they must agree with small lookups."""
    rng = np.random.default_rng(8)
    raw = rng.choice(10**12, 5000, replace=False)
    ids = raw.astype(np.int64) if kind == "int" else np.array([f"1.2.{x}" for x in raw], dtype=object)
    idx = Index(8)
    idx.add(_codes(3000, 1), ids=ids[:3000])
    idx.add(_codes(2000, 1), ids=ids[3000:])  # a second sorted run
    perm = rng.permutation(5000)
    queries = np.concatenate([ids[perm], ids[:3][::-1]]) if kind == "int" else list(ids[perm]) + ["nope"]
    rows = idx._ids.rows(idx._ids.prepare(queries))
    want = np.concatenate([perm, [2, 1, 0]]) if kind == "int" else np.concatenate([perm, [-1]])
    assert np.array_equal(rows, want)
    assert idx.remove(ids[perm[:2500]]) == 2500
    assert list(idx.ids) == list(ids[np.sort(perm[2500:])])


def test_codes_property_follows_row_order_through_remove():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    idx = Index(nbits=64)
    idx.add(codes, ids=np.array([50, 10, 40, 20, 30, 60]))
    idx.remove([40, 60])
    assert idx.ids.tolist() == [50, 10, 20, 30]
    np.testing.assert_array_equal(idx.codes, codes[[0, 1, 3, 4]])
    assert Index(nbits=64).codes.shape == (0, 8)


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("nbytes", [1, 3, 8, 32])
def test_sort_by_code_keeps_each_id_with_its_code(kind, nbytes, tmp_path):
    """sort_by_code() puts the rows in code order (equal codes keep their order); every id
    keeps its code, id lookups (contains, get_codes, remove, allow/deny, adding a present id)
    follow the new rows, searches equal the reference over the new order, and the order is
    what save()/load() keep."""
    rng = np.random.default_rng(nbytes)
    codes = np.concatenate([_clustered(300, nbytes, seed=nbytes), _codes(200, nbytes, seed=nbytes + 1)])
    ids = [f"study-{i}-{'x' * (i % 7)}" for i in range(500)] if kind == "str" else \
        rng.permutation(10_000)[:500].astype(np.int64)
    idx = Index(nbytes * 8)
    idx.add(codes, ids=ids)
    by_id = dict(zip(list(ids), codes.tolist()))
    assert ids[3] in idx  # builds the id -> row map, which the sort must not leave stale
    idx.sort_by_code()
    order = sorted(range(500), key=lambda i: (codes[i].tobytes(), i))
    assert list(idx.ids) == [ids[i] for i in order]
    np.testing.assert_array_equal(idx.codes, codes[order])
    for x in list(ids)[::37]:
        assert x in idx and idx.get_codes([x])[0].tolist() == by_id[x]
    with pytest.raises(ValueError, match="already"):
        idx.add(codes[:1], ids=[ids[5]])
    queries = codes[::41]
    allow = list(ids)[::3]
    for k in (1, 10, 499, 600):
        want_rows, want_d = brute_force_search(queries, idx.codes, k, allow=np.isin(idx.ids, allow))
        got = idx.search(queries, k=k, allow=allow)
        np.testing.assert_array_equal(got.distances, want_d)
        want_ids = idx.ids[np.maximum(want_rows, 0)]
        np.testing.assert_array_equal(got.ids[want_rows >= 0], want_ids[want_rows >= 0])
    gone = [ids[i] for i in (0, 7, 499)]
    idx.remove(gone)
    assert not any(x in idx for x in gone) and len(idx) == 497
    idx.verify()
    idx.save(tmp_path / "sorted.mhi")
    back = Index.load(tmp_path / "sorted.mhi")
    assert list(back.ids) == list(idx.ids)
    np.testing.assert_array_equal(back.codes, idx.codes)
    added = idx.add(codes[:2]) if kind == "int" else idx.add(codes[:2], ids=["new-a", "new-b"])
    assert list(idx.ids[-2:]) == list(added)  # later rows go after the sorted ones


def test_sort_by_code_edge_cases(tmp_path):
    idx = Index(64)
    idx.sort_by_code()  # empty: nothing to do
    idx.add(_codes(1))
    idx.sort_by_code()
    assert len(idx) == 1
    idx.add(_codes(1, seed=3))
    idx.save(tmp_path / "a.mhi")
    with Index.view(tmp_path / "a.mhi") as view, pytest.raises(ValueError, match="read-only"):
        view.sort_by_code()
