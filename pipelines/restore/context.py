"""One run of the restore job as its stages see it (`RestoreRun`): where it writes, who it is, the
settings its outputs are made with and when it read the ledger. Made once by the driver and handed to
every stage that records, claims or stages anything."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from pipelines.restore.layout import OutputLayout


def new_run_id() -> str:
    """"<UTC time>-<6 hex digits>": sorts by start time, unique across machines."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RestoreRun:
    """A run's context: small and picklable, so it travels to the Ray tasks as it is."""

    layout: OutputLayout  # every path under the output root
    run_id: str
    settings: str  # the settings key (`ArchiveJob.settings_key`): the ledger's `settings` column
    read_at: datetime  # when the run read the ledger: a video finished elsewhere since is not claimed
    square_pixels: bool = False  # outputs resampled to square pixels (the job's --square-pixels)
    name: str = ""  # the run's name (`ArchiveJob.run_label`): earlier tries of the same name are taken over

    def done_key(self, fingerprint: str) -> str:
        """What a finished video was finished for, in its lease record (`lease.record_finished`)."""
        return f"{fingerprint}|{self.settings}"

    def staging_folder(self, source_url: str, fingerprint: str) -> str:
        """This run's staging folder for one version of a source (`OutputLayout.staging_folder`)."""
        return self.layout.staging_folder(source_url, fingerprint, self.settings)
