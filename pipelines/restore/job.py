"""What one run of the restore job is (`ArchiveJob`, whose fields are also the job's flags), the settings
key that decides whether a video is already done, and every check that can fail before Ray starts."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from pipelines import storage
from pipelines.job_support import config_errors
from pipelines.media.interlace import OPTIONS, Option
from pipelines.media.output_format import Codec, OutputFormat, ProresProfile
from pipelines.media.scenes import DETECTORS
from pipelines.media.target_size import MAX_MODEL_SCALE, TargetSize
from pipelines.reachable import check_reachable
from pipelines.restore.lease import DEFAULT_TTL
from pipelines.restore.outputs import CHECKS_PER_RUN
from pipelines.restore.prompts import read_prompts
from pipelines.restore.samples import Sample
from pipelines.weights import check as check_weights
from pipelines.weights import digest as weights_digest
from star_model.presets import PRESETS, default_preset, get_preset, restore_settings
from star_model.restore import RestoreConfig
from star_model.weights_folder import DEFAULT_CHECKPOINT

RANDOM_WARNING = "preset {!r} has RANDOM weights: its outputs are NOT restorations (pipeline smoke tests only)"
BICUBIC_WARNING = "preset 'bicubic' upscales with plain bicubic interpolation: a dry run, its outputs are NOT restorations"


@dataclass(frozen=True)
class ArchiveJob:
    """What to restore, where to, and with which model settings. The comment beside a field is its
    --help in jobs/upscale_archive.py."""

    input: str  # folder, s3://bucket/prefix or gs://bucket/prefix of the source videos
    output: str  # folder or bucket URL for the restored videos and the ledger
    # nano (shipped with the package; the default without --weights), official (needs --weights; the default
    # with them: the preset for real work), tiny (random weights without --weights: NOT a restoration),
    # bicubic (no model, no weights, CPUs only: a dry run of the archive, NOT a restoration), cogvideox (the
    # CogVideoX-based STAR; needs --weights of its layout) or cogvideox-tiny (random: NOT a restoration)
    preset: str | None = None
    weights: str | None = None  # folder or bucket with star/, text/ and vae/ (jobs/fetch_weights.py writes one)
    checkpoint: str = DEFAULT_CHECKPOINT  # light_deg or heavy_deg
    scale: int = 4  # upscaling factor
    # Deliver at WIDTHxHEIGHT (e.g. 1920x1080) instead of at --scale: the model restores each video at the
    # smallest integer scale that reaches it (x4 at most), a Lanczos resize makes the rest; the display aspect
    # ratio is kept, the picture fitted in the box (never padded), with square pixels
    size: str | None = None
    height: int | None = None  # deliver at this height (width from the display aspect ratio), as --size does
    steps: int | None = None  # sampler evaluations ('normal' mode); default: the official fast schedule (14)
    prompt: str = ""  # text prompt for every video without a prompt of its own (--prompts, sidecar .txt files)
    # CSV (rel,prompt) or JSON Lines ({"rel": ..., "prompt": ...}) of prompts per video, rel as below the input;
    # it takes precedence over a video's sidecar file <name>.<ext>.txt beside it
    prompts: str | None = None
    window: int = 32  # frames per restore window (one unit of GPU work)
    overlap: int = 8  # frames cross-faded between consecutive windows of a shot
    actors: int | None = None  # restore actors at most (default: one per GPU in the cluster, 1 without GPUs)
    # gpu: ask for GPUs even before an autoscaler has started any; the bicubic preset always runs on CPUs
    device: Literal["auto", "gpu", "cpu"] = "auto"
    detector: str = "adaptive"  # PySceneDetect's detector: adaptive or content
    retry_failed: bool = False  # also retry unchanged sources that failed as bad inputs before
    # auto: each source as found (the stream's flags or idet, confirmed on the pictures): interlaced video is
    # deinterlaced with FFmpeg's bwdif to one picture per field (50i -> 50p, smooth motion), telecine put back
    # together; off: every source trusted as progressive; field or frame: every source deinterlaced, one
    # picture per field (50i -> 50p) or per frame (50i -> 25p)
    deinterlace: Option = "auto"
    # Anamorphic sources (PAL/NTSC 4:3 and 16:9, CIF) keep their pixel aspect ratio by default, so they display
    # as before; this resamples them to square pixels at the output height instead
    square_pixels: bool = False
    # Sources with more pixels per frame fail before any GPU time (with --retry-failed after raising it)
    max_frame_pixels: int = 4096 * 2304
    # Restore only on this GPU type, as Ray names it (L4, A100, H100, ...); implies GPUs.
    accelerator_type: str | None = None
    # Runs over the same output skip the videos another live run holds; a crashed run's videos are free
    # after this long.
    lease_minutes: float = DEFAULT_TTL / timedelta(minutes=1)
    # Tries of one submission share a name (a RayJob's retries, a scheduled name submitted again): a run takes
    # over the videos an earlier, unfinished run of its name holds at once. Default: the Ray job submission id.
    run_name: str | None = None
    # About this many done videos' outputs are checked (exist, same size) per run, another batch each run; the
    # output tree is never listed. 0: trust the ledger.
    check_outputs: int = CHECKS_PER_RUN
    # Output picture: h264 (delivery copy, 4:2:0), h265 (Main, or Main 10 and 4:2:2 as the source has them), ffv1
    # (lossless preservation master in Matroska: level 3, slice CRCs) or prores (ProRes, 10-bit, in MOV)
    codec: Codec = "h264"
    crf: int = 16  # H.264 and H.265 quality: 0 (lossless) to 51, lower is better
    prores_profile: ProresProfile = "hq"  # ProRes profile (hq: 422 HQ; 4444 and 4444xq keep 4:4:4)
    # Restore only SECONDS of each video (from --sample-at) into <output>/_samples/<settings key>/, with its
    # audio: to compare checkpoints, prompts or scales before the full run. A sample run marks no video done
    # and leaves the full runs' leases alone
    sample: float | None = None
    sample_at: float | None = None  # where the samples start, in seconds (default: mid-way through each video)

    def __post_init__(self) -> None:
        if self.preset is None:
            object.__setattr__(self, "preset", default_preset(self.weights))
        preset = PRESETS.get(self.preset)  # an unknown one fails in `validate`
        if self.device == "auto" and preset is not None and not preset.has_model:
            object.__setattr__(self, "device", "cpu")  # bicubic: a GPU would idle

    def output_format(self) -> OutputFormat:
        """The output's picture format (media.output_format)."""
        return OutputFormat(codec=self.codec, crf=self.crf, prores_profile=self.prores_profile)

    def target(self) -> TargetSize | None:
        """The size outputs are delivered at (--size, --height), or None: at the model's scale."""
        return TargetSize.parse(self.size, self.height)

    def excerpt(self) -> Sample | None:
        """What a sample run (--sample) restores of each video, or None for a full run."""
        return Sample(self.sample, self.sample_at) if self.sample is not None else None

    def restore_config(self) -> RestoreConfig:
        """How the actors restore a clip: the preset's settings at this scale (and step count)."""
        return restore_settings(self.preset, self.scale, self.steps)

    def settings(self) -> dict[str, Any]:
        """Everything the restored pixels depend on; a video is redone when any of it changes. Built
        from the fields themselves: every RestoreConfig field, and every field of this job but those
        in RUN_ONLY, so a new option counts unless it is declared not to. The weights count by name
        (checkpoint) and by their content (`weights_digest`: new weights redo every output), not by
        where they lie: moving or copying the weights folder redoes nothing."""
        job = _counted({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                        if f.name not in RUN_ONLY | DERIVED})
        job["deinterlace"] = DEINTERLACE_KEYS[self.deinterlace]
        restore = _counted(dataclasses.asdict(self.restore_config()))
        if self.output_format().settings() != OutputFormat().settings():  # the former (default) output: as before
            job["output"] = self.output_format().settings()
        target = self.target()
        if target is not None:  # each video's model scale follows from the target (a ledger column)
            job["target"], restore["scale"] = str(target), None
            del job["scale"]
        return {**job, "weights_digest": self.weights_digest, "restore": restore}

    @functools.cached_property
    def weights_digest(self) -> str:
        """`pipelines.weights.digest` of this job's weights (read once per job)."""
        scales = range(1, MAX_MODEL_SCALE + 1) if self.target() is not None else (self.scale,)
        digests = {weights_digest(get_preset(self.preset), self.weights, self.checkpoint, s) for s in scales}
        return "+".join(sorted(digests))  # nano's file per scale: every one a target may use

    def warning(self) -> str | None:
        """What the run's log and summary say first when its outputs are not restorations, else None."""
        preset = get_preset(self.preset)
        if not preset.has_model:
            return BICUBIC_WARNING
        return RANDOM_WARNING.format(self.preset) if self.weights is None and preset.shipped is None else None

    def run_label(self) -> str:
        """The run's name (`liveness`): --run-name, else the submission id `ray job submit` gave the
        driver, else "" (no takeover by name)."""
        if self.run_name is not None:
            return self.run_name
        # Ray's job supervisor passes the submission id in the driver's environment, in its job config
        # metadata: a private contract (ray._private.runtime_env.constants, dashboard job common.py),
        # read here because Ray has no public API for a driver's own submission id.
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        return config.get("metadata", {}).get("job_submission_id", "")

    def settings_key(self) -> str:
        """12 hex digits of the settings (sorted JSON): the ledger's `settings` column."""
        return hashlib.sha1(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]


