"""Read images from files and arrays for the Encoder: PNG, JPEG, TIFF (8/16 bit; JPEG also 12
bit, through GDCM) and DICOM.

Every reader returns an :class:`Image`: the pixel array handed to
``medhash_sdk.preprocessing`` (uint8/uint16 for PNG/JPEG/TIFF, float32 in [0, 1] for DICOM,
whose intensity mapping happens here) and the facts a user may want to know about the input.

Untrusted files (a hospital archive has everything in it):
- only regular files are opened (a FIFO or a device would block a read forever), at most
  ``max_bytes`` of them;
- the image size is read from the header (PNG IHDR, JPEG SOF, TIFF first IFD, DICOM
  Rows/Columns/Number of Frames) and images over ``max_pixels`` are refused *before* decoding
  (decompression bombs);
- PNG and JPEG must be complete (IEND chunk / end-of-image marker after the scan): libjpeg
  otherwise "decodes" a truncated file into a half-grey image, a silent wrong code;
- every failure raises ImageReadError (or UnsupportedImageError) naming the input and why.

DICOM (pydicom 3): Modality LUT or Rescale Slope/Intercept, then the VOI LUT Sequence or
Window Center/Width (first view; LINEAR, LINEAR_EXACT, SIGMOID) mapped to [0, 1], else the
preprocessing rule (8-bit / 255 like a PNG; wider or rescaled values min-max per image); MONOCHROME1 is inverted so bone is bright as in MONOCHROME2;
Pixel Padding Value (and Range Limit) pixels are left out of the min-max and made black;
PALETTE COLOR goes through its colour LUT; YBR_* are converted to RGB by pydicom.
Multi-frame: one frame is encoded, ``frame=0`` (the first) unless asked otherwise; the facts
say how many frames the file has. Codecs in the base install: uncompressed, deflated, RLE,
JPEG baseline/extended 8-bit (pillow), 12-bit (medhash_sdk._dicom_jpeg12: GDCM), lossless
(python-gdcm), JPEG-LS (pyjpegls), JPEG 2000 and HTJ2K (pylibjpeg-openjpeg), RLE
(pylibjpeg-rle). All of them are permissively licensed; GDCM reads only what no other
installed decoder can (``_decoding_plugins``). ``DICM`` at byte 128 makes a file DICOM before
any other magic is looked at: the preamble may hold a TIFF header (PS3.10 7.1).
"""
from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ._jpeg_header import JpegFrame, jpeg_frame
from .exceptions import ImageReadError, MedhashError, UnsupportedImageError

#: Default limit on pixels per image (rows x columns x frames decoded): 8192 x 8192.
MAX_PIXELS = 8192 * 8192
#: Default limit on the size of one input file.
MAX_BYTES = 1 << 30

ImageInput = Union[str, os.PathLike, np.ndarray]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: File name extensions of DICOM files (a DICOM file may also have none: its content says so).
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
#: File name extensions of the raster formats these readers decode (the content is what counts).
RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
#: Every extension input discovery takes as an image: exactly the formats read here.
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES
# Transfer syntaxes whose decoders are only GPL (pylibjpeg-libjpeg) when python-gdcm is absent
_LOSSLESS_JPEG = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                  "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}


@dataclass
class Image:
    """A decoded input: ``pixels`` for preprocessing and ``facts`` about where it came from."""

    pixels: np.ndarray
    source: str
    facts: dict[str, Any] = field(default_factory=dict)


def describe(obj: object) -> str:
    """How an input is named in messages: its path, or 'array #i' for arrays."""
    return os.fspath(obj) if isinstance(obj, (str, os.PathLike)) else f"<{type(obj).__name__}>"


def check_size(source: str, height: int, width: int, max_pixels: int, frames: int = 1) -> None:
    """Refuse empty images and images over the pixel limit, before any decoding."""
    if height <= 0 or width <= 0:
        raise ImageReadError(source, f"the header declares an empty image ({width} x {height})")
    n = int(height) * int(width) * max(1, int(frames))
    if n > max_pixels:
        raise UnsupportedImageError(
            source, f"image of {width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
            + f" = {n:,} pixels exceeds the limit of {max_pixels:,} (raise max_pixels if you trust this file)")


# ---------------------------------------------------------------- headers (no decoding)

