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
         "--set", "training.accelerator=cpu", "--set", "explain.epochs=10", "--set", "explain.windows_per_kind=1"]
NO_EXPLAIN = ["--set", "explain.seeds=0"]  # tests of the DAG's mechanics leave the explain stage out


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


@pytest.fixture(scope="module")
def kd_run(root) -> Path:
    "A finished run of the distilled student (and, for it, the large teachers), with the baseline; built on first use."
    r = kdgat(root, "run", "--variants", "small_kd", "--tag", "order", *QUICK)
    assert r.returncode == 0, r.stdout + r.stderr
    return _run_dir(r.stdout)


def test_dag_runs_in_order_and_waits_for_the_teacher(root, kd_run):
    run = kd_run
    assert (run / "_COMPLETE.json").is_file()
    recs = {x["stage"]: x for x in _records(root, run.name)}
    # small_kd alone still trains (but does not evaluate) the large teachers
    assert "synthetic/none/seed0/large/gat" in recs and "synthetic/none/seed0/large/evaluate" not in recs
    assert len(recs) == 11 and all(x["success"] for x in recs.values())  # with the explain stage of the student
    from kdgat.pipeline.stages import StageRef, build_dag
    for s in build_dag(["synthetic"], [0], ["small_kd"], explain_seeds=1):
        for d in s.deps():  # every stage started after everything it reads had finished
            assert recs[s.key]["started_at"] >= recs[d.key]["finished_at"], (s.key, d.key)
    kd_gat = run / "synthetic/none/seed0/small_kd/gat"
    assert (kd_gat / "train.ipynb").is_file() and (kd_gat / "params.yaml").is_file() and (kd_gat / "metrics.json").is_file()
    assert json.loads((kd_gat / "params.yaml").read_text())["variant"] == "small_kd"
    from kdgat.lakehouse.tracking import offline_runs, read_offline_run
    wb = read_offline_run(offline_runs(kd_gat)[0])  # W&B, offline: parameters, final metrics, training curve
    assert wb["config"]["variant"] == "small_kd" and wb["summary"]["parameters"] > 0 and wb["history"], wb
    assert (run / "synthetic" / "summary.parquet").is_file()
    # every parameter papermill injected into an executed stage notebook is one its template declares
    import ast, papermill
    templates = Path(__file__).resolve().parents[1] / "nbs" / "stages"
    executed = sorted(run.rglob("*/*.ipynb"))
    assert len(executed) == 11, executed
    for nb in executed:
        declared = papermill.inspect_notebook(str(templates / nb.name))
        cells = [c for c in json.loads(nb.read_text())["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert len(cells) == 1, nb
        src = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
        injected = {t.id for node in ast.parse(src).body if isinstance(node, ast.Assign) for t in node.targets}
        assert injected and injected <= set(declared), (nb, injected - set(declared))

    st = kdgat(root, "status", run.name)
    assert st.returncode == 0 and "11 success" in st.stdout, st.stdout
    q = kdgat(root, "query", "select dataset, model, scale, kd, scenario, f1 from metrics "
                             f"where run_id = '{run.name}' and threshold_method = 'f1'", "--format", "json")
    rows = json.loads(q.stdout)
    assert {(x["model"], x["kd"]) for x in rows} == {("gbt", False), ("vgae", True), ("gat", True), ("fusion", True)}
    assert {x["scenario"] for x in rows} >= {"test_01_known_vehicle_known_attack", "test_04_unknown_vehicle_unknown_attack"}

    # the same run again: every stage is complete with the same hash, so nothing executes
    again = kdgat(root, "run", "--resume", run.name, "--variants", "small_kd", *QUICK)
    assert again.returncode == 0 and "(11 reused)" in again.stdout, again.stdout


def test_a_failing_stage_skips_its_dependents_and_says_why(root):
    r = kdgat(root, "run", "--variants", "small", "--no-baseline", "--tag", "broken", *QUICK, *NO_EXPLAIN,
              "--set", "models.gat_small.pool_aggrs=[nonsense]")
    assert r.returncode == 4, r.stdout + r.stderr
    run = _run_dir(r.stdout)
    recs = {x["stage"]: x for x in _records(root, run.name)}
    gat = recs["synthetic/none/seed0/small/gat"]
    assert gat["status"] == "failed" and "nonsense" in gat["failure_reason"], gat
    for key in ("synthetic/none/seed0/small/fusion", "synthetic/none/seed0/small/evaluate"):
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
    args = ["run", "--variants", "small", "--no-baseline", "--tag", "killed", *QUICK, *NO_EXPLAIN]
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

    r = kdgat(root, "run", "--resume", run.name, "--variants", "small", "--no-baseline", *QUICK, *NO_EXPLAIN)
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
    args = ["run", "--variants", "small", "--no-baseline", *QUICK, *NO_EXPLAIN]
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
    # the same command and seed in two processes at once: the same numbers, row for row
    import pandas as pd
    same = ["stage", "threshold_method", "scenario", "model", "f1", "roc_auc", "pr_auc", "recall", "fpr", "threshold",
            "f1_margin_min", "f1_margin_max", "false_alarms_per_hour"]
    a, b = (pd.read_parquet(Path(root) / "runs" / rid / "synthetic" / "results.parquet")[same].sort_values(same[:4])
            .reset_index(drop=True) for rid in ids)
    pd.testing.assert_frame_equal(a, b)


def test_report_evaluate_bench_and_paper_read_the_run(root, kd_run):
    "The run's report comes from the lakehouse; `kdgat evaluate`, `kdgat bench infer` and the paper read the same run."
    import pandas as pd
    summary = pd.read_parquet(kd_run / "synthetic" / "summary.parquet")
    assert {"f1_mean", "f1_std", "f1_min", "f1_max", "f1_margin_min_min", "roc_auc_mean", "pr_auc_mean",
            "false_alarms_per_hour_mean"} <= set(summary.columns)
    assert set(summary.threshold_method) == {"f1", "fpr1%", "fpr0.1%"}
    ev = kdgat(root, "evaluate", kd_run.name)
    assert ev.returncode == 0 and "test_02_unknown_vehicle_known_attack" in ev.stdout and "±" in ev.stdout, ev.stdout + ev.stderr
    md = kdgat(root, "evaluate", kd_run.name, "--markdown")
    assert md.returncode == 0 and md.stdout.startswith(f"Generated by `kdgat evaluate {kd_run.name} --markdown`"), md.stdout
    assert "| none | small_kd | gat |" in md.stdout and "| none | baseline | gbt |" in md.stdout
    b = kdgat(root, "bench", "infer", "--run", kd_run.name, "--json", timeout=900)
    assert b.returncode == 0, b.stderr[-3000:]
    out = json.loads(b.stdout)
    assert {m["model"] for m in out["models"]} == {"gat_large", "gat_small_kd", "vgae_large", "vgae_small_kd"}, out
    for m in out["models"]: assert m["p99_ms"] >= m["p50_ms"] > 0 and m["windows_per_second"] > 0 and m["parameters"] > 0
    # the paper's results chapter computes its tables from this run, executed the way `kdgat site` executes it
    chapter = Path(__file__).resolve().parents[1] / "paper" / "02-results.ipynb"
    out_nb = kd_run / "paper-02-results.ipynb"
    r = subprocess.run([sys.executable, "-m", "papermill", "--no-progress-bar", str(chapter), str(out_nb), "-p", "run_id", kd_run.name,
                        "-k", "python3"], env={**_env(root), "KD_GAT_STATIC_FIGURES": "0"}, capture_output=True, text=True, timeout=300)
    executed = out_nb.read_text() if out_nb.is_file() else ""
    assert r.returncode == 0 and "test_04_unknown_vehicle_unknown_attack" in executed and kd_run.name in executed, r.stderr[-3000:]


def test_editing_a_model_module_reruns_its_training_stages(root, tmp_path):
    "The stage hash covers the package's code: after an edit to models/gat.py, `--resume` runs the training again."
    import shutil
    project = Path(__file__).resolve().parents[1]
    copy = tmp_path / "project"
    shutil.copytree(project / "kdgat", copy / "kdgat", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(project / "nbs" / "stages", copy / "nbs" / "stages")
    env = {**_env(root), "PYTHONPATH": str(copy)}
    def run(*args):  # outside the project folder, so that nothing imports kdgat from the current directory
        return subprocess.run([KDGAT, *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    where = subprocess.run([sys.executable, "-c", "import kdgat; print(kdgat.__file__)"], env=env, capture_output=True,
                           text=True, cwd=tmp_path)
    assert where.stdout.strip() == str(copy / "kdgat" / "__init__.py"), where  # the copy is what runs
    args = ["--variants", "small", "--no-baseline", *QUICK, *NO_EXPLAIN]
    first = run("run", "--tag", "edited", *args)
    assert first.returncode == 0, first.stdout + first.stderr
    rid = _run_dir(first.stdout).name
    same = run("run", "--resume", rid, *args)
    assert same.returncode == 0 and "(5 reused)" in same.stdout, same.stdout
    gat = copy / "kdgat" / "models" / "gat.py"
    gat.write_text(gat.read_text() + "\n# an edit to the model's module\n")
    edited = run("run", "--resume", rid, *args)
    assert edited.returncode == 0, edited.stdout + edited.stderr
    done = [l.split("]", 1)[1].split() for l in edited.stdout.splitlines() if l.startswith("[")]  # [ 3/5] ok KEY ...
    lines = {parts[1]: parts[0] for parts in done}
    for model in ("vgae", "gat", "fusion"):
        assert lines[f"synthetic/none/seed0/small/{model}"] == "ok", edited.stdout
