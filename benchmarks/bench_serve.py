"""Throughput and latency of `medhash serve`, on 127.0.0.1 only, bounded in count and time.

    python benchmarks/bench_serve.py [--files 768] [--rounds 4] [--codes 1000000] [--id-requests 10000]

1. Search by upload, concurrency 32 (real 1024 x 1024 NIH PNGs, the bundled model) against the
   Encoder's own from-files rate (Encoder.encode over the same files) measured in the same run,
   in alternating rounds so both see the same machine load. Target: >= 85% of it. Beside it,
   the server's CPU time a request and the share of the cores left idle in each (Linux).
2. Adds, concurrency 32 (the same PNGs, new ids each), durability on (SQLite WAL,
   synchronous=FULL, group commit): items/s.
3. Search by stored id over 1,000,000 codes (random 64-bit codes written straight into a data
   folder of the bundled model), concurrency 32, 10,000 requests: requests/s, p99, errors.
   Target: >= 1,000 requests/s with 0 errors.
--mixed: only searches by upload and by id at once (half the concurrency each), a server each
   for --search-threads 1 and 2, alternating: what a second scan thread costs the uploads.

The server is a separate process (`python -m medhash_sdk serve`); the load comes from another
process (asyncio + uvloop + httptools, keep-alive connections), so neither's Python competes
with the other's GIL. Writes the table to benchmarks/results/bench_serve.md (benchmarks/_report.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from _report import recorded

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("MEDHASH_DATA") or ROOT.parent / "shared" / "data")


# ------------------------------------------------------------------ the load generator (own process)
def _load(port: int, token: str, requests: list[bytes], concurrency: int, limit_s: float, q: mp.Queue) -> None:
    import httptools
    import uvloop

    class Conn(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.waiter: asyncio.Future | None = None
            self.body: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, b: bytes) -> None:
            self.body.append(b)

        def on_message_complete(self) -> None:
            w, self.waiter = self.waiter, None
            if w is not None and not w.done():
                w.set_result((self.parser.get_status_code(), b"".join(self.body)))
            self.body = []

        def connection_lost(self, exc: Exception | None) -> None:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc or ConnectionError("closed"))

    cpu0 = time.process_time()

    async def main() -> tuple[list[float], list[int], float, float]:
        loop = asyncio.get_running_loop()
        lat: list[float] = []
        statuses: list[int] = []
        todo = iter(requests)
        deadline = time.perf_counter() + limit_s

        async def worker() -> None:
            conn: Conn | None = None
            for raw in todo:
                if time.perf_counter() > deadline:
                    return
                if conn is None or conn.transport.is_closing():
                    _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
                t = time.perf_counter()
                conn.waiter = loop.create_future()
                conn.transport.write(raw)
                try:
                    status, _ = await conn.waiter
                except (ConnectionError, OSError):
                    status, conn = 599, None
                lat.append(time.perf_counter() - t)
                statuses.append(status)
            if conn is not None:
                conn.transport.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lat, statuses, time.perf_counter() - t0, time.process_time() - cpu0

    q.put(uvloop.run(main()))


def load(port: int, token: str, requests: list[bytes], concurrency: int, limit_s: float) -> dict[str, float]:
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_load, args=(port, token, requests, concurrency, limit_s, q))
    p.start()
    lat, statuses, wall, client_cpu = q.get(timeout=limit_s + 120)
    p.join(30)
    lat_ms = np.asarray(lat) * 1e3
    ok = sum(1 for s in statuses if 200 <= s < 300)
    return {"n": len(statuses), "ok": ok, "errors": len(statuses) - ok, "wall": wall, "rate": ok / wall,
            "p50": float(np.percentile(lat_ms, 50)), "p95": float(np.percentile(lat_ms, 95)),
            "p99": float(np.percentile(lat_ms, 99)), "statuses": sorted(set(statuses)),
            "client_cpu_ms": client_cpu / max(1, len(statuses)) * 1e3}


def multipart(fields: dict[str, str], file_name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "----medhash-bench-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def http_request(method: str, path: str, token: str, body: bytes, ctype: str) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


# ------------------------------------------------------------------ the server (own process)
class Server:
    def __init__(self, folder: Path, tmp: Path, model: str | None = None, search_threads: int = 1):
        self.ready = tmp / f"ready-{time.monotonic_ns()}.json"
        cmd = [sys.executable, "-m", "medhash_sdk", "serve", "--data-dir", str(folder), "--port", "0",
               "--ready-file", str(self.ready), "--providers", "cpu", "--log-level", "warning"]
        if model:
            cmd += ["--model", model]
        cmd += ["--search-threads", str(search_threads)]
        self.log = open(tmp / "server.log", "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited; see {tmp / 'server.log'}")
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("the server did not start in 10 minutes")
            time.sleep(0.05)
        self.start_s = time.perf_counter() - t0
        self.port = json.loads(self.ready.read_text())["http"]

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far (user + system, all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def idle_counter() -> tuple[int, int]:
    """(idle + iowait, all) jiffies of the machine so far, from /proc/stat; (0, 0) elsewhere."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return v[3] + v[4], sum(v)


