"""The running log line of the restore job (issue 26 point 6): videos and frames left, and the time
left at the rate of the last minutes."""

from __future__ import annotations

from pipelines.restore.rows import (DEVICE, DONE, ERROR, FAILED, FRAMES, OUTPUT, REL, RESTORE_SECONDS, SOURCE,
                                    STATUS, WINDOWS, WINDOWS_REUSED)
from pipelines.restore.summary import RATE_SECONDS, RunStats


def video(rel: str, frames: int, status: str = DONE) -> dict:
    return {REL: rel, SOURCE: f"/in/{rel}", STATUS: status, FRAMES: frames, OUTPUT: f"/out/{rel}",
            ERROR: None if status == DONE else "bad", WINDOWS: 1, WINDOWS_REUSED: 0, RESTORE_SECONDS: 1.0,
            DEVICE: "cpu"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_line_says_what_is_left_and_when_it_ends():
    clock = Clock()
    stats = RunStats(5, clock=clock)
    clock.now = 100.0
    line = stats.add(video("a.mp4", 100))  # 1 frame/s since the start
    assert line.endswith("| 4 videos left (about 400 frames), about 0:06:40 left at the last 5 minutes' rate")
    clock.now = 150.0
    line = stats.add(video("b.mp4", 100))  # 2 frames/s since a finished
    assert "3 videos left (about 300 frames), about 0:02:30 left" in line
    clock.now = 150.0 + RATE_SECONDS + 10
    line = stats.add(video("c.mp4", 300, FAILED))  # slower now, and the window has moved on past a
    # mean 500/3 frames a video; the window holds b and c: 300 frames in 310 s
    assert "2 videos left (about 333 frames), about 0:05:44 left" in line
    clock.now += 1
    stats.add(video("d.mp4", 10))
    assert stats.add(video("e.mp4", 10)).endswith("| nothing left")
