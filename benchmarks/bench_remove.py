"""Index.remove() of a few rows: in place (medhash_sdk._ids.DROP_IN_PLACE_MAX) against one
masked gather of everything kept (the path for many rows, and what every remove() did before),
in the same run.

    python benchmarks/bench_remove.py [--rows 10000000] [--str-rows 2000000]

Int64 ids over 64-bit codes, string ids (DICOM-UID-like) over 128-bit codes, and int ids with
multi-index tables (whose in-place update replaces a rebuild at the next search). Each time is
the median of 5 removes of different rows after the id -> row map exists (the first id lookup
builds it; not timed). Writes benchmarks/results/bench_remove.md.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import recorded  # noqa: E402

from medhash_sdk import Index, _ids  # noqa: E402


@contextlib.contextmanager
def masked_only() -> Iterator[None]:
    """Every remove() through the masked gather (the in-place path off)."""
    import medhash_sdk.index as index_module

    before = _ids.DROP_IN_PLACE_MAX
    _ids.DROP_IN_PLACE_MAX = index_module.DROP_IN_PLACE_MAX = -1
    try:
        yield
    finally:
        _ids.DROP_IN_PLACE_MAX = index_module.DROP_IN_PLACE_MAX = before


def build(n: int, nbytes: int, str_ids: bool, multi: bool) -> tuple[Index, list]:
    rng = np.random.default_rng(0)
    idx = Index(nbytes * 8)
    ids = [f"1.2.840.113619.2.{i}.{i * 7}" for i in range(n)] if str_ids else np.arange(n, dtype=np.int64)
    idx.add(rng.integers(0, 256, (n, nbytes), dtype=np.uint8), ids=ids)
    if multi:
        idx.build_multi_index(threads=1)
    assert ids[0] in idx  # builds the id -> row map
    return idx, list(ids)


def time_removes(idx: Index, ids: list, count: int, start: int) -> tuple[float, float]:
    """(median ms of 5 removes of `count` ids, ms of the first search after the last one)."""
    ts = []
    for rep in range(5):
        at = start + rep * 1000
        gone = ids[at: at + count]
        t0 = time.perf_counter()
        idx.remove(gone)
        ts.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    idx.search(idx.get_codes(ids[:1])[0], k=10, threads=1)
    return float(np.median(ts)), (time.perf_counter() - t0) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the int-id indexes")
    ap.add_argument("--str-rows", type=int, default=2_000_000, help="rows of the string-id index")
    a = ap.parse_args()
    print("| index | ids removed at once | in place, ms | masked gather, ms | ratio | first search after, ms (in place / masked) |")
    print("|---|---|---|---|---|---|")
    cases = [(f"{a.rows:,} x 64 bit, int64 ids", a.rows, 8, False, False),
             (f"{a.str_rows:,} x 128 bit, string ids", a.str_rows, 16, True, False),
             (f"{a.rows:,} x 64 bit, int64 ids, multi-index tables", a.rows, 8, False, True)]
    for name, n, nbytes, str_ids, multi in cases:
        idx, ids = build(n, nbytes, str_ids, multi)
        for count in (1, 8):
            fast, fast_first = time_removes(idx, ids, count, n // 4 + 10_000 * count)
            with masked_only():
                slow, slow_first = time_removes(idx, ids, count, n // 2 + 10_000 * count)
            print(f"| {name} | {count} | {fast:.1f} | {slow:.1f} | {slow / fast:.1f}x | {fast_first:.1f} / {slow_first:.1f} |")
        del idx
    return 0


if __name__ == "__main__":
    with recorded("bench_remove"):
        status = main()
    sys.exit(status)
