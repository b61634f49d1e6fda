"""Graph auto-encoder pre-training of the GAT encoder (before the RL, as in the paper).

The encoder embeds the state graph under random episode states (kept widths, decided and
current flags, MACs used); an inner-product decoder
`sigmoid(z_i . z_j)` reconstructs the (undirected) adjacency: binary cross-entropy on the edges
and on as many sampled non-edges (negative sampling) per step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from onnxprune.search.gat_ppo.encoder import Edges, GATEncoder
from onnxprune.search.gat_ppo.features import StateGraph


def pretrain_encoder(encoder: GATEncoder, state: StateGraph, edges: Edges, steps: int, lr: float,
                     rng: np.random.Generator) -> list[float]:
    """Train `encoder` in place for `steps` Adam steps; returns the loss of every step."""
    n = state.num_nodes
    pos = sorted({(min(s, d), max(s, d)) for s, d in state.edge_pairs(self_loops=False)})
    neg = [(i, j) for i in range(n) for j in range(i + 1, n) if (i, j) not in set(pos)]
    if not pos or not neg or steps <= 0:
        return []
    dev = edges.device  # where the encoder runs
    pos_t = torch.as_tensor(pos, dtype=torch.int64, device=dev)  # (P, 2)
    neg_all = torch.as_tensor(neg, dtype=torch.int64, device=dev)  # (Q, 2)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(pos))]).to(dev)
    losses = []
    for _ in range(steps):
        decided = (rng.random(n) < rng.random()).astype(np.float32)
        kept = np.where(decided > 0, rng.uniform(0.1, 1.0, size=n), 1.0).astype(np.float32)
        current = np.zeros(n, np.float32)
        current[rng.integers(0, n)] = 1.0
        used = float(rng.uniform(0.2, 1.0))
        x = torch.from_numpy(state.features(kept, decided, current, used, float(rng.uniform(0.0, 1.0)),
                                            float(decided.mean()))).to(dev)
        pick = torch.from_numpy(rng.integers(0, len(neg), size=len(pos))).to(dev)
        pairs = torch.cat([pos_t, neg_all[pick]])  # (2P, 2)
        z = encoder(edges, x)  # (N, D)
        logits = (z[pairs[:, 0]] * z[pairs[:, 1]]).sum(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
