"""Per-video prompts: the text STAR restores each video with. A video's prompt is, first found:

1. its line in the --prompts file: CSV (`rel,prompt`, a header row of those names optional) or JSON
   Lines (`{"rel": "tapes/a.mp4", "prompt": "..."}`), `rel` being the path below the input root;
2. its sidecar, `<name>.<ext>.txt` beside it (UTF-8; surrounding white space dropped; an empty one
   is no prompt), named with the video's extension so that `clip.mp4` and `clip.mkv` side by side
   each have their own;
3. the job's --prompt.

A prompt of its own gives a video its own settings key (`RestoreRun.key_for`): changing a sidecar or a
line redoes that video only. Sidecars are read on every run (in parallel: one small read per video that
has one), since what they say decides which videos are done.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pipelines import storage
from pipelines.listing import SourceFile

log = logging.getLogger(__name__)

_READ_THREADS = 32  # sidecars are tiny: the reads are latency, not bandwidth


def read_prompts(url: str) -> dict[str, str]:
    """{rel: prompt} of a --prompts file; ValueError naming the line for anything else (a line that is
    not a pair, a name given two different prompts)."""
    try:
        text = storage.read_bytes(url).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--prompts {url}: cannot be read as UTF-8 text ({e})") from None
    jsonl = text.lstrip().startswith("{")
    pairs = _json_lines(url, text) if jsonl else _csv_rows(url, text)
    prompts: dict[str, str] = {}
    for line, rel, prompt in pairs:
        if prompts.get(rel, prompt) != prompt:
            raise ValueError(f"--prompts {url}, line {line}: {rel!r} is given a second, different prompt")
        prompts[rel] = prompt
    return prompts


def with_prompts(sources: Sequence[SourceFile], prompts_file: str | None, default: str) -> list[SourceFile]:
    """`sources` with each one's `prompt` set (see the module's order); a --prompts line naming no
    listed video is logged (the file may name videos since removed)."""
    given = read_prompts(prompts_file) if prompts_file is not None else {}
    unknown = given.keys() - {s.rel for s in sources}
    if unknown:
        log.warning("--prompts %s names %d videos that are not under the input, e.g. %s", prompts_file,
                    len(unknown), ", ".join(sorted(unknown)[:3]))
    sidecars = [s for s in sources if s.sidecar and s.rel not in given]
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        read = dict(zip((s.rel for s in sidecars), pool.map(_sidecar, sidecars)))
    return [dataclasses.replace(s, prompt=given.get(s.rel) or read.get(s.rel) or default) for s in sources]


def _sidecar(source: SourceFile) -> str:
    """The sidecar's prompt, "" when it is empty or cannot be read (logged: the video then restores
    with the job's prompt, and a later run that reads it redoes the video with its own)."""
    try:
        return storage.read_bytes(source.sidecar).decode("utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as e:
        log.warning("prompt file %s cannot be read (%s): %s is restored with the job's prompt", source.sidecar, e,
                    source.rel)
        return ""


def _json_lines(url: str, text: str) -> list[tuple[int, str, str]]:
    pairs = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            entry = json.loads(content)
            rel, prompt = entry["rel"], entry["prompt"]
        except (ValueError, TypeError, KeyError):
            raise ValueError(f'--prompts {url}, line {line}: need {{"rel": "...", "prompt": "..."}}') from None
        if not isinstance(rel, str) or not isinstance(prompt, str):
            raise ValueError(f"--prompts {url}, line {line}: rel and prompt must be strings")
        pairs.append((line, rel, prompt.strip()))
    return pairs


def _csv_rows(url: str, text: str) -> list[tuple[int, str, str]]:
    pairs = []
    reader = csv.reader(io.StringIO(text))
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise ValueError(f"--prompts {url}, line {line}: need two columns, rel and prompt (quote a prompt "
                             f"with commas), got {len(row)}")
        if line == 1 and [cell.strip().lower() for cell in row] == ["rel", "prompt"]:
            continue  # the header
        pairs.append((line, row[0].strip(), row[1].strip()))
    return pairs
