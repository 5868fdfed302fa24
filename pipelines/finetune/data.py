"""Training pairs for fine-tuning, as a Ray Data pipeline: HR videos under a URL -> clips of F frames at
a random start and a random crop -> the official degradation on CPU workers -> rows (gt, lq, caption).

    clips = list_clips("gs://bucket/hr", ClipConfig(frames=32, crop=(720, 1280)))    # driver, once
    for batch in iter_pairs(build_pairs(epoch_clips(my_clips, epoch), config), B):  # a worker, per epoch

Every random choice (start frame, crop, degradation) derives from the config's seed, the video's path,
the clip's number and the epoch, so epochs see different pairs while a re-run, a retried task or a
resumed job sees the same pairs as the run it repeats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.data.collate_fn import NumpyBatchCollateFn

from pipelines import listing
from pipelines.media.frames import read_frames
from pipelines.media.probe import probe_timestamps
from pipelines.media.video_info import BadVideo
from star_model.training.degrade import degrade_clip, downscale_clip
from star_model.training.degrade_config import FULL, DegradeConfig

log = logging.getLogger(__name__)

# -- a clip to cut (driver -> pairs stage) ----------------------------------------------------------
SOURCE = "source"  # URL of the HR video
CLIP_SEED = "clip_seed"  # int64 seed of this clip: start, crop, degradation; also the trainer's noise
# -- a training pair (pairs stage -> trainer) --------------------------------------------------------
GT = "gt"  # (F, H, W, 3) uint8: the USM-sharpened HR crop (the official's GT)
LQ = "lq"  # (F, H/scale, W/scale, 3) uint8: the degraded LR clip (not upscaled: the trainer does it)
CAPTION = "caption"  # str; always "" (see ClipConfig)


@dataclass(frozen=True)
class ClipConfig:
    """How clips are cut from the HR videos and degraded.

    Captions: the official trainer reads one caption per video and replaces it by "" with p 0.5
    (null_text_ratio). Archives have no captions, so every caption is "" (p = 1): the model learns
    the null-text condition, which is also what the restore job sends when no prompt is given.

    Videos shorter than `frames * frame_step` or smaller than `crop` are skipped (with a warning),
    not padded: padded borders would teach the model to restore the padding, and the official
    training data is cropped from larger videos too (720x1280 crops of >= 512 px tall sources would
    fail the same way; it filtered its data set by size up front).
    """

    frames: int = 32  # F, frames per clip (official 32)
    crop: tuple[int, int] = (720, 1280)  # HR HEIGHTxWIDTH of the random crop (official 720x1280)
    frame_step: int = 1  # take every n-th frame (the official loader used 2; 1 = what inference sees)
    clips_per_video: int = 1  # clips cut from each video per epoch (different starts and crops)
    seed: int = 0
    degrade: DegradeConfig = field(default=FULL)  # how LR clips are made: a profile of training/degrade_config.py
    # Scale factors drawn per clip (seeded), e.g. 2,4, instead of `degrade.scale`: one model for x2 and
    # x4, as a pipeline that pre-upscales LR bilinearly can be. LR clips of different scales differ in
    # size, so a trainer batches them one at a time (batch size 1; FinetuneConfig checks it).
    scales: tuple[int, ...] = ()
    # Probability that a clip's LR is a clean bicubic downscale (`downscale_clip`) instead of `degrade`
    # (ours, for nano: one model for clean sources, which should get no invented blur or noise removal,
    # and for degraded ones). 0: every clip degraded (official).
    clean_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.frames < 1 or self.frame_step < 1 or self.clips_per_video < 1:
            raise ValueError(f"ClipConfig frames={self.frames}, frame_step={self.frame_step}, "
                             f"clips_per_video={self.clips_per_video} must all be >= 1")
        height, width = self.crop
        for scale in self.scale_factors:
            if scale < 1 or height < 1 or width < 1 or height % scale or width % scale:
                raise ValueError(f"crop {height}x{width} must be positive multiples of the scale {scale} "
                                 f"(the LR clip is {height}/{scale} x {width}/{scale})")
        if self.seed < 0:
            raise ValueError(f"ClipConfig.seed={self.seed} must be >= 0")
        if not 0.0 <= self.clean_prob <= 1.0:
            raise ValueError(f"ClipConfig.clean_prob={self.clean_prob} is not a probability in [0, 1]")

    @property
    def scale_factors(self) -> tuple[int, ...]:
        """The scale factors LR clips are made at: `scales`, else the degradation's own."""
        return self.scales or (self.degrade.scale,)

    @property
    def span(self) -> int:
        """Source frames one clip covers."""
        return (self.frames - 1) * self.frame_step + 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any values (stable across processes and Python versions, unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def list_clips(data_url: str, config: ClipConfig) -> list[dict[str, Any]]:
    """One small row per clip to cut (source URL and clip seed), `clips_per_video` per video."""
    rows = []
    for source in listing.list_videos(data_url):
        for k in range(config.clips_per_video):
            rows.append({SOURCE: source.url, CLIP_SEED: derive_seed(config.seed, source.rel, k)})
    return rows


def epoch_clips(clips: list[dict[str, Any]], epoch: int) -> list[dict[str, Any]]:
    """The clip rows of one epoch: each clip's seed (so its start, crop and degradation) redrawn from
    (the seed `list_clips` gave it, epoch). A function of the epoch alone, not of what ran before: a resumed run
    cuts the pairs the interrupted one cut."""
    return [{SOURCE: row[SOURCE], CLIP_SEED: derive_seed(row[CLIP_SEED], "epoch", epoch)} for row in clips]


def make_pair(row: dict[str, Any], config: ClipConfig) -> list[dict[str, Any]]:
    """Cut, crop and degrade one clip: [pair row], or [] when the video is too short, too small or
    unreadable (logged; one bad video must not stop the training)."""
    url, seed = row[SOURCE], int(row[CLIP_SEED])
    height, width = config.crop
    try:
        info, timestamps = probe_timestamps(url)
        src_width, src_height = info.display_size  # upright size: what read_frames returns
        if len(timestamps) < config.span or src_height < height or src_width < width:
            log.warning("skipping %s: %d frames of %dx%d, a clip needs %d frames of at least %dx%d",
                        url, len(timestamps), src_width, src_height, config.span, height, width)
            return []
        # 1. start frame and crop offset, from the clip's own seed
        rng = np.random.default_rng(seed)
        start = int(rng.integers(0, len(timestamps) - config.span + 1))
        top = int(rng.integers(0, src_height - height + 1))
        left = int(rng.integers(0, src_width - width + 1))
        # 2. decode the span, keep every frame_step-th frame, crop; (F, H, W, 3) uint8
        frames = read_frames(url, start, start + config.span, start_pts=int(timestamps[start]))
        frames = np.ascontiguousarray(frames[::config.frame_step, top:top + height, left:left + width])
    except BadVideo as e:
        log.warning("skipping %s: %s", url, e.reason)
        return []
    # 3. the official degradation: sharpened GT and the LR clip, at this clip's scale (or, with
    #    p clean_prob, the clip itself and its clean downscale)
    degrade = config.degrade
    if config.scales:
        degrade = dataclasses.replace(degrade, scale=int(rng.choice(config.scales)))
    if config.clean_prob and rng.random() < config.clean_prob:
        gt_fhwc_u8, lq_fhwc_u8 = frames, downscale_clip(frames, degrade.scale)
    else:
        gt_fhwc_u8, lq_fhwc_u8 = degrade_clip(frames, degrade, seed)
    return [{GT: gt_fhwc_u8, LQ: lq_fhwc_u8, CAPTION: "", CLIP_SEED: seed}]


def build_pairs(clips: list[dict[str, Any]], config: ClipConfig, *, num_cpus: float = 1.0):
    """The pairs dataset, top to bottom (lazy: nothing runs until a trainer iterates it).

    1. clips (a training worker's rows of one epoch): in: nothing; out: source, clip_seed. One row
       and one block per clip, so the pairs tasks spread over all CPU workers.
    2. pairs (CPU tasks, `num_cpus` each: decoding, USM, blur and two video encodes per frame are
       single-threaded numpy/torch/FFmpeg work): in: source, clip_seed; out: gt, lq, caption,
       clip_seed. Frames exist only inside the task and in the pair row it emits.
    """
    import ray

    if not clips:
        raise ValueError("no clips to train on: the data folder holds no videos")
    ds = ray.data.from_items(clips, override_num_blocks=len(clips))
    ds = ds.flat_map(make_pair, fn_kwargs={"config": config}, num_cpus=num_cpus)
    # A worker runs one such plan per epoch; a progress bar per epoch would flood the job's log.
    ds.context.enable_progress_bars = False
    # Pairs come in clip order, not in the order their tasks finish: which clips make up a step is then
    # fixed, so a resumed run (which skips the clips of the steps it has done) repeats the lost steps.
    ds.context.execution_options.preserve_order = True
    return ds


class CollatePairs(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=...)`: numpy columns -> CPU tensors, captions -> list[str]
    (Ray's default collate cannot turn strings into tensors)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {name: torch.from_numpy(np.array(batch[name])) for name in (GT, LQ, CLIP_SEED)}
        out[CAPTION] = [str(c) for c in batch[CAPTION]]
        return out


def iter_pairs(pairs, batch_size: int):
    """One epoch of a worker's pairs dataset, in batches of exactly `batch_size`:
    gt (B, F, H, W, 3) uint8, lq (B, F, h, w, 3) uint8, clip_seed (B,) int64, caption list[str]."""
    return pairs.iter_torch_batches(batch_size=batch_size, collate_fn=CollatePairs(), drop_last=True)
