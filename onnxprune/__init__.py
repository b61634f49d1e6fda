"""onnxprune: structured channel pruning of CNNs given only as ONNX files.

    import onnxprune

    analysis = onnxprune.analyze("model.onnx")
    result = onnxprune.prune("model.onnx", "pruned.onnx", target_flops=0.5)
    onnxprune.benchmark(["model.onnx", "pruned.onnx"])

The functions are imported on first use (`import onnxprune` stays light); see `onnxprune.public`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "analyze", "benchmark", "demo_model", "evaluate", "finetune", "prune"]

if TYPE_CHECKING:
    from onnxprune.public import analyze, benchmark, demo_model, evaluate, finetune, prune


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        from onnxprune import public

        return getattr(public, name)
    raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
