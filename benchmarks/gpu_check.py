"""One short, self-reporting check of the Encoder on a lent GPU machine (no internet, no TensorRT,
onnxruntime CPU build, torch with CUDA). Run from the repository root:

    python benchmarks/gpu_check.py            # ~3-6 minutes; writes $OUT/gpu_check.json if $OUT is set

Steps (each reports OK / SKIP with the reason / FAIL, and the script always finishes):
1. environment: Python, GPU, torch + CUDA, onnxruntime version and providers, codecs present;
2. Encoder(providers="auto") reports the provider that really runs (CPU on a CPU-only ORT build);
3. the runtime test files on this Python (pytest, CPU parts; GPU-only tests skip with reasons);
4. bench_encode.py on this machine's CPUs (ORT CPU Encoder vs torch eager, same threads);
5. the paper net on the GPU in torch: CUDA fp32 and fp16-autocast codes vs ORT CPU fp32 codes on
   real NIH images (bit agreement per provider and precision), and GPU model-only throughput
   vs the Encoder's decode-only rate here (the GPU target is >= 90% of min(decode, model)).
TensorRT itself is not installed there: its build/run test skips, and says so.
"""
from __future__ import annotations

import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REPORT: dict[str, Any] = {}


def step(name: str, fn: Callable[[], Any]) -> None:
    t = time.perf_counter()
    try:
        REPORT[name] = {"status": "OK", "result": fn()}
    except _Skip as e:
        REPORT[name] = {"status": "SKIP", "reason": str(e)}
    except Exception as e:  # report and go on
        REPORT[name] = {"status": "FAIL", "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
    REPORT[name]["seconds"] = round(time.perf_counter() - t, 1)
    r = REPORT[name]
    print(f"[{r['status']}] {name} ({r['seconds']} s): {r.get('result', r.get('reason', r.get('error')))}", flush=True)


class _Skip(Exception):
    pass


def nih_pngs() -> list[str]:
    for d in (os.environ.get("MEDHASH_DATA", ""), str(ROOT.parent / "shared" / "data"), str(ROOT / "shared" / "data")):
        files = sorted(glob.glob(os.path.join(d, "nih_png_1024", "*.png"))) if d else []
        if files:
            return files
    return []


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        env["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        env["gpu"] = f"nvidia-smi unavailable ({e})"
    for mod in ("numpy", "cv2", "pydicom", "onnx", "onnxscript", "onnxruntime", "torch", "tensorrt", "gdcm", "pytest"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "present")
            if mod == "tensorrt" and not hasattr(m, "Builder"):
                env[mod] = "type stubs only (no runtime)"
        except Exception as e:
            env[mod] = f"missing ({type(e).__name__})"
    try:
        import onnxruntime as ort

        env["ort_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    try:
        import torch

        env["torch_cuda"] = torch.cuda.is_available() and torch.cuda.get_device_name(0)
    except Exception:
        pass
    env["nih_pngs"] = len(nih_pngs())
    return env


def paper_model(tmp: str) -> tuple[Any, Any, str]:
    try:
        import torch  # noqa: F401
        from medhash_train.attention import NetConfig, build_model
        from medhash_train.onnx_export import export_onnx
    except ImportError as e:
        raise _Skip(f"cannot export the paper net here: {e}")
    import torch

    from medhash_sdk.preprocessing import Preprocessing

    torch.manual_seed(0)
    labels = [f"label{i}" for i in range(15)]
    model = build_model(NetConfig(nbits=64, num_labels=15, width=0.5))
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 1, 64, 64))
    spec = Preprocessing(input_size=64)
    path = os.path.join(tmp, "paper.onnx")
    export_onnx(model, spec, labels, "attention-untrained", path)
    model.eval()
    return model, spec, path


def encoder_auto(path: str) -> dict[str, Any]:
    from medhash_sdk.encoder import Encoder

    enc = Encoder(path, providers="auto")
    so = enc._backend.session.get_session_options()
    return {"provider": enc.provider, "session_providers": enc._backend.session.get_providers(),
            "allow_spinning": so.get_session_config_entry("session.intra_op.allow_spinning"),
            "intra_op_threads": so.intra_op_num_threads}


def run_tests() -> dict[str, Any]:
    files = ["tests/test_readers.py", "tests/test_dicom.py", "tests/test_encoder.py", "tests/test_overlay.py",
             "tests/test_quantize.py", "tests/test_packaging.py", "tests/test_tensorrt_types.py"]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files],
                         capture_output=True, text=True, cwd=ROOT, timeout=420)
    tail = out.stdout.strip().splitlines()[-25:]
    if out.returncode not in (0,):
        raise RuntimeError("pytest exit %d:\n%s" % (out.returncode, "\n".join(tail)))
    return "\n".join(tail)


