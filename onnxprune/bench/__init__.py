"""onnxruntime latency benchmarking (`onnxprune bench`)."""

from onnxprune.bench.latency import (
    PROVIDERS,
    BenchConfig,
    BenchResult,
    benchmark_model,
    benchmark_models,
    format_table,
    results_to_json,
)

__all__ = [
    "PROVIDERS",
    "BenchConfig",
    "BenchResult",
    "benchmark_model",
    "benchmark_models",
    "format_table",
    "results_to_json",
]
