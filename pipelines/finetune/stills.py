"""Training footage from still photographs: each still becomes a short clip with a steady camera pan.

Nano trains on real footage only. Besides video, the natural photographs that scikit-image ships in
its wheel (no download) add variety in texture and colour; a pan by whole pixels per frame moves the
picture without resampling it, so every frame keeps the photograph's own detail (a sub-pixel or zoom
warp would blur the ground truth the model learns to reach). Clips are written losslessly (FFV1).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# Natural photographs in skimage/data (colour, or grey turned to RGB). Left out: drawings, text,
# binary masks and microscope stains, which are not camera footage.
SKIMAGE_STILLS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "camera.png", "brick.png",
                  "grass.png", "gravel.png", "moon.png", "coins.png")


def skimage_folder() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def read_still(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (grey replicated to three channels, alpha dropped)."""
    import skimage.io

    image = skimage.io.imread(path)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def pan_frames(image_hwc_u8: np.ndarray, frames: int, step: tuple[int, int], margin: int) -> np.ndarray:
    """(F, H - margin, W - margin, 3): a window sliding `step` (dy, dx) whole pixels per frame,
    bouncing at the edges of the photograph."""
    height, width = image_hwc_u8.shape[0] - margin, image_hwc_u8.shape[1] - margin
    if height < 1 or width < 1:
        raise ValueError(f"still {image_hwc_u8.shape} is smaller than the margin {margin}")
    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        y, x = (_bounce(i * s, margin) for s in step)
        out[i] = image_hwc_u8[y:y + height, x:x + width]
    return out


def _bounce(position: int, limit: int) -> int:
    period = 2 * limit if limit else 1
    p = abs(position) % period
    return p if p <= limit else period - p


def write_lossless(path: Path, frames_fhwc_u8: np.ndarray, fps: int = 25) -> None:
    """An FFV1 Matroska file of the frames (even sizes are not needed: FFV1 takes any)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames_fhwc_u8.shape[2], frames_fhwc_u8.shape[1]
        stream.pix_fmt = "bgr0"
        for frame in frames_fhwc_u8:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="bgr0")))
        container.mux(stream.encode())


def write_still_clips(dest: str | Path, frames: int = 24, margin: int = 48, seed: int = 0) -> list[Path]:
    """One panning clip per skimage still into `dest`; the direction and speed (1-2 px per frame) of
    each are drawn from `seed`. Returns the files written."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for name in SKIMAGE_STILLS:
        image = read_still(skimage_folder() / name)
        step = tuple(int(v) for v in rng.integers(-2, 3, size=2))
        if step == (0, 0):
            step = (0, 1)
        path = dest / f"still_{Path(name).stem}.mkv"
        write_lossless(path, pan_frames(image, frames, step, margin))
        written.append(path)
    return written


# The clips of ../shared/media that nano never trains on: jobs/evaluate.py measures it on them, and the
# first two are the README's examples/.
HELD_OUT = ("lq/dove_002.mp4", "lq/seedvr2_Eyes_212x120.mp4", "lq/seedvr2_Mustache_640x360.mp4", "lq/dove_007.mp4")


def build_training_set(media: str | Path, dest: str | Path, frames: int = 24, seed: int = 0) -> list[Path]:
    """Nano's training folder: every video under `media` except HELD_OUT (copied), plus the panning
    stills. Refuses a `media` folder that lacks a held-out clip (a wrong folder would train on them)."""
    import shutil

    media, dest = Path(media), Path(dest)
    missing = [rel for rel in HELD_OUT if not (media / rel).is_file()]
    if missing:
        raise ValueError(f"{media} lacks the held-out clips {missing}: point --media at ../shared/media")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(media.rglob("*.mp4")):
        rel = path.relative_to(media).as_posix()
        if rel in HELD_OUT:
            continue
        target = dest / rel.replace("/", "_")
        shutil.copyfile(path, target)
        written.append(target)
    return written + write_still_clips(dest, frames=frames, seed=seed)
