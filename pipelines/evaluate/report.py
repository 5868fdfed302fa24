"""The evaluation report: per-clip rows and per-scale means, as results.json and a Markdown table
(results.md), with the preset's margins over bicubic."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from pipelines import storage

METRICS = ("psnr", "ssim", "warp", "seconds_per_frame")
BASELINE = "bicubic"
REFERENCE = "reference"  # the row of the reference clip itself (its own warping error)


def summarise(rows: list[dict[str, Any]], preset: str) -> list[dict[str, Any]]:
    """Per (scale, method): the mean of each metric over the clips that scored, and for the preset its
    PSNR/SSIM margins over bicubic and its warping error as a multiple of bicubic's (for the reference
    too: the multiple a perfect restoration would have)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if not row.get("error"):
            groups[(int(row["scale"]), str(row["method"]))].append(row)
    summary = []
    for (scale, method), group in sorted(groups.items()):
        entry: dict[str, Any] = {"scale": scale, "method": method, "clips": len(group)}
        entry.update({m: _mean([float(r[m]) for r in group]) for m in METRICS})
        summary.append(entry)
    by_key = {(e["scale"], e["method"]): e for e in summary}
    for entry in summary:
        base = by_key.get((entry["scale"], BASELINE))
        if base is None or entry["method"] not in (preset, REFERENCE):
            continue
        entry["warp_vs_bicubic"] = entry["warp"] / base["warp"] if base["warp"] else math.nan
        if entry["method"] == preset:
            entry["psnr_margin"] = entry["psnr"] - base["psnr"]
            entry["ssim_margin"] = entry["ssim"] - base["ssim"]
    return summary


def markdown(summary: list[dict[str, Any]], rows: list[dict[str, Any]], job: dict[str, Any]) -> str:
    lines = [f"# Evaluation of `{job['preset']}`", "",
             f"Reference clips: `{job['input']}`; low-quality input: bicubic downscale"
             + ("" if job["degrade"] == "none" else f" after the `{job['degrade']}` degradation (seed {job['seed']})")
             + f"; first {job['frames']} frames" + (f", centre crop {job['crop'][0]}x{job['crop'][1]}"
                                                   if job["crop"] else "") + ".",
             "PSNR and SSIM on BT.601 luma with a border of `scale` pixels left out; warp: flow-based warping "
             "error (lower is steadier), flow from the reference; the `reference` row is the reference clip's own "
             "warping error, what a perfect restoration would score.", "",
             "| scale | method | clips | PSNR (dB) | SSIM | warp (1e-3) | s/frame | vs bicubic |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for e in summary:
        versus = ""
        if "psnr_margin" in e:
            versus = (f"{e['psnr_margin']:+.2f} dB, SSIM {e['ssim_margin']:+.4f}, "
                      f"warp x{e['warp_vs_bicubic']:.2f}")
        elif "warp_vs_bicubic" in e:
            versus = f"warp x{e['warp_vs_bicubic']:.2f}"
        lines.append(f"| x{e['scale']} | {e['method']} | {e['clips']} | {_fmt(e['psnr'], '.2f')} | "
                     f"{_fmt(e['ssim'], '.4f')} | {_fmt(1000 * e['warp'], '.3f')} | "
                     f"{_fmt(e['seconds_per_frame'], '.3f')} | {versus} |")
    lines += ["", "## Per clip", "", "| clip | scale | method | size | PSNR (dB) | SSIM | warp (1e-3) | error |",
              "|---|---:|---|---|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["rel"], r["scale"], r["method"])):
        lines.append(f"| {r['rel']} | x{r['scale']} | {r['method']} | {r['size']} | {_fmt(r['psnr'], '.2f')} | "
                     f"{_fmt(r['ssim'], '.4f')} | {_fmt(1000 * r['warp'], '.3f')} | {r['error']} |")
    return "\n".join(lines) + "\n"


def write_report(output: str, job: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write results.json and results.md under `output` (atomically); returns the JSON content."""
    # Ray Data hands missing numbers back as None: NaN here, null in the JSON
    rows = [{k: math.nan if v is None and k in METRICS else _plain(v) for k, v in r.items()} for r in rows]
    summary = summarise(rows, job["preset"])
    report = {"job": job, "summary": summary, "rows": rows}
    storage.write_bytes_atomic(storage.join(output, "results.json"), json.dumps(_json_safe(report), indent=1).encode())
    storage.write_bytes_atomic(storage.join(output, "results.md"), markdown(summary, rows, job).encode())
    return report


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones."""
    return value.item() if hasattr(value, "item") else value


def _json_safe(value: Any) -> Any:
    """NaN (a clip that failed, a one-frame warp) to null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value
