"""Helpers that several test files share: the shared folder (official parity fixtures, real clips) and
what makes a missing one fail, clip writers and readers, the restore job's command line, free ports.

../shared/ (next to the checkout) is part of the test suite: a test that needs a fixture or a clip
that is not there FAILS, naming the path, on every machine (CI or not), so a suite that cannot find
its references never passes quietly by skipping them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import av
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

from pipelines.media.probe import probe_timestamps
from pipelines.media.video_info import VideoInfo
from pipelines.listing import SourceFile
from pipelines.restore import ledger
from pipelines.restore.context import RestoreRun
from pipelines.restore.layout import OutputLayout
from pipelines.restore.lease import Leases, claim_video
from star_model.text import TINY as TINY_TEXT

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PARITY = SHARED / "parity"
MEDIA = SHARED / "media"
JOB = REPO / "jobs" / "upscale_archive.py"
# The tests' restore settings: as ArchiveJob fields for runs in this process, as flags for the job command
# (the same settings key either way).
TINY_JOB = {"preset": "tiny", "scale": 2, "steps": 2, "window": 8, "overlap": 2}
TINY = [text for name, value in TINY_JOB.items() for text in (f"--{name}", str(value))]
# The same without --scale, for runs that name a target size instead (it chooses each video's scale).
TINY_UNSCALED = [text for name, value in TINY_JOB.items() if name != "scale" for text in (f"--{name}", str(value))]


# -- the shared folder ----------------------------------------------------------------------------


def shared(rel: str) -> Path:
    """SHARED/rel; the calling test fails (never skips) when it is not there."""
    path = SHARED / rel
    if not path.exists():
        pytest.fail(f"{path} not found: the tests need ../shared next to the checkout (parity fixtures, "
                    f"clips, reference tables)", pytrace=False)
    return path


def parity(name: str) -> Path:
    """An official parity fixture (see shared/parity/README.md)."""
    return shared(f"parity/{name}")


def media(name: str) -> Path:
    """A real clip from shared/media (see its SOURCES.md)."""
    return shared(f"media/{name}")


def parity_names(pattern: str) -> list[str]:
    """Stems of the fixtures matching `pattern`, to parametrize over; where none matches, the pattern
    itself, so that its test runs and fails on the missing file instead of being collected empty."""
    return sorted(p.stem for p in PARITY.glob(pattern)) or [Path(pattern).stem]


# -- clips ----------------------------------------------------------------------------------------


def make_clip(path: Path, frames_fhwc_u8: np.ndarray, *, pts: list[int] | None = None,
              time_base: Fraction = Fraction(1, 24), fmt: str | None = None, pix_fmt: str = "yuv420p",
              rotation: int | None = None, audio_seconds: float = 0.0,
              subtitles: tuple[tuple[int, int, bytes], ...] = (), options: dict[str, str] | None = None,
              colorspace: int | None = None, codec: str = "libx264") -> Path:
    """Encode frames (H.264 unless told) at the given pts; optionally an AAC track and SubRip cues (ms)."""
    _, height, width, _ = frames_fhwc_u8.shape
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream(codec, rate=24)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.codec_context.time_base = video.time_base = time_base
        video.options = options or {}
        if rotation is not None:
            video.set_display_rotation(rotation)
        if colorspace is not None:
            video.codec_context.colorspace = video.codec_context.color_primaries = colorspace
            video.codec_context.color_trc = colorspace
            video.codec_context.color_range = 1
        audio = out.add_stream("aac", rate=48000) if audio_seconds else None
        if audio is not None:
            audio.layout = "stereo"
        subs = out.add_mux_stream("subrip") if subtitles else None
        for i, rgb in enumerate(frames_fhwc_u8):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if colorspace is not None:
                frame = frame.reformat(format=pix_fmt, dst_colorspace=colorspace, dst_color_range=1)
            frame.pts, frame.time_base = (pts[i] if pts else i), time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            t = np.arange(int(audio_seconds * 48000) // 1024 * 1024) / 48000
            wave = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]).astype(np.float32) * 0.3
            for k in range(0, wave.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, k:k + 1024]), format="fltp",
                                                   layout="stereo")
                chunk.sample_rate, chunk.pts = 48000, k
                out.mux(audio.encode(chunk))
            out.mux(audio.encode(None))
        for start_ms, duration_ms, text in subtitles:
            packet = av.Packet(text)
            packet.stream, packet.time_base = subs, Fraction(1, 1000)
            packet.pts, packet.dts, packet.duration = start_ms, start_ms, duration_ms
            out.mux(packet)
    return path


def grey_frames(values: list[int], size: tuple[int, int] = (32, 24)) -> np.ndarray:
    width, height = size
    return np.stack([np.full((height, width, 3), v, np.uint8) for v in values])


def noisy_frames(count: int, size: tuple[int, int] = (64, 48), seed: int = 0) -> np.ndarray:
    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (height, width, 3))
    return np.stack([(base + 2 * i) % 256 for i in range(count)]).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of 8-bit frames `a` against `b`."""
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of RGB frames on the 0-255 scale (16-bit frames divided, their extra bits kept).
    Compared on luma: what the codec loses shows there, while the chroma of a busy 64x48 pattern moves
    with the pixel format's subsampling and with where a decoder sites the chroma samples (H.264 and
    H.265 signal a siting, FFV1 none), which are not the codec's loss; the chroma the output keeps is
    checked by its pixel format."""
    rgb = frames.astype(np.float64) / (257.0 if frames.dtype == np.uint16 else 1.0)
    return rgb @ np.array([0.299, 0.587, 0.114])


def decode_all(path: Path | str) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def assert_same_timing(output: Path, info: VideoInfo, timestamps: np.ndarray) -> VideoInfo:
    out_info, out_timestamps = probe_timestamps(output)
    tick = max(info.time_base, out_info.time_base)
    assert out_info.frame_count == info.frame_count
    assert np.all(np.abs(out_timestamps * out_info.time_base - timestamps * info.time_base) <= tick)
    assert abs(out_info.duration - info.duration) <= tick
    return out_info


def audio_only(path: Path) -> None:
    """Write a file with an AAC audio stream and no video stream (a bad input for the job)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "mono"
        mux_silence(out, stream, 10)


