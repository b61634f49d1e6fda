"""Op facts besides channel flow: what kind of layer a node is, and which inputs of an op hold
learned parameters.

Later stages ask these questions instead of keeping their own lists of op types: gat-ppo's
state graph reads `layer_facts` of each group's producers (through
`onnxprune.deps.Analysis.producers`), the torch copy decides which initializers train with
`param_inputs` / `is_affine`, the `bn` criterion finds BatchNormalization scales with
`batchnorm_scale`. Questions take an op type (a string) where callers hold protobuf nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxprune.ir import LayerGraph, NodeView
from onnxprune.ops.linear import kernel_area
from onnxprune.ops.registry import kind_of

#: What kind of layer a node is: a Conv with group 1 (`conv`), a Conv with group > 1
#: (`grouped_conv`, depthwise included; note that a depthwise Conv passes its input's channels
#: on, so it never produces a group), `conv_transpose`, a fully connected Gemm or MatMul
#: (`linear`), anything else (`other`).
LayerKind = Literal["conv", "grouped_conv", "conv_transpose", "linear", "other"]


@dataclass(frozen=True)
class LayerFacts:
    """A node as a layer: name, op type, topological index, `kind`, and for conv and linear
    layers its geometry: `kernel` the kernel area (product of the weight's spatial dims, 1 for
    a linear layer), `stride` the mean stride, `groups` the conv groups. The geometry is None
    for `other` nodes."""

    node: str
    op_type: str
    index: int
    kind: LayerKind
    kernel: int | None = None
    stride: float | None = None
    groups: int | None = None


def layer_facts(node: NodeView, graph: LayerGraph) -> LayerFacts:
    """The `LayerFacts` of `node` in `graph`."""
    op_kind = kind_of(node)
    if op_kind in ("conv", "conv_transpose"):
        w = graph.shape(node.inputs[1]) or ()
        groups = int(node.attr("group", 1))
        kind: LayerKind = "conv_transpose" if op_kind == "conv_transpose" else ("grouped_conv" if groups > 1 else "conv")
        return LayerFacts(node.name, node.op_type, node.index, kind,
                          kernel=kernel_area(w),
                          stride=float(np.mean(node.attr("strides", [1]))), groups=groups)
    if op_kind == "linear":
        return LayerFacts(node.name, node.op_type, node.index, "linear", kernel=1, stride=1.0, groups=1)
    return LayerFacts(node.name, node.op_type, node.index, "other")


# Inputs holding learned parameters: weights and bias of Conv / ConvTranspose / Gemm, MatMul's
# right-hand side, PRelu's slope, the scale and shift of the normalizations (BatchNormalization's
# running statistics, inputs 3 and 4, are not learned).
_PARAM_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "PRelu": (1,),
    "BatchNormalization": (1, 2), "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2),
    "GroupNormalization": (1, 2),
}
# Ops whose constant operand can be a layer's bias or per-channel scale (an exporter's bias Add).
_AFFINE = frozenset({"Add", "Mul"})


def param_inputs(op_type: str) -> tuple[int, ...]:
    """Indices of the inputs of `op_type` that hold learned parameters (empty: none)."""
    return _PARAM_INPUTS.get(op_type, ())


def has_params(op_type: str) -> bool:
    """Whether `op_type` is a layer with learned parameters (`param_inputs`)."""
    return op_type in _PARAM_INPUTS


def is_affine(op_type: str) -> bool:
    """Whether a constant operand of `op_type` can be the bias or per-channel scale of the
    layer feeding its other operand (Add, Mul)."""
    return op_type in _AFFINE


def is_batchnorm(op_type: str) -> bool:
    """Whether `op_type` is BatchNormalization."""
    return op_type == "BatchNormalization"


def batchnorm_scale(node: NodeView) -> str | None:
    """The scale (gamma) input of a BatchNormalization node; None for any other node."""
    return node.inputs[1] if is_batchnorm(node.op_type) else None