# ArchiveJob fields that say where the job reads and writes and how it runs, not what it makes: they
# stay out of the settings key (a run with more actors or another lease time redoes nothing).
# (prompts: each video's own prompt counts in its own key, RestoreRun.key_for; sample: a sample is made with
# the settings of the full run it previews.)
RUN_ONLY = frozenset({"input", "output", "weights", "actors", "device", "accelerator_type", "lease_minutes",
                      "retry_failed", "max_frame_pixels", "check_outputs", "prompts", "sample", "sample_at", "run_name"})
# Fields that count through what they make (`settings`): the output format (only what it uses, and only
# when it is not the former fixed H.264 crf 16) and the target size.
DERIVED = frozenset({"codec", "crf", "prores_profile", "size", "height"})

# Fields (of this job or of RestoreConfig) added after outputs were made without them, with the value
# that reproduces those outputs: at that value a field stays out of the settings key, so upgrading the
# project redoes nothing. (square_pixels: outputs made before it have square pixels, the source's aspect
# ratio lost; they are not redone on upgrade, only when their source changes.)
FORMER_BEHAVIOUR = {"upscale": "bilinear", "square_pixels": False}


# How --deinterlace enters the settings key. `auto` makes what the former default `field` made of every source
# it judged right (an interlaced one: one picture per field), so it keeps that key: an upgrade redoes nothing.
# `field` and `frame` now deinterlace every source, which the former values did not: new keys.
DEINTERLACE_KEYS = {"auto": "field", "off": "off", "field": "field, every source", "frame": "frame, every source"}


