"""The C++ engine as plain headers (csrc/), without Python: built with g++ and checked against a
naive reference (tests/cpp/search_check.cpp); also cross-built for aarch64 and run under qemu
where `aarch64-linux-gnu-g++` and `qemu-aarch64` exist, proving the portable path (no x86
intrinsics) builds and gives exact answers there.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cpp" / "search_check.cpp"


def _build_and_run(compiler: str, out: Path, runner: list[str], extra: list[str]) -> str:
    subprocess.run([compiler, "-std=c++17", "-O2", "-pthread", *extra, f"-I{ROOT / 'csrc'}", str(SOURCE),
                    "-o", str(out)], check=True, capture_output=True, text=True, timeout=300)
    res = subprocess.run([*runner, str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def test_headers_native(tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    out = _build_and_run("g++", tmp_path / "check", [], [])
    assert out.rstrip().endswith(" passed, 0 failed"), out


def test_headers_portable_path_on_aarch64(tmp_path):
    cross, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if not (cross and qemu):
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64 (Debian: g++-aarch64-linux-gnu qemu-user)")
    out = _build_and_run(cross, tmp_path / "check_arm", [qemu], ["-static"])
    assert "simd level: portable" in out and out.rstrip().endswith(" passed, 0 failed"), out
