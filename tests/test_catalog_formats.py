"""Captures described by catalog YAML alone, read end to end through the adapter: every format and option, every
misread refused with its file and line, and the real set_03 / candump_sample captures when KD_GAT_REAL_DATA is set."""
from __future__ import annotations
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdgat.catalog import CatalogError, get_entry, load_catalog
from kdgat.config import Paths
from kdgat.data.adapters import RawFile, get_adapter
from kdgat.data.schema import InputError, attack_type_from_name

REQUIRE_REAL = os.environ.get("KD_GAT_REQUIRE_REAL_DATA", "") == "1"

CATALOG = """
truck:
  raw: truck
  columns: {timestamp: null, can_id: ID, payload: [Byte1, Byte2, Byte3, Byte4, Byte5, Byte6, Byte7, Byte8], label: Class}
  encoding: {can_id: decimal, payload: decimal}
  labels: {map: {Benign: 0, Fuzzing: 1}}
  timestamps: {rate_hz: 1000}
  id_bits: 11
  train: [.]
truck_undeclared:
  raw: truck
  columns: {timestamp: null, can_id: ID, payload: [Byte1, Byte2, Byte3, Byte4, Byte5, Byte6, Byte7, Byte8], label: Class}
  encoding: {payload: decimal}
  labels: {map: {Benign: 0, Fuzzing: 1}}
  timestamps: {rate_hz: 1000}
truck_as_hex:
  raw: truck
  columns: {timestamp: null, can_id: ID, payload: [Byte1, Byte2, Byte3, Byte4, Byte5, Byte6, Byte7, Byte8], label: Class}
  encoding: {can_id: hex, payload: decimal}
  labels: {map: {Benign: 0, Fuzzing: 1}}
  timestamps: {rate_hz: 1000}
  id_bits: 11
truck_one_byte:
  raw: truck
  columns: {timestamp: null, can_id: ID, payload: Byte1, label: Class}
  encoding: {can_id: decimal}
  labels: {map: {Benign: 0, Fuzzing: 1}}
  timestamps: {rate_hz: 1000}
screen:
  raw: screen
  format: candump_display
  id_bits: 29
screen_bare:
  raw: screen
  format: candump_display
  timestamps: {rate_hz: 500}
  labels: {map: {R: 0, T: 1}}
j1939:
  raw: j1939
  columns: {timestamp: time_ms, can_id: can_id, payload: data, label: null}
  encoding: {can_id: decimal}
  timestamps: {unit: ms}
log:
  raw: log
  format: candump
tables:
  raw: tables
  format: parquet
  columns: {timestamp: t, can_id: arb, payload: hex, label: is_attack}
  encoding: {can_id: decimal}
  id_bits: 11
  train: [.]
hcrl:
  raw: hcrl
  encoding: {can_id: hex}
  id_bits: 11
ooo_sort:
  raw: ooo
  encoding: {can_id: hex}
ooo_keep:
  raw: ooo
  encoding: {can_id: hex}
  timestamps: {out_of_order: keep}
ooo_reject:
  raw: ooo
  encoding: {can_id: hex}
  timestamps: {out_of_order: reject}
"""

TRUCK = ("ID,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Class\n"
         "291,1,2,3,4,5,6,7,255,Benign\n"
         "1105,16,32,,,,,,,Fuzzing\n"
         "2047,,,,,,,,,Benign\n"
         "0,0,0,0,0,0,0,0,0,Fuzzing\n")


@pytest.fixture
def cat(tmp_path, data_root):
    "The catalog above, loaded like a user's file, over a fresh data root whose raw folder holds the captures."
    f = tmp_path / "mine.yaml"
    f.write_text(CATALOG)
    paths = Paths.from_env(data_root)
    cat = load_catalog(f, paths=paths)
    cat["_raw"] = paths.raw_root  # where the captures go
    return cat


def _file(cat, rel: str, body: str | bytes) -> Path:
    p = cat["_raw"] / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    (p.write_bytes if isinstance(body, bytes) else p.write_text)(body)
    return p


def _read(cat, name: str, path: Path, strict: bool = True):
    return get_adapter(cat[name], strict=strict).read_raw(RawFile(path, "train", ".", attack_type_from_name(path)))


