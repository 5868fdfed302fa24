"""Closed captions that ride inside the picture's bitstream (EIA-608, as ATSC A/53 side data of
broadcast MPEG-2 and H.264 pictures), read out as timed text. The restored picture is a new
bitstream, so captions carried in the old one would be lost; the assembler writes them into a
subtitle track of the output instead (mux.py), which every player lists.

FFmpeg does the work: its video decoders export each picture's caption bytes, and its `cc_dec`
decoder turns them into text. In `real_time` mode it reports every change of the screen (a caption
shown, replaced or erased) at the picture that makes it; without it, a pop-on caption is only
reported once erased, with no start. What `cc_dec` reads is the 608 service CC1 (CEA-708 streams
carry it too, for compatibility); other 708 services are not decoded by FFmpeg, so not carried.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
from av.sidedata.sidedata import Type

from pipelines.media.input_container import open_container, video_stream
from pipelines.media.video_info import BadVideo
from pipelines.storage import Source, open_input

_OVERRIDES = re.compile(r"\{[^}]*\}")  # ASS override blocks: {\an7}{\pos(38,243)}


@dataclass(frozen=True)
class Caption:
    """Text on screen from `start` to `end` (seconds on the source's clock)."""

    start: Fraction
    end: Fraction
    text: str


def read_captions(source: Source, end: Fraction) -> list[Caption]:
    """Every caption of the source's video stream, in order; `end` (seconds) closes one still on
    screen when the video ends. Decodes the whole stream once (the captions are in the pictures)."""
    captions, shown, since = [], "", Fraction(0)
    for time, text in _screen_changes(source):
        if text == shown:
            continue
        if shown:
            captions.append(Caption(since, time, shown))
        shown, since = text, time
    if shown and end > since:
        captions.append(Caption(since, end, shown))
    return captions


def _screen_changes(source: Source) -> Iterator[tuple[Fraction, str]]:
    """(time of the picture in seconds, text on screen from then on: "" when erased) for each change
    `cc_dec` reports."""
    with open_input(source) as f:
        container = open_container(f)
        try:
            stream = video_stream(container)
            stream.thread_type = "AUTO"
            cc = av.CodecContext.create("cc_dec", "r")
            cc.options = {"real_time": "1"}
            for frame in container.decode(stream):
                data = frame.side_data.get(Type.A53_CC)
                if data is None or frame.pts is None:
                    continue
                packet = av.Packet(bytes(data))
                packet.pts = frame.pts
                screen = cc.decode2(packet)
                if screen is not None:
                    yield frame.pts * Fraction(stream.time_base), "\n".join(filter(None, (_text(rect.ass) for rect in screen)))
        except av.error.FFmpegError as e:
            raise BadVideo(f"closed captions cannot be read ({e})") from e
        finally:
            container.close()


def _text(ass: bytes) -> str:
    """The text of one ASS dialogue event as `cc_dec` writes it ("ReadOrder,Layer,Style,Name,MarginL,
    MarginR,MarginV,Effect,Text"), without its override tags, line breaks as newlines."""
    text = ass.decode("utf-8", errors="replace").split(",", 8)[-1]
    return _OVERRIDES.sub("", text).replace("\\N", "\n").strip()
