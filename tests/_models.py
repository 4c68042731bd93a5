"""A tiny exported-model fixture built with onnx.helper: the runtime contract without torch.

image (N, C, S, S) -> AveragePool to 8 x 8 -> flatten -> MatMul -> code_logits (N, nbits)
                                                       -> MatMul + Sigmoid -> probabilities (N, L)
                     8 x 8 pooled map -> softmax over positions -> attention (N, 1, 8, 8)
with the ModelCard in metadata_props. ``reference`` computes the same thing in numpy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medhash_sdk.model_card import CHEST_RADIOGRAPH_SCOPE, INPUT_NAME, ModelCard, compute_fingerprint
from medhash_sdk.preprocessing import Preprocessing

NIH_LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
              "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]


def tiny_weights(nbits: int, nlabels: int, channels: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = channels * 64
    return {"w_code": rng.standard_normal((f, nbits)).astype(np.float32) / np.float32(np.sqrt(f)),
            "w_prob": rng.standard_normal((f, nlabels)).astype(np.float32) / np.float32(np.sqrt(f)),
            "b_prob": rng.standard_normal(nlabels).astype(np.float32) * np.float32(0.1)}


def tiny_model(path: Path, nbits: int = 64, input_size: int = 64, channels: int = 1, seed: int = 0,
               labels: list[str] | None = None, batch: int | str = "N") -> ModelCard:
    """Write the tiny model to path and return its card."""
    labels = list(NIH_LABELS if labels is None else labels)
    spec = Preprocessing(input_size=input_size, channels=channels)
    w = tiny_weights(nbits, len(labels), channels, seed)
    k = input_size // 8
    nodes = [
        helper.make_node("AveragePool", [INPUT_NAME], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w_code"], ["code_logits"]),
        helper.make_node("MatMul", ["flat", "w_prob"], ["prob_mm"]),
        helper.make_node("Add", ["prob_mm", "b_prob"], ["prob_logits"]),
        helper.make_node("Sigmoid", ["prob_logits"], ["probabilities"]),
        helper.make_node("ReduceMean", ["pooled", "axes1"], ["pooled_mean"], keepdims=1),
        helper.make_node("Flatten", ["pooled_mean"], ["att_flat"], axis=1),
        helper.make_node("Softmax", ["att_flat"], ["att_soft"], axis=1),
        helper.make_node("Reshape", ["att_soft", "att_shape"], ["attention"]),
    ]
    inits = [numpy_helper.from_array(v, k_) for k_, v in w.items()]
    inits += [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes1"),
              numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "att_shape")]
    graph = helper.make_graph(
        nodes, "medhash_tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, channels, input_size, input_size])],
        [helper.make_tensor_value_info("code_logits", TensorProto.FLOAT, [batch, nbits]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, len(labels)]),
         helper.make_tensor_value_info("attention", TensorProto.FLOAT, [batch, 1, 8, 8])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="medhash-tests")
    model.ir_version = 9
    card = ModelCard(nbits=nbits, preprocessing=spec, labels=labels, method="tiny-test-fixture",
                     backbone="avgpool-linear", training={"data": "none (test fixture)"}, scope=CHEST_RADIOGRAPH_SCOPE)
    card.fingerprint = compute_fingerprint(w.items(), spec, nbits, labels)
    helper.set_model_props(model, card.to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return card


def reference(x: np.ndarray, nbits: int = 64, nlabels: int = 14, seed: int = 0) -> dict[str, np.ndarray]:
    """The tiny model in numpy, on preprocessed input (N, C, S, S)."""
    n, c, s, _ = x.shape
    k = s // 8
    w = tiny_weights(nbits, nlabels, c, seed)
    pooled = x.reshape(n, c, 8, k, 8, k).mean(axis=(3, 5))
    flat = pooled.reshape(n, -1)
    att = pooled.mean(axis=1).reshape(n, -1)
    att = np.exp(att - att.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    return {"code_logits": flat @ w["w_code"],
            "probabilities": 1 / (1 + np.exp(-(flat @ w["w_prob"] + w["b_prob"]))),
            "attention": att.reshape(n, 1, 8, 8)}
