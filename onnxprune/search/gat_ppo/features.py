"""The state graph of gat-ppo: one node per prunable channel group, with static and dynamic
node features.

Why groups and not layers: a group is what one decision acts on (a residual stream ties several
Conv outputs into one group), so the policy reads one embedding per group and needs no pooling
from layers to groups. The layer structure enters through the edges and the per-group
statistics of the group's producers.

Edges follow the data flow between groups (`Analysis.group_flow`): group A -> group B when a
node that consumes A's channels produces B's (a Conv reading A and writing B). Every node also
gets a self-loop, so that attention always includes the node itself (GATConv needs no zero
in-degree).

Static features (do not change within a search; all float32, scaled to about [0, 1]): layer
kind shares of the producers (`Analysis.producers`: Conv / grouped Conv / ConvTranspose /
Gemm-MatMul / other), log channels, kernel area, stride, log conv groups (means over the
producers with a geometry), MACs share (`Analysis.group_macs`), params share, MACs per channel
(relative to the largest), depth (topological position), sensitivity (proxy drop when this group
alone is thinned, relative to the largest drop; 0 when not measured), importance per unit of
cost (the group's mean unnormalized Taylor estimate divided by its MACs per channel, relative to
the largest; 0 without unnormalized scores), and the spread (coefficient of variation) of the
group's L1 and Taylor scores.

Dynamic features (the episode's state; `DYNAMIC_NAMES`): the kept width of each group (its
decided keep ratio, 1 while undecided), whether it is decided, whether it is being decided now,
and, the same on every node, the MACs the partial candidate keeps (decided groups at their
ratio, the others whole) as a share of the original, how far that still is above the budget
(as a share of what must go), and the episode's progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from onnxprune.deps import Analysis
from onnxprune.ops import LayerKind

OP_KINDS = ("conv", "depthwise", "conv_transpose", "gemm", "other")
# The producer's layer kind (`onnxprune.ops.LayerKind`) behind each op-kind feature (the feature
# names predate the layer kinds: `op_depthwise` counts every Conv with group > 1, `op_gemm` Gemm
# and MatMul).
_OP_KIND: dict[LayerKind, str] = {"conv": "conv", "grouped_conv": "depthwise", "conv_transpose": "conv_transpose",
                            "linear": "gemm", "other": "other"}
STATIC_NAMES = (*(f"op_{k}" for k in OP_KINDS), "log_channels", "kernel", "stride", "log_groups",
                "macs_share", "params_share", "macs_per_channel", "depth", "sensitivity", "impact_per_cost",
                "l1_spread", "taylor_spread")
DYNAMIC_NAMES = ("kept", "decided", "current", "macs_used", "macs_gap", "progress")
FEATURE_NAMES = STATIC_NAMES + DYNAMIC_NAMES
STATIC = len(STATIC_NAMES)


@dataclass(frozen=True, eq=False)
class StateGraph:
    """Prunable groups as a directed graph with node features.

    `group_ids[i]`: the `ChannelGroup.id` of node i. `src`, `dst`: edges (self-loops included),
    as int64 arrays. `static`: (nodes, len(STATIC_NAMES)) float32. `group_macs`: (nodes,) MACs
    that depend on each group.
    """

    group_ids: tuple[int, ...]
    src: np.ndarray
    dst: np.ndarray
    static: np.ndarray
    depth: np.ndarray  # (nodes,) in [0, 1]
    units: np.ndarray  # (nodes,) units per group
    unit_starts: np.ndarray  # (nodes,)
    raw: Mapping[str, np.ndarray] = field(default_factory=dict)  # unscaled per-node values, for reports

    @property
    def num_nodes(self) -> int:
        return len(self.group_ids)

    def keep_ratios(self, keep: np.ndarray) -> np.ndarray:
        """(nodes,) kept share of each group's units."""
        return np.array([keep[s:s + n].mean() for s, n in zip(self.unit_starts, self.units)], dtype=np.float32)

    def features(self, kept: np.ndarray | None = None, decided: np.ndarray | None = None,
                 current: np.ndarray | None = None, macs_used: float = 1.0, macs_gap: float = 1.0,
                 progress: float = 0.0) -> np.ndarray:
        """(nodes, features) float32: the static features plus the given state (defaults: the
        start of an episode, nothing decided, everything kept)."""
        n = self.num_nodes
        dyn = np.zeros((n, len(DYNAMIC_NAMES)), dtype=np.float32)
        dyn[:, 0] = 1.0 if kept is None else kept
        dyn[:, 1] = 0.0 if decided is None else decided
        dyn[:, 2] = 0.0 if current is None else current
        dyn[:, 3] = macs_used
        dyn[:, 4] = np.clip(macs_gap, 0.0, 1.0)
        dyn[:, 5] = progress
        return np.concatenate([self.static, dyn], axis=1)

    def edge_pairs(self, self_loops: bool = True) -> set[tuple[int, int]]:
        return {(int(s), int(d)) for s, d in zip(self.src, self.dst) if self_loops or s != d}


