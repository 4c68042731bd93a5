"""Readers on real NIH radiographs: PNG 8/16 bit, JPEG, TIFF, arrays, and bad or hostile files."""
from __future__ import annotations

import os
import struct
import threading
import zlib

import cv2
import numpy as np
import pytest

from medhash_sdk import readers
from medhash_sdk.exceptions import ImageReadError, UnsupportedImageError
from medhash_sdk.preprocessing import Preprocessing, preprocess
from _data import NIH_PNG_DIR, requires_data

DATA = NIH_PNG_DIR
PNGS = sorted(DATA.glob("*.png"))
pytestmark = requires_data(bool(PNGS), f"real NIH PNGs not found in {DATA}")


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return cv2.imread(str(PNGS[0]), cv2.IMREAD_GRAYSCALE)


def test_real_png_8bit_is_read_exactly(real):
    im = readers.read_image(PNGS[0])
    assert im.pixels.dtype == np.uint8 and im.pixels.shape == (1024, 1024)
    np.testing.assert_array_equal(im.pixels, real)
    assert im.facts["format"] == "png" and im.source == str(PNGS[0])


def test_16bit_png_matches_8bit_after_preprocessing(tmp_path, real):
    u16 = real.astype(np.uint16) * 257  # full 16-bit range, same picture
    p = tmp_path / "x16.png"
    assert cv2.imwrite(str(p), u16)
    im = readers.read_image(p)
    assert im.pixels.dtype == np.uint16
    np.testing.assert_array_equal(im.pixels, u16)
    spec = Preprocessing(input_size=64)
    # 16-bit goes through a per-image min-max; compare with the 8-bit min-max of the same picture
    lo, hi = real.min(), real.max()
    ref = preprocess(((real.astype(np.float32) - lo) / (hi - lo)), spec)
    np.testing.assert_allclose(preprocess(im.pixels, spec), ref, atol=1e-4)


def test_jpeg_and_tiff(tmp_path, real):
    ok, jpg = cv2.imencode(".jpg", real, [cv2.IMWRITE_JPEG_QUALITY, 95])
    (tmp_path / "a.jpg").write_bytes(jpg.tobytes())
    im = readers.read_image(tmp_path / "a.jpg")
    assert im.facts["format"] == "jpeg" and im.pixels.shape == real.shape
    assert np.abs(im.pixels.astype(int) - real).mean() < 2.0
    u16 = real.astype(np.uint16) * 64
    ok, tif = cv2.imencode(".tiff", u16)
    (tmp_path / "a.tif").write_bytes(tif.tobytes())
    im = readers.read_image(tmp_path / "a.tif")
    assert im.facts["format"] == "tiff" and im.pixels.dtype == np.uint16
    np.testing.assert_array_equal(im.pixels, u16)


def test_colour_png_is_rgb_order(tmp_path, real):
    small = cv2.resize(real, (128, 96), interpolation=cv2.INTER_AREA)
    rgb = np.stack([small, small // 2, small // 4], axis=2)
    p = tmp_path / "c.png"
    cv2.imwrite(str(p), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    im = readers.read_image(p)
    np.testing.assert_array_equal(im.pixels, rgb)
    assert im.facts["height"] == 96 and im.facts["width"] == 128


def test_bytes_and_arrays(real):
    data = PNGS[1].read_bytes()
    im = readers.load(data)
    assert im.pixels.shape == (1024, 1024)
    im = readers.load(real[:, :, None])
    assert im.pixels.shape == (1024, 1024)
    with pytest.raises(ValueError, match="list of arrays"):
        readers.load(np.zeros((2, 8, 8, 3)))
    with pytest.raises(TypeError, match="numeric"):
        readers.load(np.array([["a"]]))
    with pytest.raises(TypeError, match="file path"):
        readers.load(3.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input #7 .*NaN"):  # which one of a batch
        readers.load(np.full((8, 8), np.nan, np.float32), name="input #7 (array)")


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"hello, this is a text file\n" * 10, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8, "truncated PNG"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "truncated JPEG"),
])
def test_bad_files_name_file_and_reason(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as e:
        readers.read_image(p)
    assert str(p) in str(e.value)


def test_truncated_real_png_and_jpeg(tmp_path, real):
    data = PNGS[0].read_bytes()
    for cut in (len(data) // 2, len(data) - 20):
        p = tmp_path / f"t{cut}.png"
        p.write_bytes(data[:cut])
        with pytest.raises(ImageReadError, match="PNG"):
            readers.read_image(p)
    ok, jpg = cv2.imencode(".jpg", real)
    p = tmp_path / "t.jpg"
    p.write_bytes(jpg.tobytes()[: len(jpg) * 2 // 3])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        readers.read_image(p)


def test_corrupt_png_body(tmp_path):
    data = bytearray(PNGS[0].read_bytes())
    data[200:4000] = os.urandom(3800)  # damaged IDAT, IEND still there
    p = tmp_path / "corrupt.png"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="corrupt PNG"):
        readers.read_image(p)


def test_missing_file_directory_and_fifo_do_not_hang(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        readers.read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="not a regular file"):
        readers.read_image(tmp_path)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    out: list[BaseException] = []
    t = threading.Thread(target=lambda: out.append(pytest.raises(ImageReadError, readers.read_image, fifo).value))
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert "not a regular file" in str(out[0])


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 1000)
    return (b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", len(idat)) + b"IDAT" + idat
            + struct.pack(">I", zlib.crc32(b"IDAT" + idat)) + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch, real):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(60000, 60000))
    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: calls.append(1))
    with pytest.raises(UnsupportedImageError, match="exceeds the limit"):
        readers.read_image(p)
    # a real JPEG over a (lowered) limit: refused from its SOF header, decoder never called
    ok, jpg = cv2.imencode(".jpg", real)
    (tmp_path / "big.jpg").write_bytes(jpg.tobytes())
    with pytest.raises(UnsupportedImageError, match="1,048,576 pixels"):
        readers.read_image(tmp_path / "big.jpg", max_pixels=1000 * 1000)
    ok, tif = cv2.imencode(".tiff", real)
    (tmp_path / "big.tif").write_bytes(tif.tobytes())
    with pytest.raises(UnsupportedImageError):
        readers.read_image(tmp_path / "big.tif", max_pixels=1000 * 1000)
    assert calls == []
    with pytest.raises(UnsupportedImageError, match="bytes exceeds"):
        readers.read_image(PNGS[0], max_bytes=1000)
