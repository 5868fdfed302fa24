"""The field order of a source video: progressive, or the field shown first of an interlaced one, as
the codec states it or, where it states none, as FFmpeg's `idet` finds it on the first frames; and
whether an interlaced source is telecined film (idet's repeated fields). Deinterlacing is interlace.py's."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import av
import av.filter

log = logging.getLogger(__name__)

# FFmpeg's AVFieldOrder by the field shown first: TT and BT show the top field first (BT codes the
# bottom one first), BB and TB the bottom one; 0 is "unknown".
_FIELD_ORDERS = {1: "progressive", 2: "tff", 5: "tff", 3: "bff", 4: "bff"}
IDET_FRAMES = 24  # frames idet looks at, for the field order where the codec states none, and for telecine
TELECINE_REPEATS = 0.2  # share of frames with a repeated field above which an interlaced source is telecine


def interlacing(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                first_frame: av.VideoFrame, coded_order: int, codec: str) -> dict[str, Any]:
    """{"field_order": ..., "telecine": ...} (VideoInfo's fields) for the video stream of `codec`
    (FFmpeg's name), whose decoder stated `coded_order` (FFmpeg's AVFieldOrder) at its first frame."""
    stated = _FIELD_ORDERS.get(coded_order)
    if stated == "progressive":
        return {"field_order": stated, "telecine": False}
    votes = _idet_votes(container, stream)
    order = stated or _field_order(votes, codec, first_frame)
    if order == "progressive":
        return {"field_order": order, "telecine": False}
    # 3:2 pulldown repeats a field in 2 frames of every 5 (idet counts 0.4 of them); interlaced video
    # repeats none. Half that rate is the line.
    repeated = votes["repeated_top"] + votes["repeated_bottom"]
    telecine = repeated > 0 and repeated >= TELECINE_REPEATS * (repeated + votes["repeated_neither"])
    return {"field_order": order, "telecine": telecine}


def _field_order(votes: dict[str, float], codec: str, first_frame: av.VideoFrame) -> str:
    """"progressive", "tff" or "bff" where the codec states no order (DV in AVI, MPEG-4 Part 2, MJPEG):
    FFmpeg's idet on the first frames (the codecs that state one: MPEG-2, H.264, HEVC with SEI,
    ProRes, are taken at their word, as FFmpeg does). A frame flagged interlaced whose fields idet
    finds alike (no motion yet) keeps the flag, with the order DV uses (bottom first) or else top first.
    """
    interlaced = votes["tff"] + votes["bff"]
    if not first_frame.interlaced_frame and interlaced <= votes["progressive"]:
        return "progressive"
    if not interlaced:
        return "bff" if codec == "dvvideo" else "tff"
    return "tff" if votes["tff"] >= votes["bff"] else "bff"


def _idet_votes(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> dict[str, float]:
    """FFmpeg's idet over the first `IDET_FRAMES` frames: frames it calls tff, bff and progressive, and
    frames with a repeated top, bottom or neither field."""
    votes = {"tff": 0.0, "bff": 0.0, "progressive": 0.0, "repeated_top": 0.0, "repeated_bottom": 0.0,
             "repeated_neither": 0.0}
    try:
        container.seek(0, stream=stream, backward=True, any_frame=False)
        graph = av.filter.Graph()
        graph.link_nodes(graph.add_buffer(template=stream), graph.add("idet"), graph.add("buffersink")).configure()
        last = None
        for i, frame in enumerate(container.decode(stream)):
            if i == IDET_FRAMES:
                break
            graph.push(frame)
            with contextlib.suppress(av.error.BlockingIOError):
                last = graph.pull()
    except av.error.FFmpegError as e:  # an undecodable frame early on: no verdict from idet
        log.debug("idet could not run: %s", e)
        return votes
    if last is not None:
        for kind in votes:
            key = f"lavfi.idet.repeated.{kind[9:]}" if kind.startswith("repeated_") else f"lavfi.idet.multiple.{kind}"
            votes[kind] = float(last.metadata.get(key, 0))
    return votes
