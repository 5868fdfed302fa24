"""One run of the restore job as its stages see it (`RestoreRun`): where it writes, who it is, the
settings its outputs are made with and when it read the ledger. Made once by the driver and handed to
every stage that records, claims or stages anything."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pipelines.media.output_format import OutputFormat
from pipelines.media.target_size import TargetSize
from pipelines.restore.layout import OutputLayout
from pipelines.restore.rows import PROMPT
from pipelines.restore.samples import Sample


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
    output_format: OutputFormat = OutputFormat()  # the job's --codec, --crf, --prores-profile
    target: TargetSize | None = None  # the job's --size or --height; None: delivered at the model's scale
    prompt: str = ""  # the job's --prompt: a video with a prompt of its own (prompts.py) has its own key
    sample: Sample | None = None  # a sample run's excerpt of every video (--sample; samples.py), else None

    def key_for(self, prompt: str) -> str:
        """The settings key of a video restored with `prompt`: the run's, or for a prompt of the video's
        own (a --prompts file, a sidecar), the run's key and that prompt hashed together."""
        if prompt == self.prompt:
            return self.settings
        return hashlib.sha1(f"{self.settings}|prompt={prompt}".encode()).hexdigest()[:12]

    def for_video(self, row: Mapping[str, Any]) -> RestoreRun:
        """This run as one video's rows see it: with that video's settings key (`key_for` its prompt)."""
        key = self.key_for(row.get(PROMPT, self.prompt))
        return self if key == self.settings else dataclasses.replace(self, settings=key)

    def done_key(self, fingerprint: str) -> str:
        """What a finished video was finished for, in its lease record (`lease.record_finished`)."""
        return f"{fingerprint}|{self.settings}"

    def staging_folder(self, source_url: str, fingerprint: str) -> str:
        """This run's staging folder for one version of a source (`OutputLayout.staging_folder`)."""
        return self.layout.staging_folder(source_url, fingerprint, self.settings)
