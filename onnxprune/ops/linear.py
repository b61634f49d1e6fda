"""Rules for the ops that produce and consume channels: Conv, ConvTranspose, Gemm, MatMul."""

from __future__ import annotations

import numpy as np

from onnxprune.ir import NodeView
from onnxprune.ops.registry import ChannelMap, Member, RuleContext, freeze_inputs, register


def _input_channels(node: NodeView, ctx: RuleContext, axis: int, size: int, what: str) -> np.ndarray:
    """Ids of the channels entering `node` on input 0 along `axis` (frozen ids if untracked)."""
    cmap = ctx.map(node.inputs[0])
    if cmap is not None and cmap.axis == axis and len(cmap) == size:
        return cmap.ids
    if cmap is not None:
        ctx.freeze(cmap.ids, f"{node.op_type} reads its channels on another axis ({node.name})")
    return ctx.frozen_channels(size, f"{what} of {node.name} is a graph input or follows an op whose channels are not tracked")


def _spatial(shape: tuple[int, ...] | None) -> int:
    if not shape:
        return 1
    n = 1
    for d in shape[2:]:
        n *= d
    return n


def kernel_area(w_shape: tuple[int, ...]) -> int:
    """Kernel area of a Conv / ConvTranspose weight shape: the product of its spatial dims."""
    return int(np.prod(w_shape[2:])) if len(w_shape) > 2 else 1


def _unit_union(ctx: RuleContext, ids: np.ndarray, groups: int) -> np.ndarray:
    """Tie channel j of every conv group together (grouped Conv keeps its groups balanced)."""
    per = ids.reshape(groups, -1)  # (groups, channels per group)
    for g in range(1, groups):
        ctx.union(per[0], per[g])
    return per[0]


def _untracked_layer(node: NodeView, ctx: RuleContext, reason: str) -> None:
    """A layer no rule can follow: freeze its inputs' channels and give its output frozen ones."""
    freeze_inputs(node, ctx, reason)
    out_shape = ctx.graph.shape(node.outputs[0])
    if out_shape:
        ctx.set_map(node.outputs[0], ChannelMap(1, ctx.frozen_channels(out_shape[1], f"output of {node.name}")))


@register("Conv", kind="conv")
def conv(node: NodeView, ctx: RuleContext) -> None:
    g = ctx.graph
    w_name = node.inputs[1]
    w_shape = g.const_shape(w_name)
    out_shape = g.shape(node.outputs[0])
    if w_shape is None:
        _untracked_layer(node, ctx, "Conv weights are computed at run time")
        return
    groups = int(node.attr("group", 1))
    c_out, c_in_g = w_shape[0], w_shape[1]
    c_in = c_in_g * groups
    k = kernel_area(w_shape)
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else ""
    in_ids = _input_channels(node, ctx, 1, c_in, "input")
    macs = c_out * c_in_g * k * _spatial(out_shape)

    if groups > 1 and groups == c_in:
        # Depthwise (channel multiplier m): output channel o reads input channel o // m only.
        mult = c_out // c_in
        out_ids = np.repeat(in_ids, mult)
        ctx.add_member(Member(node.name, "out", w_name, 0, out_ids))
        ctx.add_member(Member(node.name, "group_attr", "", 0, in_ids))
        ctx.add_macs(node, macs, out_ids, None)
    else:
        out_ids = ctx.new_channels(node, c_out)
        w_in_ids = in_ids
        if groups > 1:
            w_in_ids = _unit_union(ctx, in_ids, groups)
            _unit_union(ctx, out_ids, groups)
        ctx.add_member(Member(node.name, "out", w_name, 0, out_ids))
        ctx.add_member(Member(node.name, "in", w_name, 1, w_in_ids))
        ctx.add_macs(node, macs, out_ids, in_ids)
    if bias:
        ctx.add_member(Member(node.name, "param", bias, 0, out_ids))
    ctx.set_map(node.outputs[0], ChannelMap(1, out_ids))


