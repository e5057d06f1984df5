"""The contract between the stage runner and the stage notebooks (nbs/stages/<kind>.ipynb).

`kdgat.pipeline.dag.execute_stage` runs `<kind>.ipynb` with papermill and the parameters
`{**ref.params(), "run_dir", "config", "overrides"}`. Papermill injects whatever it is given, declared or not, so a
name the notebook does not declare is silently ignored there and the notebook runs on its own default instead (the
wrong dataset, seed or model, with no error). These tests read each notebook's declared parameters the way papermill
does (`papermill.inspect_notebook`) and hold the runner to them."""
from __future__ import annotations
import ast, json
from dataclasses import fields
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")
from kdgat.pipeline.stages import STAGE_KINDS, StageRef, build_dag

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "nbs" / "stages"
RUNNER_NAMES = ("run_dir", "config", "overrides")  # what execute_stage passes besides the StageRef's own fields
STAGE_FIELDS = tuple(f.name for f in fields(StageRef))
TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": (list, tuple), "dict": dict}
REFS = build_dag(["synthetic"], seeds=[0], calibrations=["none"], explain_seeds=1)


def runner_params(ref: StageRef) -> dict:
    "The parameters `execute_stage` gives papermill for `ref` (values as the runner would pass them)."
    return {**ref.params(), "run_dir": "/runs/x", "config": "/runs/x/config.yaml", "overrides": []}


def assigned_parameters(nb: Path) -> list[str]:
    "The names the `parameters` cell of `nb` assigns, read as Python (not as papermill reads them)."
    cells = [c for c in json.loads(nb.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{nb.name}: {len(cells)} cells tagged `parameters`"
    src = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    out = []
    for node in ast.parse(src).body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets if isinstance(node, ast.Assign) else []
        out += [t.id for t in targets if isinstance(t, ast.Name)]
    return out


def contract_problems(nb: Path, passed: dict) -> list[str]:
    "Where the parameters `passed` to the stage notebook `nb` break its declared parameters (empty when they fit)."
    declared = papermill.inspect_notebook(str(nb))
    bad = [f"{nb.name}: {name} is assigned in the parameters cell but papermill cannot read it (it skips a line with "
           f"more than one '=', comment included)" for name in assigned_parameters(nb) if name not in declared]
    for name, value in passed.items():
        if name not in declared:
            bad.append(f"{nb.name}: the runner passes {name}={value!r}, which the notebook does not declare as a parameter")
            continue
        t = TYPES.get(declared[name].get("inferred_type_name") or "")
        if t is not None and not isinstance(value, t):
            bad.append(f"{nb.name}: {name} is declared {declared[name]['inferred_type_name']}, the runner passes {value!r}")
    for name, d in declared.items():
        if name in passed: continue
        default = (d.get("default") or "").strip()
        if default in ("", "None"):
            bad.append(f"{nb.name}: {name} has no usable default ({default or 'none'}) and the runner does not pass it")
        elif name in STAGE_FIELDS:
            bad.append(f"{nb.name}: {name} names the stage (a StageRef field) but the runner does not pass it: "
                       f"the notebook would run on its default {default}")
    kind = declared.get("kind", {}).get("default")
    if kind is None: bad.append(f"{nb.name}: declares no `kind` parameter")
    else:
        try: kind = ast.literal_eval(kind)
        except (ValueError, SyntaxError): pass
        if kind != nb.stem: bad.append(f"{nb.name}: the default of `kind` is {kind!r}, not {nb.stem!r}")
    return bad


def test_every_stage_kind_has_its_notebook():
    assert {p.stem for p in STAGES.glob("*.ipynb")} == set(STAGE_KINDS)
    assert {r.kind for r in REFS} == set(STAGE_KINDS), "build_dag no longer yields every stage kind"


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.key)
def test_runner_parameters_are_declared_by_the_notebook(ref):
    passed = runner_params(ref)
    assert set(passed) == {*ref.params(), *RUNNER_NAMES}  # what execute_stage builds (the executed notebooks of a real
    # run are checked against the templates in tests/test_pipeline.py::test_dag_runs_in_order_and_waits_for_the_teacher)
    bad = contract_problems(STAGES / f"{ref.kind}.ipynb", passed)
    assert not bad, "\n".join(bad)


def _notebook(path: Path, params_source: str) -> Path:
    "A minimal stage notebook with the given parameters cell."
    cell = lambda i, src, tags=None: {"cell_type": "code", "id": f"c{i}", "execution_count": None, "outputs": [],
                                      "source": src, "metadata": {"tags": tags} if tags else {}}
    path.write_text(json.dumps({"cells": [cell(0, params_source, ["parameters"]), cell(1, "print(dataset)")],
                                "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "python3"}},
                                "nbformat": 4, "nbformat_minor": 5}))
    return path


TRAIN_PARAMS = '''kind: str = "train"  # the stage kind
dataset: str = "synthetic"  # catalog name
model: str = "gat"  # vgae, gat, fusion or gbt
variant: str = "small"  # large, small, small_kd or baseline
seed: int = 0  # seed
calibration: str = "none"  # none or prefix
run_dir: str = ""  # the run folder
config: str = ""  # the configuration
overrides: list = []  # settings applied over the configuration
'''


def test_contract_check_bites(tmp_path):
    "The check passes a notebook that declares what the runner passes, and names each way one can break it."
    ref = next(r for r in REFS if r.kind == "train")
    passed = runner_params(ref)
    assert contract_problems(_notebook(tmp_path / "train.ipynb", TRAIN_PARAMS), passed) == []
    # the runner passes a name the notebook does not declare (here: the notebook lost `seed`)
    nb = _notebook(tmp_path / "train.ipynb", TRAIN_PARAMS.replace('seed: int = 0  # seed\n', ''))
    assert any("passes seed=0" in b for b in contract_problems(nb, passed))
    # papermill does not parse a line with a second `=` (in its comment): the parameter is undeclared to it
    nb = _notebook(tmp_path / "train.ipynb", TRAIN_PARAMS.replace("# settings applied", "# key=value settings applied"))
    assert any("passes overrides=[]" in b for b in contract_problems(nb, passed))
    assert any("overrides is assigned in the parameters cell but papermill cannot read it" in b for b in contract_problems(nb, passed))
    # the notebook names the stage by a parameter the runner does not pass: it would train its default model
    assert any("model names the stage" in b for b in contract_problems(tmp_path / "train.ipynb", {k: v for k, v in passed.items() if k != "model"}))
    # a declared parameter without a default the runner does not pass
    nb = _notebook(tmp_path / "train.ipynb", TRAIN_PARAMS + "device: str = None  # required\n")
    assert any("device has no usable default" in b for b in contract_problems(nb, passed))
    # a value of the wrong type
    assert any("seed is declared int" in b for b in contract_problems(tmp_path / "train.ipynb", {**passed, "seed": "0"}))
    # the notebook's `kind` is missing, or is another notebook's
    assert any("declares no `kind`" in b for b in
               contract_problems(_notebook(tmp_path / "train.ipynb", TRAIN_PARAMS.replace('kind: str = "train"  # the stage kind\n', '')),
                                 {k: v for k, v in passed.items() if k != "kind"}))
    assert any("default of `kind` is 'train', not 'evaluate'" in b
               for b in contract_problems(_notebook(tmp_path / "evaluate.ipynb", TRAIN_PARAMS), passed))
