"""sacp: structure-aware channel pruning by searching with contrastive graph embeddings
(Liu et al., arXiv 2506.11469).

1. The model becomes a layer graph: one node per layer (Conv, Gemm, BatchNormalization, pooling,
   Add, Concat...; element-wise activations are bridged), edges follow the data flow. A node's
   features are the binary keep vector of its output channels (adaptive-average-pooled or
   zero-padded to `feature_len`), its kept fraction, log-width and an op-type one-hot.
2. N random configurations (per-group keep rates) each give a positive, L1-norm pruning at those
   rates, and a negative, random pruning at the same rates. A GCN encoder
   (A_hat = D^-1/2 (A+I) D^-1/2, `layers` layers, mean readout, projection head) is trained with
   InfoNCE. The anchor is the unpruned model's embedding, as in the paper's search step, which
   ranks candidates by cosine similarity to the original model: training and search then use
   the same quantity, cos(z(config), z(unpruned)). For each configuration the positive competes
   with the negatives of the whole mini-batch (same-rate random masks included), so the
   encoder cannot separate them by density alone; it must learn which channels are kept.
   The first layer has node-specific weights (`node_weights`, one `feature_len x hidden` matrix
   per node): channel i of one layer has nothing to do with channel i of another, and with
   weights shared across nodes the binary vectors of L1 and random masks at equal rates are
   indistinguishable. The GCN layers, readout and head are shared as in the paper.
3. Search: M rate combinations, each scaled by bisection into the budget, made into L1 masks,
   embedded in batches and ranked by similarity. The top m are scored by masked evaluation with
   BatchNorm re-calibration on the cheap validation subset (the CPU stand-in for the paper's
   light fine-tune), the best k of those on the whole validation split, optionally after a short
   distillation fine-tune of the pruned ONNX (`k_finetune_epochs`). The best on validation wins.
4. The paper's central claim, that similarity ranks configurations by quality, is measured rather
   than assumed: Spearman and Kendall correlations between similarity and the measured accuracy of
   the evaluated candidates (the top m, and the top m plus `probe` candidates drawn from the
   rest of the ranking) go to the trajectory and the summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from onnxprune.deps import Analysis
from onnxprune.errors import InputError
from onnxprune.search.base import SearchContext, SearchResult, parse_options, progress_bar
from onnxprune.search.budget import Budget, BudgetMeter, make_feasible, mask_key


@dataclass(frozen=True)
class SacpConfig:
    """Options of `--method sacp` (CPU scale; `preset=paper` gives the paper's scale).

    `configs` N training configurations, `candidates` M searched rate combinations, `top_m`
    candidates scored on the cheap subset, `top_k` of those on the whole validation split.
    `epochs`, `lr`, `batch_size`, `temperature`: contrastive training; `negatives` random masks
    per configuration (at its rates). `hidden`, `layers`,
    `proj`: encoder widths and GCN depth. `feature_len`: keep-vector length per node.
    `node_weights`: node-specific first layer (False: the paper's shared weights, an ablation).
    `min_rate`: lowest per-group keep rate sampled. `probe`: extra candidates from the rest of the
    ranking, evaluated only to measure the rank correlation. `k_finetune_epochs` (> 0: KD
    fine-tune of each top-k pruned ONNX, BatchNorm re-estimated first) on `k_finetune_images`
    training images (0: all). `recalibrate_output`: return the winner as a pruned ONNX with its
    BatchNorm statistics re-estimated (what the candidates were scored with) when not fine-tuned.
    `eval_batch`: candidates per evaluation call (a checkpoint after each).
    """

    configs: int = 300
    candidates: int = 3000
    top_m: int = 24
    top_k: int = 3
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    negatives: int = 4
    temperature: float = 0.2
    hidden: int = 64
    layers: int = 2
    proj: int = 32
    feature_len: int = 64
    node_weights: bool = True
    min_rate: float = 0.1
    probe: int = 8
    k_finetune_epochs: int = 0
    k_finetune_images: int = 3000
    recalibrate_output: bool = True
    eval_batch: int = 8

    def __post_init__(self) -> None:
        for name in ("configs", "candidates", "top_m", "top_k", "epochs", "batch_size", "negatives", "hidden", "layers", "proj",
                     "feature_len", "eval_batch"):
            if getattr(self, name) < 1:
                raise InputError(f"sacp: option {name} must be >= 1, got {getattr(self, name)}")
        for name in ("probe", "k_finetune_epochs", "k_finetune_images"):
            if getattr(self, name) < 0:
                raise InputError(f"sacp: option {name} must be >= 0, got {getattr(self, name)}")
        if self.top_k > self.top_m:
            raise InputError(f"sacp: top_k ({self.top_k}) must be <= top_m ({self.top_m})")
        if self.top_m > self.candidates:
            raise InputError(f"sacp: top_m ({self.top_m}) must be <= candidates ({self.candidates})")
        if self.lr <= 0 or self.temperature <= 0:
            raise InputError("sacp: lr and temperature must be > 0")
        if not 0.0 < self.min_rate <= 1.0:
            raise InputError(f"sacp: min_rate must be in (0, 1], got {self.min_rate}")


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "paper": {"configs": 10_000, "candidates": 1_000_000, "top_m": 150, "top_k": 10, "epochs": 100,
              "hidden": 128, "k_finetune_epochs": 1, "k_finetune_images": 0, "eval_batch": 16},
}


def sacp_options(options: dict[str, Any]) -> SacpConfig:
    """The method's config from `--option` values; `preset` picks the base values."""
    opts = dict(options)
    preset = str(opts.pop("preset", "cpu"))
    if preset not in PRESETS:
        raise InputError(f"sacp: unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return parse_options(SacpConfig, opts, "sacp", preset=PRESETS[preset])


# ---------------------------------------------------------------------------------------------
# Layer graph and node features

_SKIP = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu",
         "Softplus", "Gelu", "Mish", "Identity", "Dropout"}
_OP_CLASSES: tuple[frozenset[str], ...] = (
    frozenset({"Conv", "ConvTranspose"}),
    frozenset({"Gemm", "MatMul"}),
    frozenset({"BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"}),
    frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}),
    frozenset({"Add", "Sum", "Sub", "Mul", "Div", "Max", "Min", "Mean"}),
    frozenset({"Concat", "Split", "Slice"}),
)
STATIC_FEATURES = len(_OP_CLASSES) + 2  # op one-hot (+ "other"), log-width


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

    def features(self, keeps: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V, F) pooled keep vectors and (B, V, S+1) kept fraction + static features."""
        k = torch.from_numpy(np.ascontiguousarray(keeps, dtype=np.float32))  # (B, U)
        k = torch.cat([k, torch.zeros(k.shape[0], 1)], dim=1)  # (B, U+1): the padding unit is 0
        x = (k[:, self.index] * self.weight).sum(-1)  # (B, V, F)
        kept = x.sum(-1) * (1.0 / torch.from_numpy(np.minimum(self.channels, self.feature_len)).float())  # (B, V)
        s = torch.cat([kept.unsqueeze(-1), self.static.expand(k.shape[0], -1, -1)], dim=-1)  # (B, V, S+1)
        return x, s


def build_graph(analysis: Analysis, feature_len: int = 64) -> ConfigGraph:
    """The layer graph of `analysis` with each node's output channels as global unit indices.

    A node's output channels come from its `out` member (Conv, Gemm), else its per-channel
    parameters (BatchNormalization), else its inputs (Concat concatenates, other ops pass the
    first tracked input through). Nodes without tracked channels and element-wise activations
    are bridged: their inputs' layers connect to their consumers' layers.
    """
    member_units: dict[str, np.ndarray] = {}
    param_units: dict[str, np.ndarray] = {}
    for rm in analysis.groups.members:
        if rm.member.kind == "out":
            member_units.setdefault(rm.member.node, rm.units)
        elif rm.member.kind == "param":
            param_units.setdefault(rm.member.node, rm.units)
    chan: dict[str, np.ndarray] = {}  # tensor -> (channels,) global unit per channel
    sources: dict[str, set[int]] = {}  # tensor -> graph nodes it comes from
    names: list[str] = []
    ops: list[str] = []
    units_of: list[np.ndarray] = []
    edges: set[tuple[int, int]] = set()
    for node in analysis.graph.nodes:
        units = member_units.get(node.name, param_units.get(node.name))
        ins = [chan[t] for t in node.inputs if t in chan]
        if units is None and ins:
            units = np.concatenate(ins) if node.op_type == "Concat" and len(ins) == sum(
                1 for t in node.inputs if t) else ins[0]
        srcs: set[int] = set().union(*[sources.get(t, set()) for t in node.inputs if t])
        if units is not None and node.outputs:
            chan[node.outputs[0]] = units
        if units is None or node.op_type in _SKIP:
            for out in node.outputs:
                sources[out] = srcs
            continue
        me = len(names)
        names.append(node.name)
        ops.append(node.op_type)
        units_of.append(np.asarray(units, dtype=np.int64))
        edges.update((s, me) for s in srcs)
        for out in node.outputs:
            sources[out] = {me}
    if not names:
        raise InputError("sacp: the model has no layer with tracked channels")
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
    for i, op in enumerate(ops):
        cls = next((c for c, members in enumerate(_OP_CLASSES) if op in members), len(_OP_CLASSES))
        static[i, cls] = 1.0
        static[i, -1] = math.log2(channels[i] + 1) / 10.0
    return ConfigGraph(tuple(names), tuple(ops), channels, tuple(sorted(edges)),
                       torch.from_numpy(a_hat.astype(np.float32)), torch.from_numpy(index),
                       torch.from_numpy(weight), torch.from_numpy(static), analysis.groups.num_units, feature_len)


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
    return torch.cat(outs) if outs else torch.zeros(0, encoder.head[-1].out_features)


def similarity(encoder: GCNEncoder, graph: ConfigGraph, keeps: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each mask's embedding to the embedding of `reference` (the unpruned model)."""
    z = embed(encoder, graph, keeps)
    ref = embed(encoder, graph, reference[None])
    return F.cosine_similarity(z, ref, dim=1).numpy().astype(np.float64)


