"""The lakehouse's S3 mirror against a real S3 HTTP endpoint (moto's standalone server on loopback), through boto3.

The local lakehouse is primary: with the endpoint up, files reach the bucket; down or black-holed, `write_stage`
still returns in milliseconds and everything is queryable locally; back up, the queue drains by itself and `sync`
(`catch_up`) uploads whatever the (restarted, empty) server lost.
"""
from __future__ import annotations
import multiprocessing as mp
import socket, subprocess, sys, threading, time
from pathlib import Path

import pandas as pd
import pytest

from kdgat.config import KDGATConfig, Paths
from kdgat.lakehouse.records import Lakehouse
from kdgat.lakehouse.s3 import S3Mirror

pytestmark = pytest.mark.slow

BUCKET = "kdgat-test"
MOTO = Path(sys.executable).parent / "moto_server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    "moto_server on a fixed loopback port; start/stop (by PID) as often as a test needs. State lives in memory."
    def __init__(self, port: int):
        self.port, self.proc = port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self):
        assert self.proc is None
        self.proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None: raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("moto_server did not start in 20 s")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill(); self.proc.wait(10)
            self.proc = None


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    "Dummy credentials, whatever the machine has configured."
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "KD_GAT_S3_ENDPOINT"): monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "kdgat")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "kdgat")


@pytest.fixture
def server():
    if not MOTO.exists(): pytest.fail(f"{MOTO} not found: install the dev extras (moto[server], boto3)")
    s = MotoServer(free_port())
    try: yield s.start()
    finally: s.stop()


def record(i: int, **kw) -> dict:
    return {"run_id": "run-s3", "stage": f"hcrl_sa/gat/seed{i}", "stage_kind": "train", "dataset": "hcrl_sa",
            "model": "gat", "scale": "small", "kd": True, "variant": "small_kd", "seed": i, "success": i % 3 != 2,
            "failure_reason": None if i % 3 != 2 else "boom", "seconds": 1.0 + i,
            "started_at": "2026-01-01T00:00:00+00:00", "finished_at": f"2026-01-01T00:{i:02d}:00+00:00",
            "metrics": {"f1": 0.9 + i / 1000}, **kw}


def table(i: int) -> pd.DataFrame:
    return pd.DataFrame({"dataset": "hcrl_sa", "model": "gat", "scale": "small", "kd": True, "seed": i,
                         "scenario": ["test_01", "test_02"], "f1": [0.99, 0.9], "n": [100, 200]})


