"""The state graph of gat-ppo: one node per prunable channel group.

Why groups and not layers: a group is what one keep/drop decision acts on (a residual stream
ties several Conv outputs into one group), so the policy reads one embedding per group and
needs no pooling from layers to groups. The layer structure enters through the edges and the
per-group statistics of the group's producers.

Edges follow the data flow of the layer graph: group A -> group B when a node that consumes A's
channels produces B's (a Conv reading A and writing B). Every node also gets a self-loop, so
that attention always includes the node itself (GATConv needs no zero in-degree).

Node features (all float32, scaled to about [0, 1]; `FEATURE_NAMES` lists them):
op type one-hot of the producers (share of Conv / depthwise Conv / ConvTranspose / Gemm-MatMul /
other), log channels, kernel area, stride, log conv groups, MACs share (`Analysis.group_macs`),
params share, depth (normalized topological position of the producers), the current keep
ratio, and the mean / std of the group's L1 and Taylor scores, each normalized by the mean over
all prunable units (clipped to 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.deps import Analysis

OP_KINDS = ("conv", "depthwise", "conv_transpose", "gemm", "other")
FEATURE_NAMES = (*(f"op_{k}" for k in OP_KINDS), "log_channels", "kernel", "stride", "log_groups",
                 "macs_share", "params_share", "depth", "keep_ratio",
                 "l1_mean", "l1_std", "taylor_mean", "taylor_std")
KEEP_RATIO = FEATURE_NAMES.index("keep_ratio")
SCORE_CLIP = 4.0


@dataclass(frozen=True, eq=False)
class StateGraph:
    """Prunable groups as a directed graph with node features.

    `group_ids[i]`: the `ChannelGroup.id` of node i. `src`, `dst`: edges (self-loops included),
    as int64 arrays. `static`: (nodes, features) features that do not depend on the mask; the
    keep-ratio column is filled by `features(keep)`.
    """

    group_ids: tuple[int, ...]
    src: np.ndarray
    dst: np.ndarray
    static: np.ndarray  # (nodes, len(FEATURE_NAMES)) float32
    depth: np.ndarray  # (nodes,) in [0, 1]
    units: np.ndarray  # (nodes,) units per group
    unit_starts: np.ndarray  # (nodes,)

    @property
    def num_nodes(self) -> int:
        return len(self.group_ids)

    def keep_ratios(self, keep: np.ndarray) -> np.ndarray:
        """(nodes,) kept share of each group's units."""
        return np.array([keep[s:s + n].mean() for s, n in zip(self.unit_starts, self.units)], dtype=np.float32)

    def features(self, keep: np.ndarray | None = None, ratios: np.ndarray | None = None) -> np.ndarray:
        """(nodes, features) float32: the static features plus the keep ratio of `keep` (or
        the given per-node `ratios`; all kept when neither is given)."""
        x = self.static.copy()
        if ratios is None:
            ratios = self.keep_ratios(keep) if keep is not None else np.ones(self.num_nodes, np.float32)
        x[:, KEEP_RATIO] = ratios
        return x

    def edge_pairs(self, self_loops: bool = True) -> set[tuple[int, int]]:
        return {(int(s), int(d)) for s, d in zip(self.src, self.dst) if self_loops or s != d}


def _score_stats(values: np.ndarray, scale: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 1.0, 0.0
    normed = np.minimum(finite / scale, SCORE_CLIP) / SCORE_CLIP
    return float(normed.mean()), float(normed.std())


def _global_scale(analysis: Analysis, scores: np.ndarray) -> float:
    parts = [scores[g.unit_slice] for g in analysis.prunable()]
    flat = np.concatenate(parts) if parts else np.zeros(0)
    flat = flat[np.isfinite(flat)]
    mean = float(flat.mean()) if flat.size else 0.0
    return mean if mean > 0 else 1.0


def build_state_graph(analysis: Analysis, l1: np.ndarray, taylor: np.ndarray) -> StateGraph:
    """The state graph of `analysis`'s prunable groups (see the module docstring)."""
    groups = analysis.prunable()
    graph = analysis.graph
    index = {g.id: i for i, g in enumerate(groups)}
    produced_by: dict[str, list[int]] = {}
    for g in groups:
        for p in g.producers:
            produced_by.setdefault(p, []).append(index[g.id])
    edges = {(i, i) for i in range(len(groups))}
    for g in groups:
        for c in g.consumers:
            for j in produced_by.get(c, ()):
                edges.add((index[g.id], j))
    src, dst = (np.array(v, dtype=np.int64) for v in zip(*sorted(edges)))

    full = analysis.full_keep()
    total_macs, total_params = analysis.cost.cost(full)
    macs_share = analysis.group_macs() / max(total_macs, 1)
    position = {n.name: n.index for n in graph.nodes}
    n_nodes = max(len(graph.nodes) - 1, 1)
    max_units = max((g.units for g in groups), default=1)
    l1_scale, taylor_scale = _global_scale(analysis, l1), _global_scale(analysis, taylor)

    rows, depth = [], []
    for g in groups:
        ops = np.zeros(len(OP_KINDS), dtype=np.float64)
        kernels, strides, conv_groups = [], [], []
        for p in g.producers:
            node = graph.by_name.get(p)
            op = node.op_type if node is not None else ""
            if op in ("Conv", "ConvTranspose") and node is not None:
                w = graph.shape(node.inputs[1]) or ()
                kernel = int(np.prod(w[2:])) if len(w) > 2 else 1
                groups_attr = int(node.attr("group", 1))
                kernels.append(kernel)
                strides.append(float(np.mean(node.attr("strides", [1]))))
                conv_groups.append(groups_attr)
                kind = "conv_transpose" if op == "ConvTranspose" else ("depthwise" if groups_attr > 1 else "conv")
            elif op in ("Gemm", "MatMul"):
                kernels.append(1)
                strides.append(1.0)
                conv_groups.append(1)
                kind = "gemm"
            else:
                kind = "other"
            ops[OP_KINDS.index(kind)] += 1
        ops /= max(ops.sum(), 1)
        # params that depend on the group: what removing all of its units would save
        empty = full.copy()
        empty[g.unit_slice] = False
        params_share = (total_params - analysis.cost.params(empty)) / max(total_params, 1)
        d = float(np.mean([position[p] for p in g.producers if p in position] or [0])) / n_nodes
        depth.append(d)
        l1m, l1s = _score_stats(l1[g.unit_slice], l1_scale)
        tm, ts = _score_stats(taylor[g.unit_slice], taylor_scale)
        rows.append([
            *ops,
            np.log2(g.units + 1) / np.log2(max_units + 1),
            np.log2((float(np.mean(kernels)) if kernels else 1.0) + 1) / np.log2(50.0),  # 3x3 -> 0.59
            min(float(np.mean(strides)) if strides else 1.0, 4.0) / 4.0,
            min(np.log2(float(np.mean(conv_groups)) if conv_groups else 1.0) / 10.0, 1.0),
            macs_share[g.id],
            params_share,
            d,
            1.0,
            l1m, l1s, tm, ts,
        ])
    static = np.asarray(rows, dtype=np.float32).reshape(len(groups), len(FEATURE_NAMES))
    return StateGraph(
        group_ids=tuple(g.id for g in groups), src=src, dst=dst, static=np.clip(static, 0.0, 1.0),
        depth=np.asarray(depth, dtype=np.float64),
        units=np.array([g.units for g in groups], dtype=np.int64),
        unit_starts=np.array([g.unit_start for g in groups], dtype=np.int64),
    )
