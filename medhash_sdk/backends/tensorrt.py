"""TensorRT engines: build one from the ONNX model on the target GPU, and run it (no torch).

    medhash engine model.onnx --out model.engine [--fp16]

Written to the official TensorRT Python API of the 10.13 line (extra `medhash-sdk[tensorrt]`,
``tensorrt-cu12==10.13.*``) and type-checked against tensorrt-stubs 10.13 in the test suite.
TensorRT 11 removes the FP16/INT8 builder flags in favour of strongly typed networks: moving
to it means exporting an FP16 (or Q/DQ) ONNX model and building with
NetworkDefinitionCreationFlag.STRONGLY_TYPED instead of ``--fp16``.

Engine file: ``MEDHASH-TRT\\0`` | uint32 header version | uint64 header length | header JSON |
TensorRT plan. The header carries the model card (with the source ONNX model's fingerprint
and the engine's precision), the TensorRT version and the GPU it was built on; I/O names,
shapes and types are read from the engine itself. CUDA memory is handled through the CUDA
runtime library with ctypes (no pycuda, no torch); one execution context runs at a time
(a lock), so an engine may be shared by threads.
"""
from __future__ import annotations

import ctypes
import glob
import importlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_open
from ..exceptions import ModelFileError
from ..model_card import INPUT_NAME, OUTPUT_NAMES, ModelCard
from . import ENGINE_MAGIC

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

HEADER_VERSION = 1
INSTALL_HINT = ("TensorRT is not installed: on a machine with an NVIDIA GPU, pip install "
                "'medhash-sdk[tensorrt]' (tensorrt-cu12==10.13.*)")


# ---------------------------------------------------------------- engine file (pure Python)

def write_engine_file(path: str | os.PathLike[str], header: dict[str, Any], plan: bytes) -> Path:
    """Header + plan, written atomically (temporary file, fsync, rename)."""
    out = Path(path)
    blob = json.dumps(header, sort_keys=True).encode()
    with atomic_open(out) as f:
        f.write(ENGINE_MAGIC + struct.pack("<IQ", HEADER_VERSION, len(blob)) + blob)
        f.write(plan)
    return out


def read_engine_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """(header, plan) of a medhash engine file; ModelFileError if it is not one or is damaged."""
    src = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelFileError(f"{src}: cannot read the engine file ({e.strerror})") from e
    n = len(ENGINE_MAGIC)
    if data[:n] != ENGINE_MAGIC:
        raise ModelFileError(f"{src}: not a medhash TensorRT engine (build one with `medhash engine model.onnx --out {Path(src).name}`)")
    if len(data) < n + 12:
        raise ModelFileError(f"{src}: truncated engine header")
    version, length = struct.unpack("<IQ", data[n:n + 12])
    if version != HEADER_VERSION:
        raise ModelFileError(f"{src}: engine header version {version}, this medhash-sdk reads {HEADER_VERSION}")
    start = n + 12
    if start + length > len(data):
        raise ModelFileError(f"{src}: truncated engine header")
    try:
        header = json.loads(data[start:start + length])
    except ValueError as e:
        raise ModelFileError(f"{src}: damaged engine header ({e})") from e
    plan = data[start + length:]
    if not plan:
        raise ModelFileError(f"{src}: the engine file has no TensorRT plan")
    return header, plan


def read_onnx_card(path: str | os.PathLike[str]) -> ModelCard:
    """The ModelCard in an ONNX file's metadata (with onnx if installed, else onnxruntime)."""
    src = os.fspath(path)
    try:
        import onnx

        props = {p.key: p.value for p in onnx.load(src, load_external_data=False).metadata_props}
    except ImportError:
        from .onnxruntime import import_onnxruntime

        ort = import_onnxruntime()
        sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
        props = dict(sess.get_modelmeta().custom_metadata_map)
    except Exception as e:
        raise ModelFileError(f"{src}: cannot read the ONNX model ({type(e).__name__}: {e})") from e
    return ModelCard.from_metadata(props, source=src)


def _require_runtime(module: Any) -> None:
    """`import tensorrt` also succeeds when only the type stubs (a bare namespace) are installed."""
    if not hasattr(module, "Builder"):
        raise ImportError(INSTALL_HINT + " (only the tensorrt type stubs are installed)")


