"""The checks a session with a GPU runs first, in one command of about 8 minutes, printing one table.

    python jobs/measure/gpu_session.py            # every step, on the first CUDA device
    python jobs/measure/gpu_session.py --print    # the commands only (no GPU needed)

Steps, each in a fresh process with its own time limit, so one that hangs or fails does not stop the
others: the GPU tests (`pytest -m gpu`); `jobs/measure/speed.py` (official-faithful settings against
ours at 480p x4 and 1080p x2, 4 frames each: seconds per output frame, peak GiB, denoiser MFU); the
restore job end to end on the two shipped example clips with the official preset in bf16; ten
fine-tuning steps with the DF loss back-propagating, on the GPU. The last two use a weights folder of
the official layout and shapes with random weights, written first (they time as the released ones).

A step whose packages are missing is reported as skipped with the missing names: the device machines
lent to sessions here have PyTorch but neither Ray, PyAV nor diffusers, which travel as wheels (see the
device tool's README); Ray's wheel alone is above the 64 MiB a call may carry, so the restore job and
fine-tuning need the project image (cluster/Dockerfile) or a machine with `pip install -e .`.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


class Step(NamedTuple):
    name: str
    argv: list[str]
    timeout_s: int
    needs: tuple[str, ...]  # importable modules the step needs


def steps(work: Path) -> list[Step]:
    weights, python = work / "weights", sys.executable
    model = ("torch", "diffusers", "transformers")
    return [
        Step("gpu tests", [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"], 120,
             (*model, "av", "ray")),
        Step("speed (4 frames)", [python, "jobs/measure/speed.py", "--frames", "4"], 300, model),
        Step("restore job", [python, "jobs/upscale_archive.py", "--input", "examples", "--output", str(work / "out"),
                             "--preset", "official", "--weights", str(weights), "--device", "gpu", "--scale", "2",
                             "--steps", "4"], 150, (*model, "av", "ray")),
        Step("finetune 10 steps, DF loss", [python, "jobs/finetune.py", "--data", "examples", "--storage",
                                            str(work / "runs"), "--preset", "official", "--weights", str(weights),
                                            "--use-gpu", "--workers", "1", "--steps", "10", "--frames", "8",
                                            "--crop", "128x128", "--df-mode", "paper"], 150, (*model, "av", "ray")),
    ]


def write_random_weights(folder: Path, preset_name: str = "official") -> None:
    """A weights folder of the preset's layout and shapes (star/, text/, vae/) with random weights and a
    tiny tokenizer: what the restore job and fine-tuning load, for timing only."""
    import safetensors.torch

    from star_model.presets import get_preset
    from star_model.text import build_text_model, write_tiny_tokenizer
    from star_model.unet import load_denoiser
    from star_model.vae import build_vae
    from star_model.weights_folder import DEFAULT_CHECKPOINT

    preset = get_preset(preset_name)
    (folder / "star").mkdir(parents=True, exist_ok=True)
    state = load_denoiser(preset.denoiser, None, seed=0).half().state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                                folder / "star" / f"{DEFAULT_CHECKPOINT}.safetensors")
    build_text_model(preset.text).save_pretrained(folder / "text")
    write_tiny_tokenizer(folder / "text")
    build_vae(preset.vae).save_pretrained(folder / "vae")


def missing(step: Step) -> list[str]:
    return [name for name in step.needs if importlib.util.find_spec(name) is None]


def run(step: Step) -> tuple[str, float, str]:
    """(status, seconds, the step's last lines of output)."""
    absent = missing(step)
    if absent:
        return "skipped", 0.0, f"not installed: {', '.join(absent)}"
    started = time.perf_counter()
    try:
        done = subprocess.run(step.argv, cwd=ROOT, capture_output=True, text=True, timeout=step.timeout_s)
    except subprocess.TimeoutExpired:
        return f"timeout {step.timeout_s} s", time.perf_counter() - started, ""
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
    return status, time.perf_counter() - started, "\n".join(lines[-12:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu-session-") as tmp:
        work = Path(tmp)
        plan = steps(work)
        if args.print:
            for step in plan:
                print(f"{step.name}: {' '.join(step.argv)}  (limit {step.timeout_s} s, needs {', '.join(step.needs)})")
            return 0
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: this script is for a session with a GPU (use --print to see its commands)")
            return 1
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        started = time.perf_counter()
        write_random_weights(work / "weights")
        print(f"random official weights written in {time.perf_counter() - started:.0f} s", flush=True)
        results = []
        for step in plan:
            status, seconds, tail = run(step)
            results.append((step.name, status, seconds))
            print(f"--- {step.name}: {status} in {seconds:.0f} s\n{tail}", flush=True)
    print("\n| step | result | seconds |\n|---|---|---:|")
    for name, status, seconds in results:
        print(f"| {name} | {status} | {seconds:.0f} |")
    return 0 if all(status in ("ok", "skipped") for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
