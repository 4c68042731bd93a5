"""Resident memory of an Index, and the open/load/verify times of its file.

    python benchmarks/bench_index_memory.py                 # 10M codes of 64 bits, int64 ids
    python benchmarks/bench_index_memory.py --n 1000000 --str-ids

Builds the index the way an ingest would (chunks of codes appended, auto ids), builds the
id -> row map (a membership test) and runs a search, then reports the growth of this
process's resident set (/proc/self/statm) against the budget: 10M x 64-bit codes with int64
ids <= 400 MB, everything included. Then saves the index and times Index.view() (maps the
file, reads the header only), a first search on the view, Index.load() and verify().
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time

import numpy as np

from _report import recorded

from medhash_sdk.index import Index

MB = 1 << 20


def rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--nbits", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=1_000_000)
    ap.add_argument("--str-ids", action="store_true", help="string ids (20-character accession numbers)")
    ap.add_argument("--budget-mb", type=float, default=400.0)
    ap.add_argument("--dir", default=None, help="where to write the index file (default: a temp dir)")
    args = ap.parse_args(argv)
    nbytes = args.nbits // 8

    idx = Index(args.nbits)
    idx.search(np.zeros(nbytes, np.uint8), k=1)  # import the engine before the baseline
    gc.collect()
    base = rss()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for start in range(0, args.n, args.chunk):
        m = min(args.chunk, args.n - start)
        chunk = rng.integers(0, 256, (m, nbytes), dtype=np.uint8)
        if args.str_ids:
            idx.add(chunk, ids=[f"ACC{start + i:017d}" for i in range(m)])
        else:
            idx.add(chunk)
        del chunk
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    probe = f"ACC{0:017d}" if args.str_ids else 0
    assert probe in idx  # builds the id -> row map
    t_map = time.perf_counter() - t0
    q = rng.integers(0, 256, (1, nbytes), dtype=np.uint8)
    t0 = time.perf_counter()
    idx.search(q, k=100, threads=1)
    t_search = time.perf_counter() - t0
    gc.collect()
    used = rss() - base
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    codes_b = idx._codes.n * nbytes
    store = idx._ids
    if args.str_ids:
        ids_b = store.blob.n + 8 * store.offsets.n + 8 * store.hashes.n
    else:
        ids_b = 8 * len(store)
    m = store._map
    map_b = 8 * (len(m.main) + len(m.delta))
    kind = "str" if args.str_ids else "int64"
    print(f"Index of {args.n:,} x {args.nbits}-bit codes, {kind} ids (numpy {np.__version__})")
    print(f"  add in chunks of {args.chunk:,}: {t_add:.2f} s; id map build: {t_map:.2f} s; "
          f"one search k=100, 1 thread: {t_search * 1e3:.1f} ms")
    print(f"  arrays: codes {codes_b / MB:.1f} MB + ids {ids_b / MB:.1f} MB + id->row map {map_b / MB:.1f} MB"
          f" = {(codes_b + ids_b + map_b) / MB:.1f} MB")
    print(f"  resident set growth (/proc/self/statm): {used / MB:.1f} MB "
          f"(budget {args.budget_mb:.0f} MB: {'OK' if used <= args.budget_mb * MB else 'OVER'}); "
          f"peak RSS during the build {max(0, peak - base) / MB:.1f} MB above the baseline "
          f"(process peak was {peak_before / MB:.0f} MB before)")

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = os.path.join(d, "bench.mhi")
        t0 = time.perf_counter()
        idx.save(path)
        t_save = time.perf_counter() - t0
        size = os.path.getsize(path)
        del idx, store, m
        gc.collect()
        t0 = time.perf_counter()
        view = Index.view(path)
        t_view = time.perf_counter() - t0
        t0 = time.perf_counter()
        view.search(q, k=100, threads=1)
        t_vsearch = time.perf_counter() - t0
        t0 = time.perf_counter()
        view.verify()
        t_verify = time.perf_counter() - t0
        view.close()
        t0 = time.perf_counter()
        loaded = Index.load(path)
        t_load = time.perf_counter() - t0
        assert len(loaded) == args.n
        print(f"  file {size / MB:.1f} MB: save {t_save:.2f} s; view() {t_view * 1e3:.2f} ms; "
              f"first search on the view {t_vsearch * 1e3:.1f} ms; view.verify() {t_verify:.2f} s; "
              f"load() {t_load:.2f} s")
    return 0 if used <= args.budget_mb * MB else 1


if __name__ == "__main__":
    with recorded("bench_index_memory"):
        status = main()
    raise SystemExit(status)
