"""The DAG on a Ray cluster of two nodes: a head and a worker node on loopback (`ray.cluster_utils.Cluster`), joined by
`kdgat run --address`, as `slurm/ray-cluster.sbatch` does across the nodes of an allocation.

Each node offers one CPU and a stage asks for one. Two seeds make four training stages ready at once, then two fusion and
two evaluation stages: far more work than one node can do before the second node's first worker is up (seconds), so
the run uses both (with one seed, Ray may reuse the first node's worker for the GAT when the VGAE ends before the
second node's worker has started: tasks of one function are handed to an idle leased worker first). Every stage's
record says which node ran it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

KDGAT = str(Path(sys.executable).with_name("kdgat"))
QUICK = ["--seeds", "0", "1", "--variants", "small", "--no-baseline", "--set", "explain.seeds=0",
         "--set", "training.max_epochs=1", "--set", "training.accelerator=cpu"]


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    "A head and a worker node, one CPU each, on this machine; stopped afterwards (only the processes it started)."
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("KD_GAT_DATA_ROOT", str(tmp_path / "kd-gat-data"))
    for var in ("KD_GAT_CACHE_ROOT", "KD_GAT_RAW_ROOT"): monkeypatch.delenv(var, raising=False)
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 128 * 2**20,
                                                            "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1, object_store_memory=128 * 2**20)
        cluster.wait_for_nodes()
        yield cluster, {cluster.head_node.node_id, worker.node_id}
    finally:
        cluster.shutdown()


def test_stages_run_on_both_nodes_and_say_where(two_nodes, tmp_path):
    cluster, node_ids = two_nodes
    env = {**os.environ, "KD_GAT_S3_ENDPOINT": "none"}
    r = subprocess.run([KDGAT, "run", "--address", cluster.address, "--tag", "twonodes", *QUICK], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    run = Path(next(l for l in r.stdout.splitlines() if l.startswith("run folder: ")).removeprefix("run folder: "))
    done = json.loads((run / "_COMPLETE.json").read_text())
    assert done["status"] == "success" and len(done["stages"]) == 9, done
    ran_on = {s["key"]: s["node"] for s in done["stages"]}
    assert set(ran_on.values()) == node_ids, ran_on  # both nodes worked, and nothing else did
    # the lakehouse says the same, per stage
    q = subprocess.run([KDGAT, "query", f"select stage, node from stages where run_id = '{run.name}'", "--format", "json"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    assert {x["stage"]: x["node"] for x in json.loads(q.stdout)} == ran_on
