"""Bulk encoding: input discovery, ids, shards, errors, resume (also after SIGKILL), DICOM pools."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from _dicom_files import make_dataset, save
from medhash_sdk.batch import ShardDir, ShardDirError, encode_to_shards
from medhash_sdk.batch.job import shard_slices
from medhash_sdk.encoder import Encoder
from medhash_sdk.exceptions import ModelMismatchError
from medhash_sdk.index import Index
from medhash_sdk.inputs import InputError, discover
from _data import NIH_PNG_DIR, requires_data

DATA = NIH_PNG_DIR
PNGS = sorted(DATA.glob("*.png"))
pytestmark = requires_data(len(PNGS) >= 12, f"real NIH PNGs not found in {DATA}")
ROOT = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def enc(model) -> Encoder:
    return Encoder(model, providers="cpu")


@pytest.fixture(scope="module")
def small_pngs(tmp_path_factory) -> list[np.ndarray]:
    """12 real radiographs downsized to 128 x 128 (fast to decode)."""
    return [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (128, 128), interpolation=cv2.INTER_AREA)
            for p in PNGS[:12]]


def make_tree(root: Path, images: list[np.ndarray]) -> Path:
    """a/ and b/c/ with PNGs, a 16-bit PNG, hidden files, a README, and three bad files."""
    (root / "a").mkdir(parents=True)
    (root / "b" / "c").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for i, im in enumerate(images[:5]):
        cv2.imwrite(str(root / "a" / f"img{i:02d}.png"), im)
    for i, im in enumerate(images[5:9]):
        cv2.imwrite(str(root / "b" / "c" / f"x{i}.png"), im)
    cv2.imwrite(str(root / "b" / "deep16.png"), images[9].astype(np.uint16) * 257)
    cv2.imwrite(str(root / ".hidden" / "skip.png"), images[0])
    cv2.imwrite(str(root / "a" / ".skip.png"), images[0])
    (root / "README.txt").write_text("not an image\n")
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "text.png").write_text("this is not a png")
    good = (root / "a" / "img00.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


def read_shards(out: Path) -> tuple[list[str], np.ndarray, dict]:
    sd = ShardDir(out)
    m = sd.read_manifest()
    ids: list[str] = []
    codes = []
    for i in range(m["n_shards"]):
        idx = Index.load(sd.shard_path(i, "idx"), fingerprint=m["model_fingerprint"])
        sid = list(idx.ids)
        ids += sid
        if sid:
            codes.append(idx.get_codes(sid))
    return ids, np.concatenate(codes), m


# --------------------------------------------------------------------------- discovery

def test_discover_directory_order_ids_and_kinds(tmp_path, small_pngs):
    root = make_tree(tmp_path / "data", small_pngs)
    dcm = save(make_dataset(small_pngs[10]), root / "b" / "1.2.840.99")   # DICOM named by UID
    inp = discover([root])
    ids = [it.id for it in inp.items]
    assert ids == sorted(ids)                       # fixed order: sorted relative paths
    assert "a/img00.png" in ids and "b/c/x0.png" in ids and "b/deep16.png" in ids
    assert not any("skip" in i or "README" in i for i in ids)   # hidden and non-image files skipped
    assert "a/empty.png" in ids and "a/text.png" in ids         # image names are taken, read later
    kinds = {it.id: it.kind for it in inp.items}
    assert kinds["b/1.2.840.99"] == "dicom" and kinds["a/img00.png"] == "image"
    assert Path(inp.items[ids.index("b/1.2.840.99")].path) == dcm
    again = discover([str(root)])
    assert again.items == inp.items and again.digest() == inp.digest()
    # from another working directory, through a relative INPUT: same ids, same digest
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert discover(["data"]).digest() == inp.digest()
    finally:
        os.chdir(cwd)


def test_discover_follows_linked_folders_once(tmp_path, small_pngs):
    """Links back up the tree (``latest -> ..``) list nothing twice, two of them do not branch
    without end, and a linked folder outside the tree or behind a hidden one is still read."""
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / ".raw").mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for i, d in enumerate((root / "a", root / ".raw", outside)):
        cv2.imwrite(str(d / f"img{i}.png"), small_pngs[i])
    os.symlink("..", root / "a" / "up")
    os.symlink("..", root / "a" / "up2")
    os.symlink(root, root / "a" / "root")
    os.symlink(root / "a", root / "same-as-a")
    os.symlink(outside, root / "ext")
    os.symlink(root / ".raw", root / "raw")
    ids = [it.id for it in discover([root]).items]
    assert ids == ["a/img0.png", "ext/img2.png", "raw/img1.png"], ids


def test_discover_file_list_csv(tmp_path, small_pngs):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        cv2.imwrite(str(d / f"p{i}.png"), small_pngs[i])
    one = discover(d / "p1.png")
    assert [(it.id, it.kind) for it in one.items] == [("p1.png", "image")]
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\nimgs/p2.png\n\n" + str(d / "p0.png") + "\n")
    items = discover(lst).items
    assert [it.id for it in items] == ["imgs/p2.png", str(d / "p0.png")]
    assert Path(items[0].path).resolve() == (d / "p2.png").resolve()   # relative to the list's folder
    table = tmp_path / "t.csv"
    table.write_text("accession,path,Effusion,Mass\nACC7,imgs/p1.png,1,0\nACC3,imgs/p0.png,0,1\n")
    t = discover(table, id_column="accession")
    assert [it.id for it in t.items] == ["ACC7", "ACC3"] and t.label_columns == ("Effusion", "Mass")
    assert t.items[0].labels == ("1", "0")
    t2 = discover(table, label_columns=["Mass"])
    assert [it.id for it in t2.items] == ["imgs/p1.png", "imgs/p0.png"] and t2.items[1].labels == ("1",)
    assert t2.digest() != t.digest()


def test_discover_errors(tmp_path, small_pngs):
    with pytest.raises(InputError, match="no such file"):
        discover(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        discover(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("accession,label\nx,1\n")
    with pytest.raises(InputError, match="--path-column"):
        discover(bad)
    with pytest.raises(InputError, match="no id column 'acc'"):
        discover(bad, path_column="accession", id_column="acc")
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "same.png"), small_pngs[0])
    with pytest.raises(InputError, match="two inputs have the id 'same.png'"):
        discover([tmp_path / "x", tmp_path / "y"])
    with pytest.raises(ValueError):
        discover([])


# --------------------------------------------------------------------------- encoding

def test_encode_shards_errors_and_codes(tmp_path, small_pngs, enc):
    root = make_tree(tmp_path / "data", small_pngs)
    out = tmp_path / "out"
    s = encode_to_shards([root], out, model=enc, shard_size=4, batch_size=3, workers=2, show_progress_bar=False)
    inp = discover([root])
    assert (s.n_inputs, s.n_failed, s.n_encoded) == (len(inp), 3, len(inp) - 3)
    assert s.n_shards == len(shard_slices(len(inp), 4)) == -(-len(inp) // 4) and s.n_resumed == 0
    # fixed shard numbering: shard i holds inputs[4i:4i+4] (minus the failed ones)
    sd = ShardDir(out)
    for i, r in enumerate(shard_slices(len(inp), 4)):
        meta = sd.read_meta(i)
        assert meta["ids"] + [e["id"] for e in meta["errors"]] != []
        assert sorted(meta["ids"] + [e["id"] for e in meta["errors"]]) == sorted(inp.items[k].id for k in r)
    # errors.csv: every bad input, named by the path the user gave, with a reason
    with open(out / "errors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["id"] for r in rows) == ["a/empty.png", "a/text.png", "b/truncated.png"]
    reasons = {r["id"]: r["reason"] for r in rows}
    assert "empty" in reasons["a/empty.png"] and "not an image" in reasons["a/text.png"]
    assert "truncated" in reasons["b/truncated.png"]
    assert all(r["input"].startswith(str(root)) for r in rows)
    # the codes are exactly what Encoder.encode gives for the readable files (one code path)
    ids, codes, m = read_shards(out)
    assert m["status"] == "complete" and m["model_fingerprint"] == enc.fingerprint
    good = [it for it in inp.items if it.id not in reasons]
    assert ids == [it.id for it in good]
    np.testing.assert_array_equal(codes, enc.encode([it.path for it in good], batch_size=3))


def test_resume_skips_done_shards_and_refuses_other_jobs(tmp_path, small_pngs, enc, model, other_model):
    root = make_tree(tmp_path / "data", small_pngs)
    out = tmp_path / "out"
    encode_to_shards([root], out, model=enc, shard_size=5, batch_size=2, show_progress_bar=False)
    ids0, codes0, _ = read_shards(out)
    sd = ShardDir(out)
    stamp = os.stat(sd.shard_path(0, "idx")).st_mtime_ns
    os.unlink(sd.shard_path(1, "idx"))                 # as if killed before shard 1 was finished
    os.unlink(out / "errors.csv")
    s = encode_to_shards([root], out, model=model, providers="cpu", shard_size=5, batch_size=2,
                         show_progress_bar=False)
    assert s.n_resumed == s.n_shards - 1 and s.n_failed == 3
    assert os.stat(sd.shard_path(0, "idx")).st_mtime_ns == stamp     # not rewritten
    ids1, codes1, _ = read_shards(out)
    assert ids1 == ids0
    np.testing.assert_array_equal(codes1, codes0)
    with pytest.raises(ModelMismatchError, match="another --out directory"):
        encode_to_shards([root], out, model=other_model, providers="cpu", shard_size=5, show_progress_bar=False)
    with pytest.raises(ShardDirError, match="shard size"):
        encode_to_shards([root], out, model=enc, shard_size=4, show_progress_bar=False)
    cv2.imwrite(str(root / "a" / "new.png"), small_pngs[11])
    with pytest.raises(ShardDirError, match="number of inputs"):
        encode_to_shards([root], out, model=enc, shard_size=5, show_progress_bar=False)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ShardDirError, match="unreadable manifest"):
        encode_to_shards([root], out, model=enc, shard_size=5, show_progress_bar=False)


def test_csv_ids_labels_and_dicom_in_processes(tmp_path, small_pngs, enc):
    d = tmp_path / "mixed"
    d.mkdir()
    rows = []
    for i in range(4):
        cv2.imwrite(str(d / f"p{i}.png"), small_pngs[i])
        rows.append((f"ACC{i}", f"mixed/p{i}.png", str(i % 2)))
    for i in range(4, 7):   # DICOM with patient fields that must never be written out
        save(make_dataset(small_pngs[i]), d / f"d{i}.dcm")
        rows.append((f"ACC{i}", f"mixed/d{i}.dcm", "1"))
    (d / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 10)
    rows.append(("ACC9", "mixed/bad.dcm", "0"))
    table = tmp_path / "cases.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["accession", "path", "Effusion"])
        w.writerows(rows)
    out = tmp_path / "out"
    s = encode_to_shards([table], out, model=enc, id_column="accession", shard_size=3, batch_size=2,
                         workers=2, show_progress_bar=False)
    assert s.n_failed == 1 and s.n_encoded == 7
    ids, codes, m = read_shards(out)
    assert ids == [f"ACC{i}" for i in range(7)] and m["label_columns"] == ["Effusion"]
    labels = sum((ShardDir(out).read_meta(i)["labels"] for i in range(m["n_shards"])), [])
    assert labels == [[r[2]] for r in rows[:7]]
    np.testing.assert_array_equal(codes, enc.encode([tmp_path / r[1] for r in rows[:7]]))
    for p in out.iterdir():
        text = p.read_bytes()
        assert b"Test^Patient" not in text and b"SECRET-ID-123" not in text, p


def test_thread_and_process_pools_agree(tmp_path, small_pngs, enc):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(6):
        cv2.imwrite(str(d / f"p{i}.png"), small_pngs[i])
    a = encode_to_shards([d], tmp_path / "t", model=enc, pool="thread", shard_size=4, show_progress_bar=False)
    b = encode_to_shards([d], tmp_path / "p", model=enc, pool="process", shard_size=4, workers=1,
                         show_progress_bar=False)
    assert a.n_encoded == b.n_encoded == 6
    ia, ca, _ = read_shards(tmp_path / "t")
    ib, cb, _ = read_shards(tmp_path / "p")
    assert ia == ib
    np.testing.assert_array_equal(ca, cb)
    with pytest.raises(ValueError, match="pool must be"):
        encode_to_shards([d], tmp_path / "x", model=enc, pool="fibers")
    with pytest.raises(ValueError, match="shard_size"):
        encode_to_shards([d], tmp_path / "x", model=enc, shard_size=0)


# --------------------------------------------------------------------------- killed and resumed

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medhash_sdk", *args]


def test_sigkill_midway_then_resume_equals_clean_run(tmp_path, model):
    """A run killed with SIGKILL, started again with the same command, equals an uninterrupted run."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(240):   # the 48 real 1024 x 1024 radiographs under new names
        os.symlink(PNGS[i % len(PNGS)], data / f"case{i:04d}.png")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    common = ["--model", str(model), "--shard-size", "16", "--batch-size", "8", "--workers", "2",
              "--no-progress", "--providers", "cpu"]
    clean = tmp_path / "clean"
    subprocess.run(_cli("encode", str(data), "--out", str(clean), *common), check=True, env=env,
                   capture_output=True)
    out = tmp_path / "killed"
    kills = 0
    for want_shards in (2, 6):   # kill twice, at different points
        p = subprocess.Popen(_cli("encode", str(data), "--out", str(out), *common), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            if len(list(out.glob("shard-*.idx"))) >= want_shards:
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        rc = p.wait()
        kills += rc == -signal.SIGKILL
    assert kills >= 1, "the run finished before it could be killed: give it more inputs"
    n_before = len(list(out.glob("shard-*.idx")))
    assert n_before < 15   # 240 / 16 shards: the job was interrupted
    r = subprocess.run(_cli("encode", str(data), "--out", str(out), *common), env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "shards were already done" in r.stderr
    ids_k, codes_k, m_k = read_shards(out)
    ids_c, codes_c, m_c = read_shards(clean)
    assert ids_k == ids_c and len(set(ids_k)) == 240
    np.testing.assert_array_equal(codes_k, codes_c)
    for key in ("model_fingerprint", "inputs_digest", "n_encoded", "n_failed", "status"):
        assert m_k[key] == m_c[key]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_two_jobs_on_one_directory_refused(tmp_path, small_pngs, enc):
    from medhash_sdk.batch import open_job

    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "p.png"), small_pngs[0])
    with open_job([d], tmp_path / "out", fingerprint=enc.fingerprint, nbits=enc.nbits) as job:
        assert job.todo == [0]
        with pytest.raises(ShardDirError, match="another medhash encode"):
            encode_to_shards([d], tmp_path / "out", model=enc, show_progress_bar=False)
    assert encode_to_shards([d], tmp_path / "out", model=enc, show_progress_bar=False).n_encoded == 1
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ShardDirError, match="is a file"):
        encode_to_shards([d], tmp_path / "a-file", model=enc, show_progress_bar=False)
    assert (tmp_path / "a-file").read_text() == "not a folder"
