"""GPU check of the PyTorch side: Taylor scores, masked evaluation (with BatchNorm re-estimation),
BatchNorm re-estimation written back to ONNX, and a short fine-tune (float32, then AMP with
channels-last), each run on the CPU and on CUDA and compared within tolerance; then every search
method run end to end with `--device` on CUDA (tiny settings).

One self-contained command (no dataset, no download; the model is a CIFAR-style ResNet-20 from
`models/` trained for a few seconds on synthetic class-dependent images, exported with BatchNorm):

    PYTHONPATH=. python benchmarks/gpu_check.py OUT.json [--device cuda:0]

Prints one PASS/FAIL line per check and a summary; writes every number to OUT.json; exit code 0
when all checks pass, 1 when one fails, 2 when the machine cannot run the check (no CUDA, a
package missing). TF32 is switched off so that float32 results are comparable with the CPU's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

NEEDED = ("numpy", "torch", "onnx", "onnxruntime", "onnx2torch", "onnx_graphsurgeon", "rich", "torchvision")


def _missing() -> list[str]:
    out = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any import failure means the package is unusable here
            out.append(name)
    return out


def _synthetic(tmp: Path, n: int = 1200, classes: int = 10, seed: int = 0) -> Path:
    """An npz of (n, 32, 32, 3) uint8 images whose colour and a bright square encode the class."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = rng.normal(0.0, 30.0, size=(n, 32, 32, 3))
    palette = rng.uniform(40, 215, size=(classes, 3))
    x += palette[y][:, None, None, :]
    for i, c in enumerate(y):
        r, col = divmod(int(c), 4)
        x[i, 4 + 7 * r:9 + 7 * r, 4 + 7 * col:9 + 7 * col, :] = 255
    path = tmp / "synthetic.npz"
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y)
    return path