def info_nce(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with one anchor (P,): positive i (B, P) against its own negatives (B, K, P).

    loss = mean_i -log(exp(c(a, p_i)/t) / (exp(c(a, p_i)/t) + sum_k exp(c(a, n_ik)/t))), c = cosine.
    The negatives of configuration i are random masks at i's rates: a negative from another
    configuration could be nearly unpruned (hence nearly the anchor itself) and would ask the
    encoder for the impossible.
    """
    a = F.normalize(anchor.reshape(-1), dim=0)
    sp = (F.normalize(pos, dim=-1) @ a) / temperature  # (B,)
    sn = (F.normalize(neg, dim=-1) @ a) / temperature  # (B, K)
    logits = torch.cat([sp.unsqueeze(1), sn], dim=1)  # (B, 1+K)
    return F.cross_entropy(logits, torch.zeros(pos.shape[0], dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# Pruning configurations

@dataclass(frozen=True, eq=False)
class UnitTables:
    """Per-unit lookups that turn per-group keep counts into masks in one vectorized step.

    `group` (U,) index into `groups` (-1: not prunable), `rank` (U,) place of the unit in its
    group by descending L1 (0 = most important), `units` (G,) units per group, `floor` (G,)
    least units a group keeps.
    """

    group: np.ndarray
    rank: np.ndarray
    units: np.ndarray
    floor: np.ndarray
    frozen: np.ndarray  # (U,) units with infinite score (always kept)
    scores: np.ndarray

    @classmethod
    def build(cls, analysis: Analysis, scores: np.ndarray, min_rate: float) -> "UnitTables":
        group = np.full(analysis.groups.num_units, -1, dtype=np.int64)
        rank = np.zeros(analysis.groups.num_units, dtype=np.int64)
        prunable = analysis.prunable()
        for gi, g in enumerate(prunable):
            group[g.unit_slice] = gi
            order = np.argsort(-scores[g.unit_slice], kind="stable")
            rank[g.unit_start + order] = np.arange(g.units)
        units = np.array([g.units for g in prunable], dtype=np.int64)
        floor = np.maximum(1, np.ceil(min_rate * units)).astype(np.int64)
        frozen = ~np.isfinite(scores)
        return cls(group, rank, units, floor, frozen, scores)

    def counts(self, rates: np.ndarray) -> np.ndarray:
        """(B, G) kept units for (B, G) keep rates."""
        return np.clip(np.rint(rates * self.units), self.floor, self.units).astype(np.int64)

    def _mask(self, counts: np.ndarray, rank: np.ndarray) -> np.ndarray:
        counts = np.atleast_2d(counts)
        ext = np.concatenate([counts, np.full((counts.shape[0], 1), np.iinfo(np.int64).max)], axis=1)
        return (rank[None, :] < ext[:, self.group]) | self.frozen[None, :]  # (B, U); group -1 -> always kept

    def l1_keep(self, counts: np.ndarray) -> np.ndarray:
        """(B, U) masks keeping the `counts` highest-L1 units of each group."""
        return self._mask(counts, self.rank)

    def random_keep(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(B, U) masks keeping `counts` random units of each group (frozen units first)."""
        counts = np.atleast_2d(counts)
        out = np.empty((counts.shape[0], self.group.size), dtype=bool)
        members = [np.flatnonzero(self.group == gi) for gi in range(self.units.size)]
        for b in range(counts.shape[0]):
            key = rng.random(self.group.size) - 2.0 * self.frozen  # frozen units sort first
            rank = np.empty_like(self.rank)
            for idx in members:
                rank[idx[np.argsort(key[idx], kind="stable")]] = np.arange(idx.size)
            out[b] = self._mask(counts[b], rank)[0]
        return out


def sample_rates(rng: np.random.Generator, count: int, groups: int, min_rate: float) -> np.ndarray:
    """(count, G) random per-group keep rates: a global level times a per-group spread."""
    level = rng.uniform(min_rate, 1.0, size=(count, 1))
    spread = rng.uniform(0.3, 1.7, size=(count, groups))
    return np.clip(level * spread, min_rate, 1.0)


def scale_into_budget(meter: BudgetMeter, tables: UnitTables, analysis: Analysis, shape: np.ndarray,
                      steps: int = 14) -> tuple[np.ndarray, float] | None:
    """The L1 mask of rates `clip(s * shape)` with the largest `s` that meets the budget (bisection;
    the cost grows with `s` since L1 masks are nested), and its budget ratio; None if even the
    smallest allowed rates are over budget."""

    def at(s: float) -> tuple[np.ndarray, float]:
        keep = analysis.repair(tables.l1_keep(tables.counts(np.clip(s * shape, 0.0, 1.0))[None])[0], tables.scores)
        return keep, meter.ratio(keep)

    lo_keep, lo_ratio = at(0.0)
    if lo_ratio > meter.budget.target + 1e-12:
        return None
    hi = 1.0 / max(float(shape.min()), 1e-6)
    hi_keep, hi_ratio = at(hi)
    if hi_ratio <= meter.budget.target + 1e-12:
        return hi_keep, hi_ratio
    lo = 0.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        keep, ratio = at(mid)
        if ratio <= meter.budget.target + 1e-12:
            lo, lo_keep, lo_ratio = mid, keep, ratio
        else:
            hi = mid
    return lo_keep, lo_ratio


# ---------------------------------------------------------------------------------------------
# Rank correlation (numpy; no scipy needed)

def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks; nan if either is constant."""
    rx, ry = _ranks(np.asarray(x)), _ranks(np.asarray(y))
    if rx.size < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either variable handled); nan if either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    iu = np.triu_indices(x.size, k=1)
    dx = np.sign(x[:, None] - x[None, :])[iu]
    dy = np.sign(y[:, None] - y[None, :])[iu]
    n0 = dx.size
    tx, ty = n0 - np.count_nonzero(dx), n0 - np.count_nonzero(dy)
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    return float(np.sum(dx * dy) / denom) if denom > 0 else float("nan")


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


# ---------------------------------------------------------------------------------------------
# Training

def train_encoder(graph: ConfigGraph, tables: UnitTables, reference: np.ndarray, cfg: SacpConfig,
                  rng: np.random.Generator, seed: int,
                  on_epoch: Callable[[int, float], None] | None = None) -> tuple[GCNEncoder, list[float]]:
    """Train the encoder contrastively on `cfg.configs` random configurations.

    Each configuration gives an L1 mask (positive) and a random mask at the same per-group
    counts (negative); `reference` (the unpruned model's mask) is the anchor. Returns the encoder
    and the mean loss per epoch.
    """
    torch.manual_seed(seed)
    encoder = GCNEncoder(len(graph.nodes), graph.feature_len, cfg.hidden, cfg.layers, cfg.proj, cfg.node_weights)
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


# ---------------------------------------------------------------------------------------------
# The search

def _candidate_masks(ctx: SearchContext, tables: UnitTables, cfg: SacpConfig) -> tuple[np.ndarray, np.ndarray]:
    """Up to `cfg.candidates` distinct feasible L1 masks (uniform rates first) and their budget ratios.

    A latency budget is too slow to measure per bisection step: candidates are then scaled into
    the same fraction of MACs, and the evaluated ones are made feasible afterwards.
    """
    meter = ctx.meter
    if ctx.cfg.budget.kind == "latency":
        meter = BudgetMeter(ctx.analysis, Budget("macs", ctx.cfg.budget.target))
    shapes = sample_rates(ctx.rng, cfg.candidates, tables.units.size, cfg.min_rate)
    shapes[0] = 1.0  # uniform rates: the L1 baseline is always a candidate
    keeps, ratios, seen = [], [], set()
    for shape in shapes:
        got = scale_into_budget(meter, tables, ctx.analysis, shape)
        if got is None:
            continue
        key = mask_key(got[0])
        if key in seen:
            continue
        seen.add(key)
        keeps.append(got[0])
        ratios.append(got[1])
    if not keeps:  # out of reach for every shape: finish() raises the budget error
        keep = make_feasible(ctx.meter, ctx.analysis.full_keep(), tables.scores)
        return keep[None], np.array([ctx.meter.ratio(keep)])
    return np.stack(keeps), np.array(ratios)


def recalibrated_model(ctx: SearchContext, keep: np.ndarray) -> tuple[Any, float]:
    """The pruned ONNX of `keep` with BatchNorm statistics re-estimated on training images (as the
    evaluator scores masks), and its top-1 on the whole validation split."""
    from onnxprune.bench import evaluate_onnx
    from onnxprune.rewrite import apply_keep
    from onnxprune.torchcopy import recalibrate_batchnorm

    ev = ctx.cfg.eval
    model, _ = recalibrate_batchnorm(apply_keep(ctx.analysis, keep), ctx.splits.train[0], batches=ev.bn_batches,
                                     batch_size=ev.bn_batch_size, seed=ctx.cfg.seed)
    return model, evaluate_onnx(model, *ctx.splits.val).top1


def run(ctx: SearchContext) -> SearchResult:
    """Train the encoder, rank L1 candidates by similarity to the unpruned model, evaluate the
    top m cheaply and the top k fully; return the best (fine-tuned model when `k_finetune_epochs`)."""
    cfg = sacp_options(dict(ctx.cfg.options))
    analysis, l1 = ctx.analysis, ctx.scores["l1"]
    graph = build_graph(analysis, cfg.feature_len)
    tables = UnitTables.build(analysis, l1, cfg.min_rate)
    full = analysis.full_keep()
    state = ctx.checkpoint.load() or {}
    if state:
        ctx.rng.bit_generator.state = state["rng"]
        ctx.trajectory.records = list(state["records"])

    def save(**extra: Any) -> None:
        state.update(extra, rng=ctx.rng.bit_generator.state, records=list(ctx.trajectory.records))
        ctx.checkpoint.save(state)

    total = cfg.epochs + 1 + cfg.top_m + cfg.probe + cfg.top_k
    fields = {"stage": "", "loss": "loss", "best": "best top-1"}
    with progress_bar("sacp", total, ctx.cfg.progress, fields=fields) as update:
        # 1. contrastive training
        encoder = GCNEncoder(len(graph.nodes), graph.feature_len, cfg.hidden, cfg.layers, cfg.proj, cfg.node_weights)
        if "encoder" in state:
            encoder.load_state_dict(state["encoder"])
            encoder.eval()
            losses = list(state["losses"])
            update(cfg.epochs, stage="train", loss=losses[-1])
        else:
            def on_epoch(epoch: int, loss: float) -> None:
                ctx.trajectory.add(stage="train", epoch=epoch, loss=loss)
                update(1, stage="train", loss=loss)

            ctx.say(f"sacp: training the GCN encoder on {cfg.configs} configurations ({len(graph.nodes)} nodes)")
            encoder, losses = train_encoder(graph, tables, full, cfg, ctx.rng, ctx.cfg.seed, on_epoch)
            save(encoder={k: v.clone() for k, v in encoder.state_dict().items()}, losses=losses)

        # 2. candidates ranked by similarity to the unpruned model
        if "ranked" not in state:
            keeps, ratios = _candidate_masks(ctx, tables, cfg)
            sims = similarity(encoder, graph, keeps, full)
            order = np.argsort(-sims, kind="stable")
            top = order[:cfg.top_m]
            rest = order[cfg.top_m:]
            probes = np.sort(ctx.rng.choice(rest, size=min(cfg.probe, rest.size), replace=False)) if rest.size else rest
            picked = np.concatenate([top, probes]).astype(np.int64)
            place = np.empty_like(order)
            place[order] = np.arange(order.size)
            ranked = [{"rank": int(place[i]), "similarity": float(sims[i]),
                       "budget_ratio": float(ratios[i]), "probe": bool(j >= top.size),
                       "keep": np.packbits(keeps[i])} for j, i in enumerate(picked.tolist())]
            ctx.trajectory.add(stage="rank", candidates=int(len(keeps)), similarity_max=float(sims.max()),
                               similarity_mean=float(sims.mean()), similarity_std=float(sims.std()),
                               uniform_rank=int(place[0]), uniform_similarity=float(sims[0]))
            save(ranked=ranked, candidates=int(len(keeps)), light={}, full={})
        ranked = state["ranked"]
        update(1, stage="rank")
        units = full.size

        def mask(i: int) -> np.ndarray:
            keep = np.unpackbits(ranked[i]["keep"], count=units).astype(bool)
            if not ctx.meter.feasible(keep):  # latency budgets: scaled on MACs, fixed here
                keep = make_feasible(ctx.meter, keep, l1)
            return keep

        # 3. the top m (and the probes) on the cheap validation subset
        light: dict[int, float] = state["light"]
        update(len(light), stage="light")
        todo = [i for i in range(len(ranked)) if i not in light]
        best = max(light.values(), default=float("nan"))
        for start in range(0, len(todo), cfg.eval_batch):
            batch = todo[start:start + cfg.eval_batch]
            masks = [mask(i) for i in batch]
            accs = ctx.evaluator.evaluate(masks)
            for i, keep, acc in zip(batch, masks, accs):
                light[i] = acc
                c = ranked[i]
                ctx.trajectory.add(stage="probe" if c["probe"] else "light", rank=c["rank"],
                                   similarity=c["similarity"], reward=c["similarity"], val_top1=acc,
                                   feasible=ctx.meter.feasible(keep), budget_ratio=ctx.meter.ratio(keep))
            best = max(light.values())
            update(len(batch), stage="light", best=best)
            save(light=light)

        top_ids = [i for i in range(len(ranked)) if not ranked[i]["probe"]]
        sims_m = [ranked[i]["similarity"] for i in top_ids]
        accs_m = [light[i] for i in top_ids]
        corr = {"spearman": spearman(sims_m, accs_m), "kendall": kendall(sims_m, accs_m)}
        all_ids = list(range(len(ranked)))
        if cfg.probe:
            corr["spearman_probe"] = spearman([ranked[i]["similarity"] for i in all_ids], [light[i] for i in all_ids])
            corr["kendall_probe"] = kendall([ranked[i]["similarity"] for i in all_ids], [light[i] for i in all_ids])
        if "correlation" not in state:
            ctx.trajectory.add(stage="correlation", evaluated=len(top_ids), **corr)
            save(correlation=corr)

        # 4. the top k (by cheap accuracy) on the whole validation split, optionally fine-tuned
        finals: dict[int, dict[str, Any]] = state["full"]
        chosen = sorted(top_ids, key=lambda i: (-light[i], ranked[i]["rank"]))[:cfg.top_k]
        update(sum(1 for i in chosen if i in finals), stage="full")
        for i in chosen:
            if i in finals:
                continue
            keep = mask(i)
            acc = ctx.evaluator.evaluate([keep], images=0)[0]
            entry: dict[str, Any] = {"val_top1": acc, "model": None}
            if cfg.k_finetune_epochs > 0:
                from onnxprune.rewrite import apply_keep
                from onnxprune.torchcopy import FinetuneConfig, finetune

                start_model = (recalibrated_model(ctx, keep)[0] if cfg.recalibrate_output
                               else apply_keep(analysis, keep))
                tuned = finetune(start_model, ctx.copy, ctx.splits, FinetuneConfig(
                    epochs=cfg.k_finetune_epochs, max_train=cfg.k_finetune_images or None, seed=ctx.cfg.seed,
                    progress=False, threads=torch.get_num_threads()))
                entry = {"val_top1": tuned.best_val_top1, "masked_val_top1": acc,
                         "model": tuned.model.SerializeToString()}
            finals[i] = entry
            c = ranked[i]
            ctx.trajectory.add(stage="full", rank=c["rank"], similarity=c["similarity"], reward=c["similarity"],
                               val_top1=entry["val_top1"], masked_val_top1=acc, subset_val_top1=light[i],
                               finetuned=entry["model"] is not None, feasible=ctx.meter.feasible(keep),
                               budget_ratio=ctx.meter.ratio(keep))
            update(1, stage="full", best=max(e["val_top1"] for e in finals.values()))
            save(full=finals)

    win = max(chosen, key=lambda i: (finals[i]["val_top1"], -ranked[i]["rank"]))
    model, val_top1, keep = None, finals[win]["val_top1"], mask(win)
    if finals[win]["model"] is not None:
        import onnx

        model = onnx.load_from_string(finals[win]["model"])
    elif cfg.recalibrate_output:
        model, val_top1 = recalibrated_model(ctx, keep)
    return ctx.finish(keep, val_top1=val_top1, model=model, masked_val_top1=finals[win].get(
                          "masked_val_top1", finals[win]["val_top1"]),
                      winner_rank=ranked[win]["rank"], winner_similarity=ranked[win]["similarity"],
                      candidates=state["candidates"], final_loss=losses[-1], first_loss=losses[0],
                      **{k: (None if math.isnan(v) else v) for k, v in corr.items()})
