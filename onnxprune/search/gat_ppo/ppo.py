"""PPO for the block policy: GAE(lambda) returns and the clipped-ratio update."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from onnxprune.search.gat_ppo.encoder import Edges
from onnxprune.search.gat_ppo.policy import ActorCritic


@dataclass(frozen=True, eq=False)
class Transition:
    """One decision step: the state, which nodes it decided, what was sampled and its value."""

    x: torch.Tensor  # (nodes, features)
    nodes: torch.Tensor  # (nodes,) bool: the slice decided at this step
    actions: torch.Tensor  # (nodes, max_blocks) float 0/1
    logp: float
    value: float
    reward: float


def gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """(advantages, returns) of one episode (terminal after the last step)."""
    adv = [0.0] * len(rewards)
    nxt, running = 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * nxt - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
        nxt = values[t]
    return adv, [a + v for a, v in zip(adv, values)]


def ppo_update(policy: ActorCritic, opt: torch.optim.Optimizer, edges: Edges, episodes: list[list[Transition]],
               clip: float, gamma: float, lam: float, entropy_coef: float, value_coef: float, epochs: int,
               max_grad_norm: float = 0.5) -> dict[str, float]:
    """`epochs` full-batch PPO steps over the transitions of `episodes`; returns the last losses."""
    flat: list[Transition] = []
    advs: list[float] = []
    rets: list[float] = []
    for ep in episodes:
        a, r = gae([t.reward for t in ep], [t.value for t in ep], gamma, lam)
        flat.extend(ep)
        advs.extend(a)
        rets.extend(r)
    adv = torch.tensor(advs, dtype=torch.float32)
    if adv.numel() > 1 and float(adv.std()) > 1e-8:
        adv = (adv - adv.mean()) / adv.std()
    ret = torch.tensor(rets, dtype=torch.float32)
    old = torch.tensor([t.logp for t in flat], dtype=torch.float32)
    stats: dict[str, float] = {}
    for _ in range(epochs):
        logps, ents, vals = [], [], []
        for t in flat:
            logits, value = policy(edges, t.x)
            lp, ent = policy.log_prob_entropy(logits, t.nodes, t.actions)
            logps.append(lp)
            ents.append(ent)
            vals.append(value)
        logp, entropy, value = torch.stack(logps), torch.stack(ents), torch.stack(vals)
        ratio = torch.exp(logp - old)
        policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
        value_loss = (value - ret).pow(2).mean()
        loss = policy_loss + value_coef * value_loss - entropy_coef * entropy.mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
        opt.step()
        stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                 "entropy": entropy.mean().item(), "clip_fraction": ((ratio - 1).abs() > clip).float().mean().item()}
    return stats
