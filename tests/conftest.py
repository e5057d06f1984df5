"""Shared fixtures: temporary data roots, the real datasets in ../shared/data, one Ray instance per test run."""
from __future__ import annotations
import os
from pathlib import Path

import pytest

REAL = os.environ.get("KD_GAT_REAL_DATA", "").strip()
REQUIRE_REAL = os.environ.get("KD_GAT_REQUIRE_REAL_DATA", "") == "1"


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    "A fresh KD_GAT_DATA_ROOT for one test (raw root and cache root follow it)."
    for var in ("KD_GAT_CACHE_ROOT", "KD_GAT_RAW_ROOT"): monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KD_GAT_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    "The folder laid out like ../shared/data (can/hcrl_sa, can/candump_sample), from KD_GAT_REAL_DATA."
    if not REAL:
        if REQUIRE_REAL: pytest.fail("KD_GAT_REQUIRE_REAL_DATA=1 but KD_GAT_REAL_DATA is not set")
        pytest.skip("real data not available: set KD_GAT_REAL_DATA to a folder laid out like ../shared/data")
    root = Path(REAL)
    if not (root / "can" / "hcrl_sa").is_dir(): pytest.fail(f"KD_GAT_REAL_DATA={root} has no can/hcrl_sa folder")
    return root


@pytest.fixture(scope="session")
def ray_instance():
    "One private local Ray for the whole test run (each start costs seconds and ~0.6 GB)."
    from kdgat.parallel import ray_session
    with ray_session(num_cpus=2) as ray:
        yield ray
