"""Fine-tuning: what is trained and what stays frozen, VEnhancer loading, fail-fast checks (no Ray), then
two gloo workers on local Ray training the TINY preset on real clips: the loss falls on a fixed set,
checkpoints are written, a worker killed part-way resumes through FailureConfig, and a re-run job
resumes from the storage folder; both end bit-for-bit where an uninterrupted run ends."""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import safetensors.torch
import torch

from helpers import REPO, media
from pipelines.finetune.checkpoint import OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, read_checkpoint
from pipelines.finetune.config import FinetuneConfig, check_config
from pipelines.finetune.data import CAPTION, CLIP_SEED, GT, LQ, ClipConfig, epoch_clips, list_clips, make_pair
from pipelines.finetune.step import FinetuneStep, build_finetune_models
from star_model.checkpoint import CheckpointError
from star_model.denoiser_config import TINY
from star_model.training.degrade import downscale_clip
from star_model.training.trainable import VENHANCER_ONLY_PREFIXES, is_trainable, load_venhancer
from star_model.unet import StarDenoiser
CLIPS = ("dove_002.mp4", "dove_007.mp4")  # 32 and 33 frames, 318x180 and 316x178
TINY_CLIPS = ClipConfig(frames=4, crop=(48, 32), seed=1)  # 4 frames of 48x32 HR -> 12x8 LR at scale 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hr")
    for name in CLIPS:
        shutil.copy(media(f"lq/{name}"), folder / name)
    return folder


def _config(data: Path, storage: Path, **kw) -> FinetuneConfig:
    base = dict(data=str(data), storage=str(storage), preset="tiny", workers=2, clips=TINY_CLIPS, seed=1, lr=1e-3,
                fixed_noise=True, checkpoint_every=4, keep_checkpoints=None, max_failures=3)
    return FinetuneConfig(**{**base, **kw})


def _batch(data: Path, clips: ClipConfig = TINY_CLIPS) -> dict:
    return _collate([make_pair(r, clips)[0] for r in list_clips(str(data), clips)])


def _collate(rows: list[dict]) -> dict:
    return {GT: torch.from_numpy(np.stack([r[GT] for r in rows])),  # (2, 4, 48, 32, 3)
            LQ: torch.from_numpy(np.stack([r[LQ] for r in rows])),  # (2, 4, 12, 8, 3)
            CLIP_SEED: torch.tensor([r[CLIP_SEED] for r in rows]), CAPTION: [r[CAPTION] for r in rows]}


# --------------------------------------------------------------------------------------------------
# Without Ray


@pytest.mark.timeout(120)
def test_pairs_are_cropped_degraded_and_deterministic(data_dir):
    rows = list_clips(str(data_dir), TINY_CLIPS)
    assert len(rows) == 2
    pair = make_pair(rows[0], TINY_CLIPS)[0]
    assert pair[GT].shape == (4, 48, 32, 3) and pair[GT].dtype == np.uint8
    assert pair[LQ].shape == (4, 12, 8, 3) and pair[CAPTION] == ""
    again = make_pair(rows[0], TINY_CLIPS)[0]
    assert np.array_equal(pair[GT], again[GT]) and np.array_equal(pair[LQ], again[LQ])
    # a crop larger than the video: skipped, not padded
    assert make_pair(rows[0], ClipConfig(frames=4, crop=(400, 400), seed=1)) == []
    # clean_prob 1: the GT is the crop itself (no sharpening) and the LR its clean bicubic downscale
    clean = make_pair(rows[0], dataclasses.replace(TINY_CLIPS, clean_prob=1.0))[0]
    assert np.array_equal(clean[LQ], downscale_clip(clean[GT], 4)) and not np.array_equal(clean[LQ], pair[LQ])
    with pytest.raises(ValueError, match="clean_prob"):
        ClipConfig(clean_prob=1.5)


