"""Multi-index row tables with different substring counts against the exact scan, same run.

Codes grown from a model's codes of the real radiographs (benchmarks/realistic_codes.py, as in
bench_search.py's multi-index section); one query at a time, one thread, thread CPU time per
query, the median of three passes that alternate scan and tables. Answers where the default
substring rule (memory-capped) leaves speed behind, e.g. 128-bit codes:

    python benchmarks/mi_substrings.py --model kd128.onnx --size 1e7 --substrings 5,6

and what storing the rows in code order (Index.sort_by_code()) does to the same tables:

    python benchmarks/mi_substrings.py --model paper64.onnx --size 1e7 --substrings 0 --orders given,code
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
from medhash_sdk.codes import code_order  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="ONNX model whose codes are grown (default: the bundled one)")
    p.add_argument("--data", default=os.environ.get("MEDHASH_DATA", os.path.join(ROOT, "..", "shared", "data")))
    p.add_argument("--size", type=float, default=1e7, help="rows (default 1e7)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--substrings", default="5,6", help="substring counts, comma-separated; 0: the default rule")
    p.add_argument("--orders", default="given",
                   help="row orders, comma-separated: given (as grown), code (Index.sort_by_code())")
    p.add_argument("--ks", default="10,100")
    a = p.parse_args(argv)
    n, ks = int(a.size), [int(k) for k in a.ks.split(",")]
    orders = a.orders.split(",")
    if not set(orders) <= {"given", "code"}:
        p.error("--orders takes given and/or code")
    model = realistic_codes.fit(Path(a.data), model=a.model)
    grown = np.ascontiguousarray(model.grow(n))
    queries = model.queries[:a.queries]
    nbytes = grown.shape[1]
    print(f"{n:,} x {nbytes * 8}-bit grown codes, {len(queries)} queries; codes + int64 ids "
          f"{n * (nbytes + 8) / 2**20:,.0f} MiB")
    codes = {o: grown if o == "given" else np.ascontiguousarray(grown[code_order(grown)]) for o in orders}
    tables = {}
    for order in orders:
        for m in (int(s) for s in a.substrings.split(",")):
            t0 = time.perf_counter()
            t = _hamming.build_multi_index(codes[order], m or None, 2, False)
            tables[(t.substrings, order)] = t
            print(f"{t.substrings} substrings{' (default rule)' if not m else ''}, rows in {order} order: "
                  f"{t.memory_bytes / 2**20:,.0f} MiB ({t.memory_bytes / (n * (nbytes + 8)):.2f}x codes + ids), "
                  f"built in {time.perf_counter() - t0:.1f} s on 2 threads")
    # every answer from the tables equals the scan's over the same rows
    for (m, order), t in tables.items():
        for k in ks:
            want = _hamming.search(codes[order], queries, k, 1, None, None)
            got = [_hamming.search(codes[order], queries[i:i + 1], k, 1, None, t) for i in range(len(queries))]
            if not all(np.array_equal(g[j][0], want[j][i]) for i, g in enumerate(got) for j in (0, 1)):
                raise SystemExit(f"{m} substrings, {order} order, k = {k}: answers differ from the scan's")
    variants = [("scan", o) for o in orders] + list(tables)
    times: dict[tuple[int, object, str], list[float]] = {}
    for _ in range(3):
        for k in ks:
            for how, order in variants:
                t = None if how == "scan" else tables[(how, order)]
                t0 = time.thread_time()
                for i in range(len(queries)):
                    _hamming.search(codes[order], queries[i:i + 1], k, 1, None, t)
                times.setdefault((k, how, order), []).append((time.thread_time() - t0) / len(queries) * 1e3)
    print("\nms a query, thread CPU time, median of three passes; (x) = share of the scan's time in the "
          "given order; answers checked equal to the scan's\n")
    print("| k | " + " | ".join(f"{how if how == 'scan' else f'{how} substrings'}, {order} order"
                             for how, order in variants) + " |")
    print("|---|" + "---|" * len(variants))
    for k in ks:
        scan = float(np.median(times[(k, "scan", orders[0])]))
        cells = [f"{float(np.median(times[(k, how, order)])):.3f} "
                 f"({float(np.median(times[(k, how, order)])) / scan:.2f}x)" for how, order in variants]
        print(f"| {k} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
