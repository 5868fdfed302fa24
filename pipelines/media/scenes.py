"""Find shot cuts with PySceneDetect and plan the overlapping time windows that the restore actors
run STAR on (a window never crosses a cut, so the model never blends two shots)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
from scenedetect import SceneManager
from scenedetect.backends.pyav import VideoStreamAv
from scenedetect.common import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector

from pipelines.media.probe import BadVideo, probe_timestamps
from pipelines.storage import Source, open_input

Scene = tuple[int, int]
"""(start_frame, end_frame_exclusive), presentation indices as `probe_timestamps` lists them."""

DETECTORS = {"adaptive": AdaptiveDetector, "content": ContentDetector}


def detect_scenes(
    src: Source,
    detector: Literal["adaptive", "content"] = "adaptive",
    *,
    timestamps: np.ndarray | None = None,
    **detector_options,
) -> list[Scene]:
    """Shots of `src` covering frames 0..N-1 without gaps; a video with no cut is one scene.

    `detector_options` go to PySceneDetect's detector (e.g. `adaptive_threshold=3.0`,
    `threshold=27.0`, `min_scene_len=15`); its defaults are kept otherwise. The video is read
    through the fsspec file object, so a bucket object is streamed, never copied to disk.

    PySceneDetect 0.7 numbers frames by time x nominal rate, which for variable-frame-rate video is
    not the frame's position (goldeneye-vfr-drop3's cut at "frame 90" is its 61st frame). Cuts are
    therefore mapped back through their pts to presentation indices, the numbering every other
    stage uses.
    """
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; use one of {sorted(DETECTORS)}")
    if timestamps is None:
        _, timestamps = probe_timestamps(src)
    frame_count = len(timestamps)
    with open_input(src) as f:
        f.seek(0)
        try:
            # suppress_output keeps FFmpeg's log callback as PyAV set it; the default would route
            # every decoder warning of every video in the job to stderr.
            video = VideoStreamAv(f, name=_name(src), suppress_output=True)
        except Exception as e:  # PySceneDetect wraps FFmpeg errors in its own types
            raise BadVideo(f"scene detection cannot open the video ({e})") from e
        manager = SceneManager()
        manager.add_detector(DETECTORS[detector](**detector_options))
        manager.detect_scenes(video=video)
        cut_times = [start for start, _ in manager.get_scene_list()[1:]]
        time_base = video.time_base  # the decoded frames' (= the stream's); None if none decoded
    cuts = sorted({_frame_index(t, timestamps, Fraction(time_base)) for t in cut_times} - {0})
    cuts = [c for c in cuts if c < frame_count]
    bounds = [0, *cuts, frame_count]
    return list(zip(bounds[:-1], bounds[1:]))


def _frame_index(cut: FrameTimecode, timestamps: np.ndarray, time_base: Fraction) -> int:
    """Index of the frame whose pts is nearest to the cut's time.

    PySceneDetect measures time from the stream's first frame; our timestamps are raw pts, so the
    first one is added back. Cuts carry the exact pts of the frame that starts the new shot, so
    "nearest" only matters for backends that report seconds.
    """
    seconds = Fraction(cut.pts) * Fraction(cut.time_base)
    target = int(timestamps[0]) + seconds / time_base
    i = int(np.searchsorted(timestamps, float(target)))
    if i == len(timestamps) or (i > 0 and target - timestamps[i - 1] < timestamps[i] - target):
        i -= 1
    return i


def _name(src: Source) -> str:
    if hasattr(src, "read"):
        return os.path.basename(getattr(src, "path", "") or getattr(src, "name", "") or "video")
    return os.path.splitext(os.path.basename(os.fspath(src)))[0]


@dataclass(frozen=True)
class Window:
    """One unit of restore work: the model restores frames [start, end) of one scene.

    The window contributes frames [keep_start, keep_end) to the output. The first `fade_in` of
    those are shared with the previous window and the last `fade_out` with the next one; the
    assembler cross-fades them linearly. Frames [start, keep_start) are context only (the last
    window of a long scene starts early so that it ends exactly at the cut). At a cut both fades
    are 0: nothing blends across a cut.
    """

    index: int  # position in the video (0, 1, 2, ...), the order segments are assembled in
    scene: int  # index of the scene it belongs to
    start: int
    end: int  # exclusive
    keep_start: int
    keep_end: int  # exclusive
    fade_in: int
    fade_out: int

    @property
    def frames(self) -> int:
        return self.end - self.start

    def weights(self) -> np.ndarray:
        """(frames,) float32 weight of each restored frame in the output; over all windows that
        contribute a frame its weights sum to 1."""
        w = np.zeros(self.frames, dtype=np.float32)
        w[self.keep_start - self.start:self.keep_end - self.start] = 1.0
        head = self.keep_start - self.start
        tail = self.keep_end - self.start - self.fade_out
        w[head:head + self.fade_in] = [blend_weight(k, self.fade_in) for k in range(self.fade_in)]
        w[tail:tail + self.fade_out] = [1.0 - blend_weight(k, self.fade_out) for k in range(self.fade_out)]
        return w


def blend_weight(k: int, fade: int) -> float:
    """Weight of the later window at the k-th of `fade` shared frames: a straight ramp that never
    reaches 0 or 1, so both windows count at every shared frame."""
    return (k + 1) / (fade + 1)


def plan_windows(scenes: Sequence[Scene], window: int, overlap: int) -> list[Window]:
    """Split each scene into windows of `window` frames, consecutive ones sharing `overlap` frames.

    A scene no longer than `window` is one window of its own length (any length >= 1). A longer
    scene gets windows every `window - overlap` frames, and its last window is placed to end exactly
    at the scene end; it then shares more than `overlap` frames with the one before, and only the
    last `overlap` of those are blended, the rest being context for the model. `overlap` is at most
    half a window, so no frame is ever blended from more than two windows.
    """
    if window < 1 or not 0 <= overlap <= window // 2:
        raise ValueError(f"need window >= 1 and 0 <= overlap <= window // 2, got window={window}, "
                         f"overlap={overlap}; lower the overlap")
    planned: list[Window] = []
    for scene_index, (scene_start, scene_end) in enumerate(scenes):
        if scene_end - scene_start < 1:
            raise ValueError(f"scene {scene_index} [{scene_start}, {scene_end}) is empty")
        starts = list(range(scene_start, scene_end - window, window - overlap)) or [scene_start]
        if starts[-1] + window < scene_end:
            starts.append(scene_end - window)  # aligned to the cut
        ends = [min(start + window, scene_end) for start in starts]
        for k, (start, end) in enumerate(zip(starts, ends)):
            fade_in = overlap if k > 0 else 0
            keep_start = ends[k - 1] - fade_in if k > 0 else start
            fade_out = overlap if k + 1 < len(starts) else 0
            planned.append(Window(len(planned), scene_index, start, end, keep_start, end, fade_in, fade_out))
    return planned
