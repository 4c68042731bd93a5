"""Reliability run for index files: mutated files and SIGKILL during save().

    python benchmarks/fuzz_index.py                       # 10,000 mutations + 20 kills
    python benchmarks/fuzz_index.py --mutations 50000 --kills 50 --kill-codes 2000000

Mutations of saved index files (int64 ids, str ids, empty): truncations, bit flips anywhere,
wrong header fields (with the header CRC left stale or recomputed), overwritten byte ranges,
appended bytes, and "resealed" files whose checksums were recomputed after the damage (a
crafted file that only the content checks can refuse). For each file:
  - load() returns exactly the saved index or raises IndexFileError (resealed files: either
    outcome, and whatever loads must then search/list/save without any other exception);
  - view() raises IndexFileError, or returns an index that searches, lists ids and masks
    without any other exception, and whose verify() raises IndexFileError unless the bytes
    are the saved ones.
A hang aborts the run (faulthandler watchdog); a crash kills it; either exits nonzero.

SIGKILL: a forked child saves two different indexes to one path in a loop and is killed at
random moments; after each kill load() must return one of the two, whole.

The test suite (tests/test_index_reliability.py) imports this file and runs fewer of each.
"""
from __future__ import annotations

import argparse
import collections
import faulthandler
import hashlib
import os
import signal
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from _report import recorded

from medhash_sdk import _index_file
from medhash_sdk.exceptions import IndexFileError
from medhash_sdk.index import Index

HEADER = _index_file.HEADER_SIZE
# (offset, struct format) of every header field a mutation may rewrite
FIELDS = [(8, "<I"), (12, "<I"), (16, "<I"), (20, "<I"), (24, "<Q"), (32, "<q"), (40, "<Q"), (48, "<Q")] + \
    [(56 + 8 * i, "<Q") for i in range(10)]


def base_indexes() -> dict[str, Index]:
    """Small indexes of each kind, so that mutations hit every section often."""
    rng = np.random.default_rng(0)
    a = Index(64, fingerprint="sha256:" + "0f" * 32)
    a.add(rng.integers(0, 256, (40, 8), dtype=np.uint8), ids=rng.choice(10**12, 40, replace=False))
    a.remove(a.ids[:3])
    s = Index(128)
    s.add(rng.integers(0, 256, (30, 16), dtype=np.uint8),
          ids=[f"1.2.826.0.1.{i}" for i in range(29)] + ["ACC-ü-東京"])
    e = Index(32, fingerprint="model-x")
    return {"int": a, "str": s, "empty": e}