def _dims(d: trt.Dims) -> tuple[int, ...]:
    """TensorRT Dims -> tuple of ints (-1 for a dynamic dimension)."""
    return tuple(int(d[i]) for i in range(len(d)))


def _np_dtype(t: trt.DataType) -> np.dtype[Any]:
    import tensorrt as trt

    table = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT8: np.int8,
             trt.DataType.INT32: np.int32, trt.DataType.INT64: np.int64, trt.DataType.UINT8: np.uint8,
             trt.DataType.BOOL: np.bool_}
    if t not in table:
        raise ModelFileError(f"engine tensor type {t} is not supported by medhash-sdk")
    return np.dtype(table[t])


# ---------------------------------------------------------------- build

def build_engine(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str], *, fp16: bool = False,
                 max_batch: int = 64, opt_batch: int = 32, workspace_mib: int = 2048) -> Path:
    """Build a TensorRT engine for this GPU from an exported medhash ONNX model.

    fp16: allow FP16 kernels (TensorRT 10 BuilderFlag.FP16). A Q/DQ model (medhash_sdk.quantize)
    is built as INT8 automatically. max_batch/opt_batch: the optimisation profile of a model
    with a dynamic batch dimension.
    """
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    _require_runtime(trt)
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}")
    if workspace_mib < 16:
        raise ValueError(f"workspace_mib must be >= 16, got {workspace_mib}")
    src = os.fspath(onnx_path)
    card = read_onnx_card(src)
    logger = trt.Logger(trt.Logger.Severity.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(src).read_bytes(), src):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFileError(f"{src}: TensorRT cannot parse this ONNX model: {errors}")
    inp = network.get_input(0)
    if network.num_inputs != 1 or inp.name != INPUT_NAME:
        raise ModelFileError(f"{src}: expected one input named {INPUT_NAME!r}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    shape = _dims(inp.shape)
    c, s = card.channels, card.input_size
    if shape[0] == -1:
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, trt.Dims([1, c, s, s]), trt.Dims([opt_batch, c, s, s]),
                          trt.Dims([max_batch, c, s, s]))
        config.add_optimization_profile(profile)
    int8 = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
    precision = "fp32"
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        precision = "fp16"
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
        precision = "int8" + ("+fp16" if fp16 else "")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelFileError(f"{src}: TensorRT could not build an engine (see the TensorRT log above)")
    engine_card = card.derive(precision=precision, runtime="tensorrt", tensorrt_version=str(trt.__version__))
    header = {
        "format": "medhash-trt/1",
        "card": engine_card.to_json(),
        "source_fingerprint": card.fingerprint,
        "precision": precision,
        "tensorrt_version": trt.__version__,
        "device": _device_name(),
        "max_batch": int(max_batch) if shape[0] == -1 else int(shape[0]),
    }
    return write_engine_file(out, header, bytes(memoryview(plan)))


# ---------------------------------------------------------------- CUDA runtime through ctypes