def _counted(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` without those at their FORMER_BEHAVIOUR value."""
    return {name: value for name, value in fields.items()
            if name not in FORMER_BEHAVIOUR or FORMER_BEHAVIOUR[name] != value}


def validate(job: ArchiveJob) -> RestoreConfig:
    """Every check that can fail without a GPU, in the order a user fixes them (ConfigError)."""
    with config_errors():
        return _validate(job)


def _validate(job: ArchiveJob) -> RestoreConfig:
    preset = get_preset(job.preset)
    check_weights(preset, job.weights, job.checkpoint)  # local or bucket folder: layout and manifest sizes
    config = job.restore_config()
    if job.window < 1 or not 0 <= job.overlap <= job.window // 2:
        raise ValueError(f"--window {job.window} --overlap {job.overlap}: need window >= 1 and "
                         f"0 <= overlap <= window / 2")
    job.output_format()  # ValueError for a bad --crf
    if job.target() is not None and job.scale != ArchiveJob.scale:
        raise ValueError(f"--scale {job.scale} and a target size: give one of them (the target chooses each "
                         f"video's scale)")
    if job.sample is not None and not job.sample > 0:
        raise ValueError(f"--sample {job.sample}: need a positive number of seconds")
    if job.sample_at is not None and (job.sample is None or job.sample_at < 0):
        raise ValueError(f"--sample-at {job.sample_at}: needs --sample, and 0 seconds or more")
    if job.prompts is not None:
        read_prompts(job.prompts)  # unreadable, or not CSV or JSON Lines: fails here
    if job.actors is not None and job.actors < 1:
        raise ValueError(f"--actors {job.actors}: need at least 1")
    if job.device not in ("auto", "gpu", "cpu"):
        raise ValueError(f"device {job.device!r}: choose auto, gpu or cpu")
    if not preset.has_model and (job.device == "gpu" or job.accelerator_type is not None):
        raise ValueError(f"preset {job.preset!r} runs on CPUs only: drop --device gpu and --accelerator-type")
    if job.accelerator_type is not None and job.device == "cpu":
        raise ValueError(f"--accelerator-type {job.accelerator_type} asks for GPUs, --device cpu for none: "
                         f"drop one of them")
    if not job.lease_minutes > 0:
        raise ValueError(f"--lease-minutes {job.lease_minutes}: need a positive number of minutes")
    if job.run_name is not None and not job.run_name.strip():
        raise ValueError(f"--run-name {job.run_name!r}: give a name, or leave the flag out")
    if job.check_outputs < 0:
        raise ValueError(f"--check-outputs {job.check_outputs}: need 0 or more")
    if job.deinterlace not in OPTIONS:
        raise ValueError(f"--deinterlace {job.deinterlace!r}: choose one of {', '.join(OPTIONS)}")
    if job.max_frame_pixels < 1:
        raise ValueError(f"--max-frame-pixels {job.max_frame_pixels}: need a positive number of pixels")
    if job.detector not in DETECTORS:
        raise ValueError(f"detector {job.detector!r}: choose one of {sorted(DETECTORS)}")
    input_root, output_root = storage.canonical(job.input), storage.canonical(job.output)
    if _inside(output_root, input_root):
        raise ValueError(f"output {job.output} is inside the input {job.input}: the next run would take the "
                         f"restored videos for new sources; choose an output outside the input")
    check_reachable(input_root)
    check_reachable(output_root, writable=True)
    return config


def _inside(url: str, root: str) -> bool:
    try:
        storage.relative(url, root)
    except ValueError:
        return False
    return True

