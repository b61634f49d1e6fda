"""Input validation, before any work: a broken model is the user's to fix (exit 2), never a crash.

Three checks here:

1. `check_onnx`, when a model is loaded (`onnxprune.ir.load_model`): `onnx.checker` (structure,
   types, dangling tensors, topological order);
2. `check_runtime`, then too: onnxruntime loads the model (CPU, graph optimizations off), which
   runs ONNX type and shape inference on every node. A model with operators of domains
   onnxruntime does not implement is loaded only by the commands that run it (`prune`);
3. `check_run`, once the input shapes are known (`onnxprune.ir.build_graph`): onnxruntime runs
   the model once on seeded random inputs of those shapes.

The third, the consistency of each layer's weights with its inferred input shapes, is per op
type and lives with the op rules (`onnxprune.ops.checks`, run before the analysis).

Each raises `InputError` with one line naming the model and what is wrong.
"""

from __future__ import annotations

import re
import onnx

from onnxprune.errors import InputError

# Operator domains onnxruntime's CPU build implements.
RUNTIME_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc"})
_PROTO_LIMIT = 2**31 - 1  # protobuf cannot serialize more in one message


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= limit else first[:limit] + "..."


def _domains(graph: onnx.GraphProto) -> set[str]:
    found: set[str] = set()
    for node in graph.node:
        found.add(node.domain)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found |= _domains(sub)
    return found


def runtime_can_load(model: onnx.ModelProto) -> bool:
    """True when every operator's domain is one onnxruntime implements (else loading says nothing)."""
    return _domains(model.graph) <= RUNTIME_DOMAINS


def check_onnx(model: onnx.ModelProto, source: str) -> None:
    """`onnx.checker` on the model as read; `InputError` on the first complaint."""
    if model.ByteSize() > _PROTO_LIMIT:
        return  # a > 2 GB model cannot be serialized for the checker; onnxruntime checks it
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # checker raises ValidationError, protobuf errors...
        raise InputError(f"{source}: not a valid ONNX model ({_first_line(exc)})") from None


def check_runtime(model: onnx.ModelProto, source: str) -> None:
    """onnxruntime loads the model (CPU provider, graph optimizations off, log silenced)."""
    from onnxprune.numerics import session

    try:
        session(model, log_level=4)
    except Exception as exc:  # onnxruntime raises Fail, InvalidGraph, InvalidArgument, NotImplemented...
        raise InputError(f"{source}: onnxruntime cannot load the input: {_first_line(exc)}") from None


def check_run(model: onnx.ModelProto, source: str, shapes: Mapping[str, Sequence[int]]) -> None:
    """onnxruntime runs the model once on seeded random inputs of `shapes` (what the analysis
    assumes): a model that loads but cannot run (a Reshape to an impossible shape, a pooling of
    a rank-2 tensor...) is refused before any work."""
    from onnxprune.numerics import random_feeds, session

    try:
        sess = session(model, log_level=4)
        sess.run(None, random_feeds(model, 1, 0, shapes))
    except Exception as exc:  # onnxruntime raises many types
        raise InputError(f"{source}: onnxruntime cannot run the input: {_first_line(exc)}") from None