def _png_size(data: bytes, source: str) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageReadError(source, "truncated PNG (no IHDR header)")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _decode_jpeg12(data: bytes, source: str, frame: JpegFrame, max_pixels: int) -> Image:
    """A JPEG file of 12-bit samples (OpenCV reads 8-bit ones only): GDCM, as inside DICOM."""
    from ._dicom_jpeg12 import decode_gray12

    check_size(source, frame.height, frame.width, max_pixels)
    try:
        arr = decode_gray12(data, frame)
    except NotImplementedError as e:
        raise UnsupportedImageError(source, f"JPEG of {frame.precision}-bit samples: {e}") from e
    except (ValueError, RuntimeError) as e:
        raise ImageReadError(source, f"corrupt 12-bit JPEG ({e})") from e
    facts = {"format": "jpeg", "dtype": "uint16", "height": int(frame.height), "width": int(frame.width),
             "channels": 1, "bits_stored": 12}
    return Image(arr, source, facts)


def _tiff_size(data: bytes, source: str) -> tuple[int, int]:
    """Width and height from the first IFD of a TIFF or BigTIFF."""
    try:
        bo = "<" if data[:2] == b"II" else ">"
        big = struct.unpack(bo + "H", data[2:4])[0] == 43
        if big:
            (off,) = struct.unpack(bo + "Q", data[8:16])
            (count,) = struct.unpack(bo + "Q", data[off:off + 8])
            entry, start = 20, off + 8
        else:
            (off,) = struct.unpack(bo + "I", data[4:8])
            (count,) = struct.unpack(bo + "H", data[off:off + 2])
            entry, start = 12, off + 2
        dims: dict[int, int] = {}
        for k in range(min(int(count), 4096)):
            e = start + k * entry
            tag, typ = struct.unpack(bo + "HH", data[e:e + 4])
            if tag in (256, 257):
                voff = e + (12 if big else 8)
                fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
                if fmt is None:
                    raise ImageReadError(source, f"corrupt TIFF (tag {tag} has type {typ})")
                (dims[tag],) = struct.unpack(bo + fmt, data[voff:voff + struct.calcsize(fmt)])
        if 256 not in dims or 257 not in dims:
            raise ImageReadError(source, "corrupt TIFF (no ImageWidth/ImageLength in the first IFD)")
        return dims[257], dims[256]
    except struct.error as e:
        raise ImageReadError(source, f"truncated TIFF header ({e})") from e


# ---------------------------------------------------------------- decoders

def _decode_raster(data: bytes, source: str, kind: str, max_pixels: int) -> Image:
    import cv2

    if kind == "png":
        h, w = _png_size(data, source)
        if data.rfind(b"IEND", max(0, len(data) - 64)) < 0:
            raise ImageReadError(source, "truncated PNG (no IEND chunk at the end)")
    elif kind == "jpeg":
        frame = jpeg_frame(data, source)
        h, w, sos = frame.height, frame.width, frame.scan_offset
        if data.rfind(b"\xff\xd9") <= sos:
            raise ImageReadError(source, "truncated JPEG (no end-of-image marker after the scan)")
        if frame.precision != 8:
            return _decode_jpeg12(data, source, frame, max_pixels)
    else:
        h, w = _tiff_size(data, source)
    check_size(source, h, w, max_pixels)
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise ImageReadError(source, f"corrupt {kind.upper()} (the decoder could not read the pixel data)")
    if arr.shape[0] != h or arr.shape[1] != w:
        raise ImageReadError(source, f"corrupt {kind.upper()} (decoded {arr.shape[1]} x {arr.shape[0]}, header says {w} x {h})")
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
        elif arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.shape[2] == 1:
            arr = arr[:, :, 0]
    facts = {"format": kind, "dtype": str(arr.dtype), "height": int(h), "width": int(w),
             "channels": 1 if arr.ndim == 2 else int(arr.shape[2])}
    return Image(arr, source, facts)


