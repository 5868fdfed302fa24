"""A Ray worker setup hook for tests (`runtime_env={"worker_process_setup_hook": "poison_hook.install"}`):
a restore actor that reaches a window of the source whose path ends with $STAR_TEST_POISON exits its
process on the spot, as a crash in a decoder or the kernel's out-of-memory killer would end it."""

from __future__ import annotations

import os
from typing import Any


def install() -> None:
    from pipelines.restore import restore_stage  # in the worker, after Ray set up its paths

    poison = os.environ["STAR_TEST_POISON"]
    read_window = restore_stage._read_window

    def poisoned(row: dict[str, Any]):
        if row["source"].endswith(poison):
            os._exit(1)  # no cleanup, no exception: the process is gone mid-window
        return read_window(row)

    restore_stage._read_window = poisoned
