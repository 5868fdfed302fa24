"""The GPU session script (jobs/measure/gpu_session.py) without a GPU: the random weights folder it
writes loads as the presets load a released one (test_job_commands.py parses its commands)."""

from __future__ import annotations

import numpy as np

from helpers import load_job
from star_model.presets import load_restorer


def test_the_random_weights_folder_loads_strictly(tmp_path):
    load_job("measure/gpu_session").write_random_weights(tmp_path / "w", "tiny")
    restorer = load_restorer("tiny", tmp_path / "w", config=None)
    out = restorer(np.zeros((2, 16, 16, 3), np.uint8), "a good video")
    assert out.shape == (2, 64, 64, 3)
