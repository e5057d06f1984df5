"""`kdgat tune` as the user runs it: a real search (Ray Tune, Optuna, ASHA, real training), then `kdgat run` of its best.

One search of the small GAT on a small synthetic dataset, six trials one at a time (so Optuna proposes them in the
same order every time, and ASHA decides on the same values), three epochs each, ASHA's first rung after one epoch.
That the same seed proposes the same settings is checked without Ray in nbs/pipeline/63_tune.ipynb.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.ray]

KDGAT = str(Path(sys.executable).with_name("kdgat"))
SEARCH = ["--dataset", "synthetic", "--model", "gat", "--samples", "6", "--max-epochs", "3", "--seed", "0",
          "--set", "tune.max_concurrent=1", "--set", "tune.grace_period=1", "--set", "tune.reduction_factor=2",
          "--set", "tune.metric=val_loss", "--set", "training.accelerator=cpu", "--set", "training.batch_size=128",
          # trials end by the epoch budget or by ASHA, not by early stopping, so "stopped early" means ASHA
          "--set", "training.patience=10"]


def kdgat(root: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "KD_GAT_DATA_ROOT": str(root), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "KD_GAT_S3_ENDPOINT": "none", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([KDGAT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_space_naming_no_setting_is_refused_before_ray_starts(data_root):
    "(an unknown model and a refused variant are checked in the notebook, by the same function)"
    r = kdgat(data_root, "tune", "--set", 'tune.spaces.gat={"models.gat_{scale}.widht": {kind: choice, values: [8, 16]}}')
    assert r.returncode == 2 and "'models.gat_{scale}.widht' is not a setting" in r.stderr, r.stderr
    assert not (data_root / "tune").exists()  # nothing was started or written


def test_tune_records_trials_and_its_best_config_drives_a_run(data_root, tmp_path):
    data_root.mkdir(parents=True)
    # a smaller synthetic dataset than the default, so the test stays quick
    (data_root / "catalog.yaml").write_text("synthetic:\n  raw: synthetic/tiny\n  synthetic: {seed: 2, scale: 0.2}\n")
    best = tmp_path / "best.yaml"
    r = kdgat(data_root, "tune", *SEARCH, "--out", str(best))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "6 trials in" in r.stdout and f"best configuration: {best}" in r.stdout and f"--config {best}" in r.stdout, r.stdout

    q = kdgat(data_root, "query", "select * from trials order by trial", "--format", "json")
    assert q.returncode == 0, q.stderr
    trials = json.loads(q.stdout)
    assert len(trials) == 6 and {t["status"] for t in trials} <= {"completed", "stopped"}, trials
    assert sum(t["stopped_early"] for t in trials) >= 1, trials  # ASHA stopped at least one trial after its first rung
    assert all(t["epochs"] < 3 for t in trials if t["stopped_early"]) and all(t["epochs"] == 3 for t in trials if not t["stopped_early"])
    assert all(math.isfinite(t["best_value"]) and math.isfinite(t["last_value"]) for t in trials), trials
    assert sum(t["is_best"] for t in trials) == 1 and {t["dataset"] for t in trials} == {"synthetic"}
    tune_id = trials[0]["run_id"]
    assert "-tune-synthetic-gat-small" in tune_id
    curves = json.loads(kdgat(data_root, "query", f"select * from curves where run_id = '{tune_id}'", "--format", "json").stdout)
    assert len({c["trial_id"] for c in curves}) == 6 and sum(t["epochs"] for t in trials) == len([c for c in curves if c["metric"] == "val_loss"])
    assert all(math.isfinite(c["value"]) for c in curves)  # every epoch of every trial reported a real, finite metric
    rec = json.loads(kdgat(data_root, "query", f"select status, stage, metrics from stages where run_id = '{tune_id}'",
                           "--format", "json").stdout)
    assert len(rec) == 1 and rec[0]["status"] == "success" and rec[0]["stage"] == "synthetic/tune/small/gat", rec

    winner = next(t for t in trials if t["is_best"])
    settings = json.loads(winner["config"])
    assert set(settings) == {"training.lr", "training.weight_decay", "models.gat_small.hidden_channels",
                             "models.gat_small.num_layers", "models.gat_small.dropout"}
    assert winner["best_value"] == min(t["best_value"] for t in trials)
    # each trial kept its folder: checkpoint, Lightning log and an offline W&B run
    folder = data_root / "tune" / tune_id / "trials" / winner["trial_id"]
    assert (folder / "checkpoints").is_dir() and list(folder.glob("wandb/offline-run-*"))

    # best.yaml is a configuration `kdgat run` takes as it is, with the winning settings in it
    cfg = yaml.safe_load(best.read_text())
    assert cfg["models"]["gat_small"]["num_layers"] == settings["models.gat_small.num_layers"]
    assert cfg["training"]["lr"] == pytest.approx(settings["training.lr"])
    run = kdgat(data_root, "run", "--config", str(best), "--dataset", "synthetic", "--variants", "small", "--seeds", "0",
                "--no-baseline", "--set", "training.max_epochs=1", "--set", "explain.seeds=0", "--tag", "tuned")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run_dir = Path(next(l for l in run.stdout.splitlines() if l.startswith("run folder: ")).removeprefix("run folder: ").strip())
    used = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert used["models"]["gat_small"] == cfg["models"]["gat_small"] and used["training"]["lr"] == cfg["training"]["lr"]
    assert (run_dir / "synthetic/none/seed0/small/gat/_SUCCESS.json").is_file() and (run_dir / "_COMPLETE.json").is_file()