def mux_silence(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, frames: int) -> None:
    """Encode and mux `frames` frames of mono 48 kHz silence (1024 samples each), then flush."""
    for k in range(frames):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, k * 1024
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def shrink(src: Path, dst: Path, size: tuple[int, int], frames: int) -> Path:
    """The first `frames` frames of a real clip, resized to `size`, re-encoded (H.264, same rate)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        rate = inp.streams.video[0].average_rate
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == frames:
                break
            small = av.VideoFrame.from_image(frame.to_image().resize(size, Image.Resampling.BILINEAR))
            small.pts = None
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))
    return dst


def real_clips(root: Path) -> None:
    """Two real low-quality clips, shrunk: 32 frames (5 windows of 8) and 16 frames (3 windows)."""
    shrink(media("lq/dove_002.mp4"), root / "reels/dove_002.mp4", (80, 46), 32)
    shrink(media("lq/seedvr2_Eyes_212x120.mp4"), root / "faces/eyes.mp4", (64, 36), 16)


def small_archive(root: Path) -> Path:
    """A real clip, shrunk (16 frames: 3 windows of 8), and a text file named .mp4."""
    shrink(media("lq/seedvr2_Eyes_212x120.mp4"), root / "faces/eyes.mp4", (64, 36), 16)
    (root / "notes.mp4").write_text("shot list, not a video\n" * 20)
    return root


# -- the jobs' command lines -----------------------------------------------------------------------


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a job run: this process's (bucket fixtures set endpoints in it) plus a fresh
    local Ray per run; without RAY_ADDRESS=local, ray.init() joins any `ray start` cluster on the machine."""
    return {**os.environ, "RAY_ADDRESS": "local", **extra}


