"""ONNX Runtime backend: TensorRT EP -> CUDA EP -> CPU, and the provider that actually runs.

onnxruntime-gpu lists providers it cannot load (missing CUDA/cuDNN/TensorRT libraries) and
silently falls back, so the provider reported is ``session.get_providers()[0]`` after the
session is built, not what was asked for. Threads do not spin idle (an SDK runs inside
someone else's server): session.intra_op/inter_op.allow_spinning = 0.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._system import available_cpus
from ..exceptions import ModelFileError
from ..model_card import INPUT_NAME, OUTPUT_NAMES, ModelCard

INSTALL_HINT = ("ONNX Runtime is not installed: pip install 'medhash-sdk[cpu]' (CPU) "
                "or 'medhash-sdk[gpu]' (NVIDIA GPU, onnxruntime-gpu); never both")

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
_SHORT = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TRT, CUDA, CPU]}


def import_onnxruntime() -> Any:
    """onnxruntime, or ImportError with the install hint."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return onnxruntime


def cache_dir() -> Path:
    """Where TensorRT EP engines and timing caches are kept ($MEDHASH_CACHE_DIR or ~/.cache/medhash)."""
    root = os.environ.get("MEDHASH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "medhash")
    return Path(root)


def provider_list(providers: Any, available: Sequence[str], card: ModelCard) -> list[Any]:
    """providers argument -> ONNX Runtime's provider list (names or (name, options))."""
    if isinstance(providers, str):
        key = providers.lower()
        if key == "auto":
            names = [p for p in (TRT, CUDA, CPU) if p in available or p == CPU]
        elif key in _SHORT:
            names = _SHORT[key]
            if names[0] not in available:
                raise ValueError(f"providers={providers!r}: {names[0]} is not available in this onnxruntime "
                                 f"(available: {list(available)}); install 'medhash-sdk[gpu]' for CUDA/TensorRT")
            names = [p for p in names if p in available or p == CPU]
        else:
            raise ValueError(f"providers must be 'auto', 'cpu', 'cuda', 'tensorrt' or a list of ONNX Runtime "
                             f"providers, got {providers!r}")
    elif isinstance(providers, (list, tuple)) and providers:
        return list(providers)
    else:
        raise ValueError(f"providers must be 'auto', 'cpu', 'cuda', 'tensorrt' or a non-empty list, got {providers!r}")
    out: list[Any] = []
    for name in names:
        if name == TRT:
            cache = cache_dir() / "trt" / (card.fingerprint[:16] or "unknown")
            out.append((TRT, {
                "trt_engine_cache_enable": "True",           # do not rebuild the engine at every start
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(cache),
                "trt_int8_enable": "True" if card.precision == "int8" else "False",   # explicit Q/DQ
            }))
        else:
            out.append(name)
    return out


class OnnxRuntimeBackend:
    """One InferenceSession; ``run`` may be called from several threads (ORT sessions are thread-safe).

    On the CPU provider the session runs single-threaded and ``run`` splits a batch into
    ``threads`` parts that run concurrently (each part on its own thread, no intra-op pool):
    for these small convolutional networks that is ~30% more throughput than one run with
    ``threads`` intra-op threads (benchmarks/bench_encode.py), and no thread ever spins idle.
    """

    def __init__(self, path: str | os.PathLike, providers: Any = "auto", *, threads: int | None = None):
        ort = import_onnxruntime()
        self.path = os.fspath(path)
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        threads = int(threads) if threads else available_cpus()
        available = ort.get_available_providers()
        cpu_only = providers == "cpu" or providers == [CPU] or (providers == "auto" and available == [CPU])
        # CPU: parallel parts of a batch on single-threaded runs; GPU: one run, ORT's own threads.
        self._parts = threads if cpu_only else 1
        self._pool: cf.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1 if cpu_only else threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        # The card is needed to name the TensorRT cache: read it with a light CPU session first only
        # when TensorRT could be used; otherwise one session does everything.
        wants_trt = (providers in ("auto", "tensorrt") and TRT in available)
        try:
            if wants_trt:
                probe = ort.InferenceSession(self.path, sess_options=so, providers=[CPU])
                card = self._card(probe)
                del probe
            else:
                card = None
            plist = provider_list(providers, available, card or _NO_CARD)
            self.session = ort.InferenceSession(self.path, sess_options=so, providers=plist)
        except (ValueError, ImportError):
            raise
        except Exception as e:  # ORT raises InvalidProtobuf / Fail / NoSuchFile for bad files
            raise ModelFileError(f"{self.path}: ONNX Runtime cannot load this model ({type(e).__name__}: {e})") from e
        self.card = card or self._card(self.session)
        running = self.session.get_providers()
        self.provider = running[0]
        first = plist[0] if isinstance(plist[0], str) else plist[0][0]
        if isinstance(providers, str) and providers != "auto" and self.provider != first:
            warnings.warn(f"{self.path}: asked for {first} but ONNX Runtime runs {self.provider} "
                          "(its libraries could not be loaded)", RuntimeWarning, stacklevel=3)
        self._check_io()

    def _card(self, session: Any) -> ModelCard:
        props = dict(session.get_modelmeta().custom_metadata_map)
        return ModelCard.from_metadata(props, source=self.path)

    def _check_io(self) -> None:
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        if len(inputs) != 1:
            raise ModelFileError(f"{self.path}: expected one input {INPUT_NAME!r}, got {names}")
        inp = inputs[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelFileError(f"{self.path}: input {inp.name!r} must be 4-D (N, C, S, S), got {shape}")
        c, s = self.card.channels, self.card.input_size
        for dim, want, what in ((shape[1], c, "channels"), (shape[2], s, "height"), (shape[3], s, "width")):
            if isinstance(dim, int) and dim != want:
                raise ModelFileError(f"{self.path}: input {what} is {dim} but the model card says {want}")
        batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.input_shape: tuple[int | None, int, int, int] = (batch, c, s, s)
        outs = [o.name for o in self.session.get_outputs()]
        missing = [n for n in OUTPUT_NAMES if n not in outs]
        if missing:
            raise ModelFileError(f"{self.path}: outputs {missing} missing (model has {outs}; expected {list(OUTPUT_NAMES)})")
        self.output_names = list(OUTPUT_NAMES)
        if batch is not None:
            self._parts = 1          # a fixed-batch model takes whole batches only

    def _run_part(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, {self.input_name: x})
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(self.output_names, values)}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        parts = min(self._parts, x.shape[0])
        if parts <= 1:
            return self._run_part(x)
        with self._pool_lock:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(max_workers=self._parts - 1, thread_name_prefix="medhash-ort")
        chunks = np.array_split(x, parts)
        futures = [self._pool.submit(self._run_part, c) for c in chunks[1:]]
        outs = [self._run_part(chunks[0])] + [f.result() for f in futures]   # this thread runs one part
        return {n: np.concatenate([o[n] for o in outs]) for n in self.output_names}


class _NoCard:
    fingerprint = ""
    precision = "fp32"


_NO_CARD: Any = _NoCard()
