"""Interlaced sources: decide how to treat each one (`choose`: the job's --deinterlace over the field
order field_order.py found: the stream's flags or FFmpeg's `idet`, confirmed on the pictures) and
deinterlace with FFmpeg's `bwdif` through PyAV's filter graph, at field rate by default (50i -> 50p,
motion stays smooth) or at frame rate (50i -> 25p).

A deinterlaced video is, for every stage after probing, the progressive video `bwdif` makes: its
"picture" timeline (`picture_timeline`) has twice the frames at field rate, at pts on a clock twice
as fine as the source's. Scenes are found on the source frames and mapped onto it; a restore window of
pictures decodes the source frames under it plus one on each side (`source_span`), so bwdif sees the
same neighbours as in one pass over the whole video and windows join without a seam.

Telecine (film at 24p carried as 60i with 3:2 pulldown, found at probe by idet's repeated fields) is
inverse-telecined instead ("film"): FFmpeg's `fieldmatch` puts each film frame's two fields back
together, and bwdif deinterlaces only the frames fieldmatch flags as still combed (orphan fields at
edits). No frame is dropped (no `decimate`): the timeline stays the source's, so every film frame is
restored whole, the 3:2 rhythm shown as in the source. Soft telecine (progressive frames flagged to
repeat fields, as on NTSC DVDs) decodes as progressive frames and is restored as the film it is.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Literal

import av
import av.filter
import numpy as np

from pipelines.media.frames import read_frames
from pipelines.media.scenes import Scene
from pipelines.media.video_info import VideoInfo
from pipelines.storage import Source

Deinterlace = Literal["field", "frame", "film"]
"""bwdif's output: one picture per field ("field", its `send_field` mode) or per frame ("frame"); or
one per frame by inverse telecine ("film": fieldmatch, then bwdif on what it leaves combed)."""

Option = Literal["auto", "off", "field", "frame"]
"""The restore job's --deinterlace: "auto" decides per source (progressive as found; interlaced video
at field rate, telecine inverse-telecined); "off" trusts every source as progressive; "field" and
"frame" trust every source as interlaced and run bwdif at that rate."""
OPTIONS: tuple[Option, ...] = ("auto", "off", "field", "frame")

_PICTURES_PER_FRAME = {"field": 2, "frame": 1, "film": 1}


def choose(info: VideoInfo, option: Option) -> tuple[VideoInfo, Deinterlace | None]:
    """(`info` as the pipeline restores it, the deinterlacer's mode: None for a progressive source).
    Where the option overrides what probing found, `info` says so: its field order is the one bwdif
    uses (found, else the codec's usual one: DV bottom first, the rest top first) and its
    `interlacing` evidence ends with the option."""
    if option == "auto":
        interlaced = info.field_order != "progressive"
        return info, None if not interlaced else "film" if info.telecine else "field"
    if option == "off":
        order = "progressive"
    else:
        found = info.field_order != "progressive"
        order = info.field_order if found else "bff" if info.codec == "dvvideo" else "tff"
    evidence = f"{info.interlacing}; --deinterlace {option}: {'progressive' if option == 'off' else order}"
    info = dataclasses.replace(info, field_order=order, telecine=False, interlacing=evidence)
    return info, None if option == "off" else option


def picture_timeline(info: VideoInfo, timestamps: np.ndarray, mode: Deinterlace | None
                     ) -> tuple[VideoInfo, np.ndarray]:
    """The video the pipeline restores: `info` and `timestamps` as they are for a progressive
    source (`mode` None), else those of bwdif's output.

    bwdif counts on a clock twice as fine (time_base / 2, as FFmpeg's yadif family does); at field
    rate the second field of frame i is shown halfway to frame i + 1 (the last one halfway to the
    end of the video), so the duration and the audio sync stay exactly those of the source.
    """
    if mode is None:
        return info, timestamps
    ends = np.append(timestamps[1:], info.end_pts)
    doubled = 2 * timestamps
    if mode == "field":
        doubled = np.stack([doubled, timestamps + ends], axis=1).reshape(-1)  # (2F,): field 1, field 2, ...
    per_frame = _PICTURES_PER_FRAME[mode]
    return dataclasses.replace(
        info, time_base=info.time_base / 2, fps=info.fps * per_frame, frame_count=len(doubled),
        start_pts=2 * info.start_pts, end_pts=2 * info.end_pts,
    ), doubled


def describe(mode: Deinterlace, field_order: str) -> str:
    """The ledger's words for what was done, e.g. "bwdif, field rate, tff"."""
    if mode == "film":
        return f"inverse telecine (fieldmatch, bwdif on combed frames), {field_order}"
    return f"bwdif, {mode} rate, {field_order}"


def picture_scenes(scenes: list[Scene], mode: Deinterlace | None) -> list[Scene]:
    """Shots found on the source frames, as picture indices (a cut between frames stays between them)."""
    per_frame = 1 if mode is None else _PICTURES_PER_FRAME[mode]
    return [(per_frame * a, per_frame * b) for a, b in scenes]


def source_span(start: int, end: int, source_frames: int, mode: Deinterlace) -> tuple[int, int]:
    """The source frames to decode for pictures `start..end-1`: those they come from, and one more on
    each side where there is one (bwdif predicts each missing field from the frames around it)."""
    per_frame = _PICTURES_PER_FRAME[mode]
    first, last = start // per_frame, (end - 1) // per_frame
    return max(first - 1, 0), min(last + 2, source_frames)


def decode_start_pts(start: int, end: int, source_timestamps: np.ndarray, mode: Deinterlace | None) -> int:
    """The pts `read_pictures` needs for pictures `start..end-1` (`mode` None: a progressive source)."""
    if mode is None:
        return int(source_timestamps[start])
    return int(source_timestamps[source_span(start, end, len(source_timestamps), mode)[0]])


def read_pictures(src: Source, start: int, end: int, *, start_pts: int, mode: Deinterlace | None,
                  field_order: str, pictures: int) -> np.ndarray:
    """Pictures `start..end-1` of the video as the pipeline restores it, upright RGB, `(F, H, W, 3)`
    uint8: `read_frames` for a progressive source (`mode` None), else the source frames of
    `source_span` (damaged ones repaired as `read_frames` does) through bwdif.

    `start_pts` is `decode_start_pts`; `pictures` the length of the picture timeline.
    """
    if mode is None:
        return read_frames(src, start, end, start_pts=start_pts)
    per_frame = _PICTURES_PER_FRAME[mode]
    first, stop = source_span(start, end, pictures // per_frame, mode)
    frames_fhwc_u8 = read_frames(src, first, stop, start_pts=start_pts)
    return deinterlace(frames_fhwc_u8, field_order, mode)[start - per_frame * first: end - per_frame * first]


def deinterlace(frames_fhwc_u8: np.ndarray, field_order: str, mode: Deinterlace) -> np.ndarray:
    """FFmpeg's bwdif over consecutive frames, `(F, H, W, 3)` uint8 or uint16 -> `(F or 2F, H, W, 3)`.

    Where we differ from `ffmpeg -vf bwdif`: it runs on the decoded YUV frames, we on the RGB frames
    `read_frames` makes (as planar GBR, which bwdif takes; the conversion to it is exact), so a
    4:2:0 source's chroma is upsampled before the fields are separated: on sharp coloured edges in
    motion, a trace of chroma from the other field remains. The field order is passed explicitly
    (RGB frames carry no field flags). Fields are rows of the coded picture, so the frames must not
    have been rotated (the plan stage fails interlaced sources with rotation metadata).
    """
    _, height, width, _ = frames_fhwc_u8.shape
    deep = frames_fhwc_u8.dtype == np.uint16  # a 10- or 12-bit source, as 16-bit RGB
    rgb, planar = ("rgb48le", "gbrp16le") if deep else ("rgb24", "gbrp")
    graph = av.filter.Graph()
    source = graph.add_buffer(width=width, height=height, format=planar, time_base=Fraction(1, 1))
    send = "send_field" if mode == "field" else "send_frame"
    chain = [source]
    if mode == "film":  # match the fields of each film frame; leave frames still combed to bwdif
        chain.append(graph.add("fieldmatch", f"order={field_order}:combmatch=full"))
    deint = "interlaced" if mode == "film" else "all"  # film: only the frames fieldmatch flags as combed
    chain.append(graph.add("bwdif", f"mode={send}:parity={field_order}:deint={deint}"))
    graph.link_nodes(*chain, graph.add("buffersink")).configure()
    out: list[np.ndarray] = []

    def drain() -> None:
        while True:
            try:
                out.append(graph.pull().to_ndarray(format=rgb))
            except (av.error.BlockingIOError, av.error.EOFError):
                return

    for i, picture in enumerate(frames_fhwc_u8):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format=rgb).reformat(format=planar)
        frame.pts = i
        graph.push(frame)
        drain()
    graph.push(None)  # flush: bwdif holds one frame back to see the next
    drain()
    pictures = np.stack(out)
    assert len(pictures) == _PICTURES_PER_FRAME[mode] * len(frames_fhwc_u8), (len(pictures), len(frames_fhwc_u8))
    return pictures
