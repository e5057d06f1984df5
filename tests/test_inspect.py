"""`kdgat.data.inspect` end to end: small captures in every layout, their drafted entries loaded back, and the real data."""
from __future__ import annotations
import json, re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdgat.catalog import load_catalog
from kdgat.config import Paths
from kdgat.data.inspect import CaptureInspection, FileInspection, inspect_captures

HCRL = "timestamp,arbitration_id,data_field,attack\n"


def _write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _load(ins: CaptureInspection, tmp: Path, name: str = "my_dataset", uncomment: bool = False) -> dict:
    "The drafted entries as the catalog reads them (optionally with the suggested splits uncommented)."
    text = ins.entry_yaml(name)
    if uncomment: text = "\n".join(re.sub(r"^  # (?=train:|test:|  )", "  ", ln) for ln in text.splitlines()) + "\n"
    f = tmp / f"catalog-{name}-{uncomment}.yaml"
    f.write_text(text)
    cat = load_catalog(f, paths=Paths.from_env(tmp / "data"))
    return {k: v for k, v in cat.items() if k.startswith(name)}


def _by_name(ins: CaptureInspection) -> dict[str, FileInspection]: return {f.path.name: f for f in ins.files}


def test_hcrl_layout_folders_and_splits(tmp_path, data_root):
    _write(tmp_path, "ds/train_01_attack_free/kia.csv", HCRL + "1513920189.391211,12A,10F0707400001080,0\n1513920189.3921,4F0,0000,0\n")
    _write(tmp_path, "ds/test_01_dos/dos.csv", HCRL + "1513920189.1,081,00,0\n1513920189.3,000,0000000000000000,1\n"
           "1513920189.2,000,00,1\n1513920189.4,081,00,0\n")
    ins = inspect_captures([tmp_path / "ds"])
    f = _by_name(ins)
    assert (f["kia.csv"].format, f["kia.csv"].header, f["kia.csv"].delimiter) == ("csv", True, ",")
    assert f["kia.csv"].roles == {"timestamp": "timestamp", "can_id": "arbitration_id", "payload": "data_field",
                                  "label": "attack", "index": None, "dlc": None}
    assert (f["kia.csv"].id_encoding, f["kia.csv"].id_ambiguous, f["kia.csv"].id_bits) == ("hex", False, 11)
    assert (f["dos.csv"].id_ambiguous, f["dos.csv"].labels, f["dos.csv"].attack_share) == (True, {"0": 2, "1": 2}, 0.5)
    assert (f["dos.csv"].backwards, f["dos.csv"].backwards_attacks, f["dos.csv"].time_unit) == (1, 1, "s")
    text = ins.summary()
    assert "test_01_dos/dos.csv" in text and "50.0%" in text and "AMBIGUOUS" in text
    json.dumps(ins.to_dict())  # the CLI can print it as JSON
    e = _load(ins, tmp_path)["my_dataset"]
    # one file's letters settle hex for every file written the same way
    assert (e.format, e.encoding.can_id, e.id_bits, e.labels.map, e.root(Paths.from_env())) == ("csv", "hex", 11, None, tmp_path / "ds")
    e = _load(ins, tmp_path, uncomment=True)["my_dataset"]
    assert ([s.files for s in e.train], list(e.test)) == (["train_01_attack_free"], ["test_01_dos"])


def test_byte_columns_decimal_text_labels_no_time(tmp_path, data_root):
    p = _write(tmp_path, "truck/drive.csv", "No,ID,DLC,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Class\n"
               "0,419361280,8,0,255,17,4,0,0,9,1,Benign\n1,256,8,3,1,0,0,0,0,0,0,Fuzzing\n2,256,2,3,1,,,,,,,Benign\n"
               "3,256,2,3,1,,,,,,,Benign\n")
    f = inspect_captures([p]).files[0]
    assert (f.roles["index"], f.roles["can_id"], f.roles["dlc"], f.roles["label"], f.roles["timestamp"]) == ("No", "ID", "DLC", "Class", None)
    assert f.roles["payload"] == [f"Byte{i}" for i in range(1, 9)]
    assert (f.id_encoding, f.id_ambiguous, f.id_bits, f.payload_encoding) == ("decimal", False, 29, "decimal")
    assert (f.labels, f.label_map, f.attacks) == ({"Benign": 3, "Fuzzing": 1}, {"Benign": 0, "Fuzzing": 1}, 1)
    e = _load(inspect_captures([p]), tmp_path, "truck")["truck"]
    assert (e.columns.timestamp, e.columns.index, e.columns.dlc, e.encoding.payload) == (None, "No", "DLC", "decimal")
    assert (e.labels.map, e.timestamps.rate_hz, e.id_bits) == ({"Benign": 0, "Fuzzing": 1}, 1000, 29)