class _CudaRuntime:
    """The few CUDA runtime calls inference needs (cudart from the CUDA wheels or the system)."""

    H2D, D2H = 1, 2

    def __init__(self) -> None:
        self.lib = _load_cudart()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    def check(self, code: int, what: str) -> None:
        if code != 0:
            msg = self.lib.cudaGetErrorString(code)
            raise RuntimeError(f"CUDA {what} failed: {msg.decode() if msg else code}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(1, nbytes))), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return int(s.value or 0)

    def copy(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self.check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                            ctypes.c_int(kind), ctypes.c_void_p(stream)), "cudaMemcpyAsync")

    def sync(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")


def _load_cudart() -> ctypes.CDLL:
    candidates = ["libcudart.so", "libcudart.so.12", "libcudart.so.13"]
    try:  # the nvidia-cuda-runtime-cu12 wheel that tensorrt-cu12 depends on
        cr = importlib.import_module("nvidia.cuda_runtime")

        for d in list(getattr(cr, "__path__", [])):
            candidates = sorted(glob.glob(os.path.join(d, "lib", "libcudart.so*"))) + candidates
    except ImportError:
        pass
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise ImportError("the CUDA runtime (libcudart) was not found; install the NVIDIA driver and "
                      "'medhash-sdk[tensorrt]' (it brings nvidia-cuda-runtime-cu12)")


def _device_name() -> str:
    try:
        lib = _load_cudart()
        buf = ctypes.create_string_buffer(1032)  # cudaDeviceProp starts with char name[256]
        if lib.cudaGetDeviceProperties(buf, 0) == 0:
            return buf.value.decode(errors="replace")
    except (ImportError, OSError, AttributeError):
        pass
    return "unknown"


# ---------------------------------------------------------------- run

class TensorRTBackend:
    """Runs a medhash engine file. ``run`` is serialised by a lock (one context, one stream)."""

    def __init__(self, path: str | os.PathLike[str]):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        _require_runtime(trt)
        self.path = os.fspath(path)
        header, plan = read_engine_file(path)
        try:
            self.card = ModelCard.from_json(header["card"], source=self.path)
        except KeyError as e:
            raise ModelFileError(f"{self.path}: engine header has no model card") from e
        self._cuda = _CudaRuntime()
        self._logger = trt.Logger(trt.Logger.Severity.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelFileError(f"{self.path}: TensorRT {trt.__version__} cannot load this engine (built with "
                                 f"TensorRT {header.get('tensorrt_version')} on {header.get('device')}); "
                                 "engines are tied to the GPU and TensorRT version: rebuild it here")
        self._engine: trt.ICudaEngine = engine
        self._context: trt.IExecutionContext = engine.create_execution_context()
        self.provider = f"TensorRT {trt.__version__} ({header.get('precision', self.card.precision)})"
        self._lock = threading.Lock()
        self._io()
        self._stream = self._cuda.stream()
        self._buffers: dict[str, int] = {}
        self._sizes: dict[str, int] = {}

    def _io(self) -> None:
        import tensorrt as trt

        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ModelFileError(f"{self.path}: expected one input, engine has {inputs}")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n not in inputs]
        missing = [n for n in OUTPUT_NAMES if n not in self.output_names]
        if missing:
            raise ModelFileError(f"{self.path}: engine lacks outputs {missing}")
        self._dtypes = {n: _np_dtype(engine.get_tensor_dtype(n)) for n in names}
        shape = _dims(engine.get_tensor_shape(self.input_name))
        c, s = self.card.channels, self.card.input_size
        if tuple(shape[1:]) != (c, s, s):
            raise ModelFileError(f"{self.path}: engine input is {shape}, the card says (N, {c}, {s}, {s})")
        if shape[0] == -1:
            self.max_batch = _dims(engine.get_tensor_profile_shape(self.input_name, 0)[2])[0]
            self.input_shape: tuple[int | None, int, int, int] = (None, c, s, s)
        else:
            self.max_batch = int(shape[0])
            self.input_shape = (self.max_batch, c, s, s)

    def _buffer(self, name: str, nbytes: int) -> int:
        if self._sizes.get(name, -1) < nbytes:
            if name in self._buffers:
                self._cuda.free(self._buffers[name])
            self._buffers[name] = self._cuda.malloc(nbytes)
            self._sizes[name] = nbytes
        return self._buffers[name]

    def _run_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        ctx, cuda = self._context, self._cuda
        x = np.ascontiguousarray(x, dtype=self._dtypes[self.input_name])
        if not ctx.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"{self.path}: the engine does not accept input shape {x.shape}")
        ptr = self._buffer(self.input_name, x.nbytes)
        cuda.copy(ptr, x.ctypes.data, x.nbytes, cuda.H2D, self._stream)
        ctx.set_tensor_address(self.input_name, ptr)
        hosts: dict[str, np.ndarray] = {}
        for name in self.output_names:
            host = np.empty(_dims(ctx.get_tensor_shape(name)), dtype=self._dtypes[name])
            hosts[name] = host
            ctx.set_tensor_address(name, self._buffer(name, host.nbytes))
        if not ctx.execute_async_v3(self._stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        for name, host in hosts.items():
            cuda.copy(host.ctypes.data, self._buffers[name], host.nbytes, cuda.D2H, self._stream)
        cuda.sync(self._stream)
        return {n: hosts[n].astype(np.float32) for n in OUTPUT_NAMES}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            parts = [self._run_chunk(batch[s:s + self.max_batch]) for s in range(0, batch.shape[0], self.max_batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}

    def __del__(self) -> None:
        cuda = getattr(self, "_cuda", None)
        for ptr in getattr(self, "_buffers", {}).values():
            if cuda is not None:
                cuda.free(ptr)
