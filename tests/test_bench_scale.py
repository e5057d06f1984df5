"""`kdgat bench scale` end to end: Ray with 1 and 2 workers on 200,000 synthetic messages, figures in the lakehouse,
the README's table written into a notebook cell from them."""
from __future__ import annotations
import json

import pytest

from kdgat.bench import scale_estimate, scale_figures
from kdgat.cli import main
from kdgat.lakehouse.records import Lakehouse
from kdgat.config import Paths

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_bench_scale_cli(data_root, tmp_path, capsys):
    code = main(["bench", "scale", "--messages", "200k", "--workers", "1", "2", "--file-messages", "50k"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "messages=200000 workers=2:" in out and "| 0.2 M | 4 |" in out, out
    lake = Lakehouse(Paths.from_env().lakehouse_root)
    rows = lake.query("select * from latest_benchmarks where benchmark = 'scale'")
    assert sorted(set(zip(rows.messages, rows.workers))) == [(200_000, 1), (200_000, 2)]
    assert set(rows.run_id) == {rows.run_id[0]} and rows.run_id[0].endswith("-bench-scale") and set(rows.stage) == {"bench/scale"}
    wide = scale_figures(lake)
    assert (wide.graphs == 2_000).all() and (wide.files == 4).all()
    assert (wide.stopped == 0).all() and (wide.ray_start_seconds > 0).all() and (wide.seconds > 0).all()
    # two workers run as two processes beside the driver: the tree holds more than its largest process
    assert (wide.peak_rss_gb > wide.peak_process_rss_gb).all() and (wide.ray_baseline_rss_gb > 0.2).all()
    assert (wide.cache_gb > 0).all()
    est = scale_estimate(lake, 192_000_000)
    assert set(est["wall_hours"]) == {1, 2} and est["core_hours"] > 0 and est["cache_gb"] > 0
    rec = lake.query("select success, params from latest_stages where stage = 'bench/scale'")
    assert rec.success[0] and json.loads(rec.params[0])["workers"] == [1, 2]
    # the README's cell, from the lakehouse, measuring nothing
    nb = tmp_path / "index.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["<!-- bench:scale -->\nold"]}],
                              "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert main(["bench", "scale", "--readme", str(nb)]) == 0
    cell = "".join(json.loads(nb.read_text())["cells"][0]["source"])
    assert cell.startswith("<!-- bench:scale -->\nPrinted by `kdgat bench scale") and "| 0.2 M | 4 |" in cell and "old" not in cell.splitlines()
    assert "speed-up 2 workers" in cell and "core-hours" in cell


def test_bench_scale_readme_without_figures(data_root, tmp_path, capsys):
    nb = tmp_path / "index.ipynb"
    nb.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    assert main(["bench", "scale", "--readme", str(nb)]) == 2
    assert "no `kdgat bench scale` figures" in capsys.readouterr().err