def test_byte_columns_decimal_ids_label_map_no_time(cat):
    p = _file(cat, "truck/fuzzing-1.csv", TRUCK)
    fr = _read(cat, "truck", p)
    assert fr.can_id.tolist() == [291, 1105, 2047, 0]
    assert fr.dlc.tolist() == [8, 2, 0, 8] and fr.payload[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 255] and fr.payload[1, :3].tolist() == [16, 32, 0]
    assert fr.label.tolist() == [0, 1, 0, 1] and np.allclose(fr.timestamp, [0, 0.001, 0.002, 0.003]) and fr.line.tolist() == [2, 3, 4, 5]
    ad = get_adapter(cat["truck"])
    assert ad.read_entity_ids(RawFile(p, "train", ".", "fuzzing")).tolist() == fr.can_id.tolist()
    std = ad.to_standard_form(fr, RawFile(p, "train", ".", "fuzzing"))  # the standard form validates
    assert int((std.attack_type > 0).sum()) == 2


def test_misread_truck_captures_are_refused(cat):
    p = _file(cat, "truck/fuzzing-1.csv", TRUCK)
    with pytest.raises(InputError, match=r"fuzzing-1.csv: expected an encoding for the IDs of column 'ID', found only digits \(e.g. '291'\); "
                                         r"IDs made only of digits could be hex or decimal: declare encoding: \{can_id: hex\} or \{can_id: decimal\}"):
        _read(cat, "truck_undeclared", p)
    with pytest.raises(InputError, match=r"fuzzing-1.csv:3: expected an 11-bit CAN ID \(at most 0x7FF, as id_bits: 11 says\), found '1105', "
                                         r"which is 0x1105; decimal IDs read as hex\? declare encoding: \{can_id: decimal\}"):
        _read(cat, "truck_as_hex", p)
    with pytest.raises(InputError, match=r"fuzzing-1.csv:1: expected a payload of whole frames in column 'Byte1', found at most one byte in every "
                                         r"frame, beside columns that look like bytes too .*map payload to the list, e.g. payload: \[Byte1, Byte2"):
        _read(cat, "truck_one_byte", p)
    no_rate = cat["_raw"].parent / "no-rate.yaml"  # refused when the catalog is loaded, before any file is read
    no_rate.write_text("truck_no_rate:\n  raw: truck\n  columns: {timestamp: null, can_id: ID, payload: [Byte1, Byte2], label: Class}\n"
                       "  encoding: {can_id: decimal, payload: decimal}\n")
    with pytest.raises(CatalogError, match=r"dataset 'truck_no_rate': \(entry\): columns.timestamp is null: give timestamps.rate_hz"):
        load_catalog(no_rate, paths=Paths.from_env(cat["_raw"].parent))
    bad = _file(cat, "truck/bad.csv", TRUCK.replace("1105,16,32", "1A5,16,32"))
    with pytest.raises(InputError, match=r"bad.csv:3: expected a decimal CAN ID \(the entry says encoding: \{can_id: decimal\}\), found '1A5'"):
        _read(cat, "truck", bad)
    bad.write_text(TRUCK.replace("16,32,,", "16,320,,"))
    with pytest.raises(InputError, match=r"bad.csv:3: expected a byte value from 0 to 255 in column 'Byte2', found 320"):
        _read(cat, "truck", bad)
    bad.write_text(TRUCK.replace("0,0,0,0,0,0,0,0,0,Fuzzing", "0,0,0,0,0,0,0,0,0,DoS"))
    with pytest.raises(InputError, match=r"bad.csv:5: expected a label listed in labels.map \('Benign', 'Fuzzing'; set labels.default"):
        _read(cat, "truck", bad)
    bad.write_text(TRUCK.replace("Byte8,Class", "Byte9,Label"))
    with pytest.raises(InputError, match=r"bad.csv:1: expected a header line with columns .*, found no columns 'Byte8', 'Class'; the file has 'ID', "):
        _read(cat, "truck", bad)
    lenient = _read(cat, "truck", _file(cat, "truck/mixed.csv", TRUCK.replace("1105,16,32", "1A5,16,32")), strict=False)
    assert (len(lenient), lenient.n_quarantined, lenient.n_quarantined_attack, lenient.quarantine[0][0]) == (3, 1, 1, 3)


SCREEN = ("(000.000000)  can0  18FCF200   [8]  E1 FF 00 11 22 33 44 55\n"
          "(000.000250)  can0  123   [2]  11 22\n"
          "(000.000500)  can0  7E0   [8]  remote request\n")


