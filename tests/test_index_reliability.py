"""Index files under damage and kills: the short CI run of benchmarks/fuzz_index.py.

- >= 1000 mutated files (truncations, bit flips anywhere, wrong header fields, overwritten
  ranges, appended bytes, resealed crafted files): load() returns exactly what was saved or
  raises IndexFileError; view() and everything done with a view raise nothing else; verify()
  catches every changed byte view() let through.
- view() + use + verify() of mutated files in a separate process with a timeout, so a crash
  or a hang would fail the test instead of killing the run.
- 20 SIGKILLs at random moments of save(): the path always loads, as the old or the new index.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FUZZ_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_index.py"


@pytest.fixture(scope="module")
def fuzz():
    if str(FUZZ_PATH.parent) not in sys.path:     # the script imports its sibling benchmarks/_report.py
        sys.path.insert(0, str(FUZZ_PATH.parent))
    spec = importlib.util.spec_from_file_location("fuzz_index", FUZZ_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def no_fsync(monkeypatch):
    """fsync is not under test here and only slows the loop down on a shared disk."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def test_mutated_files_load_exactly_or_raise(fuzz, tmp_path, no_fsync):
    stats = fuzz.fuzz(1200, seed=1, workdir=str(tmp_path))
    failures = {k: v for k, v in stats.items() if "FAIL" in k}
    assert failures == {}
    assert stats["total"] == 1200
    rejected_by_load = sum(v for k, v in stats.items() if k.startswith("load-rejected"))
    caught_by_verify = sum(v for k, v in stats.items() if "view-opened+verify-rejected" in k)
    assert rejected_by_load > 800 and caught_by_verify > 100  # the mutations do reach the checks


def test_mutations_cover_every_kind(fuzz):
    rng = np.random.default_rng(0)
    data = bytes(range(256)) * 8
    kinds = {fuzz.mutate(data, rng)[0].split("-")[0] for _ in range(400)}
    assert {"truncate", "bitflip", "header", "overwrite", "append", "resealed"} <= kinds


def test_views_of_mutated_files_never_crash_or_hang(fuzz, tmp_path):
    rng = np.random.default_rng(2)
    paths = []
    for name, idx in fuzz.base_indexes().items():
        base = tmp_path / f"{name}.mhi"
        idx.save(base)
        original = base.read_bytes()
        for i in range(100):
            p = tmp_path / f"{name}-{i}.mhi"
            p.write_bytes(fuzz.mutate(original, rng)[1])
            paths.append(str(p))
    proc = subprocess.run([sys.executable, str(FUZZ_PATH), "--view-files", *paths],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert sum(counts.values()) == len(paths) == 300
    assert counts.get("rejected", 0) > 100


def test_sigkill_during_save_always_leaves_a_whole_index(fuzz, tmp_path):
    stats = fuzz.sigkill_trials(tmp_path / "big.mhi", n_kills=20, n_codes=200_000, seed=3)
    assert stats["kills"] == 20 and stats["a"] + stats["b"] == 20
    assert stats["interrupted"] >= 1  # kills did land inside save()
