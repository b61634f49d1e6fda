"""onnxruntime measurements: latency (`onnxprune bench`) and accuracy (`onnxprune eval`)."""

from onnxprune.bench.accuracy import Accuracy, evaluate_onnx

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
    "Accuracy",
    "evaluate_onnx",
    "PROVIDERS",
    "BenchConfig",
    "BenchResult",
    "benchmark_model",
    "benchmark_models",
    "format_table",
    "results_to_json",
]
