"""The GCN encoder, embeddings of keep masks and their similarity to the unpruned model."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from onnxprune.search.sacp.graph import STATIC_FEATURES, ConfigGraph


class GCNEncoder(nn.Module):
    """Keep-mask features -> graph embedding.

    h0 = ReLU(node-wise channel encoder(x) + W_s s), h_{l+1} = ReLU(A_hat h_l W_l),
    z = head(mean over nodes of h_L). All graphs share one structure, so a batch is a dense
    (B, V, H) tensor and A_hat multiplies every graph at once.
    """

    def __init__(self, nodes: int, feature_len: int, hidden: int = 64, layers: int = 2, proj: int = 32,
                 node_weights: bool = True) -> None:
        super().__init__()
        self.node_weights = node_weights
        if node_weights:
            self.channel = nn.Parameter(torch.randn(nodes, feature_len, hidden) / math.sqrt(feature_len))
        else:
            self.channel_shared = nn.Linear(feature_len, hidden, bias=False)
        self.static = nn.Linear(STATIC_FEATURES + 1, hidden)
        self.gcn = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers + 1))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, proj))

    def forward(self, x: torch.Tensor, s: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:
        """x (B, V, F), s (B, V, S+1), a_hat (V, V) -> (B, P)."""
        if self.node_weights:
            h = torch.einsum("bvf,vfh->bvh", x, self.channel)  # (B, V, H)
        else:
            h = self.channel_shared(x)
        h = F.elu(self.norms[0](h + self.static(s)))
        for lin, norm in zip(self.gcn, self.norms[1:]):
            h = F.elu(norm(torch.matmul(a_hat, lin(h))))  # (B, V, H)
        return self.head(h.mean(dim=1))  # (B, P)


def embed(encoder: GCNEncoder, graph: ConfigGraph, keeps: np.ndarray, chunk: int = 512) -> torch.Tensor:
    """(B, P) embeddings of keep masks (B, U), in batches of `chunk`, without gradients."""
    encoder.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(keeps), chunk):
            x, s = graph.features(keeps[i:i + chunk])
            outs.append(encoder(x, s, graph.a_hat))
    return torch.cat(outs) if outs else torch.zeros(0, encoder.head[-1].out_features, device=graph.device)


def similarity(encoder: GCNEncoder, graph: ConfigGraph, keeps: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each mask's embedding to the embedding of `reference` (the unpruned model)."""
    z = embed(encoder, graph, keeps)
    ref = embed(encoder, graph, reference[None])
    return F.cosine_similarity(z, ref, dim=1).cpu().numpy().astype(np.float64)
