"""The layer graph sacp embeds (`ConfigGraph`) and its node features."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from onnxprune.deps import Analysis
from onnxprune.errors import InputError
from onnxprune.search.sacp.config import METHOD

# Op-kind classes of the one-hot node feature (kinds from `onnxprune.ops.OpKind`; others: "other").
_KIND_CLASSES: tuple[frozenset[str], ...] = (
    frozenset({"conv", "conv_transpose"}),
    frozenset({"linear"}),
    frozenset({"norm"}),
    frozenset({"pool"}),
    frozenset({"binary"}),
    frozenset({"concat", "split", "slice"}),
)
STATIC_FEATURES = len(_KIND_CLASSES) + 2  # op one-hot (+ "other"), log-width


@dataclass(frozen=True, eq=False)
class ConfigGraph:
    """The layer graph of a model with a fixed node order.

    `nodes[v]`/`op_types[v]`: ONNX node names and op types; `channels[v]` the width of its output;
    `a_hat` (V, V) the normalized adjacency; `index` (V, F, W) unit index per feature bin and
    pooled position (`num_units` = padding), `weight` (V, F, W) the averaging weights;
    `static` (V, S) op one-hot and log-width.
    """

    nodes: tuple[str, ...]
    op_types: tuple[str, ...]
    channels: np.ndarray
    edges: tuple[tuple[int, int], ...]
    a_hat: torch.Tensor
    index: torch.Tensor
    weight: torch.Tensor
    static: torch.Tensor
    num_units: int
    feature_len: int

    @property
    def device(self) -> torch.device:
        return self.a_hat.device

    def to(self, device: torch.device | str) -> ConfigGraph:
        """This graph with its tensors on `device` (features are then made there too)."""
        return dataclasses.replace(self, a_hat=self.a_hat.to(device), index=self.index.to(device),
                                   weight=self.weight.to(device), static=self.static.to(device))

    def features(self, keeps: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V, F) pooled keep vectors and (B, V, S+1) kept fraction + static features, on the
        graph's device."""
        dev = self.device
        k = torch.from_numpy(np.ascontiguousarray(keeps, dtype=np.float32)).to(dev)  # (B, U)
        k = torch.cat([k, torch.zeros(k.shape[0], 1, device=dev)], dim=1)  # (B, U+1): the padding unit is 0
        x = (k[:, self.index] * self.weight).sum(-1)  # (B, V, F)
        widths = torch.from_numpy(np.minimum(self.channels, self.feature_len)).float().to(dev)
        kept = x.sum(-1) * (1.0 / widths)  # (B, V)
        s = torch.cat([kept.unsqueeze(-1), self.static.expand(k.shape[0], -1, -1)], dim=-1)  # (B, V, S+1)
        return x, s


def build_graph(analysis: Analysis, feature_len: int = 64) -> ConfigGraph:
    """The layer graph of `analysis` (`Analysis.layers`: layers with the units of their output
    channels; activations and nodes without tracked channels bridged), with node features."""
    net = analysis.layers
    names = [layer.node for layer in net.layers]
    ops = [layer.op_type for layer in net.layers]
    units_of = [np.asarray(layer.units, dtype=np.int64) for layer in net.layers]
    edges = net.edges
    if not names:
        raise InputError(f"{METHOD}: the model has no layer with tracked channels")
    v = len(names)
    adj = np.eye(v, dtype=np.float64)
    for a, b in edges:
        adj[a, b] = adj[b, a] = 1.0
    d = 1.0 / np.sqrt(adj.sum(1))
    a_hat = adj * d[:, None] * d[None, :]
    channels = np.array([u.size for u in units_of], dtype=np.int64)
    width = max(1, int(max(math.ceil(c / feature_len) + 1 for c in channels.tolist())))
    index = np.full((v, feature_len, width), analysis.groups.num_units, dtype=np.int64)
    weight = np.zeros((v, feature_len, width), dtype=np.float32)
    for i, units in enumerate(units_of):
        c = units.size
        if c <= feature_len:  # zero-padded
            index[i, :c, 0] = units
            weight[i, :c, 0] = 1.0
            continue
        for j in range(feature_len):  # adaptive average pooling (torch's bin edges)
            lo, hi = (j * c) // feature_len, -((-(j + 1) * c) // feature_len)
            index[i, j, :hi - lo] = units[lo:hi]
            weight[i, j, :hi - lo] = 1.0 / (hi - lo)
    static = np.zeros((v, STATIC_FEATURES), dtype=np.float32)
    for i, layer in enumerate(net.layers):
        cls = next((c for c, kinds in enumerate(_KIND_CLASSES) if layer.kind in kinds), len(_KIND_CLASSES))
        static[i, cls] = 1.0
        static[i, -1] = math.log2(channels[i] + 1) / 10.0
    return ConfigGraph(tuple(names), tuple(ops), channels, tuple(edges),
                       torch.from_numpy(a_hat.astype(np.float32)), torch.from_numpy(index),
                       torch.from_numpy(weight), torch.from_numpy(static), analysis.groups.num_units, feature_len)
