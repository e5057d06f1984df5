"""W&B tracking next to a caller's own W&B use in the same process (the notebook covers the rest). No network."""
from __future__ import annotations
import os

import psutil
import pytest

wandb = pytest.importorskip("wandb")
from kdgat.lakehouse.tracking import log_stage, read_offline_run


def _kids() -> set[int]:
    "This process's W&B helper processes (wandb-core): only those, since a Ray instance of another test may start workers."
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "wandb" in " ".join(p.cmdline()).lower(): out.add(p.pid)
        except psutil.Error: pass  # it ended while we looked
    return out


def test_callers_run_and_service_survive(tmp_path, monkeypatch):
    "A caller's own W&B run and wandb-core stay up; our env changes are undone; the caller's files stay its own."
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "caller"))
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "caller-cache"))  # the caller's own wandb-core logs there
    (tmp_path / "caller").mkdir()
    before = _kids()
    caller = wandb.init(mode="offline", project="caller", dir=str(tmp_path / "caller"),
                        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
    try:
        service = _kids() - before
        assert service, "the caller's wandb-core should be running"
        run = log_stage(tmp_path / "stage", "gat", {"lr": 0.1}, {"f1": 0.9})
        assert run is not None and read_offline_run(run)["summary"] == {"f1": 0.9}
        assert service <= _kids(), "log_stage shut down the caller's service"
        assert os.environ["WANDB_DIR"] == str(tmp_path / "caller") and os.environ["WANDB_CACHE_DIR"] == str(tmp_path / "caller-cache")
        caller.log({"x": 1})  # still usable
        caller.finish()
    finally:
        wandb.teardown()  # flushes the caller's run file (`finish` alone returns a moment before that)
    got = read_offline_run(next((tmp_path / "caller" / "wandb").glob("offline-run-*")))
    assert got["project"] == "caller" and got["history"] == [{"x": 1}]
    assert _kids() - before == set()


def test_repeated_calls_leave_nothing_running(tmp_path):
    before = _kids()
    runs = [log_stage(tmp_path / f"s{i}", f"s{i}", {"i": i}, {"f1": i / 10}) for i in range(3)]
    assert all(r is not None and r.is_relative_to(tmp_path) for r in runs)
    assert [read_offline_run(r)["config"] for r in runs] == [{"i": i} for i in range(3)]
    assert _kids() - before == set()