@pytest.mark.timeout(120)
def test_each_epoch_cuts_new_pairs_that_a_resumed_run_cuts_again(data_dir):
    clips = list_clips(str(data_dir), TINY_CLIPS)
    epoch_0, epoch_1 = epoch_clips(clips, 0), epoch_clips(clips, 1)
    assert [r[CLIP_SEED] for r in epoch_1] != [r[CLIP_SEED] for r in epoch_0]
    assert epoch_clips(clips, 1) == epoch_1  # a function of (seed, clip, epoch) only
    first, second = make_pair(epoch_0[0], TINY_CLIPS)[0], make_pair(epoch_1[0], TINY_CLIPS)[0]
    assert not np.array_equal(first[GT], second[GT])  # another start/crop and degradation
    again = make_pair(epoch_clips(clips, 1)[0], TINY_CLIPS)[0]  # the resumed run's draw of epoch 1
    assert np.array_equal(again[GT], second[GT]) and np.array_equal(again[LQ], second[LQ])
    # another seed, other pairs in every epoch
    other = list_clips(str(data_dir), dataclasses.replace(TINY_CLIPS, seed=2))
    assert {r[CLIP_SEED] for r in epoch_clips(other, 1)}.isdisjoint(r[CLIP_SEED] for r in epoch_1)


@pytest.mark.timeout(180)
def test_accumulated_micro_batches_step_as_one_batch(data_dir, tmp_path):
    """N micro-batches of b clips (--grad-accum N) give the gradient and the update of one batch of N·b:
    each micro-batch's loss is scaled by 1/N. Dropout is off and DF decodes whole clips, so no random
    draw depends on how the clips are grouped."""
    from star_model.training.losses import LossConfig

    clips = dataclasses.replace(TINY_CLIPS, clips_per_video=2)  # 4 clips
    rows = [make_pair(r, clips)[0] for r in list_clips(str(data_dir), clips)]
    loss = LossConfig(df_frames=None, df_crop=None)
    whole = FinetuneStep(_config(data_dir, tmp_path, batch_size=4, loss=loss), torch.device("cpu"))
    split = FinetuneStep(_config(data_dir, tmp_path, batch_size=2, grad_accum=2, loss=loss), torch.device("cpu"))
    for step in (whole, split):
        step.denoiser.eval()
    one = whole([_collate(rows)], 0)
    two = split([_collate(rows[:2]), _collate(rows[2:])], 0)
    for name in ("loss", "loss_v", "loss_df", "grad_norm"):
        assert two[name] == pytest.approx(one[name], rel=1e-5), name
    assert one["grad_norm"] > 0
    checked = 0
    for a, b in zip(whole.trainable, split.trainable):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7)
        # AdamW's first step moves a weight by lr·g/(|g| + eps): where |g| is not far above eps, the float
        # noise of g decides it, so the update is compared where the gradient is clear of that
        clear = a.grad.abs() > 1e-5
        torch.testing.assert_close(b[clear], a[clear], rtol=0, atol=1e-6)
        checked += int(clear.sum())
    assert checked > sum(p.numel() for p in whole.trainable) // 4, checked


@pytest.mark.timeout(120)
def test_a_step_changes_only_the_control_branch_and_liem(data_dir, tmp_path):
    step = FinetuneStep(_config(data_dir, tmp_path), torch.device("cpu"))
    before = {k: v.clone() for k, v in step.denoiser.state_dict().items()}
    metrics = step([_batch(data_dir)], 0)
    assert all(np.isfinite(v) for v in metrics.values())
    after = step.denoiser.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_changed = sorted(k for k in changed if not is_trainable(k))
    assert not frozen_changed, frozen_changed[:5]
    trainable = {n for n, p in step.denoiser.named_parameters() if p.requires_grad}
    assert trainable == {k for k in before if is_trainable(k)}
    assert any(k.startswith("VideoControlNet.") for k in changed)
    assert any(".local1." in k and not k.startswith("VideoControlNet.") for k in changed)  # UNet LIEMs train
    assert all(not p.requires_grad for p in step.vae.model.parameters())
    assert all(not p.requires_grad for p in step.text.model.parameters())