def local_files(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


ENDPOINT_TIMEOUT = 30.0  # seconds: the mirror's connect and read timeouts where the endpoint is down


def timed_writes(lh: Lakehouse, ids) -> list[float]:
    out = []
    for i in ids:
        t0 = time.perf_counter()
        lh.write_stage(record(i), table(i))
        out.append(time.perf_counter() - t0)
    return out


def test_endpoint_up(server, tmp_path, monkeypatch):
    "(a) Written locally and, after flush, in the bucket; the configured endpoint is overridden by KD_GAT_S3_ENDPOINT."
    monkeypatch.setenv("KD_GAT_S3_ENDPOINT", server.url)
    cfg = KDGATConfig.model_validate({"lakehouse": {"s3_endpoint": "http://127.0.0.1:1", "s3_bucket": BUCKET}})
    with Lakehouse.from_config(cfg, Paths.from_env(tmp_path / "data")) as lh:
        assert lh.mirror is not None and lh.mirror.endpoint_url == server.url
        took = timed_writes(lh, range(6))
        assert lh.flush(15), lh.mirror.stats
        assert lh.mirror.stats["uploaded"] == 12 and lh.mirror.stats["dropped"] == 0
        assert lh.mirror.remote_sizes() == local_files(lh.root)
        assert lh.sync() == 0
        # what a reader of the bucket sees is the same data
        body = lh.mirror.client().get_object(Bucket=BUCKET, Key=lh.mirror.key(next(iter(local_files(lh.root)))))["Body"].read()
        assert body
    print(f"write_stage with the mirror up: median {1e3 * sorted(took)[len(took) // 2]:.1f} ms, max {1e3 * max(took):.1f} ms")


@pytest.mark.parametrize("how", ["never_started", "stopped", "black_hole"])
def test_endpoint_down(how, tmp_path):
    "(b) Down (connection refused) or black-holed (accepts, never answers): writes stay fast, local data complete."
    port, extra = free_port(), None
    if how == "stopped":
        extra = MotoServer(port).start(); extra.stop()
    elif how == "black_hole":  # a listening socket nobody answers on: connect succeeds, the request hangs
        extra = socket.socket(); extra.bind(("127.0.0.1", port)); extra.listen(1000)
    try:
        # long endpoint timeouts: a write or a close that waited for the endpoint would take at least this long, on
        # any machine, so the bounds below test that they do not wait, not how fast this machine is
        mirror = S3Mirror(f"http://127.0.0.1:{port}", BUCKET, connect_timeout=ENDPOINT_TIMEOUT, read_timeout=ENDPOINT_TIMEOUT)
        with Lakehouse(tmp_path / "lh", mirror) as lh:
            took = timed_writes(lh, range(12))
            assert sum(took) < ENDPOINT_TIMEOUT, took
            assert lh.flush(0.5) is False
            assert mirror.pending == 24 and mirror.stats["uploaded"] == 0
            n = lh.query("select count(*) n, sum(case when success then 0 else 1 end) failed from stages").iloc[0]
            assert (int(n.n), int(n.failed)) == (12, 4)
            assert len(lh.query("select dataset, model, scale, kd, scenario, f1 from metrics")) == 24
            assert len(lh.query("select * from latest_stages")) == 12
            t0 = time.perf_counter()
        assert time.perf_counter() - t0 < ENDPOINT_TIMEOUT  # close() does not wait for the endpoint
        if how != "black_hole": assert mirror.stats["failed_attempts"] >= 1 and not mirror.stats["healthy"]
        print(f"write_stage with the endpoint {how}: median {1e3 * sorted(took)[len(took) // 2]:.1f} ms, max {1e3 * max(took):.1f} ms")
    finally:
        if isinstance(extra, socket.socket): extra.close()


def test_endpoint_back(server, tmp_path):
    "(c) The server goes down and comes back empty: the queue drains by itself, then sync restores everything."
    mirror = S3Mirror(server.url, BUCKET, retry_base=0.1, retry_max=0.5)
    with Lakehouse(tmp_path / "lh", mirror) as lh:
        timed_writes(lh, range(3))
        assert lh.flush(15)
        before = local_files(lh.root)
        assert mirror.remote_sizes() == before
        server.stop()
        timed_writes(lh, range(3, 8))
        deadline = time.monotonic() + 10
        while mirror.stats["failed_attempts"] < 2 and time.monotonic() < deadline: time.sleep(0.05)
        assert mirror.pending == 10 and mirror.stats["failed_attempts"] >= 2
        server.start()  # same port, empty: no bucket, no objects
        assert mirror.flush(20), mirror.stats  # no further writes: the retry loop drains the queue
        now = local_files(lh.root)
        remote = mirror.remote_sizes()
        assert set(remote) == set(now) - set(before)  # what was queued arrived; the restart lost the first three
        assert lh.sync() == len(before)
        assert mirror.remote_sizes() == now
        assert lh.sync() == 0
        assert mirror.stats["dropped"] == 0


def _writer(root: str, who: str, endpoint: str | None, go) -> None:
    mirror = S3Mirror(endpoint, BUCKET) if endpoint else None
    with Lakehouse(root, mirror) as lh:
        go.wait(30)
        for i in range(50):
            lh.write_stage(record(i, host=who, attempt=i % 2), table(i))
        if mirror is not None: assert lh.flush(30), mirror.stats


def test_two_processes(server, tmp_path):
    "(d) Two processes write 50 records each into one lakehouse at the same moment, both mirroring to one bucket."
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "lh"), f"w{k}", server.url, go)) for k in range(2)]
    for p in procs: p.start()
    time.sleep(0.2); go.set()
    for p in procs: p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    lh = Lakehouse(tmp_path / "lh")
    s = lh.query("select host, count(*) n, count(distinct record_id) ids, count(distinct seed) seeds "
                 "from stages group by host order by host")
    assert s.values.tolist() == [["w0", 50, 50, 50], ["w1", 50, 50, 50]]
    assert int(lh.query("select count(*) n from metrics").n[0]) == 200
    assert int(lh.query("select count(*) n from latest_stages").n[0]) == 50  # same (run, stage) from both
    assert not [p for p in lh.root.rglob("*") if p.name.endswith(".tmp")]
    mirror = S3Mirror(server.url, BUCKET)
    assert mirror.remote_sizes() == local_files(lh.root)
    assert mirror.catch_up(lh.root) == 0
