"""Normalization, pooling and reduction rules."""

from __future__ import annotations

import numpy as np

from onnxprune.ir import NodeView
from onnxprune.ops.registry import ChannelMap, Member, RuleContext, freeze_inputs, norm_axis, register


@register("BatchNormalization", "InstanceNormalization", kind="norm")
def per_channel_norm(node: NodeView, ctx: RuleContext) -> None:
    """Per-channel statistics on axis 1: each parameter input is a `param` member."""
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    if cmap.axis != 1:
        ctx.freeze(cmap.ids, f"{node.op_type} over a non-channel axis ({node.name})")
        return
    for name in node.inputs[1:]:
        if not name:
            continue
        if not ctx.graph.is_const(name):
            ctx.freeze(cmap.ids, f"{node.op_type} parameter {name} is computed ({node.name})")
            return
        ctx.add_member(Member(node.name, "param", name, 0, cmap.ids))
    ctx.set_map(node.outputs[0], cmap)


@register("LpNormalization", "LRN", "MeanVarianceNormalization", "Softmax", "LogSoftmax", "Hardmax", kind="other")
@register("LayerNormalization", "GroupNormalization", kind="norm")
def normalize_across(node: NodeView, ctx: RuleContext) -> None:
    """Ops that mix values along some axes: fine when the channel axis is not among them."""
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    shape = ctx.graph.shape(node.inputs[0])
    rank = len(shape) if shape else 0
    op = node.op_type
    if op == "LayerNormalization":
        mixed = set(range(norm_axis(int(node.attr("axis", -1)), rank), rank))
    elif op in ("Softmax", "LogSoftmax", "Hardmax"):
        mixed = {norm_axis(int(node.attr("axis", -1)), rank)}
    elif op == "LpNormalization":
        mixed = {norm_axis(int(node.attr("axis", -1)), rank)}
    elif op == "MeanVarianceNormalization":
        mixed = {norm_axis(int(a), rank) for a in node.attr("axes", (0, 2, 3))}
    else:  # GroupNormalization, LRN: across neighbouring channels
        mixed = {1}
    if cmap.axis in mixed or not shape:
        ctx.freeze(cmap.ids, f"{op} mixes values across channels, removing one would change the rest "
                             f"({node.name})")
        return
    if any(ctx.map(x) is not None for x in node.inputs[1:] if x):
        freeze_inputs(node, ctx, f"{op} with channel-carrying parameters")
        return
    ctx.set_map(node.outputs[0], cmap)


@register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
          "MaxRoiPool", kind="pool")
def pool(node: NodeView, ctx: RuleContext) -> None:
    """Pooling works per channel; MaxPool's optional indices output is not followed."""
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    if cmap.axis != 1 or node.op_type == "MaxRoiPool":
        ctx.freeze(cmap.ids, f"{node.op_type} over the channel axis ({node.name})")
        return
    if len(node.outputs) > 1 and node.outputs[1]:
        ctx.freeze(cmap.ids, f"MaxPool indices output depends on the channel count ({node.name})")
        return
    ctx.set_map(node.outputs[0], cmap)


REDUCE = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")


@register(*REDUCE, kind="reduce")
def reduce(node: NodeView, ctx: RuleContext) -> None:
    """Reductions over other axes keep the channels (with the axis shifted when keepdims=0)."""
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    shape = ctx.graph.shape(node.inputs[0])
    if shape is None:
        ctx.freeze(cmap.ids, f"unknown input shape of {node.name}")
        return
    rank = len(shape)
    if node.op_type in ("ArgMax", "ArgMin"):
        axes: tuple[int, ...] | None = (int(node.attr("axis", 0)),)
    else:
        axes = node.attr("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            value = ctx.graph.const(node.inputs[1])
            axes = None if value is None else tuple(int(a) for a in np.ravel(value))
            if value is None:
                ctx.freeze(cmap.ids, f"{node.op_type} axes are computed ({node.name})")
                return
    if axes is None or len(axes) == 0:
        if int(node.attr("noop_with_empty_axes", 0)):
            ctx.set_map(node.outputs[0], cmap)
            return
        axes = tuple(range(rank))
    reduced = {norm_axis(int(a), rank) for a in axes}
    if cmap.axis in reduced:
        ctx.freeze(cmap.ids, f"{node.op_type} reduces over the channel axis ({node.name})")
        return
    keep = int(node.attr("keepdims", 1))
    axis = cmap.axis if keep else cmap.axis - sum(1 for a in reduced if a < cmap.axis)
    ctx.set_map(node.outputs[0], ChannelMap(axis, cmap.ids))
