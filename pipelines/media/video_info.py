"""What the pipeline knows of a source video once probed (`VideoInfo`, `StreamInfo`), the `BadVideo`
reason an input that cannot be restored fails with, and the checks made on a probed source before any
GPU time is spent."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_ALPHA_FORMATS = re.compile(r"^(yuva|gbrap|ya\d|rgba|bgra|argb|abgr)")  # FFmpeg pixel formats with alpha
_HDR_TRANSFERS = {16: "PQ (SMPTE ST 2084)", 18: "HLG (ARIB STD-B67)"}  # FFmpeg's AVColorTransferCharacteristic


class BadVideo(ValueError):
    """The input cannot be restored; `reason` is the one-line text that goes into the ledger."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StreamInfo:
    """A stream of the source besides the one restored: what the assembler keeps in the output (copied
    unchanged, or audio transcoded losslessly to FLAC where the output container cannot carry it), or
    names in the ledger row's notes when no output container can carry it (media.output_container.kept_streams)."""

    index: int  # stream index in the source container
    # "audio" | "subtitle" | "attachment" | "data" (KLV, SCTE-35, a timecode track) | "video" (a second
    # program or video track) | "cover" (cover art, an attached picture)
    kind: str
    codec: str  # FFmpeg codec name, e.g. "aac", "subrip", "mov_text"; an attachment's MIME type
    language: str | None
    title: str | None = None
    disposition: int = 0  # FFmpeg's AV_DISPOSITION_* flags (default, comment, forced, ...)


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a source, all from one demux pass."""

    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"
    codec: str  # video codec, e.g. "h264"
    width: int  # coded size, before the display rotation is applied
    height: int
    rotation: int  # degrees counter-clockwise that turn a decoded frame upright: 0, 90, 180, 270
    fps: Fraction  # average frame rate
    time_base: Fraction  # of the video stream; frame pts are in these units
    frame_count: int  # counted from demuxed packets, not read from the header
    start_pts: int  # pts of the first frame (presentation order)
    end_pts: int  # pts at which the last frame stops being shown
    duration: Fraction  # seconds, (end_pts - start_pts) * time_base
    variable_frame_rate: bool
    pix_fmt: str | None
    # FFmpeg's colour enums as the first frame carries them (2 = unspecified for all but range,
    # 0 = unspecified range); the assembler encodes back with the same matrix and tags.
    colorspace: int
    color_range: int
    color_primaries: int
    color_trc: int
    video_index: int  # stream index of the video stream in the source container
    audio: tuple[StreamInfo, ...]
    subtitles: tuple[StreamInfo, ...]
    attachments: tuple[StreamInfo, ...] = ()  # fonts of styled subtitles, cover images (Matroska)
    # Every other stream: data tracks, video streams past the first, cover art (attached pictures)
    others: tuple[StreamInfo, ...] = ()
    # Sample (pixel) aspect ratio of the coded picture, 1 when the source states none: 64/45 for PAL
    # 16:9 (720x576 shown as 1024x576), 8/9 for NTSC 4:3 in 720x480.
    sar: Fraction = Fraction(1)
    timecode: str | None = None  # of the first frame, "HH:MM:SS:FF" (";" before FF: drop-frame), if stated
    captions: bool = False  # the pictures carry closed captions (EIA-608/708 as A/53 side data: media.captions)
    # "progressive", or the field shown first of an interlaced source: "tff" | "bff" (see field_order.py)
    field_order: str = "progressive"
    telecine: bool = False  # interlaced by 3:2 pulldown of progressive film (idet's repeated fields)
    interlacing: str = ""  # how field_order was decided, with the evidence (field_order.py), for the ledger

    @property
    def upright_sar(self) -> Fraction:
        """The sample aspect ratio of the frames `read_frames` returns: a quarter turn swaps a pixel's
        width and height."""
        return 1 / self.sar if self.rotation in (90, 270) else self.sar

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after rotation: the size of the frames `read_frames` returns."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


def check_restorable(info: VideoInfo) -> None:
    """Raise `BadVideo` for a source the pipeline would damage without saying so; call before any GPU
    time is spent. What it refuses, and why:

    - alpha on an interlaced source: the alpha plane is carried past the model progressive only;
    - HDR (PQ or HLG transfer): the model was trained on SDR frames and sees 8-bit RGB; restoring
      would clip highlights and still tag the result HDR (or silently tag it SDR);
    - interlaced with rotation metadata: fields are rows of the coded picture, which the decoded,
      turned-upright frames no longer have.
    """
    if has_alpha(info) and info.field_order != "progressive":
        raise BadVideo(f"interlaced video with an alpha channel ({info.pix_fmt}): not supported")
    if info.color_trc in _HDR_TRANSFERS:
        raise BadVideo(f"HDR video ({_HDR_TRANSFERS[info.color_trc]} transfer): the model restores SDR "
                       f"pictures only; an HDR source would lose its highlights")
    if info.field_order != "progressive" and info.rotation:
        raise BadVideo(f"interlaced ({info.field_order}) and rotated {info.rotation} degrees by metadata: "
                       f"deinterlacing a rotated picture is not supported")


def has_alpha(info: VideoInfo) -> bool:
    """Whether the source's pixel format has an alpha plane (ProRes 4444, FFV1, PNG, QuickTime Animation)."""
    return bool(info.pix_fmt and _ALPHA_FORMATS.match(info.pix_fmt))