def idle_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def scan_batch(port: int, token: str) -> float:
    """Mean searches per scan so far, from the server's /metrics."""
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(req, timeout=30).read().decode()
    vals = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
            if ln.startswith(("medhash_scan_batch_size_sum", "medhash_scan_batch_size_count"))}
    return vals.get("medhash_scan_batch_size_sum", 0.0) / max(1.0, vals.get("medhash_scan_batch_size_count", 0.0))


def tokens(folder: Path) -> tuple[str, str]:
    from medhash_sdk.serve import tokens as t
    from medhash_sdk.serve.db import Database

    db = Database(folder)
    try:
        return t.create(db, "write", "bench-write")[1], t.create(db, "read", "bench-read")[1]
    finally:
        db.close()


def fill(folder: Path, n: int, fingerprint: str, nbits: int, model_path: str, seed: int = 0) -> list[str]:
    """n random codes written straight into the data folder's database (as the writer would)."""
    from medhash_sdk.serve.db import Database

    db = Database(folder)
    db.check_model(fingerprint, nbits, model_path)
    rng = np.random.default_rng(seed)
    ids = [f"bench-{i:07d}" for i in range(n)]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    step = 100_000
    for s in range(0, n, step):
        codes = rng.integers(0, 256, (min(step, n - s), nbits // 8), dtype=np.uint8)
        with db.transaction() as con:
            con.executemany("INSERT INTO items (id, code, metadata, modality, view_position, study_date, "
                            "patient_hash, created) VALUES (?, ?, '{}', 'CR', 'PA', 20240101, NULL, ?)",
                            ((ids[s + i], codes[i].tobytes(), now) for i in range(len(codes))))
    db.close()
    return ids


def id_searches(token: str, ids: list[str], count: int, seed: int) -> list[bytes]:
    """count requests searching k = 10 by a stored id drawn at random from ids."""
    rng = np.random.default_rng(seed)
    return [http_request("POST", "/v1/search", token, json.dumps({"id": ids[int(i)], "k": 10}).encode(),
                         "application/json") for i in rng.integers(0, len(ids), count)]


def upload_searches(token: str, files: list[Path], blobs: list[bytes]) -> list[bytes]:
    """One request per file, searching k = 10 by uploading it."""
    return [http_request("POST", "/v1/search", token, *multipart({"k": "10"}, f.name, b))
            for f, b in zip(files, blobs)]


def by_id_run(args: argparse.Namespace, tmp: Path, enc: object, model: str) -> tuple[dict, float, float]:
    """Part 3: search by stored id over --codes random codes."""
    folder2 = tmp / "million"
    write2, read2 = tokens(folder2)
    t = time.perf_counter()
    ids = fill(folder2, args.codes, enc.fingerprint, enc.nbits, model)  # type: ignore[attr-defined]
    fill_s = time.perf_counter() - t
    server = Server(folder2, tmp, model, args.search_threads)
    try:
        reqs = id_searches(read2, ids, args.id_requests, seed=1)
        load(server.port, read2, reqs[:500], args.concurrency, args.limit_s)        # warm-up
        cpu = server.cpu_s()
        if os.environ.get("BENCH_PYSPY"):
            subprocess.Popen(["py-spy", "record", "-o", os.environ["BENCH_PYSPY"], "-f", "raw", "-d", "12", "--native",
                              "-p", str(server.proc.pid)])
        by_id = load(server.port, read2, reqs, args.concurrency, args.limit_s)
        by_id["server_cpu_ms"] = (server.cpu_s() - cpu) / max(1, by_id["n"]) * 1e3
        by_id["scan_batch"] = scan_batch(server.port, read2)
        print(f"by id: {by_id}", file=sys.stderr)
    finally:
        server.stop()
    return by_id, server.start_s, fill_s


def mixed_run(args: argparse.Namespace, tmp: Path, enc: object, model: str, files: list[Path],
              blobs: list[bytes]) -> None:
    """--mixed: searches by upload and by stored id at once over --codes codes, a server each for
    --search-threads 1 and 2, alternating (prints; writes no table)."""
    import threading

    folder = tmp / "mixed"
    _, read = tokens(folder)
    ids = fill(folder, args.codes, enc.fingerprint, enc.nbits, model)  # type: ignore[attr-defined]
    by_id = id_searches(read, ids, args.id_requests, seed=2)
    uploads = upload_searches(read, files, blobs)
    half = max(1, args.concurrency // 2)
    for r in range(args.rounds):
        for threads in (1, 2):
            server = Server(folder, tmp, model, threads)
            try:
                load(server.port, read, uploads[:32], half, args.limit_s)                  # warm-up
                load(server.port, read, by_id[:500], half, args.limit_s)
                out: dict[str, dict] = {}
                runs = [threading.Thread(target=lambda: out.__setitem__("upload", load(
                            server.port, read, uploads, half, args.limit_s))),
                        threading.Thread(target=lambda: out.__setitem__("by_id", load(
                            server.port, read, by_id, half, args.limit_s)))]
                cpu = server.cpu_s()
                for t in runs:
                    t.start()
                for t in runs:
                    t.join()
                # the two loads end at different times: each rate is over its own run
                up, bi = out["upload"], out["by_id"]
                print(f"round {r} search threads {threads}: upload {up['rate']:.1f}/s (p99 {up['p99']:.0f} ms, "
                      f"{up['errors']} errors), by id {bi['rate']:.0f}/s (p99 {bi['p99']:.0f} ms, {bi['errors']} "
                      f"errors), server CPU {server.cpu_s() - cpu:.1f} s", flush=True)
            finally:
                server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=768,
                    help="uploads per round (default 768: at concurrency 32 a round of ~200 requests spends "
                         "a few percent of its time draining the last requests); adds use the first 192")
    ap.add_argument("--rounds", type=int, default=4, help="alternating Encoder / service rounds (default 4)")
    ap.add_argument("--codes", type=int, default=1_000_000, help="codes for the search-by-id run")
    ap.add_argument("--id-requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--limit-s", type=float, default=300, help="time limit of one load run")
    ap.add_argument("--only-by-id", action="store_true", help="only part 3 (prints, writes no table)")
    ap.add_argument("--mixed", action="store_true",
                    help="only uploads and searches by id at once, half the concurrency each, alternating the "
                         "server's --search-threads 1 and 2 (prints, writes no table)")
    ap.add_argument("--search-threads", type=int, default=1, help="the server's --search-threads (default 1)")
    ap.add_argument("--model", default=None, metavar="MODEL.onnx",
                    help="a model other than the bundled one (table: bench_serve_<file name>.md)")
    args = ap.parse_args()

    from medhash_sdk import Encoder
    from medhash_sdk.encoder import default_model_path

    pngs = sorted((DATA / "nih_png_1024").glob("*.png"))
    if not pngs:
        sys.exit(f"no NIH PNGs in {DATA / 'nih_png_1024'} (set MEDHASH_DATA)")
    files = [pngs[i % len(pngs)] for i in range(args.files)]
    blobs = [p.read_bytes() for p in files]
    model = args.model or str(default_model_path())
    enc = Encoder(model, providers="cpu")
    enc.encode(files[:64], batch_size=64)            # warm-up
    rows: list[tuple[str, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"work folder {tmp}", file=sys.stderr)

    if args.only_by_id:
        print(by_id_run(args, tmp, enc, model)[0])
        return 0
    if args.mixed:
        mixed_run(args, tmp, enc, model, files, blobs)
        return 0
    # ---------------------------------------------------------- 1 + 2: uploads and adds
    folder = tmp / "data"
    write, read = tokens(folder)
    server = Server(folder, tmp, model, args.search_threads)
    try:
        adds = [http_request("POST", "/v1/items", write, *multipart(
            {"id": f"nih-{i}-{files[i].stem}", "metadata": json.dumps({"modality": "DX"})}, files[i].name, blobs[i]))
            for i in range(min(192, len(files)))]
        add = load(server.port, write, adds, args.concurrency, args.limit_s)
        print(f"adds: {add}", file=sys.stderr)
        searches = upload_searches(read, files, blobs)
        load(server.port, read, searches[:32], args.concurrency, args.limit_s)     # warm-up
        enc_rates, enc_idle, ups = [], [], []
        for r in range(args.rounds):
            t, idle0 = time.perf_counter(), idle_counter()
            enc.encode(files, batch_size=64)
            enc_rates.append(len(files) / (time.perf_counter() - t))
            enc_idle.append(idle_share(idle0, idle_counter()))
            cpu, idle0 = server.cpu_s(), idle_counter()
            ups.append(load(server.port, read, searches, args.concurrency, args.limit_s))
            ups[-1]["idle"] = idle_share(idle0, idle_counter())
            ups[-1]["server_cpu_ms"] = (server.cpu_s() - cpu) / max(1, ups[-1]["n"]) * 1e3
            print(f"round {r}: Encoder {enc_rates[-1]:.1f} files/s, service {ups[-1]}", file=sys.stderr)
    finally:
        server.stop()
    enc_rate = float(np.mean(enc_rates))
    up_rate = float(np.mean([u["rate"] for u in ups]))
    lat = {k: float(np.mean([u[k] for u in ups])) for k in ("p50", "p95", "p99", "idle", "server_cpu_ms")}
    up_errors = sum(u["errors"] for u in ups)

    by_id, start_s, fill_s = by_id_run(args, tmp, enc, model)

    # ---------------------------------------------------------- table
    ratio = up_rate / enc_rate
    rows = [
        ("Encoder from files (Encoder.encode, batch 64), same run", f"{enc_rate:.1f} images/s "
         f"({', '.join(f'{x:.1f}' for x in enc_rates)}); cores idle {np.mean(enc_idle):.0%}"),
        (f"search by upload, concurrency {args.concurrency}, {len(files)} x {args.rounds} requests",
         f"{up_rate:.1f} requests/s = **{ratio:.2f}** of the Encoder (target >= 0.85: "
         f"{'met' if ratio >= 0.85 else 'NOT met'}); p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, "
         f"p99 {lat['p99']:.0f} ms; {up_errors} errors; server CPU {lat['server_cpu_ms']:.2f} ms a request; "
         f"cores idle {lat['idle']:.0%}"),
        (f"adds, concurrency {args.concurrency}, {add['n']} items, durable (WAL, synchronous=FULL, group commit)",
         f"{add['rate']:.1f} items/s; p50 {add['p50']:.0f} ms, p99 {add['p99']:.0f} ms; {add['errors']} errors"),
        (f"search by stored id, {args.codes:,} codes, concurrency {args.concurrency}, {by_id['n']:,} requests",
         f"**{by_id['rate']:,.0f} requests/s** (target >= 1,000: {'met' if by_id['rate'] >= 1000 else 'NOT met'}); "
         f"p50 {by_id['p50']:.1f} ms, p95 {by_id['p95']:.1f} ms, p99 {by_id['p99']:.1f} ms; "
         f"{by_id['errors']} errors; server CPU {by_id['server_cpu_ms']:.2f} ms a request"),
        (f"start-up on {args.codes:,} items (no snapshot: every code read from SQLite)", f"{start_s:.1f} s "
         f"(writing them: {fill_s:.1f} s)"),
    ]
    load_avg = os.getloadavg()
    with recorded("bench_serve" if args.model is None else f"bench_serve_{Path(model).stem}"):
        print(f"Load average at the end {load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f} (1 / 5 / 15 min); "
              f"model {Path(model).name} ({enc.fingerprint[:12]}), ORT CPU; server and load generator are "
              "separate processes on 127.0.0.1.\n")
        print("| measure | result |\n|---|---|")
        for a, b in rows:
            print(f"| {a} | {b} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