def _dicom_facts(ds: Any) -> dict[str, Any]:
    """What analyze() reports about a DICOM file. No patient fields (name, IDs, dates)."""
    def get(name: str) -> Any:
        v = ds.get(name)
        return None if v is None or v == "" else str(v).strip()

    region = None
    seq = ds.get("AnatomicRegionSequence")
    if seq:
        region = str(getattr(seq[0], "CodeMeaning", "")).strip() or None
    return {
        "format": "dicom",
        "modality": get("Modality"),
        "body_part": get("BodyPartExamined"),
        "anatomic_region": region,
        "view": get("ViewPosition"),
        "laterality": get("ImageLaterality") or get("Laterality"),
        "photometric": get("PhotometricInterpretation"),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else None,
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "height": int(ds.get("Rows", 0) or 0),
        "width": int(ds.get("Columns", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
    }


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1] instead of the display range."""
    x = arr.astype(np.float32, copy=False)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError("Window Width must be > 0 for SIGMOID")
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError("Window Width must be > 0 for LINEAR_EXACT")
        lo, span = center - width / 2.0, width
    else:  # LINEAR (default)
        if width < 1:
            raise ValueError("Window Width must be >= 1 for LINEAR")
        lo, span = (center - 0.5) - (width - 1.0) / 2.0, width - 1.0
        if span == 0:
            return (x > center - 0.5).astype(np.float32)
    return np.clip((x - np.float32(lo)) * np.float32(1.0 / span), 0.0, 1.0).astype(np.float32, copy=False)


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS element."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _stored_value(value: Any, ds: Any) -> int:
    """A US-or-SS pixel value as the pixels hold it: signed when Pixel Representation is 1
    (a file may write -2000 as US 63536)."""
    v = int(_first(value))
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and v >= 1 << (bits - 1):
        v -= 1 << bits
    return v


def _padding_mask(arr: np.ndarray, ds: Any) -> np.ndarray | None:
    """Pixels that Pixel Padding Value (and Range Limit) mark as outside the image (PS3.3
    C.7.5.1.1.2), from the stored values; None when there are none or the values are unreadable."""
    if "PixelPaddingValue" not in ds:
        return None
    try:
        lo = hi = _stored_value(ds.PixelPaddingValue, ds)
        if ds.get("PixelPaddingRangeLimit") is not None:
            limit = _stored_value(ds.PixelPaddingRangeLimit, ds)
            lo, hi = min(lo, limit), max(lo, limit)
    except (TypeError, ValueError, IndexError):
        return None
    mask = (arr >= lo) & (arr <= hi)
    return mask if mask.any() else None


def _dicom_to_unit(arr: np.ndarray, ds: Any, facts: dict[str, Any]) -> np.ndarray:
    """Modality LUT/rescale, VOI LUT/window, MONOCHROME1 inversion -> float32 [0, 1]."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

    from .preprocessing import to_unit_float

    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        facts["intensity"] = "palette colour LUT"
        return np.clip(rgb.astype(np.float32) / np.float32(2 ** bits - 1), 0.0, 1.0)
    if arr.ndim == 3 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # RGB (pydicom converted YBR_* to RGB already): full-range 8/16-bit samples
        facts["intensity"] = "colour"
        return to_unit_float(arr) if arr.dtype != np.uint16 else (arr.astype(np.float32) / np.float32(65535.0))
    x = apply_modality_lut(arr, ds) if ("ModalityLUTSequence" in ds or "RescaleSlope" in ds
                                        or "RescaleIntercept" in ds) else arr
    # padding (e.g. outside a collimated field) is not picture: black, and out of the min-max
    pad = _padding_mask(arr, ds)
    if pad is not None and not pad.all():
        x = np.where(pad, np.asarray(x)[~pad].min(), x).astype(np.asarray(x).dtype, copy=False)
    # the file's display mapping: VOI LUT, else window, else min-max. One that cannot be applied
    # (a damaged LUT, a zero width) is a bad display hint, not a bad picture: the next one is used
    out, skipped = None, []
    if "VOILUTSequence" in ds and ds.VOILUTSequence:
        try:
            y = apply_voi(x, ds, index=0)
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            out = np.clip(y.astype(np.float32) / np.float32(2 ** bits - 1), 0.0, 1.0)
            facts["intensity"] = "VOI LUT"
        except (ValueError, KeyError, AttributeError, TypeError, IndexError, NotImplementedError) as e:
            skipped.append(f"VOI LUT unusable: {e}")
    if out is None and "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            out = _window(x, center, width, function)
            facts["intensity"] = f"window C={center:g} W={width:g} ({function})"
        except (ValueError, TypeError, IndexError) as e:
            skipped.append(f"window unusable: {e}")
    if out is None:
        out = to_unit_float(np.asarray(x))
        facts["intensity"] = "min-max (" + ("; ".join(skipped) or "no window in the file") + ")"
    if photometric == "MONOCHROME1":
        out = np.float32(1.0) - out
    if pad is not None:
        out = np.where(pad, np.float32(0.0), out)
        facts["padding_pixels"] = int(pad.sum())
    return np.ascontiguousarray(out, dtype=np.float32)


# pydicom's decoding plugins in the order they are tried here; GDCM is not among them
_PREFERRED_PLUGINS = ("pylibjpeg", "pyjpegls", "pillow", "pydicom")


def _decoding_plugins(available: tuple[str, ...], exclude: str) -> list[str]:
    """The plugins to try for one encapsulated transfer syntax, in order.

    GDCM only where nothing else decodes the syntax (JPEG Lossless without the GPL extra): its
    Python binding lets a C++ exception through on some damaged streams, which aborts the
    process (benchmarks/fuzz_readers.py found one in a JPEG 2000 file, 2026-12-06), so it never
    gets a stream another decoder has refused. Where both decode, they agree sample for sample
    on pydicom's own test files.
    """
    found = [p for p in _PREFERRED_PLUGINS if p in available]
    found += sorted(p for p in available if p not in _PREFERRED_PLUGINS and p not in ("gdcm", exclude))
    return found or (["gdcm"] if "gdcm" in available else [""])


def _decode_dicom(data: bytes, source: str, max_pixels: int, frame: int, force: bool) -> Image:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder, pixel_array
    from pydicom.uid import JPEGExtended12Bit

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError as e:
        raise ImageReadError(source, f"not a DICOM file ({e})") from e
    except Exception as e:  # pydicom raises many types on damaged headers
        raise ImageReadError(source, f"damaged DICOM header ({type(e).__name__}: {e})") from e
    facts = _dicom_facts(ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(source, "DICOM file has no pixel data (e.g. a report, a presentation "
                                     f"state or a DICOMDIR; SOP class {ds.get('SOPClassUID', 'unknown')})")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(source, "wrong DICOM: pixel data without Rows/Columns")
    frames = facts["frames"]
    check_size(source, facts["height"], facts["width"], max_pixels)
    if not 0 <= frame < frames:
        raise _FrameArgumentError(f"frame={frame} but {source} has {frames} frame(s)")
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is None:
        raise ImageReadError(source, "wrong DICOM: no Transfer Syntax UID in the file meta information")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as e:
        raise UnsupportedImageError(source, f"unsupported transfer syntax {tsyntax} ({getattr(tsyntax, 'name', '')})") from e
    if not decoder.is_available:
        hint = ("install python-gdcm (BSD; `pip install python-gdcm`) or the GPL extra "
                "`pip install medhash-sdk[gpl-codecs]`" if str(tsyntax) in _LOSSLESS_JPEG
                else "no decoder plugin is installed for it")
        raise UnsupportedImageError(source, f"cannot decode transfer syntax {tsyntax.name}: {hint}")
    # pydicom's permissive plugins refuse 12-bit JPEG Extended samples: GDCM through ours
    from ._dicom_jpeg12 import register, stream_precision

    jpeg12_plugin = register()  # before any decoding (pydicom's plugin table is not thread-safe)
    twelve_bit_jpeg = tsyntax == JPEGExtended12Bit and stream_precision(ds.PixelData) == 12
    plugins = [""]  # native (uncompressed) data: pydicom's own
    if decoder.is_encapsulated:
        # signed 12-bit samples: whatever pydicom has (the GPL extra's decoder reads them; ours refuses)
        ours = jpeg12_plugin if twelve_bit_jpeg and not ds.get("PixelRepresentation", 0) else ""
        plugins = [ours] if ours else _decoding_plugins(decoder.available_plugins, exclude=jpeg12_plugin)
    errors = []
    for plugin in plugins:
        try:
            arr = pixel_array(ds, index=frame if frames > 1 else None, decoding_plugin=plugin)
            break
        except Exception as e:  # truncated or corrupt pixel data, codec errors
            text = str(e)
            if text.startswith("Unable to decode"):  # pydicom's summary: keep the plugin's own line
                text = text.split("plugins:", 1)[-1].strip()
            errors.append(text if plugin and text.startswith(plugin) else f"{type(e).__name__}: {text}")
    else:
        hint = ("; 12-bit JPEG needs python-gdcm (`pip install python-gdcm`) or the GPL extra "
                "`pip install medhash-sdk[gpl-codecs]`" if twelve_bit_jpeg and not jpeg12_plugin else "")
        raise ImageReadError(source, f"DICOM pixel data could not be decoded ({'; '.join(errors)}){hint}")
    facts["frame"] = frame
    if arr.ndim == 3 and frames > 1 and arr.shape[0] == frames:  # defensive: a decoder returned all frames
        arr = arr[frame]
    if arr.shape[:2] != (facts["height"], facts["width"]):
        raise ImageReadError(source, f"DICOM pixel data is {arr.shape}, header says {facts['height']} x {facts['width']}")
    try:
        pixels = _dicom_to_unit(arr, ds, facts)
    except (ValueError, KeyError, AttributeError, TypeError, IndexError) as e:
        raise ImageReadError(source, f"wrong DICOM intensity attributes ({type(e).__name__}: {e})") from e
    if not np.all(np.isfinite(pixels)):
        raise ImageReadError(source, "DICOM pixel data maps to NaN or infinite values")
    return Image(pixels, source, facts)


# ---------------------------------------------------------------- entry points

def _read_bytes(path: Path, source: str, max_bytes: int) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise ImageReadError(source, "no such file") from e
    except OSError as e:
        raise ImageReadError(source, f"cannot access the file ({e.strerror})") from e
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(source, "not a regular file (a directory, pipe or device)")
    if st.st_size == 0:
        raise ImageReadError(source, "empty file")
    if st.st_size > max_bytes:
        raise UnsupportedImageError(source, f"file of {st.st_size:,} bytes exceeds the limit of {max_bytes:,}")
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except OSError as e:
        raise ImageReadError(source, f"cannot read the file ({e.strerror})") from e


class _FrameArgumentError(ValueError):
    """frame= names a frame the file does not have: a bad argument, not a bad file."""


def read_bytes(data: bytes, source: str = "<bytes>", *, max_pixels: int = MAX_PIXELS, frame: int = 0,
               suffix: str = "") -> Image:
    """Decode an image held in memory; the format is sniffed from the content.

    Anything a damaged file makes a parser or codec raise (pydicom parses elements lazily, so
    errors surface anywhere; Rust codecs panic with a BaseException) becomes ImageReadError
    naming the source: bad files never escape as other exception types.
    """
    try:
        return _read_bytes_unchecked(data, source, max_pixels, frame, suffix)
    except (MedhashError, _FrameArgumentError, KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as e:  # noqa: BLE001 - see the docstring
        raise ImageReadError(source, f"damaged file ({type(e).__name__}: {str(e)[:200]})") from e


def _read_bytes_unchecked(data: bytes, source: str, max_pixels: int, frame: int, suffix: str) -> Image:
    if not data:
        raise ImageReadError(source, "empty file")
    head = data[:132]
    # DICOM first: its 128-byte preamble may hold another format's header (PS3.10 7.1 names a
    # TIFF header, so that one file is both), and the DICOM data set is what the file is for
    if head[128:132] == b"DICM":
        return _decode_dicom(data, source, max_pixels, frame, force=False)
    if head.startswith(_PNG_MAGIC):
        return _decode_raster(data, source, "png", max_pixels)
    if head.startswith(_JPEG_MAGIC):
        return _decode_raster(data, source, "jpeg", max_pixels)
    if head[:4] in _TIFF_MAGICS:
        return _decode_raster(data, source, "tiff", max_pixels)
    if suffix.lower() in DICOM_SUFFIXES:  # DICOM without the 128-byte preamble
        return _decode_dicom(data, source, max_pixels, frame, force=True)
    raise ImageReadError(source, "not an image (not PNG, JPEG, TIFF or DICOM)")


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if the file has the DICOM preamble marker ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
               frame: int = 0) -> Image:
    """Read one image file (PNG, JPEG, TIFF 8/16 bit, DICOM). See the module docstring."""
    p = Path(path)
    source = os.fspath(path)
    return read_bytes(_read_bytes(p, source, max_bytes), source, max_pixels=max_pixels, frame=frame,
                      suffix=p.suffix)


def from_array(array: np.ndarray, source: str = "<array>", *, max_pixels: int = MAX_PIXELS) -> Image:
    """Check an in-memory image: H x W (gray) or H x W x 3/4 (RGB/RGBA), uint8, uint16, int or float."""
    a = np.asarray(array)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{source}: image arrays must be numeric, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise TypeError(f"{source}: complex arrays are not images")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"{source}: one image must be H x W (gray) or H x W x 3 (RGB), got shape {a.shape}; "
                         "pass a list of arrays for a batch")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{source}: empty image of shape {a.shape}")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise ValueError(f"{source}: image of {a.shape[1]} x {a.shape[0]} exceeds max_pixels={max_pixels:,}")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise ValueError(f"{source}: image contains NaN or infinite values")
    return Image(a, source, {"format": "array", "dtype": str(a.dtype), "height": int(a.shape[0]),
                             "width": int(a.shape[1]), "channels": 1 if a.ndim == 2 else int(a.shape[2])})


def load(item: ImageInput, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES, frame: int = 0,
         name: str | None = None) -> Image:
    """One input (a path or an array) -> Image."""
    if isinstance(item, np.ndarray):
        return from_array(item, name or "<array>", max_pixels=max_pixels)
    if isinstance(item, (str, os.PathLike)):
        return read_image(item, max_pixels=max_pixels, max_bytes=max_bytes, frame=frame)
    if isinstance(item, (bytes, bytearray)):
        return read_bytes(bytes(item), name or "<bytes>", max_pixels=max_pixels, frame=frame)
    raise TypeError(f"an input must be a file path (str or Path), a numpy array or bytes, got {type(item).__name__}")