def _model(tmp: Path, splits: Any, device: str) -> Path:
    """ResNet-20 (models/cifar.py) trained 2 epochs in plain torch, exported with BatchNorm."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from models.cifar import build
    from models.train import export_onnx

    torch.manual_seed(0)
    net = build("resnet20", in_channels=3, num_classes=10).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = np.asarray(splits.train[0]), splits.train[1]
    for epoch in range(2):
        net.train()
        order = np.random.default_rng(epoch).permutation(len(y))
        for s in range(0, len(order) - 63, 64):
            idx = order[s:s + 64]
            loss = F.cross_entropy(net(torch.from_numpy(x[idx]).to(device)), torch.from_numpy(y[idx]).to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return export_onnx(net, (1, 3, 32, 32), tmp / "resnet20_bn.onnx")


class Report:
    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []

    def check(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            rec = fn()
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported as such
            rec = {"passed": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        rec = {"name": name, **rec, "seconds": round(time.perf_counter() - t0, 3)}
        self.checks.append(rec)
        detail = {k: v for k, v in rec.items() if k not in ("name", "passed", "traceback")}
        print(f"{'PASS' if rec['passed'] else 'FAIL'}  {name}  {json.dumps(detail, default=str)[:400]}", flush=True)


def run(out: Path, device_name: str, dry_run_cpu: bool = False) -> int:
    missing = _missing()
    if missing:
        print(f"FAIL  cannot run: missing packages {', '.join(missing)} (carry their wheels and "
              "pip install --no-deps them)", file=sys.stderr)
        _write(out, {"passed": False, "error": f"missing packages: {', '.join(missing)}"})
        return 2
    import numpy as np
    import torch

    if not torch.cuda.is_available() and not dry_run_cpu:
        print("FAIL  cannot run: torch sees no CUDA GPU", file=sys.stderr)
        _write(out, {"passed": False, "error": "no CUDA GPU"})
        return 2
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(min(8, os.cpu_count() or 1))

    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze
    from onnxprune.rewrite import apply_keep
    from onnxprune.search import EvalConfig, LocalEvaluator
    from onnxprune.torchcopy import FinetuneConfig, MaskedModel, finetune, recalibrate_batchnorm, taylor_scores, to_torch
    from onnxprune.torchcopy.convert import torch_outputs
    from onnxprune.torchcopy.device import resolve_device

    gpu = resolve_device("cpu" if dry_run_cpu else device_name)
    report = Report()
    name = "cpu (dry run of the script: cpu against cpu)" if dry_run_cpu else torch.cuda.get_device_name(gpu)
    meta: dict[str, Any] = {"device": name, "torch": torch.__version__,
                            "python": platform.python_version(), "cuda": torch.version.cuda, "tf32": False}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        spec = f"npz:{_synthetic(tmp)}"
        splits = load_dataset(spec, input_shape=(1, 3, 32, 32), seed=0, lazy=True)  # streamed per batch
        model_path = _model(tmp, load_dataset(spec, input_shape=(1, 3, 32, 32), seed=0), str(gpu))
        analysis = analyze(str(model_path))
        rng = np.random.default_rng(0)
        keeps = [analysis.full_keep()]
        for _ in range(3):
            keep = analysis.full_keep()
            for g in analysis.prunable():
                local = rng.random(g.units) < 0.6
                local[rng.integers(g.units)] = True
                keep[g.unit_slice] = local
            keeps.append(keep)
        x, y = splits.train
        x_val, y_val = splits.val

        def taylor() -> dict[str, Any]:
            cpu = taylor_scores(to_torch(analysis), analysis, x, y, seed=0, images=256)
            dev = taylor_scores(to_torch(analysis, device=gpu), analysis, x, y, seed=0, images=256)
            finite = np.isfinite(cpu)
            rel = float(np.linalg.norm(cpu[finite] - dev[finite]) / max(np.linalg.norm(cpu[finite]), 1e-12))
            same_inf = bool(np.array_equal(np.isinf(cpu), np.isinf(dev)))
            return {"passed": rel < 1e-3 and same_inf, "relative_l2_diff": rel, "tolerance": 1e-3}

        def masked() -> dict[str, Any]:
            rows = []
            for dev_ in ("cpu", gpu):
                m = MaskedModel(to_torch(analysis, device=dev_), analysis)
                vals = []
                for keep in keeps:
                    m.apply(keep)
                    m.recalibrate_bn(x[:256], batches=2, batch_size=128)
                    vals.append(m.evaluate(x_val, y_val))
                rows.append(vals)
            n = len(y_val)
            top1 = max(abs(a[0] - b[0]) for a, b in zip(*rows))
            loss = max(abs(a[1] - b[1]) for a, b in zip(*rows))
            return {"passed": top1 <= 2 / n and loss < 1e-3, "max_top1_diff": top1, "max_loss_diff": loss,
                    "cpu": rows[0], "gpu": rows[1], "tolerance": {"top1": 2 / n, "loss": 1e-3}}

        def evaluator() -> dict[str, Any]:
            cfg = EvalConfig(images=100, bn_batches=2, bn_batch_size=64)
            with LocalEvaluator(analysis, to_torch(analysis), splits, cfg) as ev:
                cpu = ev.evaluate(keeps)
            with LocalEvaluator(analysis, to_torch(analysis), splits, EvalConfig(**{**cfg.__dict__,
                                                                                   "device": str(gpu)})) as ev:
                dev = ev.evaluate(keeps)
            diff = max(abs(a - b) for a, b in zip(cpu, dev))
            return {"passed": diff <= 2 / 100, "cpu": cpu, "gpu": dev, "max_diff": diff, "tolerance": 0.02}

        pruned = apply_keep(analysis, keeps[1])

        def bn_recalibration() -> dict[str, Any]:
            a, _ = recalibrate_batchnorm(pruned, x, batches=2, batch_size=128, seed=0, device="cpu")
            b, count = recalibrate_batchnorm(pruned, x, batches=2, batch_size=128, seed=0, device=gpu)
            feeds = {"input": np.asarray(x_val[:64])}
            oa = torch_outputs(to_torch(a), feeds)[0]
            ob = torch_outputs(to_torch(b), feeds)[0]
            diff = float(np.abs(oa - ob).max() / max(np.abs(oa).max(), 1.0))
            return {"passed": count > 0 and diff < 1e-3, "batchnorms": count, "relative_max_diff": diff,
                    "tolerance": 1e-3}

        tuned: dict[str, Any] = {}

        def fine_tune(amp: bool) -> Callable[[], dict[str, Any]]:
            def go() -> dict[str, Any]:
                base = FinetuneConfig(epochs=2, seed=0, max_train=512, max_val=200, batch_size=32, progress=False,
                                      workers=0)
                if "cpu" not in tuned:
                    tuned["cpu"] = finetune(pruned, onnx_load(model_path), splits, FinetuneConfig(
                        **{**base.__dict__, "device": "cpu"}))
                dev = finetune(pruned, onnx_load(model_path), splits, FinetuneConfig(
                    **{**base.__dict__, "device": str(gpu), "amp": amp}))
                cpu = tuned["cpu"]
                loss_rel = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(cpu.train_loss_history,
                                                                               dev.train_loss_history))
                acc = abs(cpu.best_val_top1 - dev.best_val_top1)
                tol_loss, tol_acc = (0.10, 0.10) if amp else (0.02, 0.05)
                finite = all(np.isfinite(dev.train_loss_history))
                return {"passed": finite and loss_rel < tol_loss and acc <= tol_acc,
                        "cpu_loss": cpu.train_loss_history, "gpu_loss": dev.train_loss_history,
                        "cpu_val_top1": cpu.best_val_top1, "gpu_val_top1": dev.best_val_top1,
                        "initial_val_top1": dev.initial_val_top1, "write_back_max_abs_diff": dev.verify_max_abs_diff,
                        "cpu_seconds": round(cpu.seconds, 2), "gpu_seconds": round(dev.seconds, 2),
                        "max_relative_loss_diff": loss_rel, "tolerance": {"loss": tol_loss, "top1": tol_acc}}
            return go

        report.check("taylor scores (cpu vs cuda)", taylor)
        report.check("masked evaluation with BatchNorm re-estimation (cpu vs cuda)", masked)
        report.check("LocalEvaluator --device cuda", evaluator)
        report.check("BatchNorm re-estimation written back to ONNX (cpu vs cuda)", bn_recalibration)
        report.check("fine-tune float32, write-back verified (cpu vs cuda)", fine_tune(amp=False))
        report.check("fine-tune AMP float16 + channels-last (cpu vs cuda)", fine_tune(amp=True))
        report.check("search methods on cuda: gat-ppo policy, sacp encoder + fine-tunes, rl-pruner post-training",
                     lambda: search_methods(analysis, splits, str(gpu)))

    passed = all(c["passed"] for c in report.checks)
    summary = f"{sum(c['passed'] for c in report.checks)}/{len(report.checks)} checks passed"
    print(f"\n{'PASS' if passed else 'FAIL'}: {summary} on {meta['device']} (torch {meta['torch']})")
    _write(out, {"passed": passed, "summary": summary, **meta, "checks": report.checks})
    return 0 if passed else 1


#: tiny settings of each search method (seconds on a GPU machine)
SEARCH_OPTIONS: dict[str, dict[str, Any]] = {
    "gat-ppo": {"episodes": 8, "batch": 4, "gat_backend": "torch", "pretrain_steps": 5, "final_top": 1},
    "sacp": {"configs": 40, "candidates": 40, "top_m": 2, "top_k": 1, "epochs": 2, "probe": 1, "eval_batch": 2,
             "proxy_configs": 12, "proxy_images": 32, "light_images": 64, "k_finetune_epochs": 1,
             "k_finetune_images": 64},
    "rl-pruner": {"steps": 1, "stages": 1, "samples": 2, "post_images": 64, "calibration": 32},
}


def search_methods(analysis: Any, splits: Any, device: str) -> dict[str, Any]:
    """Each search method run end to end with `--device` on the CPU and on `device` (tiny
    settings): the CUDA run must finish within the budget; its masks and accuracies are recorded
    next to the CPU run's (floating-point differences may change a sampled action, so they are
    reported, not required to match)."""
    from onnxprune.api import search_callables
    from onnxprune.search import Budget, EvalConfig, SearchConfig, run_search
    from onnxprune.search.budget import BudgetMeter
    from onnxprune.torchcopy import to_torch

    out: dict[str, Any] = {"passed": True}
    budget = Budget("macs", 0.5)
    meter = BudgetMeter(analysis, budget)
    for method, options in SEARCH_OPTIONS.items():
        row: dict[str, Any] = {}
        for dev in ("cpu", device):
            cfg = SearchConfig(budget=budget, seed=0, progress=False, round_to=1, options=options,
                               eval=EvalConfig(images=100, bn_batches=1, bn_batch_size=64, device=dev))
            t0 = time.perf_counter()
            res = run_search(method, analysis, to_torch(analysis, device=dev), splits, cfg,
                             **search_callables(analysis, splits))
            row[dev] = {"val_top1": res.val_top1, "feasible": bool(meter.feasible(res.keep)),
                        "seconds": round(time.perf_counter() - t0, 2), "keep": res.keep}
        row["same_mask"] = bool((row["cpu"].pop("keep") == row[device].pop("keep")).all())
        row["passed"] = row[device]["feasible"]
        out["passed"] = out["passed"] and row["passed"]
        out[method] = row
    return out


def onnx_load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="JSON results file")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (default: cuda)")
    p.add_argument("--dry-run-cpu", action="store_true",
                   help="run every step with the CPU in place of the GPU (tests this script, not a GPU)")
    args = p.parse_args(argv)
    return run(args.out, args.device, args.dry_run_cpu)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
