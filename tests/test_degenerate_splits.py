"""Splits that cannot train or validate are refused before training, and degenerate scenarios are marked in every table.

A small synthetic dataset (built once for the module, a few seconds) gives real captures; the tables are built from
hand-made model outputs, so nothing here trains a model.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from kdgat.catalog import Validation, get_entry
from kdgat.config import KDGATConfig, Paths, PreprocessConfig
from kdgat.data.captures import SUPERVISED_MODELS, SplitError, check_splits, load_captures
from kdgat.data.preprocess import preprocess_dataset
from kdgat.evaluate.metrics import degenerate_reason
from kdgat.evaluate.results import model_rows, results_markdown, summarize_results, summary_table
from kdgat.train.steps import TrainedModel, fit_baseline, train_gat


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    "The preprocessed small synthetic dataset: (report, entry, paths)."
    paths = Paths.from_env(str(tmp_path_factory.mktemp("splits") / "data"))
    entry = get_entry("synthetic", paths=paths).model_copy(update={"synthetic": {"seed": 0, "scale": 0.3}})
    return preprocess_dataset(entry, PreprocessConfig(executor="local"), paths=paths), entry, paths


def _load(synthetic, **validation):
    report, entry, paths = synthetic
    return load_captures(report, validation=Validation(**validation) if validation else None, root=entry.root(paths))


def _train_caps(caps):
    return [c for c in caps.captures if c.split == "train"]


def test_validation_by_captures_holds_out_whole_captures(synthetic):
    for globs in (["dos-alpha.csv"], ["train_02_with_attacks/dos-*"], ["*/dos-alpha.csv"]):  # file name or relative path
        caps = _load(synthetic, by="captures", captures=globs)
        for c in _train_caps(caps):
            scored = c.role[~c.calibration]
            assert set(scored) == ({"val"} if c.name == "dos-alpha.csv" else {"train"}), (globs, c.name)
            assert (c.role[c.calibration] == "calibration").all()
        assert all(set(c.role) <= {"test", "calibration"} for c in caps.captures if c.split != "train")
    with pytest.raises(SplitError) as e:  # dos-beta.csv exists, but only as a test capture
        _load(synthetic, by="captures", captures=["dos-alpha.csv", "*dos-beta.csv"])
    msg = str(e.value)
    assert "'*dos-beta.csv'" in msg and "'dos-alpha.csv'" not in msg and msg.startswith("dataset 'synthetic'")
    assert "train_01_attack_free/attack-free-alpha.csv" in msg and "train_02_with_attacks/spoofing-alpha.csv" in msg


def test_validation_by_time_at_start_and_at_end(synthetic):
    end, start = _load(synthetic), _load(synthetic, by="time", at="start")
    assert end.validation.at == "end" and start.validation.at == "start"
    for a, b in zip(_train_caps(start), _train_caps(end)):
        t = a.graphs.tensors["window_start"].numpy()
        k = len(b.indices("val"))
        assert k > 0 and len(a.indices("val")) == k
        # at the start: the first k windows after the calibration prefix, all before every training window
        assert a.indices("val").tolist() == np.flatnonzero(~a.calibration)[:k].tolist()
        assert t[a.indices("val")].max() < t[a.indices("train")].min()
        # at the end: the last k windows, all after every training window
        assert b.indices("val").tolist() == list(range(len(b.role) - k, len(b.role)))
        assert t[b.indices("val")].min() > t[b.indices("train")].max()
    assert _load(synthetic, by="time", at="start", fraction=0.4).select("val").num_graphs > start.select("val").num_graphs


def _suggested(msg: str) -> list[Validation]:
    "The validation strategies a SplitError's message suggests, parsed as the catalog would read them."
    return [Validation(**yaml.safe_load(m)) for m in re.findall(r"^\s+validation: (\{.*?\})\s", msg, flags=re.M)]


def test_validation_without_attacks_stops_with_a_working_suggestion(synthetic):
    caps = _load(synthetic, by="captures", captures=["attack-free-*"])
    check = check_splits(caps)
    assert not check.ok and check.counts["val"][0] == 0 and check.counts["val"][1] > 0
    with pytest.raises(SplitError) as e:
        check.require()
    msg = str(e.value)
    assert msg.startswith("dataset 'synthetic'") and "validation holds no attack window" in msg
    suggestions = _suggested(msg)
    assert {v.by for v in suggestions} == {"time", "captures"}, msg
    assert any(v.by == "time" and v.at == "start" for v in suggestions)
    for v in suggestions:  # every suggestion works on these windows
        fixed = _load(synthetic, **v.model_dump())
        assert check_splits(fixed).ok, v
        assert check_splits(fixed).counts["val"][0] > 0


def test_training_without_attack_windows_refuses_the_supervised_models(synthetic, tmp_path):
    caps = _load(synthetic, by="captures", captures=["train_02_with_attacks/*"])
    assert check_splits(caps, ["vgae"]).ok  # the VGAE trains on normal windows only
    for m in SUPERVISED_MODELS:
        with pytest.raises(SplitError, match=f"training holds no attack window .*{m} needs both classes"):
            check_splits(caps, [m]).require()
    cfg = KDGATConfig().model_copy(update={"training": KDGATConfig().training.model_copy(update={"accelerator": "cpu"})})
    with pytest.raises(SplitError, match="dataset 'synthetic'"):
        train_gat(caps, cfg, 0, "small", tmp_path / "gat")
    assert not (tmp_path / "gat").exists()  # refused before anything was built or written
    with pytest.raises(SplitError):
        fit_baseline(caps, 0)
    # no training capture with attacks at all: no validation strategy can help, and the message says what to change
    from dataclasses import replace
    plain = _load(synthetic)
    normal_only = replace(plain, captures=[c for c in plain.captures if c.split != "train" or "attack-free" in c.name])
    with pytest.raises(SplitError, match="add training captures with attacks"):
        check_splits(normal_only, ["vgae"]).require()


def test_the_stage_uses_the_entry_validation(synthetic, tmp_path):
    from kdgat.pipeline.stages import StageRef, _captures, stage_dir
    report, entry, paths = synthetic
    run = tmp_path / "run"
    art = stage_dir(run, StageRef("preprocess", "synthetic")) / "artifacts"
    art.mkdir(parents=True)
    (art / "report.json").write_text(report.to_json())
    cat = tmp_path / "catalog.yaml"
    cat.write_text("synthetic:\n  validation: {by: time, at: start, fraction: 0.3}\n")
    cfg = KDGATConfig().model_copy(update={"dataset": KDGATConfig().dataset.model_copy(update={"catalog": cat})})
    caps = _captures(run, StageRef("train", "synthetic", "none", 0, "small", "gat"), cfg, paths)
    assert (caps.validation.by, caps.validation.at, caps.val_fraction) == ("time", "start", 0.3)
    assert caps.captures[0].path == "train_01_attack_free/attack-free-alpha.csv"


def _outputs(y, s):
    n = len(y)
    start = np.arange(n, dtype=np.float64)
    return {"score": np.asarray(s, np.float64), "label": np.asarray(y, np.int8), "capture": np.full(n, "c"),
            "window_start": start, "window_end": start + 1, "unseen_id": np.zeros(n, bool)}


def test_markdown_marks_zero_and_too_few_attack_scenarios(synthetic):
    caps = _load(synthetic)
    val = _outputs([0] * 10 + [1] * 6, [0.1] * 10 + [0.9] * 6)
    outputs = {"val": val,
               "test_01_known_vehicle_known_attack": _outputs([0] * 10 + [1] * 10, [0.1] * 10 + [0.3, 0.9] * 5),
               "test_02_unknown_vehicle_known_attack": _outputs([0] * 20, [0.1] * 19 + [0.95]),  # no attack window
               "test_03_known_vehicle_unknown_attack": _outputs([0] * 20 + [1] * 3, [0.1] * 20 + [0.95] * 3)}  # 3 < 5
    m = TrainedModel("gat", "small", outputs, parameters=1, calibration=caps.calibration_counts())
    rows = pd.DataFrame(model_rows(m)).assign(dataset="synthetic", calibration="none", seed=0)
    assert {"calibration_windows", "calibration_attack_windows"} <= set(rows.columns)
    summary = summarize_results(rows)
    md = results_markdown(summary, "run", "abc1234")
    tables = {t.split("**")[0]: t for t in md.split("\n\n**")[1:]}
    f1_row = next(l for l in tables[next(k for k in tables if k.startswith("F1"))].splitlines() if l.startswith("| none"))
    cells = [c.strip() for c in f1_row.strip("|").split("|")]
    assert cells[4:6] == ["n/a (no attack windows)", "n/a (too few attack windows (3 < 5))"], cells
    assert not cells[3].startswith("n/a")
    for title in ("Recall at a 1 %", "False alarms per hour"):  # every threshold metric of those rows
        row = next(l for l in tables[next(k for k in tables if k.startswith(title))].splitlines() if l.startswith("| none"))
        assert "n/a (no attack windows) | n/a (too few attack windows (3 < 5))" in row, row
    auc = summary_table(summary, "roc_auc").loc[("none", "small", "gat")]
    assert auc["test_02_unknown_vehicle_known_attack"] == "n/a (no attack windows)"
    assert auc["test_03_known_vehicle_unknown_attack"] == "1.000 ± 0.000 (too few attack windows (3 < 5))"
    # the synthetic attacks start inside some calibration prefixes: said under the tables
    held = caps.calibration_counts()["test_01_known_vehicle_known_attack"]
    assert held["calibration_attack_windows"] > 0
    note = next(p for p in md.split("\n\n") if p.startswith("*Note:* Calibration windows held attacks in "))
    assert f"test_01_known_vehicle_known_attack: {held['calibration_attack_windows']} of {held['calibration_windows']}" in note
    assert "val (the training captures): " in note


def test_flagging_every_window_is_not_a_result():
    y = np.r_[np.zeros(90, int), np.ones(10, int)]
    s = np.r_[np.linspace(0.2, 0.5, 90), np.linspace(0.6, 0.9, 9), 0.0]  # one attack window below every normal one
    assert degenerate_reason(y, s, 0.55) is None
    assert degenerate_reason(y, s, 0.0) == "threshold flags every window"
    assert degenerate_reason(y, s, 0.1) == "threshold flags every normal window"  # F1 below the prevalence F1
    assert degenerate_reason(y[:94], s[:94], 0.55) == "too few attack windows (4 < 5)"
    assert degenerate_reason(y[:94], s[:94], 0.55, min_attack_windows=4) is None
