"""Measured onnxruntime CPU speed-up of pruned models next to their MACs reduction.

    python -m benchmarks.prune_latency [--models resnet50 mobilenet_v2 densenet121 vgg16]
        [--targets 0.5 0.3] [--round-to 1 8] [--batch 1 8] [--runs 20]

For each model and MACs target (fraction of MACs kept): `prune --method l1 --target-flops F`
(timed), then the latency of original and pruned through onnxruntime (CPU provider, all graph
optimizations, default threads), median of `--runs` runs after warm-up, original and pruned measured alternately
`--rounds` times (median of the rounds). The goal is a speed-up
of at least 0.8 of the MACs ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
from pathlib import Path

from onnxprune.api import PruneConfig, prune, save_model
from onnxprune.bench import BenchConfig, benchmark_model
from benchmarks.common import cached_export


def measure_pair(original: Path, pruned: Path, cfg: BenchConfig, rounds: int
                 ) -> tuple[dict[int, float], dict[int, float]]:
    """Median latency per batch of both models, measured alternately so that a change in the
    machine's load hits both; the result per batch is the median over the rounds."""
    base: dict[int, list[float]] = {}
    after: dict[int, list[float]] = {}
    for _ in range(rounds):
        for target, model in ((base, original), (after, pruned)):
            for r in benchmark_model(model, cfg):
                target.setdefault(r.batch, []).append(r.median_ms)
    med = lambda d: {b: float(np.median(v)) for b, v in d.items()}  # noqa: E731
    return med(base), med(after)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "densenet121", "vgg16"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.3])
    ap.add_argument("--round-to", nargs="+", type=int, default=[1, 8, 16])
    ap.add_argument("--rounds", type=int, default=3, help="original/pruned measured alternately this many times")
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfg = BenchConfig(batch_sizes=tuple(args.batch), warmup=3, runs=args.runs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = cached_export(name, "torchscript")
            for target in args.targets:
                for k in args.round_to:
                    t0 = time.perf_counter()
                    result = prune(path, PruneConfig(method="l1", target_flops=target, round_to=k))
                    prune_s = time.perf_counter() - t0
                    out = Path(tmp) / f"{name}-{target}-{k}.onnx"
                    save_model(result.model, out)
                    base, after = measure_pair(path, out, cfg, args.rounds)
                    m0, m1 = result.macs
                    row = {"model": name, "target": target, "round_to": k, "macs_ratio": round(m0 / m1, 3),
                           "prune_s": round(prune_s, 2), "seconds": {k2: round(v, 3) for k2, v in result.seconds.items()}}
                    for b in args.batch:
                        row[f"b{b}_ms"] = [round(base[b], 2), round(after[b], 2)]
                        row[f"b{b}_speedup"] = round(base[b] / after[b], 3)
                        row[f"b{b}_efficiency"] = round((base[b] / after[b]) / (m0 / m1), 3)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
