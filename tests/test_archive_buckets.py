"""The restore job against real object-store APIs on 127.0.0.1: a local folder into s3:// (moto's
server) and gs:// into gs:// (gcp-storage-emulator). Outputs, previews, summary and the Parquet ledger
are read back from the bucket through fsspec."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from helpers import run_job, small_archive
from pipelines import listing, storage
from pipelines.media.probe import probe
from pipelines.restore import ledger
from pipelines.restore.layout import OutputLayout
from pipelines.restore.outputs import missing_outputs
from pipelines.restore.selection import select

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def check_bucket_output(output_url: str, tmp_path: Path) -> None:
    fs, path = storage.filesystem(output_url)
    local = tmp_path / "eyes.mp4"
    fs.get_file(f"{path}/faces/eyes.mp4", str(local))
    info = probe(local)
    assert (info.frame_count, info.width, info.height) == (16, 128, 72)
    assert fs.exists(f"{path}/_ledger/_previews/faces/eyes.png")
    assert not fs.exists(f"{path}/notes.mp4")
    assert not [p for p in fs.find(f"{path}/_staging")]  # finished videos leave no staging

    rows = {r["rel"]: r for r in pads.dataset(f"{path}/_ledger/videos", filesystem=fs).to_table().to_pylist()}
    assert (rows["faces/eyes.mp4"]["status"], rows["faces/eyes.mp4"]["output"]) == (
        "done", f"{output_url}/faces/eyes.mp4")
    assert rows["notes.mp4"]["status"] == "failed" and "not a recognised video container" in rows["notes.mp4"]["error"]
    summary = json.loads(storage.read_bytes(f"{output_url}/_ledger/summary.json"))
    assert (summary["done"], summary["failed"], summary["frames"]) == (1, 1, 16)


def test_local_folder_into_s3(s3_server, tmp_path):
    source = small_archive(tmp_path / "in")
    output = s3_server.fresh("restored")
    result = run_job(source, output)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_bucket_output(output, tmp_path)


def test_gs_into_gs(gcs_server, tmp_path):
    archive = gcs_server.fresh("archive")
    fs, path = storage.filesystem(archive)
    local = small_archive(tmp_path / "in")
    for file in local.rglob("*.mp4"):
        fs.put_file(str(file), f"{path}/{file.relative_to(local).as_posix()}")
    output = gcs_server.fresh("restored")
    result = run_job(archive, output)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_bucket_output(output, tmp_path)
    # The ledger in the bucket is the resume point too: read back, it leaves nothing to restore.
    summary = json.loads(storage.read_bytes(f"{output}/_ledger/summary.json"))
    layout = OutputLayout(output)
    selection = select(listing.list_videos(archive), ledger.read_state(layout), summary["settings_key"],
                       missing_outputs=missing_outputs(layout))
    assert (selection.todo, [s.rel for s in selection.done], [s.rel for s, _ in selection.bad]) == (
        [], ["faces/eyes.mp4"], ["notes.mp4"])