def _spread(values: np.ndarray) -> float:
    """Coefficient of variation of the finite values, clipped to [0, 1]."""
    finite = values[np.isfinite(values)]
    if finite.size < 2 or finite.mean() <= 0:
        return 0.0
    return float(min(finite.std() / finite.mean(), 1.0))


def _relative(values: np.ndarray) -> np.ndarray:
    """`values` divided by their largest magnitude (zeros stay zeros)."""
    top = float(np.max(np.abs(values))) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def build_state_graph(analysis: Analysis, l1: np.ndarray, taylor: np.ndarray,
                      sensitivity: np.ndarray | None = None, impact: np.ndarray | None = None) -> StateGraph:
    """The state graph of `analysis`'s prunable groups (see the module docstring).

    `sensitivity`: (nodes,) proxy drop of each group thinned alone (None: not measured).
    `impact`: (num_units,) unnormalized importance (estimated loss change per unit, comparable
    across groups), or None.
    """
    groups = analysis.prunable()
    graph = analysis.graph
    index = {g.id: i for i, g in enumerate(groups)}
    edges = {(i, i) for i in range(len(groups))}
    edges.update((index[a], index[b]) for a, b in analysis.group_flow if a in index and b in index)
    src, dst = (np.array(v, dtype=np.int64) for v in zip(*sorted(edges)))

    full = analysis.full_keep()
    total_macs, total_params = analysis.cost.cost(full)
    gmacs = analysis.group_macs()
    n_nodes = max(len(graph.nodes) - 1, 1)
    max_units = max((g.units for g in groups), default=1)
    per_channel = np.array([gmacs[g.id] / max(g.units, 1) for g in groups], dtype=np.float64)
    sens = np.zeros(len(groups)) if sensitivity is None else np.maximum(np.asarray(sensitivity, np.float64), 0.0)
    if impact is not None:
        mean_impact = np.array([float(np.mean(np.where(np.isfinite(impact[g.unit_slice]), impact[g.unit_slice], 0.0)))
                                for g in groups])
        per_cost = mean_impact / np.maximum(per_channel, 1.0)
    else:
        per_cost = np.zeros(len(groups))

    rows, depth = [], []
    for i, g in enumerate(groups):
        ops = np.zeros(len(OP_KINDS), dtype=np.float64)
        layers = analysis.producers(g)
        shaped = [f for f in layers if f.kind != "other"]
        kernels = [f.kernel for f in shaped]
        strides = [f.stride for f in shaped]
        conv_groups = [f.groups for f in shaped]
        for f in layers:
            ops[OP_KINDS.index(_OP_KIND[f.kind])] += 1
        ops /= max(ops.sum(), 1)
        empty = full.copy()
        empty[g.unit_slice] = False
        params_share = (total_params - analysis.cost.params(empty)) / max(total_params, 1)
        d = float(np.mean([f.index for f in layers] or [0])) / n_nodes
        depth.append(d)
        rows.append([
            *ops,
            np.log2(g.units + 1) / np.log2(max_units + 1),
            np.log2((float(np.mean(kernels)) if kernels else 1.0) + 1) / np.log2(50.0),  # 3x3 -> 0.59
            min(float(np.mean(strides)) if strides else 1.0, 4.0) / 4.0,
            min(np.log2(float(np.mean(conv_groups)) if conv_groups else 1.0) / 10.0, 1.0),
            gmacs[g.id] / max(total_macs, 1),
            params_share,
            0.0,  # macs_per_channel, filled below
            d,
            0.0,  # sensitivity
            0.0,  # impact_per_cost
            _spread(l1[g.unit_slice]),
            _spread(taylor[g.unit_slice]),
        ])
    static = np.asarray(rows, dtype=np.float64).reshape(len(groups), STATIC)
    static[:, STATIC_NAMES.index("macs_per_channel")] = _relative(per_channel)
    static[:, STATIC_NAMES.index("sensitivity")] = _relative(sens)
    static[:, STATIC_NAMES.index("impact_per_cost")] = _relative(per_cost)
    return StateGraph(
        group_ids=tuple(g.id for g in groups), src=src, dst=dst,
        static=np.clip(static, 0.0, 1.0).astype(np.float32),
        depth=np.asarray(depth, dtype=np.float64),
        units=np.array([g.units for g in groups], dtype=np.int64),
        unit_starts=np.array([g.unit_start for g in groups], dtype=np.int64),
        raw={"sensitivity": sens, "impact_per_cost": per_cost, "macs_per_channel": per_channel},
    )
