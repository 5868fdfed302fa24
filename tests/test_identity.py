"""A source is known by its content: a copied archive (`cp -r`: new modification times) is recognised as
done, not restored again; a source changed at the same size is redone; the store's own checksum spares
the read where both sides have one."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from helpers import read_summary, run_job, small_archive
from pipelines.restore import ledger
from pipelines.restore.rows import (CHECKSUM, CONTENT, ERROR, FINGERPRINT, PERMANENT, REL, SETTINGS, SOURCE,
                                    STATUS)
from pipelines.storage import SourceFile

pytestmark = pytest.mark.timeout(300)


def copy_like_cp_r(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=shutil.copyfile)  # cp -r: contents copied, times not
    later = time.time() + 60
    for path in dst.rglob("*"):
        os.utime(path, (later, later))


def test_an_archive_copied_with_cp_r_is_recognised_as_done(tmp_path):
    archive, output = small_archive(tmp_path / "in"), tmp_path / "out"
    first = run_job(archive, output)
    assert first.returncode == 0, first.stdout[-3000:]
    assert read_summary(output)["done"] == 1  # faces/eyes.mp4 (notes.mp4 is a bad input)

    copy_like_cp_r(archive, tmp_path / "copy")
    second = run_job(tmp_path / "copy", output)
    assert second.returncode == 0, second.stdout[-3000:]
    summary = read_summary(output)
    assert (summary["restored"], summary["recognised_copies"]) == (0, 2), (summary, second.stdout[-3000:])
    assert (summary["skipped_done"], summary["skipped_failed"]) == (1, 1)

    third = run_job(tmp_path / "copy", output)  # the new fingerprints are in the ledger now: nothing read
    summary = read_summary(output)
    assert (summary["restored"], summary["recognised_copies"], summary["skipped_done"]) == (0, 0, 1), third.stdout


def row(rel: str, fingerprint: str, *, checksum: str | None = None, content: str | None = None) -> dict:
    return {REL: rel, SOURCE: f"/old/{rel}", FINGERPRINT: fingerprint, SETTINGS: "s", STATUS: "done", ERROR: None,
            PERMANENT: False, CHECKSUM: checksum, CONTENT: content}


def outputs(*rels: str) -> list[SourceFile]:
    return [SourceFile(url=f"/out/{rel}", rel=rel, size=1, version="1") for rel in rels]


def test_the_stores_checksum_decides_without_reading():
    sources = [SourceFile(url="gs://b/a.mp4", rel="a.mp4", size=10, version="gen2", checksum="crc32c:AAA="),
               SourceFile(url="gs://b/b.mp4", rel="b.mp4", size=10, version="gen2", checksum="crc32c:BBB=")]
    latest = {"a.mp4": row("a.mp4", "10:gen1", checksum="crc32c:AAA="),
              "b.mp4": row("b.mp4", "10:gen1", checksum="crc32c:OLD=")}

    def no_reads(_sources):
        raise AssertionError("nothing should be read")

    selection = ledger.select(sources, latest, "s", outputs("a.mp4", "b.mp4"), digests=no_reads)
    assert [s.rel for s in selection.done] == ["a.mp4"] and [s.rel for s in selection.todo] == ["b.mp4"]
    assert [(s.rel, r[FINGERPRINT]) for s, r in selection.copied] == [("a.mp4", "10:gen1")]
    refreshed = ledger.recognised_rows(selection.copied, "run-2")
    assert (refreshed[0][FINGERPRINT], refreshed[0][SOURCE], refreshed[0]["run_id"]) == ("10:gen2", "gs://b/a.mp4",
                                                                                      "run-2")


def test_content_is_read_only_for_same_size_sources_with_a_new_fingerprint():
    sources = [SourceFile(url="/new/same.mp4", rel="same.mp4", size=10, version="2"),
               SourceFile(url="/new/edited.mp4", rel="edited.mp4", size=10, version="2"),
               SourceFile(url="/new/longer.mp4", rel="longer.mp4", size=11, version="2"),
               SourceFile(url="/new/untouched.mp4", rel="untouched.mp4", size=10, version="1")]
    latest = {s.rel: row(s.rel, "10:1", content=f"sha256:{s.rel}") for s in sources}
    asked = []

    def digests(unsure):
        asked.extend(s.rel for s in unsure)
        return {s.rel: "sha256:same.mp4" if s.rel == "same.mp4" else "sha256:other" for s in unsure}

    selection = ledger.select(sources, latest, "s", outputs(*(s.rel for s in sources)), digests=digests)
    assert sorted(asked) == ["edited.mp4", "same.mp4"]  # not the longer one, not the untouched one
    assert sorted(s.rel for s in selection.done) == ["same.mp4", "untouched.mp4"]
    assert sorted(s.rel for s in selection.todo) == ["edited.mp4", "longer.mp4"]
    assert [s.rel for s, _ in selection.copied] == ["same.mp4"]
