"""What a run costs before any GPU work, at archive scale: the planning path of `upscale_archive.py`
(list the input, read the ledger's state, decide, check a batch of outputs) over a synthetic archive
of N videos the ledger knows as done, K of them changed (half new, half modified). No video bytes:
planning never decodes what the ledger already knows, and the K changed files are only listed.

    PYTHONPATH=. python jobs/measure/scale.py --videos 1000000 --changed 1000
    python -m moto.server -H 127.0.0.1 -p 5077 &      # an S3 server on this machine
    PYTHONPATH=. python jobs/measure/scale.py --videos 100000 --changed 1000 --s3-endpoint http://127.0.0.1:5077

And the pipeline's own rate, through the whole job (Ray Data, scenes, restore, assembly, ledger) on
an archive of small clips, with the `bicubic` preset by default (what a large archive of short clips
pays per video beyond the model):

    PYTHONPATH=. python jobs/measure/scale.py --rate 2000

Prints, per store: the planning seconds, the driver's peak RSS (a fresh process does the planning),
the requests it made (listings, object reads, stats or HEADs), the videos it chose (must be K), and
the seconds the run's closing ledger compaction takes at that size. Targets (issue 13): N = 1,000,000
and K = 1,000 plan in under 2 minutes on local disk with the driver under 2 GB.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines import storage  # noqa: E402
from pipelines.restore import ledger  # noqa: E402
from pipelines.restore.job import ArchiveJob  # noqa: E402
from pipelines.restore.layout import OutputLayout  # noqa: E402
from pipelines.restore.rows import (DONE, FINGERPRINT, FINISHED_AT, OUTPUT, OUTPUT_SIZE, PERMANENT, REL,  # noqa: E402
                                    RUN_ID, SETTINGS, SOURCE, STATUS, video_id)

PER_FOLDER = 1000  # videos per folder, as a camera or tape batch would be
MTIME_NS = 1_700_000_000_000_000_000  # every synthetic local file gets this mtime: its fingerprint is known
BODY = b"x"  # every synthetic object's bytes (S3 ETag: its MD5)


def rel_of(i: int) -> str:
    return f"batch{i // PER_FOLDER:05d}/clip{i:07d}.mp4"


def job_for(input_root: str, output_root: str) -> ArchiveJob:
    return ArchiveJob(input=input_root, output=output_root, preset="tiny")


# -- building the archive state ------------------------------------------------------------------


def build(input_root: str, output_root: str, videos: int, changed: int) -> None:
    """N - K/2 videos known to the ledger as done (K/2 of them with an old fingerprint) with their
    outputs, and K/2 new ones."""
    local = storage.split_url(input_root)[0] == "file"
    version = str(MTIME_NS) if local else hashlib.md5(BODY).hexdigest()
    _put_many([storage.join(input_root, rel_of(i)) for i in range(videos)], local)
    known = videos - changed // 2
    _put_many([storage.join(output_root, rel_of(i)) for i in range(known)], local)
    settings = job_for(input_root, output_root).settings_key()
    modified = set(range(known - (changed - changed // 2), known))
    now = ledger.now()
    table = pa.table({
        SOURCE: [storage.join(input_root, rel_of(i)) for i in range(known)],
        REL: [rel_of(i) for i in range(known)],
        FINGERPRINT: [f"{len(BODY)}:{'old' if i in modified else version}" for i in range(known)],
        SETTINGS: [settings] * known,
        OUTPUT: [storage.join(output_root, rel_of(i)) for i in range(known)],
        OUTPUT_SIZE: [len(BODY)] * known,
        STATUS: [DONE] * known,
        PERMANENT: [False] * known,
        RUN_ID: ["setup"] * known,
        FINISHED_AT: [now] * known,
    })
    table = pa.table({name: table[name] if name in table.column_names else pa.nulls(known, type_)
                      for name, type_ in zip(ledger.VIDEO_SCHEMA.names, ledger.VIDEO_SCHEMA.types)},
                     schema=ledger.VIDEO_SCHEMA)
    with storage.atomic_output(storage.join(OutputLayout(output_root).videos, "part-setup.parquet")) as tmp:
        pq.write_table(table, tmp)


def _put_many(urls: list[str], local: bool) -> None:
    if local:
        for url in urls:
            path = storage.split_url(url)[1]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(BODY)
            os.utime(path, ns=(MTIME_NS, MTIME_NS))
        return
    fs, _ = storage.filesystem(urls[0])
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda url: fs.pipe_file(storage.split_url(url)[1], BODY), urls))


# -- measuring (in a fresh process) --------------------------------------------------------------


def measure(input_root: str, output_root: str) -> dict:
    """Plan the run as `upscale_archive.py` does, counting the store requests; then compact."""
    import resource

    from pipelines.restore.dataset import source_tables
    from pipelines.restore.pipeline import plan_run

    counts = _count_requests()
    start = time.perf_counter()
    layout = OutputLayout(output_root)
    sources, _, selection, run = plan_run(job_for(input_root, output_root), input_root, layout, "benchmark")
    seconds = time.perf_counter() - start
    requests = dict(counts)
    start = time.perf_counter()  # the tables the chosen videos enter Ray Data as
    rows = list(source_tables(selection.todo, selection.failed_before))
    row_seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del rows
    if len(selection.todo) > ledger.JOURNAL_BATCH:  # a first run: its rows are merged as it goes, not measured here
        return {"listed": len(sources), "to_restore": len(selection.todo), "done": len(selection.done),
                "plan_seconds": seconds, "peak_rss": peak, "requests": requests, "source_rows_seconds": row_seconds}
    # The run's end: its K videos' rows (one file each, as its tasks write them) merged into the state.
    for source in selection.todo:
        ledger.write_video(layout, video_id(source.url), {SOURCE: source.url, REL: source.rel, STATUS: DONE,
                                                           FINGERPRINT: source.fingerprint, RUN_ID: "benchmark",
                                                           FINISHED_AT: ledger.now()})
    start = time.perf_counter()
    ledger.compact(run)
    return {"listed": len(sources), "to_restore": len(selection.todo), "done": len(selection.done),
            "plan_seconds": seconds, "peak_rss": peak, "requests": requests, "source_rows_seconds": row_seconds,
            "compact_seconds": time.perf_counter() - start}


def _count_requests() -> collections.Counter:
    """Count what the planning asks of the store: S3 API calls by name; on local disk, folder
    listings (scandir: each also gives its files' sizes and times), stats and file opens."""
    counts: collections.Counter = collections.Counter()
    from fsspec.implementations.local import LocalFileSystem

    read = ledger._read

    def read_counted(layout, names, schema):
        counts["ledger files read"] += len(names)
        return read(layout, names, schema)

    ledger._read = read_counted  # pyarrow opens local files itself, past fsspec

    open_file = LocalFileSystem._open

    def counted_open(self, *args, **kwargs):
        counts["file opens"] += 1
        return open_file(self, *args, **kwargs)

    LocalFileSystem._open = counted_open
    for name, label in (("scandir", "folder listings"), ("stat", "stats")):  # the listing's, and the output checks'
        original = getattr(os, name)

        def counted(*args, _original=original, _label=label, **kwargs):
            counts[_label] += 1
            return _original(*args, **kwargs)

        setattr(os, name, counted)
    try:
        import s3fs
    except ImportError:
        return counts
    call = s3fs.S3FileSystem._call_s3

    async def counted_call(self, method, *args, **kwargs):
        counts[f"S3 {getattr(method, '__name__', method)}"] += 1
        return await call(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counted_call
    return counts


def run_case(store: str, videos: int, changed: int, work: str) -> dict:
    if store == "local":
        input_root, output_root = os.path.join(work, "archive"), os.path.join(work, "restored")
    else:
        bucket = f"s3://scale-{int(time.time())}"
        storage.filesystem(bucket)[0].mkdir(storage.split_url(bucket)[1])
        input_root, output_root = f"{bucket}/archive", f"{bucket}/restored"
    started = time.perf_counter()
    build(input_root, output_root, videos, changed)
    setup = time.perf_counter() - started
    child = subprocess.run([sys.executable, __file__, "--measure", input_root, output_root],
                           capture_output=True, text=True, env=os.environ.copy())
    if child.returncode:
        raise SystemExit(f"the planning process failed:\n{child.stderr[-3000:]}")
    return {"store": store, "videos": videos, "changed": changed, "setup_seconds": setup,
            **json.loads(child.stdout.strip().splitlines()[-1])}


def write_clips(archive: Path, clips: int, frames: int = 24) -> None:
    """`clips` copies of one `frames`-frame 64x48 clip at 24 fps under `archive` (`rel_of`)."""
    import av
    import numpy as np

    first = archive / rel_of(0)
    first.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with av.open(str(first), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) // 4 + i * 4 % 192
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    data = first.read_bytes()
    for i in range(1, clips):
        path = archive / rel_of(i)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)


def pipeline_rate(clips: int, preset: str, work: str) -> dict:
    """Videos per minute through `upscale_archive.py` over `clips` 1-second 64x48 clips."""
    archive, output = Path(work) / "clips", Path(work) / "restored"
    write_clips(archive, clips)
    started = time.perf_counter()
    job_script = Path(__file__).resolve().parents[1] / "upscale_archive.py"
    job = subprocess.run([sys.executable, str(job_script), "--input", str(archive),
                          "--output", str(output), "--preset", preset], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if job.returncode:
        raise SystemExit(f"the job failed:\n{job.stdout[-3000:]}\n{job.stderr[-3000:]}")
    summary = json.loads((output / "_ledger" / "summary.json").read_text())
    return {"clips": clips, "preset": preset, "done": summary["done"], "failed": summary["failed"],
            "pipeline_seconds": summary["seconds"], "wall_seconds": wall,
            "videos_per_minute": 60 * summary["done"] / summary["seconds"]}


def report(result: dict) -> str:
    if "clips" in result:
        return (f"pipeline ({result['preset']}): {result['done']:,} of {result['clips']:,} clips done "
                f"({result['failed']} failed) in {result['pipeline_seconds']:.0f} s of restoring "
                f"({result['wall_seconds']:.0f} s with Ray's start and the planning): "
                f"{result['videos_per_minute']:.1f} videos per minute on {os.cpu_count()} CPUs")
    requests = ", ".join(f"{n} {what}" for what, n in sorted(result["requests"].items()))
    compaction = f"{result['compact_seconds']:.1f} s" if "compact_seconds" in result else "not measured"
    return (f"{result['store']}: N={result['videos']:,} K={result['changed']:,}: planned in "
            f"{result['plan_seconds']:.1f} s, driver peak RSS {result['peak_rss'] / 2**30:.2f} GiB, "
            f"{result['to_restore']:,} to restore ({result['done']:,} done; their rows for Ray Data in "
            f"{result['source_rows_seconds']:.1f} s), requests: {requests}; closing compaction {compaction} "
            f"(setup {result['setup_seconds']:.0f} s)")


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(*sys.argv[2:4])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--changed", type=int, default=1_000)
    parser.add_argument("--work", help="local folder for the synthetic archive (default: a temporary one)")
    parser.add_argument("--s3-endpoint", help="measure on this S3 server (e.g. moto on 127.0.0.1) instead of disk")
    parser.add_argument("--rate", type=int, metavar="CLIPS", help="measure the whole pipeline on this many clips")
    parser.add_argument("--preset", default="bicubic", help="preset for --rate")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if not 0 <= args.changed <= args.videos:
        parser.error("--changed must be between 0 and --videos")
    if args.s3_endpoint:
        os.environ.update(AWS_ENDPOINT_URL=args.s3_endpoint, AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        if args.rate:
            result = pipeline_rate(args.rate, args.preset, work)
        else:
            result = run_case("s3" if args.s3_endpoint else "local", args.videos, args.changed, work)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
