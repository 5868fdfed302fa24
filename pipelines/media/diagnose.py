"""Tell a truncated file from one that is not a video at all, from the container's own structure:
FFmpeg only says "moov atom not found" or "Invalid data" for a cut-off upload, and for a program or
transport stream or an ASF file cut off it says nothing and gives the frames that are left. MP4/MOV,
Matroska, AVI and ASF state their sizes in their headers; MPEG program and transport streams state
the length of each packet, so the packets at the end show whether the last one is whole."""

from __future__ import annotations

import re
import struct
from typing import BinaryIO

_BMFF_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp"}
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_MATROSKA_SEGMENT = 0x18538067
_ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")
_PS_PACK = b"\x00\x00\x01\xba"
_START_CODE = b"\x00\x00\x01"
# (packet size, bytes before the sync byte): plain TS, Blu-ray/AVCHD M2TS (a 4-byte timecode first), TS with FEC
_TS_PACKETS = ((188, 0), (192, 4), (204, 0))
_TS_SYNC = 0x47
_TAIL = 1 << 18  # bytes at the end of a program or transport stream whose packets are walked


class _Cut(Exception):
    """The file ends inside the structure named by the message."""


def diagnose(f: BinaryIO, size: int) -> tuple[str | None, str | None]:
    """(container kind, reason) where the structure of an MP4/MOV, Matroska, AVI, ASF, MPEG-PS or
    MPEG-TS file ends early: sizes and packet lengths say how much is missing. (kind, None) where the
    file is whole or it cannot tell; (None, None) for other files. Costs a few small reads (a
    quarter of a MiB at the end of a program or transport stream)."""
    f.seek(0)
    try:
        kind = _kind(f, size, f.read(16))
        try:
            return kind, _CHECKS[kind](f, size) if kind else None
        except _Cut as e:
            return kind, f"truncated {kind} file: it ends inside {e}, after {size} bytes (upload or copy cut off)"
    finally:
        f.seek(0)


def _kind(f: BinaryIO, size: int, head: bytes) -> str | None:
    if head[4:8] in _BMFF_BOXES:
        return "MP4/MOV"
    if head[:4] == _EBML_MAGIC:
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
        return "AVI"
    if head == _ASF_HEADER:
        return "ASF (WMV/WMA)"
    if head[:4] == _PS_PACK:
        return "MPEG-PS"
    return "MPEG-TS" if _ts_packet(f, size) else None


def _read(f: BinaryIO, offset: int, n: int, what: str) -> bytes:
    """Exactly `n` bytes at `offset`; `_Cut(what)` where the file ends before."""
    f.seek(offset)
    data = f.read(n)
    if len(data) < n:
        raise _Cut(what)
    return data


def _diagnose_bmff(f: BinaryIO, size: int) -> str | None:
    offset, boxes = 0, []
    while offset + 8 <= size:
        box_size, box_type = struct.unpack(">I4s", _read(f, offset, 8, f"the box at byte {offset}"))
        name = box_type.decode("latin-1")
        header = 8
        if box_size == 1:  # 64-bit size follows the type
            box_size = struct.unpack(">Q", _read(f, offset + 8, 8, f"the header of box '{name}'"))[0]
            header = 16
        elif box_size == 0:  # box runs to the end of the file
            box_size = size - offset
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
    header_size, n = _ebml_vint(f.read(8), "the EBML header")
    offset = 4 + n + header_size  # end of the EBML header element
    f.seek(offset)
    data = f.read(12)
    if len(data) < 5:
        return "truncated Matroska/WebM file: ends after the EBML header"
    element_id = int.from_bytes(data[:4], "big")
    if element_id != _MATROSKA_SEGMENT:
        return None
    segment_size, n = _ebml_vint(data[4:], "the segment's header")
    if segment_size is None:  # "unknown size" (live streams): cannot tell
        return None
    if offset + 4 + n + segment_size > size:
        missing = offset + 4 + n + segment_size - size
        return f"truncated Matroska/WebM file: the segment is {missing} bytes short"
    return None


def _diagnose_riff(f: BinaryIO, size: int) -> str | None:
    """A RIFF file states its own length; AVI files over 1 GiB chain further RIFF chunks after it,
    and a capture that was never closed leaves the size 0 (cannot tell)."""
    riff_size = struct.unpack("<I", _read(f, 4, 4, "the RIFF header"))[0]
    if riff_size and 8 + riff_size > size:
        return f"truncated AVI file: the RIFF chunk is {8 + riff_size - size} bytes short"
    return None


def _diagnose_asf(f: BinaryIO, size: int) -> str | None:
    """ASF's header object states its own size, and its File Properties object the file's, unless
    the file was a live broadcast (its flag says the size is not known)."""
    header_size = struct.unpack("<Q", _read(f, 16, 8, "the ASF header object"))[0]
    if header_size > size:
        return f"truncated ASF (WMV/WMA) file: the header needs {header_size} bytes, only {size} remain"
    offset = 30  # the header object's GUID, size, object count and two reserved bytes
    while offset + 24 <= header_size:
        guid, object_size = struct.unpack("<16sQ", _read(f, offset, 24, "the ASF header object"))
        if guid == _ASF_FILE_PROPERTIES:
            stated, = struct.unpack("<Q", _read(f, offset + 40, 8, "the ASF file properties"))
            broadcast = _read(f, offset + 88, 1, "the ASF file properties")[0] & 1
            if stated > size and not broadcast:
                return f"truncated ASF (WMV/WMA) file: its header says {stated} bytes, {stated - size} are missing"
            return None
        if object_size < 24:
            return None  # damaged: FFmpeg says how
        offset += object_size
    return None


