"""How far planning runs ahead of restoring (issue 28 point 4): the restore job, in this process on a
local Ray, over an archive of small clips with the `tiny` preset on CPU (windows restore slower than
videos plan, as on a real cluster), while a thread samples every half second the job's own metrics
(windows planned by the scenes stage, windows finished by the restore actors, videos finished) and
the leases claimed in the output.

    PYTHONPATH=. python jobs/measure/plan_ahead.py --clips 12

Prints the run's samples and the largest leads seen: windows planned and not yet restored, and
videos claimed and not yet finished.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ray  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from jobs.measure.scale import write_clips  # noqa: E402
from pipelines.restore.job import ArchiveJob  # noqa: E402
from pipelines.restore.pipeline import run  # noqa: E402

COUNTERS = {"planned": "ray_star_windows_planned_total", "restored": "ray_star_windows_finished_total",
            "videos_done": "ray_star_videos_finished_total"}


def scrape(url: str) -> dict[str, float]:
    """Our counters, summed over the processes (and tags) that recorded them."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(urllib.request.urlopen(url, timeout=10).read().decode()):
        for sample in family.samples:
            for key, name in COUNTERS.items():
                if sample.name == name:
                    totals[key] += sample.value
    return totals


def sample(url: str, leases: Path, started: float, samples: list[dict], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        try:
            counts = scrape(url)
        except OSError:
            continue  # the metrics agent is not up yet
        claimed = len(list(leases.glob("*"))) if leases.exists() else 0
        samples.append({"t": time.monotonic() - started, **counts, "claimed": claimed})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=48, help="frames per clip (8-frame windows)")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as work:
        archive, output = Path(work) / "clips", Path(work) / "restored"
        write_clips(archive, args.clips, args.frames)
        ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=port,
                 _system_config={"metrics_report_interval_ms": 500})
        samples: list[dict] = []
        stop = threading.Event()
        started = time.monotonic()
        sampler = threading.Thread(target=sample, daemon=True, args=(
            f"http://127.0.0.1:{port}/metrics", output / "_ledger" / "_leases", started, samples, stop))
        sampler.start()
        try:
            summary = run(ArchiveJob(input=str(archive), output=str(output), preset="tiny", scale=2, steps=2,
                                     window=8, overlap=2, device="cpu"))
        finally:
            stop.set()
            sampler.join()
            ray.shutdown()
    for s in samples[::4]:
        print(f"{s['t']:6.1f} s: windows planned {s['planned']:4.0f}, restored {s['restored']:4.0f}; "
              f"leases claimed {s['claimed']:3d}, videos finished {s['videos_done']:3.0f}")
    windows = max(s["planned"] - s["restored"] for s in samples)
    videos = max(s["claimed"] - s["videos_done"] for s in samples)
    print(f"{summary['done']} of {args.clips} videos done in {time.monotonic() - started:.0f} s; largest leads: "
          f"{windows:.0f} windows planned and not restored, {videos:.0f} videos claimed and not finished")


if __name__ == "__main__":
    main()
