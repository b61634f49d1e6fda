"""Channel-group discovery: run the op rules over the graph, union-find over channel ids.

Every channel a node creates (a Conv's output channel, a graph input's channel...) gets an
integer id. Rules tie ids that must be removed together; the connected components are *units*
(one keep/drop decision each). A *group* is a set of units linked through a producer: the
channels of one Conv, plus everything tied to them (residual Adds, depthwise convs, SE Muls...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np

from onnxprune.errors import UnsupportedModelError
from onnxprune.ir import LayerGraph, NodeView
from onnxprune.ops import ChannelMap, Member, check_layers, kind_of, rule_for


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64,
                           count=len(self.parent))


@dataclass(frozen=True)
class _Source:
    node: str | None  # None: channels of a graph input or of something no rule follows
    ids: np.ndarray


class _Engine:
    """Implements `onnxprune.ops.RuleContext` while walking the graph once."""

    def __init__(self, graph: LayerGraph) -> None:
        self.graph = graph
        self.maps: dict[str, ChannelMap] = {}
        self.uf = _UnionFind()
        self.sources: list[_Source] = []
        self.frozen: list[tuple[np.ndarray, str]] = []
        self.members: list[Member] = []
        self.macs: list[tuple[str, int, np.ndarray | None, np.ndarray | None]] = []

    # --- RuleContext ---------------------------------------------------------------------
    def map(self, tensor: str) -> ChannelMap | None:
        return self.maps.get(tensor)

    def set_map(self, tensor: str, cmap: ChannelMap) -> None:
        self.maps[tensor] = cmap

    def new_channels(self, node: NodeView, count: int) -> np.ndarray:
        ids = self.uf.add(count)
        self.sources.append(_Source(node.name, ids))
        return ids

    def frozen_channels(self, count: int, reason: str) -> np.ndarray:
        ids = self.uf.add(count)
        self.sources.append(_Source(None, ids))
        self.freeze(ids, reason)
        return ids

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.uf.union(x, y)

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        if len(ids):
            self.frozen.append((ids, reason))

    def add_member(self, member: Member) -> None:
        self.members.append(member)

    def add_macs(self, node: NodeView, macs: int, out_ids: np.ndarray | None,
                 in_ids: np.ndarray | None) -> None:
        self.macs.append((node.name, int(macs), out_ids, in_ids))

    # --- the walk --------------------------------------------------------------------------
    def run(self, exclude: Iterable[str]) -> None:
        for node in self.graph.nodes:
            for name in node.subgraph_inputs:  # a consumer no rule can follow: the branch or body
                cmap = self.maps.get(name)
                if cmap is not None:
                    self.freeze(cmap.ids, f"read inside the {node.op_type} {node.name} (subgraph)")
            rule = rule_for(node)
            if rule is not None:
                rule(node, self)
                continue
            touched = [self.maps[x] for x in node.inputs if x in self.maps]
            for cmap in touched:
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                self.freeze(cmap.ids, f"no rule for {op} ({node.name})")
        for out in self.graph.outputs:
            cmap = self.maps.get(out)
            if cmap is not None:
                self.freeze(cmap.ids, f"graph output {out}")
        excluded = set(exclude)
        unknown = excluded - set(self.graph.by_name)
        if unknown:
            from onnxprune.errors import InputError, option

            raise InputError(f"{option('exclude')} names no node: {', '.join(sorted(unknown))}")
        producers = {src.node for src in self.sources}
        for src in self.sources:
            if src.node in excluded:
                self.freeze(src.ids, f"excluded by the user ({src.node})")
        for name in sorted(excluded - producers):
            # A node that only carries channels (depthwise Conv, BatchNormalization...): keep
            # every channel it touches.
            node = self.graph.by_name[name]
            for tensor in node.inputs + node.outputs:
                cmap = self.maps.get(tensor) if tensor else None
                if cmap is not None:
                    self.freeze(cmap.ids, f"excluded by the user ({name})")


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Channels that must be removed together.

    `units` independent keep/drop decisions (global indices `unit_start .. unit_start+units`);
    `channels` is the width of the leading producer, and `channel_units[c]` the unit (local
    index) of its channel c. Usually one channel is one unit; a grouped Conv ties channel j of
    every conv group into one unit.
    """

    id: int
    units: int
    channels: int
    prunable: bool
    reason: str | None
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    unit_start: int
    channel_units: np.ndarray  # (channels,) local unit index per leading-producer channel

    @property
    def unit_slice(self) -> slice:
        return slice(self.unit_start, self.unit_start + self.units)


@dataclass(frozen=True, eq=False)
class ResolvedMember:
    """A rule's `Member` with its positions mapped to global unit indices."""

    member: Member
    units: np.ndarray  # (positions,) global unit index per position


@dataclass(frozen=True, eq=False)
class TensorChannels:
    """The channel map of a tensor in units: `units[i]` is the global unit at position i of `axis`
    (a unit may repeat: after Flatten one channel covers H*W positions)."""

    axis: int
    units: np.ndarray  # (positions,) int64


