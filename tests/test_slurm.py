"""The SLURM job scripts run on a real (single-node) SLURM cluster: slurm/cluster.sh, started by .ci/run."""
from __future__ import annotations
import json, os, shutil, subprocess, sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("KD_GAT_REQUIRE_SLURM", "") == "1"


@pytest.fixture(scope="session")
def slurm():
    "SLURM_CONF of a running cluster: the one .ci/run started, else a private one started here (root only)."
    started = False
    if not os.environ.get("SLURM_CONF"):
        if os.geteuid() != 0 or not shutil.which("slurmctld"):
            if REQUIRE: pytest.fail("KD_GAT_REQUIRE_SLURM=1 but no SLURM cluster is running (slurm/cluster.sh up)")
            pytest.skip("no SLURM cluster: run `eval $(slurm/cluster.sh up)` (needs root and the slurm packages)")
        out = subprocess.run(["bash", str(ROOT / "slurm/cluster.sh"), "up"], capture_output=True, text=True,
                             env={**os.environ, "KD_GAT_SLURM_DIR": "/tmp/kdgat-slurm-pytest"})
        assert out.returncode == 0, out.stderr
        os.environ["SLURM_CONF"] = out.stdout.strip().split("=", 1)[1]
        started = True
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    assert r.returncode == 0 and "idle" in r.stdout, f"SLURM not usable: {r.stdout} {r.stderr}"
    yield os.environ["SLURM_CONF"]
    if started:
        subprocess.run(["bash", str(ROOT / "slurm/cluster.sh"), "down"], env={**os.environ, "KD_GAT_SLURM_DIR": "/tmp/kdgat-slurm-pytest"})
        del os.environ["SLURM_CONF"]


def _submit(script: str, log: Path, data_root: Path, mem: str, timeout: int, sbatch_args: tuple = (), **env_extra) -> str:
    "sbatch --wait a job script of slurm/ with a private data root; returns its log (asserting it succeeded)."
    env = {**os.environ, "KD_GAT_DATA_ROOT": str(data_root), "DATASET": "synthetic",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env_extra}
    env.pop("KD_GAT_RAW_ROOT", None)
    env.pop("KD_GAT_CACHE_ROOT", None)
    # the 8 CPUs / 85 GB of the cluster defaults do not fit this node: the command line overrides them
    r = subprocess.run(["sbatch", "--wait", "--cpus-per-task=2", f"--mem={mem}", f"--output={log}", "--export=ALL",
                        *sbatch_args, f"slurm/{script}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    text = log.read_text() if log.exists() else ""
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{text[-3000:]}"
    return text


def test_preprocess_job_script(slurm, tmp_path):
    text = _submit("preprocess.sbatch", tmp_path / "job.out", tmp_path / "data", "4G", 300)
    assert "kdgat preprocess: dataset synthetic" in text and "test_04_unknown_vehicle_unknown_attack" in text, text
    assert any((tmp_path / "data/cache/graphs").glob("*/*/manifest.json"))


def _tiny_synthetic_root(tmp_path: Path) -> Path:
    "A data root whose catalog makes the synthetic dataset tiny (a pipeline in a job in a few minutes)."
    data = tmp_path / "data"
    data.mkdir()
    (data / "catalog.yaml").write_text("synthetic:\n  raw: synthetic/tiny\n  synthetic: {seed: 2, scale: 0.2}\n")
    return data


@pytest.mark.slow
def test_pipeline_job_script(slurm, tmp_path):
    "`kdgat run` inside one allocation: a private Ray instance, the stage notebooks, then the post-job W&B sync."
    data = _tiny_synthetic_root(tmp_path)
    text = _submit("run.sbatch", tmp_path / "run.out", data, "8G", 900, TAG="slurmtest", SYNC_ARGS="--dry-run",
                   RAY_AUTH_MODE="disabled", KD_GAT_S3_ENDPOINT="none",
                   KD_GAT_ARGS="--seeds 0 --variants small --no-baseline --set training.max_epochs=1 --set explain.epochs=10 "
                              "--set explain.windows_per_kind=1")
    # the explain stage runs inside the allocation too
    assert "kdgat run: dataset synthetic" in text and "done in" in text and "(6 success)" in text, text[-3000:]
    assert "offline W&B run(s)" in text, text[-2000:]
    run = next((data / "runs").glob("*-slurmtest"))
    assert (run / "_COMPLETE.json").is_file()
    assert (run / "synthetic/none/seed0/small/evaluate/evaluate.ipynb").is_file()
    assert (run / "synthetic/summary.parquet").is_file()  # the report step ran inside the job


@pytest.mark.slow
def test_ray_cluster_job_script(slurm, tmp_path):
    "`kdgat run` on the Ray cluster the multi-node job script starts through srun (one node here; any number on OSC)."
    data = _tiny_synthetic_root(tmp_path)
    text = _submit("ray-cluster.sbatch", tmp_path / "ray.out", data, "8G", 900, TAG="raycluster", SYNC_ARGS="--dry-run",
                   RAY_AUTH_MODE="disabled", KD_GAT_S3_ENDPOINT="none", KD_GAT_RAY_LAUNCH="srun",
                   KD_GAT_ARGS="--seeds 0 --variants small --no-baseline --set training.max_epochs=1 --set explain.seeds=0",
                   sbatch_args=["--nodes=1"])
    assert "kdgat ray cluster: 1 node(s)" in text and "Ray cluster up: 1 node(s)" in text, text[-3000:]
    assert "(5 success)" in text and "stages per node:" in text and "5 stage(s)" in text, text[-3000:]
    run = next((data / "runs").glob("*-raycluster"))
    done = json.loads((run / "_COMPLETE.json").read_text())
    assert done["status"] == "success" and len({s["node"] for s in done["stages"]}) == 1
    # the head was stopped with the job: no Ray process of this job outlives it
    assert not any("kdgat-ray-" in " ".join(p.cmdline()) for p in psutil.process_iter() if _alive(p)), "a Ray node outlived its job"


def _alive(p) -> bool:
    try: return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error: return False
