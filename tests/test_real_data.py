"""The data path on the real captures in ../shared/data (reached through KD_GAT_REAL_DATA)."""
from __future__ import annotations
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from kdgat.data.readers import read_can_csv, read_candump

KDGAT = str(Path(sys.executable).parent / "kdgat")
HCRL_SPLITS = ["train", "test_01_known_vehicle_known_attack", "test_02_unknown_vehicle_known_attack",
               "test_03_known_vehicle_unknown_attack", "test_04_unknown_vehicle_unknown_attack"]


def test_every_hcrl_sa_file_reads_strictly(real_data):
    files = sorted((real_data / "can/hcrl_sa").glob("*/*.csv"))
    assert len(files) == 13
    rows = attacks = 0
    for f in files:
        fr = read_can_csv(f)
        n_lines = sum(1 for _ in f.open()) - 1
        assert len(fr) == n_lines and fr.n_quarantined == 0, f
        assert (np.diff(fr.timestamp) >= 0).all() and fr.dlc.max() <= 8
        rows += len(fr); attacks += int(fr.label.sum())
    assert rows == 1_908_595
    assert abs(attacks / rows - 0.096) < 0.005  # DATA.md: 9.6 % attack rows


def test_candump_samples(real_data):
    counts = {}
    for f in sorted((real_data / "can/candump_sample").glob("*.log")):
        fr = read_candump(f)
        counts[f.name.split("-")[4] if "malicious" in f.name else "benign"] = (len(fr), int(fr.label.sum()))
        assert len(np.unique(fr.can_id)) == 18  # the 18 IDs listed in the capture's JSON
    assert counts == {"benign": (17_935, 0), "CONST": (17_935, 60), "DOUBLE": (17_935, 661)}


def _preprocess(real_data, data_root, *extra):
    env = {**os.environ, "KD_GAT_DATA_ROOT": str(data_root), "KD_GAT_RAW_ROOT": str(real_data)}
    env.pop("KD_GAT_CACHE_ROOT", None)
    return subprocess.run([KDGAT, "preprocess", "--dataset", "hcrl_sa", *extra], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_kdgat_preprocess_hcrl_sa(real_data, tmp_path):
    r = _preprocess(real_data, tmp_path, "--executor", "local")
    assert r.returncode == 0, r.stderr
    for split in HCRL_SPLITS: assert split in r.stdout
    assert "11 file(s) built, 0 reused" in r.stdout, r.stdout
    again = _preprocess(real_data, tmp_path, "--json")
    assert again.returncode == 0, again.stderr
    rep = json.loads(again.stdout)
    assert rep["executor"] == "cache" and all(f["reused"] for f in rep["files"])
    for f in rep["files"]:
        if f["duplicate_of"]: continue
        n = sum(1 for _ in open(f["path"])) - 1
        assert f["messages"] == n and f["graphs"] == n // 100, f
    # train_02's attack-free files are byte-identical copies of train_01's: processed once
    assert sum(1 for f in rep["files"] if f["duplicate_of"]) == 2
    by_split = {}
    for f in rep["files"]:
        if not f["duplicate_of"]: by_split[f["split"]] = by_split.get(f["split"], 0) + f["attack_graphs"]
    assert set(by_split) == set(HCRL_SPLITS) and all(v > 0 for v in by_split.values())


@pytest.mark.slow
def test_vocabulary_is_fitted_on_training_only(real_data, data_root):
    os.environ["KD_GAT_RAW_ROOT"] = str(real_data)
    try:
        from kdgat.config import PreprocessConfig
        from kdgat.data.preprocess import preprocess_dataset
        from kdgat.data.vocabulary import EntityVocabulary
        rep = preprocess_dataset("hcrl_sa", PreprocessConfig(executor="local"))
    finally: del os.environ["KD_GAT_RAW_ROOT"]
    vocab = EntityVocabulary.load(rep.vocabulary)
    train_ids = np.unique(np.concatenate([read_can_csv(f).can_id for f in sorted((real_data / "can/hcrl_sa").glob("train_*/*.csv"))]))
    assert np.array_equal(vocab.ids, train_ids)
    # the Spark (test_02, test_04) is never seen in training: its windows carry unseen IDs only if the ID is outside
    # the training vocabulary; fuzzing in training covers most of the 11-bit space, so count rather than assume
    spark = rep.load("test_04_unknown_vehicle_unknown_attack")
    kia = rep.load("test_03_known_vehicle_unknown_attack")
    assert spark.tensors["num_oov"].float().mean() >= kia.tensors["num_oov"].float().mean()
    g = spark[0]
    assert g.x.shape[1] == 13 and g.edge_attr.shape[1] == 11 and g.edge_index.max() < g.num_nodes


def test_bench_preprocess_prints_json(real_data):
    f = real_data / "can/hcrl_sa/train_02_with_attacks/DoS-kia.csv"
    r = subprocess.run([KDGAT, "bench", "preprocess", "--input", str(f), "--json", "--repeat", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["messages"] == 181_901 and out["graphs"] == 1_819
    for k in ("seconds", "messages_per_second", "peak_rss_mb"): assert out[k] > 0
    print(f"\nbench preprocess DoS-kia.csv: {out['messages_per_second']:,} messages/s on one core, "
          f"first run {out['first_messages_per_second']:,}/s, peak RSS {out['peak_rss_mb']} MB")