def test_candump_display_with_and_without_times(cat):
    fr = _read(cat, "screen", _file(cat, "screen/a.log", SCREEN))
    assert fr.can_id.tolist() == [0x18FCF200, 0x123, 0x7E0] and fr.dlc.tolist() == [8, 2, 0]
    assert fr.payload[0].tolist() == [0xE1, 0xFF, 0, 0x11, 0x22, 0x33, 0x44, 0x55] and np.allclose(fr.timestamp, [0, 0.00025, 0.0005])
    bare = _file(cat, "screen/b.log", "  can0  123   [2]  11 22 R\n  can0  124   [1]  FF T\n  can1  7E0   [0]  R\n")
    fr = _read(cat, "screen_bare", bare)
    assert fr.can_id.tolist() == [0x123, 0x124, 0x7E0] and fr.label.tolist() == [0, 1, 0] and np.allclose(fr.timestamp, [0, 0.002, 0.004])
    with pytest.raises(InputError, match=r"b.log:1: expected a time '\(<seconds>\)' at the start of each line, or timestamps: \{rate_hz: \.\.\.\}"):
        _read(cat, "screen", bare)
    bad = _file(cat, "screen/c.log", SCREEN.replace("[2]  11 22", "[3]  11 22"))
    with pytest.raises(InputError, match=r"c.log:2: expected as many data bytes as its \[DLC\] says, found \[3\] and 2 data bytes"):
        _read(cat, "screen", bad)


def test_29_bit_decimal_ids(cat):
    p = _file(cat, "j1939/drive.csv", "time_ms,can_id,data\n0,419361024,00FF\n1.5,217056256,\n2,536870911,0011223344556677\n")
    fr = _read(cat, "j1939", p)
    assert fr.can_id.tolist() == [0x18FEF100, 0x0CF00400, 0x1FFFFFFF] and fr.dlc.tolist() == [2, 0, 8]
    assert np.allclose(fr.timestamp, [0, 0.0015, 0.002]) and fr.label.tolist() == [0, 0, 0]
    p.write_text("time_ms,can_id,data\n0,419361024,00\n1,536870912,00\n")
    with pytest.raises(InputError, match=r"drive.csv:3: expected a CAN ID below 0x20000000"):
        _read(cat, "j1939", p)


def test_candump_log(cat):
    p = _file(cat, "log/a.log", "(1436509052.249713) can0 044#2A366C2A366C2A36 False\tFalse\n(1436509052.249900) can0 7E0#R 1\tFalse\n")
    fr = _read(cat, "log", p)
    assert fr.can_id.tolist() == [0x44, 0x7E0] and fr.dlc.tolist() == [8, 0] and fr.label.tolist() == [0, 1]


def test_parquet_with_other_names_and_integer_ids(cat):
    tbl = pa.table({"t": [2.0, 1.0, 3.0], "arb": pa.array([1105, 170, 2047], pa.uint32()), "hex": ["0011", "614008F208E870DE\t", ""],
                    "is_attack": pa.array([1, 0, 0], pa.uint8()), "note": ["x", "y", "z"]})
    p = cat["_raw"] / "tables" / "dos-1.parquet"
    p.parent.mkdir(parents=True)
    pq.write_table(tbl, p)
    fr = _read(cat, "tables", p)  # sorted by time: row 2 first; each frame keeps its row as its line
    assert fr.can_id.tolist() == [170, 1105, 2047] and fr.line.tolist() == [2, 1, 3] and fr.label.tolist() == [0, 1, 0]
    assert fr.dlc.tolist() == [8, 2, 0] and (fr.n_reordered, fr.reordered_attack) == (1, 0)
    ad = get_adapter(cat["tables"])
    files = ad.discover_files(cat["tables"], Paths.from_env(cat["_raw"].parent))
    assert ad.build_vocabulary(files).ids.tolist() == [170, 1105, 2047]  # read through the ID-only path
    hexed = cat["tables"].model_copy(update={"encoding": cat["tables"].encoding.model_copy(update={"can_id": "hex"})})
    with pytest.raises(InputError, match=r"dos-1.parquet: expected encoding: \{can_id: decimal\} in the entry, as column 'arb' holds numbers, "
                                         r"found encoding: \{can_id: hex\}"):
        get_adapter(hexed).read_raw(RawFile(p, "train", ".", "dos"))


def test_hcrl_layout(cat):
    p = _file(cat, "hcrl/DoS-a.csv", "timestamp,arbitration_id,data_field,attack\n1513920459.745822,2C0,1400000000000000,0\n"
                                    "1513920459.746063,000,0B11,1\n")
    fr = _read(cat, "hcrl", p)
    assert fr.can_id.tolist() == [0x2C0, 0] and fr.dlc.tolist() == [8, 2] and fr.label.tolist() == [0, 1]