@dataclass(frozen=True, eq=False)
class GroupSet:
    """The analysis' channel knowledge: groups, members to rewrite, MACs terms, the group of each
    unit and `channel_maps`, the units along the channel axis of every tensor that carries
    channels (by tensor name)."""

    groups: tuple[ChannelGroup, ...]
    members: tuple[ResolvedMember, ...]
    num_units: int
    macs_terms: tuple[tuple[str, int, np.ndarray | None, np.ndarray | None], ...]  # unit arrays
    unit_group: np.ndarray  # (num_units,) group id per unit
    channel_maps: Mapping[str, TensorChannels] = field(default_factory=dict)

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]


def discover_groups(graph: LayerGraph, exclude: Iterable[str] = ()) -> GroupSet:
    """Run every op rule over `graph` and return the channel groups."""
    if not any(kind_of(n) in ("conv", "conv_transpose") for n in graph.nodes):
        raise UnsupportedModelError("the graph has no Conv: onnxprune prunes convolutional networks")
    check_layers(graph)  # weights that disagree with their inputs: the input's fault, said up front
    eng = _Engine(graph)
    eng.run(exclude)
    return _resolve(eng)


def _resolve(eng: _Engine) -> GroupSet:
    roots = eng.uf.roots()  # raw id -> unit component (its root id)
    # Link the units of each source: a group is a connected set of sources and units.
    gf = _UnionFind()
    gf.add(len(roots))
    for src in eng.sources:
        r = roots[src.ids]
        first = int(r[0]) if len(r) else None
        for x in np.unique(r).tolist():
            if first is not None and x != first:
                gf.union(first, x)
    group_root = np.array([gf.find(int(r)) for r in roots], dtype=np.int64)  # raw id -> group key

    reasons: dict[int, str] = {}
    for ids, reason in eng.frozen:
        for key in np.unique(group_root[ids]).tolist():
            reasons.setdefault(key, reason)

    # Order groups by their first source; units by first appearance (leading source first).
    sources_of: dict[int, list[_Source]] = {}
    for src in eng.sources:
        if len(src.ids):
            sources_of.setdefault(int(group_root[src.ids[0]]), []).append(src)
    unit_of_root: dict[int, int] = {}
    groups: list[ChannelGroup] = []
    unit_group: list[int] = []
    producers_of: dict[int, list[str]] = {}
    for key, srcs in sources_of.items():
        gid = len(groups)
        all_roots = np.unique(np.concatenate([roots[s.ids] for s in srcs]))
        lead = next((s for s in srcs if np.unique(roots[s.ids]).size == all_roots.size), srcs[0])
        start = len(unit_of_root)
        for s in [lead] + [s for s in srcs if s is not lead]:
            for r in roots[s.ids].tolist():
                if r not in unit_of_root:
                    unit_of_root[r] = len(unit_of_root)
                    unit_group.append(gid)
        channel_units = np.array([unit_of_root[r] - start for r in roots[lead.ids].tolist()], dtype=np.int64)
        covers = np.unique(roots[lead.ids]).size == all_roots.size
        producers = tuple(dict.fromkeys(s.node for s in srcs if s.node is not None))
        producers_of[gid] = list(producers)
        reason = reasons.get(key)
        if reason is None and not producers:
            reason = "no producer"
        groups.append(ChannelGroup(
            id=gid, units=len(unit_of_root) - start,
            channels=len(lead.ids) if covers else len(unit_of_root) - start,
            prunable=reason is None, reason=reason, producers=producers, consumers=(),
            unit_start=start, channel_units=channel_units,
        ))
    lut = np.full(len(roots), -1, dtype=np.int64)
    for raw, r in enumerate(roots.tolist()):
        lut[raw] = unit_of_root.get(r, -1)
    if (lut < 0).any():  # ids never registered as a source cannot exist
        raise RuntimeError("internal error: channel id without a source")

    members = tuple(ResolvedMember(m, lut[m.ids]) for m in eng.members)
    ug = np.array(unit_group, dtype=np.int64)
    consumers: dict[int, list[str]] = {}
    for rm in members:
        if rm.member.kind == "in":
            for gid in np.unique(ug[rm.units]).tolist():
                consumers.setdefault(gid, [])
                if rm.member.node not in consumers[gid]:
                    consumers[gid].append(rm.member.node)
    groups = [
        ChannelGroup(**{**g.__dict__, "consumers": tuple(consumers.get(g.id, ()))}) for g in groups
    ]
    macs_terms = tuple(
        (name, macs, None if o is None else lut[o], None if i is None else lut[i]) for name, macs, o, i in eng.macs
    )
    channel_maps = MappingProxyType({t: TensorChannels(c.axis, lut[c.ids]) for t, c in eng.maps.items()})
    return GroupSet(tuple(groups), members, len(unit_of_root), macs_terms, ug, channel_maps)
