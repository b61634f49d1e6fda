"""`onnxprune demo`: the whole flow on a well-trained model shipped with onnxprune.

The model is the project's CIFAR-style ResNet-20 trained on Fashion-MNIST and exported with
BatchNorm folded into Conv (what users export; `onnxprune/assets/`, with the command that
reproduces it). The demo prunes it to 50% of its MACs (Taylor scores, global ranking, widths
rounded for the runtime), verifies the rewrite, fine-tunes it with knowledge distillation from
the original, and compares test accuracy (onnxruntime, held-out t10k split), MACs, params and
latency.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package. When it is missing, the demo
installs it with apt when it runs as root with apt available; otherwise it says how to get it and
falls back to scikit-learn's digits with a ResNet-20 trained on them (also shipped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from onnxprune.api import PruneConfig, prune, save_model
from onnxprune.assets import DEMO_MODEL, DIGITS_MODEL, model_info
from onnxprune.bench import BenchConfig, benchmark_model, evaluate_onnx
from onnxprune.data import DEFAULT_FASHION_MNIST_DIR, load_dataset
from onnxprune.errors import DataError

APT_PACKAGE = "dataset-fashion-mnist"


@dataclass(frozen=True)
class DemoConfig:
    target_flops: float = 0.5
    method: str = "taylor"
    finetune_epochs: int = 1
    finetune_images: int = 16000  # training images per fine-tuning epoch (benchmarks/results/demo.json)
    global_ranking: bool = True
    data: str | None = None  # None: Fashion-MNIST (installed with apt if possible), else digits
    install: bool = True  # try apt-get when Fashion-MNIST is missing and we are root
    out_dir: Path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnxprune" / "demo"
    seed: int = 0


def _apt_install(console: Console) -> bool:
    """Install Debian's Fashion-MNIST package (root with apt-get only); True when it worked."""
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None or geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    console.print(f"Fashion-MNIST is not installed: installing it with apt-get install {APT_PACKAGE}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", APT_PACKAGE], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", APT_PACKAGE]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
        except (OSError, subprocess.SubprocessError):
            return False
        if cmd[1] == "install" and proc.returncode == 0 and Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
            return True
    return False


def choose_data(cfg: DemoConfig, console: Console) -> str:
    """`fashion-mnist` when installed (or installable), else `digits`, saying how to get it."""
    if cfg.data is not None:
        return cfg.data
    if Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        return "fashion-mnist"
    if cfg.install and _apt_install(console):
        return "fashion-mnist"
    console.print(f"[yellow]Fashion-MNIST is not installed ({DEFAULT_FASHION_MNIST_DIR}).[/yellow] To get it: "
                  f"`sudo apt-get install {APT_PACKAGE}` (Debian/Ubuntu), or put the four IDX files of "
                  "https://github.com/zalando-research/fashionmnist in a folder and run "
                  "`onnxprune prune ... --data fashion-mnist:FOLDER`. This demo continues with scikit-learn's "
                  "digits (8x8 images) and a ResNet-20 trained on them.")
    return "digits"


