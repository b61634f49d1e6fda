"""Shared helpers of the benchmark scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime as ort

from onnxprune.bench import BenchConfig, benchmark_model
from onnxprune.schema import machine, stamped
from tests import zoo


def cached_export(name: str, exporter: str) -> Path:
    """The cached export if present (timing runs do not need the export check), else export."""
    path = zoo.onnx_path(name, exporter)
    return path if path.exists() else zoo.export(name, exporter)


def interleaved_latency(variants: dict[str, Path], cfg: BenchConfig, rounds: int) -> dict[str, Any]:
    """Time every model of `variants` (one must be "original") in turn, `rounds` times.

    Returns the JSON fields the latency benchmarks record: `latency_ms` (min over rounds of the
    per-round median), `round_medians_ms` and `speedup` over the original, keyed by batch size."""
    times: dict[str, dict[int, list[float]]] = {k: {b: [] for b in cfg.batch_sizes} for k in variants}
    for _ in range(rounds):
        for label, model in variants.items():
            for r in benchmark_model(model, cfg):
                times[label][r.batch].append(r.median_ms)
    best = {k: {b: min(v) for b, v in per.items()} for k, per in times.items()}
    return {"latency_ms": {k: {str(b): round(v, 4) for b, v in per.items()} for k, per in best.items()},
            "round_medians_ms": {k: {str(b): [round(x, 4) for x in v] for b, v in per.items()}
                                 for k, per in times.items()},
            "speedup": {k: {str(b): round(best["original"][b] / v, 3) for b, v in per.items()}
                        for k, per in best.items() if k != "original"}}


def write_latency_results(path: Path, command: str, *, threads: Any, batch: list[int], runs: int, rounds: int,
                          order: str, note: str, rows: list[dict[str, Any]],
                          protocol: dict[str, Any] | None = None) -> None:
    """Write an interleaved-latency benchmark's results file (settings, machine, rows) and say so."""
    doc = stamped({"command": command,
                   "protocol": {"provider": "CPUExecutionProvider", "graph_optimizations": "all",
                                "threads": threads, "batch": batch, "runs": runs, "rounds": rounds,
                                "statistic": "min over rounds of the per-round median", "order": order,
                                **(protocol or {})},
                   "onnxruntime": ort.__version__, "machine": machine(), "note": note, "rows": rows})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")
