"""Assemble stage of the restore job (CPU, one task per video): once all of a video's windows are
restored, join their segments into the final file (blending the overlaps), save a before/after still,
and record the video (outcome.py). A failed window fails the video, never the run."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any, Literal

import numpy as np
from PIL import Image

from pipelines import storage
from pipelines.media.alpha import iter_alpha, upscale_plane
from pipelines.media.interlace import decode_start_pts, picture_timeline, read_pictures
from pipelines.media.mux import write_video
from pipelines.media.probe import probe_timestamps
from pipelines.media.segments import iter_segment
from pipelines.media.video_encode import encoded_size
from pipelines.media.video_info import BadVideo, VideoInfo, has_alpha
from pipelines.restore import metrics
from pipelines.restore.context import RestoreRun
from pipelines.restore.lease import LeaseLost, check_held
from pipelines.restore.outcome import failure, record, video_row
from pipelines.restore.rows import (DEINTERLACE, DONE, END, ERROR, FAILED, FIELD_ORDER, HEIGHT, NOTES, OUTPUT,
                                    PERMANENT, REL, REPEATS, SAR, SEGMENT, SOURCE, START, STATUS, WIDTH, WINDOW_INDEX,
                                    window_of)
from pipelines.restore.scene_windows import SceneWindow
from pipelines.storage import Source, atomic_output
from star_model.latent_windows import blend_ramp

log = logging.getLogger(__name__)


def finish_video(rows: Sequence[dict[str, Any]], *, run: RestoreRun) -> dict[str, Any]:
    """All window rows of one video -> its ledger row (also written to the ledger here, so a killed
    driver loses no finished video). Done: the output is in place, whole; failed: nothing new is.

    Fenced: a run that lost the video's lease (it stalled, another run took the video over) publishes
    nothing, writes no ledger row and clears no staging; its row says so, for the summary only.
    """
    rows = sorted(rows, key=lambda r: r[WINDOW_INDEX])
    first = rows[0]
    run = run.for_video(first)
    started = time.perf_counter()
    fence = functools.partial(check_held, run, first[REL])
    try:
        fence()
        status, error, permanent, repeats, written = DONE, None, False, 0, {}
        failed = [r for r in rows if r[STATUS] != DONE]
        if failed:
            status, error, permanent = FAILED, _reason(failed), all(r[PERMANENT] for r in failed)
        else:
            try:
                written = _assemble(first, rows, run, fence)
            except LeaseLost:
                raise
            except DamagedSegment as e:  # our own file, not the source: redo that window next run
                log.warning("%s", e)
                storage.remove(e.url)
                status, error = FAILED, f"assembly: {e}"
            except BadVideo as e:
                status, error, permanent = FAILED, f"assembly: {e.reason}", True
            except Exception as e:  # noqa: BLE001 - recorded in the ledger, the run goes on
                log.warning("assembling %s failed", first[SOURCE], exc_info=True)
                status, error = FAILED, f"assembly: {type(e).__name__}: {e}"
            if status == FAILED:
                metrics.failure("assemble", permanent)
        if status == FAILED:
            error, permanent, repeats = failure(error, permanent, first)
        fence()  # again: assembly takes minutes, and a failed video published nothing to fence
    except LeaseLost as e:
        return video_row(first, rows, run, FAILED, str(e), False, started)
    video = video_row(first, rows, run, status, error, permanent, started) | {REPEATS: repeats}
    if status == DONE:
        video |= written
    record(run, first, rows, video)
    return video


def assemble(source: Source, segments: Sequence[tuple[SceneWindow, str]], output_url: str | os.PathLike, *,
             info: VideoInfo | None = None, timestamps: np.ndarray | None = None,
             span: tuple[int, int] | None = None, fence: Callable[[], None] | None = None, **encode: Any
             ) -> tuple[str, ...]:
    """Join the restored segments of a video into `output_url` (see `media.mux.write_video`; `encode`:
    its output_format, square_pixels and target), cross-fading the frames consecutive windows share; return the
    notes on the source's streams the output does not carry as they were.

    `segments` are (window, staging segment URL) for every window `plan_scene_windows` made for the
    video: all its frames, or with `span` (first, end) the frames first..end-1 (a sample run's excerpt:
    the output is then that excerpt, its sound cut to it). Nothing appears at `output_url` unless the
    whole file was written.
    """
    if info is None or timestamps is None:
        info, timestamps = probe_timestamps(source)
    windows = sorted(segments, key=lambda pair: pair[0].index)
    first, end = span or (0, len(timestamps))
    frames = _blended_frames(windows, first, end)
    if has_alpha(info):
        frames = _with_alpha(frames, itertools.islice(iter_alpha(source), first, None))
    excerpt = span is not None
    if excerpt:
        end_pts = int(timestamps[end]) if end < len(timestamps) else info.end_pts
        info = dataclasses.replace(info, start_pts=int(timestamps[first]), end_pts=end_pts, frame_count=end - first,
                                   duration=(end_pts - int(timestamps[first])) * info.time_base)
        timestamps = timestamps[first:end]
    return write_video(source, frames, output_url, info, timestamps, fence=fence, excerpt=excerpt, **encode)


def _with_alpha(frames: Iterator[np.ndarray], alphas: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Restored RGB frames with the source's alpha plane upscaled plainly beside them, `(H, W, 4)`.
    A frame whose alpha did not decode keeps the previous one (as `read_frames` repeats pictures)."""
    alpha = None
    for rgb in frames:
        alpha = next(alphas, alpha)
        if alpha is None:
            raise BadVideo("the alpha plane of the first frame cannot be decoded")
        plane = upscale_plane(alpha, rgb.shape[1], rgb.shape[0])
        if plane.dtype != rgb.dtype:  # 8-bit alpha beside 16-bit colour, or the other way round
            plane = plane.astype(np.uint16) * 257 if rgb.dtype == np.uint16 else (plane >> 8).astype(np.uint8)
        yield np.concatenate([rgb, plane[..., None]], axis=-1)


