"""Contrastive training of the encoder (InfoNCE against the unpruned model's embedding)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from onnxprune.search.sacp.config import SacpConfig
from onnxprune.search.sacp.encoder import GCNEncoder
from onnxprune.search.sacp.graph import ConfigGraph
from onnxprune.search.sacp.pairs import batch_info_nce
from onnxprune.search.sacp.tables import UnitTables, sample_rates


def info_nce(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with one anchor (P,): positive i (B, P) against its own negatives (B, K, P).

    loss = mean_i -log(exp(c(a, p_i)/t) / (exp(c(a, p_i)/t) + sum_k exp(c(a, n_ik)/t))), c = cosine.
    Used with `batch_negatives=false`; the default, `pairs.batch_info_nce`, lets every positive
    compete with the negatives of the whole mini-batch. A negative from another configuration can
    be nearly unpruned (nearly the anchor itself), which keeps that loss well above 0, but it does
    not cost the L1/random separation (measured in docs/sacp.md).
    """
    a = F.normalize(anchor.reshape(-1), dim=0)
    sp = (F.normalize(pos, dim=-1) @ a) / temperature  # (B,)
    sn = (F.normalize(neg, dim=-1) @ a) / temperature  # (B, K)
    logits = torch.cat([sp.unsqueeze(1), sn], dim=1)  # (B, 1+K)
    return F.cross_entropy(logits, torch.zeros(pos.shape[0], dtype=torch.long, device=logits.device))


def train_encoder(graph: ConfigGraph, tables: UnitTables, reference: np.ndarray, cfg: SacpConfig,
                  rng: np.random.Generator, seed: int,
                  on_epoch: Callable[[int, float], None] | None = None,
                  device: torch.device | str | None = None) -> tuple[GCNEncoder, list[float]]:
    """Train the encoder contrastively on `cfg.configs` random configurations.

    Each configuration gives an L1 mask (positive) and a random mask at the same per-group
    counts (negative); `reference` (the unpruned model's mask) is the anchor. Returns the encoder
    and the mean loss per epoch. The encoder is initialised on the CPU (a seed gives the same
    weights on any device) and trained on `device` (None: the graph's; `ConfigGraph.to` puts the
    graph there).
    """
    torch.manual_seed(seed)
    encoder = GCNEncoder(len(graph.nodes), graph.feature_len, cfg.hidden, cfg.layers, cfg.proj, cfg.node_weights)
    encoder.to(graph.device if device is None else device)
    counts = tables.counts(sample_rates(rng, cfg.configs, tables.units.size, cfg.min_rate))  # (N, G)
    k = cfg.negatives
    positives = np.packbits(tables.l1_keep(counts), axis=1)  # (N, U/8)
    negatives = np.packbits(tables.random_keep(np.repeat(counts, k, axis=0), rng), axis=1)  # (N*K, U/8)
    units = tables.group.size
    opt = torch.optim.Adam(encoder.parameters(), lr=cfg.lr)
    steps = cfg.epochs * -(-cfg.configs // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    ref = reference[None]
    losses: list[float] = []
    for epoch in range(cfg.epochs):
        encoder.train()
        order = rng.permutation(cfg.configs)
        total, seen = 0.0, 0
        for start in range(0, cfg.configs, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if idx.size < 2 and seen:
                continue
            neg_idx = (idx[:, None] * k + np.arange(k)[None, :]).reshape(-1)  # (B*K,)
            keeps = np.concatenate([ref, np.unpackbits(positives[idx], axis=1, count=units),
                                    np.unpackbits(negatives[neg_idx], axis=1, count=units)]).astype(bool)
            x, s = graph.features(keeps)
            z = encoder(x, s, graph.a_hat)  # (1 + B + B*K, P)
            b = idx.size
            if cfg.batch_negatives:
                loss = batch_info_nce(z[0], z[1:1 + b], z[1 + b:], cfg.temperature)
            else:
                loss = info_nce(z[0], z[1:1 + b], z[1 + b:].reshape(b, k, -1), cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * b
            seen += b
        losses.append(total / max(seen, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    encoder.eval()
    return encoder, losses
