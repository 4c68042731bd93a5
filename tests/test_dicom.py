"""DICOM reading on files built from a real NIH radiograph: intensity pipeline, colour, codecs, errors."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import convert_color_space
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from _dicom_files import make_dataset, save, to_jpeg_lossless
from medhash_sdk import readers
from medhash_sdk.exceptions import ImageReadError, UnsupportedImageError
from _data import NIH_PNG_DIR, requires_data
from _serve import dcmtk, need

DATA = NIH_PNG_DIR
PNGS = sorted(DATA.glob("*.png"))
pytestmark = requires_data(bool(PNGS), f"real NIH PNGs not found in {DATA}")


@pytest.fixture(scope="module")
def u8() -> np.ndarray:
    """A real radiograph, 256 x 256 (the DICOM logic does not depend on size; keeps tests fast)."""
    img = cv2.imread(str(PNGS[0]), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)


def unit(u8: np.ndarray) -> np.ndarray:
    return u8.astype(np.float32) / 255.0


def minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return ((a - a.min()) / (a.max() - a.min())).astype(np.float32)


def test_12bit_monochrome2_raw_minmax_and_facts(tmp_path, u8):
    stored = u8.astype(np.uint16) * 16
    p = save(make_dataset(stored, bits_stored=12), tmp_path / "a.dcm")
    im = readers.read_image(p)
    assert im.pixels.dtype == np.float32
    np.testing.assert_allclose(im.pixels, minmax(stored), atol=1e-6)
    f = im.facts
    assert (f["modality"], f["body_part"], f["view"], f["frames"], f["bits_stored"]) == ("CR", "CHEST", "PA", 1, 12)
    text = repr(f)
    assert "SECRET-ID-123" not in text and "Test^Patient" not in text


def test_rescale_then_window_recovers_the_picture(tmp_path, u8):
    stored = u8.astype(np.uint16) * 16                     # 0..4080
    slope, intercept = 0.5, -1024.0                        # values -1024..1016
    lo, hi = intercept, 255 * 16 * slope + intercept
    ds = make_dataset(stored, bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept,
                      WindowCenter=(lo + hi) / 2, WindowWidth=hi - lo, VOILUTFunction="LINEAR_EXACT")
    im = readers.read_image(save(ds, tmp_path / "w.dcm"))
    np.testing.assert_allclose(im.pixels, unit(u8), atol=1e-5)
    # a narrower LINEAR window clips: values outside it saturate to 0 and 1
    ds.WindowCenter, ds.WindowWidth = (lo + hi) / 2, (hi - lo) / 4
    del ds.VOILUTFunction
    im = readers.read_image(save(ds, tmp_path / "w2.dcm"))
    v = stored * slope + intercept
    assert np.array_equal(im.pixels == 0, v <= (lo + hi) / 2 - 0.5 - ((hi - lo) / 4 - 1) / 2)
    assert (im.pixels == 1).mean() > 0.05 and "window" in im.facts["intensity"]


def test_window_ignoring_rescale_would_fail(tmp_path, u8):
    """The window is defined on rescaled values: the same window on stored values gives black."""
    stored = u8.astype(np.uint16) * 16
    ds = make_dataset(stored, bits_stored=12, RescaleSlope=1.0, RescaleIntercept=-5000.0,
                      WindowCenter=-5000 + 2040, WindowWidth=4080, VOILUTFunction="LINEAR_EXACT")
    im = readers.read_image(save(ds, tmp_path / "r.dcm"))
    np.testing.assert_allclose(im.pixels, unit(u8), atol=1e-5)


def test_monochrome1_is_inverted(tmp_path, u8):
    stored = u8.astype(np.uint16) * 16
    m2 = readers.read_image(save(make_dataset(stored, bits_stored=12), tmp_path / "m2.dcm")).pixels
    m1 = readers.read_image(save(make_dataset(4095 - stored, "MONOCHROME1", 12), tmp_path / "m1.dcm")).pixels
    np.testing.assert_allclose(m1, m2, atol=1e-6)
    # also with a window (inverted after windowing)
    ds = make_dataset(4095 - stored, "MONOCHROME1", 12, WindowCenter=4095 - 2040, WindowWidth=4080,
                      VOILUTFunction="LINEAR_EXACT")
    w1 = readers.read_image(save(ds, tmp_path / "m1w.dcm")).pixels
    np.testing.assert_allclose(w1, unit(u8), atol=1e-5)


def test_voi_lut_sequence(tmp_path, u8):
    stored = u8.astype(np.uint16) * 16
    ds = make_dataset(stored, bits_stored=12)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", (np.arange(4096) // 16 * 257).astype(np.uint16).tolist())  # LUTData
    ds.VOILUTSequence = [item]
    im = readers.read_image(save(ds, tmp_path / "lut.dcm"))
    np.testing.assert_allclose(im.pixels, unit(u8), atol=1e-6)
    assert im.facts["intensity"] == "VOI LUT"


def test_16bit_and_signed(tmp_path, u8):
    s16 = u8.astype(np.uint16) * 257
    im = readers.read_image(save(make_dataset(s16, bits_stored=16), tmp_path / "s16.dcm"))
    np.testing.assert_allclose(im.pixels, minmax(s16), atol=1e-6)
    signed = (u8.astype(np.int16) - 128) * 8
    im = readers.read_image(save(make_dataset(signed, bits_stored=12), tmp_path / "signed.dcm"))
    np.testing.assert_allclose(im.pixels, minmax(signed), atol=1e-6)


def test_pixel_padding_is_black_and_out_of_the_min_max(tmp_path, u8):
    """Pixel Padding Value marks pixels outside the image (a collimated CR's border): they must
    not stretch the min-max of the picture, and they come out black (PS3.3 C.7.5.1.1.2)."""
    picture = u8.astype(np.uint16) * 15 + 100  # 100 .. 3925
    framed = np.full((296, 296), 4095, np.uint16)  # a 20-pixel white border of padding
    framed[20:-20, 20:-20] = picture
    border = np.ones(framed.shape, bool)
    border[20:-20, 20:-20] = False
    plain = readers.read_image(save(make_dataset(framed, bits_stored=12), tmp_path / "plain.dcm"))
    assert np.abs(plain.pixels[20:-20, 20:-20] - minmax(picture)).max() > 0.02  # the border stretches it
    im = readers.read_image(save(make_dataset(framed, bits_stored=12, PixelPaddingValue=4095), tmp_path / "pad.dcm"))
    np.testing.assert_allclose(im.pixels[20:-20, 20:-20], minmax(picture), atol=1e-6)
    assert (im.pixels[border] == 0).all() and im.facts["padding_pixels"] == int(border.sum())
    # a range of padding values; MONOCHROME1 (inverted) still has black padding
    framed[:20] = 4000
    ds = make_dataset(framed, photometric="MONOCHROME1", bits_stored=12, PixelPaddingValue=4095,
                      PixelPaddingRangeLimit=3990)
    im = readers.read_image(save(ds, tmp_path / "range.dcm"))
    np.testing.assert_allclose(im.pixels[20:-20, 20:-20], 1 - minmax(picture), atol=1e-6)
    assert (im.pixels[border] == 0).all()
    # signed pixels: padding -2000, below the picture, as CT-style files write it
    signed = np.full((296, 296), -2000, np.int16)
    signed[20:-20, 20:-20] = (u8.astype(np.int16) - 128) * 8
    ds = make_dataset(signed, bits_stored=16, PixelPaddingValue=-2000)
    ds_us = make_dataset(signed, bits_stored=16)
    ds_us.add_new(0x00280120, "US", 63536)  # the same value written unsigned (explicit VR US)
    for name, d in [("ss", ds), ("us", ds_us)]:
        im = readers.read_image(save(d, tmp_path / f"{name}.dcm"))
        np.testing.assert_allclose(im.pixels[20:-20, 20:-20], minmax(signed[20:-20, 20:-20]), atol=1e-6)
        assert (im.pixels[border] == 0).all(), name


def test_palette_color(tmp_path, u8):
    ds = make_dataset(u8, "PALETTE COLOR", 8)
    idx = np.arange(256)
    lut = {"Red": idx * 257, "Green": (255 - idx) * 257, "Blue": np.full(256, 128 * 257)}
    for c, v in lut.items():
        setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds[f"{c}PaletteColorLookupTableData"] = pydicom.DataElement(
            {"Red": 0x00281201, "Green": 0x00281202, "Blue": 0x00281203}[c], "OW", v.astype("<u2").tobytes())
    im = readers.read_image(save(ds, tmp_path / "pal.dcm"))
    assert im.pixels.shape == (256, 256, 3)
    np.testing.assert_allclose(im.pixels[..., 0], unit(u8), atol=1e-6)
    np.testing.assert_allclose(im.pixels[..., 1], 1 - unit(u8), atol=1e-6)
    np.testing.assert_allclose(im.pixels[..., 2], 128 * 257 / 65535, atol=1e-6)


def test_ybr_full_converted_to_rgb(tmp_path, u8):
    rgb = np.stack([u8, (u8 * 0.8).astype(np.uint8), (u8 * 0.5).astype(np.uint8)], axis=2)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds = make_dataset(ybr, "YBR_FULL", 8)
    im = readers.read_image(save(ds, tmp_path / "ybr.dcm"))
    assert im.pixels.shape == (256, 256, 3)
    assert np.abs(im.pixels - unit(rgb)).max() <= 2.5 / 255


@pytest.mark.parametrize("codec", ["rle", "j2k", "jpeg-lossless"])
def test_compressed_transfer_syntaxes_decode_losslessly(tmp_path, u8, codec):
    stored = u8.astype(np.uint16) * 16
    ds = make_dataset(stored, bits_stored=12)
    ref = readers.read_image(save(ds, tmp_path / "raw.dcm")).pixels
    if codec == "rle":
        ds.compress(RLELossless)
        p = save(ds, tmp_path / "c.dcm")
    elif codec == "j2k":
        ds.compress(JPEG2000Lossless)
        p = save(ds, tmp_path / "c.dcm")
    else:
        pytest.importorskip("gdcm", reason="python-gdcm encodes the JPEG Lossless test file")
        p = to_jpeg_lossless(tmp_path / "raw.dcm", tmp_path / "c.dcm")
    im = readers.read_image(p)
    assert im.facts["transfer_syntax"] != "1.2.840.10008.1.2.1"
    np.testing.assert_array_equal(im.pixels, ref)


def test_12bit_jpeg_extended_decodes_like_dcmtk(tmp_path, u8):
    """12-bit lossy JPEG, common in CR / DX archives: pydicom's own plugins refuse it and the one
    that reads it is GPL, so the base install reads it through GDCM (medhash_sdk._dicom_jpeg12)."""
    cjpeg, djpeg = dcmtk("dcmcjpeg"), dcmtk("dcmdjpeg")
    need(cjpeg is not None and djpeg is not None, "dcmtk's dcmcjpeg / dcmdjpeg are not installed (apt-get install dcmtk)")
    # 12-bit samples (7 .. 4087), and 8-bit ones, which stay with pydicom's plugins
    for name, pixels, bits in [("j12", u8.astype(np.uint16) * 16 + 7, 12), ("j8", u8, 8)]:
        raw = save(make_dataset(pixels, bits_stored=bits), tmp_path / f"{name}-raw.dcm")
        subprocess.run([str(cjpeg), "+ee", "+q", "85", str(raw), str(tmp_path / f"{name}.dcm")], check=True, timeout=60)
        subprocess.run([str(djpeg), str(tmp_path / f"{name}.dcm"), str(tmp_path / f"{name}-back.dcm")],
                       check=True, timeout=60)
        im = readers.read_image(tmp_path / f"{name}.dcm")
        assert im.facts["transfer_syntax"] == "1.2.840.10008.1.2.4.51"
        # the samples dcmtk's decoder gives, so the same picture (lossy, but near the original)
        np.testing.assert_array_equal(im.pixels, readers.read_image(tmp_path / f"{name}-back.dcm").pixels)
        assert np.corrcoef(im.pixels.ravel(), readers.read_image(raw).pixels.ravel())[0, 1] > 0.99, name
    # the same 12-bit stream as a JPEG file of its own (OpenCV reads 8-bit JPEG only): GDCM too
    from pydicom.encaps import generate_frames
    stream = next(generate_frames(pydicom.dcmread(tmp_path / "j12.dcm").PixelData, number_of_frames=1))
    (tmp_path / "j12.jpg").write_bytes(stream)
    im = readers.read_image(tmp_path / "j12.jpg")
    assert im.facts["format"] == "jpeg" and im.facts["bits_stored"] == 12
    np.testing.assert_array_equal(im.pixels, pydicom.dcmread(tmp_path / "j12-back.dcm").pixel_array)


def test_12bit_jpeg_plugin_refuses_what_it_cannot_decode(tmp_path, u8):
    """A header that does not match the stream is an ImageReadError, never a crash: GDCM aborts
    the process on some mismatches, so the plugin checks the frame header first."""
    cjpeg = dcmtk("dcmcjpeg")
    need(cjpeg is not None, "dcmtk's dcmcjpeg is not installed (apt-get install dcmtk)")
    raw = save(make_dataset(u8.astype(np.uint16) * 16, bits_stored=12), tmp_path / "raw.dcm")
    subprocess.run([str(cjpeg), "+ee", str(raw), str(tmp_path / "j12.dcm")], check=True, timeout=60)
    for name, change in [("rows", {"Rows": 128}), ("bits", {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}),
                         ("samples", {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB",
                                      "PlanarConfiguration": 0})]:
        ds = pydicom.dcmread(tmp_path / "j12.dcm")
        for k, v in change.items():
            setattr(ds, k, v)
        p = save(ds, tmp_path / f"{name}.dcm")
        # run in a child process: an abort there fails this test instead of ending the run
        code = ("import sys; from medhash_sdk import readers\n"
                "try:\n    readers.read_image(sys.argv[1])\nexcept Exception as e:\n"
                "    print(type(e).__name__); sys.exit(0)\nprint('decoded')")
        out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (name, out.returncode, out.stderr[-500:])
        assert out.stdout.strip() in ("ImageReadError", "UnsupportedImageError"), (name, out.stdout, out.stderr[-500:])


def test_unusable_window_falls_back_to_min_max(tmp_path, u8):
    """A zero window width or a damaged VOI LUT is a bad display hint, not a bad picture: the
    image is read with the next mapping (min-max here), and the facts say why."""
    stored = u8.astype(np.uint16) * 16
    plain = readers.read_image(save(make_dataset(stored, bits_stored=12), tmp_path / "p.dcm")).pixels
    im = readers.read_image(save(make_dataset(stored, bits_stored=12, WindowCenter=2048, WindowWidth=0),
                                 tmp_path / "w0.dcm"))
    np.testing.assert_array_equal(im.pixels, plain)
    assert "window unusable" in im.facts["intensity"]
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [4096, 0, 7]  # 7-bit entries: pydicom refuses (8 or 16)
    lut.add_new(0x00283006, "US", list(range(4096)))  # LUTData
    ds = make_dataset(stored, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    ds.VOILUTSequence = [lut]
    im = readers.read_image(save(ds, tmp_path / "lut.dcm"))
    assert im.facts["intensity"].startswith("window C=2048"), im.facts["intensity"]


def test_gdcm_decodes_only_what_nothing_else_can(tmp_path, u8, monkeypatch):
    """GDCM's binding aborts the process on some damaged streams (the fuzzer found a JPEG 2000
    one), so it is never handed a stream that another decoder exists for, damaged or not."""
    import pydicom.pixels

    tried: list[str] = []
    original = pydicom.pixels.pixel_array

    def recording(*args, **kwargs):
        tried.append(kwargs.get("decoding_plugin", ""))
        return original(*args, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", recording)
    stored = u8.astype(np.uint16) * 16
    for syntax, start in ((JPEG2000Lossless, b"\xff\x4f\xff\x51"), (JPEGLSLossless, b"\xff\xd8")):
        ds = make_dataset(stored, bits_stored=12)
        ds.compress(syntax)
        data = save(ds, tmp_path / "c.dcm").read_bytes()
        tried.clear()
        readers.read_bytes(data, "c.dcm")
        assert tried and all(p not in ("", "gdcm") for p in tried), (syntax.name, tried)  # "": all, GDCM too
        # the codestream's header wiped: refused by the others, and GDCM is not asked
        at = data.index(start, data.index(b"\xfe\xff\x00\xe0")) + 2
        tried.clear()
        with pytest.raises(ImageReadError, match="could not be decoded"):
            readers.read_bytes(data[:at] + bytes(40) + data[at + 40:], "bad.dcm")
        assert tried and all(p not in ("", "gdcm") for p in tried), (syntax.name, tried)  # "": all, GDCM too
    pytest.importorskip("gdcm", reason="python-gdcm decodes JPEG Lossless")
    tried.clear()
    readers.read_image(to_jpeg_lossless(save(make_dataset(stored, bits_stored=12), tmp_path / "r.dcm"),
                                        tmp_path / "l.dcm"))
    assert tried in (["gdcm"], ["pylibjpeg"]), tried  # pylibjpeg: where the GPL extra is installed


def test_tiff_header_in_the_preamble_is_read_as_dicom(tmp_path, u8):
    """PS3.10 lets the 128-byte preamble hold a TIFF header (one file, both formats): DICM at byte
    128 decides, whatever the first bytes or the file name say."""
    ds = make_dataset(u8, bits_stored=8)
    ds.preamble = b"II*\x00\x08\x00\x00\x00" + bytes(120)
    for name in ("dual.dcm", "dual.tif", "dual"):
        p = save(ds, tmp_path / name)
        assert p.read_bytes()[:4] == b"II*\x00"
        im = readers.read_image(p)
        assert im.facts["format"] == "dicom", name
        np.testing.assert_allclose(im.pixels, unit(u8), atol=1e-6)


def test_multiframe_takes_the_chosen_frame(tmp_path, u8):
    frames = np.stack([u8, 255 - u8, u8 // 2]).astype(np.uint8)
    ds = make_dataset(frames, bits_stored=8)
    p = save(ds, tmp_path / "mf.dcm")
    first = readers.read_image(p)
    assert first.facts["frames"] == 3 and first.facts["frame"] == 0
    np.testing.assert_allclose(first.pixels, unit(u8), atol=1e-6)  # 8-bit without window: / 255 like a PNG
    third = readers.read_image(p, frame=2)
    np.testing.assert_allclose(third.pixels, unit(u8 // 2), atol=1e-6)
    with pytest.raises(ValueError, match="3 frame"):
        readers.read_image(p, frame=3)


def test_errors(tmp_path, u8, monkeypatch):
    ds = make_dataset(None)
    with pytest.raises(ImageReadError, match="no pixel data") as e:
        readers.read_image(save(ds, tmp_path / "nopix.dcm"))
    assert "nopix.dcm" in str(e.value)
    raw = save(make_dataset(u8.astype(np.uint16) * 16, bits_stored=12), tmp_path / "ok.dcm").read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(raw[: len(raw) - 5000])
    with pytest.raises(ImageReadError, match="could not be decoded"):
        readers.read_image(tmp_path / "trunc.dcm")
    (tmp_path / "head.dcm").write_bytes(raw[:200])
    with pytest.raises(ImageReadError):
        readers.read_image(tmp_path / "head.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"\x13\x37" * 500)
    with pytest.raises(ImageReadError):
        readers.read_image(tmp_path / "junk.dcm")
    ds = make_dataset(u8, bits_stored=8)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    from pydicom.encaps import encapsulate
    ds.PixelData = encapsulate([u8.tobytes()])
    ds["PixelData"].VR = "OB"
    with pytest.raises(UnsupportedImageError, match="transfer syntax"):
        readers.read_image(save(ds, tmp_path / "mpeg.dcm"))
    # pixel limit from Rows/Columns, before any decoding
    import pydicom.pixels
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(UnsupportedImageError, match="exceeds the limit"):
        readers.read_image(tmp_path / "ok.dcm", max_pixels=100 * 100)
