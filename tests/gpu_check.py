"""One GPU check of training, for a machine with CUDA (a cluster GPU node; never CI).

    python tests/gpu_check.py [OUT_JSON]

Generates the synthetic dataset, trains the large VGAE and GAT and a distilled small GAT on the GPU through the same
`fit_system` path as `kdgat train` (profiler and memory monitor on), finds the largest GAT training batch by trial on
the device, and measures batched inference throughput. Prints one JSON object (and writes it to OUT_JSON if given).
"""
from __future__ import annotations
import json, os, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch


def main(out: str | None = None, dev: str = "cuda") -> dict:
    "Run the check on `dev` ('cpu' only to smoke-test this script itself)."
    assert dev == "cpu" or torch.cuda.is_available(), "no CUDA device"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    from kdgat.catalog import get_entry
    from kdgat.config import Paths, PreprocessConfig, ScaledModels, TrainingConfig
    from kdgat.data.captures import load_captures
    from kdgat.data.preprocess import preprocess_dataset
    from kdgat.evaluate.metrics import binary_metrics, choose_threshold
    from kdgat.models.gat import GATClassifier, num_parameters
    from kdgat.train.callbacks import device_name, find_batch_size
    from kdgat.train.datamodule import CaptureDataModule, class_weights, make_batch
    from kdgat.train.systems import GATSystem, VGAESystem, fit_system

    res: dict = {"device": device_name(dev), "torch": torch.__version__}
    root = Path(tempfile.mkdtemp())
    paths = Paths.from_env(root)
    t = time.perf_counter()
    entry = get_entry("synthetic", paths=paths)
    caps = load_captures(preprocess_dataset(entry, PreprocessConfig(executor="local"), paths=paths))
    res["preprocess_seconds"] = round(time.perf_counter() - t, 2)
    cfg = TrainingConfig(max_epochs=5 if dev == "cuda" else 1, patience=5, batch_size=256,
                         accelerator="gpu" if dev == "cuda" else "cpu", profile=True, profile_steps=3)
    m = ScaledModels()
    kw = lambda c: {k: v for k, v in c.model_dump().items() if k not in ("edge_dim", "kl_weight")}
    dm_normal = CaptureDataModule(caps, cfg.batch_size, normal_only=True)
    dm = CaptureDataModule(caps, cfg.batch_size)
    cw = tuple(class_weights(dm.train_set.labels()).tolist())
    run = root / "run"
    fits = {}
    for name, system, data, mon in [
        ("vgae_large", VGAESystem(caps.num_ids, kw(m.vgae_large)), dm_normal, ("val/loss", "min")),
        ("gat_large", GATSystem(caps.num_ids, kw(m.gat_large), class_weight=cw), dm, ("val/loss", "min"))]:
        best, fit = fit_system(system, data, cfg, run, *mon, name=name)
        fits[name] = (best, fit)
        res[name] = {"seconds": round(fit.seconds, 2), "epochs": fit.epochs, "best_epoch": fit.best_epoch,
                     "parameters": num_parameters(best.model)}
    student, fit = fit_system(GATSystem(caps.num_ids, kw(m.gat_small), class_weight=cw, teacher_ckpt=fits["gat_large"][1].checkpoint),
                              dm, cfg, run, "val/loss", "min", name="gat_small_kd")
    res["gat_small_kd"] = {"seconds": round(fit.seconds, 2), "epochs": fit.epochs}
    res["profile_traces"] = sorted(str(p.relative_to(run)) for p in run.glob("profile/*/*.json"))
    gat = fits["gat_large"][0]
    thr = choose_threshold(dm.val_set.labels(), gat.scores(dm.loader(dm.val_set))["score"])
    test = caps.select("test", "test_01_known_vehicle_known_attack")
    res["gat_large_test_01_f1"] = round(binary_metrics(test.labels(), gat.scores(dm.loader(test))["score"], thr)["f1"], 4)

    # largest training batch of the large GAT on this device, by trial (real forward + backward)
    model = GATClassifier(caps.num_ids, **kw(m.gat_large)).to(dev)
    pool = dm.train_set
    def step(bs: int):
        idx = np.arange(bs) % pool.num_graphs
        b = make_batch(pool, idx).to(dev)
        loss = torch.nn.functional.cross_entropy(model(b.x, b.edge_index, b.edge_attr, b.batch), b.y)
        loss.backward(); model.zero_grad(set_to_none=True); sync()
    t = time.perf_counter()
    res["gat_large_max_batch"] = find_batch_size(step, start=256, max_size=1 << 17 if dev == "cuda" else 512, device=dev)
    res["batch_search_seconds"] = round(time.perf_counter() - t, 1)
    if dev == "cuda": res["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)

    # batched inference throughput
    for name, mdl in [("gat_large", gat.model), ("gat_small_kd", student.model)]:
        mdl = mdl.to(dev).eval()
        b = make_batch(pool, np.arange(16384 if dev == "cuda" else 512) % pool.num_graphs).to(dev)
        with torch.inference_mode():
            for _ in range(3): mdl(b.x, b.edge_index, b.edge_attr, b.batch)
            sync(); t = time.perf_counter()
            for _ in range(10): mdl(b.x, b.edge_index, b.edge_attr, b.batch)
            sync()
        res[f"{name}_windows_per_second_{dev}"] = round(10 * b.num_graphs / (time.perf_counter() - t))
    text = json.dumps(res, indent=1)
    print(text)
    if out: Path(out).write_text(text)
    return res


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--cpu"]
    main(args[0] if args else None, "cpu" if "--cpu" in sys.argv else "cuda")
