"""Every job command the project writes down (KubeRay manifests, the image's Dockerfile, the READMEs)
names a script of the checkout and arguments its real argparse accepts, each flag spelled in full."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_files import (DOCKERFILE, RAY_ACCELERATORS, RAY_KINDS, README, REPO, TOP_README, manifests, pod_specs,
                           shell_words)
from helpers import load_job


def project_dir_in_image() -> str:
    """Where cluster/Dockerfile puts the checkout (the destination of its COPY of the build context)."""
    copy_line = re.search(r"^COPY\s+(?:--\S+\s+)*\.\s+(\S+)\s*$", DOCKERFILE.read_text(), re.M)
    assert copy_line, "cluster/Dockerfile must COPY the build context (.) to the project directory"
    return copy_line.group(1).rstrip("/")


def job_calls(words: list[str]) -> list[tuple[str, list[str]]]:
    """(script, argv) of each `python .../jobs/X.py ARGS` in a command, ARGS ending at a shell operator."""
    calls = []
    for i, word in enumerate(words[:-1]):
        script = words[i + 1]
        if re.fullmatch(r"python3?", word) and re.search(r"(^|/)jobs/(\w+/)?\w+\.py$", script):
            argv = []
            for w in words[i + 2:]:
                if re.fullmatch(r"[;&|<>]+", w):
                    break
                argv.append(w)
            calls.append((script, argv))
    return calls


def logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def job_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, argv) of every job command in the manifests, the Dockerfile and the README."""
    found = []
    for name, docs in manifests().items():
        for d in docs:
            if d["kind"] in RAY_KINDS:
                spec = d["spec"]["jobTemplate"] if d["kind"] == "RayCronJob" else d["spec"]
                found += [(f"{name} entrypoint", *c) for c in job_calls(shell_words(spec["entrypoint"]))]
    for where, spec in pod_specs().items():
        for c in spec.get("initContainers", []) + spec["containers"]:
            words = c.get("command", []) + c.get("args", [])
            if words[:2] in (["sh", "-c"], ["bash", "-c"]):
                words = shell_words(" ".join(words[2:]))
            found += [(f"{where} container {c['name']}", *call) for call in job_calls(words)]
    dockerfile = [line for line in logical_lines(DOCKERFILE.read_text()) if not line.lstrip().startswith("#")]
    sources = [("Dockerfile", dockerfile)]
    for readme in (README, TOP_README):  # fenced blocks only
        readme_code = re.findall(r"^```\w*\n(.*?)^```", readme.read_text(), re.S | re.M)
        sources.append((str(readme.relative_to(REPO)), logical_lines("\n".join(readme_code))))
    for where, lines in sources:
        for line in lines:
            found += [(where, *c) for c in job_calls(shell_words(line.split(" #")[0]))]
    for step in load_job("measure/gpu_session").steps(Path("/tmp/gpu-session")):  # the GPU session's own
        if step.argv[1] != "-m":  # python -m pytest
            found.append((f"gpu_session step {step.name}", step.argv[1], step.argv[2:]))
    return found


def script_in_repo(script: str) -> Path:
    """The checkout's file for a script path as a command names it (relative, or absolute in the image)."""
    image_dir = project_dir_in_image() + "/"
    relative = script[len(image_dir):] if script.startswith(image_dir) else script
    assert not relative.startswith("/"), f"{script}: absolute paths must be under {image_dir}"
    return REPO / relative


# Runs each script's own argparse on each argv, in one interpreter: the script's parser is built as
# the script builds it, then parse_args is redirected to the argv under test and stopped right after
# parsing, before the script does any work.
ARGPARSE_PROBE = r"""
import argparse, contextlib, io, json, runpy, sys
real = argparse.ArgumentParser.parse_args
class Parsed(BaseException):
    pass
results = []
for script, argv in json.load(sys.stdin):
    def parse_args(self, args=None, namespace=None, _argv=argv):
        options.extend(self._option_string_actions)
        for action in self._actions:  # the options of each command too (convert --dtype, ...)
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    options.extend(command._option_string_actions)
        raise Parsed(vars(real(self, _argv)))
    argparse.ArgumentParser.parse_args = parse_args
    err, options = io.StringIO(), []
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            sys.argv = [script, *argv]
            runpy.run_path(script, run_name="__main__")
        results.append({"ok": False, "error": "the script never parsed its arguments"})
    except Parsed as parsed:
        results.append({"ok": True, "args": parsed.args[0], "options": options})
    except SystemExit as e:  # argparse: 0 after --help, 2 with the reason on stderr
        results.append({"ok": e.code in (0, None), "error": err.getvalue().strip()[-400:]})
print(json.dumps(results, default=str))
"""


