"""Binary block actions and the actor-critic network of gat-ppo.

Blocks: each prunable group's units are sorted by Taylor importance, least important first, and
cut into nearly equal blocks (`block` units each, or `blocks_per_group` blocks); block 0 holds
the least important units, so the action "drop block k" for small k removes the least
important channels first, and the policy's block index means the same thing in every group.
Units with an infinite score (frozen) are always kept. A group whose blocks are all dropped
keeps its most important block (at least one block per group).

Policy: the GAT encoder's node embedding of a group -> an MLP -> one Bernoulli logit per block
(up to the largest group's block count; the others are masked), plus a fixed prior logit
(see `prior_logits`) so that the first samples lie near the budget. Value: an MLP on the mean
of the node embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from onnxprune.search.gat_ppo.encoder import Edges, GATEncoder
from onnxprune.search.gat_ppo.features import StateGraph


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """`blocks[i][k]`: global unit indices of block k of node i (block 0 least important)."""

    blocks: tuple[tuple[np.ndarray, ...], ...]
    frozen: np.ndarray  # global unit indices that are always kept

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(b) for b in self.blocks], dtype=np.int64)

    @property
    def max_blocks(self) -> int:
        return int(self.counts.max()) if self.blocks else 1

    def valid(self) -> np.ndarray:
        """(nodes, max_blocks) bool: which logits are real blocks."""
        return np.arange(self.max_blocks)[None, :] < self.counts[:, None]

    def apply(self, keep: np.ndarray, actions: np.ndarray, nodes: np.ndarray | None = None) -> np.ndarray:
        """`keep` with the blocks of `nodes` (default all) set from `actions` (nodes, max_blocks)
        bool; a node with every block dropped keeps its last (most important) block."""
        keep = keep.copy()
        for i in (range(len(self.blocks)) if nodes is None else nodes.tolist()):
            blocks = self.blocks[i]
            chosen = np.asarray(actions[i, :len(blocks)], dtype=bool)
            if not chosen.any():
                chosen = chosen.copy()
                chosen[-1] = True
            for b, on in zip(blocks, chosen.tolist()):
                keep[b] = on
        keep[self.frozen] = True
        return keep

    def fractions(self, keep: np.ndarray) -> np.ndarray:
        """(nodes, max_blocks) kept share of each block's units (0 for padding)."""
        out = np.zeros((len(self.blocks), self.max_blocks), dtype=np.float64)
        for i, blocks in enumerate(self.blocks):
            for k, b in enumerate(blocks):
                out[i, k] = keep[b].mean()
        return out


def block_size(units: np.ndarray, block: int, blocks_per_group: int) -> tuple[int, int]:
    """(block, blocks_per_group) with the automatic choice filled in: neither given -> blocks
    of `median(units) // 8` units (at least 1), so a typical group gets about 8 blocks."""
    if block <= 0 and blocks_per_group <= 0:
        block = max(1, int(np.median(units)) // 8)
    return block, blocks_per_group


def build_blocks(state: StateGraph, importance: np.ndarray, block: int, blocks_per_group: int) -> BlockLayout:
    """Cut each node's units into blocks by ascending `importance` (see the module docstring)."""
    block, blocks_per_group = block_size(state.units, block, blocks_per_group)
    out, frozen = [], []
    for start, n in zip(state.unit_starts.tolist(), state.units.tolist()):
        local = importance[start:start + n].astype(np.float64)
        finite = np.isfinite(local)
        frozen.extend((start + np.flatnonzero(~finite)).tolist())
        order = np.flatnonzero(finite)[np.argsort(local[finite], kind="stable")]
        if order.size == 0:  # nothing to decide: one (kept) block of frozen units
            out.append((start + np.arange(n),))
            continue
        count = min(blocks_per_group, order.size) if blocks_per_group > 0 else -(-order.size // block)
        out.append(tuple(start + part for part in np.array_split(order, max(count, 1))))
    return BlockLayout(tuple(out), np.asarray(frozen, dtype=np.int64))


def prior_logits(layout: BlockLayout, reference: np.ndarray, scale: float) -> np.ndarray:
    """(nodes, max_blocks) logits `scale * (2 f - 1)` where f is the kept share of each block in
    the `reference` mask (the global Taylor ranking at the budget): the first policy samples
    scatter around that mask instead of around keep-half-of-everything."""
    return (scale * (2.0 * layout.fractions(reference) - 1.0) * layout.valid()).astype(np.float32)


def calibrate_offset(layout: BlockLayout, prior: np.ndarray, keep: np.ndarray,
                     within: Callable[[np.ndarray], bool], feasible_share: float, rng: np.random.Generator,
                     samples: int = 64, iterations: int = 14) -> float:
    """A logit offset for every block so that about `feasible_share` of the masks sampled from
    `sigmoid(prior + offset)` pass `within` (the budget test).

    Flipping blocks of a mask at the budget does not keep it at the budget on average (more
    blocks are kept than dropped, and MACs grow with in x out channels), so the prior alone
    would sample mostly too small or too large masks. Common random numbers (`samples` fixed
    draws) make the share monotone in the offset; bisection on [-6, 6].
    """
    valid = layout.valid()
    draws = rng.random((samples, *prior.shape))

    def share(offset: float) -> float:
        p = 1.0 / (1.0 + np.exp(-(prior + offset)))
        return float(np.mean([within(layout.apply(keep, (d < p) & valid)) for d in draws]))

    lo, hi = -6.0, 6.0  # share(lo) high (few blocks kept), share(hi) low
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if share(mid) >= feasible_share:
            lo = mid
        else:
            hi = mid
    return lo


class ActorCritic(nn.Module):
    """GAT encoder + Bernoulli block head + value head."""

    def __init__(self, in_dim: int, hidden: int, heads: int, layers: int, backend: str,
                 prior: np.ndarray, valid: np.ndarray) -> None:
        super().__init__()
        self.encoder = GATEncoder(in_dim, hidden, heads, layers, backend)
        d = self.encoder.out_dim
        max_blocks = prior.shape[1]
        self.actor = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, max_blocks))
        self.critic = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
        nn.init.normal_(self.actor[2].weight, std=0.01)  # start at the prior
        nn.init.zeros_(self.actor[2].bias)
        self.register_buffer("prior", torch.as_tensor(prior))
        self.register_buffer("valid", torch.as_tensor(valid, dtype=torch.bool))

    def forward(self, edges: Edges, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (nodes, max_blocks), value ()) for node features `x` (nodes, features)."""
        z = self.encoder(edges, x)  # (N, D)
        logits = self.actor(z) + self.prior
        value = self.critic(z.mean(0)).squeeze(-1)
        return logits, value

    def distribution(self, logits: torch.Tensor, nodes: torch.Tensor) -> tuple[torch.distributions.Bernoulli, torch.Tensor]:
        """The Bernoulli over the blocks of `nodes` (bool (N,)) and the (N, max_blocks) mask of
        the entries that count."""
        mask = self.valid & nodes.unsqueeze(1)
        return torch.distributions.Bernoulli(logits=logits), mask

    def log_prob_entropy(self, logits: torch.Tensor, nodes: torch.Tensor,
                         actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of `actions` (sum over the counted blocks) and the mean entropy."""
        dist, mask = self.distribution(logits, nodes)
        m = mask.to(logits.dtype)
        logp = (dist.log_prob(actions) * m).sum()
        entropy = (dist.entropy() * m).sum() / m.sum().clamp(min=1.0)
        return logp, entropy
