"""`kdgat slurm submit` on a real SLURM cluster with accounting (slurm/cluster.sh: slurmdbd on a private MariaDB):
the DAG as array jobs chained by dependencies, a stage that fails and its dependents cancelled by SLURM and recorded
as skipped, the report written by the finishing job, and `kdgat status` with sacct's states."""
from __future__ import annotations
import datetime, json, os, subprocess, sys
from pathlib import Path

import pytest

from test_slurm import REQUIRE, ROOT, slurm  # noqa: F401  (the session's cluster)

# a small DAG: 2 seeds x (large, small) x (vgae, gat, fusion, evaluate), preprocessing, the explain stage of seed 0;
# the small GAT's pooling is nonsense, which only the small GAT's train stage reads: it fails on both seeds
OPTIONS = ["--dataset", "synthetic", "--seeds", "0", "1", "--variants", "large", "small", "--no-baseline",
           "--set", "training.max_epochs=1", "--set", "explain.epochs=5", "--set", "explain.windows_per_kind=1",
           "--set", "explain.seeds=1", "--set", "models.gat_small.pool_aggrs=[nonsense]"]
# the defaults (8 CPUs, 85 GB) do not fit the test node: one CPU and 2 GB per job
RESOURCES = [a for kind in ("preprocess", "train", "train_fusion", "evaluate", "explain")
             for a in ("--set", f"slurm.resources.{kind}.cpus=1", "--set", f"slurm.resources.{kind}.mem=2G",
                       "--set", f"slurm.resources.{kind}.time=00:20:00")]
OPTIONS += RESOURCES


def _sacct_works():
    r = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minute"], capture_output=True, text=True)
    return r.returncode == 0


