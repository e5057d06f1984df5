"""Forked kernels in a real run (`kdgat run`, real Ray and papermill): every stage in a fresh kernel of its own, forked
from its worker's server (torch already imported), in its folder, with the runner's environment; no kernel or server
left running afterwards; `kdgat bench pipeline` splits the overhead and writes it to the lakehouse.

The stage notebooks are copies (`KD_GAT_STAGES_DIR`) with one probe cell first that reports what the kernel looked
like when the notebook started: its PID, working directory, environment, whether torch was already imported, and a
counter kept in a module (`kdgat`), which a kernel used for a second stage would show at 2.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

KDGAT = str(Path(sys.executable).with_name("kdgat"))
STAGES = Path(__file__).resolve().parents[1] / "nbs" / "stages"
QUICK = ["--seeds", "0", "--set", "training.max_epochs=1", "--set", "training.batch_size=256",
         "--set", "training.accelerator=cpu", "--set", "explain.seeds=0"]
PROBE = """import json as _json, os as _os, sys as _sys, kdgat as _kdgat
_kdgat._probe_stages = getattr(_kdgat, "_probe_stages", 0) + 1
print("PROBE " + _json.dumps({"pid": _os.getpid(), "ppid": _os.getppid(),
                             "forked": "serve_forks" in open(f"/proc/{_os.getppid()}/cmdline").read(), "cwd": _os.getcwd(), "stages_in_kernel": _kdgat._probe_stages,
                             "warm": "torch" in _sys.modules, "omp": _os.environ.get("OMP_NUM_THREADS"),
                             "runner": _os.environ.get("KD_GAT_STAGE_RUNNER"), "figures": _os.environ.get("KD_GAT_STATIC_FIGURES")}))"""


def _probed_stages(folder: Path) -> Path:
    "Copies of the stage notebooks, each with the probe as its first cell."
    folder.mkdir(parents=True)
    for nb in STAGES.glob("*.ipynb"):
        d = json.loads(nb.read_text())
        d["cells"].insert(0, {"cell_type": "code", "id": "probe", "metadata": {}, "execution_count": None, "outputs": [],
                              "source": PROBE})
        (folder / nb.name).write_text(json.dumps(d))
    return folder


def _kernels_of(root: Path) -> list[psutil.Process]:
    "Running Jupyter kernels and fork servers started for this data root (their environment names it)."
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if ("ipykernel_launcher" in cmd or "serve_forks" in cmd) and p.environ().get("KD_GAT_DATA_ROOT") == str(root):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess): pass
    return out


def test_every_stage_gets_a_fresh_forked_kernel_and_none_is_left(tmp_path):
    root = tmp_path / "data"
    env = {**os.environ, "KD_GAT_DATA_ROOT": str(root), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "KD_GAT_S3_ENDPOINT": "none", "KD_GAT_STAGES_DIR": str(_probed_stages(tmp_path / "stages"))}
    r = subprocess.run([KDGAT, "run", "--variants", "small", "--no-baseline", "--tag", "warm", *QUICK], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    run = Path(next(l for l in r.stdout.splitlines() if l.startswith("run folder: ")).removeprefix("run folder: ").strip())

    # no kernel or server outlives the run (a worker's server ends with its worker, and its kernels with the server)
    deadline = time.time() + 15
    while _kernels_of(root) and time.time() < deadline: time.sleep(0.5)
    assert not _kernels_of(root), [p.cmdline() for p in _kernels_of(root)]

    done = json.loads((run / "_COMPLETE.json").read_text())
    assert done["counts"] == {"success": 5}, done["counts"]
    probes = {}
    for s in done["stages"]:
        nb = json.loads(next((run / s["key"]).glob("*.ipynb")).read_text())
        text = "".join(nb["cells"][0]["outputs"][0]["text"])
        probes[s["key"]] = json.loads(text.removeprefix("PROBE "))
        assert s["node"], s  # the Ray node that ran the stage
        assert s["kernel_seconds"] >= 0 and s["notebook_seconds"] > 0 and s["record_seconds"] > 0, s
        assert nb["cells"][0]["execution_count"] == 1  # the server's imports left no trace in the notebook
    assert len({p["pid"] for p in probes.values()}) == 5, probes  # five stages, five kernels
    for key, p in probes.items():
        assert p["stages_in_kernel"] == 1, (key, p)  # never a kernel used for two stages
        assert p["cwd"] == str(run / key), (key, p)  # papermill's working directory: the stage folder
        assert (p["omp"], p["runner"], p["figures"]) == ("1", "1", "0"), (key, p)  # the runner's environment
    # each kernel was forked from a server that had imported torch, the very first stage's too
    assert all(p["forked"] and p["warm"] for p in probes.values()), probes

    b = subprocess.run([KDGAT, "bench", "pipeline", "--run", run.name, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr
    assert b.stdout.startswith("{"), (b.stdout, b.stderr)
    fig = json.loads(b.stdout)
    assert fig["stages_executed"] == 5 and fig["nodes"] == 1, fig
    parts = ["kernel_wait", "notebook_beyond_work", "tracking", "record", "other"]
    assert abs(sum(fig[f"overhead_{k}_seconds"] for k in parts) - fig["overhead_per_stage_seconds"]) < 0.01, fig
    q = subprocess.run([KDGAT, "query", f"select metric, value from benchmarks where benchmark = 'pipeline' and \"case\" = '{run.name}'",
                        "--format", "json"], env=env, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr
    rows = {x["metric"]: x["value"] for x in json.loads(q.stdout)}
    assert rows["overhead_per_stage_seconds"] == pytest.approx(fig["overhead_per_stage_seconds"]), rows
