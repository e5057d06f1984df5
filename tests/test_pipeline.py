"""The pipeline as the user runs it: `kdgat run` (real Ray, real papermill kernels), status, query, resume.

Each test drives the installed console script in a subprocess, the way a researcher or a SLURM job does, on the
embedded synthetic dataset with one training epoch per model so the DAG's shape, not the training, costs the time.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

KDGAT = str(Path(sys.executable).with_name("kdgat"))
QUICK = ["--seeds", "0", "--set", "training.max_epochs=1", "--set", "training.batch_size=256",
         "--set", "training.accelerator=cpu"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    "One data root for the module: the synthetic captures and graph cache are built once, by the first run."
    return tmp_path_factory.mktemp("pipeline") / "kd-gat-data"


def _env(root: Path) -> dict:
    return {**os.environ, "KD_GAT_DATA_ROOT": str(root), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "KD_GAT_S3_ENDPOINT": "none"}


def kdgat(root: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([KDGAT, *args], env=_env(root), capture_output=True, text=True, timeout=timeout)


def _run_dir(out: str) -> Path:
    line = next(l for l in out.splitlines() if l.startswith("run folder: "))
    return Path(line.removeprefix("run folder: ").strip())


def _records(root: Path, run_id: str) -> list[dict]:
    out = kdgat(root, "query", f"select stage, status, success, failure_reason, started_at, finished_at from stages "
                               f"where run_id = '{run_id}' order by finished_at", "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_dag_runs_in_order_and_waits_for_the_teacher(root):
    r = kdgat(root, "run", "--variants", "small_kd", "--tag", "order", *QUICK)
    assert r.returncode == 0, r.stdout + r.stderr
    run = _run_dir(r.stdout)
    assert (run / "_COMPLETE.json").is_file()
    recs = {x["stage"]: x for x in _records(root, run.name)}
    # small_kd alone still trains (but does not evaluate) the large teachers
    assert "synthetic/none/seed0/large/gat" in recs and "synthetic/none/seed0/large/evaluate" not in recs
    assert len(recs) == 10 and all(x["success"] for x in recs.values())
    from kdgat.pipeline.stages import StageRef, build_dag
    for s in build_dag(["synthetic"], [0], ["small_kd"]):
        for d in s.deps():  # every stage started after everything it reads had finished
            assert recs[s.key]["started_at"] >= recs[d.key]["finished_at"], (s.key, d.key)
    kd_gat = run / "synthetic/none/seed0/small_kd/gat"
    assert (kd_gat / "train.ipynb").is_file() and (kd_gat / "params.yaml").is_file() and (kd_gat / "metrics.json").is_file()
    assert json.loads((kd_gat / "params.yaml").read_text())["variant"] == "small_kd"
    from kdgat.lakehouse.tracking import offline_runs, read_offline_run
    wb = read_offline_run(offline_runs(kd_gat)[0])  # W&B, offline: parameters, final metrics, training curve
    assert wb["config"]["variant"] == "small_kd" and wb["summary"]["parameters"] > 0 and wb["history"], wb
    assert (run / "synthetic" / "summary.parquet").is_file()

    st = kdgat(root, "status", run.name)
    assert st.returncode == 0 and "10 success" in st.stdout, st.stdout
    q = kdgat(root, "query", "select dataset, model, scale, kd, scenario, f1 from metrics "
                             f"where run_id = '{run.name}' and threshold_method = 'f1'", "--format", "json")
    rows = json.loads(q.stdout)
    assert {(x["model"], x["kd"]) for x in rows} == {("gbt_baseline", False), ("vgae", True), ("gat", True), ("fusion", True)}
    assert {x["scenario"] for x in rows} >= {"test_01_known_vehicle_known_attack", "test_04_unknown_vehicle_unknown_attack"}

    # the same run again: every stage is complete with the same hash, so nothing executes
    again = kdgat(root, "run", "--resume", run.name, "--variants", "small_kd", *QUICK)
    assert again.returncode == 0 and "(10 reused)" in again.stdout, again.stdout


def test_a_failing_stage_skips_its_dependents_and_says_why(root):
    r = kdgat(root, "run", "--variants", "small", "--no-baseline", "--tag", "broken", *QUICK,
              "--set", "models.gat_small.pool_aggrs=[nonsense]")
    assert r.returncode == 4, r.stdout + r.stderr
    run = _run_dir(r.stdout)
    recs = {x["stage"]: x for x in _records(root, run.name)}
    gat = recs["synthetic/none/seed0/small/gat"]
    assert gat["status"] == "failed" and "nonsense" in gat["failure_reason"], gat
    for key in ("synthetic/none/seed0/small/dqn", "synthetic/none/seed0/small/evaluate"):
        assert recs[key]["status"] == "skipped" and "small/gat failed" in recs[key]["failure_reason"]
    assert recs["synthetic/none/seed0/small/vgae"]["success"]
    # the failed stage kept its executed notebook (with the traceback) and has no completion marker
    assert (run / "synthetic/none/seed0/small/gat/train.ipynb").is_file()
    assert not (run / "synthetic/none/seed0/small/gat/_SUCCESS.json").exists()
    st = kdgat(root, "status", run.name)
    assert st.returncode == 4 and "nonsense" in st.stdout, st.stdout


def _kill_tree(proc: subprocess.Popen):
    "kill -9 the run and every process it started (Ray's head processes and workers, the kernels), by PID."
    kids = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for k in kids:
        try: k.kill()
        except psutil.NoSuchProcess: pass
    proc.wait(timeout=30)
    psutil.wait_procs(kids, timeout=30)


def test_resume_after_kill_9(root):
    args = ["run", "--variants", "small", "--no-baseline", "--tag", "killed", *QUICK]
    proc = subprocess.Popen([KDGAT, *args], env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    runs = root / "runs"
    deadline, run = time.time() + 300, None
    try:
        while time.time() < deadline:  # wait until the VGAE is complete and the GAT is running, then kill everything
            cands = [d for d in runs.glob("*-killed") if (d / "synthetic/none/seed0/small/vgae/_SUCCESS.json").is_file()]
            if cands and (cands[0] / "synthetic/none/seed0/small/gat").is_dir():
                run = cands[0]; break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
    finally:
        _kill_tree(proc)
    assert run is not None, "the run never reached its GAT stage"
    before = {p: p.read_text() for p in run.rglob("_SUCCESS.json")}
    assert not (run / "_COMPLETE.json").exists()
    st = kdgat(root, "status", run.name)
    assert st.returncode == 5 and "interrupted" in st.stdout, st.stdout

    r = kdgat(root, "run", "--resume", run.name, "--variants", "small", "--no-baseline", *QUICK)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reused" in r.stdout and "synthetic/none/seed0/small/gat" in r.stdout
    for p, text in before.items():  # what had finished was reused, not redone
        assert p.read_text() == text, p
    done = json.loads((run / "_COMPLETE.json").read_text())
    assert done["status"] == "success" and done["counts"]["reused"] == len(before)
    import pandas as pd
    m = pd.read_parquet(run / "synthetic/none/seed0/small/evaluate/artifacts/metrics.parquet")
    assert set(m.model) == {"vgae", "gat", "fusion"} and m.f1.notna().all()


def test_two_runs_at_once_share_the_lakehouse(root):
    args = ["run", "--variants", "small", "--no-baseline", *QUICK]
    procs = [subprocess.Popen([KDGAT, *args, "--tag", f"twin{i}"], env=_env(root), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ids = [_run_dir(o).name for o in outs]
    for rid in ids:
        recs = _records(root, rid)
        assert len(recs) == 5 and all(x["success"] for x in recs), recs
    q = kdgat(root, "query", "select run_id, count(*) as n from metrics where run_id in ('%s', '%s') group by run_id" % tuple(ids),
              "--format", "json")
    counts = {x["run_id"]: x["n"] for x in json.loads(q.stdout)}
    assert set(counts) == set(ids) and len(set(counts.values())) == 1
