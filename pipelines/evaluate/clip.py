"""The evaluation job's actor: one reference clip in, its scores out (one row per scale, input condition
and method), and a side-by-side crop picture per scale and condition written beside the report."""

from __future__ import annotations

import io
import logging
import re
import time
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipelines import storage
from pipelines.evaluate.methods import INTERPOLATIONS, REALESRGAN, RealEsrgan, crop_to_scale, interpolate, make_lq
from pipelines.evaluate.quality import ReferenceFlow, Vmaf, psnr_y, ssim_y
from pipelines.evaluate.report import REFERENCE
from pipelines.media.frames import read_first_frames
from pipelines.weights import local_copy
from star_model.scaled import ScaledRestorers

log = logging.getLogger(__name__)

CLIP, REL = "clip", "rel"  # in: the clip's URL and its path below the input root
CROP_SIZE = 96  # side of the square shown per method in the crop picture, in output pixels


class ScoreClips:
    """Ray Data actor: builds the preset's restorer once per weights file (the archive job's loader and
    restore call; nano's shipped weights differ by scale), `__call__` scores a batch of clip rows. A clip
    that cannot be read gives one row with `error`."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        weights = local_copy(job["weights"]) if job["weights"] is not None else None
        self.restorer = ScaledRestorers(job["preset"], weights, checkpoint=job["checkpoint"], steps=job["steps"],
                                        seed=job["seed"])
        self.realesrgan = RealEsrgan() if job["realesrgan"] else None
        self.vmaf = Vmaf()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        for clip in batch.to_dict("records"):
            try:
                rows += self.score(clip[CLIP], clip[REL])
            except Exception as e:  # noqa: BLE001 - reported in the table, the other clips go on
                log.warning("clip %s could not be scored", clip[REL], exc_info=True)
                rows.append(_row(clip[REL], 0, "-", "-", error=f"{type(e).__name__}: {e}"))
        return pd.DataFrame(rows)

    def score(self, url: str, rel: str) -> list[dict[str, Any]]:
        job = self.job
        reference = _centre_crop(read_first_frames(url, job["frames"]), job["crop"])
        rows = []
        for scale in job["scales"]:
            hr = crop_to_scale(reference, scale)
            flow = ReferenceFlow(hr)
            # the reference's own warping error: what a perfect restoration scores (flow and occlusions
            # are not perfect), the scale for the methods' figures; no PSNR/SSIM, it is the reference
            own_warp = flow.warping_error(hr)
            for condition in job["conditions"]:
                rows += self.score_condition(rel, scale, condition, hr, flow)
                rows.append(_row(rel, scale, condition, REFERENCE, warp=own_warp,
                                 size=f"{hr.shape[2]}x{hr.shape[1]}", frames=len(hr)))
        return rows

    def score_condition(self, rel: str, scale: int, condition: str, hr: np.ndarray,
                        flow: ReferenceFlow) -> list[dict[str, Any]]:
        """Every method's rows for one scale and input condition, and that condition's crop picture."""
        job = self.job
        lq = make_lq(hr, scale, condition, job["seed"])
        methods = {mode: (lambda mode=mode: interpolate(lq, scale, mode)) for mode in INTERPOLATIONS}
        if self.realesrgan is not None:
            methods[REALESRGAN] = lambda: self.realesrgan(lq, scale)
        restorer = self.restorer(scale)
        methods[job["preset"]] = lambda: restorer(lq, "", seed=job["seed"])
        rows, outputs = [], {}
        for method, make in methods.items():
            outputs[method], seconds = _timed(make)
            rows.append(self._scores(rel, scale, condition, method, outputs[method], hr, flow, seconds))
        picture = crop_picture(lq, outputs, hr, scale)
        storage.write_bytes_atomic(storage.join(job["output"], "crops", crop_name(rel, scale, condition)), picture)
        return rows

    def _scores(self, rel: str, scale: int, condition: str, method: str, frames: np.ndarray, hr: np.ndarray,
                flow: ReferenceFlow, seconds: float) -> dict[str, Any]:
        # The SR convention: a border of `scale` pixels is left out of PSNR and SSIM (VMAF: whole frames).
        vmaf, vmaf_neg = self.vmaf(frames, hr)
        return _row(rel, scale, condition, method, psnr=psnr_y(frames, hr, scale), ssim=ssim_y(frames, hr, scale),
                    vmaf=vmaf, vmaf_neg=vmaf_neg, warp=flow.warping_error(frames),
                    seconds_per_frame=seconds / len(frames), size=f"{hr.shape[2]}x{hr.shape[1]}", frames=len(frames))


def crop_name(rel: str, scale: int, condition: str) -> str:
    """crops/<name>: the clip's path flattened to one safe file name (no folders, no '..')."""
    flat = re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace("/", "__")).lstrip(".")
    return f"{flat}_x{scale}_{condition}.png"


def crop_picture(lq: np.ndarray, outputs: dict[str, np.ndarray], hr: np.ndarray, scale: int) -> bytes:
    """PNG of one labelled square per method, left to right: the input (nearest-neighbour, so its pixels
    show), each method, and the reference; the square is the most detailed one of the first frame."""
    y, x, side = _busiest_square(hr[0], CROP_SIZE)
    nearest = np.repeat(np.repeat(lq[0], scale, axis=0), scale, axis=1)
    panels = [("input", nearest)] + [(name, out[0]) for name, out in outputs.items()] + [("reference", hr[0])]
    label_height = 14
    canvas = Image.new("RGB", (side * len(panels), side + label_height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, frame) in enumerate(panels):
        canvas.paste(Image.fromarray(np.ascontiguousarray(frame[y:y + side, x:x + side])), (i * side, label_height))
        draw.text((i * side + 2, 1), name, fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _busiest_square(frame: np.ndarray, size: int) -> tuple[int, int, int]:
    """(y, x, side) of the square with the most gradient energy, on a coarse grid."""
    side = min(size, frame.shape[0], frame.shape[1])
    grey = frame.astype(np.float32).mean(-1)
    energy = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1]
    step = max(side // 4, 1)
    best = (0.0, 0, 0)
    for y in range(0, energy.shape[0] - side + 2, step):
        for x in range(0, energy.shape[1] - side + 2, step):
            best = max(best, (float(energy[y:y + side, x:x + side].sum()), y, x))
    return best[1], best[2], side


def _centre_crop(frames: np.ndarray, crop: tuple[int, int] | list[int] | None) -> np.ndarray:
    if crop is None:
        return frames
    height, width = min(int(crop[0]), frames.shape[1]), min(int(crop[1]), frames.shape[2])
    top, left = (frames.shape[1] - height) // 2, (frames.shape[2] - width) // 2
    return np.ascontiguousarray(frames[:, top:top + height, left:left + width])


def _timed(make):
    started = time.perf_counter()
    out = make()
    return out, time.perf_counter() - started


def _row(rel: str, scale: int, condition: str, method: str, **values: Any) -> dict[str, Any]:
    row = {REL: rel, "scale": scale, "condition": condition, "method": method, "psnr": np.nan, "ssim": np.nan,
           "vmaf": np.nan, "vmaf_neg": np.nan, "warp": np.nan, "seconds_per_frame": np.nan, "size": "", "frames": 0,
           "error": ""}
    row.update(values)
    return row
