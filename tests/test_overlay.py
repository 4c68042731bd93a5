"""Attention overlays: geometry back through the square padding, blending, PNG output."""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from _models import tiny_model
from medhash_sdk.encoder import Encoder
from medhash_sdk.overlay import attention_on_image, explain, overlay, save_overlay
from _data import NIH_PNG_DIR, requires_data

PNGS = sorted((NIH_PNG_DIR).glob("*.png"))


def test_attention_lands_on_the_right_place_of_a_wide_image():
    att = np.zeros((8, 8), np.float32)
    att[2, 1] = 1.0          # padded square 200 x 200: rows 50..75 = image rows 0..25, cols 25..50
    a = attention_on_image(att, 100, 200)
    assert a.shape == (100, 200) and a.min() == 0.0 and a.max() == 1.0
    r, c = np.unravel_index(np.argmax(a), a.shape)
    assert 0 <= r < 25 and 25 <= c < 50
    stretched = attention_on_image(att, 100, 200, pad_to_square=False)
    r, c = np.unravel_index(np.argmax(stretched), stretched.shape)
    assert 25 <= r < 38


def test_overlay_blends_in_proportion_to_attention():
    img = (np.arange(64 * 96) % 251).astype(np.uint8).reshape(64, 96)
    att = np.zeros((1, 8, 8), np.float32)
    att[0, 4, 4] = 1.0
    out = overlay(img, att, alpha=0.6)
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    a = attention_on_image(att, 64, 96)
    cold = a == 0
    np.testing.assert_array_equal(out[cold][:, 0], img[cold])      # untouched where no attention
    hot = np.unravel_index(np.argmax(a), a.shape)
    assert np.abs(out[hot].astype(int) - img[hot]).max() > 20
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, att, alpha=2)
    with pytest.raises(ValueError, match="attention"):
        overlay(img, np.zeros(5))


@requires_data(bool(PNGS), "real NIH PNGs not found")
def test_explain_writes_png(tmp_path):
    tiny_model(tmp_path / "t.onnx")
    enc = Encoder(tmp_path / "t.onnx", providers="cpu")
    out = explain(enc, PNGS[0], tmp_path / "sub" / "why.png")
    img = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert img.shape == (1024, 1024, 3)
    assert list((tmp_path / "sub").iterdir()) == [out]
    small = explain(enc, PNGS[0], tmp_path / "small.png", max_side=256)
    assert cv2.imread(str(small)).shape == (256, 256, 3)
    with pytest.raises(ValueError, match="png"):
        save_overlay(tmp_path / "x.jpg", img[:, :, 0], np.ones((8, 8)))
