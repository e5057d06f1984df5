"""Files preprocessed as Ray tasks give exactly the graphs of the in-process path; worker errors stay readable."""
from __future__ import annotations
import shutil

import pytest
import torch

from kdgat.catalog import get_entry
from kdgat.config import Paths, PreprocessConfig
from kdgat.data.preprocess import preprocess_dataset
from kdgat.data.schema import InputError

pytestmark = pytest.mark.ray


def _entry(paths):
    return get_entry("synthetic", paths=paths).model_copy(update={"synthetic": {"seed": 3, "scale": 0.1}})


def test_ray_matches_local(ray_instance, tmp_path):
    local_paths = Paths.from_env(tmp_path / "local")
    ray_paths = Paths.from_env(tmp_path / "ray")
    local = preprocess_dataset(_entry(local_paths), PreprocessConfig(executor="local"), paths=local_paths)
    remote = preprocess_dataset(_entry(ray_paths), PreprocessConfig(executor="ray"), paths=ray_paths)
    assert remote.executor == "ray" and local.executor == "local"
    assert remote.table().equals(local.table())
    for split in local.splits():
        a, b = local.load(split), remote.load(split)
        for k in a.tensors: assert torch.equal(a.tensors[k], b.tensors[k]), (split, k)


def test_auto_uses_a_running_ray(ray_instance, tmp_path):
    paths = Paths.from_env(tmp_path)
    rep = preprocess_dataset(_entry(paths), PreprocessConfig(), paths=paths)
    assert rep.executor == "ray"


def test_worker_input_error_names_file_and_line(ray_instance, tmp_path):
    paths = Paths.from_env(tmp_path)
    entry = _entry(paths)
    preprocess_dataset(entry, PreprocessConfig(executor="local", window_size=50), paths=paths)  # generate the raw files
    bad = sorted(entry.root(paths).glob("test_01*/*.csv"))[0]
    lines = bad.read_text().splitlines(keepends=True)
    lines[10] = lines[10].replace(",", ",XYZ", 1)
    bad.write_text("".join(lines))
    with pytest.raises(InputError, match=rf"{bad.name}:11: expected a CAN ID"):
        preprocess_dataset(entry, PreprocessConfig(executor="ray"), paths=paths)
    assert not list((paths.cache_root / "graphs").glob("*/.tmp-*"))