def _diagnose_ps(f: BinaryIO, size: int) -> str | None:
    """A program stream's packets each state their length: walked from a pack header near the end,
    the last one shows whether the file ends where a packet does. A walk that meets anything but a
    start code began at a false pack header (those bytes inside a payload): the next one is tried;
    a file that ends in padding or junk cannot be told."""
    start = max(0, size - _TAIL)
    tail = _read(f, start, size - start, "its last packets")
    if not start and not re.search(rb"\x00\x00\x01[\xe0-\xef]", tail):  # the start code of a video PES packet
        return "truncated MPEG-PS file: it holds its header and no video packet (upload or copy cut off)"
    at = tail.find(_PS_PACK)
    while at >= 0:
        last = _ps_walk(tail, at)
        if last is not None:
            offset, length = last
            if offset + length <= len(tail):
                return None
            return (f"truncated MPEG-PS file: the packet at byte {start + offset} needs {length} bytes, "
                    f"only {len(tail) - offset} remain")
        at = tail.find(_PS_PACK, at + 1)
    return None


def _ps_walk(tail: bytes, at: int) -> tuple[int, int] | None:
    """(offset, length) of the last packet, walked packet by packet (ISO 13818-1 2.5.3) from the
    pack header at `at`: it runs past the end of `tail` where the file was cut. None where a packet
    does not begin with a start code (`at` was no pack header)."""
    while True:
        header = tail[at:at + 14]
        if header[:3] != _START_CODE[:len(header)]:
            return None
        code = header[3] if len(header) > 3 else 0xB9  # cut inside the start code: at least 4 bytes
        if code == 0xBA:  # pack header: MPEG-1 (12 bytes) or MPEG-2 (14 bytes and stuffing)
            mpeg1 = len(header) > 4 and header[4] >> 4 == 2
            length = 12 if mpeg1 else 14 + (header[13] & 7 if len(header) == 14 else 0)
        elif code == 0xB9:  # program end code
            length = 4
        elif code >= 0xBB:  # system header, PES packet, padding: a 16-bit length follows the code
            length = 6 + int.from_bytes(header[4:6], "big") if len(header) >= 6 else 6
        else:
            return None
        if at + length >= len(tail):
            return at, length
        at += length


def _ts_packet(f: BinaryIO, size: int) -> tuple[int, int] | None:
    """(packet size, bytes before the sync byte) of a transport stream: the sync byte at the start
    of each of its first packets (two at least, so that a file that merely begins with "G" is not one)."""
    f.seek(0)
    head = f.read(3 * 204 + 4)
    for packet, prefix in _TS_PACKETS:
        syncs = range(prefix, min(len(head), 3 * packet), packet)
        if len(syncs) >= 2 and all(head[i] == _TS_SYNC for i in syncs):
            return packet, prefix
    return None


def _diagnose_ts(f: BinaryIO, size: int) -> str | None:
    """A transport stream is whole packets; the last PES packet of each stream that states its
    length (audio, subtitles; video usually leaves it open) must be whole too."""
    packet, prefix = _ts_packet(f, size)
    if size % packet:
        return (f"truncated MPEG-TS file: it ends {size % packet} bytes into a {packet}-byte packet "
                f"(upload or copy cut off)")
    start = max(0, size - _TAIL // packet * packet)
    tail = _read(f, start, size - start, "its last packets")
    missing: dict[int, int] = {}  # PID -> bytes its last PES packet still lacks
    pes = False  # a PES packet starts in the tail
    for at in range(prefix, len(tail), packet):
        ts = tail[at:at + 188]
        if ts[0] != _TS_SYNC:
            return None  # lost sync: cannot tell
        pid, adaptation = (ts[1] & 0x1F) << 8 | ts[2], ts[3] >> 4 & 3
        if not adaptation & 1:
            continue  # no payload
        payload = ts[5 + ts[4]:] if adaptation & 2 else ts[4:]
        if ts[1] & 0x40:  # a PES packet (or a table section) starts here
            pes = pes or payload.startswith(_START_CODE)
            length = int.from_bytes(payload[4:6], "big") if payload.startswith(_START_CODE) else 0
            missing[pid] = 6 + length if length else 0  # 0: open length, or a table
        if missing.get(pid):
            missing[pid] = max(missing[pid] - len(payload), 0)
    if not start and not pes:
        return ("truncated MPEG-TS file: it holds its tables (PAT, PMT) and no audio or video packet "
                "(upload or copy cut off)")
    short = {pid: n for pid, n in missing.items() if n}
    if short:
        pid, n = min(short.items())
        return (f"truncated MPEG-TS file: the last packet of stream PID {pid:#x} lacks {n} bytes "
                f"(upload or copy cut off)")
    return None


def _ebml_vint(data: bytes, what: str) -> tuple[int | None, int]:
    """(value, length) of an EBML variable-size integer; value None for the reserved all-ones size;
    `_Cut(what)` where `data` ends inside it."""
    if not data:
        raise _Cut(what)
    first = data[0]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if len(data) < length:
        raise _Cut(what)
    value = first & (0xFF >> length)
    for byte in data[1:length]:
        value = (value << 8) | byte
    if value == (1 << (7 * length)) - 1:
        return None, length
    return value, length


_CHECKS = {"MP4/MOV": _diagnose_bmff, "Matroska/WebM": _diagnose_matroska, "AVI": _diagnose_riff,
           "ASF (WMV/WMA)": _diagnose_asf, "MPEG-PS": _diagnose_ps, "MPEG-TS": _diagnose_ts}