@register("ConvTranspose", kind="conv_transpose")
def conv_transpose(node: NodeView, ctx: RuleContext) -> None:
    g = ctx.graph
    w_name = node.inputs[1]
    w_shape = g.const_shape(w_name)
    groups = int(node.attr("group", 1))
    if w_shape is None or groups != 1:
        why = "weights are computed at run time" if w_shape is None else f"group={groups} is not supported"
        _untracked_layer(node, ctx, f"ConvTranspose {why}")
        return
    c_in, c_out = w_shape[0], w_shape[1]
    k = kernel_area(w_shape)
    in_shape = g.shape(node.inputs[0])
    in_ids = _input_channels(node, ctx, 1, c_in, "input")
    out_ids = ctx.new_channels(node, c_out)
    ctx.add_member(Member(node.name, "in", w_name, 0, in_ids))
    ctx.add_member(Member(node.name, "out", w_name, 1, out_ids))
    if len(node.inputs) > 2 and node.inputs[2]:
        ctx.add_member(Member(node.name, "param", node.inputs[2], 0, out_ids))
    ctx.add_macs(node, c_in * c_out * k * _spatial(in_shape), out_ids, in_ids)
    ctx.set_map(node.outputs[0], ChannelMap(1, out_ids))


@register("Gemm", kind="linear")
def gemm(node: NodeView, ctx: RuleContext) -> None:
    g = ctx.graph
    a, b = node.inputs[0], node.inputs[1]
    b_shape = g.const_shape(b)
    a_shape = g.shape(a)
    if b_shape is None or int(node.attr("transA", 0)) != 0 or a_shape is None or len(a_shape) != 2:
        _untracked_layer(node, ctx, "Gemm with computed weights or transA is not supported")
        return
    trans_b = int(node.attr("transB", 0))
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    k, n = b_shape[k_axis], b_shape[n_axis]
    in_ids = _input_channels(node, ctx, 1, k, "input")
    out_ids = ctx.new_channels(node, n)
    ctx.add_member(Member(node.name, "in", b, k_axis, in_ids))
    ctx.add_member(Member(node.name, "out", b, n_axis, out_ids))
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    if c:
        c_shape = g.shape(c)
        if c_shape and c_shape[-1] == n and n > 1:
            if not g.is_const(c):
                ctx.freeze(out_ids, f"Gemm bias is computed at run time ({node.name})")
            else:
                ctx.add_member(Member(node.name, "param", c, len(c_shape) - 1, out_ids))
    ctx.add_macs(node, a_shape[0] * k * n, out_ids, in_ids)
    ctx.set_map(node.outputs[0], ChannelMap(1, out_ids))


@register("MatMul", kind="linear")
def matmul(node: NodeView, ctx: RuleContext) -> None:
    g = ctx.graph
    a, b = node.inputs[0], node.inputs[1]
    a_shape, b_shape = g.shape(a), g.const_shape(b)
    out = node.outputs[0]
    out_shape = g.shape(out)
    a_map = ctx.map(a)
    if b_shape is None or len(b_shape) != 2 or a_shape is None or out_shape is None or ctx.map(b) is not None:
        freeze_inputs(node, ctx, "MatMul of two computed tensors is not supported")
        return
    k, n = b_shape
    rank = len(a_shape)
    rows = int(np.prod(a_shape[:-1])) if rank > 1 else 1
    if a_map is not None and a_map.axis != rank - 1:
        # Channels on a batch-like axis pass through a MatMul over the last axis; its rows (and
        # MACs) shrink with them.
        ctx.set_map(out, ChannelMap(a_map.axis + len(out_shape) - rank, a_map.ids))
        ctx.add_macs(node, rows * k * n, a_map.ids, None)
        return
    in_ids = _input_channels(node, ctx, rank - 1, k, "input")
    out_ids = ctx.new_channels(node, n)
    ctx.add_member(Member(node.name, "in", b, 0, in_ids))
    ctx.add_member(Member(node.name, "out", b, 1, out_ids))
    ctx.add_macs(node, rows * k * n, out_ids, in_ids)
    ctx.set_map(out, ChannelMap(len(out_shape) - 1, out_ids))