def content_digest(idx: Index) -> str:
    """A digest of everything an index holds (nbits, fingerprint, ids in order, codes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((idx.nbits, idx.fingerprint, idx.id_type if len(idx) else None, len(idx),
                   idx._next_id)).encode())
    h.update(idx._codes.data.tobytes())
    h.update(repr(idx.ids.tolist()).encode())
    return h.hexdigest()


def reseal(data: bytes) -> bytes:
    """Recompute the checksum and header CRC of (mutated) file bytes, as a crafter would."""
    if len(data) < HEADER:
        return data
    head = bytearray(data[:HEADER])
    head[136:156] = bytes(20)
    digest = hashlib.blake2b(bytes(head), digest_size=16)
    digest.update(data[HEADER:])
    head[136:152] = digest.digest()
    struct.pack_into("<I", head, 152, zlib.crc32(bytes(head)))
    return bytes(head) + data[HEADER:]


def fix_crc(data: bytes) -> bytes:
    """Recompute only the header CRC (so view() gets past it and checks the fields)."""
    if len(data) < HEADER:
        return data
    head = bytearray(data[:HEADER])
    struct.pack_into("<I", head, 152, 0)
    struct.pack_into("<I", head, 152, zlib.crc32(bytes(head)))
    return bytes(head) + data[HEADER:]


def _field_value(rng: np.random.Generator, fmt: str, old: int) -> int:
    bits = 32 if fmt == "<I" else 64
    signed = fmt == "<q"
    lo, hi = (-(1 << 63), (1 << 63) - 1) if signed else (0, (1 << bits) - 1)
    choice = rng.integers(0, 6)
    value = [0, 1, hi, old + 1, old - 1, int(rng.integers(0, 1 << 31)) * (1 + int(rng.integers(0, 4096)))][choice]
    return min(max(value, lo), hi)


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes, bool]:
    """One random mutation: (kind, new bytes, resealed?)."""
    kind = ["truncate", "bitflip", "bitflip", "header", "header-crc", "overwrite", "append", "resealed"][
        int(rng.integers(0, 8))]
    b = bytearray(data)
    if kind == "truncate":
        return kind, bytes(b[: int(rng.integers(0, len(b)))]), False
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, len(b)))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        return kind, bytes(b), False
    if kind in ("header", "header-crc"):
        off, fmt = FIELDS[int(rng.integers(0, len(FIELDS)))]
        (old,) = struct.unpack_from(fmt, b, off)
        struct.pack_into(fmt, b, off, _field_value(rng, fmt, old))
        out = bytes(b)
        return kind, (fix_crc(out) if kind == "header-crc" else out), False
    if kind == "overwrite":
        start = int(rng.integers(0, len(b)))
        length = int(rng.integers(1, 64))
        fill = rng.integers(0, 256, length, dtype=np.uint8).tobytes() if rng.random() < 0.5 else bytes(length)
        b[start:start + length] = fill
        return kind, bytes(b[: len(data)] if rng.random() < 0.5 else b), False
    if kind == "append":
        return kind, bytes(b) + rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes(), False
    # resealed: damage anywhere after the magic, then make both checksums agree again
    sub_kind, sub, _ = mutate(data, rng)
    while sub_kind == "resealed":
        sub_kind, sub, _ = mutate(data, rng)
    return f"resealed-{sub_kind}", reseal(sub), True


def exercise(idx: Index, scratch: Path) -> None:
    """Use an index the way a caller would; only IndexFileError may come out."""
    n = len(idx)
    nb = idx.nbits // 8
    q = np.zeros((2, nb), np.uint8)
    idx.search(q, k=3, threads=1)
    idx.search(q[0], k=min(n + 2, 50), threads=2)
    ids = idx.ids
    if n:
        first = ids[0]
        _ = first in idx
        idx.search(q, k=2, deny=[first])
        idx.search(q, k=2, allow=np.ones(n, bool))
    idx.save(scratch)
    Index.load(scratch)


def check(path: Path, data: bytes, original: bytes, want: str, resealed: bool, scratch: Path) -> str:
    """Outcome of one mutated file: 'rejected', 'exact', 'accepted' (resealed), or 'FAIL: ...'."""
    path.write_bytes(data)
    same_bytes = data == original
    outcomes = []
    try:  # ---- load
        idx = Index.load(path)
    except IndexFileError:
        outcomes.append("load-rejected")
    except Exception as e:  # noqa: BLE001 - anything else is the bug we look for
        return f"FAIL: load raised {type(e).__name__}: {e}"
    else:
        try:
            digest = content_digest(idx)
        except IndexFileError:  # a resealed file refused on use; any other file must be whole
            digest = "refused on use"
        if digest == want:
            outcomes.append("load-exact")
        elif resealed:
            outcomes.append("load-accepted")
            try:
                exercise(idx, scratch)
            except IndexFileError:
                pass
            except Exception as e:  # noqa: BLE001
                return f"FAIL: a loaded resealed file raised {type(e).__name__}: {e}"
        else:
            return "FAIL: load returned content that differs from what was saved"
        if not resealed and not same_bytes:
            return "FAIL: load accepted changed bytes"
    try:  # ---- view
        view = Index.view(path)
    except IndexFileError:
        outcomes.append("view-rejected")
    except Exception as e:  # noqa: BLE001
        return f"FAIL: view raised {type(e).__name__}: {e}"
    else:
        outcomes.append("view-opened")
        try:
            exercise(view, scratch)
        except IndexFileError:
            pass
        except Exception as e:  # noqa: BLE001
            return f"FAIL: using a view raised {type(e).__name__}: {e}"
        try:
            view.verify()
        except IndexFileError:
            outcomes.append("verify-rejected")
        except Exception as e:  # noqa: BLE001
            return f"FAIL: verify raised {type(e).__name__}: {e}"
        else:
            if not resealed and not same_bytes:
                return "FAIL: verify accepted changed bytes"
        view.close()
    return "+".join(outcomes)


def fuzz(n_mutations: int, seed: int = 0, workdir: str | None = None, hang_timeout: float = 30.0) -> collections.Counter:
    """Run n mutations; a Counter of outcomes ('FAIL: ...' keys are failures)."""
    rng = np.random.default_rng(seed)
    stats: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        bases = {}
        for name, idx in base_indexes().items():
            p = Path(d) / f"{name}.mhi"
            idx.save(p)
            bases[name] = (p.read_bytes(), content_digest(Index.load(p)))
        names = sorted(bases)
        target, scratch = Path(d) / "mutated.mhi", Path(d) / "scratch.mhi"
        for i in range(n_mutations):
            name = names[i % len(names)]
            original, want = bases[name]
            kind, data, resealed = mutate(original, rng)
            faulthandler.dump_traceback_later(hang_timeout, exit=True)
            try:
                outcome = check(target, data, original, want, resealed, scratch)
            finally:
                faulthandler.cancel_dump_traceback_later()
            stats["total"] += 1
            stats["(of which bytes unchanged by the mutation)"] += data == original
            stats["(of which resealed)"] += resealed
            stats[f"{kind}: {outcome}" if outcome.startswith("FAIL") else outcome] += 1
            if outcome.startswith("FAIL"):
                (Path(workdir or ".") / f"fuzz-fail-{i}.mhi").write_bytes(data)
    return stats


def view_files(paths: list[str]) -> dict[str, int]:
    """Child side of the subprocess check: view + use + verify each file; counts by outcome."""
    counts: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as d:
        scratch = Path(d) / "s.mhi"
        for p in paths:
            try:
                v = Index.view(p)
            except IndexFileError:
                counts["rejected"] += 1
                continue
            try:
                exercise(v, scratch)
                v.verify()
                counts["verified"] += 1
            except IndexFileError:
                counts["opened, then refused"] += 1
            v.close()
    return dict(counts)


# ----------------------------------------------------------------------------- SIGKILL


def sigkill_trials(path: Path, n_kills: int, n_codes: int, seed: int = 0, max_delay: float = 0.15) -> dict:
    """Kill a child saving two indexes (A, B) alternately to path; load after each kill.

    Returns counts: kills, a / b (which index was found), interrupted (a temp file was left,
    i.e. the kill landed inside save()), and raises AssertionError if a load fails or returns
    anything but A or B.
    """
    rng = np.random.default_rng(seed)
    a = Index(64, fingerprint="A")
    a.add(rng.integers(0, 256, (n_codes, 8), dtype=np.uint8))
    b = Index(64, fingerprint="B")
    b.add(rng.integers(0, 256, (n_codes + 12345, 8), dtype=np.uint8),
          ids=[f"acc-{i}" for i in range(n_codes + 12345)])
    want = {content_digest(a): "a", content_digest(b): "b"}
    a.save(path)
    stats = collections.Counter()
    for _ in range(n_kills):
        pid = os.fork()
        if pid == 0:  # child: save B, A, B, ... until killed
            try:
                while True:
                    b.save(path)
                    a.save(path)
            finally:
                os._exit(1)
        time.sleep(float(rng.uniform(0.0, max_delay)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        leftovers = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.") and p.suffix == ".tmp"]
        stats["interrupted"] += bool(leftovers)
        for p in leftovers:
            p.unlink()
        try:
            loaded = Index.load(path)
        except IndexFileError as e:
            raise AssertionError(f"after a SIGKILL the file does not load: {e}") from e
        which = want.get(content_digest(loaded))
        if which is None:
            raise AssertionError("after a SIGKILL the file loads but holds neither index")
        stats[which] += 1
        stats["kills"] += 1
    return dict(stats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mutations", type=int, default=10_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--kill-codes", type=int, default=1_000_000, help="codes in the index the child saves")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--view-files", nargs="*", help=argparse.SUPPRESS)  # child mode for the tests
    args = ap.parse_args(argv)
    if args.view_files is not None:
        print(view_files(args.view_files))
        return 0
    with recorded("fuzz_index"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    stats = fuzz(args.mutations, args.seed)
    fails = {k: v for k, v in stats.items() if "FAIL" in k}
    print(f"{stats['total']} mutated files in {time.perf_counter() - t0:.1f} s")
    for k, v in sorted(stats.items(), key=lambda kv: -kv[1]):
        if k != "total":
            print(f"  {v:6d}  {k}")
    if args.kills:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            ks = sigkill_trials(Path(d) / "big.mhi", args.kills, args.kill_codes, args.seed)
        print(f"SIGKILL during save ({args.kill_codes} codes): {ks} in {time.perf_counter() - t0:.1f} s")
    print("FAILURES: " + str(sum(fails.values())) if fails else "no failures")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
