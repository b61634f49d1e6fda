"""onnxruntime numerics in one place: CPU sessions, seeded input feeds and output comparison.

Every check that runs a model through onnxruntime on the CPU (rewrite verification, the torch
round trip, the fine-tune write-back check, shapes read off a run, top-1 of `onnxprune eval`)
makes its session and feeds here and compares outputs here, so that they agree on provider,
optimization level, feeds and tolerance formula. (Latency benchmarks choose providers and
threads themselves: `onnxprune.bench.latency`.)
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from onnxprune.errors import InputError, VerificationError


def session(model: onnx.ModelProto | bytes | str | os.PathLike[str], optimize: bool = False,
            log_level: int = 3) -> Any:  # -> onnxruntime.InferenceSession
    """An onnxruntime session on the CPU provider.

    `optimize=False` (numerics checks) turns graph optimizations off, so that what runs is the
    graph as written; `True` keeps onnxruntime's defaults (accuracy, as users run models).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = log_level
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else (
        model if isinstance(model, bytes) else str(model))
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def static_input_shapes(model: onnx.ModelProto, batch: int | None,
                 given: Mapping[str, Sequence[int]] | None = None) -> tuple[dict[str, tuple[int, ...]], int | None]:
    """Static shapes of the graph inputs (a dynamic batch set to `batch`, other dynamic dimensions
    from `given`), and the batch size the graph fixes (None when dynamic)."""
    inits = {t.name for t in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    fixed: int | None = None
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if given and vi.name in given:
            shapes[vi.name] = tuple(int(d) for d in given[vi.name])
            continue
        dims = []
        for pos, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
                if pos == 0 and fixed is None:
                    fixed = int(d.dim_value)
            elif pos == 0:
                dims.append(batch or 1)
            else:
                raise InputError(f"input {vi.name!r} has a dynamic dimension at position {pos}: "
                                 f"pass input_shapes={{{vi.name!r}: (N, C, H, W)}}")
        shapes[vi.name] = tuple(dims)
    return shapes, fixed


def random_feeds(model: onnx.ModelProto, batch: int, seed: int,
                 given: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every graph input (a dynamic batch set to `batch`;
    shapes in `given` used as they are); non-float inputs are zeros."""
    shapes, _ = static_input_shapes(model, batch, given)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    return random_arrays([(name, shape, types[name]) for name, shape in shapes.items()], seed)


def random_arrays(specs: Sequence[tuple[str, Sequence[int], int]], seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs from (name, shape, ONNX elem_type) specs, in order: standard-normal floats,
    zeros for other types (the feeds every numerics check uses)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, elem_type in specs:
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(tuple(shape)).astype(dtype)
        else:
            feeds[name] = np.zeros(tuple(shape), dtype=dtype)
    return feeds


def compare_outputs(got: Sequence[np.ndarray], expect: Sequence[np.ndarray], names: Sequence[str], what: str,
                    rtol: float, atol: float, scaled: bool = True, reference: str = "onnxruntime") -> tuple[float, float]:
    """Raise `VerificationError` unless every |got - expect| <= rtol |expect| + atol s and `got`
    is finite, where s = max(1, max|expect|) when `scaled`, else 1.

    Returns (max abs difference, max abs expected value). `what` names the model checked and
    `reference` what it is compared with, in the error message.
    """
    worst, scale_all = 0.0, 0.0
    for name, g, e in zip(names, got, expect):
        g = np.asarray(g, dtype=np.float64)
        e = np.asarray(e, dtype=np.float64)
        if g.shape != e.shape:
            raise VerificationError(f"{what}: output {name} has shape {g.shape}, {reference} gives {e.shape}")
        if e.size == 0:
            continue
        scale = float(np.max(np.abs(e)))
        diff = np.abs(g - e)
        worst, scale_all = max(worst, float(diff.max())), max(scale_all, scale)
        bound = atol * (max(1.0, scale) if scaled else 1.0)
        if not np.all(diff <= rtol * np.abs(e) + bound) or not np.all(np.isfinite(g)):
            unit = " x max(1, max|output|)" if scaled else ""
            raise VerificationError(
                f"{what}: output {name} differs from {reference} (max abs diff {float(diff.max()):.3g} "
                f"for outputs up to {scale:.3g}; rtol {rtol}, atol {atol}{unit})"
            )
    return worst, scale_all
