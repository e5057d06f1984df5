"""Every bad input gets an error naming the file, the line and what was expected, and the cache stays intact."""
from __future__ import annotations
import subprocess, sys
from pathlib import Path

import pytest

from kdgat.catalog import CatalogError, get_entry
from kdgat.config import Paths, PreprocessConfig
from kdgat.data.preprocess import preprocess_dataset
from kdgat.data.schema import InputError

HEADER = "timestamp,arbitration_id,data_field,attack\n"
GOOD = "".join(f"{1513920000 + i / 1000:.6f},{0x100 + i % 5:03X},{i % 256:02X}00112233445566,{int(i % 50 == 0)}\n"
               for i in range(400))
N_GOOD = 400

# (name, file content, line that must be named, words that must appear)
CASES = [
    ("empty file", "", 1, "expected a header line"),
    ("header only", HEADER, 2, "expected at least one data row"),
    ("no header", GOOD, 1, "expected a header line with columns"),
    ("too many columns", HEADER + GOOD + "1513920001.0,110,00,0,9\n" + GOOD, N_GOOD + 2, "expected 4 comma-separated fields, found 5"),
    ("too few columns", HEADER + GOOD + "1513920001.0,110\n" + GOOD, N_GOOD + 2, "expected 4 comma-separated fields, found 2"),
    ("non-hex id", HEADER + GOOD + "1513920001.0,1Z0,00,0\n", N_GOOD + 2, "expected a CAN ID of 1 to 8 hex digits, found '1Z0'"),
    ("empty id", HEADER + GOOD + "1513920001.0,,00,0\n", N_GOOD + 2, "expected a CAN ID of 1 to 8 hex digits"),
    ("non-hex payload", HEADER + GOOD + "1513920001.0,110,00GG,0\n", N_GOOD + 2, "expected a payload of hex digits, found '00GG'"),
    ("payload over 8 bytes", HEADER + GOOD + "1513920001.0,110,001122334455667788,0\n", N_GOOD + 2, "expected a payload of at most 8 bytes"),
    ("half a byte", HEADER + GOOD + "1513920001.0,110,0011223,0\n", N_GOOD + 2, "expected a payload of whole bytes"),
    ("NaN label", HEADER + GOOD + "1513920001.0,110,00,nan\n", N_GOOD + 2, "expected a label 0 (normal) or 1 (attack)"),
    ("empty label", HEADER + GOOD + "1513920001.0,110,00,\n", N_GOOD + 2, "expected a label 0 (normal) or 1 (attack)"),
    ("label 2", HEADER + GOOD + "1513920001.0,110,00,2\n", N_GOOD + 2, "expected a label 0 (normal) or 1 (attack), found 2"),
    ("label text", HEADER + GOOD + "1513920001.0,110,00,attack\n", N_GOOD + 2, "found 'attack'"),
    ("NaN timestamp", HEADER + GOOD + "nan,110,00,0\n", N_GOOD + 2, "expected a finite timestamp"),
    ("text timestamp", HEADER + GOOD + "yesterday,110,00,0\n", N_GOOD + 2, "expected a decimal timestamp in seconds, found 'yesterday'"),
    ("time goes backwards", HEADER + GOOD + "1513920000.1,110,00,0\n", N_GOOD + 2, "expected timestamps that never go backwards"),
    ("truncated last line", HEADER + GOOD + "1513920001.000000,11", N_GOOD + 2, "expected 4 comma-separated fields, found 2 in"),
    ("truncated payload on last line", HEADER + GOOD + "1513920001.000000,110,0011223", N_GOOD + 2, "expected 4 comma-separated fields, found 3"),
]


def _dataset(data_root: Path, content: str) -> tuple[Path, Path]:
    "A two-folder dataset whose test file holds `content`; returns (catalog file, bad file)."
    raw = data_root / "raw" / "bad"
    (raw / "train").mkdir(parents=True)
    (raw / "train" / "attack-free.csv").write_text(HEADER + GOOD)
    (raw / "test_01").mkdir()
    bad = raw / "test_01" / "dos.csv"
    bad.write_text(content)
    cat = data_root / "catalog.yaml"
    # the IDs here are digits only, so the encoding must be declared; time order is refused to test that error
    cat.write_text("bad:\n  raw: bad\n  encoding: {can_id: hex}\n  timestamps: {out_of_order: reject}\n"
                   "  train: [train]\n  test: [test_01]\n")
    return cat, bad


def _entries(cache_root: Path) -> list[Path]:
    return sorted(p for p in (cache_root / "graphs").glob("*/*")) if (cache_root / "graphs").is_dir() else []


@pytest.mark.parametrize("name,content,line,words", CASES, ids=[c[0] for c in CASES])
def test_bad_csv_named_with_its_line(data_root, name, content, line, words):
    cat, bad = _dataset(data_root, content)
    with pytest.raises(InputError) as e:
        preprocess_dataset("bad", PreprocessConfig(executor="local"))
    msg = str(e.value)
    assert str(bad) in msg and words in msg, msg
    if line is not None: assert f"{bad}:{line}:" in msg, msg
    # the good training file is cached completely, the bad file left nothing at all
    entries = _entries(data_root / "cache")
    assert all((p / "manifest.json").is_file() for p in entries)
    assert not list((data_root / "cache" / "graphs").glob("*/.tmp-*"))


