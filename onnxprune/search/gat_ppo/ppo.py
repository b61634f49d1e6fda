"""PPO for the gat-ppo policy: advantages (batch baseline or GAE on the critic) and the
clipped-ratio update, per decision step (the ratio of one step covers one slice of groups, not
the whole candidate)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from onnxprune.search.gat_ppo.encoder import Edges
from onnxprune.search.gat_ppo.policy import ActorCritic


@dataclass(frozen=True, eq=False)
class Transition:
    """One decision step: the state, which nodes it decided, what was sampled, its value."""

    x: np.ndarray  # (nodes, features) float32
    nodes: np.ndarray  # (nodes,) bool: the slice decided at this step
    actions: np.ndarray  # (nodes,) int64 levels or (nodes, width) float32 blocks
    logp: float
    value: float


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


def advantages(episodes: list[list[Transition]], returns: list[float], baseline: str, gamma: float,
               lam: float, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(advantage per step, value target per step), flattened over `episodes`.

    `baseline` "batch": every step of an episode gets (return - batch mean) / max(batch std,
    `floor`) (the graded reward's baseline). "critic": GAE(lambda) on the critic's values with the
    return at the last step, normalized over the batch.
    """
    if baseline == "batch":
        r = np.asarray(returns, dtype=np.float64)
        scale = max(float(r.std()), floor) if r.size > 1 else 1.0
        adv = [(ret - float(r.mean())) / scale for ret, ep in zip(returns, episodes) for _ in ep]
        tgt = [ret for ret, ep in zip(returns, episodes) for _ in ep]
        return np.asarray(adv, np.float32), np.asarray(tgt, np.float32)
    advs, tgts = [], []
    for ret, ep in zip(returns, episodes):
        rewards = [0.0] * (len(ep) - 1) + [ret]
        a, t = gae(rewards, [tr.value for tr in ep], gamma, lam)
        advs.extend(a)
        tgts.extend(t)
    adv = np.asarray(advs, np.float32)
    if adv.size > 1 and adv.std() > 1e-8:
        adv = (adv - adv.mean()) / adv.std()
    return adv, np.asarray(tgts, np.float32)


@dataclass(frozen=True, eq=False)
class PpoBatch:
    """The steps of a batch of episodes of one graph, as tensors on the policy's device."""

    x: torch.Tensor  # (S, N, F)
    nodes: torch.Tensor  # (S, N) bool
    actions: torch.Tensor
    old_logp: torch.Tensor  # (S,)
    adv: torch.Tensor  # (S,)
    targets: torch.Tensor  # (S,)

    @classmethod
    def of(cls, edges: Edges, episodes: list[list[Transition]], adv: np.ndarray, targets: np.ndarray) -> PpoBatch:
        flat = [t for ep in episodes for t in ep]
        dev = edges.device  # where the policy runs
        return cls(torch.from_numpy(np.stack([t.x for t in flat])).to(dev),
                   torch.from_numpy(np.stack([t.nodes for t in flat])).to(dev),
                   torch.from_numpy(np.stack([t.actions for t in flat])).to(dev),
                   torch.tensor([t.logp for t in flat], dtype=torch.float32, device=dev),
                   torch.from_numpy(adv).to(dev), torch.from_numpy(targets).to(dev))


def ppo_loss(policy: ActorCritic, edges: Edges, b: PpoBatch, clip: float, entropy_coef: float,
             value_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped PPO loss of one batch (policy + value - entropy bonus) and its parts."""
    logits, value = policy(edges, b.x)
    logp, ent = policy.log_prob_entropy(logits, b.nodes, b.actions)
    ratio = torch.exp(logp - b.old_logp)
    policy_loss = -torch.min(ratio * b.adv, ratio.clamp(1 - clip, 1 + clip) * b.adv).mean()
    value_loss = (value - b.targets).pow(2).mean()
    loss = policy_loss + value_coef * value_loss - entropy_coef * ent.mean()
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": ent.mean(),
                  "clip_fraction": ((ratio - 1).abs() > clip).float().mean()}


def ppo_update(policy: ActorCritic, opt: torch.optim.Optimizer, edges: Edges, episodes: list[list[Transition]],
               adv: np.ndarray, targets: np.ndarray, clip: float, entropy_coef: float, value_coef: float,
               epochs: int, max_grad_norm: float = 0.5) -> dict[str, float]:
    """`epochs` full-batch PPO steps over every step of `episodes`; the last step's losses."""
    b = PpoBatch.of(edges, episodes, adv, targets)
    stats: dict[str, float] = {}
    for _ in range(epochs):
        loss, parts = ppo_loss(policy, edges, b, clip, entropy_coef, value_coef)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
        opt.step()
        stats = {k: v.item() for k, v in parts.items()}
    return stats
