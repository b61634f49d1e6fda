"""The actor-critic of gat-ppo: GAT node embeddings -> per-node action logits and a value.

Actor: for every node, an MLP on (its embedding, the mean embedding of the graph) gives
`width` logits: one per keep level (categorical) or one per block (Bernoulli). A fixed prior
(`prior_levels` / `prior_blocks`, from the global Taylor mask at the budget) is added, so that
untrained samples scatter around that mask; its `strength` is small by default so that the
learned part can move away from it. The ordinal head (levels with a prior, the default) has one
more output per node: a shift, in level units, of the prior's peak, so that one output moves a
group's whole distribution along the ordered levels. Critic: an MLP on the mean embedding (a
value per state).

All weights are independent of the graph (the prior is a buffer, not a weight), so a policy
trained on one model can be loaded for another (`save_policy` / `load_policy`, levels only).
States are evaluated in batches: S states of the same graph form one disjoint graph of S * N
nodes for the encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onnxprune.errors import InputError
from onnxprune.fileio import atomic_write
from onnxprune.methods import GAT_PPO
from onnxprune.search.gat_ppo.encoder import Edges, GATEncoder


def level_centres(fractions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(nodes,) each node's reference keep ratio in level units (0 = the lowest level)."""
    spacing = float(fractions[1] - fractions[0]) if fractions.size > 1 else 1.0
    return ((np.asarray(reference, dtype=np.float64) - float(fractions[0])) / spacing).astype(np.float32)


def prior_levels(fractions: np.ndarray, reference: np.ndarray, strength: float) -> np.ndarray:
    """(nodes, levels) logits `-strength * |f - reference_i| / spacing`: `strength` per level
    away from each node's reference keep ratio."""
    dist = np.abs(np.arange(fractions.size)[None, :] - level_centres(fractions, reference)[:, None])
    return (-strength * dist).astype(np.float32)


def prior_blocks(blocks: tuple[tuple[np.ndarray, ...], ...], width: int, reference: np.ndarray,
                 strength: float) -> np.ndarray:
    """(nodes, width) logits `strength * (2 f - 1)`, f the kept share of each block in the
    `reference` mask (0 for padding)."""
    out = np.zeros((len(blocks), width), dtype=np.float32)
    for i, bs in enumerate(blocks):
        for k, b in enumerate(bs):
            out[i, k] = strength * (2.0 * float(reference[b].mean()) - 1.0)
    return out


