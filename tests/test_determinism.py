"""Reproducible by construction: the same stage with the same seed in two fresh processes gives the same scores.

Two separate data roots, two processes with different PYTHONHASHSEED: `kdgat stage evaluate` builds the synthetic
captures, preprocesses them and trains the VGAE, GAT and fusion agent of one variant (in-process), then executes the
evaluate notebook with papermill. Every window's score must match byte for byte, and every metric row exactly.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

KDGAT = str(Path(sys.executable).with_name("kdgat"))
STAGE = "synthetic/none/seed0/small"


def _stage_in_fresh_process(root: Path, hashseed: str) -> Path:
    root.mkdir(parents=True)
    # a smaller synthetic dataset than the default, so the test stays quick
    (root / "catalog.yaml").write_text("synthetic:\n  raw: synthetic/small\n  synthetic: {seed: 1, scale: 0.25}\n")
    env = {**os.environ, "KD_GAT_DATA_ROOT": str(root), "PYTHONHASHSEED": hashseed, "KD_GAT_S3_ENDPOINT": "none",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([KDGAT, "stage", "evaluate", "--variant", "small", "--seed", "0", "--set", "training.max_epochs=2",
                        "--set", "training.accelerator=cpu", "--set", "lakehouse.wandb_mode=disabled"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root / "runs" / "interactive"


def test_same_seed_same_scores_in_two_processes(tmp_path):
    a = _stage_in_fresh_process(tmp_path / "a", "1")
    b = _stage_in_fresh_process(tmp_path / "b", "2")
    for model in ("vgae", "gat", "fusion"):
        with np.load(a / STAGE / model / "artifacts" / "outputs.npz") as za, np.load(b / STAGE / model / "artifacts" / "outputs.npz") as zb:
            assert sorted(za.files) == sorted(zb.files)
            for k in za.files:
                assert za[k].tobytes() == zb[k].tobytes(), f"{model}: {k} differs between the two processes"
    sa = pd.read_parquet(a / STAGE / "evaluate" / "artifacts" / "scores.parquet")
    sb = pd.read_parquet(b / STAGE / "evaluate" / "artifacts" / "scores.parquet")
    assert sa.score.dtype == np.float64 and len(sa) > 0
    pd.testing.assert_frame_equal(sa, sb)  # every window: capture, start, label and the score, bit for bit
    ma = pd.read_parquet(a / STAGE / "evaluate" / "artifacts" / "metrics.parquet").drop(columns=["seconds"])
    mb = pd.read_parquet(b / STAGE / "evaluate" / "artifacts" / "metrics.parquet").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(ma, mb)