def full_name_problems(argv: list[str], options: list[str]) -> list[str]:
    """Flags written other than as the parser spells them (argparse would accept a prefix)."""
    return [a for a in argv if a.startswith("--") and a.split("=")[0] not in options]


def parse_with_the_scripts(cases: list[tuple[Path, list[str]]]) -> list[dict]:
    run = subprocess.run([sys.executable, "-c", ARGPARSE_PROBE], input=json.dumps([(str(s), a) for s, a in cases]),
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


# Deliberately wrong commands: the probe must refuse each (an unknown flag, a bad choice, a missing
# required flag, a non-integer).
BAD_ARGV = [
    ("jobs/upscale_archive.py", ["--input", "gs://a/raw", "--output", "gs://a/out", "--accelerator-kind", "L4"]),
    ("jobs/upscale_archive.py", ["--input", "gs://a/raw", "--output", "gs://a/out", "--device", "tpu"]),
    ("jobs/upscale_archive.py", ["--input", "gs://a/raw"]),
    ("jobs/upscale_archive.py", ["--input", "gs://a/raw", "--output", "gs://a/out", "--actors", "eight"]),
    ("jobs/fetch_weights.py", ["--dest", "gs://a/w", "--checkpoint", "medium_deg"]),
    ("jobs/fetch_weights.py", ["--checkpoint", "light_deg"]),
]


@pytest.fixture(scope="module")
def parsed_commands():
    """{(where, script, argv): result} for every job command, plus the deliberately bad ones."""
    calls = job_commands()
    cases = [(script_in_repo(s), a) for _, s, a in calls] + [(REPO / s, a) for s, a in BAD_ARGV]
    results = parse_with_the_scripts(cases)
    return dict(zip([(w, s, tuple(a)) for w, s, a in calls], results)), results[len(calls):]


@pytest.mark.slow
def test_commands_name_real_scripts_and_arguments(parsed_commands):
    by_call, _ = parsed_commands
    wheres = {w.split(" ")[0] for w, _, _ in by_call}
    assert {"rayjob.yaml", "raycronjob.yaml", "Dockerfile", "cluster/README.md", "README.md"} <= wheres
    assert {Path(s).name for _, s, _ in by_call} >= {"upscale_archive.py", "fetch_weights.py"}
    assert any(w.startswith("Job ") for w, _, _ in by_call), "the weights Job's command"
    for (where, script, argv), result in by_call.items():
        assert script_in_repo(script).is_file(), f"{where}: {script} is not in the checkout"
        assert result["ok"], f"{where}: {script} {' '.join(argv)}: {result.get('error')}"
        if "options" in result:  # not after --help
            abbreviated = full_name_problems(argv, result["options"])
            assert not abbreviated, f"{where}: {abbreviated} are not the parser's full option names"
        accel = result.get("args", {}).get("accelerator_type")
        assert accel is None or accel in RAY_ACCELERATORS, f"{where}: --accelerator-type {accel}"


def test_the_argparse_probe_refuses_bad_commands(parsed_commands):
    by_call, bad = parsed_commands
    for (script, argv), result in zip(BAD_ARGV, bad):
        assert not result["ok"], f"{script} {argv} was accepted"
    # argparse accepts unambiguous abbreviations; the commands must not rely on that.
    options = next(r["options"] for (_, script, _), r in by_call.items()
                   if script.endswith("upscale_archive.py") and "options" in r)
    assert full_name_problems(["--input", "x", "--accelerator", "L4"], options) == ["--accelerator"]
