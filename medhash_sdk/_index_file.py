"""The index file format: reading (whole or memory-mapped), checking and atomic writing.

Format version 1, little-endian. A 192-byte header, then up to five sections, each starting on
a 64-byte boundary (zero padding between them), the file ending where the last one ends:

    offset size  field
    0      8     magic b"MHINDEX\\0"
    8      4     format version (uint32) = 1
    12     4     header size (uint32) = 192
    16     4     nbits (uint32, a multiple of 8)
    20     4     id type (uint32): 1 = int64, 2 = str
    24     8     count: number of codes (uint64)
    32     8     next auto id (int64)
    40     8     file size in bytes (uint64)
    48     8     flags (uint64) = 0
    56     80    five (offset, size) uint64 pairs, in this order and in file order:
                   fingerprint (UTF-8), codes (count x nbits/8 bytes),
                   ids (int64 x count, or string-id offsets: int64 x (count + 1)),
                   string-id blob (UTF-8), string-id hashes (uint64 x count, BLAKE2b-64)
                 an absent section is (0, 0)
    136    16    checksum: BLAKE2b-128 of the whole file with bytes 136..155 zeroed
    152    4     header CRC32 of the 192 header bytes with bytes 152..155 zeroed
    156    36    zero

load() reads every byte and checks the checksum; view() checks the header CRC and that every
size and offset agrees with the file's size (so no read can leave the file), and maps the rest.
Readers dispatch on the format version (_PARSERS); a newer version asks for a newer SDK.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .atomic import atomic_open
from .exceptions import IndexFileError

MAGIC = b"MHINDEX\x00"
FORMAT_VERSION = 1
HEADER_SIZE = 192
ALIGN = 64
ID_TYPES = {1: "int64", 2: "str"}
ID_CODES = {v: k for k, v in ID_TYPES.items()}
MAX_FINGERPRINT_BYTES = 4096
MAX_NBITS = 1 << 16

_PREFIX = struct.Struct("<8sII")  # magic, version, header size: the same in every version
_HEADER_V1 = struct.Struct("<8sIIIIQqQQ10Q16sI")  # 156 bytes, zero-padded to 192
_CHECKSUM_AT, _CRC_AT, _CRC_END = 136, 152, 156
SECTIONS = ("fingerprint", "codes", "ids", "blob", "hashes")
_DTYPES: dict[str, np.dtype[Any]] = {"fingerprint": np.dtype(np.uint8), "codes": np.dtype(np.uint8), "ids": np.dtype("<i8"),
           "blob": np.dtype(np.uint8), "hashes": np.dtype("<u8")}


@dataclass
class Header:
    version: int
    nbits: int
    id_type: str
    count: int
    next_id: int
    file_size: int
    sections: dict[str, tuple[int, int]]  # name -> (offset, size)
    checksum: bytes

    @property
    def nbytes(self) -> int:
        return self.nbits // 8


def _align(x: int) -> int:
    return (x + ALIGN - 1) // ALIGN * ALIGN


def _expected_sizes(nbits: int, id_type: str, count: int, fp_size: int, blob_size: int) -> dict[str, int]:
    is_str = id_type == "str"
    return {
        "fingerprint": fp_size,
        "codes": count * (nbits // 8),
        "ids": 8 * (count + 1) if is_str else 8 * count,
        "blob": blob_size if is_str else 0,
        "hashes": 8 * count if is_str else 0,
    }


def _layout(sizes: dict[str, int]) -> tuple[dict[str, tuple[int, int]], int]:
    pos = HEADER_SIZE
    out = {}
    for name in SECTIONS:
        size = sizes[name]
        if size:
            pos = _align(pos)
            out[name] = (pos, size)
            pos += size
        else:
            out[name] = (0, 0)
    return out, pos


def _pack_header(h: Header) -> bytes:
    flat = [v for name in SECTIONS for v in h.sections[name]]
    raw = _HEADER_V1.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, h.nbits, ID_CODES[h.id_type], h.count,
                          h.next_id, h.file_size, 0, *flat, h.checksum, 0)
    raw = raw + bytes(HEADER_SIZE - len(raw))
    crc = zlib.crc32(raw)
    return raw[:_CRC_AT] + struct.pack("<I", crc) + raw[_CRC_END:]


def _zeroed(header: bytes) -> bytes:
    """Header bytes as the checksum sees them (checksum and CRC fields zeroed)."""
    return header[:_CHECKSUM_AT] + bytes(_CRC_END - _CHECKSUM_AT) + header[_CRC_END:]


# ----------------------------------------------------------------------------- reading


def _parse_v1(head: bytes, file_size: int) -> Header:
    if len(head) < HEADER_SIZE:
        raise IndexFileError(f"truncated: {file_size} bytes, shorter than the {HEADER_SIZE}-byte header")
    head = head[:HEADER_SIZE]
    (_, _, hsize, nbits, id_code, count, next_id, fsize, flags, *rest) = _HEADER_V1.unpack(head[: _HEADER_V1.size])
    flat, checksum, crc = rest[:10], rest[10], rest[11]
    if zlib.crc32(head[:_CRC_AT] + bytes(4) + head[_CRC_END:]) != crc:
        raise IndexFileError("the header is damaged (header CRC mismatch)")
    if hsize != HEADER_SIZE:
        raise IndexFileError(f"bad header size {hsize} for format version 1 (expected {HEADER_SIZE})")
    if nbits <= 0 or nbits % 8 or nbits > MAX_NBITS:
        raise IndexFileError(f"bad nbits {nbits} in the header")
    if id_code not in ID_TYPES:
        raise IndexFileError(f"unknown id type {id_code} in the header")
    if flags != 0:
        raise IndexFileError(f"unknown flags {flags:#x} in the header")
    if next_id < 0:
        raise IndexFileError(f"bad next id {next_id} in the header")
    if fsize != file_size:
        raise IndexFileError(f"the file is {file_size} bytes but its header says {fsize}: it was truncated or extended")
    if count > file_size:
        raise IndexFileError(f"count {count} cannot fit in a {file_size}-byte file")
    id_type = ID_TYPES[id_code]
    sections = {name: (flat[2 * i], flat[2 * i + 1]) for i, name in enumerate(SECTIONS)}
    expected = _expected_sizes(nbits, id_type, count, sections["fingerprint"][1], sections["blob"][1])
    if sections["fingerprint"][1] > MAX_FINGERPRINT_BYTES:
        raise IndexFileError("the fingerprint section is too large")
    end = HEADER_SIZE
    for name in SECTIONS:
        off, size = sections[name]
        if size != expected[name]:
            raise IndexFileError(f"section {name!r} is {size} bytes, expected {expected[name]} for {count} codes")
        if size == 0:
            if off != 0:
                raise IndexFileError(f"empty section {name!r} has a nonzero offset")
            continue
        if off % ALIGN or off < end or off - end >= ALIGN:
            raise IndexFileError(f"section {name!r} has a bad offset {off}")
        end = off + size
    if end != file_size:
        raise IndexFileError(f"the sections end at byte {end} but the file has {file_size}")
    return Header(1, nbits, id_type, count, next_id, file_size, sections, checksum)


_PARSERS = {1: _parse_v1}  # format version -> header parser; add older versions here when v2 exists


def parse_header(head: bytes, file_size: int) -> Header:
    """Check and decode the header (first bytes of a file of file_size bytes)."""
    if len(head) < _PREFIX.size:
        raise IndexFileError(f"truncated: {file_size} bytes is too short to be a medhash index")
    magic, version, _ = _PREFIX.unpack(head[: _PREFIX.size])
    if magic != MAGIC:
        raise IndexFileError(f"not a medhash index file (wrong magic {magic!r}, expected {MAGIC!r})")
    if version > FORMAT_VERSION:
        raise IndexFileError(
            f"index format version {version} is newer than this medhash-sdk reads (up to "
            f"{FORMAT_VERSION}): upgrade medhash-sdk (pip install -U medhash-sdk)")
    if version not in _PARSERS:
        raise IndexFileError(
            f"index format version {version} is not supported (this medhash-sdk reads "
            f"{sorted(_PARSERS)}): rebuild the index from its codes, or load it with the "
            f"medhash-sdk release that wrote it and save() it again")
    return _PARSERS[version](head, file_size)


def _fingerprint(raw: bytes) -> str | None:
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise IndexFileError("the fingerprint field is not valid UTF-8") from None


@dataclass
class Contents:
    """What an index file holds, as numpy arrays (in memory or views of a mapping)."""

    header: Header
    fingerprint: str | None
    codes: np.ndarray              # uint8 (count, nbytes)
    ids: np.ndarray                # int64 (count,) or string offsets int64 (count + 1,)
    blob: np.ndarray | None        # uint8, string ids only
    hashes: np.ndarray | None      # uint64, string ids only


def _check_contents(c: Contents) -> None:
    """Cheap O(n) checks that keep a crafted file (with a valid checksum) from misbehaving."""
    if c.blob is None:
        if c.header.count and int(c.ids.min()) < 0:
            raise IndexFileError("the index holds negative ids: the file is damaged")
        return
    off = c.ids
    if off[0] != 0 or off[-1] != len(c.blob) or (len(off) > 1 and np.any(np.diff(off) <= 0)):
        raise IndexFileError("the string id offsets are inconsistent: the file is damaged")
    if not utf8_ids_valid(c.blob, off):
        raise IndexFileError("the string ids are not valid UTF-8: the file is damaged")


def utf8_ids_valid(blob: np.ndarray, offsets: np.ndarray) -> bool:
    """Every id blob[offsets[i]:offsets[i+1]] is valid UTF-8, without a Python loop: the whole
    blob decodes, and no id starts on a continuation byte (so none splits a character)."""
    starts = offsets[:-1]
    # decode in ~16 MB pieces cut at id boundaries, so no giant str is ever built
    at = np.minimum(np.searchsorted(starts, np.arange(1 << 24, len(blob), 1 << 24)), max(len(starts) - 1, 0))
    cuts = np.unique(np.concatenate([[0], starts[at] if len(starts) else [], [len(blob)]])).astype(np.int64)
    try:
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            codecs.utf_8_decode(blob[a:b].data, "strict", True)
    except UnicodeDecodeError:
        return False
    return not np.any((blob[starts] & 0xC0) == 0x80) if len(starts) else True


def _read_exact(f: io.BufferedReader, buf: memoryview) -> None:
    got = f.readinto(buf)
    while got is not None and got < len(buf):
        more = f.readinto(buf[got:])
        if not more:
            raise IndexFileError("the file ended early while reading (was it changed during load?)")
        got += more


def read(path: str | os.PathLike) -> Contents:
    """Read and fully check a file: header, sizes, checksum of every byte, id consistency."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(min(size, HEADER_SIZE))
        h = parse_header(head, size)
        digest = hashlib.blake2b(_zeroed(head), digest_size=16)
        arrays: dict[str, np.ndarray] = {}
        pos = HEADER_SIZE
        for name in SECTIONS:
            off, sz = h.sections[name]
            if not sz:
                continue
            gap = f.read(off - pos)
            if len(gap) != off - pos:
                raise IndexFileError("the file ended early while reading")
            digest.update(gap)
            dtype = _DTYPES[name]
            arr = np.empty(sz // np.dtype(dtype).itemsize, dtype=dtype)
            mv = arr.data.cast("B")
            _read_exact(f, mv)
            digest.update(mv)
            arrays[name] = arr
            pos = off + sz
        if f.read(1):
            raise IndexFileError("the file grew while reading")
    if digest.digest() != h.checksum:
        raise IndexFileError("checksum mismatch: the index file is damaged (a byte differs from what was saved)")
    c = _contents(h, arrays)
    _check_contents(c)
    return c


def _contents(h: Header, arrays: dict[str, np.ndarray]) -> Contents:
    empty_u8 = np.empty(0, np.uint8)
    fp = arrays.get("fingerprint", empty_u8)
    codes = arrays.get("codes", empty_u8).reshape(h.count, h.nbytes)
    is_str = h.id_type == "str"
    ids = arrays.get("ids", np.empty(0, np.int64))
    return Contents(h, _fingerprint(fp.tobytes()), codes, ids,
                    arrays.get("blob", empty_u8) if is_str else None,
                    arrays.get("hashes", np.empty(0, np.uint64)) if is_str else None)


def map_file(path: str | os.PathLike) -> tuple[Contents, mmap.mmap]:
    """Check the header and sizes only, and map the sections (nothing else is read)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(min(size, HEADER_SIZE))
        h = parse_header(head, size)  # raises before mmap on short/empty files
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    dtypes = _DTYPES
    arrays = {}
    for name in SECTIONS:
        off, sz = h.sections[name]
        if sz:
            arrays[name] = np.frombuffer(mm, dtype=dtypes[name], count=sz // np.dtype(dtypes[name]).itemsize,
                                         offset=off)
    return _contents(h, arrays), mm


def verify_mapping(mm: mmap.mmap, h: Header) -> None:
    """Checksum of every mapped byte (what load() checks), or IndexFileError."""
    if len(mm) != h.file_size:
        raise IndexFileError("the mapped file changed size")
    digest = hashlib.blake2b(_zeroed(bytes(mm[:HEADER_SIZE])), digest_size=16)
    view = memoryview(mm)
    try:
        step = 1 << 24
        for start in range(HEADER_SIZE, h.file_size, step):
            digest.update(view[start : start + step])
    finally:
        view.release()
    if digest.digest() != h.checksum:
        raise IndexFileError("checksum mismatch: the index file is damaged (a byte differs from what was saved)")


def check_contents(c: Contents) -> None:
    _check_contents(c)


# ----------------------------------------------------------------------------- writing


def write(path: str | os.PathLike, *, nbits: int, id_type: str, next_id: int, fingerprint: str | None,
          codes: np.ndarray, ids: np.ndarray, blob: np.ndarray | None, hashes: np.ndarray | None) -> None:
    """Write atomically: temp file in the same directory, fsync, os.replace, fsync the directory.

    A crash at any moment leaves either the old file or the new one at path, never a mix;
    at worst a stale hidden temp file (".<name>.*.tmp") stays behind.
    """
    fp = (fingerprint or "").encode("utf-8")
    if len(fp) > MAX_FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be at most {MAX_FINGERPRINT_BYTES} bytes of UTF-8")
    count = len(codes)
    payload: dict[str, Any] = {"fingerprint": fp, "codes": codes, "ids": ids,
                               "blob": blob if blob is not None else b"",
                               "hashes": hashes if hashes is not None else b""}
    sizes = {name: memoryview(payload[name]).nbytes for name in SECTIONS}
    sections, file_size = _layout(sizes)
    h = Header(FORMAT_VERSION, nbits, id_type, count, next_id, file_size, sections, bytes(16))
    draft = _pack_header(h)
    digest = hashlib.blake2b(_zeroed(draft), digest_size=16)

    with atomic_open(path) as f:
        f.write(draft)
        pos = HEADER_SIZE
        for name in SECTIONS:
            off, sz = sections[name]
            if not sz:
                continue
            pad = bytes(off - pos)
            item = payload[name]
            if isinstance(item, np.ndarray):
                item = np.ascontiguousarray(item, dtype=item.dtype.newbyteorder("<"))
            data = memoryview(item).cast("B")
            f.write(pad)
            f.write(data)
            digest.update(pad)
            digest.update(data)
            pos = off + sz
        h.checksum = digest.digest()
        f.seek(0)
        f.write(_pack_header(h))


