"""Shot cuts on PySceneDetect's own test clips (pipelines.media.scenes) and the restore job's window
planning inside them (pipelines.restore.scene_windows)."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest

from formats import telecined, write
from helpers import media
from pipelines.media.probe import probe_timestamps
from pipelines.media.scenes import detect_scenes, probe_scenes
from test_archive import damaged
from pipelines.restore.scene_windows import SceneWindow, plan_scene_windows


# Known cuts. PySceneDetect's golden files (tests/resources/goldens/*.json in its repository) list
# scene start frames: testvideo.mp4 AdaptiveDetector [30, 180, 394, 691], ContentDetector
# [30, 180, 394]; goldeneye-vfr-drop3.mp4 ContentDetector [90, 210] (cuts at 3.754 s and 8.759 s
# in its test_vfr.py). Those are PySceneDetect 0.7 frame numbers, time x nominal rate; drop3 lacks
# every third frame, so in presentation order (the numbering the pipeline uses) its cuts are frames
# 60 and 140. For testvideo (constant rate) the two numberings agree.
TESTVIDEO_ADAPTIVE = [(0, 30), (30, 180), (180, 394), (394, 691), (691, 720)]
TESTVIDEO_CONTENT = [(0, 30), (30, 180), (180, 394), (394, 720)]
DROP3_SCENES = [(0, 60), (60, 140), (140, 160)]  # same for both detectors


def test_testvideo_adaptive_detector():
    assert detect_scenes(media("scenes/testvideo.mp4")) == TESTVIDEO_ADAPTIVE


def test_testvideo_content_detector():
    assert detect_scenes(media("scenes/testvideo.mp4"), "content") == TESTVIDEO_CONTENT


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_vfr_cuts_are_presentation_indices(detector):
    clip = media("scenes/goldeneye-vfr-drop3.mp4")
    info, timestamps = probe_timestamps(clip)
    scenes = detect_scenes(clip, detector)
    assert scenes == DROP3_SCENES
    # The frames that start the shots are the ones PySceneDetect reports at 3.754 s and 8.759 s,
    # i.e. its "frames" 90 and 210 at the nominal 24000/1001 fps.
    cut_pts = [int(timestamps[start]) for start, _ in scenes[1:]]
    assert cut_pts == [90 * 1001, 210 * 1001]
    assert [round(float(p * info.time_base), 3) for p in cut_pts] == [3.754, 8.759]


def test_detector_options_pass_through():
    # min_scene_len longer than the clip's middle shot (80 frames at ~16 fps) merges it away.
    clip = media("scenes/goldeneye-vfr-drop3.mp4")
    assert detect_scenes(clip, "content", min_scene_len=400) == [(0, 160)]


def test_detect_reads_through_fsspec():
    clip = media("scenes/goldeneye-vfr-drop3.mp4")
    fs = fsspec.filesystem("memory")
    fs.pipe("/scenes-test/drop3.mp4", clip.read_bytes())
    assert detect_scenes("memory://scenes-test/drop3.mp4", "content") == DROP3_SCENES
    with fsspec.open(str(clip), "rb") as f:
        assert detect_scenes(f, "content") == DROP3_SCENES


def test_no_cut_is_one_scene():
    clip = media("lq/seedvr2_Eyes_212x120.mp4")
    assert detect_scenes(clip, "content") == [(0, 45)]


def test_one_pass_probes_as_the_probe_does(tmp_path):
    """probe_scenes is probe_timestamps and detect_scenes in one pass: the same VideoInfo (telecine
    by idet included), timestamps and cuts; also where PySceneDetect stops early on damaged frames."""
    film = write(tmp_path / "film.mpg", telecined(16), codec="mpeg2video", fmt="mpeg",
                 options={"flags": "+ildct+ilme"}, field_order="tff")
    damaged(tmp_path / "damaged.mp4")
    for clip in (media("scenes/goldeneye-vfr-drop3.mp4"), media("lq/dove_002.mp4"), film, tmp_path / "damaged.mp4"):
        info, timestamps, scenes = probe_scenes(clip, "content")
        expected_info, expected_timestamps = probe_timestamps(clip)
        assert info == expected_info and np.array_equal(timestamps, expected_timestamps)
        assert scenes[-1][1] == info.frame_count
    assert probe_scenes(film)[0].telecine
    assert probe_scenes(media("scenes/goldeneye-vfr-drop3.mp4"), "content")[2] == DROP3_SCENES


def test_unknown_detector():
    with pytest.raises(ValueError, match="unknown detector 'histogram'"):
        detect_scenes(media("lq/dove_002.mp4"), "histogram")


# -- window planning ------------------------------------------------------------------------------


def check_plan(scenes: list[tuple[int, int]], window: int, overlap: int) -> list[SceneWindow]:
    """Invariants every plan must keep; returns the plan for further checks."""
    plan = plan_scene_windows(scenes, window, overlap)
    total = scenes[-1][1]
    weight = np.zeros(total)
    for w in plan:
        scene_start, scene_end = scenes[w.scene]
        assert scene_start <= w.start <= w.keep_start < w.keep_end <= w.end <= scene_end  # never crosses a cut
        assert 1 <= w.frames <= window
        weight[w.start:w.end] += w.weights()
    assert np.allclose(weight, 1.0)  # every frame restored, blends sum to one
    assert [w.index for w in plan] == list(range(len(plan)))
    for scene_index, (scene_start, scene_end) in enumerate(scenes):
        mine = [w for w in plan if w.scene == scene_index]
        assert mine[0].start == scene_start and mine[0].fade_in == 0
        assert mine[-1].end == scene_end and mine[-1].fade_out == 0  # the last ends at the cut
        for a, b in zip(mine, mine[1:]):
            assert a.end - b.start >= overlap  # consecutive windows share at least `overlap`
            assert a.fade_out == b.fade_in == overlap and b.keep_start == a.end - overlap
    return plan


def test_plan_examples():
    plan = check_plan([(0, 30), (30, 31), (31, 100)], window=8, overlap=2)
    assert [(w.start, w.end) for w in plan[:5]] == [(0, 8), (6, 14), (12, 20), (18, 26), (22, 30)]
    assert plan[4].keep_start == 24  # context frames 22, 23; blends 24, 25 with the window before
    assert (plan[5].start, plan[5].end, plan[5].scene) == (30, 31, 1)  # a one-frame scene
    assert check_plan([(0, 5)], window=8, overlap=4)[0] == SceneWindow(0, 0, 0, 5, 0, 5, 0, 0)


@pytest.mark.parametrize("window, overlap", [(1, 0), (2, 1), (5, 0), (8, 2), (8, 4), (16, 5), (32, 8)])
def test_plan_any_scene_length(window, overlap):
    for length in range(1, 70):
        check_plan([(0, length)], window, overlap)
        check_plan([(0, 3), (3, 3 + length), (3 + length, 4 + length)], window, overlap)


def test_weights_ramp_linearly():
    a, b = plan_scene_windows([(0, 13)], window=8, overlap=3)
    assert a.weights()[-3:] == pytest.approx([0.75, 0.5, 0.25])
    assert b.weights()[:3] == pytest.approx([0.25, 0.5, 0.75])


@pytest.mark.parametrize("window, overlap", [(0, 0), (8, 5), (8, -1)])
def test_plan_rejects_bad_settings(window, overlap):
    with pytest.raises(ValueError, match="overlap"):
        plan_scene_windows([(0, 10)], window, overlap)


def test_plan_rejects_empty_scene():
    with pytest.raises(ValueError, match="is empty"):
        plan_scene_windows([(0, 4), (4, 4)], 8, 2)
