"""Contrastive pairs among budget-feasible masks, ranked by a cheap proxy (sacp's default training).

The paper's pairs (an L1 mask against random masks at the same rates) teach the encoder to tell
L1 masks from random ones; every search candidate is an L1 mask within the budget, so that
knowledge cannot rank them. Here the training masks are drawn like the candidates (feasible L1
masks of random rate shapes) and scored by a cheap proxy (masked top-1 on a few validation
images). With the unpruned model as the anchor, every mask of a mini-batch is a positive against
the negatives of the whole mini-batch that scored lower by at least `margin`: the encoder learns
what the candidates differ in.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def ranked_info_nce(anchor: torch.Tensor, z: torch.Tensor, proxy: torch.Tensor, temperature: float,
                    margin: float) -> torch.Tensor:
    """InfoNCE with one anchor (P,) over a mini-batch z (B, P) scored by `proxy` (B,).

    loss = mean over i with at least one negative of
        -log(exp(c_i/t) / (exp(c_i/t) + sum_{j: proxy_j < proxy_i - margin} exp(c_j/t))),
    c = cosine similarity to the anchor. 0 when no pair in the batch is `margin` apart.
    """
    a = F.normalize(anchor.reshape(-1), dim=0)
    c = (F.normalize(z, dim=-1) @ a) / temperature  # (B,)
    worse = proxy[None, :] < proxy[:, None] - margin  # (B, B): j is a negative of i
    has = worse.any(dim=1)
    if not bool(has.any()):
        return c.sum() * 0.0
    neg = torch.where(worse, c[None, :].expand_as(worse), torch.full_like(worse, float("-inf"), dtype=c.dtype))
    logits = torch.cat([c[:, None], neg], dim=1)[has]  # (B', 1+B)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def batch_info_nce(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with one anchor (P,): every positive (B, P) against all negatives of the mini-batch
    (N, P), the paper's contrastive loss with in-batch negatives."""
    a = F.normalize(anchor.reshape(-1), dim=0)
    sp = (F.normalize(pos, dim=-1) @ a) / temperature  # (B,)
    sn = (F.normalize(neg, dim=-1) @ a) / temperature  # (N,)
    logits = torch.cat([sp[:, None], sn[None, :].expand(sp.shape[0], -1)], dim=1)  # (B, 1+N)
    return F.cross_entropy(logits, torch.zeros(sp.shape[0], dtype=torch.long, device=logits.device))


def train_ranked(encoder: nn.Module, features: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
                 a_hat: torch.Tensor, keeps: np.ndarray, proxy: np.ndarray, reference: np.ndarray, *,
                 epochs: int, lr: float, batch_size: int, temperature: float, margin: float,
                 rng: np.random.Generator,
                 on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `encoder` in place on masks `keeps` (N, U) with proxy scores `proxy` (N,);
    returns the mean loss per epoch."""
    n = len(keeps)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    steps = epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    scores = torch.as_tensor(np.asarray(proxy, dtype=np.float32), device=a_hat.device)
    losses: list[float] = []
    for epoch in range(epochs):
        encoder.train()
        order = rng.permutation(n)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if idx.size < 2:
                continue
            x, s = features(np.concatenate([reference[None], keeps[idx]]).astype(bool))
            z = encoder(x, s, a_hat)
            loss = ranked_info_nce(z[0], z[1:], scores[idx], temperature, margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.size
            seen += idx.size
        losses.append(total / max(seen, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    encoder.eval()
    return losses