def bench_cpu() -> str:
    if not nih_pngs():
        raise _Skip("NIH PNGs not found (set MEDHASH_DATA to the folder holding nih_png_1024/)")
    out = subprocess.run([sys.executable, "benchmarks/bench_encode.py", "--files", "256", "--repeats", "3"],
                         capture_output=True, text=True, cwd=ROOT, timeout=420)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return out.stdout[out.stdout.index("Encoder benchmark"):]


def gpu_agreement(model: Any, spec: Any, path: str) -> dict[str, Any]:
    import cv2
    import numpy as np
    import torch

    from medhash_sdk.encoder import Encoder
    from medhash_sdk.preprocessing import preprocess_batch

    if not torch.cuda.is_available():
        raise _Skip("torch sees no CUDA GPU")
    files = nih_pngs()
    if not files:
        raise _Skip("NIH PNGs not found")
    enc = Encoder(path, providers="cpu")
    arrays = [cv2.imread(f, cv2.IMREAD_UNCHANGED) for f in files]
    ref = np.unpackbits(enc.encode(arrays, batch_size=32), axis=1).astype(bool)
    x = torch.from_numpy(preprocess_batch(arrays, spec)).cuda()
    m = model.cuda().eval()
    res: dict[str, Any] = {"images": len(files)}
    for prec in ("fp32", "fp16-autocast"):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=prec != "fp32"):
            u = m(x)[0].float().cpu().numpy()
        res[f"torch CUDA {prec} vs ORT CPU fp32 bit agreement"] = round(float(((u > 0) == ref).mean()), 6)
    xb = torch.randn(256, 1, 64, 64, device="cuda")
    for prec in ("fp32", "fp16-autocast"):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=prec != "fp32"):
            for _ in range(3):
                m(xb)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(10):
                m(xb)
            torch.cuda.synchronize()
        res[f"torch CUDA {prec} model-only images/s (batch 256)"] = round(2560 / (time.perf_counter() - t), 1)
    # decode-only rate with this machine's CPUs through the Encoder pool
    t = time.perf_counter()
    n = 0
    from medhash_sdk.pipeline import decode_ahead, raise_first_error

    for _ in raise_first_error(decode_ahead(files * 4, enc.loader())):
        n += 1
    res["Encoder decode-only images/s (this CPU)"] = round(n / (time.perf_counter() - t), 1)
    return res


def main() -> int:
    step("1 environment", environment)
    with tempfile.TemporaryDirectory() as tmp:
        holder: dict[str, Any] = {}

        def export() -> str:
            holder["m"] = paper_model(tmp)
            return "exported the paper net (resnet18 width 0.5, 64 px, 64 bits)"

        step("2a export paper net", export)
        if "m" in holder:
            step("2b Encoder providers=auto", lambda: encoder_auto(holder["m"][2]))
        step("3 runtime tests", run_tests)
        step("4 bench_encode on CPU", bench_cpu)
        if "m" in holder:
            step("5 GPU agreement and throughput", lambda: gpu_agreement(*holder["m"]))
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(REPORT, indent=2, default=str))
    print("\nSUMMARY: " + ", ".join(f"{k}: {v['status']}" for k, v in REPORT.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
