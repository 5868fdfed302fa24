"""Tell a truncated MP4/MOV, Matroska or AVI file from one that is not a video at all, from the file's own
top-level structure: FFmpeg only says "moov atom not found" or "Invalid data" for a cut-off upload."""

from __future__ import annotations

import struct
from typing import BinaryIO

_BMFF_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp"}
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_MATROSKA_SEGMENT = 0x18538067


def diagnose(f: BinaryIO, size: int) -> tuple[str | None, str | None]:
    """(container kind, reason) where the top-level structure of an MP4/MOV or Matroska file ends
    early: box and element sizes say exactly how much is missing. Costs a few small reads."""
    f.seek(0)
    head = f.read(16)
    try:
        if head[4:8] in _BMFF_BOXES:
            return "MP4/MOV", _diagnose_bmff(f, size)
        if head[:4] == _EBML_MAGIC:
            return "Matroska/WebM", _diagnose_matroska(f, size)
        if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
            return "AVI", _diagnose_riff(head, size)
        return None, None
    finally:
        f.seek(0)


def _diagnose_bmff(f: BinaryIO, size: int) -> str | None:
    offset, boxes = 0, []
    while offset + 8 <= size:
        f.seek(offset)
        box_size, box_type = struct.unpack(">I4s", f.read(8))
        header = 8
        if box_size == 1:  # 64-bit size follows the type
            box_size = struct.unpack(">Q", f.read(8))[0]
            header = 16
        elif box_size == 0:  # box runs to the end of the file
            box_size = size - offset
        name = box_type.decode("latin-1")
        if box_size < header:
            return f"damaged MP4/MOV: box '{name}' at byte {offset} has an impossible size {box_size}"
        if offset + box_size > size:
            return (f"truncated MP4/MOV file: box '{name}' at byte {offset} needs {box_size} bytes, "
                    f"only {size - offset} remain")
        boxes.append(box_type)
        offset += box_size
    if b"moov" not in boxes:
        return "truncated MP4/MOV file: no 'moov' index box (upload or recording cut off)"
    return None


def _diagnose_matroska(f: BinaryIO, size: int) -> str | None:
    f.seek(4)
    header_size, n = _ebml_vint(f.read(8))
    offset = 4 + n + header_size  # end of the EBML header element
    f.seek(offset)
    data = f.read(12)
    if len(data) < 5:
        return "truncated Matroska/WebM file: ends after the EBML header"
    element_id = int.from_bytes(data[:4], "big")
    if element_id != _MATROSKA_SEGMENT:
        return None
    segment_size, n = _ebml_vint(data[4:])
    if segment_size is None:  # "unknown size" (live streams): cannot tell
        return None
    if offset + 4 + n + segment_size > size:
        missing = offset + 4 + n + segment_size - size
        return f"truncated Matroska/WebM file: the segment is {missing} bytes short"
    return None


def _diagnose_riff(head: bytes, size: int) -> str | None:
    """A RIFF file states its own length; AVI files over 1 GiB chain further RIFF chunks after it,
    and a capture that was never closed leaves the size 0 (cannot tell)."""
    riff_size = struct.unpack("<I", head[4:8])[0]
    if riff_size and 8 + riff_size > size:
        return f"truncated AVI file: the RIFF chunk is {8 + riff_size - size} bytes short"
    return None


def _ebml_vint(data: bytes) -> tuple[int | None, int]:
    """(value, length) of an EBML variable-size integer; value None for the reserved all-ones size."""
    first = data[0]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    value = first & (0xFF >> length)
    for byte in data[1:length]:
        value = (value << 8) | byte
    if value == (1 << (7 * length)) - 1:
        return None, length
    return value, length
