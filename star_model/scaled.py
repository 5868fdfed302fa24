"""One preset's restorers at any scale, for callers that meet several (the evaluation job's scales, the
restore job's --size, where each video has its own): the models are loaded once per weights file (nano
ships one per scale; every other preset restores every scale with the same weights) and each scale
gets its own settings around them."""

from __future__ import annotations

import copy
from pathlib import Path

from star_model.bicubic import BicubicRestorer
from star_model.presets import get_preset, load_restorer, restore_settings
from star_model.restore import StarRestorer
from star_model.weights_folder import DEFAULT_CHECKPOINT

Restorer = StarRestorer | BicubicRestorer


class ScaledRestorers:
    """`restorers(scale)` -> the preset's restorer with its settings at `scale` (`restore_settings`,
    with `steps`), loading weights on first use. Not thread-safe: callers that restore on threads
    hold their model lock around it."""

    def __init__(self, preset: str, weights: str | Path | None = None, *, checkpoint: str = DEFAULT_CHECKPOINT,
                 steps: int | None = None, seed: int = 0) -> None:
        self.preset, self.weights, self.checkpoint, self.steps, self.seed = preset, weights, checkpoint, steps, seed
        self.loaded: dict[Path | None, Restorer] = {}  # by the shipped file it loaded (None: one for all scales)
        self.scaled: dict[int, Restorer] = {}

    def __call__(self, scale: int) -> Restorer:
        if scale not in self.scaled:
            preset = get_preset(self.preset)
            config = restore_settings(self.preset, scale, self.steps)
            shipped = preset.shipped_file(scale) if preset.shipped is not None and self.weights is None else None
            if shipped not in self.loaded:
                self.loaded[shipped] = load_restorer(self.preset, self.weights, config=config,
                                                     checkpoint=self.checkpoint, seed=self.seed)
            restorer = copy.copy(self.loaded[shipped])  # shares the models, not the settings
            restorer.config = config
            self.scaled[scale] = restorer
        return self.scaled[scale]
