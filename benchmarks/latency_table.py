"""Validate the per-layer latency table (`onnxprune.bench.latency_table`) against whole-model
measurements: for masks at the runtime's widths (uniform levels, random per-group widths, the
L1 allocation at several MACs targets), the table's latency against the pruned model timed
whole with onnxruntime. The issue's bar: within 10%.

    python -m benchmarks.latency_table --model benchmarks/models/resnet20_folded.onnx --masks 30
    python -m benchmarks.latency_table --tiny --masks 4 --runs 20     # a quick check of the command

TIMING-SENSITIVE: run it with nothing else on the machine (the QUIET PASS); under load the
file records that it ran under load (`--note`). The table is measured afresh (a private cache
folder) unless `--cached`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results"


def masks_for(analysis: Any, multiples: dict[int, int], n: int, seed: int) -> dict[str, np.ndarray]:
    from onnxprune.criteria import weight_scores
    from onnxprune.search import AllocationConfig, allocate

    rng = np.random.default_rng(seed)
    groups = analysis.prunable()
    out: dict[str, np.ndarray] = {}
    l1 = weight_scores(analysis, "l1", seed)
    for target in (0.25, 0.5, 0.75):
        out[f"l1-uniform@{target}"] = allocate(analysis, l1, AllocationConfig(target_flops=target))
    for q in (0.25, 0.5, 0.75):  # every group at the same share, at its multiple
        keep = analysis.full_keep()
        for g in groups:
            m = multiples.get(g.id, 1)
            w = min(g.units, max(m, int(round(q * g.units / m)) * m))
            local = np.zeros(g.units, dtype=bool)
            local[np.argsort(-l1[g.unit_slice], kind="stable")[:w]] = True
            keep[g.unit_slice] = local
        out[f"uniform-{q}"] = analysis.repair(keep, l1)
    i = 0
    while len(out) < n:
        keep = analysis.full_keep()
        for g in groups:
            m = multiples.get(g.id, 1)
            w = min(g.units, int(rng.integers(1, -(-g.units // m) + 1)) * m)
            local = np.zeros(g.units, dtype=bool)
            local[rng.permutation(g.units)[:w]] = True
            keep[g.unit_slice] = local
        out[f"random-{i}"] = analysis.repair(keep, l1)
        i += 1
    return dict(list(out.items())[:n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "benchmarks" / "models" / "resnet20_folded.onnx"))
    ap.add_argument("--tiny", action="store_true", help="the digits test model (a quick check of the command)")
    ap.add_argument("--masks", type=int, default=30)
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--round-to", default="auto")
    ap.add_argument("--max-levels", type=int, default=8)
    ap.add_argument("--table-runs", type=int, default=30, help="timed runs per layer cell")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per whole-model measurement")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cached", action="store_true", help="use the user cache of tables")
    ap.add_argument("--note", default="quiet machine (QUIET PASS)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from onnxprune.bench import BenchConfig, benchmark_model
    from onnxprune.bench.latency_table import build_latency_table
    from onnxprune.deps import analyze
    from onnxprune.rewrite import apply_keep
    from onnxprune.search.rounding import parse_round_to, width_multiples

    if args.tiny:
        from tests.tiny import digits_model

        analysis, name = analyze(digits_model()[1]), "digits_tiny"
    else:
        analysis, name = analyze(args.model), Path(args.model).stem
    round_to = parse_round_to(args.round_to)
    multiples = width_multiples(analysis, round_to, args.provider)
    cache = None if args.cached else Path(tempfile.mkdtemp(prefix="onnxprune-latency-"))
    t0 = time.perf_counter()
    table = build_latency_table(analysis, lambda k: apply_keep(analysis, k), multiples,
                                BenchConfig(provider=args.provider, threads=args.threads, warmup=5,
                                            runs=args.table_runs), args.max_levels, cache, say=print)
    build_s = time.perf_counter() - t0
    whole = BenchConfig(provider=args.provider, threads=args.threads, warmup=args.warmup, runs=args.runs)

    def measure(keep: np.ndarray) -> float:
        return benchmark_model(apply_keep(analysis, keep).SerializeToString(), whole)[0].median_ms / 1000.0

    full_measured = measure(analysis.full_keep())
    full_table = table(analysis.full_keep())
    rows: list[dict[str, Any]] = []
    for label, keep in masks_for(analysis, multiples, args.masks, args.seed).items():
        measured, predicted = measure(keep), table(keep)
        rows.append({"mask": label, "macs": analysis.cost.macs(keep) / analysis.macs, "measured_s": measured,
                     "table_s": predicted, "measured_ratio": measured / full_measured,
                     "table_ratio": predicted / full_table, "error": predicted / measured - 1.0,
                     "ratio_error": (predicted / full_table) / (measured / full_measured) - 1.0})
        print(f"{label}: measured {measured * 1e3:.3f} ms, table {predicted * 1e3:.3f} ms "
              f"({rows[-1]['error']:+.1%}), MACs {rows[-1]['macs']:.3f}", flush=True)
    err = np.abs([r["error"] for r in rows])
    rerr = np.abs([r["ratio_error"] for r in rows])
    summary = {"masks": len(rows), "mean_abs_error": float(err.mean()), "max_abs_error": float(err.max()),
               "within_10pct": float((err <= 0.10).mean()), "ratio_mean_abs_error": float(rerr.mean()),
               "ratio_max_abs_error": float(rerr.max()), "ratio_within_10pct": float((rerr <= 0.10).mean()),
               "full_measured_s": full_measured, "full_table_s": full_table, "table_build_s": build_s}
    out = Path(args.out or OUT / f"latency_table__{name}__{args.provider}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"kind": "latency_table", "model": name, "note": args.note,
                               "settings": vars(args), "table_meta": table.meta, "scale": table.scale,
                               "residual_s": table.residual, "summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(out)


if __name__ == "__main__":
    main()