class ActorCritic(nn.Module):
    """GAT encoder + per-node action head + value head."""

    def __init__(self, in_dim: int, hidden: int, heads: int, layers: int, backend: str, kind: str,
                 prior: np.ndarray, valid: np.ndarray, centre: np.ndarray | None = None,
                 strength: float = 0.0) -> None:
        super().__init__()
        self.kind = kind
        self.encoder = GATEncoder(in_dim, hidden, heads, layers, backend)
        d = self.encoder.out_dim
        width = prior.shape[1]
        # ordinal head (levels with a prior): one more output per node, the shift of the prior's centre
        self.ordinal = kind == "levels" and centre is not None and strength > 0
        self.strength = float(strength)
        self.actor = nn.Sequential(nn.Linear(2 * d, d), nn.Tanh(), nn.Linear(d, width + int(self.ordinal)))
        self.critic = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
        nn.init.normal_(self.actor[2].weight, std=0.01)  # start at the prior
        nn.init.zeros_(self.actor[2].bias)
        if self.ordinal:
            with torch.no_grad():
                self.actor[2].weight[width].zero_()  # the shift starts at exactly 0
        self.register_buffer("prior", torch.as_tensor(prior))
        self.register_buffer("valid", torch.as_tensor(valid, dtype=torch.bool))
        self.register_buffer("centre", torch.as_tensor(np.zeros(len(prior)) if centre is None else centre,
                                                       dtype=torch.float32))
        self.register_buffer("level_index", torch.arange(width, dtype=torch.float32))
        self._batched: dict[int, Edges] = {}

    def _edges(self, edges: Edges, states: int) -> Edges:
        if states == 1:
            return edges
        if states not in self._batched:
            n = edges.num_nodes
            offset = torch.arange(states, device=edges.device).repeat_interleave(edges.src.numel()) * n
            self._batched[states] = Edges(edges.src.repeat(states) + offset, edges.dst.repeat(states) + offset,
                                          n * states)
        return self._batched[states]

    def forward(self, edges: Edges, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` (S, N, F) -> (logits (S, N, width), values (S,))."""
        s, n, f = x.shape
        z = self.encoder(self._edges(edges, s), x.reshape(s * n, f)).view(s, n, -1)  # (S, N, D)
        pooled = z.mean(1)  # (S, D)
        out = self.actor(torch.cat([z, pooled.unsqueeze(1).expand(-1, n, -1)], dim=-1))
        if self.ordinal:  # the prior's peak moved by the learned shift (level units), plus free logits
            centre = self.centre + out[..., -1]  # (S, N)
            logits = out[..., :-1] - self.strength * (self.level_index - centre.unsqueeze(-1)).abs()
        else:
            logits = out + self.prior
        if self.kind == "levels":
            logits = logits.masked_fill(~self.valid, -1e9)
        return logits, self.critic(pooled).squeeze(-1)

    def log_prob_entropy(self, logits: torch.Tensor, nodes: torch.Tensor,
                         actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per state: log-probability of `actions` summed over the decided `nodes` (S, N) bool,
        and the mean entropy over them. `actions`: (S, N) long (levels) or (S, N, width) float
        (blocks)."""
        if self.kind == "levels":
            dist = torch.distributions.Categorical(logits=logits)
            m = nodes.to(logits.dtype)  # (S, N)
            logp = (dist.log_prob(actions) * m).sum(1)
            ent = (dist.entropy() * m).sum(1) / m.sum(1).clamp(min=1.0)
            return logp, ent
        bern = torch.distributions.Bernoulli(logits=logits)
        m = (self.valid.unsqueeze(0) & nodes.unsqueeze(-1)).to(logits.dtype)  # (S, N, W)
        logp = (bern.log_prob(actions) * m).sum((1, 2))
        ent = (bern.entropy() * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1.0)
        return logp, ent

    def sample(self, logits: torch.Tensor, gen: torch.Generator, greedy: bool = False) -> torch.Tensor:
        """Actions for every node of one state: `logits` (N, width) -> (N,) long or (N, width),
        on the CPU. Drawn there from the CPU generator `gen`, so that a seed gives the same
        actions whichever device the policy runs on."""
        logits = logits.detach().float().cpu()
        if self.kind == "levels":
            if greedy:
                return logits.argmax(-1)
            return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1)
        if greedy:
            return (logits > 0).float()
        return torch.bernoulli(torch.sigmoid(logits), generator=gen)

    def weights(self) -> dict[str, torch.Tensor]:
        """The learned weights (no graph-specific buffers)."""
        return {k: v for k, v in self.state_dict().items() if k not in ("prior", "valid", "centre", "level_index")}


def save_policy(policy: ActorCritic, path: str | Path, meta: dict[str, Any]) -> None:
    """Write the policy's weights as .npz (no pickle) with `meta` (architecture, feature names)."""
    import io

    arrays = {k: v.detach().cpu().numpy() for k, v in policy.weights().items()}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(Path(path), buf.getvalue())


def load_policy(policy: ActorCritic, path: str | Path, meta: dict[str, Any]) -> None:
    """Load weights written by `save_policy`; InputError when the file or its architecture
    (`meta`: hidden, heads, layers, levels, features) does not match."""
    try:
        with np.load(str(path), allow_pickle=False) as data:
            saved_meta = json.loads(bytes(data["__meta__"]).decode())
            arrays = {k: torch.from_numpy(data[k].copy()) for k in data.files if k != "__meta__"}
    except FileNotFoundError:
        raise InputError(f"{GAT_PPO.name}: --policy {path} does not exist") from None
    except Exception as exc:  # not an npz of ours
        raise InputError(f"{GAT_PPO.name}: --policy {path} is not a gat-ppo policy file "
                         f"({type(exc).__name__})") from None
    saved_meta.setdefault("head", "categorical")  # files written before the ordinal head
    for key in ("kind", "hidden", "heads", "layers", "levels", "head", "features"):
        if saved_meta.get(key) != meta.get(key):
            raise InputError(f"{GAT_PPO.name}: --policy {path} was trained with {key}={saved_meta.get(key)!r}, "
                             f"this run uses {meta.get(key)!r}")
    state = policy.state_dict()
    state.update(arrays)
    policy.load_state_dict(state)
