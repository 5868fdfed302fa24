"""The restore job's unit of GPU work: overlapping windows of frames planned inside each shot (a window
never crosses a cut), and the weight each restored frame gets when the assembler joins them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.media.scenes import Scene
from star_model.latent_windows import blend_ramp


@dataclass(frozen=True)
class SceneWindow:
    """One unit of restore work: the model restores frames [start, end) of one scene.

    The window contributes frames [keep_start, keep_end) to the output. The first `fade_in` of
    those are shared with the previous window and the last `fade_out` with the next one; the
    assembler cross-fades them with `blend_ramp`. Frames [start, keep_start) are context only (the last
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
        w[head:head + self.fade_in] = blend_ramp(self.fade_in).numpy()
        w[tail:tail + self.fade_out] = (1.0 - blend_ramp(self.fade_out)).numpy()
        return w


def plan_scene_windows(scenes: Sequence[Scene], window: int, overlap: int) -> list[SceneWindow]:
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
    planned: list[SceneWindow] = []
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
            planned.append(SceneWindow(len(planned), scene_index, start, end, keep_start, end, fade_in, fade_out))
    return planned
