"""The frame header of a JPEG stream, read without decoding it: sample precision, size,
components and where the first scan starts (plain JPEG files and JPEG frames inside DICOM)."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .exceptions import ImageReadError

# SOF markers that carry the frame size (not DHT C4, JPG C8, DAC CC)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class JpegFrame:
    """What a JPEG frame header (SOF) says, and where the first scan starts."""

    marker: int  # the SOF marker: 0xC0 baseline, 0xC1 extended sequential, 0xC3 lossless, ...
    precision: int  # bits a sample: 8 or 12 (lossy), 2-16 (lossless)
    height: int
    width: int
    components: int
    scan_offset: int


def jpeg_frame(data: bytes, source: str) -> JpegFrame:
    """The frame header of a JPEG stream, read without decoding it (ImageReadError if absent)."""
    i, n = 2, len(data)
    sof: tuple[int, int, int, int, int] | None = None
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageReadError(source, f"corrupt JPEG (no marker at byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # standalone markers
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            raise ImageReadError(source, "corrupt JPEG (bad segment length)")
        if marker in _JPEG_SOF:
            if i + 10 > n:
                break
            precision, height, width, components = struct.unpack(">BHHB", data[i + 4:i + 10])
            sof = (marker, precision, height, width, components)
        elif marker == 0xDA:  # start of scan
            if sof is None:
                raise ImageReadError(source, "corrupt JPEG (scan before frame header)")
            return JpegFrame(*sof, scan_offset=i)
        i += 2 + length
    raise ImageReadError(source, "truncated JPEG (no complete frame header and scan)")
