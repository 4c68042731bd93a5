"""Mutation fuzzing of the image readers: damaged PNG / JPEG / TIFF / DICOM files must either
decode to a sane image or raise ImageReadError — never another exception, a crash or a hang.

    python benchmarks/fuzz_readers.py                    # 5,000 mutations
    python benchmarks/fuzz_readers.py --n 300 --seed 1   # what tests/test_fuzz_readers.py runs

Seeds are real NIH radiographs (../shared/data or $MEDHASH_DATA) written as 8-bit PNG, 16-bit
PNG, JPEG, TIFF and DICOM (uncompressed, RLE Lossless, JPEG 2000). Mutations: bit flips,
truncation, a 1-8 byte window overwritten with random or extreme values (sizes, lengths, tags),
bytes inserted or deleted. Every mutated file goes through medhash_sdk.readers.read_bytes and the
shared preprocessing, in a child process per chunk with a time limit, so a segfault or a hang is
caught and reported with the file that caused it (saved under --keep DIR).
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _report import recorded

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDHASH_DATA") or ROOT.parent / "shared" / "data")


def seed_files() -> dict[str, bytes]:
    """Small real radiographs in every supported container."""
    import cv2
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    sys.path.insert(0, str(ROOT / "tests"))
    from _dicom_files import make_dataset, to_jpeg_lossless   # the DICOM builders, shared with the tests

    png = sorted((DATA / "nih_png_1024").glob("*.png"))
    if not png:
        raise SystemExit(f"no NIH PNGs under {DATA / 'nih_png_1024'}")
    im = cv2.resize(cv2.imread(str(png[0]), cv2.IMREAD_GRAYSCALE), (96, 96), interpolation=cv2.INTER_AREA)
    out = {
        "png8": cv2.imencode(".png", im)[1].tobytes(),
        "png16": cv2.imencode(".png", im.astype(np.uint16) * 257)[1].tobytes(),
        "jpeg": cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
        "tiff": cv2.imencode(".tiff", im)[1].tobytes(),
    }
    for name, syntax in (("dcm", None), ("dcm_rle", RLELossless), ("dcm_j2k", JPEG2000Lossless),
                         ("dcm_jls", JPEGLSLossless)):
        ds = make_dataset(im.astype(np.uint16) * 16, "MONOCHROME2", 12, WindowCenter=2048, WindowWidth=4096)
        if syntax is not None:
            ds.compress(syntax)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out[name] = buf.getvalue()
    # JPEG Lossless: GDCM alone decodes it in the base install (and writes it here)
    with tempfile.TemporaryDirectory(prefix="medhash-fuzz-seed-") as tmp:
        raw = Path(tmp, "raw.dcm")
        make_dataset(im.astype(np.uint16) * 16, "MONOCHROME2", 12).save_as(raw, enforce_file_format=True)
        out["dcm_jpll"] = to_jpeg_lossless(raw, Path(tmp, "jpll.dcm")).read_bytes()
    # 12-bit JPEG Extended (decoded through GDCM, medhash_sdk._dicom_jpeg12): nothing here can
    # write it, so pydicom's own sample file (in its wheel), and its stream as a JPEG file
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    jpeg12 = get_testdata_file("JPGExtended.dcm")
    if jpeg12 is not None:
        out["dcm_jpeg12"] = Path(jpeg12).read_bytes()
        out["jpeg12"] = next(generate_frames(dcmread(jpeg12).PixelData, number_of_frames=1))
    return out


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    b = bytearray(data)
    kind = rng.choice(["flip", "truncate", "window", "insert", "delete"], p=[0.35, 0.15, 0.3, 0.1, 0.1])
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        b = b[: int(rng.integers(len(b)))]
    elif kind == "window":
        n = int(rng.integers(1, 9))
        i = int(rng.integers(max(1, len(b) - n)))
        fill = rng.choice(["random", "ff", "00", "7f"])
        if fill == "random":
            b[i:i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        else:
            b[i:i + n] = bytes.fromhex(str(fill)) * n
    elif kind == "insert":
        i = int(rng.integers(len(b)))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:
        i = int(rng.integers(len(b)))
        del b[i:i + int(rng.integers(1, 64))]
    return str(kind), bytes(b)


def check_one(data: bytes, suffix: str) -> str:
    """'ok', 'refused' (ImageReadError) or 'FAIL ...' for anything else."""
    from medhash_sdk.exceptions import ImageReadError
    from medhash_sdk.preprocessing import Preprocessing, preprocess
    from medhash_sdk.readers import read_bytes

    try:
        img = read_bytes(data, "<fuzz>", suffix=suffix)
        x = preprocess(img.pixels, Preprocessing(64))
    except ImageReadError:
        return "refused"
    except Exception as e:  # noqa: BLE001 - the point is to find these
        return f"FAIL {type(e).__name__}: {str(e)[:120]}"
    if x.shape != (1, 64, 64) or not np.all(np.isfinite(x)):
        return f"FAIL bad output {x.shape}"
    return "ok"


def _child(cases_path: str) -> None:
    """Run a chunk of cases; print one JSON line per case as it finishes."""
    with open(cases_path, "rb") as f:
        cases = json.loads(f.read())
    for i, suffix, hexdata in cases:
        print(json.dumps([i, check_one(bytes.fromhex(hexdata), suffix)]), flush=True)


def run(n: int, seed: int, chunk: int = 100, timeout: float = 120.0, keep: str | None = None) -> collections.Counter:
    rng = np.random.default_rng(seed)
    seeds = seed_files()
    names = sorted(seeds)
    stats: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="medhash-fuzz-") as tmp:
        for start in range(0, n, chunk):
            cases, blobs = [], {}
            for i in range(start, min(n, start + chunk)):
                name = names[i % len(names)]
                kind, data = mutate(seeds[name], rng)
                suffix = ".dcm" if name.startswith("dcm") else ""
                cases.append([i, suffix, data.hex()])
                blobs[i] = (name, kind, data)
            path = os.path.join(tmp, "cases.json")
            with open(path, "w") as f:
                json.dump(cases, f)
            proc = subprocess.run([sys.executable, __file__, "--child", path], capture_output=True, text=True,
                                  timeout=None if timeout <= 0 else timeout, cwd=str(ROOT),
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
            done = {}
            for line in proc.stdout.splitlines():
                i, outcome = json.loads(line)
                done[i] = outcome
            for i, (name, kind, data) in blobs.items():
                outcome = done.get(i)
                if outcome is None:  # the child died (signal) or stopped before this case
                    outcome = f"FAIL child exited {proc.returncode} before finishing"
                stats[outcome if outcome.startswith("FAIL") else f"{name}: {outcome}"] += 1
                if outcome.startswith("FAIL") and keep:
                    os.makedirs(keep, exist_ok=True)
                    Path(keep, f"fuzz-{name}-{kind}-{i}.bin").write_bytes(data)
                if outcome.startswith("FAIL") and i not in done:
                    break   # later cases of this chunk were not run: count only the culprit
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="save failing files here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child(a.child)
        return 0
    with recorded("fuzz_readers"):
        stats = run(a.n, a.seed, keep=a.keep)
        fails = sum(v for k, v in stats.items() if k.startswith("FAIL"))
        for k, v in sorted(stats.items()):
            print(f"{v:6d}  {k}")
        print(f"{a.n} mutated files: {fails} failures")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
