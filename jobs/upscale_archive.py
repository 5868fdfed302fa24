"""Restore and upscale every video under an input folder or bucket with STAR, on Ray.

    python jobs/upscale_archive.py --input gs://archive/raw --output gs://archive/restored --weights /weights
    ray job submit --working-dir . -- python jobs/upscale_archive.py --input ... --output ...
    python jobs/upscale_archive.py --input examples --output out --preset tiny --scale 2 --steps 2

<input>/<rel>/<name>.<ext> becomes <output>/<rel>/<name>.mp4 (.mkv where MP4 cannot carry the
source's streams); <output>/_ledger/ holds the Parquet ledger (videos/), previews and summary.json.
A rerun restores only what is new, changed, unfinished or failed. Exit code 0 when the run reached
its end (failed videos are listed), 2 when it could not start, 128 + the signal when SIGTERM or
Ctrl-C stopped it (its summary says what finished). Every flag is a field of ArchiveJob,
with its default and help there.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout or a Ray working_dir, uninstalled

from jobs.flags import add_options, values  # noqa: E402
from pipelines.job_support import ConfigError  # noqa: E402
from pipelines.restore.faults import Stopped  # noqa: E402
from pipelines.restore.job import ArchiveJob  # noqa: E402
from pipelines.restore.pipeline import run  # noqa: E402

FLAGS = ("input", "output", "preset", "weights", "checkpoint", "scale", "size", "height", "codec", "crf",
         "prores_profile", "prompt", "prompts", "sample", "sample_at", "steps", "window", "overlap", "actors",
         "device", "accelerator_type", "lease_minutes", "retry_failed", "deinterlace", "square_pixels",
         "max_frame_pixels", "check_outputs", "run_name")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, ArchiveJob, FLAGS)
    args = parser.parse_args(argv)
    try:
        run(ArchiveJob(**values(args, FLAGS)))
    except ConfigError as e:  # bad arguments, weights or storage: reported before Ray starts
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:  # SIGTERM or Ctrl-C: leases freed, summary written with what finished
        print(f"error: {e}; run it again to go on", file=sys.stderr)
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