@pytest.mark.timeout(60)
def test_venhancer_weights_load_except_liem(tmp_path):
    source = StarDenoiser(TINY)
    state = {k: v for k, v in source.state_dict().items() if ".local1." not in k and ".local2." not in k}
    liem = sorted(set(source.state_dict()) - set(state))
    state["VideoControlNet.hint_time_zero_linear.weight"] = torch.zeros(2, 2)
    state["VideoControlNet.scale_cond.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "venhancer.safetensors"
    safetensors.torch.save_file(state, path)
    target = StarDenoiser(TINY)
    missing, dropped = load_venhancer(target, path)
    assert sorted(missing) == liem and len(liem) > 0
    assert sorted(dropped) == ["VideoControlNet.hint_time_zero_linear.weight", "VideoControlNet.scale_cond.0.weight"]
    assert all(d.startswith(VENHANCER_ONLY_PREFIXES) for d in dropped)
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)
    # a missing non-LIEM key is an error
    del state["out.2.weight"]
    safetensors.torch.save_file(state, path)
    with pytest.raises(CheckpointError, match="out.2.weight"):
        load_venhancer(StarDenoiser(TINY), path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("preset, from_scratch", [("tiny", False), ("nano", True)])
def test_the_seed_draws_the_initial_denoiser(tmp_path, preset, from_scratch):
    """Random starts come from FinetuneConfig.seed: the same seed builds the same denoiser (on every
    worker and after every restart), another seed another one."""
    def initial(seed: int) -> dict[str, torch.Tensor]:
        cfg = FinetuneConfig(data=str(tmp_path), storage=str(tmp_path), preset=preset, from_scratch=from_scratch,
                             seed=seed)
        return build_finetune_models(cfg, torch.device("cpu"))[0].state_dict()

    first, again, other = initial(1), initial(1), initial(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    differ = [k for k in first if not torch.equal(first[k], other[k])]
    assert len(differ) > len(first) // 2, f"only {len(differ)} of {len(first)} tensors depend on the seed"


@pytest.mark.timeout(60)
def test_bad_configuration_fails_before_ray(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        check_config(_config(data_dir, tmp_path, preset="huge"))
    with pytest.raises(ValueError, match="needs --weights"):
        check_config(_config(data_dir, tmp_path, preset="official"))
    with pytest.raises(ValueError, match="no VEnhancer checkpoint"):
        weights = tmp_path / "w"
        for sub in ("text", "vae"):
            (weights / sub).mkdir(parents=True)
            (weights / sub / "config.json").write_text("{}")
        check_config(_config(data_dir, tmp_path, preset="official", weights=str(weights),
                             venhancer=str(tmp_path / "missing.pt")))
    with pytest.raises(ValueError, match="cannot round-trip"):
        check_config(_config(data_dir, tmp_path, clips=ClipConfig(frames=4, crop=(32, 32))))
    with pytest.raises(ValueError, match="does not exist"):
        check_config(_config(tmp_path / "nowhere", tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot write|no permission"):
        check_config(_config(data_dir, blocker / "runs"))
    # the job script: exit code 2 and the reason, without starting Ray
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "finetune.py"), "--data", str(data_dir),
                          "--storage", str(tmp_path / "s"), "--preset", "official", "--steps", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "needs --weights" in out.stderr


@pytest.mark.timeout(120)
def test_bucket_storage_goes_through_our_filesystem(s3_server):
    # Ray Train gets "bucket/prefix" and our s3fs (endpoint, credentials) wrapped for pyarrow.
    import pyarrow.fs

    from pipelines import storage
    from pipelines.finetune.trainer import run_storage

    url = s3_server.fresh("runs")
    path, fs = run_storage(url)
    assert isinstance(fs, pyarrow.fs.PyFileSystem) and path == url.removeprefix("s3://")
    with fs.open_output_stream(f"{path}/star-finetune/probe.txt") as f:
        f.write(b"ok")
    assert storage.read_bytes(storage.join(url, "star-finetune", "probe.txt")) == b"ok"
    assert run_storage("/tmp/x/../runs") == ("/tmp/runs", None)


# --------------------------------------------------------------------------------------------------
# On local Ray: two gloo workers


@pytest.fixture(scope="module")
def ray_address():
    # Ray Train's controller collects reports every 2 s and a worker's next report waits for the
    # previous one: a 0.3 s TINY step would be timed at 2 s. Every process of this local cluster
    # (the job's controller too) inherits the shorter interval from this environment.
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # 4 logical CPUs on a 2-core machine: 2 for the training workers, 2 left for the pairs tasks
    # (Ray Data gets no CPU at all if the trainers take every one).
    ray.init(num_cpus=4, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    patch.undo()


def _same_checkpoint(a: Path, b: Path) -> None:
    weights_a, opt_a, state_a = read_checkpoint(a)
    weights_b, opt_b, state_b = read_checkpoint(b)
    assert state_a["step"] == state_b["step"]
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), "weights differ"
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i, slot in opt_a["state"].items():
        for name, value in slot.items():
            assert torch.equal(value, opt_b["state"][i][name]), f"optimizer state {i}.{name} differs"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_checkpoint_fail_and_resume(data_dir, tmp_path, ray_address):
    # Three short runs, each worker overfitting its one clip (fixed noise), checkpoints every 4 steps:
    #   A  8 steps, uninterrupted;
    #   B 12 steps, rank 0 raises at step 7, FailureConfig restarts the workers from the step-4
    #     checkpoint: at step 8 B must equal A bit-for-bit (weights, AdamW state, step);
    #   C the job script run again on A's storage with --steps 12: it resumes at 8 and must end where
    #     B ended.
    from pipelines.finetune.trainer import run_finetune

    a = run_finetune(_config(data_dir, tmp_path / "a", steps=8))
    run_a = tmp_path / "a" / "star-finetune"
    assert a.step == 8 and Path(a.checkpoint) == run_a / "step_00000008"
    for step in (4, 8):
        folder = run_a / f"step_{step:08d}"
        assert {WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE} <= {p.name for p in folder.iterdir()}
    weights, _, state = read_checkpoint(run_a / "step_00000008")
    assert weights and all(is_trainable(k) for k in weights)
    assert [h["step"] for h in state["history"]] == list(range(1, 9)) and state["resumed_at"] == []
    # throughput after warm-up: the step itself, and between reports (incl. data, report and sync)
    history = state["history"]
    compute = statistics.median(h["clips_per_s"] for h in history[2:])
    wall = (len(history) - 3) * 2 / (history[-1]["time"] - history[2]["time"])
    print(f"\nthroughput, TINY on CPU, 2 gloo workers x 1 clip of 4x48x32, paper DF: {compute:.2f} clips/s "
          f"per step (median), {wall:.2f} clips/s between reports")

    b = run_finetune(_config(data_dir, tmp_path / "b", steps=12, fail_once_at_step=7))
    run_b = tmp_path / "b" / "star-finetune"
    assert b.step == 12 and (run_b / ".fault_injected_7").exists()
    _same_checkpoint(run_b / "step_00000008", run_a / "step_00000008")
    _, _, state_b = read_checkpoint(run_b / "step_00000012")
    assert state_b["resumed_at"] == [4]
    assert [h["step"] for h in state_b["history"]] == list(range(1, 13))  # the lost steps 5-6 are not kept
    losses = [h["loss"] for h in state_b["history"]]
    first, last = statistics.mean(losses[:3]), statistics.mean(losses[-3:])
    print(f"overfit: mean loss of steps 1-3 {first:.4f} -> steps 10-12 {last:.4f}")
    assert last < 0.85 * first

    env = {**os.environ, "RAY_ADDRESS": ray_address}
    job = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "finetune.py"), "--data", str(data_dir), "--storage",
         str(tmp_path / "a"), "--preset", "tiny", "--workers", "2", "--steps", "12", "--frames", "4",
         "--crop", "48x32", "--seed", "1", "--lr", "1e-3", "--fixed-noise", "--checkpoint-every", "4"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO)  # a checkout: Ray ships the cwd
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    log = job.stdout + job.stderr
    assert "at step 8" in log and "step 9/12" in log and "done: step 12" in log
    assert "step 8/12" not in log  # nothing before the checkpoint was redone
    _same_checkpoint(run_a / "step_00000012", run_b / "step_00000012")
    assert read_checkpoint(run_a / "step_00000012")[2]["resumed_at"] == [8]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_from_scratch_trains_the_whole_nano_denoiser_and_exports_it(data_dir, tmp_path, ray_address):
    """Nano's recipe in miniature: from a seeded random start, every part of the denoiser trains (not
    only the control branch), at the restorer's timesteps; the checkpoint exports to a shipped-weights
    file that the restorer loads strictly."""
    from pipelines.finetune.export import export_shipped
    from pipelines.finetune.trainer import run_finetune
    from star_model.presets import load_restorer

    clips = ClipConfig(frames=4, crop=(40, 32), seed=1, scales=(2, 4))  # latent 10x8: fits nano's UNet
    cfg = _config(data_dir, tmp_path, preset="nano", from_scratch=True, workers=1, steps=2, checkpoint_every=2,
                  clips=clips, fixed_noise=False, timesteps=(700, 999))
    result = run_finetune(cfg)
    weights, _, state = read_checkpoint(result.checkpoint)
    initial = build_finetune_models(cfg, torch.device("cpu"))[0].state_dict()
    assert weights.keys() == initial.keys() and state["seed"] == 1  # the whole denoiser is saved
    changed = {k.split(".")[0] for k in weights if not torch.equal(weights[k], initial[k])}
    assert {"input_blocks", "middle_block", "output_blocks", "out", "VideoControlNet"} <= changed

    shipped = tmp_path / "nano.safetensors"
    assert export_shipped(result.checkpoint, shipped)["step"] == "2"
    restorer = load_restorer("nano", shipped, device="cpu", dtype=torch.float32)  # --weights FILE for nano
    # shipped files keep fp16 weights
    assert all(torch.equal(restorer.denoiser.state_dict()[k], weights[k].half().float()) for k in weights)
    lq = np.zeros((2, 10, 8, 3), dtype=np.uint8)
    assert restorer(lq).shape == (2, 40, 32, 3)


def test_fine_tuning_nano_starts_from_the_shipped_file_for_its_largest_scale(tmp_path):
    from star_model.checkpoint import read_state_dict
    from star_model.presets import DENOISER_PREFIX, NANO_WEIGHTS

    for scales, shipped in (((2,), NANO_WEIGHTS[2]), ((2, 4), NANO_WEIGHTS[4])):
        cfg = _config(tmp_path, tmp_path, preset="nano", clips=dataclasses.replace(TINY_CLIPS, scales=scales))
        weights = build_finetune_models(cfg, torch.device("cpu"))[0].state_dict()
        state = read_state_dict(shipped)
        assert all(torch.equal(value, state[DENOISER_PREFIX + name].float()) for name, value in weights.items())


@pytest.mark.timeout(120)
def test_the_moving_average_follows_the_weights_and_resumes(data_dir, tmp_path):
    from pipelines.finetune.checkpoint import read_ema, save_checkpoint

    step = FinetuneStep(_config(data_dir, tmp_path, ema=0.5), torch.device("cpu"))
    before = {n: t.clone() for n, t in step.ema_state().items()}
    step([_batch(data_dir)], 0)
    after, weights = step.ema_state(), dict(step.denoiser.named_parameters())
    moved = [n for n in after if not torch.equal(after[n], before[n])]
    assert moved
    for name in moved[:20]:  # decay 0.5: halfway between the old average and the new weights
        torch.testing.assert_close(after[name], 0.5 * before[name] + 0.5 * weights[name].detach())
    save_checkpoint(tmp_path, step.denoiser, step.optimizer, {"step": 1}, step.ema_state())
    resumed = FinetuneStep(_config(data_dir, tmp_path, ema=0.5), torch.device("cpu"))
    resumed.load_ema(read_ema(tmp_path))
    assert all(torch.equal(resumed.ema_state()[n], after[n]) for n in after)
    resumed.load_ema(None)  # a checkpoint without an average: it restarts from the current weights
    current = dict(resumed.denoiser.named_parameters())
    assert all(torch.equal(t, current[n].detach()) for n, t in resumed.ema_state().items())


def test_a_from_scratch_run_can_start_from_a_shipped_file_and_train_everything(tmp_path):
    """--init: the whole denoiser trains (as from scratch), starting from a shipped-layout file (how nano was
    trained on for archive input), not from the seed's random weights nor only the control branch."""
    from star_model.checkpoint import read_state_dict
    from star_model.presets import DENOISER_PREFIX, NANO_WEIGHTS

    cfg = _config(tmp_path, tmp_path, preset="nano", from_scratch=True, init=str(NANO_WEIGHTS[4]))
    step = FinetuneStep(cfg, torch.device("cpu"))
    state = read_state_dict(NANO_WEIGHTS[4])
    assert all(torch.equal(v, state[DENOISER_PREFIX + k].float()) for k, v in step.denoiser.state_dict().items())
    assert len(step.trainable) == len(list(step.denoiser.parameters()))
    with pytest.raises(ValueError, match="add from_scratch"):
        _config(tmp_path, tmp_path, preset="nano", init=str(NANO_WEIGHTS[4]))
    with pytest.raises(ValueError, match="--init"):
        check_config(_config(tmp_path, tmp_path, preset="nano", from_scratch=True, init=str(tmp_path / "none")))
