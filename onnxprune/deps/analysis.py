"""`Analysis`: a model's channel groups and cost model, the input of every later stage."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.deps.cost import CostModel, build_cost_model
from onnxprune.deps.groups import ChannelGroup, GroupSet, TensorChannels, discover_groups
from onnxprune.deps.layers import LayerNet, build_layer_net
from onnxprune.ir import LayerGraph, Shape, build_graph, load_model
from onnxprune.ops import LayerFacts, layer_facts

Masks = Mapping[int, Sequence[int]]  # group id -> kept unit indices (local to the group)


@dataclass(frozen=True, eq=False)
class Analysis:
    graph: LayerGraph
    groups: GroupSet
    cost: CostModel

    @property
    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        return self.groups.groups

    def prunable(self) -> list[ChannelGroup]:
        return self.groups.prunable()

    def full_keep(self) -> np.ndarray:
        return np.ones(self.groups.num_units, dtype=bool)

    def keep_vector(self, masks: Masks) -> np.ndarray:
        """Boolean vector over all units from per-group kept unit indices (others kept)."""
        keep = self.full_keep()
        for gid, kept in masks.items():
            g = self.groups.groups[gid]
            local = np.zeros(g.units, dtype=bool)
            local[np.asarray(kept, dtype=np.int64)] = True
            keep[g.unit_slice] = local
        return keep

    def masks_from_keep(self, keep: np.ndarray) -> dict[int, np.ndarray]:
        """Per-group kept unit indices, for the groups where something is removed."""
        out = {}
        for g in self.groups.groups:
            local = keep[g.unit_slice]
            if not local.all():
                out[g.id] = np.flatnonzero(local)
        return out

    @cached_property
    def layers(self) -> LayerNet:
        """The layer network: layers with their output units and groups, data-flow edges
        (`onnxprune.deps.layers`)."""
        return build_layer_net(self.graph, self.groups)

    def producers(self, group: ChannelGroup) -> tuple[LayerFacts, ...]:
        """What kind of layer each producer of `group` is, with its geometry
        (`onnxprune.ops.layer_facts`), in the group's producer order."""
        return tuple(layer_facts(self.graph.by_name[p], self.graph) for p in group.producers)

    @cached_property
    def group_flow(self) -> tuple[tuple[int, int], ...]:
        """Data flow between groups: `(a, b)` group ids, sorted, when a node that consumes a's
        channels produces b's (a Conv reading a and writing b); `a == b` when a node reads and
        writes one group (a residual block's Conv)."""
        produced: dict[str, list[int]] = {}
        for g in self.groups.groups:
            for p in g.producers:
                produced.setdefault(p, []).append(g.id)
        return tuple(sorted({(g.id, b) for g in self.groups.groups for c in g.consumers for b in produced.get(c, ())}))

    def channels(self, tensor: str) -> TensorChannels | None:
        """The units along `tensor`'s channel axis, or None when it carries no tracked channels."""
        return self.groups.channel_maps.get(tensor)

    @cached_property
    def _segments(self) -> tuple[np.ndarray, np.ndarray]:
        """Every member's positions, concatenated (flat units, start offsets)."""
        parts = [rm.units for rm in self.groups.members if rm.units.size]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lengths = np.array([p.size for p in parts])
        return np.concatenate(parts), np.concatenate([[0], np.cumsum(lengths)[:-1]])

    def empty_members(self, keep: np.ndarray) -> np.ndarray:
        """Indices (into the concatenated member list) of members left with no channel."""
        flat, starts = self._segments
        if flat.size == 0:
            return np.zeros(0, np.int64)
        return np.flatnonzero(np.add.reduceat(keep[flat].astype(np.int64), starts) == 0)

    def repair(self, keep: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
        """Add back units so that no tensor loses all its channels.

        A group keeps at least one unit, but a Split or Slice can hand one consumer a part of
        the group that the mask empties: for each such member, the best-scored unit of the part
        is kept. Adding units never empties another member, so one pass suffices.
        """
        empty = self.empty_members(keep)
        if empty.size == 0:
            return keep
        keep = keep.copy()
        flat, starts = self._segments
        ends = np.append(starts[1:], flat.size)
        for k in empty.tolist():
            units = flat[starts[k]:ends[k]]
            if keep[units].any():
                continue
            best = units[int(np.argmax(scores[units]))] if scores is not None else units[0]
            keep[best] = True
        return keep

    @property
    def macs(self) -> int:
        return self.cost.macs(self.full_keep())

    @property
    def params(self) -> int:
        return self.cost.params(self.full_keep())

    def group_macs(self) -> np.ndarray:
        """MACs that depend on each group (nodes producing or consuming its channels)."""
        out = np.zeros(len(self.groups.groups), dtype=np.int64)
        ug = self.groups.unit_group
        for _, macs, o, i in self.groups.macs_terms:
            touched = set()
            for units in (o, i):
                if units is not None and units.size:
                    touched.update(np.unique(ug[units]).tolist())
            for gid in touched:
                out[gid] += macs
        return out

    def to_json(self, keep: np.ndarray | None = None) -> dict[str, Any]:
        full = self.full_keep()
        macs, params = self.cost.cost(full)
        share = self.group_macs() / max(macs, 1)
        groups = []
        for g in self.groups.groups:
            entry: dict[str, Any] = {
                "id": g.id, "channels": g.channels, "units": g.units, "prunable": g.prunable,
                "reason": g.reason, "producers": list(g.producers), "consumers": list(g.consumers),
                "macs_share": round(float(share[g.id]), 6),
            }
            if keep is not None:
                local = keep[g.unit_slice]
                entry["kept"] = np.flatnonzero(local[g.channel_units]).tolist()
            groups.append(entry)
        prunable_units = sum(g.units for g in self.groups.groups if g.prunable)
        data: dict[str, Any] = {
            "model": self.graph.source,
            "opset": self.graph.opset,
            "macs": macs,
            "params": params,
            "prunable_units": prunable_units,
            "groups": groups,
        }
        if keep is not None:
            after_macs, after_params = self.cost.cost(keep)
            data["after"] = {"macs": after_macs, "params": after_params}
        return data


def analyze(
    src: str | os.PathLike[str] | onnx.ModelProto,
    input_shapes: Mapping[str, Shape] | None = None,
    exclude: Iterable[str] = (),
) -> Analysis:
    """Load, normalize and analyse a model: channel groups plus cost model."""
    graph = build_graph(load_model(src), input_shapes, copy=False)  # the fresh model is handed over
    return analyze_graph(graph, exclude)


def analyze_graph(graph: LayerGraph, exclude: Iterable[str] = ()) -> Analysis:
    groups = discover_groups(graph, exclude)
    return Analysis(graph=graph, groups=groups, cost=build_cost_model(graph, groups))
