"""Score a preset's restorations of reference clips (PSNR, SSIM, VMAF, VMAF-NEG, warping error) beside interpolation.

Bicubic, bilinear and FFmpeg's Lanczos are always compared, Real-ESRGAN with --realesrgan; one Ray Data row
per clip, scored under every input condition (clean, compressed, degraded) unless --conditions names some.

    python jobs/evaluate.py --input ../shared/media/lq --output eval --frames 8
    ray job submit --working-dir . -- python jobs/evaluate.py --input gs://bench/UDM10/GT --output gs://bench/eval \\
        --weights gs://models/star --scales 4

Each clip's low-quality input is made from it, at each scale, once per condition; the preset restores it
through the archive job's loader and restore call. Writes <output>/results.md, results.json and
crops/<clip>_x<scale>_<condition>.png (input, methods, reference side by side). Exit code 0 when the report is written, 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout or a Ray working_dir, uninstalled

from jobs.flags import add_options, int_list, size, values, word_list  # noqa: E402
from pipelines.evaluate.job import EvaluateJob, run  # noqa: E402
from pipelines.evaluate.report import markdown  # noqa: E402
from pipelines.job_support import ConfigError  # noqa: E402

FLAGS = ("input", "output", "preset", "weights", "checkpoint", "scales", "conditions", "seed", "frames", "crop", "steps",
         "realesrgan", "actors", "device")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, EvaluateJob, FLAGS, parse={"scales": int_list, "crop": size, "conditions": word_list})
    args = parser.parse_args(argv)
    try:
        report = run(EvaluateJob(**values(args, FLAGS)))
    except ConfigError as e:  # bad arguments, weights or storage: reported before Ray starts
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(report["summary"], report["rows"], report["job"]).split("\n## Per clip")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
