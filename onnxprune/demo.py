"""`onnxprune demo`: the whole flow on a small CNN the project trains itself.

Train (or reuse a cached) CIFAR-style ResNet-20 on Fashion-MNIST (scikit-learn's digits when
Fashion-MNIST is not installed), export it to ONNX the way users do (BatchNorm folded into Conv),
prune it to 50% of its MACs (Taylor scores), verify the rewrite, fine-tune it with knowledge
distillation from the original, and compare accuracy (onnxruntime, held-out test split), MACs,
params and latency.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onnxprune.api import PruneConfig, prune, save_model
from onnxprune.bench import BenchConfig, benchmark_model, evaluate_onnx
from onnxprune.data import DEFAULT_FASHION_MNIST_DIR, load_dataset
from onnxprune.methods import TAYLOR


@dataclass(frozen=True)
class DemoConfig:
    arch: str = "resnet20"
    epochs: int = 2
    train_images: int = 8000
    target_flops: float = 0.5
    method: str = TAYLOR.name
    finetune_epochs: int = 1
    finetune_images: int = 3000
    # Odd widths are slow in onnxruntime's CPU kernels; global ranking keeps the MACs target
    # reachable at multiples of 8 on a network whose groups have only 16 channels.
    global_ranking: bool = True
    round_to: int = 8
    out_dir: Path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnxprune" / "demo"
    seed: int = 0


def _dataset() -> str:
    return "fashion-mnist" if Path(DEFAULT_FASHION_MNIST_DIR).is_dir() else "digits"


def _trained_model(cfg: DemoConfig, data: str, console: Console) -> tuple[Path, float, float]:
    """Path of the trained ONNX model, its test accuracy from training, and training seconds."""
    from onnxprune.nets.train import train  # torch: imported only when the demo trains

    name = f"{cfg.arch}-{data}-e{cfg.epochs}-n{cfg.train_images}-s{cfg.seed}-folded"
    record = cfg.out_dir / f"{name}.json"
    onnx_path = cfg.out_dir / f"{name}.onnx"
    if record.exists() and onnx_path.exists():
        meta = json.loads(record.read_text())
        console.print(f"reusing the cached model {onnx_path}")
        return onnx_path, float(meta["test_top1"]), float(meta["train_seconds"])
    console.print(f"training {cfg.arch} on {data} ({cfg.epochs} epochs, {cfg.train_images} images); "
                  "cached for later runs")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    result = train(cfg.arch, data, epochs=cfg.epochs, max_train_images=cfg.train_images, seed=cfg.seed,
                   out_dir=cfg.out_dir, name=name, fold_bn=True)  # exported as users do: BatchNorm folded
    assert result.onnx_path is not None
    return result.onnx_path, result.test_top1, result.train_seconds


def run_demo(cfg: DemoConfig = DemoConfig(), console: Console | None = None) -> dict:
    console = console or Console()
    data = _dataset()
    onnx_path, _, train_s = _trained_model(cfg, data, console)
    t0 = time.perf_counter()
    console.print(f"pruning to {cfg.target_flops:.0%} of the MACs ({cfg.method}, "
                  f"{'global' if cfg.global_ranking else 'uniform'}, widths multiple of {cfg.round_to}), "
                  f"then fine-tuning with "
                  f"knowledge distillation ({cfg.finetune_epochs} epoch(s), {cfg.finetune_images} images)")
    result = prune(onnx_path, PruneConfig(method=cfg.method, target_flops=cfg.target_flops, seed=cfg.seed,
                                          global_ranking=cfg.global_ranking, round_to=cfg.round_to,
                                          data=data, finetune_epochs=cfg.finetune_epochs,
                                          finetune_images=cfg.finetune_images),
                   progress=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    prune_s = time.perf_counter() - t0
    pruned_path = onnx_path.with_name(onnx_path.stem + f"-pruned-{cfg.method}-{cfg.target_flops}.onnx")
    save_model(result.model, pruned_path)
    splits = load_dataset(data, input_shape=result.analysis.graph.shapes[result.analysis.graph.inputs[0].name],
                          seed=cfg.seed)
    x, y = splits.test
    with console.status("evaluating on the test split"):
        acc0, acc1 = evaluate_onnx(onnx_path, x, y), evaluate_onnx(pruned_path, x, y)
    bench = BenchConfig(batch_sizes=(1, 32), warmup=3, runs=20)
    with console.status("measuring latency (onnxruntime, CPU)"):
        lat0 = {r.batch: r.median_ms for r in benchmark_model(onnx_path, bench)}
        lat1 = {r.batch: r.median_ms for r in benchmark_model(pruned_path, bench)}
    (m0, m1), (p0, p1) = result.macs, result.params
    table = Table(title=f"onnxprune demo: {cfg.arch} on {data}, {cfg.method} to {cfg.target_flops:.0%} MACs, "
                        f"{cfg.finetune_epochs} fine-tune epoch(s)")
    for col in ("", "original", "pruned", "ratio"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row(f"test top-1 ({acc0.n} images)", f"{acc0.top1:.4f}", f"{acc1.top1:.4f}",
                  f"{acc1.top1 - acc0.top1:+.4f}")
    table.add_row("MACs", f"{m0:,}", f"{m1:,}", f"{m1 / m0:.3f}")
    table.add_row("params", f"{p0:,}", f"{p1:,}", f"{p1 / p0:.3f}")
    for b in (1, 32):
        table.add_row(f"latency batch {b} (ms, median)", f"{lat0[b]:.2f}", f"{lat1[b]:.2f}",
                      f"{lat0[b] / lat1[b]:.2f}x faster")
    verified = result.verified
    table.caption = (f"pruned in {prune_s:.1f} s, verified equal to the masked original "
                     f"(max abs diff {verified.max_abs_diff:.2g}) before fine-tuning.\n"
                     f"files: {onnx_path}  ->  {pruned_path}") if verified else None
    console.print(table)
    return {"data": data, "train_seconds": train_s, "prune_seconds": prune_s, "top1": [acc0.top1, acc1.top1],
            "macs": [m0, m1], "params": [p0, p1], "latency_ms": {str(b): [lat0[b], lat1[b]] for b in (1, 32)}}
