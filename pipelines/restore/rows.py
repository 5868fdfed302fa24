"""Column names of the restore job's rows, those that flow through its stages and those its ledger keeps,
and the deterministic ids derived from them (a retried or resumed window finds the same seed and, through
layout.py, the same staging segment).

Rows stay small: URLs, frame indices and timings. Frames never travel in a row.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from pipelines.restore.scene_windows import SceneWindow

if TYPE_CHECKING:
    from pipelines.restore.context import RestoreRun

# -- a source video (driver -> scenes stage) ---------------------------------------------------------
SOURCE = "source"  # URL of the source video, as listing.list_videos gives it
REL = "rel"  # its path below the input root; the output keeps this layout
FINGERPRINT = "fingerprint"  # size + etag/mtime: changes when the content does (and when it is copied)
CHECKSUM = "checksum"  # the store's own checksum of the content ("crc32c:...", "md5:..."), "" when none
VIDEO_ID = "video_id"  # uuid5 of the source URL
OUTPUT_STEM = "output_stem"  # <output>/<rel without extension>; the scenes stage adds ".mp4"/".mkv"
STAGING = "staging"  # this video's staging folder for this fingerprint and these settings
PREVIOUS_ERROR = "previous_error"  # the reason the last run failed it with (same source and settings), or ""
REPEATS = "repeats"  # runs in a row that failed it with that reason (0 when it did not fail last time)
PROMPT = "prompt"  # the text prompt it is restored with (--prompt, or its own: restore/prompts.py)

# -- a window of a video (scenes stage -> restore stage -> driver) -----------------------------------
CONTENT = "content"  # "sha256:..." of the source's bytes (scenes stage): a copy is recognised by it
OUTPUT = "output"  # URL of the restored video
OUTPUT_SIZE = "output_size"  # its size in bytes once published (the ledger checks it instead of listing outputs)
FRAMES = "frames"  # frames in the video
WINDOWS = "windows"  # windows the video was split into: the driver knows when it has them all
FPS = "fps"  # the video's average rate as "num/den" (the staging segments are tagged with it)
# Interlaced sources: "field" or "frame" (bwdif's output rate: field for --deinterlace auto), "film" for
# telecine (inverse telecine), "" for a progressive source. Frames, windows and fps then count the
# pictures the deinterlacer makes (media.interlace).
DEINTERLACE = "deinterlace"
FIELD_ORDER = "field_order"  # "progressive" | "tff" | "bff", as probed (or as --deinterlace says)
# How the field order was decided, with its evidence (the stream's flags, idet's votes, the picture
# measure of media.field_order, and --deinterlace where it overrode them); also a ledger column
INTERLACING = "interlacing"
MODEL_SCALE = "model_scale"  # the scale the model restores it at (--scale, or what reaches --size: media.target_size)
LOSSLESS = "lossless"  # the output is lossless (FFV1: --codec ffv1, or a source with alpha), so its staging segments are too
# The `SceneWindow` fields, flat. First the window's index in its video (0 .. windows - 1; -1 on the one
# row of a video that never reaches the restore actors): the ledger's column keeps the name "window",
# so that the window rows of every earlier run read unchanged.
WINDOW_INDEX = "window"
SCENE = "scene"
START = "start"
END = "end"
KEEP_START = "keep_start"
KEEP_END = "keep_end"
FADE_IN = "fade_in"
FADE_OUT = "fade_out"
START_PTS = "start_pts"  # pts of frame `start`, so the actor's decode seeks without a demux pass
STATUS = "status"  # PENDING after planning; DONE or FAILED after restoring
ERROR = "error"  # one-line reason, "" when none
PERMANENT = "permanent"  # the source itself is bad: retrying the unchanged file cannot help
SEGMENT = "segment"  # URL of the restored window in the staging area
SECONDS = "seconds"  # wall time the actor spent on the window (decode + model + encode)
REUSED = "reused"  # the segment was already there (written by an earlier, interrupted run)
DEVICE = "device"  # "cuda" or "cpu": what the actor ran the model on

# -- the ledger's rows (assemble stage -> _ledger/): columns above, and these ----------------------------
WIDTH, HEIGHT = "width", "height"  # the output's picture size, as encoded
SAR = "sar"  # the output's sample aspect ratio, "64:45" ("1:1" square pixels), as the source's or --square-pixels made it
NOTES = "notes"  # source streams the output does not carry as they were (copied unrestored, or left out, and why)
DEINTERLACED = "deinterlaced"  # what was done to an interlaced source, e.g. "bwdif, field rate, tff"; "" if nothing
SETTINGS = "settings"  # the run's settings key (ArchiveJob.settings_key): what the pixels depend on
WINDOWS_REUSED = "windows_reused"  # windows an earlier, interrupted run had restored
RESTORE_SECONDS = "restore_seconds"  # actor time on this run's windows
ASSEMBLE_SECONDS = "assemble_seconds"
RUN_ID = "run_id"
FINISHED_AT = "finished_at"

# The columns the restore stage fills in (the scenes stage sets them to a pending or failed outcome).
OUTCOME = (STATUS, ERROR, PERMANENT, SEGMENT, SECONDS, REUSED, DEVICE)

PENDING, DONE, FAILED = "pending", "done", "failed"
# Videos the scenes stage did not take (its claim found them): another live run holds it, or another
# run finished it since this run read the ledger. They pass the restore stage untouched.
LEASED, DONE_ELSEWHERE = "leased", "done_elsewhere"

_WINDOW_FIELDS = {WINDOW_INDEX: "index", SCENE: "scene", START: "start", END: "end", KEEP_START: "keep_start",
                  KEEP_END: "keep_end", FADE_IN: "fade_in", FADE_OUT: "fade_out"}
_NAMESPACE = uuid.UUID("5d0c7f4e-3b7a-4c55-9a53-2f7d3a1b8e01")  # this project's uuid5 namespace


def video_id(source_url: str) -> str:
    """uuid5 of the source URL: names the video's staging folder and its ledger row files."""
    return uuid.uuid5(_NAMESPACE, source_url).hex[:16]


def window_seed(rel: str, start: int, end: int, base_seed: int) -> int:
    """The sampler seed of one window: fixed by what the window is (which video, which frames), so a
    rerun, a resumed run or a retried task restores it to the same pixels."""
    digest = uuid.uuid5(_NAMESPACE, f"{base_seed}/{rel}/{start}-{end}").int
    return digest % (2**31 - 16)  # the restorer also uses seed + 1 and seed + 2


def window_columns(window: SceneWindow) -> dict[str, int]:
    return {column: getattr(window, field) for column, field in _WINDOW_FIELDS.items()}


def window_of(row: dict[str, Any]) -> SceneWindow:
    return SceneWindow(**{field: int(row[column]) for column, field in _WINDOW_FIELDS.items()})


def video_columns(row: dict[str, Any], run: RestoreRun) -> dict[str, str]:
    """The columns a source row's URL, rel and fingerprint determine: video_id, output_stem, staging."""
    return {VIDEO_ID: video_id(row[SOURCE]), OUTPUT_STEM: run.layout.output_stem(row[REL]),
            STAGING: run.staging_folder(row[SOURCE], row[FINGERPRINT])}
