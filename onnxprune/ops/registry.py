"""The channel-rule registry and the vocabulary rules speak.

A *rule* tells, for one ONNX `op_type`, how channels flow from a node's inputs to its outputs:
which tensors carry which channels (`ChannelMap`), which channels must be removed together
(`RuleContext.union`), which initializers, attributes or shape constants the rewrite must slice
(`Member`), and what the node costs. Rules never mutate the graph.

Channels are identified by integer ids handed out by the context; a `ChannelMap` says, for each
position along one axis of a tensor, which channel id sits there (ids may repeat, e.g. after
Flatten one channel covers H*W features).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import numpy as np

from onnxprune.ir import LayerGraph, NodeView

MemberKind = Literal["out", "in", "param", "group_attr", "reshape", "split", "slice"]

#: What an op does to channels, for the layers that later stages build on (`onnxprune.deps.layers`):
#: conv / conv_transpose / linear produce channels; norm and pool work per channel; activation
#: passes them through unchanged (Relu, Identity, Dropout...); unary is other element-wise math;
#: binary is arithmetic between tensors (residual Add...); elementwise other broadcasting ops
#: (comparisons, Where, Pow...); concat / split / slice combine or select channels; reduce and
#: layout (Reshape, Transpose, Pad, Resize...) move or summarize values; shape reads shapes.
OpKind = Literal["conv", "conv_transpose", "linear", "norm", "pool", "activation", "unary", "binary",
                 "elementwise", "concat", "split", "slice", "reduce", "layout", "shape", "other"]


@dataclass(frozen=True, eq=False)
class ChannelMap:
    """Channel ids along `axis` of a tensor: `ids[i]` is the channel at position i."""

    axis: int
    ids: np.ndarray  # (size along axis,) int64

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True, eq=False)
class Member:
    """Something the rewrite must change when channels are removed.

    - `out` / `in` / `param`: slice initializer `tensor` along `axis` (producer weights,
      consumer weights, per-channel constants such as bias or BatchNormalization statistics).
    - `group_attr`: set the `group` attribute of a depthwise Conv to the kept channel count.
    - `reshape`: shape constant `tensor` of a Reshape, entry `axis` covers positions `ids`.
    - `split`: Split of positions `ids` into parts of lengths `parts`.
    - `slice`: Slice keeping positions `[start, end)` of `ids` on entry `axis` of its axes.
    """

    node: str
    kind: MemberKind
    tensor: str
    axis: int
    ids: np.ndarray
    parts: tuple[int, ...] = field(default=())


class RuleContext(Protocol):
    """What a rule may ask of the analysis engine (implemented in `onnxprune.deps`)."""

    graph: LayerGraph

    def map(self, tensor: str) -> ChannelMap | None: ...

    def set_map(self, tensor: str, cmap: ChannelMap) -> None: ...

    def new_channels(self, node: NodeView, count: int) -> np.ndarray: ...

    def frozen_channels(self, count: int, reason: str) -> np.ndarray: ...

    def union(self, a: np.ndarray, b: np.ndarray) -> None: ...

    def freeze(self, ids: np.ndarray, reason: str) -> None: ...

    def add_member(self, member: Member) -> None: ...

    def add_macs(self, node: NodeView, macs: int, out_ids: np.ndarray | None,
                 in_ids: np.ndarray | None) -> None: ...


Rule = Callable[[NodeView, RuleContext], None]

_RULES: dict[str, Rule] = {}
_KINDS: dict[str, OpKind] = {}


def register(*op_types: str, kind: OpKind) -> Callable[[Rule], Rule]:
    """Register `rule` for the given op types (default ONNX domain) as ops of `kind`; twice is an error."""

    def deco(rule: Rule) -> Rule:
        for op in op_types:
            if op in _RULES:
                raise RuntimeError(f"a channel rule for {op} is already registered ({_RULES[op].__name__})")
            _RULES[op] = rule
            _KINDS[op] = kind
        return rule

    return deco


def rule_for(node: NodeView) -> Rule | None:
    """The rule for a node, or None (the engine then freezes every channel the node touches)."""
    if node.domain not in ("", "ai.onnx"):
        return None
    return _RULES.get(node.op_type)


def kind_of(node: NodeView) -> OpKind:
    """The `OpKind` of a node's op ("other" for ops without a rule)."""
    if node.domain not in ("", "ai.onnx"):
        return "other"
    return _KINDS.get(node.op_type, "other")


def registered_ops() -> list[str]:
    return sorted(_RULES)


def freeze_inputs(node: NodeView, ctx: RuleContext, reason: str) -> None:
    """Freeze every channel on the node's inputs (the safe answer for what a rule cannot follow)."""
    for name in node.inputs:
        cmap = ctx.map(name) if name else None
        if cmap is not None:
            ctx.freeze(cmap.ids, f"{reason} ({node.name})")


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
