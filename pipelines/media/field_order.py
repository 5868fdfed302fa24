"""The field order of a source video: progressive, or the field shown first of an interlaced one, and
whether an interlaced source is telecined film (idet's repeated fields). Deinterlacing is interlace.py's.

Two signals must agree before a source counts as interlaced. The first is the stream's own word (the
codec's field order, or frames flagged interlaced), and where it says nothing FFmpeg's `idet` on the
first frames; idet alone is fooled by fine vertical detail (a small test pattern through MPEG-4 Part
2, WMV or MS-MPEG4 reads as top field first). The second is a measure on the pictures that a
progressive source cannot pass (`FieldTiming`): in an interlaced frame the second field is shown
half a frame later than the first, so it lies nearer in time to the next frame's first field in one
field order than in the other; the two fields of a progressive frame are of one moment, and both
orders fit it alike.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import av
import av.filter
import numpy as np

log = logging.getLogger(__name__)

# FFmpeg's AVFieldOrder by the field shown first: TT and BT show the top field first (BT codes the
# bottom one first), BB and TB the bottom one; 0 is "unknown".
_FIELD_ORDERS = {1: "progressive", 2: "tff", 5: "tff", 3: "bff", 4: "bff"}
IDET_FRAMES = 24  # frames idet looks at, for the field order where the codec states none, and for telecine
TELECINE_REPEATS = 0.2  # share of frames with a repeated field above which an interlaced source is telecine
# The picture measure: a frame "moves" where its first field changes by more than MOTION (mean absolute
# 8-bit luma) from one frame to the next (codec noise on a still picture stays under 0.6); it judges once
# MOVING_FRAMES frames moved, looking at PICTURE_FRAMES frames at most (a tape may start on a still).
MOTION = 1.0
MOVING_FRAMES = 6
PICTURE_FRAMES = 250
# Field-order asymmetry (`FieldTiming.asymmetry`) beyond which the pictures are interlaced: measured
# 0.70-0.84 on interlaced samples (woven, MPEG-2, DV, H.264, telecine), at most 0.11 on progressive ones
# (test patterns, bars through six codecs, real clips); the line is halfway.
ASYMMETRY = 0.35


def interlacing(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                first_frame: av.VideoFrame, coded_order: int, codec: str) -> dict[str, Any]:
    """{"field_order": ..., "telecine": ..., "interlacing": ...} (VideoInfo's fields) for the video
    stream of `codec` (FFmpeg's name), whose decoder stated `coded_order` (FFmpeg's AVFieldOrder) at
    its first frame. "interlacing" is the decision with its evidence, in words, for the ledger."""
    stated = _FIELD_ORDERS.get(coded_order)
    if stated == "progressive":
        return {"field_order": stated, "telecine": False, "interlacing": "progressive: the stream says so"}
    votes, timing = _look(container, stream)
    flagged = stated is not None or bool(first_frame.interlaced_frame)
    proposed = stated or _field_order(votes, codec, first_frame)
    measured = timing.order()
    if proposed == "progressive":
        order = "progressive"
    elif measured is None:  # the pictures cannot tell (too little motion): the stream's word holds
        order = proposed if flagged else "progressive"
    else:
        order = measured  # progressive, or which field comes first as the pictures show it
    first = (f"stream flags {stated or 'interlaced, order unstated'}" if flagged
             else f"stream flags none, idet {proposed}")
    evidence = (f"{order}: {first} (idet {votes['tff']:.0f} tff, {votes['bff']:.0f} bff, "
                f"{votes['progressive']:.0f} progressive); pictures {timing.describe()}")
    if order == "progressive":
        return {"field_order": order, "telecine": False, "interlacing": evidence}
    # 3:2 pulldown repeats a field in 2 frames of every 5 (idet counts 0.4 of them); interlaced video
    # repeats none. Half that rate is the line.
    repeated = votes["repeated_top"] + votes["repeated_bottom"]
    telecine = repeated > 0 and repeated >= TELECINE_REPEATS * (repeated + votes["repeated_neither"])
    return {"field_order": order, "telecine": telecine, "interlacing": evidence + ("; telecine" if telecine else "")}


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


@dataclass
class FieldTiming:
    """Where each frame's second field lies in time, from the luma of consecutive frames.

    For frames i and i+1, each field compared at the other field's rows (the mean of the rows above
    and below): `after_top` is how far frame i's bottom field is from frame i+1's top field, what a
    top-field-first frame shows half a frame apart; `after_bottom` the same with the fields swapped.
    A top-field-first source has `after_top` well under `after_bottom`, a bottom-field-first one the
    reverse; a progressive one (both fields of one moment) has them equal, as fine detail adds to
    both alike. `motion` (the top field's change over the frame) scales the difference.
    """

    after_top: float = 0.0
    after_bottom: float = 0.0
    motion: float = 0.0
    moving: int = 0  # frames that moved (MOTION)
    frames: int = 0  # frames looked at
    _previous: np.ndarray | None = field(default=None, repr=False)

    def add(self, frame: av.VideoFrame) -> None:
        luma = frame.to_ndarray(format="gray").astype(np.float32)  # (H, W)
        self.frames += 1
        previous, self._previous = self._previous, luma
        if previous is None or luma.shape != previous.shape or luma.shape[0] < 6:
            return
        motion = float(np.abs(previous[0::2] - luma[0::2]).mean())
        if motion <= MOTION:
            return
        self.moving += 1
        self.motion += motion
        self.after_top += _distance(previous, luma, 1)
        self.after_bottom += _distance(previous, luma, 0)

    @property
    def done(self) -> bool:
        return self.moving >= MOVING_FRAMES or self.frames >= PICTURE_FRAMES

    def asymmetry(self) -> float:
        """(after_bottom - after_top) / motion: near 0 for a progressive source, about +0.75 for a
        top-field-first one and -0.75 for a bottom-field-first one."""
        return (self.after_bottom - self.after_top) / self.motion if self.motion else 0.0

    def order(self) -> str | None:
        """"tff", "bff" or "progressive" as the pictures show it; None where too few frames moved."""
        if self.moving < MOVING_FRAMES:
            return None
        a = self.asymmetry()
        return "tff" if a >= ASYMMETRY else "bff" if a <= -ASYMMETRY else "progressive"

    def describe(self) -> str:
        if self.moving < MOVING_FRAMES:
            return f"cannot tell ({self.moving} of {self.frames} frames move)"
        return f"{self.order()} (field-order asymmetry {self.asymmetry():+.2f} over {self.moving} moving frames)"


def _distance(earlier: np.ndarray, later: np.ndarray, parity: int) -> float:
    """Mean absolute difference between the rows of `parity` of `earlier` (1: bottom field) and the
    other field of `later` interpolated to those rows (the interior rows, which have both neighbours)."""
    rows = np.arange(parity or 2, earlier.shape[0] - 1, 2)
    between = (later[rows - 1] + later[rows + 1]) / 2
    return float(np.abs(earlier[rows] - between).mean())


def _look(container: av.container.InputContainer, stream: av.video.stream.VideoStream
          ) -> tuple[dict[str, float], FieldTiming]:
    """One decode from the start: FFmpeg's idet over the first `IDET_FRAMES` frames (frames it calls
    tff, bff and progressive, and frames with a repeated top, bottom or neither field), and the
    `FieldTiming` of the frames until it can judge."""
    votes = {"tff": 0.0, "bff": 0.0, "progressive": 0.0, "repeated_top": 0.0, "repeated_bottom": 0.0,
             "repeated_neither": 0.0}
    timing = FieldTiming()
    last = None
    try:
        container.seek(0, stream=stream, backward=True, any_frame=False)
        graph = av.filter.Graph()
        graph.link_nodes(graph.add_buffer(template=stream), graph.add("idet"), graph.add("buffersink")).configure()
        for i, frame in enumerate(container.decode(stream)):
            if i < IDET_FRAMES:
                graph.push(frame)
                with contextlib.suppress(av.error.BlockingIOError):
                    last = graph.pull()
            timing.add(frame)
            if i + 1 >= IDET_FRAMES and timing.done:
                break
    except av.error.FFmpegError as e:  # an undecodable frame early on: what was seen until then
        log.debug("idet could not run: %s", e)
    if last is not None:
        for kind in votes:
            key = f"lavfi.idet.repeated.{kind[9:]}" if kind.startswith("repeated_") else f"lavfi.idet.multiple.{kind}"
            votes[kind] = float(last.metadata.get(key, 0))
    return votes, timing
