"""Scenes stage of the restore job (CPU): probe a source video, find its shot cuts and fan it out
into one row per restore window. A video that cannot be restored becomes one failed row."""

from __future__ import annotations

import logging
import os
from typing import Any

from pipelines import storage
from pipelines.listing import listed_size
from pipelines.media.interlace import Option, choose, decode_start_pts, picture_scenes, picture_timeline
from pipelines.media.output_container import choose_container
from pipelines.media.output_format import Codec
from pipelines.media.packet_log import PacketLog
from pipelines.media.scenes import probe_scenes
from pipelines.media.target_size import TargetSize
from pipelines.media.video_info import BadVideo, check_restorable, has_alpha
from pipelines.restore import metrics, saved_plan
from pipelines.restore.context import RestoreRun
from pipelines.restore.faults import SCENES_SECONDS_PER_FRAME, describe, read_limit, time_limit, unreadable
from pipelines.restore.lease import claim_video
from pipelines.restore.rows import (CONTENT, DEINTERLACE, DEVICE, DONE_ELSEWHERE, ERROR, FAILED, FIELD_ORDER,
                                    FINGERPRINT, FPS, FRAMES, INTERLACING, LEASED, LOSSLESS, MODEL_SCALE, OUTPUT,
                                    OUTPUT_STEM, PENDING, PERMANENT, REL, REUSED, SECONDS, SEGMENT, SOURCE, START_PTS, STATUS,
                                    WINDOWS, video_columns, window_columns)
from pipelines.restore.samples import Sample, clip_scenes
from pipelines.restore.scene_windows import SceneWindow, plan_scene_windows

log = logging.getLogger(__name__)

UNREADABLE_REASON = ("the file cannot be demuxed ({}): it is damaged or cut off; copy it again from where it came "
                     "from, or remux what is left (ffmpeg -i SOURCE -c copy OUT.mkv) and restore that")


def claim_and_plan(row: dict[str, Any], *, run: RestoreRun, **plan: Any) -> list[dict[str, Any]]:
    """Claim the video for this run as work on it starts (`lease.claim_video`: so runs share one
    backlog), then `plan_video` it. A video another live run holds, or that another run finished
    since this run read the ledger, is one row saying so (LEASED or DONE_ELSEWHERE, `error` naming
    that run), which the later stages pass by. The video's settings key is its own where its prompt is
    (`RestoreRun.for_video`)."""
    run = run.for_video(row)
    row = row | video_columns(row, run)
    try:
        claim = claim_video(run, row[REL], row[FINGERPRINT])
    except Exception as e:  # noqa: BLE001 - not claimed: the next run tries again
        log.warning("claiming %s failed", row[SOURCE], exc_info=True)
        return [failed_row(row, f"claiming its lease: {type(e).__name__}: {e}", permanent=False)]
    if not claim.mine:
        return [{**failed_row(row, claim.holder, permanent=False), STATUS: DONE_ELSEWHERE if claim.done else LEASED}]
    changed = _changed_since_listed(row)
    if changed:
        metrics.failure("scenes", permanent=False)
        return [failed_row(row, changed, permanent=False)]
    url = saved_plan.plan_url(row, plan.get("max_pixels"))
    kept = saved_plan.load(url)
    if kept is not None:  # an earlier run planned it and did not finish it: no decode again
        metrics.windows_planned(len(kept))
        video = {key: value for key, value in row.items() if key != OUTPUT_STEM}
        return [{**video, **window, **_outcome(PENDING)} for window in kept]
    windows = plan_video(row, codec=run.output_format.codec, target=run.target, sample=run.sample,
                         **plan)
    if windows[0][STATUS] == PENDING:
        saved_plan.save(url, row, windows)
    return windows


def _changed_since_listed(row: dict[str, Any]) -> str | None:
    """Why the source is not the file the driver listed (another size: still being copied in, or
    rewritten), or None. Restoring it now would record the listed fingerprint with other content; the
    next run lists it anew and restores it then."""
    try:
        size = storage.size(row[SOURCE])
    except OSError:
        return None  # gone or unreadable: opening it says so (`plan_video`)
    listed = listed_size(row[FINGERPRINT])
    if size == listed:
        return None
    return f"the file changed since the run listed it ({listed} bytes then, {size} now); the next run restores it"


