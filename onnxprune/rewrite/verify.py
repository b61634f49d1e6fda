"""Verification: the pruned model must compute exactly what the original computes once the
removed channels are masked out (their consumers' input weights zeroed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import shape_inference

from onnxprune.deps import Analysis
from onnxprune.errors import VerificationError
from onnxprune.ir import with_initializers
from onnxprune.numerics import compare_outputs, random_feeds, session

RTOL = 1e-4
ATOL = 1e-5


@dataclass(frozen=True)
class VerifyResult:
    max_abs_diff: float
    inputs_checked: int


def masked_reference(analysis: Analysis, keep: np.ndarray) -> onnx.ModelProto:
    """The original model with the input weights of consumers zeroed for removed channels."""
    zeroed: dict[str, np.ndarray] = {}
    for rm in analysis.groups.members:
        m = rm.member
        if m.kind != "in":
            continue
        mask = keep[rm.units]
        if mask.all():
            continue
        arr = zeroed.get(m.tensor)
        if arr is None:
            arr = np.array(analysis.graph.const(m.tensor))
        index = [slice(None)] * arr.ndim
        index[m.axis] = ~mask
        arr[tuple(index)] = 0
        zeroed[m.tensor] = arr
    return with_initializers(analysis.graph.model, zeroed)


def _checker_error(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model)
        shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return None


def check_model(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """`onnx.checker` plus strict shape inference; raise `VerificationError` on failure.

    A complaint the `original` model already triggers (e.g. graph outputs declared without a
    shape, which some exporters write) is not the rewrite's doing and is tolerated.
    """
    error = _checker_error(model)
    if error is None:
        return
    if original is not None and _checker_error(original) == error:
        return
    raise VerificationError(f"pruned model fails the ONNX checker: {error}")


def random_inputs(analysis: Analysis, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input (dynamic batch set to `batch`; other dimensions
    as the analysis fixed them)."""
    shapes = {}
    for inp in analysis.graph.inputs:
        shape = list(analysis.graph.shapes[inp.name])
        if inp.shape and not (isinstance(inp.shape[0], int) and inp.shape[0] > 0):
            shape[0] = batch
        shapes[inp.name] = shape
    return random_feeds(analysis.graph.model, batch, seed, shapes)


def verify(analysis: Analysis, keep: np.ndarray, pruned: onnx.ModelProto, trials: int = 3,
           seed: int = 0) -> VerifyResult:
    """Checker, then outputs of `pruned` vs the masked original on `trials` random inputs."""
    check_model(pruned, analysis.graph.model)
    ref = session(masked_reference(analysis, keep))
    try:
        new = session(pruned)
    except Exception as exc:
        raise VerificationError(f"onnxruntime cannot load the pruned model: {str(exc).splitlines()[0][:300]}") from None
    names = [o.name for o in ref.get_outputs()]
    worst = 0.0
    for t in range(trials):
        feeds = random_inputs(analysis, batch=2 if t % 2 else 1, seed=seed + t)
        expect = ref.run(names, feeds)
        try:
            got = new.run(names, feeds)
        except Exception as exc:
            raise VerificationError(f"the pruned model fails to run: {str(exc).splitlines()[0][:300]}") from None
        diff, _ = compare_outputs(got, expect, names, "pruned model", RTOL, ATOL, scaled=False,
                                  reference="the masked original")
        worst = max(worst, diff)
    return VerifyResult(max_abs_diff=worst, inputs_checked=trials)


def check_runs(analysis: Analysis, model: onnx.ModelProto, trials: int = 2, seed: int = 0) -> None:
    """Checker, then `model` runs in onnxruntime on `trials` seeded random inputs and gives finite
    outputs of the original's shapes (for models whose weights were trained, which no masked
    original can reproduce)."""
    check_model(model, analysis.graph.model)
    try:
        sess = session(model)
    except Exception as exc:
        raise VerificationError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:300]}") from None
    ref = session(analysis.graph.model)
    names = [o.name for o in ref.get_outputs()]
    for t in range(trials):
        feeds = random_inputs(analysis, batch=2 if t % 2 else 1, seed=seed + t)
        expect = ref.run(names, feeds)
        got = sess.run(names, feeds)
        for name, e, g in zip(names, expect, got):
            if e.shape != g.shape or not np.all(np.isfinite(g)):
                raise VerificationError(f"output {name}: shape {g.shape} (original {e.shape}) or non-finite values")
