"""Scenes stage of the restore job (CPU): probe a source video, find its shot cuts and fan it out
into one row per restore window. A video that cannot be restored becomes one failed row."""

from __future__ import annotations

import logging
from typing import Any

from pipelines import storage
from pipelines.media.mux import choose_container
from pipelines.media.probe import BadVideo, probe_timestamps
from pipelines.media.scenes import detect_scenes
from pipelines.restore import metrics
from pipelines.restore.rows import (DEVICE, ERROR, FAILED, FPS, FRAMES, OUTPUT, OUTPUT_STEM, PENDING, PERMANENT,
                                    REUSED, SECONDS, SEGMENT, SOURCE, START_PTS, STATUS, WINDOWS, window_columns)
from pipelines.restore.scene_windows import SceneWindow, plan_scene_windows

log = logging.getLogger(__name__)


def plan_video(row: dict[str, Any], *, window: int, overlap: int, detector: str) -> list[dict[str, Any]]:
    """source row -> window rows: the source columns (less `output_stem`) plus `output`, `frames`,
    `windows`, `fps`, the window's frame span and `start_pts`, `status` pending.

    Failures are rows, not exceptions: a bad file (`BadVideo`) fails for good, anything else (a
    storage hiccup) is retried by the next run.
    """
    try:
        with storage.open_input(row[SOURCE]) as f:
            info, timestamps = probe_timestamps(f)
            container = choose_container(info)  # never fails: audio it cannot carry becomes FLAC
            scenes = detect_scenes(f, detector, timestamps=timestamps)
    except BadVideo as e:
        metrics.failure("scenes", permanent=True)
        return [failed_row(row, e.reason, permanent=True)]
    except Exception as e:  # noqa: BLE001 - recorded in the ledger, the run goes on
        log.warning("planning %s failed", row[SOURCE], exc_info=True)
        metrics.failure("scenes", permanent=False)
        return [failed_row(row, f"{type(e).__name__}: {e}", permanent=False)]

    windows = plan_scene_windows(scenes, window, overlap)
    metrics.windows_planned(len(windows))
    video = {key: value for key, value in row.items() if key != OUTPUT_STEM}
    video.update({OUTPUT: f"{row[OUTPUT_STEM]}.{container}", FRAMES: info.frame_count, WINDOWS: len(windows),
                  FPS: str(info.fps)})
    return [{**video, **window_columns(w), START_PTS: int(timestamps[w.start]), **_outcome(PENDING)}
            for w in windows]


def failed_row(row: dict[str, Any], reason: str, *, permanent: bool) -> dict[str, Any]:
    """The one row a video that never reaches the restore actors leaves (window -1, `windows` 1)."""
    video = {key: value for key, value in row.items() if key != OUTPUT_STEM}
    video.update({OUTPUT: "", FRAMES: 0, WINDOWS: 1, FPS: "0"})
    nowhere = SceneWindow(index=-1, scene=-1, start=-1, end=-1, keep_start=-1, keep_end=-1, fade_in=0, fade_out=0)
    return {**video, **window_columns(nowhere), START_PTS: -1, **_outcome(FAILED, reason, permanent)}


def _outcome(status: str, error: str = "", permanent: bool = False) -> dict[str, Any]:
    """The columns the restore stage fills in, present from the start so every block has one schema."""
    return {STATUS: status, ERROR: error, PERMANENT: permanent, SEGMENT: "", SECONDS: 0.0, REUSED: False,
            DEVICE: ""}