def plan_video(row: dict[str, Any], *, window: int, overlap: int, detector: str, deinterlace: Option = "auto",
               max_pixels: int | None = None, scale: int = 4, target: TargetSize | None = None,
               codec: Codec = "h264", sample: Sample | None = None) -> list[dict[str, Any]]:
    """source row -> window rows: the source columns (less `output_stem`) plus `output` (in the container
    `codec` and the source's streams need), `frames`, `windows`, `fps`, `deinterlace`, `field_order`,
    `interlacing`, `lossless`, `model_scale` (`scale`, or what reaches `target`), the window's frame span and
    `start_pts` (of the first source frame its decode needs), `status` pending. An interlaced source (as
    found, or as `deinterlace` says: `media.interlace.choose`) is planned on the pictures bwdif makes of it.
    With `sample`, the windows cover only its excerpt (the assembler writes what the windows cover).

    Failures are rows, not exceptions: a bad file (`BadVideo`: also frames above `max_pixels`, and
    what the pipeline cannot restore faithfully, see `check_restorable`; or whatever else the demuxer
    raises on its bytes, `faults.unreadable`) fails for good, anything else (a storage hiccup, a
    time limit) is retried by the next run.
    """
    try:
        with storage.open_input(row[SOURCE]) as f:
            read_seconds = read_limit(f.seek(0, os.SEEK_END))
            f.seek(0)
            # The digest reads the file on its own: FFmpeg's reads are not in order (an MP4 index at
            # the end is read first, idet goes back to the start), so a hash of what it reads is not
            # a hash of the file.
            with time_limit(read_seconds, "reading the source"):
                row = {**row, CONTENT: storage.content_digest(f)}  # the identity a copy of the file keeps
            found: list[PacketLog] = []
            # Probe and scene detection are one decode pass; its limit grows with the frames demuxed.
            with time_limit(lambda: read_seconds + SCENES_SECONDS_PER_FRAME * (len(found[0].pts) if found else 0),
                            "probing and scene detection"):
                info, source_timestamps, scenes = probe_scenes(f, detector, max_pixels=max_pixels,
                                                               packets=found.append)
            info, mode = choose(info, deinterlace)
            check_restorable(info)
            container = choose_container(info, codec)  # never fails: audio it cannot carry becomes FLAC
    except BadVideo as e:
        metrics.failure("scenes", permanent=True)
        return [failed_row(row, e.reason, permanent=True)]
    except Exception as e:  # noqa: BLE001 - recorded in the ledger, the run goes on
        log.warning("planning %s failed", row[SOURCE], exc_info=True)
        permanent = unreadable(e)
        metrics.failure("scenes", permanent=permanent)
        return [failed_row(row, UNREADABLE_REASON.format(describe(e)) if permanent else f"{type(e).__name__}: {e}",
                           permanent=permanent)]

    pictures, pictures_timestamps = picture_timeline(info, source_timestamps, mode)
    scenes = picture_scenes(scenes, mode)
    if sample is not None:
        scenes = clip_scenes(scenes, *sample.span(pictures_timestamps, pictures.time_base, pictures.end_pts))
    windows = plan_scene_windows(scenes, window, overlap)
    metrics.windows_planned(len(windows))
    video = {key: value for key, value in row.items() if key != OUTPUT_STEM}
    model_scale = target.model_scale(*info.display_size, info.upright_sar) if target is not None else scale
    video.update({OUTPUT: f"{row[OUTPUT_STEM]}.{container}", FRAMES: pictures.frame_count, WINDOWS: len(windows),
                  FPS: str(pictures.fps), DEINTERLACE: mode or "", FIELD_ORDER: info.field_order,
                  INTERLACING: info.interlacing, LOSSLESS: has_alpha(info) or codec == "ffv1",
                  MODEL_SCALE: model_scale})
    return [{**video, **window_columns(w), START_PTS: decode_start_pts(w.start, w.end, source_timestamps, mode),
             **_outcome(PENDING)} for w in windows]


def failed_row(row: dict[str, Any], reason: str, *, permanent: bool) -> dict[str, Any]:
    """The one row a video that never reaches the restore actors leaves (window -1, `windows` 1)."""
    video = {key: value for key, value in row.items() if key != OUTPUT_STEM}
    video.update({OUTPUT: "", FRAMES: 0, WINDOWS: 1, FPS: "0", CONTENT: row.get(CONTENT, ""), DEINTERLACE: "",
                  FIELD_ORDER: "", INTERLACING: "", LOSSLESS: False, MODEL_SCALE: 0})
    nowhere = SceneWindow(index=-1, scene=-1, start=-1, end=-1, keep_start=-1, keep_end=-1, fade_in=0, fade_out=0)
    return {**video, **window_columns(nowhere), START_PTS: -1, **_outcome(FAILED, reason, permanent)}


def _outcome(status: str, error: str = "", permanent: bool = False) -> dict[str, Any]:
    """The columns the restore stage fills in, present from the start so every block has one schema."""
    return {STATUS: status, ERROR: error, PERMANENT: permanent, SEGMENT: "", SECONDS: 0.0, REUSED: False,
            DEVICE: ""}