def run_demo(cfg: DemoConfig = DemoConfig(), console: Console | None = None) -> dict[str, Any]:
    """Prune the shipped model, compare before/after, print a table; returns the numbers."""
    console = console or Console()
    started = time.perf_counter()
    data = choose_data(cfg, console)
    model_path = DEMO_MODEL if data.startswith("fashion-mnist") else DIGITS_MODEL
    if not model_path.exists():
        raise DataError(f"{model_path}: the demo model is missing from this installation (reinstall onnxprune)")
    info = model_info(model_path)
    console.print(f"model: {info.get('title', model_path.name)} ({model_path.stat().st_size / 1e6:.1f} MB, "
                  f"test top-1 {info['test_top1']:.4f} when trained)")
    console.print(f"pruning to {cfg.target_flops:.0%} of the MACs ({cfg.method}, "
                  f"{'global' if cfg.global_ranking else 'uniform'}, widths for onnxruntime CPU), then "
                  f"{cfg.finetune_epochs} epoch(s) of knowledge distillation on {cfg.finetune_images} images")
    t0 = time.perf_counter()
    result = prune(model_path, PruneConfig(method=cfg.method, target_flops=cfg.target_flops, seed=cfg.seed,
                                           global_ranking=cfg.global_ranking, data=data,
                                           finetune_epochs=cfg.finetune_epochs,
                                           finetune_images=cfg.finetune_images),
                   progress=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    prune_s = time.perf_counter() - t0
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    original_path = cfg.out_dir / model_path.name
    if not original_path.exists() or original_path.read_bytes() != model_path.read_bytes():
        shutil.copyfile(model_path, original_path)
    pruned_path = cfg.out_dir / f"{model_path.stem}-pruned-{cfg.method}-{cfg.target_flops:g}.onnx"
    save_model(result.model, pruned_path)
    graph = result.analysis.graph
    splits = load_dataset(data, input_shape=graph.shapes[graph.inputs[0].name], seed=cfg.seed)
    x, y = splits.test
    with console.status("evaluating on the test split"):
        acc0, acc1 = evaluate_onnx(original_path, x, y), evaluate_onnx(pruned_path, x, y)
    bench = BenchConfig(batch_sizes=(1, 32), warmup=5, runs=30)
    with console.status("measuring latency (onnxruntime, CPU)"):
        lat0: dict[int, list[float]] = {1: [], 32: []}
        lat1: dict[int, list[float]] = {1: [], 32: []}
        for _ in range(2):  # alternate original and pruned, keep each one's best median
            for r in benchmark_model(original_path, bench):
                lat0[r.batch].append(r.median_ms)
            for r in benchmark_model(pruned_path, bench):
                lat1[r.batch].append(r.median_ms)
    best0 = {b: min(v) for b, v in lat0.items()}
    best1 = {b: min(v) for b, v in lat1.items()}
    (m0, m1), (p0, p1) = result.macs, result.params
    table = Table(title=f"onnxprune demo: ResNet-20 on {data}, {cfg.method} to {cfg.target_flops:.0%} MACs, "
                        f"{cfg.finetune_epochs} fine-tune epoch(s)")
    for col in ("", "original", "pruned", "change"):
        table.add_column(col, justify="right" if col else "left")
    held = " held-out" if splits.held_out_test else ""
    table.add_row(f"test top-1 ({acc0.n:,}{held} images)", f"{acc0.top1:.4f}", f"{acc1.top1:.4f}",
                  f"{100 * (acc1.top1 - acc0.top1):+.2f} points")
    table.add_row("MACs", f"{m0:,}", f"{m1:,}", f"x{m1 / m0:.3f}")
    table.add_row("params", f"{p0:,}", f"{p1:,}", f"x{p1 / p0:.3f}")
    for b in (1, 32):
        speedup = best0[b] / best1[b]
        table.add_row(f"latency batch {b} (ms, median)", f"{best0[b]:.3f}", f"{best1[b]:.3f}",
                      f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower")
    verified = result.verified
    lines = [f"pruned and fine-tuned in {prune_s:.0f} s; whole demo {time.perf_counter() - started:.0f} s"]
    if verified is not None:
        lines.append(f"verified equal to the masked original before fine-tuning (max abs diff "
                     f"{verified.max_abs_diff:.2g})")
    lines.append(f"files: {original_path} -> {pruned_path}")
    table.caption = "\n".join(lines)
    console.print(table)
    return {"data": data, "model": str(original_path), "pruned": str(pruned_path), "prune_seconds": prune_s,
            "seconds": time.perf_counter() - started, "top1": [acc0.top1, acc1.top1], "test_images": acc0.n,
            "macs": [m0, m1], "params": [p0, p1],
            "latency_ms": {str(b): [best0[b], best1[b]] for b in (1, 32)},
            "finetune": result.finetuned.summary() if result.finetuned is not None else None,
            "widths": [[g.channels, int(result.keep[g.unit_slice].sum() * g.channels // max(g.units, 1))]
                       for g in result.analysis.prunable()],
            "settings": {"method": cfg.method, "target_flops": cfg.target_flops, "global_ranking": cfg.global_ranking,
                         "finetune_epochs": cfg.finetune_epochs, "finetune_images": cfg.finetune_images,
                         "seed": cfg.seed}}
