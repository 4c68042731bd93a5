"""TensorRT backend: every TensorRT call type-checked with mypy against tensorrt-stubs 10.13, the
engine file format on CPU, and a real build + run where TensorRT and an NVIDIA GPU exist.

tensorrt-stubs 10.13.0.35.1 installs bare .pyi files (no py.typed, so mypy ignores them in
site-packages) that have a few syntax errors (a parameter named ``in``, one non-default
parameter after defaults) and import the runtime-only ``tensorrt_libs``. The test copies them,
fixes only that syntax mechanically, and puts them on MYPYPATH; signatures are untouched.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medhash_sdk.backends import ENGINE_MAGIC, is_engine_file
from medhash_sdk.backends.tensorrt import read_engine_file, write_engine_file
from medhash_sdk.exceptions import ModelFileError
from _data import NIH_PNG_DIR

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "medhash_sdk" / "backends" / "tensorrt.py"


def _stub_dir(tmp: Path) -> Path:
    try:
        files = [f for f in md.files("tensorrt-stubs") or [] if str(f).endswith(".pyi")]
    except md.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs==10.13.*)")
    version = md.version("tensorrt-stubs")
    assert version.startswith("10.13."), f"tensorrt-stubs {version}: the backend is pinned to TensorRT 10.13"
    out = tmp / "stubs"
    for f in files:
        dst = out / str(f)
        dst.parent.mkdir(parents=True, exist_ok=True)
        text = Path(str(f.locate())).read_text()
        text = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", text)       # `in` is a keyword
        text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
        dst.write_text(text)
    (out / "tensorrt_libs.pyi").write_text("")
    # report errors in our code only, not inside the third-party stubs
    (tmp / "mypy.ini").write_text("[mypy]\n[mypy-tensorrt.*]\nignore_errors = True\n"
                                  "[mypy-tensorrt_bindings.*]\nignore_errors = True\n")
    return out


def _mypy(tmp: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    stubs = _stub_dir(tmp)
    env = {"MYPYPATH": str(stubs), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                           "--config-file", str(tmp / "mypy.ini"), "--cache-dir", str(tmp / "cache"), *targets], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_tensorrt_backend_type_checks_against_stubs(tmp_path):
    out = _mypy(tmp_path, str(MODULE))
    assert out.returncode == 0, out.stdout + out.stderr
    # control: the same check rejects calls removed in TensorRT 10 (so the stubs were really used)
    bad = tmp_path / "bad_trt.py"
    bad.write_text("import tensorrt as trt\n"
                   "def f(b: trt.Builder, n: trt.INetworkDefinition, c: trt.IBuilderConfig) -> None:\n"
                   "    b.build_engine(n, c)\n"
                   "    c.max_workspace_size = 1 << 30\n")
    out = _mypy(tmp_path, str(bad))
    assert out.returncode != 0 and "build_engine" in out.stdout and "max_workspace_size" in out.stdout, out.stdout


def test_engine_file_round_trip_and_damage(tmp_path):
    header = {"format": "medhash-trt/1", "card": "{}", "precision": "fp16"}
    p = write_engine_file(tmp_path / "m.engine", header, b"PLAN" * 100)
    assert p.read_bytes().startswith(ENGINE_MAGIC) and is_engine_file(p)
    h, plan = read_engine_file(p)
    assert h == header and plan == b"PLAN" * 100
    data = p.read_bytes()
    (tmp_path / "cut.engine").write_bytes(data[:30])
    with pytest.raises(ModelFileError, match="truncated"):
        read_engine_file(tmp_path / "cut.engine")
    (tmp_path / "noplan.engine").write_bytes(data[: len(data) - 400])
    with pytest.raises(ModelFileError, match="no TensorRT plan"):
        read_engine_file(tmp_path / "noplan.engine")
    (tmp_path / "x.engine").write_bytes(b"raw trtexec plan")
    with pytest.raises(ModelFileError, match="not a medhash TensorRT engine"):
        read_engine_file(tmp_path / "x.engine")
    assert not is_engine_file(tmp_path / "nothing.onnx")


def _gpu_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None or not _has_tensorrt_runtime():
        return "TensorRT is not installed here (needs an NVIDIA GPU and pip install 'medhash-sdk[tensorrt]')"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU (nvidia-smi not found)"
    return None


def _has_tensorrt_runtime() -> bool:
    try:
        import tensorrt

        return hasattr(tensorrt, "Builder")
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_reason() is not None, reason=str(_gpu_reason()))
def test_engine_build_and_codes_match_onnxruntime(tmp_path):  # pragma: no cover - needs a GPU
    sys.path.insert(0, str(Path(__file__).parent))
    from _models import tiny_model

    from medhash_sdk.backends.tensorrt import build_engine
    from medhash_sdk.encoder import Encoder
    from medhash_sdk.quantize import code_agreement

    card = tiny_model(tmp_path / "t.onnx")
    png = sorted(NIH_PNG_DIR.glob("*.png"))[:20]
    ref = Encoder(tmp_path / "t.onnx", providers="cpu")
    for fp16 in (False, True):
        eng = build_engine(tmp_path / "t.onnx", tmp_path / f"t{int(fp16)}.engine", fp16=fp16, max_batch=8, opt_batch=4)
        e = Encoder(eng)
        assert e.precision == ("fp16" if fp16 else "fp32")
        assert e.fingerprint != card.fingerprint and e.card.derived_from["fingerprint"] == card.fingerprint
        assert e.provider.startswith("TensorRT 10.")
        codes = e.encode(png, batch_size=16)   # > max_batch: split inside the backend
        agree = code_agreement(codes, ref.encode(png), 64)
        print(f"TensorRT {'fp16' if fp16 else 'fp32'} vs ORT CPU fp32: bit agreement {agree:.4%}")
        assert agree >= (0.99 if fp16 else 0.999)
        assert np.array_equal(codes, e.encode(png, batch_size=3))


@pytest.mark.skipif(_gpu_reason() is None, reason="TensorRT is installed: the missing-TensorRT message is not shown")
def test_engine_command_without_tensorrt_says_how_to_install(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).parent))
    from _models import tiny_model

    from medhash_sdk import cli
    from medhash_sdk.encoder import Encoder

    tiny_model(tmp_path / "t.onnx")
    assert cli.main(["engine", str(tmp_path / "t.onnx"), "--out", str(tmp_path / "t.engine")]) == 1
    assert "medhash-sdk[tensorrt]" in capsys.readouterr().err
    assert not (tmp_path / "t.engine").exists()
    write_engine_file(tmp_path / "fake.engine", {"card": "{}"}, b"plan")
    with pytest.raises(ImportError, match="tensorrt"):
        Encoder(tmp_path / "fake.engine")
