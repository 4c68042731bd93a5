"""INT8 Q/DQ quantization calibrated on real NIH radiographs; agreement with FP32 measured."""
from __future__ import annotations


import numpy as np
import pytest

from _models import tiny_model
from medhash_sdk.encoder import Encoder
from medhash_sdk.exceptions import ModelMismatchError
from medhash_sdk.index import Index
from medhash_sdk.quantize import code_agreement, main, quantize
from _data import NIH_PNG_DIR, requires_data

onnx = pytest.importorskip("onnx")
PNGS = sorted((NIH_PNG_DIR).glob("*.png"))
pytestmark = requires_data(len(PNGS) >= 30, "real NIH PNGs not found")


def test_qdq_model_keeps_card_and_agrees(tmp_path, capsys):
    tiny_model(tmp_path / "fp32.onnx")
    res = quantize(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", PNGS[:24], PNGS[24:40], method="minmax")
    m = onnx.load(str(tmp_path / "int8.onnx"))
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    zp = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    assert all(zp[n.input[2]].dtype == np.int8 and not zp[n.input[2]].any() for n in q)  # symmetric int8
    fp32, int8 = Encoder(tmp_path / "fp32.onnx", "cpu"), Encoder(tmp_path / "int8.onnx", "cpu")
    # its codes differ from the FP32 model's: its own fingerprint, the parent named in its card
    assert int8.precision == "int8" and int8.fingerprint != fp32.fingerprint
    assert int8.card.derived_from["fingerprint"] == fp32.fingerprint
    assert int8.card.derived_from["quantization"]["calibration_images"] == 24
    index = Index(nbits=64, fingerprint=fp32.fingerprint)
    index.add(fp32.encode(PNGS[24:28]))
    with pytest.raises(ModelMismatchError):
        index.add(int8.encode(PNGS[28:30]), fingerprint=int8.fingerprint)
    with pytest.raises(ModelMismatchError):
        index.check_fingerprint(int8.fingerprint)
    stored = int8.card.metrics["agreement_vs_fp32"]
    assert res is not None and stored["images"] == 16 and stored["bit_agreement"] == round(res.bit_agreement, 6)
    agree = code_agreement(fp32.encode(PNGS[24:40]), int8.encode(PNGS[24:40]), 64)
    assert agree == pytest.approx(res.bit_agreement) and agree >= 0.95
    with pytest.raises(ValueError, match="already int8"):
        quantize(tmp_path / "int8.onnx", tmp_path / "x.onnx", PNGS[:2])
    with pytest.raises(ValueError, match="at least one"):
        quantize(tmp_path / "fp32.onnx", tmp_path / "x.onnx", [])


def test_cli_prints_agreement(tmp_path, capsys):
    tiny_model(tmp_path / "fp32.onnx")
    assert main([str(tmp_path / "fp32.onnx"), "--out", str(tmp_path / "q.onnx"), "--calibration",
                 *map(str, PNGS[:15])]) == 0
    out = capsys.readouterr().out
    assert "INT8 vs FP32" in out and "bit agreement" in out and "3 held-out images" in out
