"""The restore job's settings key, which decides whether a video is already done: built from the fields
themselves, so every restore setting counts (a new one included) and where the job runs does not; the
weights count by content."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from pipelines.job_support import ConfigError
from pipelines.media.interlace import OPTIONS
from pipelines.restore.job import FORMER_BEHAVIOUR, RUN_ONLY, ArchiveJob, validate
from pipelines.weights import MANIFEST
from star_model.presets import get_preset
from star_model.restore import RestoreConfig

JOB = ArchiveJob(input="in", output="out", preset="tiny")
KEY = JOB.settings_key()
# A valid other value for the job fields that the restore settings are made from.
OTHER_VALUES = {"preset": "official", "checkpoint": "heavy_deg", "scale": 2, "steps": 3, "detector": "content",
                "square_pixels": True, "deinterlace": "frame", "size": "1920x1080", "height": 1080, "codec": "ffv1",
                "crf": 20, "prores_profile": "lt", "sample": 5.0, "sample_at": 3.0}


def test_the_key_is_deterministic():
    again = ArchiveJob(input="in", output="out", preset="tiny")
    assert again.settings_key() == KEY == JOB.settings_key()
    assert len(KEY) == 12 and int(KEY, 16) >= 0


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(RestoreConfig)])
def test_every_restore_setting_changes_the_key(name, monkeypatch):
    changed = JOB.restore_config()
    object.__setattr__(changed, name, "another value")  # any other value counts: past the config's checks
    monkeypatch.setattr(ArchiveJob, "restore_config", lambda self: changed)
    assert JOB.settings_key() != KEY


def test_a_setting_added_at_its_former_behaviour_keeps_the_key():
    """`upscale` came after outputs were made bilinearly: at "bilinear" it is left out of the key (an
    upgrade redoes nothing), nano's "bicubic" counts. The job's own `square_pixels` likewise."""
    assert FORMER_BEHAVIOUR == {"upscale": "bilinear", "square_pixels": False}
    assert JOB.restore_config().upscale == "bilinear" and "upscale" not in JOB.settings()["restore"]
    assert ArchiveJob(input="in", output="out", preset="nano").settings()["restore"]["upscale"] == "bicubic"
    assert "square_pixels" not in JOB.settings()
    assert dataclasses.replace(JOB, square_pixels=True).settings()["square_pixels"] is True


def test_the_output_format_and_target_count_only_in_what_they_change():
    """The former fixed output (H.264 crf 16) keeps the key; crf counts for H.264 and H.265 only; a target
    size replaces the scale (each video's scale follows from it)."""
    assert "output" not in JOB.settings() and "codec" not in JOB.settings()
    ffv1 = dataclasses.replace(JOB, codec="ffv1")
    assert ffv1.settings()["output"]["codec"] == "ffv1" and "crf" not in ffv1.settings()["output"]
    assert dataclasses.replace(ffv1, crf=30).settings_key() == ffv1.settings_key()
    h265 = dataclasses.replace(JOB, codec="h265")
    assert dataclasses.replace(h265, crf=30).settings_key() != h265.settings_key() != KEY
    sized = dataclasses.replace(JOB, size="1920x1080")
    assert sized.settings()["target"] == "1920x1080" and "scale" not in sized.settings()
    assert sized.settings()["restore"]["scale"] is None
    assert dataclasses.replace(JOB, height=1080).settings_key() != sized.settings_key()


@pytest.mark.parametrize("flags, message", [
    (dict(size="1920x1080", height=1080), "give one of them"),
    (dict(size="1080p"), "WIDTHxHEIGHT"),
    (dict(height=1081), "even number"),
    (dict(size="1920x1080", scale=2), "--scale 2 and a target size"),
    (dict(crf=60), "crf 60"),
    (dict(sample=0.0), "--sample 0.0"),
    (dict(sample_at=3.0), "needs --sample"),
    (dict(prompts="missing.csv"), "cannot be read"),
])
def test_bad_output_options_fail_before_ray(flags, message, tmp_path):
    (tmp_path / "in").mkdir()
    job = ArchiveJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), preset="bicubic", **flags)
    with pytest.raises(ConfigError, match=message):
        validate(job)


