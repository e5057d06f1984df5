"""`kdgat train`, `kdgat evaluate` and `kdgat bench infer` end to end on a small synthetic dataset."""
from __future__ import annotations
import json, os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

KDGAT = str(Path(sys.executable).parent / "kdgat")


@pytest.mark.slow
def test_train_evaluate_bench(data_root, tmp_path):
    (data_root).mkdir(parents=True, exist_ok=True)
    (data_root / "catalog.yaml").write_text("synthetic:\n  raw: synthetic/small\n  synthetic: {seed: 1, scale: 0.25}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    r = subprocess.run([KDGAT, "train", "--dataset", "synthetic", "--seeds", "0", "--calibration", "none", "prefix",
                        "--set", "training.max_epochs=2", "--set", "training.patience=1", "--set", "training.accelerator=cpu",
                        "--out", str(run)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = pd.read_parquet(run / "results.parquet")
    assert set(res.calibration) == {"none", "prefix"} and set(res.model) == {"gbt_baseline", "vgae", "gat", "fusion"}
    scenarios = {"val", "test_01_known_vehicle_known_attack", "test_02_unknown_vehicle_known_attack",
                 "test_03_known_vehicle_unknown_attack", "test_04_unknown_vehicle_unknown_attack"}
    assert set(res.scenario) == scenarios
    assert (run / "summary.json").is_file() and json.loads((run / "run.json").read_text())["dataset"] == "synthetic"
    assert len(list(run.glob("cal-none/seed0/checkpoints/*.ckpt"))) == 6  # VGAE and GAT for large, small, small_kd
    r = subprocess.run([KDGAT, "evaluate", "--run", str(run)], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "test_02_unknown_vehicle_known_attack" in r.stdout and "±" in r.stdout, r.stderr
    r = subprocess.run([KDGAT, "bench", "infer", "--run", str(run), "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert {m["model"] for m in out["models"]} == {f"{k}_{v}" for k in ("gat", "vgae") for v in ("large", "small", "small_kd")}
    for m in out["models"]: assert m["p99_ms"] >= m["p50_ms"] > 0 and m["windows_per_second"] > 0 and m["parameters"] > 0
    r = subprocess.run([KDGAT, "evaluate", "--run", str(tmp_path / "nothing")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "no summary" in r.stderr
    # the paper's results chapter computes its tables from this run (Quarto itself is not installable here)
    import re
    os.environ["KDGAT_RUN"] = str(run)
    try:
        ns: dict = {}
        qmd = Path(__file__).resolve().parents[1] / "paper" / "02-results.qmd"
        for chunk in re.findall(r"```\{python\}\n(.*?)```", qmd.read_text(), flags=re.S): exec(compile(chunk, str(qmd), "exec"), ns)
    finally: del os.environ["KDGAT_RUN"]
    assert "test_04_unknown_vehicle_unknown_attack" in ns["table"].columns and len(ns["table"]) == 20
