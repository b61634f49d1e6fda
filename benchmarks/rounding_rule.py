"""Which width rule makes `--round-to auto` fastest on onnxruntime CPU? Threshold and multiple
compared on the models the defaults are judged by.

    /work/wt/cpuq python -m benchmarks.rounding_rule \
        [--models mobilenet_v2 resnet20] [--rules 1 8/32 8/16 16/16 auto] [--batch 1]
        [--runs 50] [--rounds 7] [--threads 0] [--note TEXT] [--json OUT]

A rule `M/T` rounds the kept width of every group of at least `T` channels to a multiple of `M`
channels; `M/T+M2/T2` adds a tier (multiple `M2` from `T2` channels on); `auto` is the current
`RUNTIME_WIDTHS["cpu"]`; rule `1` keeps any width. Each rule prunes the model with the same
settings (`--target-flops 0.5`,
`--method l1` uniform for the torchvision models; for `resnet20`, the shipped demo model, also
the demo's Taylor + global ranking on Fashion-MNIST, labelled `resnet20-demo`, whose pruned
files' test top-1 before fine-tuning is recorded on 2,000 test images), every file is
verified, and the original and all pruned files are then timed alternately (CPU provider, all
graph optimizations, `--threads` intra-op threads, 0 = onnxruntime's default), `--rounds`
times, each round the median of `--runs` runs after warm-up; a model's latency is the minimum
over rounds of its round medians. Writes `benchmarks/results/rounding_rule.json` with the kept
width of every group, the MACs kept and the speed-ups.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator


import onnxprune
from benchmarks.common import interleaved_latency, write_latency_results
from onnxprune.bench import BenchConfig
from onnxprune.search import rounding

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_IMAGES = 2000  # test images (seeded subset) for the accuracy of rows with data
TORCHVISION = ("mobilenet_v2", "resnet50", "resnet18", "mobilenet_v3_large", "efficientnet_b0")


Tiers = tuple[tuple[int, int], ...]  # (min_channels, multiple)


def parse_rule(text: str) -> Tiers:
    """`"1"` -> (); `"8/32"` -> ((32, 8),): multiple of 8 for groups of 32+ channels;
    `"8/16+16/32"` -> ((16, 8), (32, 16)); `"auto"`: the current CPU rule."""
    if text == "1":
        return ()
    if text == "auto":
        return rounding.RUNTIME_WIDTHS["cpu"].tiers
    tiers = []
    for part in text.split("+"):
        m, _, t = part.partition("/")
        tiers.append((int(t or m), int(m)))
    return tuple(sorted(tiers))


@contextlib.contextmanager
def cpu_rule(tiers: Tiers) -> Iterator[str]:
    """A temporary runtime entry holding the rule (removed afterwards); yields its name."""
    name = "bench-" + "-".join(f"{m}@{t}" for t, m in tiers)
    rounding.RUNTIME_WIDTHS[name] = rounding.RuntimeWidth(tiers, "benchmark rule")
    try:
        yield name
    finally:
        del rounding.RUNTIME_WIDTHS[name]


def settings_for(model: str) -> list[tuple[str, Path, dict[str, Any]]]:
    """(label, path, prune settings) for a model name."""
    if model in TORCHVISION:
        from benchmarks.common import cached_export

        return [(model, cached_export(model, "torchscript"), {"method": "l1"})]
    if model == "resnet20":
        path = onnxprune.demo_model()
        return [("resnet20", path, {"method": "l1"}),
                ("resnet20-demo", path, {"method": "taylor", "global_ranking": True, "data": "fashion-mnist",
                                         "calib_images": 512})]
    raise SystemExit(f"unknown model {model!r} (torchvision names or resnet20)")


def prune_with(path: Path, out: Path, rule: Tiers, target: float, extra: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    if not rule:
        result = onnxprune.prune(path, out, target_flops=target, round_to=1, **extra)
    else:
        with cpu_rule(rule) as runtime:
            result = onnxprune.prune(path, out, target_flops=target, runtime=runtime, **extra)
    report = result.report()
    top1 = None
    if extra.get("data"):  # how much the rule costs in accuracy, before any fine-tuning
        top1 = round(onnxprune.evaluate(out, str(extra["data"]), images=EVAL_IMAGES).top1, 4)
    widths = [[g["channels"], len(g["kept"])] for g in report["groups"] if g["prunable"]]
    m0, m1 = result.macs
    return {"prune_seconds": round(time.perf_counter() - t0, 2), "macs_kept": round(m1 / m0, 4),
            "params": list(result.params), "widths": widths,
            "odd_widths": sorted({k for n, k in widths if k != n and k % 8}),
            "test_top1_before_finetune": top1,
            "max_abs_diff": result.verified.max_abs_diff if result.verified else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet20"])
    ap.add_argument("--rules", nargs="+", default=["1", "8/32", "8/16", "16/16", "auto"],
                    help="M/T[+M2/T2]: multiple M for groups of T+ channels (M2 from T2 on); auto: the "
                         "current CPU rule; 1: no rounding")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded)")
    ap.add_argument("--json", type=Path, default=RESULTS / "rounding_rule.json")
    args = ap.parse_args(argv)
    rules = {r: parse_rule(r) for r in args.rules}
    cfg = BenchConfig(batch_sizes=tuple(args.batch), warmup=5, runs=args.runs, threads=args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for label, path, extra in settings_for(model):
                variants: dict[str, Path] = {"original": path}
                pruned: dict[str, dict[str, Any]] = {}
                for rule_name, rule in rules.items():
                    out = Path(tmp) / f"{label}-{rule_name.replace('/', '_').replace('+', '-')}.onnx"
                    pruned[rule_name] = prune_with(path, out, rule, args.target, extra)
                    variants[rule_name] = out
                row = {"model": label, "settings": {"target_flops": args.target, **extra}, "pruned": pruned,
                       **interleaved_latency(variants, cfg, args.rounds)}
                rows.append(row)
                print(json.dumps({"model": label, "speedup": row["speedup"],
                                  "macs_kept": {k: v["macs_kept"] for k, v in pruned.items()},
                                  "odd_widths": {k: v["odd_widths"] for k, v in pruned.items()}}), flush=True)
    write_latency_results(args.json, "python -m benchmarks.rounding_rule " + " ".join(argv if argv is not None else sys.argv[1:]),
                          threads=args.threads or "onnxruntime default", batch=args.batch, runs=args.runs,
                          rounds=args.rounds, order="original and every rule's pruned model alternately in every round",
                          note=args.note, rows=rows,
                          protocol={"rules": {r: [{"min_channels": t, "multiple": m} for t, m in tiers]
                                              for r, tiers in rules.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
