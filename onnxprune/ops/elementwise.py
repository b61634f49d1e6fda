"""Element-wise rules: unary passthrough, broadcasting binary/variadic ops, per-channel constants."""

from __future__ import annotations

from onnxprune.ir import NodeView
from onnxprune.ops.registry import ChannelMap, Member, RuleContext, register

# Activations and identities: channels pass through unchanged (layers bridge them).
ACTIVATIONS = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Gelu", "Identity", "Dropout", "Clip", "Shrink",
)
UNARY = ("Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
         "Cast", "Not", "IsNaN", "IsInf")


@register(*UNARY, kind="unary")
@register(*ACTIVATIONS, kind="activation")
def unary(node: NodeView, ctx: RuleContext) -> None:
    """Channel i of the output is a function of channel i of input 0 only.

    Extra inputs (Clip's min/max, Dropout's ratio) are scalars; anything else freezes.
    """
    cmap = ctx.map(node.inputs[0]) if node.inputs else None
    for extra in node.inputs[1:]:
        if extra and ctx.map(extra) is not None:
            ctx.freeze(ctx.map(extra).ids, f"{node.op_type} with a channel-carrying parameter ({node.name})")
    if cmap is None:
        return
    for extra in node.inputs[1:]:
        shape = ctx.graph.shape(extra) if extra else ()
        if extra and (shape is None or _numel(shape) != 1):
            ctx.freeze(cmap.ids, f"{node.op_type} with a non-scalar parameter ({node.name})")
    ctx.set_map(node.outputs[0], cmap)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


ARITHMETIC = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean")
BROADCAST = ("Pow", "Where", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod",
             "BitShift")


@register(*BROADCAST, kind="elementwise")
@register("PRelu", kind="activation")  # per-channel slope: a broadcast operand
@register(*ARITHMETIC, kind="binary")
def broadcast(node: NodeView, ctx: RuleContext) -> None:
    """Numpy-style broadcasting of several inputs.

    Tracked inputs on the same output axis are tied channel by channel (residual Add, SE Mul);
    a constant with one value per channel becomes a `param` member; a computed, untracked input
    is only allowed when it has size 1 on the channel axis.
    """
    g = ctx.graph
    out = node.outputs[0]
    out_shape = g.shape(out)
    maps = [(i, ctx.map(x)) for i, x in enumerate(node.inputs) if x]
    tracked = [(i, m) for i, m in maps if m is not None]
    if not tracked:
        return
    if out_shape is None:
        for _, m in tracked:
            ctx.freeze(m.ids, f"unknown output shape of {node.name}")
        return
    rank = len(out_shape)
    in_shapes = {i: g.shape(node.inputs[i]) for i, _ in tracked}
    if any(s is None for s in in_shapes.values()):
        for _, m in tracked:
            ctx.freeze(m.ids, f"unknown input shape of {node.name}")
        return
    axes = {i: m.axis + rank - len(in_shapes[i]) for i, m in tracked}  # type: ignore[arg-type]
    # A tracked input with one channel broadcast over many (a spatial-attention map) is not tied to
    # the others; its lone channel cannot be removed.
    narrow = {i for i, m in tracked if len(m) == 1 and out_shape[axes[i]] > 1}
    for i, m in tracked:
        if i in narrow:
            ctx.freeze(m.ids, f"{node.op_type} broadcasts a single channel over {out_shape[axes[i]]} ({node.name})")
    tracked = [(i, m) for i, m in tracked if i not in narrow]
    if not tracked:
        return
    axis = axes[tracked[0][0]]
    size = out_shape[axis]
    ok = all(axes[i] == axis and len(m) == size for i, m in tracked)
    if not ok:
        for _, m in tracked:
            ctx.freeze(m.ids, f"{node.op_type} mixes channels of different layouts ({node.name})")
        return
    ids = tracked[0][1].ids
    for _, m in tracked[1:]:
        ctx.union(ids, m.ids)
    for i, name in enumerate(node.inputs):
        if not name or ctx.map(name) is not None:
            continue
        shape = g.shape(name)
        if shape is None:
            ctx.freeze(ids, f"unknown shape of {name} ({node.name})")
            continue
        pos = axis - (rank - len(shape))
        if pos < 0 or shape[pos] == 1:
            continue  # broadcast along the channel axis: nothing to slice
        if g.is_const(name):
            ctx.add_member(Member(node.name, "param", name, pos, ids))
        else:
            ctx.freeze(ids, f"{node.op_type} with a computed per-channel operand {name} ({node.name})")
    ctx.set_map(out, ChannelMap(axis, ids))
