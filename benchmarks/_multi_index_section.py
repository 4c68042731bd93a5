"""bench_search.py's multi-index section: Index.build_multi_index() vs the exact scan vs faiss'
hashing indexes, on codes grown from real ones (benchmarks/realistic_codes.py) and on uniform
codes, with the rows as grown and again stored in code order (Index.sort_by_code). One query at a
time, one thread; queries are real codes of held-out images (uniform queries for uniform codes).
Every multi-index answer is compared with the scan's over the same rows.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np

import realistic_codes
from medhash_sdk import Index

FAISS_HASH = [("IndexBinaryHash", b, None, f) for b in (20, 24) for f in (0, 1, 2)]
FAISS_MULTIHASH = [("IndexBinaryMultiHash", b, h, f) for h, b in ((3, 21), (4, 16)) for f in (0, 1, 2)]


def _per_query(fn, queries: np.ndarray) -> tuple[float, list]:
    """Mean seconds per query over the queries, one call each, and the answers."""
    out = []
    t0 = time.perf_counter()
    for i in range(len(queries)):
        out.append(fn(queries[i:i + 1]))
    return (time.perf_counter() - t0) / len(queries), out


def _same_answers(want: list, got: list) -> bool:
    """Every query's (rows, distances) equal."""
    return all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(want, got))


def _recall(exact_rows: list[np.ndarray], found: list[np.ndarray], k: int) -> float:
    """Fraction of the exact k nearest (by distance: ties at the k-th count either way) found."""
    hits = 0
    for (rows, dist), (frows, fdist) in zip(exact_rows, found):
        kth = dist[0, k - 1]
        within = set(rows[0][dist[0] < kth].tolist())
        got = set(frows[0][(frows[0] >= 0)].tolist())
        at_kth_needed = k - len(within)
        hits += len(within & got) + min(at_kth_needed, int(np.sum(fdist[0][frows[0] >= 0] == kth)))
    return hits / (k * len(exact_rows))


def _faiss_rows(codes: np.ndarray, queries: np.ndarray, ks: list[int], exact: dict) -> list[dict]:
    import faiss

    nbits = codes.shape[1] * 8
    rows = []
    for name, b, nhash, nflip in FAISS_HASH + FAISS_MULTIHASH:
        if nhash is None and nflip == 0:
            t0 = time.perf_counter()
            index = faiss.IndexBinaryHash(nbits, b)
            index.add(codes)
            built = time.perf_counter() - t0
        elif nhash is not None and nflip == 0:
            t0 = time.perf_counter()
            index = faiss.IndexBinaryMultiHash(nbits, nhash, b)
            index.add(codes)
            built = time.perf_counter() - t0
        index.nflip = nflip
        for k in ks:
            sec, found = _per_query(lambda q: tuple(reversed(index.search(q, k))), queries)
            found = [(r, d) for r, d in found]
            rows.append({"engine": f"faiss {name}(b={b}{'' if nhash is None else f', nhash={nhash}'}) nflip={nflip}",
                         "k": k, "ms": sec * 1e3, "recall": _recall(exact[k], found, k), "build_s": built})
        if nflip == 2:
            del index
            gc.collect()
    return rows


def bench(n: int, data_dir: Path, *, ks: list[int], nq: int, faiss_peers: bool, uniform: bool,
          encoder_model: str | None = None) -> tuple[list[dict], dict]:
    """Rows of the table for one (codes, n); facts for the text (fit, histograms, build)."""
    model = realistic_codes.fit(data_dir, model=encoder_model)
    nbits = model.parents.shape[1] * 8
    facts: dict = {"model": model}
    rng = np.random.default_rng(11)
    nbytes = nbits // 8
    if uniform:
        codes = np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes).copy()
        queries = np.frombuffer(rng.bytes(nq * nbytes), dtype=np.uint8).reshape(nq, nbytes).copy()
    else:
        codes = model.grow(n)
        queries = model.queries[:nq]
    idx = Index(nbits)
    idx.add(codes)
    del codes
    tables = {}  # the two kinds of tables: row numbers only, and with copied codes
    for copy in (False, True):
        info = idx.build_multi_index(threads=1, copy_codes=copy)
        facts.setdefault("tables", {})[copy] = info
        tables[copy] = idx._multi
    facts.update(widths=info.widths, codes_ids=len(idx) * (nbytes + 8))
    t0 = time.perf_counter()
    idx.build_multi_index(threads=2)
    facts["build2_s"] = time.perf_counter() - t0
    engine_codes = idx._codes.data  # the engine's own view: no copy
    from medhash_sdk import _hamming

    rows, exact = [], {}
    for k in ks:
        scan_s, scan_out = _per_query(lambda q: _hamming.search(engine_codes, q, k, 1, None, None), queries)
        exact[k] = [(r, d) for r, d in scan_out]
        facts.setdefault("kth", {})[k] = np.array([d[0, k - 1] for _, d in scan_out])
        rows.append({"engine": "medhash scan", "k": k, "ms": scan_s * 1e3, "recall": 1.0})
        for copy, name in ((False, "medhash multi-index"), (True, "medhash multi-index, copied codes")):
            mih_s, mih_out = _per_query(lambda q: _hamming.search(engine_codes, q, k, 1, None, tables[copy]), queries)
            same = _same_answers(scan_out, mih_out)
            rows.append({"engine": name, "k": k, "ms": mih_s * 1e3, "recall": 1.0 if same else float("nan"),
                         "speedup": scan_s / mih_s, "same": same})
    # the same rows stored in code order (Index.sort_by_code): the tables' random reads of the
    # codes then share cache lines; ties follow the new order, so the answers are compared with
    # a scan of the sorted rows
    idx.drop_multi_index()
    tables.clear()
    gc.collect()
    idx.sort_by_code()
    sorted_info = idx.build_multi_index(threads=1)
    facts["sorted_tables"] = sorted_info
    sorted_tables, sorted_codes = idx._multi, idx._codes.data
    for k in ks:
        scan_s, scan_out = _per_query(lambda q: _hamming.search(sorted_codes, q, k, 1, None, None), queries)
        rows.append({"engine": "medhash scan, rows sorted by code", "k": k, "ms": scan_s * 1e3, "recall": 1.0})
        mih_s, mih_out = _per_query(lambda q: _hamming.search(sorted_codes, q, k, 1, None, sorted_tables), queries)
        same = _same_answers(scan_out, mih_out)
        rows.append({"engine": "medhash multi-index, rows sorted by code", "k": k, "ms": mih_s * 1e3,
                     "recall": 1.0 if same else float("nan"), "speedup": scan_s / mih_s, "same": same})
    if faiss_peers:
        codes_copy = np.ascontiguousarray(engine_codes)  # still the rows in the given order
        del idx
        gc.collect()
        rows.extend(_faiss_rows(codes_copy, queries, ks, exact))
    return rows, facts