def test_lenient_mode_quarantines_and_reports(data_root):
    content = HEADER + GOOD + "1513920001.0,1Z0,00,0\n1513920001.1,110,00,0,5\n1513920001.2,110,00GG,1\n" + GOOD.replace("15139200", "15139201")
    _dataset(data_root, content)
    rep = preprocess_dataset("bad", PreprocessConfig(executor="local", strict=False))
    bad = next(f for f in rep.files if f.split == "test_01")
    assert bad.quarantined == 3 and bad.messages == 2 * N_GOOD and bad.graphs == 8
    assert rep.table().loc["test_01", "quarantined"] == 3


def test_directory_without_matching_files(data_root):
    cat, bad = _dataset(data_root, HEADER + GOOD)
    bad.rename(bad.with_suffix(".txt"))
    with pytest.raises(CatalogError, match=r"split 'test_01': folder 'test_01' holds no files matching '\*\.csv'"):
        preprocess_dataset("bad", PreprocessConfig(executor="local"))


def test_digit_only_ids_need_a_declared_encoding(data_root):
    cat, bad = _dataset(data_root, HEADER + GOOD)
    cat.write_text("bad:\n  raw: bad\n  train: [train]\n  test: [test_01]\n")
    with pytest.raises(InputError, match=r"attack-free.csv: expected an encoding for the IDs of column 'arbitration_id', found only digits .*declare encoding: \{can_id: hex\} or \{can_id: decimal\}"):
        preprocess_dataset("bad", PreprocessConfig(executor="local"))


def test_lenient_with_every_row_bad_is_an_error_not_zero_graphs(data_root):
    cat, bad = _dataset(data_root, HEADER + "".join(f"1513920{i}.0,1G0,00,0\n" for i in range(300)))
    with pytest.raises(InputError, match=r"expected at least one window of 100 messages in split 'test_01' of 'bad', found none \(dos.csv: 0 messages, 300 quarantined\)"):
        preprocess_dataset("bad", PreprocessConfig(executor="local", strict=False))


def test_out_of_order_frames_are_sorted_by_default_and_counted_by_label(data_root):
    rows = [f"15139200{i // 10}.{i % 10}00000,110,00,{int(i % 7 == 3)}\n" for i in range(400)]
    rows[200], rows[201] = rows[201], rows[200]  # one frame a tenth of a second late: an attack frame goes back in time
    cat, bad = _dataset(data_root, HEADER + "".join(rows))
    cat.write_text("bad:\n  raw: bad\n  encoding: {can_id: hex}\n  train: [train]\n  test: [test_01]\n")
    rep = preprocess_dataset("bad", PreprocessConfig(executor="local"))
    f = next(r for r in rep.files if r.split == "test_01")
    assert (f.messages, f.quarantined, f.reordered) == (400, 0, 1)
    assert f.reordered_attack == int(rows[200].strip().endswith(",1"))
    assert rep.table().loc["test_01", "reordered"] == 1 and "out of time order: 1 frames" in rep.summary()


def test_catalog_entry_pointing_nowhere(data_root):
    (data_root).mkdir(parents=True, exist_ok=True)
    (data_root / "catalog.yaml").write_text("ghost:\n  raw: /nonexistent/ghost\n  train: [train]\n")
    with pytest.raises(CatalogError, match="catalog entry 'ghost' points at /nonexistent/ghost, which is not a folder"):
        preprocess_dataset("ghost", PreprocessConfig(executor="local"))


def test_cli_exit_codes_for_bad_input(data_root):
    _dataset(data_root, HEADER + GOOD + "1513920001.0,1Z0,00,0\n")
    exe = Path(sys.executable).parent / "kdgat"
    r = subprocess.run([str(exe), "preprocess", "--dataset", "bad", "--executor", "local"], capture_output=True, text=True)
    assert r.returncode == 3 and f"dos.csv:{N_GOOD + 2}: expected a CAN ID" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([str(exe), "preprocess", "--dataset", "nothing-here"], capture_output=True, text=True)
    assert r.returncode == 2 and "no dataset 'nothing-here'" in r.stderr


def test_corrupt_line_in_a_real_capture(real_data, tmp_path):
    "A single bad line deep inside a real 181,901-row capture is found and named."
    from kdgat.data.readers import read_can_csv
    src = (real_data / "can/hcrl_sa/train_02_with_attacks/DoS-kia.csv").read_text().splitlines(keepends=True)
    src[100_000] = src[100_000].replace(",", ",Q", 1)  # the ID of line 100,001 gets a non-hex character
    bad = tmp_path / "DoS-kia.csv"; bad.write_text("".join(src))
    with pytest.raises(InputError, match=r"DoS-kia.csv:100001: expected a CAN ID"):
        read_can_csv(bad)
    frames = read_can_csv(bad, strict=False)
    assert len(frames) == 181_900 and frames.n_quarantined == 1 and frames.quarantine[0][0] == 100_001


def test_candump_bad_lines(tmp_path):
    from kdgat.data.readers import read_candump
    log = tmp_path / "x.log"
    log.write_text("(0.1) can0 110#0011\n(0.2) can0 110#00112233445566778899\n")
    with pytest.raises(InputError, match=r"x.log:2: expected a payload of at most 8 bytes"):
        read_candump(log)
    log.write_text("(0.1) can0 110#0011 False\tFalse\n(0.2) can0 110#00 maybe\tFalse\n")
    with pytest.raises(InputError, match=r"x.log:2: expected a label 0 \(normal\) or 1 \(attack\), found 'maybe'"):
        read_candump(log)
