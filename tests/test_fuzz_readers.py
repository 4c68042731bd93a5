"""Damaged image files: decoded sanely or refused with ImageReadError, never anything else.

A short run of benchmarks/fuzz_readers.py (children with a time limit catch crashes and hangs);
`python benchmarks/fuzz_readers.py` is the long run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from _data import NIH_PNGS, requires_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
fuzz_readers = pytest.importorskip("fuzz_readers")

pytestmark = requires_data(bool(NIH_PNGS), "real NIH PNGs not found")


def test_mutated_files_decode_or_raise_image_read_error():
    stats = fuzz_readers.run(n=420, seed=7, chunk=140, timeout=120)
    failures = {k: v for k, v in stats.items() if k.startswith("FAIL")}
    assert not failures, failures
    assert sum(stats.values()) == 420
    # both outcomes occur for every container, so the mutations really reach the decoders
    for name in ("dcm", "dcm_rle", "dcm_j2k", "dcm_jls", "dcm_jpll", "dcm_jpeg12", "jpeg", "jpeg12", "tiff"):
        assert stats[f"{name}: ok"] > 0 and stats[f"{name}: refused"] > 0, (name, stats)


def test_codec_panic_is_an_image_read_error(monkeypatch):
    """Rust codecs (pylibjpeg-rle) panic with a BaseException on some corrupt streams (the fuzzer
    found one): the reader must turn that into ImageReadError naming the file."""
    import pydicom.pixels

    from medhash_sdk.exceptions import ImageReadError
    from medhash_sdk.readers import read_bytes

    class PanicException(BaseException):   # what pyo3 raises
        pass

    def panics(*args, **kwargs):
        raise PanicException("index out of bounds: the len is 18432 but the index is 18432")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", panics)
    with pytest.raises(ImageReadError, match="x.dcm.*PanicException"):
        read_bytes(fuzz_readers.seed_files()["dcm_rle"], "x.dcm", suffix=".dcm")
