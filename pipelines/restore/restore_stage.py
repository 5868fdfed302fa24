"""Restore stage of the restore job (one GPU per actor): decode a window from storage, run STAR on it
and write the restored frames as a segment into the staging area (`media.frames.write_segment`). Only
a small row leaves the actor; frames never travel through Ray's object store.

An actor takes `WINDOWS_IN_FLIGHT` windows at once, each on its own thread (Ray Data's threaded
actors), and only the model's work is one at a time: while the model restores one window, the next
is decoded or the last one's segment encoded, so the GPU does not wait for the CPU's media work. At
most that many windows are in host memory. A window whose earlier tries died with their actor
(`window_attempts`) is restored alone in its actor, and fails at once after `ACTOR_KILLS` of them."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from fractions import Fraction
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch

from pipelines import storage
from pipelines.media.segments import write_segment
from pipelines.media.interlace import read_pictures
from pipelines.media.video_info import BadVideo
from pipelines.restore import metrics
from pipelines.restore.faults import DECODE_SECONDS_PER_FRAME, READ_BASE_SECONDS, run_with_limit
from pipelines.restore.layout import segment_url
from pipelines.restore import window_attempts
from pipelines.restore.rows import (DEINTERLACE, DEVICE, DONE, END, ERROR, FAILED, FIELD_ORDER, FPS, FRAMES, LOSSLESS,
                                    MODEL_SCALE, PENDING, PERMANENT, PROMPT, REL, REUSED, SECONDS, SEGMENT, SOURCE,
                                    STAGING, START, START_PTS, STATUS, WINDOW_INDEX, window_seed)
from pipelines.weights import local_copy
from star_model.scaled import ScaledRestorers

log = logging.getLogger(__name__)

WINDOWS_IN_FLIGHT = 2  # per actor: one in the model, one being decoded or encoded beside it


class RestoreWindows:
    """Ray Data actor: `__init__` loads the model once, `__call__` restores a batch of window rows.

    In: window rows (see `plan_stage.plan_video`). Out: the same rows with `status` done or failed,
    `error`, `permanent`, `segment`, `seconds`, `reused`, `device`. Rows that arrive failed pass through.
    """

    def __init__(self, preset: str, weights: str | None, scale: int, steps: int | None, checkpoint: str,
                 run_id: str) -> None:
        # Random-weight presets are seeded (load_denoiser, build_vae, build_text_model): every actor of
        # every run builds the same model, so windows restored by different actors (or by a run that
        # resumes a killed one) belong together.
        # A bucket folder is copied to this node once (the node's actors share the copy).
        local = local_copy(weights) if weights is not None else None
        # by model scale: --scale's, loaded here; with --size each video has its own (a ledger column)
        self.restorers = ScaledRestorers(preset, local, checkpoint=checkpoint, steps=steps)
        first = self.restorers(scale)
        self.base_seed = first.config.seed
        self.device = first.device.type
        self.model = threading.Lock()  # one window at a time in the model (its memory plan is for one)
        self.model_seconds = 0.0  # time in the model, summed over windows (for jobs/measure/overlap.py)
        self.run_id = run_id
        # Outside Ray (jobs/measure/overlap.py calls `restore` itself) there is no node and no restart.
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        # Windows in this actor now, and whether one runs alone (a suspect: its earlier tries died).
        self.calls = threading.Condition()
        self.running = 0
        self.alone = False

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame([self.restore(row) for row in batch.to_dict("records")])

    def restore(self, row: dict[str, Any]) -> dict[str, Any]:
        if row[STATUS] != PENDING:
            return row
        segment = segment_url(row[STAGING], int(row[WINDOW_INDEX]))
        row = {**row, SEGMENT: segment, DEVICE: self.device}
        # A segment is written atomically, so one that exists is whole: an earlier run that was
        # killed (or a retried task) already restored this window with the same seed.
        if storage.exists(segment):
            metrics.window_finished("reused")
            return {**row, STATUS: DONE, REUSED: True}
        earlier = window_attempts.earlier_kills(segment, self.run_id)
        if len(earlier) >= window_attempts.ACTOR_KILLS:
            metrics.failure("restore", False)  # retried next run: permanent only if it repeats (outcome.failure)
            metrics.window_finished(FAILED)
            return {**row, STATUS: FAILED, ERROR: window_attempts.KILLED_REASON, PERMANENT: False, SECONDS: 0.0}
        with self._inside(alone=bool(earlier)):
            window_attempts.started(segment, self.run_id, self.node, earlier)
            outcome, seconds = self._restore(row, segment)
            window_attempts.ended(segment)
        if outcome[STATUS] == DONE:
            metrics.window_restored(int(row[END]) - int(row[START]), seconds, self.device)
        else:
            metrics.failure("restore", outcome.get(PERMANENT, False))
        metrics.window_finished(outcome[STATUS])
        return {**row, **outcome, SECONDS: seconds}

    @contextlib.contextmanager
    def _inside(self, alone: bool) -> Iterator[None]:
        """Hold one of the actor's window slots; `alone`: the only one (no other window may start or
        be running), so that if the actor dies again, this window alone killed it."""
        with self.calls:
            self.calls.wait_for(lambda: not self.alone and (not alone or self.running == 0))
            self.running += 1
            self.alone = alone
        try:
            yield
        finally:
            with self.calls:
                self.running -= 1
                self.alone = False
                self.calls.notify_all()

    def _restore(self, row: dict[str, Any], segment: str) -> tuple[dict[str, Any], float]:
        """(outcome columns, seconds) of decoding, restoring and writing one window."""
        started = time.perf_counter()
        try:
            limit = READ_BASE_SECONDS + DECODE_SECONDS_PER_FRAME * (int(row[END]) - int(row[START]))
            frames_fhwc_u8 = run_with_limit(limit, f"decoding window {row[WINDOW_INDEX]}", _read_window, row)
            seed = window_seed(row[REL], int(row[START]), int(row[END]), self.base_seed)
            with self.model:
                entered = time.perf_counter()
                restorer = self.restorers(int(row[MODEL_SCALE]))
                restored_fhwc_u8 = restorer(frames_fhwc_u8, row[PROMPT], seed=seed)
                self.model_seconds += time.perf_counter() - entered
            del frames_fhwc_u8
            write_segment(restored_fhwc_u8, segment, Fraction(row[FPS]), lossless=bool(row[LOSSLESS]))
            outcome = {STATUS: DONE}
        except BadVideo as e:  # the source is damaged in this window
            outcome = {STATUS: FAILED, ERROR: e.reason, PERMANENT: True}
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()  # the next window must not inherit the fragments
            outcome = {STATUS: FAILED, ERROR: f"out of GPU memory ({e}); set a smaller window or tile"}
        except Exception as e:  # noqa: BLE001 - recorded in the ledger, the other windows go on
            log.warning("window %s of %s failed", row[WINDOW_INDEX], row[SOURCE], exc_info=True)
            outcome = {STATUS: FAILED, ERROR: f"{type(e).__name__}: {e}"}
        return outcome, time.perf_counter() - started


def _read_window(row: dict[str, Any]) -> np.ndarray:
    with storage.open_input(row[SOURCE]) as f:
        return read_pictures(f, int(row[START]), int(row[END]), start_pts=int(row[START_PTS]),
                             mode=row[DEINTERLACE] or None, field_order=row[FIELD_ORDER], pictures=int(row[FRAMES]))