def _kdgat(*args, env, timeout=900):
    return subprocess.run([str(Path(sys.executable).parent / "kdgat"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def _when(t: str) -> datetime.datetime: return datetime.datetime.fromisoformat(t)


@pytest.mark.slow
def test_submit_dag_as_jobs(slurm, tmp_path):
    if not _sacct_works():
        msg = "sacct does not answer: the cluster has no accounting (slurm/cluster.sh up starts slurmdbd)"
        if REQUIRE: pytest.fail(msg)
        pytest.skip(msg)
    data = tmp_path / "data"
    data.mkdir()
    (data / "catalog.yaml").write_text("synthetic:\n  raw: synthetic/tiny\n  synthetic: {seed: 2, scale: 0.2}\n")
    node_local = tmp_path / "node"  # the jobs' $TMPDIR: the graphs are staged there
    node_local.mkdir()
    env = {**os.environ, "KD_GAT_DATA_ROOT": str(data), "KD_GAT_S3_ENDPOINT": "none", "TMPDIR": str(node_local),
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for var in ("KD_GAT_RAW_ROOT", "KD_GAT_CACHE_ROOT"): env.pop(var, None)

    dry = _kdgat("slurm", "submit", *OPTIONS, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "--dependency=aftercorr:<synthetic/none/seeds/small/vgae>" in dry.stdout and "--array=0-1" in dry.stdout, dry.stdout
    assert not (data / "runs").exists()  # a dry run writes nothing

    r = _kdgat("slurm", "submit", *OPTIONS, "--tag", "slurmsubmit", "--wait", env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 4, out[-4000:]  # finished, with failures
    run = next((data / "runs").glob("*-slurmsubmit"))
    plan = json.loads((run / "slurm.json").read_text())
    assert all(j["job_id"] for j in plan["jobs"]) and plan["finish"]["job_id"], plan

    # the finishing job wrote the outcome and the report, as `kdgat run` does
    done = json.loads((run / "_COMPLETE.json").read_text())
    assert done["status"] == "failed" and done["executor"] == "slurm"
    assert done["counts"] == {"success": 12, "failed": 2, "skipped": 5}, done["counts"]  # 1 + 8 large + explain + 2 small VGAEs
    assert (run / "synthetic/summary.parquet").is_file()
    assert (run / "synthetic/none/seed1/large/evaluate/evaluate.ipynb").is_file()
    assert (run / "synthetic/none/seed0/large/explain/_SUCCESS.json").is_file()

    # the failure and its dependents, in the lakehouse: failed with the notebook's reason, skipped naming it and its job
    from kdgat.lakehouse.records import Lakehouse
    from kdgat.pipeline.slurm import slurm_status, stage_jobs
    jobs = stage_jobs(plan)
    lake = Lakehouse(data / "lakehouse")
    rows = lake.query(f"select stage, status, failure_reason, slurm_job_id from stages where run_id = '{run.name}' "
                      "and status <> 'success' order by stage")
    failed = rows[rows.status == "failed"]
    assert sorted(failed.stage) == ["synthetic/none/seed0/small/gat", "synthetic/none/seed1/small/gat"], rows
    assert all("nonsense" in r for r in failed.failure_reason), failed
    skipped = rows[rows.status == "skipped"].set_index("stage")
    for seed in (0, 1):
        gat = f"synthetic/none/seed{seed}/small/gat"
        for what in ("fusion", "evaluate"):
            reason = skipped.loc[f"synthetic/none/seed{seed}/small/{what}", "failure_reason"]
            assert reason == f"upstream stage {gat} failed (job {jobs[gat]})", reason
    assert "synthetic/none/seed0/small/explain" in skipped.index

    # sacct: the failed tasks FAILED, their dependents cancelled by SLURM (never started), everything else COMPLETED
    st = slurm_status(run).set_index("stage")
    assert st.loc["synthetic/none/seed0/small/gat", "state"] == "FAILED", st
    for k in ("synthetic/none/seed1/small/fusion", "synthetic/none/seed0/small/evaluate", "synthetic/none/seed0/small/explain"):
        assert st.loc[k, "state"] == "CANCELLED", st.loc[k]
    assert st.loc["synthetic/none/seed1/large/evaluate", "state"] == "COMPLETED"
    assert st.loc["(finish)", "state"] == "COMPLETED"
    assert st.loc["synthetic/none/seed0/large/gat", "max_rss"] != ""  # the batch step's peak memory
    # without accounting, scontrol says the same of the jobs slurmctld still remembers (MinJobAge: 5 minutes after
    # they end; the finishing job ended seconds ago)
    from kdgat.pipeline.slurm import scontrol_jobs
    ctl = scontrol_jobs(st.job.tolist()).set_index("job")
    assert st.loc["(finish)", "job"] in ctl.index, ctl
    for j in ctl.index.intersection(st.job):
        assert ctl.loc[j, "state"] == st.set_index("job").loc[j, "state"], (j, ctl.loc[j], st[st.job == j])

    # dependencies honoured: every stage's job started after each of its upstream stages' jobs ended
    from kdgat.pipeline.runs import RunFolder
    ran = st[st.start.map(lambda t: t not in ("", "Unknown", "None"))]
    checked = 0
    for s in RunFolder(run).stages():
        if s.key not in ran.index: continue
        for d in s.deps():
            assert _when(ran.loc[s.key, "start"]) >= _when(ran.loc[d.key, "end"]), (s.key, d.key, ran.loc[[s.key, d.key]])
            checked += 1
    assert checked >= 20, checked

    # logs in the run folder: the stage's own lines, the node-local copy of the graphs, the epilog
    log = (run / "slurm/logs/synthetic__none__seeds__large__gat_1.out").read_text()
    assert "success: synthetic/none/seed1/large/gat" in log and "graphs staged to node-local" in log, log[-3000:]
    assert "epilog: no GPU" in log, log[-2000:]
    assert "recorded as skipped: " in (run / "slurm/logs/synthetic__none__seeds__small__gat_0.out").read_text()
    assert "run " in (run / "slurm/logs/finish.out").read_text()

    # kdgat status: the run folder's view, with sacct's
    s = _kdgat("status", run.name, env=env, timeout=120)
    assert s.returncode == 4, s.stdout + s.stderr
    assert "SLURM jobs (sacct)" in s.stdout and "CANCELLED" in s.stdout and "COMPLETED" in s.stdout, s.stdout
    assert "skipped: synthetic/none/seed0/small/fusion: upstream stage synthetic/none/seed0/small/gat failed" in s.stdout


@pytest.mark.slow
def test_arrays_over_datasets_cancel_only_the_failing_dataset(slurm, tmp_path):
    "Two datasets, one seed: one array job per stage over both; the dataset whose preprocessing fails loses its own tasks only."
    if not _sacct_works():
        msg = "sacct does not answer: the cluster has no accounting (slurm/cluster.sh up starts slurmdbd)"
        if REQUIRE: pytest.fail(msg)
        pytest.skip(msg)
    data = tmp_path / "data"
    (data / "raw" / "empty").mkdir(parents=True)  # a dataset without a training file: its preprocessing fails
    (data / "catalog.yaml").write_text("synthetic:\n  raw: synthetic/tiny\n  synthetic: {seed: 2, scale: 0.2}\n"
                                       f"empty:\n  raw: {data / 'raw' / 'empty'}\n  train: [train]\n")
    env = {**os.environ, "KD_GAT_DATA_ROOT": str(data), "KD_GAT_S3_ENDPOINT": "none", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for var in ("KD_GAT_RAW_ROOT", "KD_GAT_CACHE_ROOT"): env.pop(var, None)
    opts = ["--dataset", "synthetic", "empty", "--seeds", "0", "--variants", "small", "--no-baseline",
            "--set", "training.max_epochs=1", "--set", "explain.seeds=0", *RESOURCES]
    r = _kdgat("slurm", "submit", *opts, "--tag", "twodatasets", "--wait", env=env)
    assert r.returncode == 4, (r.stdout + r.stderr)[-4000:]
    run = next((data / "runs").glob("*-twodatasets"))
    plan = json.loads((run / "slurm.json").read_text())
    assert [j["name"] for j in plan["jobs"]] == ["datasets/preprocess", "datasets/none/seeds/small/vgae", "datasets/none/seeds/small/gat",
                                                 "datasets/none/seeds/small/fusion", "datasets/none/seeds/small/evaluate"], plan["jobs"]
    assert all(j["array"] for j in plan["jobs"])
    from kdgat.pipeline.slurm import slurm_status
    st = slurm_status(run).set_index("stage")
    assert (st.loc["empty/preprocess", "state"], st.loc["synthetic/preprocess", "state"]) == ("FAILED", "COMPLETED"), st
    for m in ("vgae", "gat", "fusion", "evaluate"):  # task to task: only the failing dataset's tasks were cancelled
        assert st.loc[f"synthetic/none/seed0/small/{m}", "state"] == "COMPLETED", st
        assert st.loc[f"empty/none/seed0/small/{m}", "state"] == "CANCELLED", st
    done = json.loads((run / "_COMPLETE.json").read_text())
    assert done["counts"] == {"success": 5, "failed": 1, "skipped": 4}, done["counts"]