@pytest.mark.parametrize("labels,expected", [(("BENIGN", "ATTACK"), {"BENIGN": 0, "ATTACK": 1}),
                                             (("R", "T"), {"R": 0, "T": 1}), (("normal", "DoS"), {"normal": 0, "DoS": 1})])
def test_text_labels_get_a_proposed_map(tmp_path, data_root, labels, expected):
    a, b = labels
    p = _write(tmp_path, "l/cap.csv", f"time,id,data,label\n0.0,1A0,0011,{a}\n0.001,2B0,0022,{b}\n0.002,1A0,0011,{a}\n")
    ins = inspect_captures([p])
    assert ins.files[0].label_map == expected
    assert _load(ins, tmp_path)["my_dataset"].labels.map == expected
    assert "# CHECK: proposed map" in ins.entry_yaml()


def test_digits_only_ids_are_ambiguous_and_the_yaml_says_so(tmp_path, data_root):
    p = _write(tmp_path, "amb/cap.csv", "timestamp,can_id,data_field,attack\n0.0,110,00,0\n0.0005,300,00,0\n0.001,110,00,0\n")
    ins = inspect_captures([p])
    f = ins.files[0]
    assert (f.id_encoding, f.id_ambiguous, f.id_readings) == ("hex", True, {"hex": 0x300, "decimal": 300})
    y = ins.entry_yaml()
    assert "# CHECK: can_id hex" in y and "ambiguous: decide hex or decimal" in y
    assert _load(ins, tmp_path)["my_dataset"].encoding.can_id == "hex"


def test_car_hacking_export_headerless_ragged(tmp_path, data_root):
    p = _write(tmp_path, "ch/gear.csv", "1478198376.389427,0316,8,05,21,68,09,21,21,00,6f,R\n1478198376.389636,018f,8,fe,5b,00,00,00,3c,00,00,R\n"
               "1478198376.389864,0260,8,19,21,22,30,08,8e,6d,3a,T\n1478198376.390000,02a0,2,64,00,R\n")
    ins = inspect_captures([p])
    f = ins.files[0]
    assert (f.header, f.roles["timestamp"], f.roles["can_id"], f.roles["dlc"], f.roles["label"]) == (False, "f0", "f1", "f2", "f11")
    assert (f.roles["payload"], f.payload_encoding, f.id_encoding, f.labels) == ([f"f{i}" for i in range(3, 11)], "hex", "hex", {"R": 3, "T": 1})
    assert any("fields" in n and "same number" in n for n in f.notes)
    assert "no header line" in ins.entry_yaml()
    _load(ins, tmp_path)


def test_candump_logs_with_and_without_labels(tmp_path, data_root):
    _write(tmp_path, "d/benign.log", "(1436509052.249713) can0 044#2A366C2A366C2A36\n(1436509052.250713) can0 110#00\n(1436509052.251713) can0 7E0#R\n")
    _write(tmp_path, "d/attack.log", "(0.000000) can0 110#02202e1300181300 False\tFalse\n(0.000177) can0 300#00030090 False\tFalse\n"
           "(0.000406) can0 410#00 1\tFalse\n")
    ins = inspect_captures([tmp_path / "d"])
    f = _by_name(ins)
    assert (f["benign.log"].format, f["benign.log"].labels, f["benign.log"].id_bits, f["benign.log"].rows) == ("candump", None, 11, 3)
    assert (f["attack.log"].labels, f["attack.log"].attacks) == ({"False": 2, "1": 1}, 1)
    e = _load(ins, tmp_path)["my_dataset"]
    assert (e.format, e.encoding.can_id, e.file_pattern) == ("candump", "hex", "*.log")
    e = _load(ins, tmp_path, uncomment=True)["my_dataset"]
    assert [s.files for s in e.train] == ["benign.log"] and list(e.test) == ["attack"]


def test_candump_display_and_mixed_formats(tmp_path, data_root):
    _write(tmp_path, "m/a.log", "(000.000000)  can0  18FCF200   [8]  E1 FF FF FF FF FF FF FF\n"
           "(000.000210)  can0  0CF00400   [8]  F0 7D 7D 00 00 00 F0 7D\n")
    _write(tmp_path, "m/b.csv", HCRL + "1.0,1A0,00,0\n1.001,1A1,00,0\n")
    ins = inspect_captures([tmp_path / "m"])
    f = _by_name(ins)
    assert (f["a.log"].format, f["a.log"].id_bits, f["a.log"].max_payload) == ("candump_display", 29, 8)
    assert f["b.csv"].format == "csv"
    y = ins.entry_yaml()
    assert "written in 2 different ways" in y
    cat = _load(ins, tmp_path)
    assert sorted(e.format for e in cat.values()) == ["candump_display", "csv"]


