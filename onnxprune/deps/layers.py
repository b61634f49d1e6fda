"""The layer network of an analysed model: the nodes that compute on channels, with the units
of their output channels and the data flow between them.

This is the channel knowledge search methods build on (sacp embeds it, gat-ppo can read its
groups' layers from it), so that none of them re-derives channel flow or keeps its own op
lists: units come from the analysis' channel maps (`GroupSet.channel_maps`), op categories
from the op rules (`onnxprune.ops.kind_of`).

A *layer* is a node whose first output carries tracked channels and whose op is not a
pass-through activation (`kind == "activation"`: Relu, Sigmoid, Identity, Dropout...); every
other node is bridged: the layers feeding it connect to the layers it feeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.deps.groups import GroupSet
from onnxprune.ir import LayerGraph
from onnxprune.ops import kind_of


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer: ONNX node name, op type, kind (`onnxprune.ops.OpKind`), the node's topological
    index, `units` (positions,) the global unit at each position of its first output's channel
    axis (`GroupSet.channel_maps`), and `groups` the ids of the groups of those units."""

    node: str
    op_type: str
    kind: str
    index: int
    units: np.ndarray
    groups: tuple[int, ...]

    @property
    def channels(self) -> int:
        return int(self.units.size)


@dataclass(frozen=True, eq=False)
class LayerNet:
    """Layers in topological order and the data-flow edges between them (`(from, to)` layer
    indices, sorted, no self-loops)."""

    layers: tuple[Layer, ...]
    edges: tuple[tuple[int, int], ...]


def build_layer_net(graph: LayerGraph, groups: GroupSet) -> LayerNet:
    """The layer network of `graph` (see the module docstring)."""
    sources: dict[str, set[int]] = {}  # tensor -> layers it comes from
    layers: list[Layer] = []
    edges: set[tuple[int, int]] = set()
    for node in graph.nodes:
        srcs: set[int] = set().union(*[sources.get(t, set()) for t in node.inputs if t])
        cmap = groups.channel_maps.get(node.outputs[0]) if node.outputs else None
        kind = kind_of(node)
        if cmap is None or kind == "activation":
            for out in node.outputs:
                sources[out] = srcs
            continue
        units = cmap.units
        me = len(layers)
        layers.append(Layer(node.name, node.op_type, kind, node.index, units,
                            tuple(int(g) for g in np.unique(groups.unit_group[units]))))
        edges.update((s, me) for s in srcs)
        for out in node.outputs:
            sources[out] = {me}
    return LayerNet(tuple(layers), tuple(sorted(edges)))
