"""Exact Hamming search speed: medhash_sdk._hamming vs faiss.IndexBinaryFlat (and usearch).

Prints tables (not a timed test). Every time is also given as a multiple of the memory floor
measured in the same run on the same codes: the time of one plain read of them (numpy's max
over the codes viewed as uint64). Times are the best of a few repeats (the machine is shared;
the minimum is the least disturbed run), single queries each use a different query.

    python benchmarks/bench_search.py --quick            # 1M codes, ~2 minutes
    python benchmarks/bench_search.py                    # 1M and 10M, plus HNSW (longer)
    python benchmarks/bench_search.py --sizes 1e7 --bits 64 --no-hnsw
    python benchmarks/bench_search.py --only-multi-index --sizes 1e7 --ks 10,100 --data grown,uniform

Data: "uniform" random codes, and "clustered" codes (100 centres, each bit flipped with
probability 0.1), queries drawn the same way. The approximate section builds usearch's HNSW
once at 1M (time-capped; cached under benchmarks/.cache/) and reports recall@10 and
queries/s against the exact engine, on clustered and on uniform codes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _report import recorded

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from medhash_sdk import _hamming  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
FLIP_BYTE_THRESHOLD = 26  # a random byte < 26: probability 26/256 = 0.102 of flipping a bit


# ---------------------------------------------------------------- data


def make_codes(kind: str, n: int, nbits: int, seed: int, centres: int = 100) -> np.ndarray:
    """uint8 (n, nbits // 8) codes, deterministic in (kind, n, nbits, seed)."""
    rng = np.random.default_rng(seed)
    nbytes = nbits // 8
    if kind == "uniform":
        return np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes).copy()
    if kind != "clustered":
        raise ValueError(f"unknown data kind {kind!r}")
    centre_codes = np.frombuffer(rng.bytes(centres * nbytes), dtype=np.uint8).reshape(centres, nbytes)
    out = np.empty((n, nbytes), dtype=np.uint8)
    step = max(1, (64 << 20) // nbits)  # ~64 MB of flip bytes at a time
    for start in range(0, n, step):
        m = min(step, n - start)
        which = rng.integers(0, centres, m)
        flips = np.frombuffer(rng.bytes(m * nbits), dtype=np.uint8).reshape(m, nbits) < FLIP_BYTE_THRESHOLD
        out[start:start + m] = centre_codes[which] ^ np.packbits(flips, axis=1)
    return out


def make_queries(kind: str, nq: int, nbits: int, seed: int, query_seed: int) -> np.ndarray:
    """Queries from the distribution of make_codes(kind, ..., seed), with their own noise."""
    if kind == "uniform":
        return make_codes(kind, nq, nbits, query_seed)
    # clustered: the data's centres (the first bytes of its seeded stream), new noise
    rng = np.random.default_rng(seed)
    nbytes = nbits // 8
    centre_codes = np.frombuffer(rng.bytes(100 * nbytes), dtype=np.uint8).reshape(100, nbytes)
    rng_q = np.random.default_rng(query_seed)
    flips = np.frombuffer(rng_q.bytes(nq * nbits), dtype=np.uint8).reshape(nq, nbits) < FLIP_BYTE_THRESHOLD
    return np.ascontiguousarray(centre_codes[rng_q.integers(0, 100, nq)] ^ np.packbits(flips, axis=1))


# ---------------------------------------------------------------- timing


def best_time(fn, repeats: int, budget_s: float = 0.2, max_repeats: int = 400, stat: str = "best") -> float:
    """Best (or median, stat="median") of at least `repeats` calls, more for short calls (until
    budget_s is spent). fn(i) gets the call number: single-query timings use a different query
    each call, so the best is the luckiest query and the median the typical one."""
    times = []
    start = time.perf_counter()
    i = 0
    while i < repeats or (time.perf_counter() - start < budget_s and i < max_repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
        i += 1
    return float(np.median(times)) if stat == "median" else min(times)


def memory_floor(codes: np.ndarray, repeats: int) -> float:
    words = codes.reshape(-1).view(np.uint64)
    words.max()  # warm
    return best_time(lambda _: words.max(), repeats)


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    widths = [max(len(title), *(len(r.get(key, "")) for r in rows)) for key, title in columns]
    print("| " + " | ".join(t.ljust(w) for (_, t), w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(r.get(k, "").ljust(w) for (k, _), w in zip(columns, widths)) + " |")
    sys.stdout.flush()


# ---------------------------------------------------------------- exact section


def bench_exact(args) -> tuple[list[dict], list[str]]:
    import faiss

    usearch_exact = None
    if not args.no_usearch:
        from usearch.index import MetricKind
        from usearch.index import search as usearch_search

        def usearch_exact(codes, q, k, threads):
            return usearch_search(codes, q, k, MetricKind.Hamming, exact=True, threads=threads)

    rows: list[dict] = []
    checks: list[str] = []
    for n in args.sizes:
        for nbits in args.bits:
            for kind in args.data:
                t0 = time.perf_counter()
                codes = make_codes(kind, n, nbits, seed=args.seed)
                gen_s = time.perf_counter() - t0
                big = n >= 5_000_000
                r1 = 3 if big else args.repeats
                rb = 2 if big else max(2, args.repeats // 3)
                floor = memory_floor(codes, max(5, r1))
                nbytes = nbits // 8
                print(f"\n# {kind} n={n:,} bits={nbits}: {codes.nbytes / 1e6:.0f} MB, memory floor "
                      f"{floor * 1e3:.2f} ms ({codes.nbytes / floor / 1e9:.1f} GB/s), generated in {gen_s:.1f} s; "
                      f"single queries: {args.single_stat} call")
                singles = make_queries(kind, 64, nbits, args.seed, args.seed + 17)
                batch = make_queries(kind, args.batch, nbits, args.seed, args.seed + 29)
                index = faiss.IndexBinaryFlat(nbits)
                index.add(codes)
                engines = {
                    "medhash": lambda q, k, t: _hamming.search(codes, q, k, t),
                    "faiss": lambda q, k, t: (faiss.omp_set_num_threads(t), index.search(q, k))[1],
                }
                if usearch_exact is not None and n <= 1_000_000:
                    engines["usearch-exact"] = lambda q, k, t: usearch_exact(codes, q, k, t)
                for k in args.ks:
                    for nq in (1, args.batch):
                        for threads in args.threads:
                            times = {}
                            for name, fn in engines.items():
                                reps = r1 if nq == 1 else rb
                                budget = 0.2 if nq == 1 else 0.0
                                if name == "usearch-exact":
                                    reps, budget = min(reps, 3 if nq == 1 else 1), 0.0
                                    if nq > 1 and k != args.ks[0]:
                                        continue
                                if nq == 1:
                                    fn(singles[:1], k, threads)  # warm
                                    t = best_time(lambda i: fn(singles[i % len(singles)][None, :], k, threads),
                                                  reps, budget, stat=args.single_stat)
                                else:
                                    t = best_time(lambda i: fn(batch, k, threads), reps, budget)
                                times[name] = t
                            # same distances as faiss (row order of ties may differ)
                            q = singles[:1] if nq == 1 else batch
                            ours_d = _hamming.search(codes, q, k, threads)[1]
                            faiss_d = index.search(q, k)[0]
                            if not np.array_equal(ours_d, faiss_d):
                                checks.append(f"MISMATCH with faiss: {kind} n={n} bits={nbits} k={k} nq={nq}")
                            for name, t in times.items():
                                rows.append({
                                    "data": kind, "n": f"{n / 1e6:g}M", "bits": str(nbits), "k": str(k),
                                    "nq": str(nq), "thr": str(threads), "engine": name,
                                    "ms": f"{t * 1e3:.2f}", "x floor": f"{t / floor:.2f}",
                                    "q/s": f"{nq / t:,.0f}",
                                    "vs faiss": f"{times['faiss'] / t:.2f}x" if name != "faiss" else "",
                                    "_t": t, "_floor": floor, "_n": n, "_nbits": nbits, "_k": k,
                                    "_nq": nq, "_thr": threads, "_kind": kind, "_engine": name,
                                })
                            rows_now = [r for r in rows if r["_n"] == n and r["_nbits"] == nbits and
                                        r["_kind"] == kind and r["_k"] == k and r["_nq"] == nq and r["_thr"] == threads]
                            print("  " + "  ".join(f"{r['engine']} k={k} nq={nq} t={threads}: {r['ms']} ms "
                                                   f"({r['x floor']}x floor)" for r in rows_now))
                            sys.stdout.flush()
                del index, codes
    return rows, checks


def target_lines(rows: list[dict]) -> list[str]:
    out = []

    def find(**kw):
        return [r for r in rows if all(r[f"_{k}"] == v for k, v in kw.items())]

    for r in find(engine="medhash", k=100, nq=1, thr=1):
        limit = 1.25 if r["_nbits"] == 64 else 1.1
        ratio = r["_t"] / r["_floor"]
        f = find(engine="faiss", k=100, nq=1, thr=1, n=r["_n"], nbits=r["_nbits"], kind=r["_kind"])
        fr = f[0]["_t"] / f[0]["_floor"] if f else float("nan")
        out.append(f"one query, 1 thread, k=100, {r['_kind']} {r['n']} x {r['_nbits']} bit: "
                   f"{ratio:.2f}x floor (target <= {limit}x: {'met' if ratio <= limit else 'MISSED'}); "
                   f"faiss {fr:.2f}x")
    for r in find(engine="medhash", nq=100, thr=1, nbits=64, k=100):
        f = find(engine="faiss", k=100, nq=100, thr=1, n=r["_n"], nbits=64, kind=r["_kind"])
        if f:
            speedup = f[0]["_t"] / r["_t"]
            out.append(f"batch of 100, 1 thread, k=100, {r['_kind']} {r['n']} x 64 bit: {100 / r['_t']:,.0f} q/s, "
                       f"{speedup:.1f}x faiss (target >= 5x: {'met' if speedup >= 5 else 'MISSED'})")
    return out


def summary_table(rows: list[dict]) -> list[dict]:
    """One line per data set: the figures the README quotes (1 query as x floor, batches q/s)."""
    def get(r0, engine, k, nq, thr):
        for r in rows:
            if (r["_engine"], r["_k"], r["_nq"], r["_thr"]) == (engine, k, nq, thr) and \
                    (r["_kind"], r["_n"], r["_nbits"]) == (r0["_kind"], r0["_n"], r0["_nbits"]):
                return r
        return None

    out = []
    seen = set()
    for r0 in rows:
        key = (r0["_kind"], r0["_n"], r0["_nbits"])
        if key in seen:
            continue
        seen.add(key)
        line = {"data": r0["_kind"], "n": f"{r0['_n'] / 1e6:g}M", "bits": str(r0["_nbits"]),
                "floor": f"{r0['_floor'] * 1e3:.2f}"}
        for k in (10, 100, 1000):
            ours, theirs = get(r0, "medhash", k, 1, 1), get(r0, "faiss", k, 1, 1)
            if ours and theirs:
                line[f"1q k={k}"] = f"{ours['_t'] / ours['_floor']:.2f} / {theirs['_t'] / theirs['_floor']:.2f}"
        for thr in (1, 2):
            ours = get(r0, "medhash", 100, 100, thr)
            theirs = get(r0, "faiss", 100, 100, thr)
            if ours and theirs:
                line[f"b{thr}"] = f"{100 / ours['_t']:,.0f} / {100 / theirs['_t']:,.0f}"
        ours = get(r0, "medhash", 100, 1, 2)
        if ours:
            line["1q t2"] = f"{ours['_t'] / ours['_floor']:.2f}"
        out.append(line)
    return out


SUMMARY_COLUMNS = [("data", "data"), ("n", "codes"), ("bits", "bits"), ("floor", "floor ms"),
                   ("1q k=10", "1 query k=10: x floor, ours / faiss"),
                   ("1q k=100", "k=100"), ("1q k=1000", "k=1000"),
                   ("1q t2", "1 query k=100, 2 threads: x floor"),
                   ("b1", "100 queries k=100, 1 thread: q/s, ours / faiss"),
                   ("b2", "2 threads: q/s, ours / faiss")]


def rows_from_output(path: str) -> list[dict]:
    """Rebuild the timing rows from a saved run's printed 'Exact search' table."""
    rows = []
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 11 or not cells[0] in ("uniform", "clustered"):
            continue
        data, n, bits, k, nq, thr, engine, ms, xf = cells[:9]
        t = float(ms) / 1e3
        rows.append({"_kind": data, "_n": int(float(n[:-1]) * 1e6), "_nbits": int(bits), "_k": int(k),
                     "_nq": int(nq), "_thr": int(thr), "_engine": engine, "_t": t, "_floor": t / float(xf)})
    return rows


# ---------------------------------------------------------------- approximate section


def build_hnsw(kind: str, n: int, nbits: int, seed: int, cap_s: float, codes: np.ndarray):
    """Build (or load from the cache) an HNSW index over codes, adding in chunks until cap_s."""
    from medhash_sdk.approx import ApproximateHammingIndex

    CACHE.mkdir(parents=True, exist_ok=True)
    stem = CACHE / f"hnsw_{kind}_{n}_{nbits}_{seed}_M16_ef128"
    path, meta_path = stem.with_suffix(".usearch"), stem.with_suffix(".json")
    index, built, spent = None, 0, 0.0
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        cached = ApproximateHammingIndex.load(path)
        if len(cached) == meta["built"]:
            if meta["complete"] or meta["build_s"] >= cap_s:
                return cached, meta
            index, built, spent = cached, meta["built"], meta["build_s"]  # resume a capped build
    if index is None:
        index = ApproximateHammingIndex(nbits, connectivity=16, expansion_add=128)
    t0 = time.perf_counter() - spent
    chunk = 50_000
    while built < n and time.perf_counter() - t0 < cap_s:
        m = min(chunk, n - built)
        index.add(codes[built:built + m], np.arange(built, built + m, dtype=np.int64), threads=0)
        built += m
    meta = {"built": built, "n": n, "complete": built == n, "cap_s": cap_s,
            "build_s": round(time.perf_counter() - t0, 1)}
    index.save(path)
    meta_path.write_text(json.dumps(meta))
    return index, meta


def bench_hnsw(args) -> list[dict]:
    n, nbits = 1_000_000, 64
    rows = []
    for kind in ("clustered", "uniform"):
        codes = make_codes(kind, n, nbits, seed=args.seed)
        index, meta = build_hnsw(kind, n, nbits, args.seed, args.hnsw_cap, codes)
        built = meta["built"]
        sub = codes[:built]
        queries = make_queries(kind, args.batch, nbits, args.seed, args.seed + 29)
        _, true_d = _hamming.search(sub, queries, 10, 1)
        t_exact_1 = best_time(lambda i: _hamming.search(sub, queries[i % len(queries)][None, :], 10, 1), 10)
        t_exact_b = best_time(lambda i: _hamming.search(sub, queries, 10, 1), 3, 0.0)
        note = "" if meta["complete"] else f" (build capped at {meta['cap_s']:.0f} s: {built:,} of {n:,})"
        print(f"\n# HNSW {kind} {built:,} x {nbits} bit, built in {meta['build_s']} s{note}")
        rows.append({"data": kind, "n": f"{built / 1e6:.2g}M", "engine": "exact (medhash)", "ef": "",
                     "recall@10": "1.000", "1q ms": f"{t_exact_1 * 1e3:.2f}",
                     "q/s (1 thr, batch)": f"{len(queries) / t_exact_b:,.0f}", "build s": ""})
        for ef in args.hnsw_ef:
            index.expansion_search = ef
            got_r, got_d = index.search(queries, 10, threads=1)
            # a returned row counts if it is within the exact 10th distance (ties are equal)
            recall = float((got_d[got_d >= 0] <= np.broadcast_to(true_d[:, -1:], got_d.shape)[got_d >= 0]).sum()
                           / got_d.size)
            t1 = best_time(lambda i: index.search(queries[i % len(queries)], 10, threads=1), 10)
            tb = best_time(lambda i: index.search(queries, 10, threads=1), 3, 0.0)
            rows.append({"data": kind, "n": f"{built / 1e6:.2g}M", "engine": "HNSW (usearch)", "ef": str(ef),
                         "recall@10": f"{recall:.3f}", "1q ms": f"{t1 * 1e3:.2f}",
                         "q/s (1 thr, batch)": f"{len(queries) / tb:,.0f}", "build s": str(meta["build_s"])})
            print(f"  ef={ef}: recall@10 {recall:.3f}, {t1 * 1e3:.2f} ms/query, exact {t_exact_1 * 1e3:.2f} ms")
            sys.stdout.flush()
        del index, codes
    return rows


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1e6,1e7", help="numbers of codes, comma-separated (default 1e6,1e7)")
    p.add_argument("--bits", default="64,256")
    p.add_argument("--ks", default="10,100,1000")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--data", default="uniform,clustered")
    p.add_argument("--batch", type=int, default=100, help="queries in a batch (default 100)")
    p.add_argument("--repeats", type=int, default=9, help="repeats per single-query timing at 1M")
    p.add_argument("--single-stat", choices=("best", "median"), default="best",
                   help="single-query time over its repeats (each a different query): the best call "
                        "(default; the least disturbed) or the median (the typical query)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-usearch", action="store_true", help="skip usearch's exact search")
    p.add_argument("--no-hnsw", action="store_true", help="skip the approximate (HNSW) section")
    p.add_argument("--only-hnsw", action="store_true", help="run only the approximate (HNSW) section")
    p.add_argument("--hnsw-cap", type=float, default=600.0, help="seconds allowed to build each HNSW index")
    p.add_argument("--hnsw-ef", default="32,64,128")
    p.add_argument("--only-multi-index", action="store_true",
                   help="run only the multi-index hashing section (codes grown from real ones, and uniform "
                        "codes; --sizes, --ks; writes results/bench_search_multi_index.md)")
    p.add_argument("--mi-queries", type=int, default=200, help="queries in the multi-index section")
    p.add_argument("--mi-data", default=os.environ.get("MEDHASH_DATA", "../shared/data"),
                   help="the data folder the real codes come from")
    p.add_argument("--no-faiss-hash", action="store_true", help="multi-index section without faiss' hash indexes")
    p.add_argument("--mi-updates", action="store_true",
                   help="multi-index section: also time searches after add() and remove() (grown codes)")
    p.add_argument("--mi-model", help="multi-index section: the ONNX model whose codes are grown (default: the "
                                      "bundled 64-bit one)")
    p.add_argument("--summarize", metavar="OUTPUT", help="only print the summary of a saved run's output")
    p.add_argument("--quick", action="store_true",
                   help="1M codes, k=10,100, a 60 s HNSW build cap: about 2 minutes once cached")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.ks, a.repeats = "1e6", "10,100", 5
        a.hnsw_cap = min(a.hnsw_cap, 60.0)
    a.sizes = [int(float(s)) for s in a.sizes.split(",")]
    a.bits = [int(b) for b in a.bits.split(",")]
    a.ks = [int(k) for k in a.ks.split(",")]
    a.threads = [int(t) for t in a.threads.split(",")]
    a.data = a.data.split(",")
    a.hnsw_ef = [int(e) for e in a.hnsw_ef.split(",")]
    return a


def print_exact(rows: list[dict], checks: list[str]) -> None:
    print("\n## Exact search (time per call; 'x floor' = call time / one numpy read of the codes)\n")
    print_table(rows, [("data", "data"), ("n", "n"), ("bits", "bits"), ("k", "k"), ("nq", "queries"),
                       ("thr", "threads"), ("engine", "engine"), ("ms", "ms"), ("x floor", "x floor"),
                       ("q/s", "queries/s"), ("vs faiss", "vs faiss")])
    print("\n## Summary (x floor = time / one numpy read of the codes; q/s = queries per second)\n")
    print_table(summary_table(rows), SUMMARY_COLUMNS)
    print("\n## Targets\n")
    for line in target_lines(rows) + checks:
        print("- " + line)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        print_table(summary_table(rows_from_output(args.summarize)), SUMMARY_COLUMNS)
        return 0
    import faiss

    if args.only_multi_index:
        from _multi_index_section import report, report_updates

        print(f"medhash _hamming simd={_hamming.simd_level()}  faiss {faiss.__version__}")
        print("\n## Multi-index hashing (Index.build_multi_index) vs the exact scan and faiss' hash indexes")
        for n in args.sizes:
            report(n, Path(args.mi_data), ks=args.ks, nq=args.mi_queries, faiss_peers=not args.no_faiss_hash,
                   kinds=[d for d in args.data if d in ("grown", "uniform")] or ["grown", "uniform"],
                   encoder_model=args.mi_model)
            if args.mi_updates:
                report_updates(n, Path(args.mi_data), nq=args.mi_queries, encoder_model=args.mi_model)
        return 0
    print(f"medhash _hamming simd={_hamming.simd_level()}  faiss {faiss.__version__}  numpy {np.__version__}  "
          f"cpu={platform.processor() or platform.machine()}  cores={len(os.sched_getaffinity(0))}")
    rows, checks = ([], []) if args.only_hnsw else bench_exact(args)
    if rows:
        print_exact(rows, checks)
    if not args.no_hnsw and 1_000_000 in args.sizes:
        hrows = bench_hnsw(args)
        print("\n## Approximate (usearch HNSW, M=16, efConstruction=128) vs exact, 1M x 64 bit, k=10\n")
        print_table(hrows, [("data", "data"), ("n", "n"), ("engine", "engine"), ("ef", "ef"),
                            ("recall@10", "recall@10"), ("1q ms", "ms/query (1 thread)"),
                            ("q/s (1 thr, batch)", "queries/s (batch of 100, 1 thread)"), ("build s", "build s")])
    return 0


def results_name(argv=None) -> str:
    """bench_search, or bench_search_multi_index_<sizes>_<data> for the multi-index section."""
    a = parse_args(argv)
    if not a.only_multi_index:
        return "bench_search"
    sizes = "_".join(f"{n // 1_000_000}M" if n % 1_000_000 == 0 else str(n) for n in a.sizes)
    bits = "" if a.mi_model is None else "_" + Path(a.mi_model).stem
    return f"bench_search_multi_index_{sizes}_{'_'.join(a.data)}{bits}{'_updates' if a.mi_updates else ''}"


if __name__ == "__main__":
    with recorded(results_name()):
        status = main()
    raise SystemExit(status)
