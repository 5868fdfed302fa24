"""Every path the restore job writes under its output root, in one place: the restored videos (the
input's layout), the ledger and its side folders, the leases and heartbeats, and the staging area.

    <output>/<rel without extension>.mp4|.mkv         restored videos
    <output>/_ledger/videos/                           the ledger's video rows (ledger.py)
    <output>/_ledger/_history/                         rows a newer one replaced
    <output>/_ledger/_windows/                         one row per window
    <output>/_ledger/_previews/<rel>.png               before/after still per restored video
    <output>/_ledger/_corrupt/                         ledger files that could not be read, set aside
    <output>/_ledger/summary.json                      the latest run's counts
    <output>/_ledger/report.html                       the latest run's page to look at (report.py)
    <output>/_ledger/_outputs_checked.json             which batch of outputs the next run checks (outputs.py)
    <output>/_ledger/_runs/<run id>.json               run heartbeats (lease.py)
    <output>/_ledger/_leases/<key of rel>/<gen>.json   per-video leases (lease.py)
    <output>/_staging/<video id>/<version>/window_<n>.mkv   restored windows awaiting assembly
    <output>/_samples/<settings key>/<excerpt>/        a sample run's own layout, all of the above (samples.py)
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass

from pipelines import storage
from pipelines.restore.rows import video_id

# A folder of the user's with the same name as one of these is the user's: only files laid out as the
# job lays out its own staging segments (`STAGING_SEGMENT`) are skipped when an input is listed, so an
# output folder's staging segments are never taken for new sources; nothing under _ledger is a video.
LEDGER_FOLDER, STAGING_FOLDER, SAMPLES_FOLDER = "_ledger", "_staging", "_samples"
STAGING_SEGMENT = re.compile(rf"(^|/){STAGING_FOLDER}/[0-9a-f]{{16}}/[0-9a-f]{{16}}/window_\d{{5}}\.mkv$")

def lease_key(rel: str) -> str:
    """A lease's folder name: by `rel`, like the ledger, so runs that name the archive by other URLs
    (another mount, a copied bucket) still meet on the same lease."""
    return hashlib.sha1(rel.encode()).hexdigest()[:20]


def segment_url(staging: str, window_index: int) -> str:
    """The restored window `window_index` in a video's staging folder (`OutputLayout.staging_folder`)."""
    return storage.join(staging, f"window_{window_index:05d}.mkv")


@dataclass(frozen=True)
class OutputLayout:
    """The paths under one output root (a local folder or a bucket URL)."""

    root: str

    def _ledger(self, *parts: str) -> str:
        return storage.join(self.root, LEDGER_FOLDER, *parts)

    @property
    def videos(self) -> str:
        return self._ledger("videos")

    @property
    def history(self) -> str:
        return self._ledger("_history")

    @property
    def window_rows(self) -> str:
        return self._ledger("_windows")

    @property
    def corrupt(self) -> str:
        return self._ledger("_corrupt")

    @property
    def summary(self) -> str:
        return self._ledger("summary.json")

    @property
    def report(self) -> str:
        return self._ledger("report.html")

    @property
    def outputs_cursor(self) -> str:
        return self._ledger("_outputs_checked.json")

    @property
    def staging(self) -> str:
        """<output>/_staging: the restored windows of every video not yet assembled."""
        return storage.join(self.root, STAGING_FOLDER)

    def preview(self, rel: str) -> str:
        return self._ledger("_previews", posixpath.splitext(rel)[0] + ".png")

    def run_file(self, run_id: str) -> str:
        return self._ledger("_runs", f"{run_id}.json")

    def lease_folder(self, rel: str) -> str:
        return self._ledger("_leases", lease_key(rel))

    def output_stem(self, rel: str) -> str:
        """<output>/<rel without extension>; the scenes stage adds ".mp4" or ".mkv"."""
        return storage.join(self.root, posixpath.splitext(rel)[0])

    def video_staging(self, video: str) -> str:
        """<output>/_staging/<video id>: every staging folder of one video, whatever its version."""
        return storage.join(self.staging, video)

    def staging_folder(self, source_url: str, fingerprint: str, settings_key: str) -> str:
        """<output>/_staging/<video id>/<hash of fingerprint and settings>: a changed source or changed
        settings never reuse segments restored from the old ones."""
        version = hashlib.sha1(f"{fingerprint}|{settings_key}".encode()).hexdigest()[:16]
        return storage.join(self.video_staging(video_id(source_url)), version)