def test_a_new_restore_setting_changes_the_key(monkeypatch):
    extended = dataclasses.make_dataclass("Extended", [("new_option", int, dataclasses.field(default=1))],
                                          bases=(RestoreConfig,), frozen=True)
    monkeypatch.setattr(ArchiveJob, "restore_config", lambda self: extended(scale=self.scale))
    assert JOB.settings_key() != KEY


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(ArchiveJob)])
def test_job_fields_count_unless_they_only_say_how_it_runs(name):
    changed = dataclasses.replace(JOB, **{name: OTHER_VALUES.get(name, "another value")})
    if name == "weights":  # where the weights lie does not count, whether there are any does
        assert dataclasses.replace(changed, weights="elsewhere").settings_key() == changed.settings_key() != KEY
    elif name in RUN_ONLY:
        assert changed.settings_key() == KEY
    elif name == "prores_profile":  # counts where it is used: with --codec prores
        prores = dataclasses.replace(JOB, codec="prores")
        assert changed.settings_key() == KEY
        assert dataclasses.replace(prores, prores_profile="lt").settings_key() != prores.settings_key()
    else:
        assert changed.settings_key() != KEY


def test_the_preset_defaults_to_nano_without_weights_and_official_with_them():
    assert ArchiveJob(input="in", output="out").preset == "nano"
    assert ArchiveJob(input="in", output="out", weights="/weights").preset == "official"
    assert ArchiveJob(input="in", output="out", weights="/weights", preset="tiny").preset == "tiny"


def test_new_weights_change_the_key_and_a_copy_of_the_same_weights_does_not(tmp_path):
    shipped = get_preset("nano").shipped_file(4)
    first = tmp_path / "a" / "nano.safetensors"
    first.parent.mkdir()
    shutil.copyfile(shipped, first)
    copy = tmp_path / "b" / "copied.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(first, copy)
    retrained = tmp_path / "retrained.safetensors"
    retrained.write_bytes(shipped.read_bytes()[:-1] + b"\x00")  # one byte of another model
    key = ArchiveJob(input="in", output="out", preset="nano", weights=str(first)).settings_key()
    assert ArchiveJob(input="in", output="out", preset="nano", weights=str(copy)).settings_key() == key
    assert ArchiveJob(input="in", output="out", preset="nano", weights=str(retrained)).settings_key() != key
    assert ArchiveJob(input="in", output="out", preset="nano").settings_key() == key  # the shipped file itself
    # the shipped x2 network is other weights than the x4 one (that the scale changes the key anyway aside)
    x2 = ArchiveJob(input="in", output="out", preset="nano", scale=2)
    assert x2.weights_digest != ArchiveJob(input="in", output="out", preset="nano").weights_digest


def test_a_weights_folder_counts_by_its_manifest(tmp_path):
    def folder(name: str, sha: str) -> str:
        root = tmp_path / name
        root.mkdir()
        files = {"star/light_deg.safetensors": {"size": 8, "sha256": sha},
                 "vae/config.json": {"size": 2, "sha256": "b"},
                 "star/heavy_deg.safetensors": {"size": 8, "sha256": sha + "-other"}}
        (root / MANIFEST).write_text(json.dumps({"files": files}))
        return str(root)

    key = ArchiveJob(input="in", output="out", preset="tiny", weights=folder("a", "1")).settings_key()
    assert ArchiveJob(input="in", output="out", preset="tiny", weights=folder("b", "1")).settings_key() == key
    assert ArchiveJob(input="in", output="out", preset="tiny", weights=folder("c", "2")).settings_key() != key
    assert ArchiveJob(input="in", output="out", preset="tiny", weights=folder("d", "1"),
                      checkpoint="heavy_deg").settings_key() != key


def test_each_deinterlace_option_has_its_own_key_and_a_bad_one_is_refused_before_any_work(tmp_path):
    assert OPTIONS == ("auto", "off", "field", "frame")
    assert JOB.settings()["deinterlace"] == "field"  # auto keeps the former default's key: no redo on upgrade
    assert len({dataclasses.replace(JOB, deinterlace=option).settings_key() for option in OPTIONS}) == 4
    (tmp_path / "in").mkdir()
    job = ArchiveJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), preset="bicubic", deinterlace="yes")
    with pytest.raises(ConfigError, match="--deinterlace 'yes': choose one of auto, off, field, frame"):
        validate(job)
    assert not (tmp_path / "out").exists()


def test_the_run_name_is_the_flag_else_the_ray_job_submission_id(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert JOB.run_label() == ""
    # What Ray's job supervisor gives the driver of `ray job submit --submission-id nightly-2026-12-07`.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {}, "metadata": {"job_submission_id": "nightly-2026-12-07", "job_name": "nightly-2026-12-07"}}))
    assert JOB.run_label() == "nightly-2026-12-07"
    assert dataclasses.replace(JOB, run_name="retry-me").run_label() == "retry-me"
    assert dataclasses.replace(JOB, run_name="retry-me").settings_key() == JOB.settings_key()
