"""Consistency of each layer with its inputs, checked before the channel rules run.

Conv/ConvTranspose/Gemm/BatchNormalization weights, bias and `group` must agree with each other
and with the shapes inferred for their inputs: the rules and the rewrite slice them on that
assumption, so a model where they do not is refused (`InputError`, exit 2) instead of crashing
the analysis or being "pruned" into garbage.
"""

from __future__ import annotations

from typing import Callable

from onnxprune.errors import InputError
from onnxprune.ir import LayerGraph, NodeView

def check_layers(graph: LayerGraph) -> None:
    """Weights, bias and `group` of Conv/ConvTranspose/Gemm/BatchNormalization agree with the
    inferred input shapes (the rules and the rewrite slice them on that assumption)."""
    source = graph.source
    for node in graph.nodes:
        check = _LAYER_CHECKS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if check is None:
            continue
        problem = check(graph, node)
        if problem:
            raise InputError(f"{source}: {node.op_type} node {node.name!r}: {problem}")


def _conv(graph: LayerGraph, node: NodeView) -> str | None:
    x, w = graph.shape(node.inputs[0]), graph.shape(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return None  # computed weights: the rules freeze what they cannot read
    group = node.attr("group", 1)
    if not isinstance(group, int) or group < 1:
        return f"group {group!r} must be a positive integer"
    if len(w) < 3:
        return f"weight of rank {len(w)}, expected at least 3"
    if x is not None and len(x) != len(w):
        return f"input of rank {len(x)} but weight of rank {len(w)}"
    transpose = node.op_type == "ConvTranspose"
    c_in = w[0] if transpose else w[1] * group
    c_out = w[1] * group if transpose else w[0]
    if not transpose and w[0] % group:
        return f"{w[0]} output channels are not divisible by group {group}"
    if transpose and w[0] % group:
        return f"{w[0]} input channels are not divisible by group {group}"
    if x is not None and x[1] != c_in:
        return f"input has {x[1]} channels, weight {tuple(w)} with group {group} expects {c_in}"
    kernel = node.attr("kernel_shape")
    if kernel is not None and tuple(kernel) != tuple(w[2:]):
        return f"kernel_shape {tuple(kernel)} differs from the weight's {tuple(w[2:])}"
    spatial = len(w) - 2
    for name in ("strides", "dilations"):
        values = node.attr(name)
        if values is not None and (len(values) != spatial or any(v < 1 for v in values)):
            return f"{name} {tuple(values)}: expected {spatial} positive values"
    pads = node.attr("pads")
    if pads is not None and (len(pads) != 2 * spatial or any(p < 0 for p in pads)):
        return f"pads {tuple(pads)}: expected {2 * spatial} non-negative values"
    if len(node.inputs) > 2 and node.inputs[2]:
        b = graph.shape(node.inputs[2])
        if b is not None and tuple(b) != (c_out,):
            return f"bias of shape {tuple(b)}, expected ({c_out},)"
    return None


def _gemm(graph: LayerGraph, node: NodeView) -> str | None:
    a, b = graph.shape(node.inputs[0]), graph.shape(node.inputs[1])
    if a is None or b is None:
        return None
    if len(a) != 2 or len(b) != 2:
        return f"inputs of ranks {len(a)} and {len(b)}, expected 2 and 2"
    k_a = a[0] if node.attr("transA", 0) else a[1]
    k_b = b[1] if node.attr("transB", 0) else b[0]
    if k_a != k_b:
        return f"A has {k_a} features, B of shape {tuple(b)} expects {k_b}"
    n = b[0] if node.attr("transB", 0) else b[1]
    if len(node.inputs) > 2 and node.inputs[2]:
        c = graph.shape(node.inputs[2])
        if c is not None and (len(c) > 2 or (c and c[-1] not in (1, n))):
            return f"C of shape {tuple(c)} does not broadcast to (M, {n})"
    return None


def _batchnorm(graph: LayerGraph, node: NodeView) -> str | None:
    x = graph.shape(node.inputs[0])
    if x is None or len(x) < 2:
        return None
    for name in node.inputs[1:5]:
        s = graph.shape(name) if name else None
        if s is not None and tuple(s) != (x[1],):
            return f"{name} of shape {tuple(s)}, expected ({x[1]},) for an input of {x[1]} channels"
    return None


_LAYER_CHECKS: dict[str, Callable[[LayerGraph, NodeView], str | None]] = {"Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "BatchNormalization": _batchnorm}