def _assemble(video: dict[str, Any], rows: Sequence[dict[str, Any]], run: RestoreRun, fence: Callable[[], None]
              ) -> dict[str, Any]:
    """Write the video's output (as `run` shapes it: codec, square pixels, target size) and its preview
    still; the ledger columns only the writing knows."""
    mode = video[DEINTERLACE] or None
    with storage.open_input(video[SOURCE]) as f:
        source_info, source_timestamps = probe_timestamps(f)
        # The restored frames are bwdif's pictures for an interlaced source: their timeline.
        info, timestamps = picture_timeline(source_info, source_timestamps, mode)
        segments = [(window_of(r), r[SEGMENT]) for r in rows]
        # the same excerpt the scenes stage planned (plan_stage.plan_video)
        span = run.sample.span(timestamps, info.time_base, info.end_pts) if run.sample is not None else None
        # by URL: an alpha source is read twice at once (colour for the muxer's streams, alpha planes)
        notes = assemble(video[SOURCE], segments, video[OUTPUT], info=info, timestamps=timestamps, span=span,
                         fence=fence, square_pixels=run.square_pixels, target=run.target,
                         output_format=run.output_format)
        # Before/after still of the middle frame: the source frame beside its restored version.
        # Only a convenience: a still that cannot be made does not fail a restored video.
        first, end = span or (0, len(timestamps))
        try:
            middle = (first + end) // 2
            lq_frame = read_pictures(f, middle, middle + 1, mode=mode, field_order=video[FIELD_ORDER],
                                     start_pts=decode_start_pts(middle, middle + 1, source_timestamps, mode),
                                     pictures=len(timestamps))[0]
            preview_still(lq_frame, _restored_frame(segments, middle), run.layout.preview(video[REL]))
        except Exception:  # noqa: BLE001
            log.warning("no preview still for %s", video[SOURCE], exc_info=True)
    sar = Fraction(1) if run.square_pixels or run.target is not None else info.upright_sar
    width, height = encoded_size(_restored_frame(segments, first), info, run.square_pixels, run.target)
    return {SAR: f"{sar.numerator}:{sar.denominator}", NOTES: "; ".join(notes), WIDTH: width, HEIGHT: height}


