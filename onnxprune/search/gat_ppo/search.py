"""gat-ppo: a graph attention policy samples binary channel-block masks, trained with PPO under
the self-competition reward of a constrained MDP (arXiv 2509.10526).

One episode = one candidate mask, decided in `steps` slices of the groups (by depth; the keep
ratio features are updated between slices; the reward comes at the last step, earlier steps get
0 and GAE carries it back). Episodes are sampled `batch` at a time: the feasible candidates of a
batch are scored with one `ctx.evaluator.evaluate` call (workers run them in parallel),
infeasible ones cost no evaluation (their reward is the budget penalty). After each batch,
`ppo_epochs` PPO steps. The best `final_top` feasible candidates (on the cheap validation subset)
and the policy's greedy mask are scored on the whole validation split at the end; the best wins.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from onnxprune.errors import InputError
from onnxprune.methods import GAT_PPO, L1
from onnxprune.search.base import SearchContext, SearchResult, parse_options, progress_bar
from onnxprune.search.budget import fill_budget, make_feasible, mask_key
from onnxprune.search.gat_ppo.encoder import BACKENDS, Edges, resolve_backend
from onnxprune.search.gat_ppo.features import FEATURE_NAMES, build_state_graph
from onnxprune.search.gat_ppo.policy import ActorCritic, block_size, build_blocks, calibrate_offset, prior_logits
from onnxprune.search.gat_ppo.ppo import Transition, ppo_update
from onnxprune.search.gat_ppo.pretrain import pretrain_encoder
from onnxprune.search.gat_ppo.reward import SelfCompetitionReward

METHOD = GAT_PPO.name


@dataclass(frozen=True)
class GatPpoConfig:
    """gat-ppo options (CPU-scale defaults; `--preset paper` for paper-scale values).

    episodes: sampled candidates in all; batch: episodes per PPO update; steps: decision steps
    per episode (1: one shot); block / blocks_per_group: channels per block or blocks per group
    (0 and 0: blocks of median-group-size / 8 units); gat_backend: auto | dgl | torch;
    pretrain / pretrain_steps / pretrain_lr: graph auto-encoder pre-training; hidden, heads,
    layers: the GAT (embedding = hidden * heads); lr, clip, gamma, gae_lambda, entropy,
    value_coef, ppo_epochs: PPO; ema: decay of the accuracy average; penalty: budget penalty
    slope; prior: magnitude of the initial block logits from the global Taylor mask (0: none);
    prior_feasible: share of feasible first samples the prior's offset is calibrated to (0: no
    calibration);
    final_top: feasible candidates re-scored on the whole validation split; fill: also re-score
    each of them with the unused budget given back to its most important removed channels.
    """

    episodes: int = 160
    batch: int = 16
    steps: int = 1
    block: int = 0
    blocks_per_group: int = 0
    gat_backend: str = "auto"
    pretrain: bool = True
    pretrain_steps: int = 200
    pretrain_lr: float = 0.01
    hidden: int = 16
    heads: int = 4
    layers: int = 2
    lr: float = 0.003
    clip: float = 0.2
    gamma: float = 0.99
    gae_lambda: float = 0.95
    entropy: float = 0.01
    value_coef: float = 0.5
    ppo_epochs: int = 4
    ema: float = 0.9
    penalty: float = 10.0
    prior: float = 3.0
    prior_feasible: float = 0.7
    final_top: int = 3
    fill: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise InputError(f"{METHOD}: {what}")

        for name in ("episodes", "batch", "steps", "hidden", "heads", "layers", "ppo_epochs", "final_top"):
            need(getattr(self, name) >= 1, f"option {name} must be >= 1, got {getattr(self, name)}")
        need(self.block >= 0 and self.blocks_per_group >= 0, "block and blocks_per_group must be >= 0")
        need(not (self.block > 0 and self.blocks_per_group > 0), "give --block or --blocks-per-group, not both")
        need(self.gat_backend in BACKENDS,
             f"--gat-backend must be one of {', '.join(BACKENDS)}, got {self.gat_backend!r}")
        need(self.pretrain_steps >= 0, f"option pretrain_steps must be >= 0, got {self.pretrain_steps}")
        for name in ("lr", "pretrain_lr", "clip"):
            need(getattr(self, name) > 0, f"option {name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda"):
            need(0 <= getattr(self, name) <= 1, f"option {name} must be in [0, 1], got {getattr(self, name)}")
        need(0 < self.ema < 1, f"option ema must be in (0, 1), got {self.ema}")
        need(0 <= self.prior_feasible < 1, f"option prior_feasible must be in [0, 1), got {self.prior_feasible}")
        for name in ("entropy", "value_coef", "penalty", "prior"):
            need(getattr(self, name) >= 0, f"option {name} must be >= 0, got {getattr(self, name)}")


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "paper": {"episodes": 2000, "batch": 32, "hidden": 64, "heads": 4, "layers": 3, "pretrain_steps": 1000,
              "ppo_epochs": 10, "lr": 0.0003, "final_top": 10},
}


def parse_config(options: dict[str, Any]) -> GatPpoConfig:
    """The options of a run (`preset` picks the base values); one-line InputError when bad."""
    return parse_options(GatPpoConfig, options, METHOD, presets=PRESETS)


class _Search:
    """The state of one gat-ppo search (everything `--resume` needs is in `state()`)."""

    def __init__(self, ctx: SearchContext, cfg: GatPpoConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.backend = resolve_backend(cfg.gat_backend)
        analysis = ctx.analysis
        self.importance = np.asarray(ctx.importance)
        self.graph = build_state_graph(analysis, np.asarray(ctx.scores[L1.name]), self.importance)
        self.edges = Edges.of(self.graph.src, self.graph.dst, self.graph.num_nodes)
        self.layout = build_blocks(self.graph, self.importance, cfg.block, cfg.blocks_per_group)
        reference = make_feasible(ctx.meter, analysis.full_keep(), self.importance)
        prior = prior_logits(self.layout, reference, cfg.prior)
        self.offset = 0.0
        if cfg.prior > 0 and cfg.prior_feasible > 0:
            self.offset = calibrate_offset(self.layout, prior, analysis.full_keep(), self._cheap_budget(reference),
                                           cfg.prior_feasible, np.random.default_rng(ctx.cfg.seed))
            prior = (prior + self.offset * self.layout.valid()).astype(np.float32)
        with torch.random.fork_rng():
            torch.manual_seed(ctx.cfg.seed)
            self.policy = ActorCritic(len(FEATURE_NAMES), cfg.hidden, cfg.heads, cfg.layers, self.backend,
                                      prior, self.layout.valid())
        self.gen = torch.Generator().manual_seed(ctx.cfg.seed)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.reward = SelfCompetitionReward(cfg.ema, cfg.penalty)
        order = np.argsort(self.graph.depth, kind="stable")
        self.slices = [s for s in np.array_split(order, min(cfg.steps, self.graph.num_nodes)) if s.size]
        self.episode = 0
        self.best: list[tuple[float, int, np.ndarray]] = []  # (cheap val top-1, episode, keep)
        self.updates: list[dict[str, float]] = []
        self.pretrain_losses: list[float] = []

    def _cheap_budget(self, reference: np.ndarray) -> Callable[[np.ndarray], bool]:
        """The budget test for calibrating the prior: the meter's own for MACs, params and
        channels; for latency (a measurement per mask) MACs at most those of `reference`."""
        meter, analysis = self.ctx.meter, self.ctx.analysis
        if meter.budget.kind != "latency":
            return lambda keep: meter.feasible(analysis.repair(keep, self.importance))
        limit = analysis.cost.macs(reference)
        return lambda keep: analysis.cost.macs(analysis.repair(keep, self.importance)) <= limit

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "episode": self.episode, "policy": copy.deepcopy(self.policy.state_dict()),
            "optimizer": copy.deepcopy(self.opt.state_dict()), "reward": self.reward.state(),
            "rng": self.ctx.rng.bit_generator.state, "torch_rng": self.gen.get_state(),
            "best": list(self.best), "updates": list(self.updates), "pretrain_losses": list(self.pretrain_losses),
            "records": copy.deepcopy(self.ctx.trajectory.records),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.episode = int(state["episode"])
        self.policy.load_state_dict(state["policy"])
        self.opt.load_state_dict(state["optimizer"])
        self.reward.load(state["reward"])
        self.ctx.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["torch_rng"])
        self.best = list(state["best"])
        self.updates = list(state["updates"])
        self.pretrain_losses = list(state["pretrain_losses"])
        self.ctx.trajectory.records = copy.deepcopy(state["records"])

    # -- episodes ----------------------------------------------------------------------------
    def rollout(self, greedy: bool = False) -> tuple[np.ndarray, list[Transition]]:
        """One episode: a repaired keep mask and its transitions (rewards still 0)."""
        keep = self.ctx.analysis.full_keep()
        n = self.graph.num_nodes
        out: list[Transition] = []
        for part in self.slices:
            x = torch.from_numpy(self.graph.features(keep))
            nodes = torch.zeros(n, dtype=torch.bool)
            nodes[torch.from_numpy(part)] = True
            with torch.no_grad():
                logits, value = self.policy(self.edges, x)
                if greedy:
                    actions = (logits > 0).float()
                else:
                    actions = torch.bernoulli(torch.sigmoid(logits), generator=self.gen)
                logp, _ = self.policy.log_prob_entropy(logits, nodes, actions)
            keep = self.layout.apply(keep, actions.numpy() > 0.5, part)
            out.append(Transition(x, nodes, actions, float(logp), float(value), 0.0))
        return self.ctx.analysis.repair(keep, self.importance), out

    def run_batch(self, size: int) -> dict[str, Any]:
        """Sample `size` episodes, score them, reward them, update the policy."""
        ctx = self.ctx
        episodes = [self.rollout() for _ in range(size)]
        ratios = [ctx.meter.ratio(k) for k, _ in episodes]
        violations = [ctx.meter.violation(k) for k, _ in episodes]
        feasible = [i for i, v in enumerate(violations) if v <= 0]
        accs = dict(zip(feasible, ctx.evaluator.evaluate([episodes[i][0] for i in feasible]))) if feasible else {}
        batch: list[list[Transition]] = []
        rewards = []
        for i, (keep, trans) in enumerate(episodes):
            acc = accs.get(i)
            r = self.reward(violations[i], acc)
            rewards.append(r)
            trans[-1] = dataclasses.replace(trans[-1], reward=r)
            batch.append(trans)
            if acc is not None:
                self.best.append((acc, self.episode, keep))
                self.best.sort(key=lambda b: (-b[0], b[1]))
                del self.best[self.cfg.final_top:]
            ctx.trajectory.add(episode=self.episode, reward=r, feasible=acc is not None, val_top1=acc,
                               budget_ratio=ratios[i], violation=violations[i], ema=self.reward.ema,
                               keep_share=float(keep[self._prunable_units].mean()))
            self.episode += 1
        stats = ppo_update(self.policy, self.opt, self.edges, batch, self.cfg.clip, self.cfg.gamma,
                           self.cfg.gae_lambda, self.cfg.entropy, self.cfg.value_coef, self.cfg.ppo_epochs)
        self.updates.append({"episode": self.episode, "mean_reward": float(np.mean(rewards)),
                             "feasible_share": len(feasible) / size, **stats})
        return self.updates[-1]

    @property
    def _prunable_units(self) -> np.ndarray:
        return np.concatenate([np.arange(s, s + n) for s, n in zip(self.graph.unit_starts, self.graph.units)])

    def finish(self) -> SearchResult:
        ctx = self.ctx
        greedy, _ = self.rollout(greedy=True)
        greedy_feasible = ctx.meter.feasible(greedy)
        greedy = make_feasible(ctx.meter, greedy, self.importance)
        candidates: dict[bytes, np.ndarray] = {}
        for _, _, keep in self.best:
            candidates.setdefault(mask_key(keep), keep)
        candidates.setdefault(mask_key(greedy), greedy)
        if self.cfg.fill:  # blocks leave part of the budget unused: the best units get it
            for keep in list(candidates.values()):
                filled = fill_budget(ctx.meter, keep, self.importance)
                candidates.setdefault(mask_key(filled), filled)
        keeps = list(candidates.values())
        full = ctx.evaluator.evaluate(keeps, images=0)
        pick = int(np.argmax(full))
        feasible_records = [r for r in ctx.trajectory.records if r.get("feasible")]
        block, per_group = block_size(self.graph.units, self.cfg.block, self.cfg.blocks_per_group)
        ctx.trajectory.meta.update(
            gat_backend=self.backend, prior_offset=round(self.offset, 4),
            pretrain_losses=[round(x, 5) for x in self.pretrain_losses],
            updates=self.updates, nodes=self.graph.num_nodes, edges=int(self.graph.src.size),
            blocks=int(self.layout.counts.sum()))
        summary = {
            "gat_backend": self.backend, "episodes": self.episode, "blocks": int(self.layout.counts.sum()),
            "block": block if per_group <= 0 else None, "blocks_per_group": per_group or None,
            "pretrain_loss": _mean_tail(self.pretrain_losses),
            "pretrain_loss_start": round(self.pretrain_losses[0], 5) if self.pretrain_losses else None,
            "feasible_share": len(feasible_records) / max(self.episode, 1), "ema": self.reward.ema,
            "best_subset_val_top1": self.best[0][0] if self.best else None,
            "greedy_feasible": greedy_feasible, "picked": "greedy" if keeps[pick] is greedy else "sampled",
        }
        return ctx.finish(keeps[pick], val_top1=float(full[pick]), **summary)


def _mean_tail(values: list[float], n: int = 10) -> float | None:
    """Mean of the last `n` values (the pre-training loss at the end), None when empty."""
    return round(float(np.mean(values[-n:])), 5) if values else None


def run(ctx: SearchContext) -> SearchResult:
    """Search a keep mask with gat-ppo (see the module docstring)."""
    cfg = parse_config(dict(ctx.cfg.options))
    if not ctx.analysis.prunable():
        raise InputError(f"{METHOD}: the model has no prunable channel group")
    search = _Search(ctx, cfg)
    saved = ctx.checkpoint.load()
    if saved is not None:
        search.load(saved)
    else:
        if cfg.pretrain:
            ctx.say(f"pre-training the GAT encoder ({cfg.pretrain_steps} steps, graph auto-encoder)")
            search.pretrain_losses = pretrain_encoder(search.policy.encoder, search.graph, search.edges,
                                                      cfg.pretrain_steps, cfg.pretrain_lr, ctx.rng)
        ctx.checkpoint.save(search.state())
    fields = {"reward": "reward", "feasible": "feasible", "best": "best top-1"}
    with progress_bar(METHOD, cfg.episodes, ctx.cfg.progress, fields=fields) as update:
        update(search.episode)
        while search.episode < cfg.episodes:
            size = min(cfg.batch, cfg.episodes - search.episode)
            stats = search.run_batch(size)
            best = search.best[0][0] if search.best else "-"
            update(size, reward=stats["mean_reward"], feasible=stats["feasible_share"], best=best)
            ctx.checkpoint.save(search.state())
    return search.finish()
