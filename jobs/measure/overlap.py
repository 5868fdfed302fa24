"""Measure how much of a restore actor's wall time is spent outside the model (decoding windows,
encoding segments), with its windows one at a time and `WINDOWS_IN_FLIGHT` at once on threads, as
the restore job runs them. The model is the one `--preset` names, on this machine's device.

    python jobs/measure/overlap.py --clip ../shared/media/lq/seedvr2_Mustache_640x360.mp4 --preset nano

On a CPU the model and the media work share the same cores, so the overlap gains less than on a
GPU, where the model's time is the device's and the decoding and encoding are the CPU's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a checkout, uninstalled

from pipelines.restore.layout import OutputLayout  # noqa: E402
from pipelines.restore.plan_stage import plan_video  # noqa: E402
from pipelines.restore.restore_stage import WINDOWS_IN_FLIGHT, RestoreWindows  # noqa: E402
from pipelines.restore.rows import (FINGERPRINT, OUTPUT_STEM, PROMPT, REL, SOURCE, STAGING, STATUS,  # noqa: E402
                                    VIDEO_ID, video_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(Path(__file__).resolve().parents[3] / "shared/media/lq/"
                                               "seedvr2_Mustache_640x360.mp4"))
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    actor = RestoreWindows(args.preset, None, args.scale, None, "light_deg", run_id="overlap")
    print(f"{args.preset} x{args.scale} on {actor.device}, windows of {args.window} frames of {args.clip}")
    print("| windows at once | windows | wall s | model s | outside the model |")
    print("|---|---|---|---|---|")
    for at_once in (1, WINDOWS_IN_FLIGHT):
        with tempfile.TemporaryDirectory() as staging:
            rows = _windows(args.clip, staging, args.window, args.scale)
            actor.model_seconds = 0.0
            started = time.perf_counter()
            with ThreadPoolExecutor(at_once) as pool:
                done = list(pool.map(actor.restore, rows))
            wall = time.perf_counter() - started
        failed = [r for r in done if r[STATUS] != "done"]
        if failed:
            raise SystemExit(f"{len(failed)} windows failed: {failed[0]['error']}")
        # The model runs one window at a time either way: the rest of the wall time it idles.
        print(f"| {at_once} | {len(rows)} | {wall:.1f} | {actor.model_seconds:.1f} | "
              f"{1 - actor.model_seconds / wall:.0%} |")


def _windows(clip: str, staging: str, window: int, scale: int) -> list[dict]:
    """The window rows the scenes stage makes of `clip`, staging into `staging`."""
    layout = OutputLayout(staging)
    row = {SOURCE: clip, REL: Path(clip).name, FINGERPRINT: "f", VIDEO_ID: video_id(clip),
           OUTPUT_STEM: layout.output_stem(Path(clip).stem), STAGING: staging, PROMPT: ""}
    return plan_video(row, window=window, overlap=2, detector="content", scale=scale)


if __name__ == "__main__":
    main()
