"""The evaluation report: per-clip rows and the means per scale and input condition, as results.json and a
Markdown table (results.md), with the preset's margins over bicubic and Lanczos."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from pipelines import storage
from pipelines.evaluate.methods import CONDITIONS

METRICS = ("psnr", "ssim", "vmaf", "vmaf_neg", "warp", "seconds_per_frame")
BASELINE = "bicubic"
SECOND_BASELINE = "lanczos"  # what `ffmpeg -vf scale=...:flags=lanczos` gives a user
REFERENCE = "reference"  # the row of the reference clip itself (its own warping error)


def summarise(rows: list[dict[str, Any]], preset: str) -> list[dict[str, Any]]:
    """Per (scale, condition, method): the mean of each metric over the clips that scored, and for the
    preset its PSNR/SSIM/VMAF-NEG margins over bicubic, its PSNR and VMAF-NEG margins over Lanczos, and
    its warping error as a multiple of bicubic's (for the reference too: the multiple a perfect
    restoration would have)."""
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if not row.get("error"):
            groups[(int(row["scale"]), str(row["condition"]), str(row["method"]))].append(row)
    order = {name: i for i, name in enumerate(CONDITIONS)}
    summary = []
    for (scale, condition, method), group in sorted(groups.items(),
                                                    key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][2])):
        entry: dict[str, Any] = {"scale": scale, "condition": condition, "method": method, "clips": len(group)}
        entry.update({m: _mean([float(r[m]) for r in group]) for m in METRICS})
        summary.append(entry)
    by_key = {(e["scale"], e["condition"], e["method"]): e for e in summary}
    for entry in summary:
        base = by_key.get((entry["scale"], entry["condition"], BASELINE))
        if base is None or entry["method"] not in (preset, REFERENCE):
            continue
        entry["warp_vs_bicubic"] = entry["warp"] / base["warp"] if base["warp"] else math.nan
        if entry["method"] == preset:
            for metric in ("psnr", "ssim", "vmaf_neg"):
                entry[f"{metric}_margin"] = entry[metric] - base[metric]
            second = by_key.get((entry["scale"], entry["condition"], SECOND_BASELINE))
            if second is not None:
                entry["psnr_vs_lanczos"] = entry["psnr"] - second["psnr"]
                entry["vmaf_neg_vs_lanczos"] = entry["vmaf_neg"] - second["vmaf_neg"]
    return summary


def markdown(summary: list[dict[str, Any]], rows: list[dict[str, Any]], job: dict[str, Any]) -> str:
    conditions = "; ".join(f"`{c}` ({CONDITIONS[c][0]}): {CONDITIONS[c][1]}" for c in job["conditions"] if c in CONDITIONS)
    lines = [f"# Evaluation of `{job['preset']}`", "",
             f"Reference clips: `{job['input']}`; first {job['frames']} frames"
             + (f", centre crop {job['crop'][0]}x{job['crop'][1]}" if job["crop"] else "") + f"; seed {job['seed']}.",
             f"Input conditions: {conditions}.",
             "PSNR and SSIM on BT.601 luma with a border of `scale` pixels left out; VMAF and VMAF-NEG (v0.6.1 model, "
             "not clipped) on the luma of whole frames; warp: flow-based warping error (lower is steadier), flow "
             "from the reference; the `reference` row is the reference clip's own warping error, what a perfect "
             "restoration would score. Margins: the preset against bicubic (and Lanczos) on the same input.", "",
             "| scale | condition | method | clips | PSNR (dB) | SSIM | VMAF | VMAF-NEG | warp (1e-3) | s/frame "
             "| vs bicubic | vs lanczos |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for e in summary:
        versus = lanczos = ""
        if "psnr_margin" in e:
            versus = (f"{e['psnr_margin']:+.2f} dB, SSIM {e['ssim_margin']:+.4f}, VMAF-NEG {e['vmaf_neg_margin']:+.2f}, "
                      f"warp x{e['warp_vs_bicubic']:.2f}")
        elif "warp_vs_bicubic" in e:
            versus = f"warp x{e['warp_vs_bicubic']:.2f}"
        if "psnr_vs_lanczos" in e:
            lanczos = f"{e['psnr_vs_lanczos']:+.2f} dB, VMAF-NEG {e['vmaf_neg_vs_lanczos']:+.2f}"
        lines.append(f"| x{e['scale']} | {e['condition']} | {e['method']} | {e['clips']} | {_fmt(e['psnr'], '.2f')} | "
                     f"{_fmt(e['ssim'], '.4f')} | {_fmt(e['vmaf'], '.2f')} | {_fmt(e['vmaf_neg'], '.2f')} | "
                     f"{_fmt(1000 * e['warp'], '.3f')} | {_fmt(e['seconds_per_frame'], '.3f')} | {versus} | {lanczos} |")
    lines += ["", "## Per clip", "",
              "| clip | scale | condition | method | size | PSNR (dB) | SSIM | VMAF-NEG | warp (1e-3) | error |",
              "|---|---:|---|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["rel"], r["scale"], r["condition"], r["method"])):
        lines.append(f"| {r['rel']} | x{r['scale']} | {r['condition']} | {r['method']} | {r['size']} | "
                     f"{_fmt(r['psnr'], '.2f')} | {_fmt(r['ssim'], '.4f')} | {_fmt(r['vmaf_neg'], '.2f')} | "
                     f"{_fmt(1000 * r['warp'], '.3f')} | {r['error']} |")
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