def _blended_frames(windows: Sequence[tuple[SceneWindow, str]], first: int, end: int) -> Iterator[np.ndarray]:
    """Output frames first..end-1 in order, `(H, W, 3)` uint8 (uint16 for a deep-colour source).

    Streams window by window: only the previous window's `fade_out` frames are held, never a
    whole video (a 4x window of 1080p frames alone is gigabytes).
    """
    carry: list[np.ndarray] = []  # previous window's last frames, to cross-fade into this one
    emitted = first
    for window, url in windows:
        if window.keep_start != emitted or window.fade_in != len(carry):
            raise ValueError(f"window {window.index} keeps frames from {window.keep_start} fading in "
                             f"{window.fade_in}, but the windows before end at {emitted} with {len(carry)} "
                             f"to fade: the segment list is missing or repeating a window")
        fade_out_from = window.keep_end - window.fade_out
        fade_in_weights = blend_ramp(window.fade_in).tolist()  # of this window, over the previous one's
        next_carry: list[np.ndarray] = []
        count = 0
        for j, rgb in enumerate(_segment_frames(url)):
            count += 1
            index = window.start + j
            if not window.keep_start <= index < window.keep_end:
                continue  # context frames, restored only so the model sees the shot around them
            k = index - window.keep_start
            if k < window.fade_in:
                a = fade_in_weights[k]
                mixed = carry[k].astype(np.float32) * (1.0 - a) + rgb.astype(np.float32) * a
                yield np.rint(mixed).astype(rgb.dtype)  # uint8, or uint16 for a deep-colour source
            elif index >= fade_out_from:
                next_carry.append(rgb)
            else:
                yield rgb
        if count != window.frames:
            raise DamagedSegment(url, f"it holds {count} frames, window {window.index} needs {window.frames}")
        emitted = fade_out_from
        carry = next_carry
    if emitted != end or carry:
        raise ValueError(f"windows cover frames up to {emitted + len(carry)}, the output needs {end}")


class DamagedSegment(Exception):
    """A staging segment that cannot be read back whole: the restore stage's output, not the source,
    is damaged (a torn upload, a full disk), so the video is retried, that window restored again."""

    def __init__(self, url: str, reason: str):
        self.url = url
        super().__init__(f"staging segment {url} is damaged ({reason}); it is restored again on the next run")


def _segment_frames(url: str) -> Iterator[np.ndarray]:
    try:
        yield from iter_segment(url)
    except BadVideo as e:
        raise DamagedSegment(url, e.reason) from e


def _restored_frame(segments: Sequence[tuple[SceneWindow, str]], index: int) -> np.ndarray:
    """Frame `index` as the window that owns it restored it (before any overlap blending)."""
    window, url = next((w, u) for w, u in segments if w.keep_start <= index < w.keep_end)
    for j, rgb in enumerate(iter_segment(url)):
        if window.start + j == index:
            return rgb
    raise BadVideo(f"segment {url} ends before frame {index}")


def _reason(failed: Sequence[dict[str, Any]]) -> str:
    """One line for the ledger: the first failure, and how many more there were."""
    first = failed[0]
    index = first[WINDOW_INDEX]
    where = "" if index < 0 else f"window {index} (frames {first[START]}-{first[END] - 1}): "
    more = f" (and {len(failed) - 1} more failed windows)" if len(failed) > 1 else ""
    return f"{where}{first[ERROR]}{more}"


def preview_still(lq_frame: np.ndarray, restored_frame: np.ndarray, path: str | os.PathLike,
                  resample: Literal["bilinear", "nearest"] = "bilinear") -> None:
    """A PNG of the input frame resized plainly to the restored size (left) beside the restored
    frame (right): what the model added over a plain resize, at a glance."""
    # A preview is 8-bit: the top byte of a deep-colour frame's 16 bits
    lq_frame, restored_frame = ((x >> 8).astype(np.uint8) if x.dtype == np.uint16 else x
                                for x in (lq_frame, restored_frame))
    height, width = restored_frame.shape[:2]
    method = Image.Resampling.BILINEAR if resample == "bilinear" else Image.Resampling.NEAREST
    plain = np.asarray(Image.fromarray(lq_frame).resize((width, height), method))
    side_by_side = np.concatenate([plain, restored_frame], axis=1)  # (H, 2W, 3)
    with atomic_output(path) as tmp:
        Image.fromarray(side_by_side).save(tmp, format="PNG")
