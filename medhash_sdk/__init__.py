"""medhash-sdk: find similar medical images by deep hashing.

    from medhash_sdk import Encoder, Index
    enc = Encoder()                      # bundled chest X-ray model (ONNX Runtime)
    codes = enc.encode(["a.png", "b.dcm"])
    idx = Index(nbits=enc.nbits, fingerprint=enc.fingerprint)
    idx.add(codes, ids=["A1", "B2"])
    res = idx.search(codes[0], k=10)

Imports are lazy: `import medhash_sdk` loads neither ONNX Runtime nor the compiled engine, and
never torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Encoder", "Index", "MultiIndexInfo", "SearchResult", "__version__"]

_LAZY = {
    "Encoder": ".encoder",
    "Index": ".index",
    "MultiIndexInfo": ".index",
    "SearchResult": ".index",
}

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder
    from .index import Index, MultiIndexInfo, SearchResult


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medhash_sdk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
