"""Object keys that could climb out of the output ("..", ".", empty segments, a leading "/") are
refused with a reason and never written anywhere; names that differ only in case never share an output
on a store that folds case."""

from __future__ import annotations

import pytest

from helpers import latest_rows, media, run_job, shrink
from pipelines import listing, storage
from pipelines.listing import SourceFile
from pipelines.restore.selection import split_clashes

pytestmark = pytest.mark.timeout(300)

HOSTILE = ["../escape.mp4", "sub/../../up.mp4", "./dot.mp4", "/lead.mp4", "faces//double.mp4"]


@pytest.mark.parametrize("rel", HOSTILE + ["a\x00b.mp4"])
def test_unsafe_keys_are_named(rel):
    assert listing.unsafe_key(rel)


@pytest.mark.parametrize("rel", ["faces/eyes.mp4", "Ünïcode [1] (copy).mp4", "a..b.mp4", "x/...mp4"])
def test_ordinary_keys_are_safe(rel):
    assert listing.unsafe_key(rel) is None


@pytest.mark.slow
def test_keys_that_climb_out_are_failed_rows_and_nothing_is_written_outside(s3_server, tmp_path):
    clip = shrink(media("lq/seedvr2_Eyes_212x120.mp4"), tmp_path / "eyes.mp4", (64, 36), 8)
    archive = s3_server.fresh("archive")
    output = s3_server.fresh("restored")
    fs, bucket_path = storage.filesystem(archive)
    bucket = bucket_path.split("/")[0]
    # put through the S3 API itself, which stores the keys as they are, as any client may
    prefix = bucket_path.split("/", 1)[1]
    for rel in ["faces/eyes.mp4", *HOSTILE]:
        fs.call_s3("put_object", Bucket=bucket, Key=f"{prefix}/{rel}", Body=clip.read_bytes())
    before = set(fs.find(bucket))

    result = run_job(archive, output)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    written = set(fs.find(bucket)) - before
    out_prefix = storage.split_url(output)[1] + "/"
    assert written and all(key.startswith(out_prefix) for key in written), sorted(written)
    assert not [key for key in written if "/../" in key or "/./" in key or "//" in key[len(bucket) + 2:]]
    latest = latest_rows(output)
    assert latest["faces/eyes.mp4"]["status"] == "done"
    for rel in HOSTILE:
        row = latest[rel]
        assert (row["status"], row["permanent"]) == ("failed", True), row
        assert row["error"].startswith(f"unsafe object key {rel!r}"), row["error"]
    # only the good video has an output
    assert [key for key in written if key.endswith(".mp4")] == [f"{out_prefix}faces/eyes.mp4"]


def test_names_differing_in_case_clash_only_where_the_output_folds_case(tmp_path, monkeypatch):
    sources = [SourceFile(url=f"/in/{rel}", rel=rel, size=1, version="1") for rel in ("Take.mp4", "take.mp4", "b.mp4")]
    keep, refused = split_clashes(sources, sources, str(tmp_path))
    assert [s.rel for s in keep] == ["Take.mp4", "take.mp4", "b.mp4"] and not refused  # Linux disks keep case
    monkeypatch.setattr(listing, "case_insensitive", lambda root: True)
    keep, refused = split_clashes(sources, sources, str(tmp_path))
    assert [s.rel for s in keep] == ["b.mp4"]
    assert [(s.rel, permanent) for s, _, permanent in refused] == [("Take.mp4", False), ("take.mp4", False)]
    assert "clashes with take.mp4" in refused[0][1]
