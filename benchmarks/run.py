"""One command for the comparison of pruning methods on real data; regenerates BENCHMARKS.md.

    python -m benchmarks.run --mode quick        # ResNet-20, 50% MACs, every method, 1 seed
    python -m benchmarks.run --mode full         # 4 models x 4 targets x 7 methods (hours on 2 cores)
    python -m benchmarks.run --report-only       # rebuild BENCHMARKS.md from the stored runs

Every (model, method, target, seed) run is stored as one JSON file under
`benchmarks/results/runs/`; a run that is already there is skipped (`--force` redoes it), so
the full mode can be interrupted and continued, and quick and full runs add up. The report
reads every stored run, writes `benchmarks/results/results.json`, the PNG plots under
`benchmarks/results/` and `BENCHMARKS.md`.

Every method gets the same fine-tune budget (knowledge distillation from the original, same
epochs, images, tau and temperature) and is measured the same way: test top-1 with onnxruntime
on Fashion-MNIST's t10k files (never used for search or fine-tuning), MACs and params from
onnxprune's cost model, onnxruntime CPU latency at batch 1 and 32, search wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onnxprune.methods import L1, RANDOM, RL_PRUNER, TAYLOR, names_of

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "runs"
MODEL_DIR = Path(os.environ.get("ONNXPRUNE_BENCH_MODELS", Path.home() / ".cache" / "onnxprune" / "bench-models"))
MODEL_OUT = MODEL_DIR / "pruned"  # every run's final ONNX (outside the repo), for `--latency-only`

# Score-based baselines: benchmark label -> (registered criterion, global ranking); plus the peer.
SCORED: dict[str, tuple[str, bool]] = {f"{L1.name}-uniform": (L1.name, False), f"{TAYLOR.name}-global": (TAYLOR.name, True),
                                       RANDOM.name: (RANDOM.name, False)}
BASELINES = tuple(SCORED) + ("torch-pruning",)
# Benchmark-only variants: (method, options). rl-pruner post-trains between its pruning steps
# (extra training the others do not get); without it, its masks meet the same fine-tune budget.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {f"{RL_PRUNER.name}-nopost": (RL_PRUNER.name, {"post_epochs": 0})}
SEARCHES = names_of("search") + tuple(VARIANTS)  # every registered search method
METHODS = BASELINES + SEARCHES
TARGETS = ("sparsity-0.25", "sparsity-0.5", "sparsity-0.75", "flops-0.5")

# How each benchmark model is trained when it is not cached yet (python -m models.train).
TRAINING: dict[str, dict[str, Any]] = {
    "resnet20": {"epochs": 3},
    "resnet56": {"epochs": 2, "max_train_images": 30000},
    "mobilenetv2": {"epochs": 2, "max_train_images": 20000},
    "vgg19_bn": {"epochs": 2, "max_train_images": 20000, "lr": 0.02},
}


@dataclass(frozen=True)
class Mode:
    models: tuple[str, ...]
    targets: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]  # baselines
    search_seeds: tuple[int, ...]
    finetune_epochs: int
    finetune_images: int
    eval_images: int
    search_options: dict[str, dict[str, Any]] = field(default_factory=dict)


MODES = {
    "quick": Mode(models=("resnet20",), targets=("flops-0.5",), methods=METHODS, seeds=(0,), search_seeds=(0,),
                  finetune_epochs=1, finetune_images=5000, eval_images=500),
    "standard": Mode(models=("resnet20", "resnet56", "mobilenetv2", "vgg19_bn"), targets=TARGETS, methods=METHODS,
                     seeds=(0,), search_seeds=(0,), finetune_epochs=1, finetune_images=5000, eval_images=500),
    "full": Mode(models=("resnet20", "resnet56", "mobilenetv2", "vgg19_bn"), targets=TARGETS, methods=METHODS,
                 seeds=(0, 1, 2), search_seeds=(0,), finetune_epochs=2, finetune_images=10000, eval_images=1000),
}


def model_path(arch: str) -> Path:
    """The trained benchmark model (trained now if missing)."""
    path = MODEL_DIR / f"{arch}.onnx"
    if not path.exists():
        from models.train import train

        print(f"training {arch} (not cached in {MODEL_DIR})", flush=True)
        train(arch, "fashion-mnist", out_dir=MODEL_DIR, name=arch, **TRAINING[arch])
    return path


def run_key(arch: str, method: str, target: str, seed: int) -> str:
    return f"{arch}__{method}__{target}__s{seed}"


def _target(target: str) -> tuple[str, float]:
    kind, _, value = target.partition("-")
    return kind, float(value)


def _latency(model_bytes: bytes) -> dict[str, float]:
    from onnxprune.bench import BenchConfig, benchmark_model

    res = benchmark_model(model_bytes, BenchConfig(batch_sizes=(1, 32), warmup=5, runs=30))
    return {f"latency_b{r.batch}_ms": r.median_ms for r in res}


def _kept_fractions(model: Any, original: Any) -> list[float]:
    """Kept fraction of every prunable group of the original, in group order (structure only:
    the widths of the pruned model's producers compared with the original's)."""
    from onnxprune.deps import analyze

    widths = {}
    pruned_graph = analyze(model).graph
    for node in pruned_graph.nodes:
        for out in node.outputs:
            shape = pruned_graph.shapes.get(out)
            if shape and len(shape) >= 2:
                widths[node.name] = shape[1]
    out = []
    for g in original.prunable():
        prod = g.producers[0] if g.producers else None
        now = widths.get(prod) if prod else None
        out.append(round(now / g.channels, 4) if now else float("nan"))
    return out


def equal_macs_target(path: Path, sparsity: float) -> float:
    """The MACs fraction l1-uniform keeps at channel sparsity `sparsity` (the widths alone set it):
    the budget the search methods get at a `sparsity-S` target, so that its rows compare models
    of equal MACs."""
    from onnxprune.criteria import weight_scores
    from onnxprune.deps import analyze
    from onnxprune.search.allocate import uniform_keep

    a = analyze(path)
    return a.cost.macs(uniform_keep(a, weight_scores(a, "l1"), sparsity)) / a.macs


def run_one(arch: str, method: str, target: str, seed: int, mode: Mode) -> dict[str, Any]:
    """Prune, fine-tune, evaluate and time one configuration; the run's JSON record."""
    from onnxprune.api import PruneConfig, prune
    from onnxprune.bench import evaluate_onnx
    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze
    from onnxprune.torchcopy import FinetuneConfig, finetune, to_torch

    path = model_path(arch)
    original = analyze(path)
    kind, value = _target(target)
    splits = load_dataset("fashion-mnist", input_shape=original.graph.shapes[original.graph.inputs[0].name], seed=seed)
    record: dict[str, Any] = {"model": arch, "method": method, "target": target, "seed": seed,
                              "finetune_epochs": mode.finetune_epochs, "finetune_images": mode.finetune_images}
    if method in SEARCHES:
        record["eval_images"] = mode.eval_images
        record["search_options"] = {**VARIANTS.get(method, ("", {}))[1], **mode.search_options.get(method, {})}
    t0 = time.perf_counter()
    if method == "torch-pruning":
        from benchmarks.peer import tp_export

        pruned, ratio = tp_export(arch, path, **({"sparsity": value} if kind == "sparsity" else {"target_flops": value}))
        record["search_s"] = time.perf_counter() - t0
        record["tp_ratio"] = ratio
        t1 = time.perf_counter()
        tuned = finetune(pruned, to_torch(original, seed=seed), splits,
                         FinetuneConfig(epochs=mode.finetune_epochs, max_train=mode.finetune_images, seed=seed,
                                        progress=False))
        model = tuned.model
        record["finetune_s"] = time.perf_counter() - t1
    else:
        name, global_ranking = SCORED.get(method, (method, False))
        variant_options: dict[str, Any] = {}
        if method in VARIANTS:
            name, variant_options = VARIANTS[method][0], dict(VARIANTS[method][1])
        targets: dict[str, Any] = {"sparsity": value} if kind == "sparsity" else {"target_flops": value}
        if kind == "sparsity" and method in SEARCHES:  # equal MACs with l1-uniform, not equal channels
            targets = {"target_flops": equal_macs_target(path, value)}
            record["budget"] = {"kind": "macs", "target": targets["target_flops"], "equal_to": "l1-uniform"}
        cfg = PruneConfig(method=name, global_ranking=global_ranking, seed=seed, data="fashion-mnist",
                          finetune_epochs=mode.finetune_epochs, finetune_images=mode.finetune_images,
                          eval_images=mode.eval_images, search_progress=False,
                          options={**variant_options, **mode.search_options.get(method, {})}, **targets)
        result = prune(path, cfg)
        model = result.model
        record["search_s"] = result.seconds.get("select", 0.0)
        record["finetune_s"] = result.seconds.get("finetune", 0.0)
        record["verify_max_abs_diff"] = result.verified.max_abs_diff if result.verified else None
        if result.searched is not None:
            summary = result.searched.summary
            record["evaluations"] = summary.get("total_evaluations", result.searched.evaluations)
            record["search_val_top1"] = result.searched.val_top1
            record["search_summary"] = summary
    pruned_analysis = analyze(model)
    record["macs_ratio"] = pruned_analysis.macs / original.macs
    record["params_ratio"] = pruned_analysis.params / original.params
    acc = evaluate_onnx(model, *splits.test)
    record["test_top1"] = acc.top1
    record["kept"] = _kept_fractions(model, original)
    record["wall_s"] = time.perf_counter() - t0
    MODEL_OUT.mkdir(parents=True, exist_ok=True)
    (MODEL_OUT / (run_key(arch, method, target, seed) + ".onnx")).write_bytes(model.SerializeToString())
    record.update(_latency(model.SerializeToString()))
    return record


