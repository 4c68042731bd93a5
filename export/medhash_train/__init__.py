"""medhash_train: the torch side of medhash-sdk (backbones, the attention hashing network,
losses, the training loop, ONNX export, evaluation). The runtime package medhash_sdk never
imports it; it imports medhash_sdk's preprocessing, model card and metrics, so what is
trained is what the runtime runs.

    python -m medhash_sdk train --data nih1000_64.npz --method attention --bits 64 --out run/
"""
from __future__ import annotations

__all__ = ["backbones", "attention", "losses", "data", "trainer", "evaluate", "onnx_export"]
