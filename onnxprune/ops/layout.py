"""Rules for ops that move, merge, split or cut tensors: Transpose, Reshape, Flatten, Squeeze,
Unsqueeze, Concat, Split, Slice, Gather, Pad, Resize, Expand, Shape."""

from __future__ import annotations

import numpy as np

from onnxprune.ir import NodeView
from onnxprune.ops.registry import ChannelMap, Member, RuleContext, freeze_inputs, norm_axis, register


@register("Transpose", kind="layout")
def transpose(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    perm = node.attr("perm")
    if perm is None:
        shape = ctx.graph.shape(node.inputs[0])
        if shape is None:
            ctx.freeze(cmap.ids, f"unknown input rank of {node.name}")
            return
        perm = tuple(reversed(range(len(shape))))
    ctx.set_map(node.outputs[0], ChannelMap(list(perm).index(cmap.axis), cmap.ids))


@register("Shape", "Size", kind="shape")
def shape_of(node: NodeView, ctx: RuleContext) -> None:
    """Reading a shape carries no channels; Reshapes fed by it are checked by the Reshape rule."""


def follow_reshape(ctx: RuleContext, node: NodeView, cmap: ChannelMap) -> ChannelMap | None:
    """Channel map of a Reshape/Flatten output, tying channels when the channel axis is split.

    Lays the channel ids out over the whole input tensor, reshapes that array, and finds the
    output axes along which ids vary. Ids varying along one axis are the new channel axis. When
    they vary along several (a channel shuffle splits C into (groups, C/groups)), channels along
    all but the largest axis are tied, so pruning keeps the tensor a product of its axes.
    """
    g = ctx.graph
    in_shape, out_shape = g.shape(node.inputs[0]), g.shape(node.outputs[0])
    if in_shape is None or out_shape is None:
        ctx.freeze(cmap.ids, f"unknown shapes around {node.op_type} {node.name}")
        return None
    view = [1] * len(in_shape)
    view[cmap.axis] = len(cmap)
    laid = np.broadcast_to(cmap.ids.reshape(view), in_shape).reshape(out_shape)
    varying = [k for k in range(len(out_shape)) if not (laid == laid.take([0], axis=k)).all()]
    if not varying:
        ctx.freeze(cmap.ids, f"every channel here is tied into one unit (e.g. by repeated channel "
                             f"shuffles), nothing can be removed ({node.name})")
        return None
    axis = max(varying, key=lambda k: out_shape[k])
    others = [k for k in varying if k != axis]
    if others:
        moved = np.moveaxis(laid, axis, 0).reshape(out_shape[axis], -1)  # (C', rest)
        for col in range(1, moved.shape[1]):
            ctx.union(moved[:, 0], moved[:, col])
    index = [0] * len(out_shape)
    index[axis] = slice(None)
    return ChannelMap(axis, np.ascontiguousarray(laid[tuple(index)]))


def _shape_from_shapes(ctx: RuleContext, tensor: str, depth: int = 0) -> bool:
    """True when a computed shape tensor is derived from run-time `Shape` of tensors."""
    node = ctx.graph.producer.get(tensor)
    if node is None or depth > 12:
        return False
    if node.op_type == "Shape":
        return True
    return any(_shape_from_shapes(ctx, x, depth + 1) for x in node.inputs if x and not ctx.graph.is_const(x))


@register("Reshape", kind="layout")
def reshape(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    shape_name = node.inputs[1]
    const = ctx.graph.is_const(shape_name)
    if not const and not _shape_from_shapes(ctx, shape_name):
        ctx.freeze(cmap.ids, f"Reshape target shape is computed from constants ({node.name})")
        return
    if const and int(node.attr("allowzero", 0)) and 0 in ctx.graph.const(shape_name):
        ctx.freeze(cmap.ids, f"Reshape with allowzero and a zero dimension ({node.name})")
        return
    out = follow_reshape(ctx, node, cmap)
    if out is None:
        return
    if const:
        ctx.add_member(Member(node.name, "reshape", shape_name, out.axis, out.ids))
    elif _literal_channel_entry(ctx, node, cmap, out.axis):
        ctx.freeze(cmap.ids, f"Reshape target shape holds the channel count as a constant ({node.name})")
        return
    ctx.set_map(node.outputs[0], out)


def _literal_channel_entry(ctx: RuleContext, node: NodeView, cmap: ChannelMap, axis: int) -> bool:
    """True unless entry `axis` of a computed Reshape shape is known to follow the channel count.

    Exporters write `x.view(x.size(0), -1)` as Concat(batch from Shape, constant [-1]): a -1 (or a 0
    copying the input's channel axis) follows pruning; a literal count in that Concat would not,
    and nothing rewrites it. Shapes not made by a Concat are taken as derived from `Shape`.
    """
    g = ctx.graph
    producer = g.producer.get(node.inputs[1])
    if producer is None or producer.op_type != "Concat":
        return False
    offset = 0
    for name in producer.inputs:
        shape = g.shape(name)
        if shape is None or len(shape) != 1:
            return True
        if offset <= axis < offset + shape[0]:
            value = g.const(name)
            if value is None:
                return False
            entry = int(np.ravel(value)[axis - offset])
            copies = entry == 0 and not int(node.attr("allowzero", 0)) and axis == cmap.axis
            return not (entry == -1 or copies)
        offset += shape[0]
    return True


@register("Flatten", kind="layout")
def flatten(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    out = follow_reshape(ctx, node, cmap)
    if out is not None:
        ctx.set_map(node.outputs[0], out)


def _axes(node: NodeView, ctx: RuleContext) -> tuple[int, ...] | None:
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        value = ctx.graph.const(node.inputs[1])
        return None if value is None else tuple(int(a) for a in np.ravel(value))
    return tuple(axes) if axes is not None else ()


@register("Squeeze", "Unsqueeze", kind="layout")
def squeeze(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    in_shape, out_shape = ctx.graph.shape(node.inputs[0]), ctx.graph.shape(node.outputs[0])
    axes = _axes(node, ctx)
    if axes is None or in_shape is None or out_shape is None:
        ctx.freeze(cmap.ids, f"{node.op_type} with unknown axes or shapes ({node.name})")
        return
    if node.op_type == "Squeeze":
        gone = {norm_axis(a, len(in_shape)) for a in axes} if axes else {
            k for k, d in enumerate(in_shape) if d == 1}
        if cmap.axis in gone:
            ctx.freeze(cmap.ids, f"Squeeze removes the channel axis ({node.name})")
            return
        axis = cmap.axis - sum(1 for a in gone if a < cmap.axis)
    else:
        new = sorted(norm_axis(a, len(out_shape)) for a in axes)
        axis = cmap.axis
        for a in new:
            if a <= axis:
                axis += 1
    ctx.set_map(node.outputs[0], ChannelMap(axis, cmap.ids))


@register("Concat", kind="concat")
def concat(node: NodeView, ctx: RuleContext) -> None:
    """On the channel axis, outputs see the inputs' channels side by side (offsets follow);
    on another axis, the inputs' channels are tied like a residual Add."""
    g = ctx.graph
    maps = [ctx.map(x) for x in node.inputs]
    tracked = [m for m in maps if m is not None]
    if not tracked:
        return
    out_shape = g.shape(node.outputs[0])
    if out_shape is None:
        freeze_inputs(node, ctx, "Concat with unknown output shape")
        return
    cat_axis = norm_axis(int(node.attr("axis")), len(out_shape))
    if all(m.axis == cat_axis for m in tracked):
        parts = []
        for name, m in zip(node.inputs, maps):
            if m is not None:
                parts.append(m.ids)
                continue
            shape = g.shape(name)
            if shape is None:
                freeze_inputs(node, ctx, "Concat input with unknown shape")
                return
            parts.append(ctx.frozen_channels(shape[cat_axis], f"untracked input {name} of Concat {node.name}"))
        ctx.set_map(node.outputs[0], ChannelMap(cat_axis, np.concatenate(parts)))
        return
    axis = tracked[0].axis
    if any(m.axis != axis or len(m) != len(tracked[0]) for m in tracked) or len(tracked) != len(maps):
        freeze_inputs(node, ctx, "Concat of tensors with different channel layouts")
        return
    for m in tracked[1:]:
        ctx.union(tracked[0].ids, m.ids)
    ctx.set_map(node.outputs[0], ChannelMap(axis, tracked[0].ids))


@register("Split", kind="split")
def split(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    g = ctx.graph
    shape = g.shape(node.inputs[0])
    if shape is None:
        ctx.freeze(cmap.ids, f"unknown input shape of {node.name}")
        return
    axis = norm_axis(int(node.attr("axis", 0)), len(shape))
    if axis != cmap.axis:
        for out in node.outputs:
            if out:
                ctx.set_map(out, cmap)
        return
    sizes = [g.shape(o)[axis] if o and g.shape(o) else None for o in node.outputs]
    if any(s is None for s in sizes) or sum(sizes) != len(cmap):  # type: ignore[arg-type]
        ctx.freeze(cmap.ids, f"Split with unknown part sizes ({node.name})")
        return
    if len(node.inputs) > 1 and node.inputs[1] and not g.is_const(node.inputs[1]):
        ctx.freeze(cmap.ids, f"Split sizes are computed ({node.name})")
        return
    ctx.add_member(Member(node.name, "split", "", axis, cmap.ids, tuple(int(s) for s in sizes)))  # type: ignore[arg-type]
    start = 0
    for out, size in zip(node.outputs, sizes):
        if out:
            ctx.set_map(out, ChannelMap(axis, cmap.ids[start:start + size]))
        start += size  # type: ignore[operator]


@register("Slice", kind="slice")
def slice_(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    g = ctx.graph
    shape = g.shape(node.inputs[0])
    values = [g.const(x) if x else None for x in node.inputs[1:5]]
    if shape is None or any(v is None for v, x in zip(values, node.inputs[1:5]) if x):
        ctx.freeze(cmap.ids, f"Slice with computed bounds ({node.name})")
        return
    starts, ends = np.ravel(values[0]), np.ravel(values[1])
    axes = np.ravel(values[2]) if len(values) > 2 and values[2] is not None else np.arange(len(starts))
    steps = np.ravel(values[3]) if len(values) > 3 and values[3] is not None else np.ones(len(starts), int)
    axes = [norm_axis(int(a), len(shape)) for a in axes]
    if cmap.axis not in axes:
        ctx.set_map(node.outputs[0], cmap)
        return
    k = axes.index(cmap.axis)
    if int(steps[k]) != 1:
        ctx.freeze(cmap.ids, f"Slice with step {int(steps[k])} on the channel axis ({node.name})")
        return
    start, stop, _ = slice(int(starts[k]), int(ends[k])).indices(len(cmap))
    stop = max(start, stop)
    ctx.add_member(Member(node.name, "slice", node.inputs[1], k, cmap.ids, (start, stop)))
    ctx.set_map(node.outputs[0], ChannelMap(cmap.axis, cmap.ids[start:stop]))


@register("Gather", kind="layout")
def gather(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        if ctx.map(node.inputs[1]) is not None:
            freeze_inputs(node, ctx, "Gather indexed by channels")
        return
    g = ctx.graph
    shape, idx_shape = g.shape(node.inputs[0]), g.shape(node.inputs[1])
    if shape is None or idx_shape is None:
        ctx.freeze(cmap.ids, f"unknown shapes around {node.name}")
        return
    axis = norm_axis(int(node.attr("axis", 0)), len(shape))
    if axis == cmap.axis:
        ctx.freeze(cmap.ids, f"Gather on the channel axis ({node.name})")
        return
    new_axis = cmap.axis if cmap.axis < axis else cmap.axis - 1 + len(idx_shape)
    ctx.set_map(node.outputs[0], ChannelMap(new_axis, cmap.ids))


@register("Pad", kind="layout")
def pad(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    g = ctx.graph
    shape = g.shape(node.inputs[0])
    pads = node.attr("pads")
    if pads is None and len(node.inputs) > 1:
        pads = g.const(node.inputs[1])
    axes_in = g.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    if pads is None or shape is None or (len(node.inputs) > 3 and node.inputs[3] and axes_in is None):
        ctx.freeze(cmap.ids, f"Pad with computed pads ({node.name})")
        return
    pads = [int(p) for p in np.ravel(pads)]
    axes = [norm_axis(int(a), len(shape)) for a in np.ravel(axes_in)] if axes_in is not None else list(
        range(len(shape)))
    n = len(axes)
    if cmap.axis in axes:
        k = axes.index(cmap.axis)
        if pads[k] != 0 or pads[k + n] != 0:
            ctx.freeze(cmap.ids, f"Pad adds channels ({node.name})")
            return
    ctx.set_map(node.outputs[0], cmap)


@register("Resize", "Upsample", kind="layout")
def resize(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    g = ctx.graph
    in_shape, out_shape = g.shape(node.inputs[0]), g.shape(node.outputs[0])
    has_sizes = node.op_type == "Resize" and len(node.inputs) > 3 and bool(node.inputs[3])
    if in_shape is None or out_shape is None or has_sizes or out_shape[cmap.axis] != len(cmap):
        ctx.freeze(cmap.ids, f"{node.op_type} with explicit sizes or channel scaling ({node.name})")
        return
    ctx.set_map(node.outputs[0], cmap)


@register("Expand", "Tile", kind="layout")
def expand(node: NodeView, ctx: RuleContext) -> None:
    cmap = ctx.map(node.inputs[0])
    if cmap is None:
        return
    g = ctx.graph
    in_shape, out_shape = g.shape(node.inputs[0]), g.shape(node.outputs[0])
    if in_shape is None or out_shape is None:
        ctx.freeze(cmap.ids, f"unknown shapes around {node.name}")
        return
    axis = cmap.axis + len(out_shape) - len(in_shape)
    repeats = node.inputs[1] if len(node.inputs) > 1 else ""
    value = g.const(repeats)
    # The shape/repeats constant must not name the channel count (it would need rewriting);
    # an Expand shape shorter than the output does not reach the channel axis at all.
    entry = axis - (len(out_shape) - np.ravel(value).size) if value is not None else -1
    if value is None or out_shape[axis] != len(cmap) or (entry >= 0 and np.ravel(value)[entry] != 1):
        ctx.freeze(cmap.ids, f"{node.op_type} over the channel axis ({node.name})")
        return
    ctx.set_map(node.outputs[0], ChannelMap(axis, cmap.ids))