def run_job(input_url: str | Path, output_url: str | Path, *extra: str, timeout: float = 240,
            settings: Sequence[str] = TINY) -> subprocess.CompletedProcess:
    """The restore job's command with `settings` (the TINY ones unless told) and `extra` flags."""
    return subprocess.run([sys.executable, str(JOB), "--input", str(input_url), "--output", str(output_url),
                           *settings, *extra], cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=timeout)


def end_process_group(process: subprocess.Popen) -> None:
    """Give the Ray processes of a killed driver a moment to go (Ray's reaper ends them), then end
    whatever is left of the process group this test started (`start_new_session=True`)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_here(input_url: str | Path, output_url: str | Path) -> dict:
    """The restore job's run in this process, with the TINY settings; its summary. For a run that
    restores nothing (it starts no Ray): a job command would cost a Python, torch and Ray start."""
    from pipelines.restore.job import ArchiveJob
    from pipelines.restore.pipeline import run

    return run(ArchiveJob(input=str(input_url), output=str(output_url), **TINY_JOB))


def read_summary(output: Path) -> dict:
    return json.loads((output / "_ledger" / "summary.json").read_text())


def latest_rows(output: str | Path) -> dict[str, dict]:
    """{rel: latest row} of the ledger under `output` (`ledger.read_state` as Python rows)."""
    return {row["rel"]: row for row in ledger.read_state(OutputLayout(str(output))).to_pylist()}


def latest_by_rel(rows: Iterable[dict]) -> pa.Table:
    """`ledger.latest` of Python rows (oldest first for equal times): a state to `select` against."""
    return ledger.latest(ledger._table(list(rows), ledger.VIDEO_SCHEMA))


def restore_run(output: str | Path, run_id: str = "r", settings: str = "s", read_at: datetime | None = None,
                name: str = "") -> RestoreRun:
    """A run of the restore job over `output` as its driver makes one (`read_at`: now by default)."""
    return RestoreRun(OutputLayout(str(output)), run_id, settings, read_at or datetime.now(timezone.utc), name=name)


def load_job(name: str):
    """jobs/<name>.py as a module (`name` may name a folder: "measure/memory"), so that a test calls its
    main(argv) in this process."""
    spec = importlib.util.spec_from_file_location(name.replace("/", "."), REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- models and ports -----------------------------------------------------------------------------


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8))
    with torch.no_grad():  # GroupNorm starts at ones/zeros; make every value distinctive
        for p in model.parameters():
            p.normal_()
    return model


def save_tiny_clip_model(folder: Path, seed: int) -> CLIPModel:
    """A full CLIPModel (both towers) as the laion repository holds it."""
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, image_size=32, patch_size=16)
    cfg = CLIPConfig(text_config=TINY_TEXT.to_hf().to_dict(), vision_config=vision.to_dict(),
                     projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Claims(NamedTuple):
    mine: list[SourceFile]
    held: list[tuple[SourceFile, str]]  # (source, holder run id)
    taken_over: bool


def claim_all(leases: Leases, sources: Sequence[SourceFile]) -> Claims:
    """`claim_video` for each source in turn, under the run and clock of `leases` (the job claims one
    video at a time as it starts on it; tests claim a list)."""
    got = [(source, claim_video(leases.run, source.rel, clock=leases.clock)) for source in sources]
    return Claims([s for s, claim in got if claim.mine], [(s, claim.holder) for s, claim in got if not claim.mine],
                  any(claim.taken_over for _, claim in got))



@contextlib.contextmanager
def two_node_cluster(cpus_per_node: int, **init_args) -> Iterator[Cluster]:
    """A real two-node Ray cluster on this machine (`cpus_per_node` CPUs each), this process its driver
    (`ray.init(**init_args)`); shut down on exit."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node})
    cluster.add_node(num_cpus=cpus_per_node)
    ray.init(address=cluster.address, **init_args)
    try:
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
