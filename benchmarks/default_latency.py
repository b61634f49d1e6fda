"""Is the default `prune --target-flops 0.5` faster? torchvision MobileNetV2 and ResNet-50
(TorchScript exports, random weights) pruned with every default (`--method l1`, `--round-to
auto`, `--simplify auto`), timed side by side with the original in one run.

    flock /work/wt/cpu.lock python -m benchmarks.default_latency \
        [--models mobilenet_v2 resnet50] [--batch 1] [--runs 50] [--rounds 5] [--round-to-1]

onnxruntime CPU provider, all graph optimizations, default threads. Original and pruned models
are timed alternately, `--rounds` times, each round the median of `--runs` runs after warm-up;
the reported latency of each model is the minimum over rounds of those medians (the least
disturbed round). `--round-to-1` adds the pruned model without width rounding (the earlier
default) for comparison. Writes `benchmarks/results/default_latency.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


import onnxprune
from benchmarks.common import cached_export, interleaved_latency, write_latency_results
from onnxprune.bench import BenchConfig

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-to-1", action="store_true", help="also time the pruned model without rounding")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded)")
    ap.add_argument("--json", type=Path, default=RESULTS / "default_latency.json")
    args = ap.parse_args(argv)
    cfg = BenchConfig(batch_sizes=tuple(args.batch), warmup=5, runs=args.runs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = cached_export(name, "torchscript")
            variants: dict[str, Path] = {"original": path}
            pruned: dict[str, dict[str, object]] = {}
            settings = {"default": {}}
            if args.round_to_1:
                settings["round_to=1"] = {"round_to": 1}
            for label, extra in settings.items():
                t0 = time.perf_counter()
                out = Path(tmp) / f"{name}-{label}.onnx"
                result = onnxprune.prune(path, out, target_flops=args.target, **extra)  # type: ignore[arg-type]
                m0, m1 = result.macs
                pruned[label] = {"prune_seconds": round(time.perf_counter() - t0, 2), "macs": [m0, m1],
                                 "macs_kept": round(m1 / m0, 4), "params": list(result.params),
                                 "settings": {"method": "l1", "target_flops": args.target, **extra}}
                variants[label] = out
            row = {"model": name, "export": "torchscript (opset 17), random weights", "pruned": pruned,
                   **interleaved_latency(variants, cfg, args.rounds)}
            rows.append(row)
            print(json.dumps({"model": name, "speedup": row["speedup"], "latency_ms": row["latency_ms"],
                              "macs_kept": {k: v["macs_kept"] for k, v in pruned.items()}}), flush=True)
    write_latency_results(args.json, "python -m benchmarks.default_latency " + " ".join(argv or sys.argv[1:]),
                          threads="onnxruntime default", batch=args.batch, runs=args.runs, rounds=args.rounds,
                          order="original and pruned alternately in every round", note=args.note, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
