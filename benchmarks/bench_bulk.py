"""Bulk encoding speed (issue 5, "Speed"): the whole `medhash encode` command vs its two costs.

    python benchmarks/bench_bulk.py [--files 2000] [--batch-size 64] [--workers N] [--json out.json]

Data (a temporary directory, deleted at the end unless --keep): --files 1024 x 1024 inputs,
half the 48 real NIH PNGs (../shared/data/nih_png_1024) copied under new names, a quarter
16-bit PNGs and a quarter 16-bit DICOM files (MONOCHROME2, window centre/width) made from the
same real radiographs (x 257, so no synthetic content). One run measures, on that data:
- decode only: the pipeline of `medhash encode` (same decode pools, workers and look-ahead)
  with the model replaced by nothing, files -> preprocessed arrays, files/s;
- model only: Encoder.encode_preprocessed on already preprocessed batches, images/s;
- the whole command: `medhash encode DIR --out OUT` in a subprocess, wall clock from launch to
  exit (interpreter start, model load, discovery, shards, manifest, errors file), files/s;
  and its pipeline time alone (the summary's seconds).
Target on a CPU, where decoding and the model share the cores: whole >= 90% of
1 / (1/decode + 1/model); on a GPU server, >= 90% of min(decode, model).
Peak memory: the summed RSS of the encode process and its decode processes, sampled every
50 ms (ru_maxrss would mislead: it survives fork + exec, so a child reports its parent's size).
Model: the paper's attention hashing network with random weights (speed does not depend on
them), exported by medhash_train.onnx_export.export_random (needs torch), or --model FILE.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from _report import recorded

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "nih_png_1024"

def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    """root and every process below it (from /proc/*/stat parent ids)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        out += frontier
    return out


class TreeRss(threading.Thread):
    """Samples the summed RSS of a process and its descendants every 50 ms; keeps the peaks.

    (ru_maxrss is not used: it survives fork + exec, so a child started by a big parent
    reports the parent's size.)
    """

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_total_kb, self.peak_main_kb, self.max_procs = pid, 0, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _descendants(self.pid)
            sizes = [_rss_kb(p) for p in pids]
            self.peak_total_kb = max(self.peak_total_kb, sum(sizes))
            self.peak_main_kb = max(self.peak_main_kb, sizes[0])
            self.max_procs = max(self.max_procs, sum(1 for x in sizes if x))
            self.stop.wait(0.05)


def make_data(root: Path, n: int, source: Path = DATA) -> dict[str, int]:
    sys.path.insert(0, str(ROOT / "tests"))
    from _dicom_files import make_dataset   # the one DICOM builder, shared with the tests

    pngs = sorted(source.glob("*.png"))
    if len(pngs) < 10:
        raise SystemExit(f"needs the NIH PNGs in {source} (--source)")
    n16 = n // 4
    ndcm = n // 4
    n8 = n - n16 - ndcm
    for d in ("png8", "png16", "dicom"):
        (root / d).mkdir(parents=True)
    for i in range(n8):
        shutil.copyfile(pngs[i % len(pngs)], root / "png8" / f"case{i:05d}.png")
    sources = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in pngs]
    deep = [s.astype(np.uint16) * 257 for s in sources]
    for i in range(n16):
        cv2.imwrite(str(root / "png16" / f"case{i:05d}.png"), deep[i % len(deep)])
    for i in range(ndcm):
        ds = make_dataset(deep[i % len(deep)], "MONOCHROME2", 16, WindowCenter=32768, WindowWidth=60000)
        ds.save_as(root / "dicom" / f"case{i:05d}.dcm", enforce_file_format=True)
    return {"png8": n8, "png16": n16, "dicom": ndcm}


def decode_only(enc, inputs, workers: int, batch_size: int, shard_size: int, pool: str) -> float:
    """files/s of the encode pipeline with a model that does nothing (same pools and look-ahead)."""
    from medhash_sdk.batch.job import shard_slices
    from medhash_sdk.pipeline import DecodePools, encode_groups

    nbytes = enc.nbits // 8
    t = time.perf_counter()
    with DecodePools(workers, pool) as pools:
        shards = ((i, [inputs.items[k] for k in r]) for i, r in enumerate(shard_slices(len(inputs), shard_size)))
        n = sum(len(r.items) + len(r.errors) for r in encode_groups(
            shards, enc.loader(), lambda x: np.zeros((len(x), nbytes), np.uint8), batch_size=batch_size,
            nbytes=nbytes, pools=pools, arg=lambda it: it.path, kind=lambda it: it.kind))
    return n / (time.perf_counter() - t)


def model_only(enc, inputs, batch_size: int, n: int) -> float:
    """images/s of Encoder.encode_preprocessed on already preprocessed batches (n images)."""
    loader = enc.loader()
    pool = [loader(it.path) for it in inputs.items[: 2 * batch_size]]
    batches = [np.stack(pool[s:s + batch_size]) for s in range(0, len(pool), batch_size)]
    enc.encode_preprocessed(batches[0])   # warm-up
    t = time.perf_counter()
    done = 0
    k = 0
    while done < n:
        done += len(enc.encode_preprocessed(batches[k % len(batches)]))
        k += 1
    return done / (time.perf_counter() - t)


def whole(data: Path, out: Path, model: Path, workers: int, batch_size: int, shard_size: int, pool: str) -> dict:
    cmd = [sys.executable, "-m", "medhash_sdk", "encode", str(data), "--out", str(out), "--model", str(model),
           "--batch-size", str(batch_size), "--workers", str(workers), "--shard-size", str(shard_size),
           "--pool", pool, "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = TreeRss(p.pid)
    rss.start()
    _, err = p.communicate()
    wall = time.perf_counter() - t
    rss.stop.set()
    rss.join()
    if p.returncode != 0:
        raise SystemExit(f"medhash encode failed ({p.returncode}):\n{err}")
    summary = err.strip().splitlines()[-1]
    pipeline_s = float(summary.split("(")[1].split(" s")[0])
    return {"wall_s": wall, "pipeline_s": pipeline_s, "summary": summary, "peak_rss_total_mb": rss.peak_total_kb / 1024,
            "peak_rss_main_mb": rss.peak_main_kb / 1024, "processes": rss.max_procs}


def main() -> int:
    from medhash_sdk._system import available_cpus
    from medhash_sdk.encoder import Encoder
    from medhash_sdk.inputs import discover

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: the usable cores)")
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--pool", choices=("auto", "thread", "process"), default="auto")
    ap.add_argument("--model", default=None, help="an exported .onnx (default: random-init paper net)")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--source", default=str(DATA), help="folder of the real NIH PNGs")
    ap.add_argument("--compare-pools", action="store_true",
                    help="also measure decode-only files/s per input kind with threads and with processes")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    workers = args.workers or available_cpus()
    work = Path(args.dir or tempfile.mkdtemp(prefix="medhash-bench-bulk-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.model:
            model = Path(args.model)
            model_desc = str(model)
        else:
            from medhash_train.onnx_export import export_random

            model = work / "random_paper_net.onnx"
            export_random(str(model), nbits=args.bits, input_size=args.input_size, width=args.width)
            model_desc = (f"paper attention hashing net, random init (medhash_train.onnx_export.export_random), "
                          f"width {args.width}, {args.input_size} px, {args.bits} bits")
        data = work / "data"
        if not data.exists():
            t = time.perf_counter()
            kinds = make_data(data, args.files, Path(args.source))
            print(f"generated {kinds} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        inputs = discover([data])
        n = len(inputs)
        enc = Encoder(model, providers="cpu")
        dec = decode_only(enc, inputs, workers, args.batch_size, args.shard_size, args.pool)
        mod = model_only(enc, inputs, args.batch_size, min(n, 2048))
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        w = whole(data, out, model, workers, args.batch_size, args.shard_size, args.pool)
        bound = 1.0 / (1.0 / dec + 1.0 / mod)
        res = {
            "files": n, "workers": workers, "pool": args.pool, "batch_size": args.batch_size, "cpus": available_cpus(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible",
            "model": model_desc, "provider": enc.provider,
            "decode_only_fps": dec, "model_only_fps": mod, "bound_fps": bound,
            "whole_fps": n / w["wall_s"], "pipeline_fps": n / w["pipeline_s"],
            "whole_vs_bound": n / w["wall_s"] / bound, "pipeline_vs_bound": n / w["pipeline_s"] / bound,
            **w,
        }
        print(f"{n} files (1024 x 1024: 8-bit PNG, 16-bit PNG, DICOM), {workers} decode workers ({args.pool}), batch "
              f"{args.batch_size}, {res['cpus']} usable cores; model: {model_desc}; {enc.provider}")
        print(f"| measure | files/s |\n|---|---|\n| decode only (same pools) | {dec:.1f} |\n"
              f"| model only (preprocessed) | {mod:.1f} |\n| bound 1/(1/decode+1/model) | {bound:.1f} |\n"
              f"| whole `medhash encode` (wall, incl. start-up) | {res['whole_fps']:.1f} "
              f"({100 * res['whole_vs_bound']:.0f}% of bound) |\n"
              f"| its pipeline alone (summary seconds) | {res['pipeline_fps']:.1f} "
              f"({100 * res['pipeline_vs_bound']:.0f}% of bound) |")
        print(f"peak RSS of `medhash encode` and its decode processes together: {w['peak_rss_total_mb']:.0f} MB "
              f"(main process {w['peak_rss_main_mb']:.0f} MB, up to {w['processes']} processes)")
        if args.compare_pools:
            print("\ndecode only, files/s, by input kind and pool (same workers):\n| kind | threads | processes |\n|---|---|---|")
            res["pools"] = {}
            for kind in ("png8", "png16", "dicom"):
                sub = discover([data / kind])
                r = {pool: decode_only(enc, sub, workers, args.batch_size, args.shard_size, pool)
                     for pool in ("thread", "process")}
                res["pools"][kind] = r
                print(f"| {kind} | {r['thread']:.1f} | {r['process']:.1f} |")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with recorded("bench_bulk"):
        status = main()
    raise SystemExit(status)
