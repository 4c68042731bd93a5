"""A pydicom decoder plugin for 12-bit JPEG Extended (1.2.840.10008.1.2.4.51) through GDCM.

Computed and digitised radiography archives hold many images in this transfer syntax. pydicom's
own plugins refuse 12-bit samples (Pillow cannot; its GDCM plugin declines them), and the one
that accepts them, pylibjpeg-libjpeg, is GPL (the ``gpl-codecs`` extra). python-gdcm (BSD, in
the base install) decodes them with its 12-bit IJG codec, equal to DCMTK's ``dcmdjpeg``
sample for sample (tests/test_dicom.py). The reader names it for this transfer syntax when the
JPEG stream's own header says 12 bits (``stream_precision``, ``register``); 8-bit streams stay
with pydicom's plugins.

The frame header is checked against the data set before GDCM sees the stream: GDCM picks its
codec from the pixel format it is given, and aborts the process (an uncaught C++ exception) on
some mismatches, e.g. 8 bits allocated for a 12-bit stream.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
from pydicom import uid

from ._jpeg_header import JpegFrame, jpeg_frame
from .exceptions import MedhashError

PLUGIN_LABEL = "medhash-gdcm-jpeg12"
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("gdcm>=3.0.10",)}

try:
    import gdcm

    _HAVE_GDCM = True
except ImportError:
    _HAVE_GDCM = False
_SEQUENTIAL_DCT = (0xC0, 0xC1)  # Huffman-coded baseline / extended sequential: JPEG Extended's processes 2 and 4
_lock = threading.Lock()
_label: str | None = None  # set once registered ("" without GDCM)


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin contract: can this plugin decode that transfer syntax here."""
    return _HAVE_GDCM and transfer_syntax in DECODER_DEPENDENCIES


def decode_gray12(src: bytes, sof: JpegFrame) -> np.ndarray:
    """A one-component 12-bit JPEG stream (its frame header read already) -> uint16 samples."""
    if not _HAVE_GDCM:
        raise NotImplementedError("12-bit JPEG needs python-gdcm (`pip install python-gdcm`)")
    if sof.precision != 12:
        raise NotImplementedError(f"stream of {sof.precision}-bit samples (this decoder reads 12-bit ones)")
    if sof.components != 1:
        raise NotImplementedError("12-bit colour JPEG (this decoder reads one-component images)")
    if sof.marker not in _SEQUENTIAL_DCT:
        raise NotImplementedError(f"JPEG process of marker 0x{sof.marker:02X} (this decoder reads "
                                  "sequential DCT streams, SOF0 / SOF1)")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(bytes(src))
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((sof.width, sof.height, 1))
    image.SetDataElement(element)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(uid.JPEGExtended12Bit))))
    # 12 allocated bits make GDCM start with its 12-bit codec (it answers in 16-bit words);
    # with 16 it tries the 8/16-bit codec first and prints an error before falling back
    image.SetPixelFormat(gdcm.PixelFormat(1, 12, 12, 11, 0))
    out = image.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM hands char* back as str
    if len(out) != 2 * sof.height * sof.width:
        raise ValueError(f"GDCM decoded {len(out)} bytes, expected {2 * sof.height * sof.width}")
    return np.frombuffer(out, dtype="<u2").reshape(sof.height, sof.width)


def decode_frame(src: bytes, runner: Any) -> bytes:
    """pydicom's plugin contract: one encoded frame -> its samples as bytes (16 bits each)."""
    try:
        sof = jpeg_frame(bytes(src), "frame")
    except MedhashError as e:
        raise ValueError(f"not a JPEG stream: {e}") from e
    if runner.samples_per_pixel != 1:
        raise NotImplementedError("12-bit colour JPEG (this plugin decodes one-component images)")
    if (sof.height, sof.width) != (runner.rows, runner.columns):
        raise ValueError(f"the JPEG stream is {sof.width} x {sof.height}, the data set says "
                         f"{runner.columns} x {runner.rows}")
    if runner.bits_allocated != 16 or not 9 <= runner.bits_stored <= 12 or runner.pixel_representation != 0:
        raise ValueError(f"Bits Allocated {runner.bits_allocated} / Bits Stored {runner.bits_stored} / Pixel "
                         f"Representation {runner.pixel_representation} do not fit 12-bit JPEG samples "
                         "(16 / 9-12 / 0: JPEG samples are unsigned)")
    return decode_gray12(src, sof).tobytes()


def stream_precision(pixel_data: bytes) -> int | None:
    """Bits a sample of the first JPEG frame in encapsulated Pixel Data, None if unreadable.

    Read from the stream itself, so that a data set whose Bits Stored / Allocated do not match
    its JPEG stream comes to this plugin, which refuses it, instead of being decoded wrongly.
    """
    from pydicom.encaps import generate_fragments

    try:
        fragments = generate_fragments(pixel_data)
        next(fragments, None)  # the Basic Offset Table (its item is always there, maybe empty)
        first = next(fragments, None)
        return None if first is None else jpeg_frame(bytes(first), "frame").precision
    except (MedhashError, ValueError, TypeError, EOFError):
        return None


def register() -> str:
    """Add the plugin to pydicom's 12-bit JPEG Extended decoder once per process (thread-safe).

    pydicom's plugin table is not safe to change while another thread decodes, so the reader
    calls this before its first decoding of any DICOM file in a process, not only of these.
    Returns the label to pass as ``decoding_plugin``, or "" when GDCM is not installed (pydicom
    then tries what it has: pylibjpeg-libjpeg where the GPL extra is installed).
    """
    global _label
    if _label is None:
        with _lock:
            if _label is None:
                if _HAVE_GDCM:
                    from pydicom.pixels.decoders import JPEGExtended12BitDecoder

                    try:
                        JPEGExtended12BitDecoder.add_plugin(PLUGIN_LABEL, (__name__, "decode_frame"))
                    except ValueError:  # added already (e.g. by a reloaded copy of this module)
                        pass
                _label = PLUGIN_LABEL if _HAVE_GDCM else ""
    return _label
