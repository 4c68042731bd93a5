"""Multi-index row tables with different substring counts against the exact scan, same run.

Codes grown from a model's codes of the real radiographs (benchmarks/realistic_codes.py, as in
bench_search.py's multi-index section); one query at a time, one thread, thread CPU time per
query, the median of three passes that alternate scan and tables. Answers where the default
substring rule (memory-capped) leaves speed behind, e.g. 128-bit codes:

    python benchmarks/mi_substrings.py --model kd128.onnx --size 1e7 --substrings 5,6
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import realistic_codes  # noqa: E402  (after the sys.path lines)
from medhash_sdk import _hamming  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="ONNX model whose codes are grown (default: the bundled one)")
    p.add_argument("--data", default=os.environ.get("MEDHASH_DATA", os.path.join(ROOT, "..", "shared", "data")))
    p.add_argument("--size", type=float, default=1e7, help="rows (default 1e7)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--substrings", default="5,6", help="substring counts, comma-separated; 0: the default rule")
    p.add_argument("--ks", default="10,100")
    a = p.parse_args(argv)
    n, ks = int(a.size), [int(k) for k in a.ks.split(",")]
    model = realistic_codes.fit(Path(a.data), model=a.model)
    codes = np.ascontiguousarray(model.grow(n))
    queries = model.queries[:a.queries]
    nbytes = codes.shape[1]
    print(f"{n:,} x {nbytes * 8}-bit grown codes, {len(queries)} queries; codes + int64 ids "
          f"{n * (nbytes + 8) / 2**20:,.0f} MiB")
    tables = {}
    for m in (int(s) for s in a.substrings.split(",")):
        t0 = time.perf_counter()
        t = _hamming.build_multi_index(codes, m or None, 2, False)
        tables[t.substrings] = t
        print(f"{t.substrings} substrings{' (default rule)' if not m else ''}: {t.memory_bytes / 2**20:,.0f} MiB "
              f"({t.memory_bytes / (n * (nbytes + 8)):.2f}x codes + ids), built in {time.perf_counter() - t0:.1f} s "
              "on 2 threads")
    times: dict[tuple[int, object], list[float]] = {}
    for _ in range(3):
        for k in ks:
            for how in ["scan", *tables]:
                t = None if how == "scan" else tables[how]
                t0 = time.thread_time()
                for i in range(len(queries)):
                    _hamming.search(codes, queries[i:i + 1], k, 1, None, t)
                times.setdefault((k, how), []).append((time.thread_time() - t0) / len(queries) * 1e3)
    print("\n| k | scan ms | " + " | ".join(f"{m} substrings ms (x scan time)" for m in tables) + " |")
    print("|---|---|" + "---|" * len(tables))
    for k in ks:
        scan = float(np.median(times[(k, "scan")]))
        cells = [f"{float(np.median(times[(k, m)])):.3f} ({float(np.median(times[(k, m)])) / scan:.2f}x)"
                 for m in tables]
        print(f"| {k} | {scan:.3f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