def test_parquet_with_its_own_names_and_integer_ids(tmp_path, data_root):
    (tmp_path / "pq").mkdir()
    pd.DataFrame({"timestamp": 1.672531e9 + np.arange(3) / 1000, "id": np.array([1105, 170, 190], np.uint32),
                  "data_field": ["0011", "22", "00112233"], "label": np.array([0, 1, 0], np.uint8), "source_file": ["x/DoS-1.csv"] * 3}
                 ).to_parquet(tmp_path / "pq/train_02_with_attacks__DoS-1.parquet")
    ins = inspect_captures([tmp_path / "pq"])
    f = ins.files[0]
    assert (f.format, f.roles["can_id"], f.roles["payload"], f.roles["label"]) == ("parquet", "id", "data_field", "label")
    assert (f.id_encoding, f.id_ambiguous, f.id_bits) == ("decimal", False, 11)
    e = _load(ins, tmp_path)["my_dataset"]
    assert (e.format, e.columns.can_id, e.encoding.can_id, e.id_bits) == ("parquet", "id", "decimal", 11)
    assert [s.files for s in _load(ins, tmp_path, uncomment=True)["my_dataset"].train] == ["train_02_with_attacks__*.parquet"]


def test_sampling_and_unreadable_files(tmp_path, data_root):
    p = _write(tmp_path, "big/cap.csv", HCRL + "".join(f"{1.5e9 + i / 1000:.6f},{0x100 + i % 7:03X},0011,{int(i % 50 == 0)}\n" for i in range(1000)))
    f = inspect_captures([p], sample_rows=100).files[0]
    assert (f.rows, f.complete) == (100, False)
    assert inspect_captures([p], sample_rows=None).files[0].rows == 1000
    q = _write(tmp_path, "junk/notes.txt", "not a capture\njust words\n")
    ins = inspect_captures([q])
    assert ins.files[0].format == "unknown" and "left out" in ins.entry_yaml()
    _load(ins, tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or folder"): inspect_captures([tmp_path / "missing.csv"])


def _read_back(ins: CaptureInspection, tmp: Path):
    "Read the inspected file through the adapter with the drafted entry; skip while the readers cannot yet."
    from kdgat.data.adapters import RawFile, get_adapter
    e = _load(ins, tmp)["my_dataset"]
    f = ins.files[0]
    try: frames = get_adapter(e).read_raw(RawFile(f.path, "test", ".", "unknown"))
    except Exception as ex: pytest.skip(f"the readers do not read this entry yet: {type(ex).__name__}: {str(ex)[:200]}")
    assert len(frames) == f.rows and int(frames.label.sum()) == (f.attacks or 0)


def test_real_hcrl_sa_csv(real_data, tmp_path, data_root):
    ins = inspect_captures([real_data / "can/hcrl_sa/test_01_known_vehicle_known_attack/DoS-sonata.csv"])
    f = ins.files[0]
    assert (f.format, f.header, f.roles["can_id"], f.roles["payload"], f.roles["label"]) == ("csv", True, "arbitration_id", "data_field", "attack")
    assert (f.id_encoding, f.id_ambiguous, f.id_bits, set(f.labels), f.time_unit, f.backwards) == ("hex", False, 11, {"0", "1"}, "s", 0)
    assert f.rows == sum(1 for _ in f.path.open()) - 1 and 0.15 < f.attack_share < 0.3
    e = _load(ins, tmp_path)["my_dataset"]
    assert (e.encoding.can_id, e.id_bits, e.labels.map) == ("hex", 11, None)
    _read_back(ins, tmp_path)


def test_real_candump_sample(real_data, tmp_path, data_root):
    ins = inspect_captures([real_data / "can/candump_sample/S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log"])
    f = ins.files[0]
    assert (f.format, f.rows, f.n_ids, f.id_bits, f.labels) == ("candump", 17_935, 18, 11, {"False": 17_875, "1": 60})
    assert _load(ins, tmp_path)["my_dataset"].format == "candump"
    _read_back(ins, tmp_path)


def test_real_set_03_parquet(real_data, tmp_path, data_root):
    files = sorted((real_data / "can/can_train_and_test_partial/set_03").glob("test_01_*.parquet"))
    if not files: pytest.skip("no set_03 parquet under KD_GAT_REAL_DATA")
    ins = inspect_captures(files[:1])
    f = ins.files[0]
    assert (f.format, f.roles["can_id"], f.roles["payload"], f.roles["label"], f.roles["timestamp"]) == ("parquet", "id", "data_field", "label", "timestamp")
    assert (f.id_encoding, f.id_ambiguous, f.id_bits, set(f.labels), f.time_unit) == ("decimal", False, 11, {"0", "1"}, "s")
    e = _load(ins, tmp_path)["my_dataset"]
    assert (e.format, e.columns.can_id, e.encoding.can_id, e.id_bits) == ("parquet", "id", "decimal", 11)
    _read_back(ins, tmp_path)
