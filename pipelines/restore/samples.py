"""Sample runs (the restore job's --sample SECONDS and --sample-at): an excerpt of every video restored
with the full run's settings, so that checkpoints, prompts and scales can be compared before GPU-days
are committed. A sample run is a run over its own output layout, `<output>/_samples/<settings key>/
<excerpt>/` (`samples_layout`): its outputs, ledger, leases, staging and report live there, so it never
marks a video of the full run done, never takes a full run's lease, and rerunning it redoes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from pipelines import storage
from pipelines.media.scenes import Scene
from pipelines.restore.layout import SAMPLES_FOLDER, OutputLayout


@dataclass(frozen=True)
class Sample:
    """`seconds` of each video from `at` seconds after its first picture (None: centred in the video)."""

    seconds: float
    at: float | None = None

    @property
    def folder(self) -> str:
        """The excerpt's folder name, e.g. "5s-at-middle", "10s-at-90s"."""
        where = "middle" if self.at is None else f"{self.at:g}s"
        return f"{self.seconds:g}s-at-{where}"

    def span(self, timestamps: np.ndarray, time_base: Fraction, end_pts: int) -> tuple[int, int]:
        """(first, end) picture indices of the excerpt of a video whose pictures start at `timestamps`
        and end at `end_pts`: at least one picture; a video shorter than the excerpt is sampled whole,
        and one asked for past its end gives its last `seconds`."""
        seconds = (timestamps - timestamps[0]).astype(np.float64) * float(time_base)
        duration = float((end_pts - timestamps[0]) * time_base)
        start = (duration - self.seconds) / 2 if self.at is None else min(self.at, duration - self.seconds)
        start = max(0.0, start)
        first = min(int(np.searchsorted(seconds, start - 1e-9)), len(timestamps) - 1)
        end = max(first + 1, int(np.searchsorted(seconds, start + self.seconds - 1e-9)))
        return first, end


def clip_scenes(scenes: list[Scene], first: int, end: int) -> list[Scene]:
    """The shots of pictures `first..end-1`: those that overlap it, cut to it."""
    return [(max(a, first), min(b, end)) for a, b in scenes if a < end and b > first]


def samples_layout(output_root: str, settings_key: str, sample: Sample) -> OutputLayout:
    """<output>/_samples/<settings key>/<excerpt>/: a sample run's whole output layout."""
    return OutputLayout(storage.join(output_root, SAMPLES_FOLDER, settings_key, sample.folder))