def report(n: int, data_dir: Path, *, ks: list[int], nq: int, faiss_peers: bool, kinds: list[str],
           encoder_model: str | None = None) -> None:
    for kind in kinds:
        rows, facts = bench(n, data_dir, ks=ks, nq=nq, faiss_peers=faiss_peers, uniform=kind == "uniform",
                            encoder_model=encoder_model)
        nbits = facts["model"].parents.shape[1] * 8
        scan = {r["k"]: r["ms"] for r in rows if r["engine"] == "medhash scan"}
        print(f"\n### {kind} codes, {n:,} x {nbits} bit, one query, one thread ({nq} queries)\n")
        if encoder_model:
            print(f"real codes made by {encoder_model}")
        if kind != "uniform":
            print(realistic_codes.describe(facts["model"]))
        plain, copied = facts["tables"][False], facts["tables"][True]
        print(f"tables: substrings {facts['widths']}, {plain.memory_bytes / 2**20:.0f} MiB "
              f"({plain.memory_bytes / facts['codes_ids']:.2f}x codes + int64 ids), build {plain.build_seconds:.2f} s "
              f"on 1 thread, {facts['build2_s']:.2f} s on 2; with copied codes {copied.memory_bytes / 2**20:.0f} MiB "
              f"({copied.memory_bytes / facts['codes_ids']:.2f}x), build {copied.build_seconds:.2f} s on 1 thread; "
              f"row tables over the rows sorted by code (Index.sort_by_code) "
              f"{facts['sorted_tables'].memory_bytes / 2**20:.0f} MiB, build {facts['sorted_tables'].build_seconds:.2f} s\n")
        print("| engine | k | ms/query | x scan time | recall@k | build s |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            same = "" if "same" not in r else (" (same answers)" if r["same"] else " (DIFFERENT ANSWERS)")
            print(f"| {r['engine']} | {r['k']} | {r['ms']:.3f} | {r['ms'] / scan[r['k']]:.2f} | "
                  f"{r['recall']:.3f}{same} | {r.get('build_s', float('nan')):.1f} |")
        if kind != "uniform":
            k = ks[0]
            grown = realistic_codes.histogram(facts["kth"][k], nbits)
            real_k = realistic_codes.histogram(realistic_codes.kth_distances(facts["model"].parents,
                                                                              facts["model"].queries[:nq], k), nbits)
            print(f"\nqueries' distance to their {k}-th neighbour: among the {len(facts['model'].parents):,} real "
                  f"codes, and among the {n:,} grown codes tested here\n")
            print(realistic_codes.histogram_table({"real codes": real_k, f"{n:,} grown codes": grown}, k))


def report_updates(n: int, data_dir: Path, *, nq: int, encoder_model: str | None = None) -> None:
    """What add() and remove() cost a search through the tables: rows added after the build are
    scanned beside them (until they exceed 1/8 of the rows the tables cover); remove() drops
    them and the next search rebuilds them (docs/architecture.md). On codes grown from real
    ones: tables over 90% of n, the other 10% added, then one row removed."""
    model = realistic_codes.fit(data_dir, model=encoder_model)
    codes = model.grow(n)
    queries = model.queries[:nq]
    base = n - n // 10

    def per_query(idx: Index) -> float:  # ms a query
        return _per_query(lambda q: idx.search(q, k=10, threads=1), queries)[0] * 1e3

    print(f"\n### After add() and remove(): {n:,} codes grown from real ones, k = 10, one thread ({nq} queries)\n")
    print("| tables | built over {:,} rows, ms | {:,} rows added (scanned), ms | remove() of one row, ms | "
          "first search after it, ms | later searches, ms |".format(base, n - base))
    print("|---|---|---|---|---|---|")
    for copy in (False, True):
        idx = Index(codes.shape[1] * 8)
        idx.add(codes[:base])
        idx.build_multi_index(threads=1, copy_codes=copy)
        built = per_query(idx)
        idx.add(codes[base:])
        added = per_query(idx)
        first_id = idx.ids[0]
        assert first_id in idx   # the id -> row map is built by the first lookup, not timed here
        t0 = time.perf_counter()
        idx.remove([first_id])
        removed = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        idx.search(queries[0], k=10, threads=1)
        first = (time.perf_counter() - t0) * 1e3
        after = per_query(idx)
        print(f"| {'copied codes' if copy else 'row numbers'} | {built:.3f} | {added:.3f} | {removed:.0f} | "
              f"{first:.0f} | {after:.3f} |")
        del idx
        gc.collect()