def baseline_record(arch: str) -> dict[str, Any]:
    from onnxprune.bench import evaluate_onnx
    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze

    path = model_path(arch)
    a = analyze(path)
    splits = load_dataset("fashion-mnist", input_shape=a.graph.shapes[a.graph.inputs[0].name], seed=0)
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    rec = {"model": arch, "macs": a.macs, "params": a.params, "test_top1": evaluate_onnx(path, *splits.test).top1,
           "training": {k: meta.get(k) for k in ("epochs", "train_images", "train_seconds", "val_top1")}}
    rec.update(_latency(Path(path).read_bytes()))
    return rec


def remeasure_latency() -> int:
    """Latency of every stored run (and original) again, in one pass: for a quiet machine, since
    runs made while other work shared the cores have noisy latencies."""
    count = 0
    for path in sorted(RUNS.glob("*.json")):
        rec = json.loads(path.read_text())
        if "error" in rec:
            continue
        model = model_path(rec["model"]) if path.stem.endswith("__original") else MODEL_OUT / (path.stem + ".onnx")
        if not model.exists():
            continue
        rec.update(_latency(model.read_bytes()))
        rec["latency_remeasured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        path.write_text(json.dumps(rec, indent=1) + "\n")
        count += 1
    return count


def run_mode(mode: Mode, force: bool, only_methods: tuple[str, ...] | None, only_models: tuple[str, ...] | None) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for arch in only_models or mode.models:
        base_file = RUNS / f"{arch}__original.json"
        if force or not base_file.exists():
            base_file.write_text(json.dumps(baseline_record(arch), indent=1) + "\n")
        for target in mode.targets:
            for method in only_methods or mode.methods:
                seeds = mode.search_seeds if method in SEARCHES else mode.seeds
                for seed in seeds:
                    out = RUNS / (run_key(arch, method, target, seed) + ".json")
                    if out.exists() and not force:
                        continue
                    print(f"[{time.strftime('%H:%M:%S')}] {arch} {method} {target} seed {seed}", flush=True)
                    try:
                        rec = run_one(arch, method, target, seed, mode)
                    except Exception as exc:  # recorded, the table says so
                        rec = {"model": arch, "method": method, "target": target, "seed": seed,
                               "error": f"{type(exc).__name__}: {exc}"[:400]}
                    out.write_text(json.dumps(rec, indent=1) + "\n")
                    shown = {k: rec.get(k) for k in ("test_top1", "macs_ratio", "search_s", "error")}
                    print(f"    {json.dumps(shown)}", flush=True)


if __name__ == "__main__":
    from benchmarks.report import write_report

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="only these methods")
    ap.add_argument("--models", nargs="+", choices=sorted(TRAINING), help="only these models")
    ap.add_argument("--targets", nargs="+", choices=TARGETS, help="only these targets")
    ap.add_argument("--seeds", nargs="+", type=int, help="baseline seeds (default: the mode's)")
    ap.add_argument("--search-seeds", nargs="+", type=int, help="search-method seeds (default: the mode's)")
    ap.add_argument("--eval-images", type=int, help="validation images per cheap candidate evaluation")
    ap.add_argument("--search-option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                    help="a search method's option, e.g. gat-ppo.episodes=96 (repeatable)")
    ap.add_argument("--force", action="store_true", help="redo runs that are already stored")
    ap.add_argument("--report-only", action="store_true", help="only rebuild BENCHMARKS.md from stored runs")
    ap.add_argument("--latency-only", action="store_true",
                    help="re-measure the latency of every stored run (on a quiet machine), then report")
    ap.add_argument("--zoo", action="store_true", help="also measure analysis/prune coverage on the torchvision zoo")
    args = ap.parse_args()
    mode = MODES[args.mode]
    if args.targets:
        mode = dataclasses.replace(mode, targets=tuple(args.targets))
    if args.seeds:
        mode = dataclasses.replace(mode, seeds=tuple(args.seeds))
    if args.search_seeds:
        mode = dataclasses.replace(mode, search_seeds=tuple(args.search_seeds))
    if args.eval_images:
        mode = dataclasses.replace(mode, eval_images=args.eval_images)
    if args.search_option:
        options: dict[str, dict[str, Any]] = {m: dict(o) for m, o in mode.search_options.items()}
        for text in args.search_option:
            key, _, value = text.partition("=")
            method, _, name = key.partition(".")
            options.setdefault(method, {})[name] = value
        mode = dataclasses.replace(mode, search_options=options)
    if args.latency_only:
        print(f"re-measured {remeasure_latency()} models", flush=True)
    elif not args.report_only:
        run_mode(mode, args.force, tuple(args.methods) if args.methods else None,
                 tuple(args.models) if args.models else None)
        if args.zoo:
            from benchmarks.zoo_coverage import run_coverage

            run_coverage(full=args.mode == "full")
    write_report(args.mode)
    sys.exit(0)
