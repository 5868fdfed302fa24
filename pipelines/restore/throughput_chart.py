"""The report's throughput chart (report.py): frames finished since the run started, as an inline SVG
(no script, no external resource). Drawn from two columns of the run's ledger rows, so a million
videos cost a sort and a few hundred points."""

from __future__ import annotations

import math
import numpy as np

WIDTH, HEIGHT = 960, 300
LEFT, RIGHT, TOP, BOTTOM = 76, 24, 16, 44  # margins for the axes' labels
POINTS = 400  # the line's samples, whatever the number of videos


DAY = 86400
# Steps of the time axis, in seconds: round on a clock, then whole days (a million videos take weeks)
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
              *(days * DAY for days in (1, 2, 5, 10, 20, 50)))


def nice_ticks(maximum: float, count: int = 5, steps: tuple[float, ...] = ()) -> list[float]:
    """0 and multiples of a round step up to at least `maximum`, about `count` of them: the first of
    `steps` that is large enough, else 1, 2 or 5 times a power of ten."""
    if maximum <= 0:
        return [0.0, 1.0]
    raw = maximum / count
    power = 10 ** math.floor(math.log10(raw))
    step = next((s for s in steps if s >= raw), None) or next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(maximum / step - 1e-9) + 1)]


def _clock(seconds: float, step: float) -> str:
    """A time axis label, in the unit its step is round in."""
    if step < 60:
        return f"{seconds:g} s"
    if step < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h" if step < DAY else f"{seconds / DAY:g} d"


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


def throughput_svg(seconds: np.ndarray, frames: np.ndarray, run_seconds: float) -> str:
    """The SVG of frames finished against time: `seconds` after the run's start that each video finished,
    `frames` its frames; the time axis spans the run (`run_seconds`)."""
    order = np.argsort(seconds, kind="stable")
    at = np.asarray(seconds, float)[order]
    total = np.concatenate([[0.0], np.cumsum(np.asarray(frames, float)[order])])  # after 0, 1, ... videos
    span = max(run_seconds, float(at[-1]) if len(at) else 0.0, 1e-3)
    grid = np.linspace(0.0, span, POINTS)
    level = total[np.searchsorted(at, grid, side="right")]
    x_ticks, y_ticks = nice_ticks(span, steps=TIME_STEPS), nice_ticks(float(total[-1]))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(value: float) -> float:
        return LEFT + plot_w * value / x_ticks[-1]

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / y_ticks[-1])

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
             f'aria-label="frames finished over the run">']
    for value in y_ticks:
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" class="grid"/>'
                     f'<text x="{LEFT - 8}" y="{y(value) + 4:.1f}" text-anchor="end">{_count(value)}</text>')
    for value in x_ticks:
        parts.append(f'<line x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{TOP}" y2="{TOP + plot_h}" class="grid"/>'
                     f'<text x="{x(value):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{_clock(value, x_ticks[1])}</text>')
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(grid, level))
    parts += [f'<polygon points="{x(0):.1f},{y(0):.1f} {line} {x(grid[-1]):.1f},{y(0):.1f}" class="area"/>',
              f'<polyline points="{line}" class="line"/>',
              f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle">time since the run started'
              f'</text>',
              f'<text x="14" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" '
              f'transform="rotate(-90 14 {TOP + plot_h / 2:.0f})">frames finished</text>',
              "</svg>"]
    return "\n".join(parts)
