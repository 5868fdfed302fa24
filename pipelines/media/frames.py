"""Decode one window of a source video into upright RGB frames, repairing the odd damaged frame (the
GPU stage's only read of a source; its staging segments are segments.py's)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import BinaryIO, Literal

import av
import numpy as np

from pipelines.media.describe import display_rotation
from pipelines.media.input_container import decoder, open_container, video_stream
from pipelines.media.probe import probe_timestamps
from pipelines.media.video_info import BadVideo
from pipelines.storage import Source, open_input

log = logging.getLogger(__name__)

OnCorrupt = Literal["duplicate", "conceal", "raise"]
"""What `read_frames` does with a frame the decoder flags as damaged or cannot produce at all:
"duplicate" repeats the previous good frame (default), "conceal" keeps the decoder's
error-concealed picture, "raise" fails the window with `BadVideo`."""


def read_frames(
    src: Source,
    start: int,
    end: int,
    *,
    start_pts: int | None = None,
    on_corrupt: OnCorrupt = "duplicate",
    max_consecutive_repairs: int = 8,
) -> np.ndarray:
    """Frames `start..end-1` of `src`, upright RGB, `(F, H, W, 3)` uint8 (uint16 for a source of more
    than 8 bits, see `rgb_format`).

    Indices count frames in presentation order from 0, as `probe_timestamps` lists them. Pass
    `start_pts` (that list's entry for `start`) to skip the full demux pass that otherwise finds it;
    the decode itself seeks to the keyframe before `start_pts` and stops after the window.

    Damaged frames: old archives often hold a few broken packets. Failing a two-hour film for one of
    them is worse than repeating a frame, and an error-concealed picture would smear through
    STAR's temporal attention, so by default a damaged frame repeats the previous good one (frame
    count and timing stay exact) with a logged warning. More than `max_consecutive_repairs` damaged
    frames in a row is a broken file, not a glitch: `BadVideo`.
    """
    if not 0 <= start < end:
        raise ValueError(f"window [{start}, {end}) is empty or negative; need 0 <= start < end")
    if start_pts is None:
        _, timestamps = probe_timestamps(src)
        if end > len(timestamps):
            raise BadVideo(f"window [{start}, {end}) runs past the last frame ({len(timestamps)} frames)")
        start_pts = int(timestamps[start])
    count = end - start
    with open_input(src) as f:
        window = _decode_window(f, start_pts, count, seek_to=start_pts if start > 0 else None)
        if window is None:  # the seek landed after the window's first frame: decode from the top
            window = _decode_window(f, start_pts, count, seek_to=None)
        if window is None:
            raise BadVideo(f"no frame has pts {start_pts} (frame {start}); the timestamp list is stale")
        for back in _SEEK_BACK:
            if start == 0 or window.before is not None or _usable(window, window.expected[0], on_corrupt):
                break
            # The window's first frame did not decode after the seek: a damaged keyframe (decoding
            # from the keyframe before it gives a previous frame to repeat), or a stream without
            # IDR frames (intra refresh) whose decoder shows nothing until a refresh completes.
            # Seek further back, then from the top (rare, so the extra decodes cost little overall).
            window = _decode_window(f, start_pts, count, seek_to=None if back is None else start_pts - 1,
                                    back_seconds=back or 0) or window
    return _fill_window(window, start, end, on_corrupt, max_consecutive_repairs)


_SEEK_BACK = (0, 2, 10, None)  # seconds before a window a retried decode starts; None: from the top


@dataclass
class _Picture:
    rgb: np.ndarray  # (H, W, 3) uint8, upright
    corrupt: bool  # the decoder flagged it (AV_FRAME_FLAG_CORRUPT) and concealed the damage


@dataclass
class _Window:
    expected: list[int]  # pts of the window's frames, from the demuxed packets
    pictures: dict[int, _Picture]  # what the decoder produced, by pts
    before: av.VideoFrame | None  # last good frame before the window, to repair its first frame
    rotation: int



def read_first_frames(src: str | os.PathLike, count: int) -> np.ndarray:
    """The first `count` frames of the video at `src` (a path or bucket URL), fewer when it is shorter."""
    _, timestamps = probe_timestamps(src)
    return read_frames(src, 0, min(count, len(timestamps)), start_pts=int(timestamps[0]))


def _decode_window(f: BinaryIO, start_pts: int, count: int, *, seek_to: int | None,
                   back_seconds: float = 0) -> _Window | None:
    f.seek(0)
    container = open_container(f)
    try:
        stream = video_stream(container)
        stream.thread_type = "AUTO"  # frame + slice threads; output stays in presentation order
        context = decoder(stream)
        if seek_to is not None:
            # backward=True lands on the keyframe at or before seek_to (the frames between it and
            # the window are decoded and dropped: they are the references the window needs).
            seek_to -= int(back_seconds / stream.time_base)
            container.seek(seek_to, stream=stream, backward=True, any_frame=False)
        seen: set[int] = set()
        pictures: dict[int, _Picture] = {}
        before: av.VideoFrame | None = None
        newest = None
        rotation = 0
        for packet in container.demux(stream):
            if packet.size and not packet.is_discard:
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is not None and ts >= start_pts:
                    seen.add(ts)
            try:
                frames = context.decode(packet)
            except av.error.EOFError:
                frames = []
            except av.error.FFmpegError as e:
                # The frame this packet held will be missing from `pictures`; the gap is repaired
                # (or reported) in `_fill_window`, which knows the policy.
                log.debug("packet at pts %s failed to decode: %s", packet.pts, e)
                frames = []
            for frame in frames:
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None:
                    continue
                rotation = display_rotation(stream, frame)
                if pts < start_pts:
                    if not frame.is_corrupt:
                        before = frame
                    continue
                pictures[pts] = _Picture(_upright(frame, rotation), bool(frame.is_corrupt))
                newest = pts if newest is None else max(newest, pts)
            # The decoder emits frames in presentation order, so once it has emitted the window's
            # last frame every earlier frame of the window has been emitted or is lost for good.
            if newest is not None and len(seen) >= count and newest >= sorted(seen)[count - 1]:
                break
        if start_pts not in seen:
            return None
        return _Window(sorted(seen)[:count], pictures, before, rotation)
    except av.error.FFmpegError as e:
        raise BadVideo(f"damaged container while decoding ({e})") from e
    finally:
        container.close()


def _fill_window(window: _Window, start: int, end: int, on_corrupt: OnCorrupt,
                 max_consecutive_repairs: int) -> np.ndarray:
    count = end - start
    if len(window.expected) < count:
        raise BadVideo(f"window [{start}, {end}) runs past the end of the video: "
                       f"only {len(window.expected)} frames from frame {start}")
    out = [window.pictures[pts].rgb if _usable(window, pts, on_corrupt) else None for pts in window.expected]
    damaged = [start + i for i, rgb in enumerate(out) if rgb is None]
    if damaged:
        if on_corrupt == "raise" or len(damaged) == count:
            raise BadVideo(f"corrupt or undecodable frames {_ranges(damaged)} in window [{start}, {end})")
        run = _longest_run(damaged)
        if run > max_consecutive_repairs:
            raise BadVideo(f"{run} consecutive corrupt frames in window [{start}, {end}) "
                           f"(frames {_ranges(damaged)}); more than {max_consecutive_repairs} is a broken file")
        log.warning("repeated the previous good frame for %d damaged frame(s) %s of window [%d, %d)",
                    len(damaged), _ranges(damaged), start, end)
        previous = _upright(window.before, window.rotation) if window.before is not None else None
        for i in range(count):
            if out[i] is None and previous is not None:
                out[i] = previous
            previous = out[i] if out[i] is not None else previous
        # The video's very first frames have nothing before them: repeat the next good frame.
        following = None
        for i in reversed(range(count)):
            if out[i] is None:
                out[i] = following
            following = out[i]
    shapes = {rgb.shape for rgb in out}  # type: ignore[union-attr]
    if len(shapes) != 1:
        # Where we differ from FFmpeg, which scales such frames to the first size: a change of size
        # is usually a change of aspect (4:3 to 16:9 broadcast); scaled, it would be distorted.
        sizes = " and ".join(sorted(f"{w}x{h}" for h, w, _ in shapes))
        raise BadVideo(f"resolution changes mid-stream ({sizes} inside window [{start}, {end})): not restored; "
                       f"split the file where the size changes")
    return np.stack(out)  # type: ignore[arg-type]


def _usable(window: _Window, pts: int, on_corrupt: OnCorrupt) -> bool:
    picture = window.pictures.get(pts)
    return picture is not None and (not picture.corrupt or on_corrupt == "conceal")


def _upright(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format=rgb_format(frame.format))  # (H, W, 3) uint8, or uint16 for deep colour
    if rotation:
        # np.rot90 turns counter-clockwise, the same sense as the display matrix angle.
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


def rgb_format(source: av.VideoFormat) -> str:
    """The RGB layout a decoded format becomes: "rgb24", or "rgb48le" (uint16, full 16-bit scale) for
    10- and 12-bit sources, which are never taken through 8 bits (swscale converts them directly)."""
    return "rgb48le" if max(c.bits for c in source.components) > 8 else "rgb24"


def _longest_run(indices: list[int]) -> int:
    best = run = 1
    for a, b in zip(indices, indices[1:]):
        run = run + 1 if b == a + 1 else 1
        best = max(best, run)
    return best


def _ranges(indices: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9": short enough for a log line or a ledger reason."""
    parts, first = [], indices[0]
    for a, b in zip(indices, indices[1:] + [None]):
        if b != a + 1:
            parts.append(str(first) if first == a else f"{first}-{a}")
            first = b
    return ", ".join(parts)