OOO = ("timestamp,arbitration_id,data_field,attack\n"
       "1.0,100,00,0\n3.0,101,00,0\n2.0,102,00,1\n2.5,103,00,1\n4.0,104,00,0\n3.5,105,00,1\n")


def test_out_of_order_under_each_policy(cat):
    p = _file(cat, "ooo/DoS-x.csv", OOO)
    fr = _read(cat, "ooo_sort", p)  # sorted, stable; no frame lost, every attack frame still there
    assert fr.timestamp.tolist() == [1.0, 2.0, 2.5, 3.0, 3.5, 4.0] and fr.line.tolist() == [2, 4, 5, 3, 7, 6]
    assert (len(fr), int(fr.label.sum()), fr.n_reordered, fr.reordered_attack, fr.n_quarantined) == (6, 3, 3, 3, 0)
    assert get_adapter(cat["ooo_sort"]).to_standard_form(fr, RawFile(p, "train", ".", "dos")).line.tolist() == [2, 4, 5, 3, 7, 6]
    fr = _read(cat, "ooo_keep", p)
    assert fr.line.tolist() == [2, 3, 4, 5, 6, 7] and (fr.n_reordered, fr.reordered_attack, int(fr.label.sum())) == (3, 3, 3)
    with pytest.raises(InputError, match=r"DoS-x.csv:4: expected timestamps that never go backwards, found '2.0 after 3.0'"):
        _read(cat, "ooo_reject", p)
    fr = _read(cat, "ooo_reject", p, strict=False)
    assert fr.line.tolist() == [2, 3, 6] and (fr.n_quarantined, fr.n_quarantined_attack, fr.n_reordered, fr.reordered_attack) == (3, 3, 3, 3)


# the real captures (KD_GAT_REAL_DATA): read through the built-in catalog entries

def _real_folder(real_data: Path, rel: str) -> Path:
    d = real_data / rel
    if not d.is_dir():
        if REQUIRE_REAL: pytest.fail(f"KD_GAT_REQUIRE_REAL_DATA=1 but {d} is missing")
        pytest.skip(f"{d} is not there")
    return d


def test_real_set_03_parquet(real_data, data_root, monkeypatch):
    folder = _real_folder(real_data, "can/can_train_and_test_partial/set_03")
    monkeypatch.setenv("KD_GAT_RAW_ROOT", str(real_data))
    paths = Paths.from_env(data_root)
    entry = get_entry("set_03", paths=paths)
    assert entry.root(paths).resolve() == folder.resolve()
    ad = get_adapter(entry)
    # a capture with a stray tab after one payload, and one with frames out of time order
    for name in ["train_02_with_attacks__fuzzing-3.parquet", "test_03_known_vehicle_unknown_attack__speed-accessory-1.parquet"]:
        p = folder / name
        tbl = pq.read_table(p)
        fr = ad.read_raw(RawFile(p, "train", ".", attack_type_from_name(p)))
        assert len(fr) == tbl.num_rows and fr.n_quarantined == 0
        back = np.asarray(fr.line) - 1  # each frame's row in the file
        assert sorted(back.tolist()) == list(range(tbl.num_rows))
        assert np.array_equal(fr.label, tbl["label"].to_numpy()[back]) and np.array_equal(fr.can_id, tbl["id"].to_numpy()[back])
        assert (np.diff(fr.timestamp) >= 0).all()
        std = ad.to_standard_form(fr, RawFile(p, "train", ".", attack_type_from_name(p)))
        assert int(std.label.sum()) == int(tbl["label"].to_numpy().sum())
    assert fr.n_reordered == 72  # speed-accessory-1: sorted into place, none lost


def test_real_candump_sample(real_data, data_root, monkeypatch):
    _real_folder(real_data, "can/candump_sample")
    monkeypatch.setenv("KD_GAT_RAW_ROOT", str(real_data))
    paths = Paths.from_env(data_root)
    entry = get_entry("candump_sample", paths=paths)
    ad = get_adapter(entry)
    counts = {}
    for f in ad.discover_files(entry, paths):
        fr = ad.read_raw(f)
        counts[f.path.name.split("-")[4] if "malicious" in f.path.name else "benign"] = (len(fr), int(fr.label.sum()))
        assert len(np.unique(fr.can_id)) == 18 and fr.n_quarantined == 0
    assert counts == {"benign": (17_935, 0), "CONST": (17_935, 60), "DOUBLE": (17_935, 661)}
