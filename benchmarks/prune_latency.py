"""Measured onnxruntime CPU speed-up of pruned models next to their MACs reduction.

    python -m benchmarks.prune_latency [--models resnet50 mobilenet_v2 densenet121 vgg16]
        [--targets 0.5 0.3] [--round-to 1 8] [--batch 1 8] [--runs 20]

For each model and MACs target (fraction of MACs kept): `prune --method l1 --target-flops F`
(timed), then the latency of original and pruned through onnxruntime (CPU provider, all graph
optimizations, default threads), median of `--runs` runs after warm-up. The goal is a speed-up
of at least 0.8 of the MACs ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from onnxprune.api import PruneConfig, prune, save_model
from onnxprune.bench import BenchConfig, benchmark_model
from tests import zoo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "densenet121", "vgg16"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.3])
    ap.add_argument("--round-to", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfg = BenchConfig(batch_sizes=tuple(args.batch), warmup=3, runs=args.runs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = zoo.export(name, "torchscript")
            base = {r.batch: r.median_ms for r in benchmark_model(path, cfg)}
            for target in args.targets:
                for k in args.round_to:
                    t0 = time.perf_counter()
                    result = prune(path, PruneConfig(method="l1", target_flops=target, round_to=k))
                    prune_s = time.perf_counter() - t0
                    out = Path(tmp) / f"{name}-{target}-{k}.onnx"
                    save_model(result.model, out)
                    after = {r.batch: r.median_ms for r in benchmark_model(out, cfg)}
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
