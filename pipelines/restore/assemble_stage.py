"""Assemble stage of the restore job (CPU, one task per video): once all of a video's windows are
restored, join their segments into the final file, save a before/after still, write the video's
ledger rows and clear its staging folder. A failed window fails the video, never the run."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.restore import ledger, metrics
from pipelines.media.mux import assemble, preview_still
from pipelines.media.frames import iter_segment, read_frames
from pipelines.media.probe import BadVideo, probe_timestamps
from pipelines.restore.rows import (DEVICE, DONE, END, ERROR, FAILED, FINGERPRINT, FRAMES, OUTPUT, PERMANENT, REL,
                            REUSED, SECONDS, SEGMENT, SOURCE, START, STATUS, VIDEO_ID, WINDOW, window_of)
from pipelines.media.scenes import Window

log = logging.getLogger(__name__)


def finish_video(rows: Sequence[dict[str, Any]], *, output_root: str, run_id: str, settings: str) -> dict[str, Any]:
    """All window rows of one video -> its ledger row (also written to the ledger here, so a killed
    driver loses no finished video). Done: the output is in place, whole; failed: nothing new is."""
    rows = sorted(rows, key=lambda r: r[WINDOW])
    first = rows[0]
    started = time.perf_counter()
    status, error, permanent = DONE, None, False
    failed = [r for r in rows if r[STATUS] != DONE]
    if failed:
        status, error, permanent = FAILED, _reason(failed), all(r[PERMANENT] for r in failed)
    else:
        try:
            _assemble(first, rows, ledger.preview_url(output_root, first[REL]))
        except BadVideo as e:
            status, error, permanent = FAILED, f"assembly: {e.reason}", True
        except Exception as e:  # noqa: BLE001 - recorded in the ledger, the run goes on
            log.warning("assembling %s failed", first[SOURCE], exc_info=True)
            status, error = FAILED, f"assembly: {type(e).__name__}: {e}"
    if not failed and status == FAILED:
        metrics.failure("assemble", permanent)
    restored = [r for r in rows if r[WINDOW] >= 0]
    video = {
        "source": first[SOURCE], "rel": first[REL], "fingerprint": first[FINGERPRINT], "settings": settings,
        "output": first[OUTPUT] if status == DONE else None,
        "status": status, "error": error, "permanent": permanent,
        "frames": int(first[FRAMES]), "windows": len(restored),
        "windows_reused": sum(bool(r[REUSED]) for r in restored),
        "restore_seconds": float(sum(r[SECONDS] for r in restored if not r[REUSED])),
        "assemble_seconds": time.perf_counter() - started,
        "device": next((r[DEVICE] for r in restored if r[DEVICE]), ""),
        "run_id": run_id, "finished_at": ledger.now(),
    }
    ledger.write_windows(output_root, first[VIDEO_ID], run_id, [
        {"source": r[SOURCE], "fingerprint": r[FINGERPRINT], "run_id": run_id, "window": r[WINDOW],
         "start": r[START], "end": r[END], "segment": r[SEGMENT] or None, "status": r[STATUS],
         "error": r[ERROR] or None, "seconds": r[SECONDS], "reused": r[REUSED], "device": r[DEVICE]}
        for r in restored])
    ledger.write_video(output_root, first[VIDEO_ID], video)
    if status == DONE or permanent:
        # A video that failed for another reason (out of memory, storage) keeps its segments: the
        # next run retries only the windows that failed. A bad source changes before it is retried,
        # which makes its staging folder a new one anyway.
        storage.remove(storage.join(output_root, "_staging", first[VIDEO_ID]), recursive=True)
    return video


def _assemble(video: dict[str, Any], rows: Sequence[dict[str, Any]], preview: str) -> None:
    with storage.open_input(video[SOURCE]) as f:
        info, timestamps = probe_timestamps(f)
        segments = [(window_of(r), r[SEGMENT]) for r in rows]
        assemble(f, segments, video[OUTPUT], info=info, timestamps=timestamps)
        # Before/after still of the middle frame: the source frame beside its restored version.
        # Only a convenience: a still that cannot be made does not fail a restored video.
        try:
            middle = len(timestamps) // 2
            lq_frame = read_frames(f, middle, middle + 1, start_pts=int(timestamps[middle]))[0]
            preview_still(lq_frame, _restored_frame(segments, middle), preview)
        except Exception:  # noqa: BLE001
            log.warning("no preview still for %s", video[SOURCE], exc_info=True)


def _restored_frame(segments: Sequence[tuple[Window, str]], index: int) -> np.ndarray:
    """Frame `index` as the window that owns it restored it (before any overlap blending)."""
    window, url = next((w, u) for w, u in segments if w.keep_start <= index < w.keep_end)
    for j, rgb in enumerate(iter_segment(url)):
        if window.start + j == index:
            return rgb
    raise BadVideo(f"segment {url} ends before frame {index}")


def _reason(failed: Sequence[dict[str, Any]]) -> str:
    """One line for the ledger: the first failure, and how many more there were."""
    first = failed[0]
    where = "" if first[WINDOW] < 0 else f"window {first[WINDOW]} (frames {first[START]}-{first[END] - 1}): "
    more = f" (and {len(failed) - 1} more failed windows)" if len(failed) > 1 else ""
    return f"{where}{first[ERROR]}{more}"

