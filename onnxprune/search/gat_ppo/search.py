"""gat-ppo: a graph attention policy decides per-group keep ratios group by group, trained with
PPO on a graded reward; every candidate is projected exactly onto the budget.

One episode = one candidate (see `env`): the groups are decided in slices (one group per step
by default), the node features re-encoded after each step, the finished candidate projected
onto the budget and scored by `ctx.evaluator` (the proxy: validation top-1 of the masked copy on
a subset, BatchNorm re-estimated). Episodes are sampled `batch` at a time and scored with one
`evaluate` call; then `ppo_epochs` PPO steps. At the end the best `final_top` candidates (by
proxy) and the policy's greedy candidate are scored on the whole validation split; the best wins
(with `finalist_images`: the best after a brief distillation of each, `search.finalists`).

`learner` picks who proposes candidates, everything else equal (controls for the ablation):
`ppo` (the policy, learning), `prior` (the untrained policy: its prior alone, best of N),
`random` (uniform levels / blocks), `cem` (cross-entropy method over independent per-group
level distributions, started at the prior). Controls do not measure the sensitivity feature;
they get its evaluations as extra episodes, so every learner spends the same evaluations.

Trajectory: one record per evaluated candidate (`docs/gat-ppo.md` describes the fields).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from onnxprune.errors import InputError
from onnxprune.methods import GAT_PPO, L1
from onnxprune.search.base import SearchContext, SearchResult, parse_options, progress_bar
from onnxprune.search.budget import make_feasible, mask_key
from onnxprune.search.gat_ppo.encoder import BACKENDS, Edges, resolve_backend
from onnxprune.search.gat_ppo.env import (MIN_KEEP, ActionSpace, Episode, Projector, block_space, kept_count,
                                          level_space)
from onnxprune.search.gat_ppo.features import FEATURE_NAMES, build_state_graph
from onnxprune.search.gat_ppo.policy import (ActorCritic, level_centres, load_policy, prior_blocks, prior_levels,
                                             save_policy)
from onnxprune.search.gat_ppo.ppo import Transition, advantages, ppo_update
from onnxprune.search.gat_ppo.pretrain import pretrain_encoder
from onnxprune.search.gat_ppo.reward import REWARDS, SelfCompetitionReward, amc, graded

METHOD = GAT_PPO.name
LEARNERS = ("ppo", "prior", "random", "cem")
ACTIONS = ("levels", "blocks")
HEADS = ("ordinal", "categorical")
COUNTS = ("episodes", "distinct")


@dataclass(frozen=True)
class GatPpoConfig:
    """gat-ppo options (CPU-scale defaults; `--preset paper` for paper-scale values).

    episodes: the candidate budget; count: what `episodes` counts: `episodes` (every
    sampled candidate, repeats included; a repeat is not re-evaluated) or `distinct` (sample until
    `episodes` distinct candidates are scored, at most `max_factor` times as many samples: equal
    evaluations for learners that repeat themselves and those that do not); batch: episodes per update;
    learner: ppo | prior | random | cem (controls); action: levels | blocks (the seed's binary
    blocks); levels, level_min: keep ratios evenly spaced from level_min to 1; head: ordinal (the
    policy also shifts the prior's peak along the ordered levels, so one output moves a group's
    whole distribution thinner or wider) | categorical (free logits per level only); steps: decision
    steps per episode (0: one group per step; 1: all groups at once, the seed's one shot);
    block / blocks_per_group: blocks (action=blocks); project: project every candidate onto the
    budget (blocks only may turn it off; kept widths are multiples of `--round-to`'s blocks
    when projected); reward: graded |
    amc | self-competition; baseline: batch | critic (empty: batch, critic for self-competition);
    adv_floor: smallest batch std the advantages are divided by; prior: strength of the prior
    from the global Taylor mask (logits per level away / block logit scale); sensitivity:
    measure each group's proxy drop when thinned alone to sensitivity_ratio (a node feature);
    cem_elite, cem_smoothing: CEM; gat_backend, pretrain*, hidden, heads, layers: the GAT;
    lr, clip, gamma, gae_lambda, entropy, value_coef, ppo_epochs: PPO (entropy weighs against
    advantages of unit std: at 0.01 the samples collapsed within five updates, docs/gat-ppo.md);
    ema, penalty: the self-competition reward; proxy_images: validation images each candidate is scored on (at most
    `--eval-images`; 0: `--eval-images`; 128 by default: the cheapest proxy tier with Spearman
    rho >= 0.6 against fine-tuned accuracy, docs/gat-ppo-study.md); final_top: candidates
    re-scored on the whole validation split; finalist_images: > 0 distils each finalist from
    the original on that many training images (one pass, BatchNorm re-estimated first) and picks
    the best by validation top-1 after it (the proxy's second tier; 0: off, the masked score picks);
    policy: a policy file to start from (`policy_out` writes one at the end).
    """

    episodes: int = 160
    count: str = "episodes"
    max_factor: int = 4
    batch: int = 16
    learner: str = "ppo"
    action: str = "levels"
    levels: int = 9
    level_min: float = 0.2
    head: str = "ordinal"
    steps: int = 0
    block: int = 0
    blocks_per_group: int = 0
    project: bool = True
    reward: str = "graded"
    baseline: str = ""
    adv_floor: float = 0.005
    prior: float = 1.0
    sensitivity: bool = True
    sensitivity_ratio: float = 0.5
    cem_elite: float = 0.25
    cem_smoothing: float = 0.7
    gat_backend: str = "auto"
    pretrain: bool = True
    pretrain_steps: int = 200
    pretrain_lr: float = 0.01
    hidden: int = 16
    heads: int = 4
    layers: int = 2
    lr: float = 0.01
    clip: float = 0.2
    gamma: float = 1.0
    gae_lambda: float = 0.95
    entropy: float = 0.2
    value_coef: float = 0.5
    ppo_epochs: int = 8
    ema: float = 0.9
    penalty: float = 10.0
    final_top: int = 3
    finalist_images: int = 0
    proxy_images: int = 128
    policy: str = ""
    policy_out: str = ""

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise InputError(f"{METHOD}: {what}")

        for name in ("episodes", "batch", "hidden", "heads", "layers", "ppo_epochs", "final_top", "max_factor"):
            need(getattr(self, name) >= 1, f"option {name} must be >= 1, got {getattr(self, name)}")
        need(self.finalist_images >= 0, f"option finalist_images must be >= 0, got {self.finalist_images}")
        need(self.levels >= 2, f"option levels must be >= 2, got {self.levels}")
        need(0 < self.level_min < 1, f"option level_min must be in (0, 1), got {self.level_min}")
        need(self.steps >= 0, f"option steps must be >= 0, got {self.steps}")
        need(self.block >= 0 and self.blocks_per_group >= 0, "block and blocks_per_group must be >= 0")
        need(not (self.block > 0 and self.blocks_per_group > 0), "give --block or --blocks-per-group, not both")
        need(self.count in COUNTS, f"option count must be one of {', '.join(COUNTS)}, got {self.count!r}")
        need(self.learner in LEARNERS, f"option learner must be one of {', '.join(LEARNERS)}, got {self.learner!r}")
        need(self.action in ACTIONS, f"option action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        need(self.head in HEADS, f"option head must be one of {', '.join(HEADS)}, got {self.head!r}")
        need(self.reward in REWARDS, f"option reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        need(self.baseline in ("", "batch", "critic"),
             f"option baseline must be batch or critic, got {self.baseline!r}")
        need(self.project or self.action == "blocks", "project=false needs action=blocks (levels are always projected)")
        need(self.project or self.reward == "self-competition",
             "project=false needs reward=self-competition (only it scores over-budget candidates)")
        need(self.gat_backend in BACKENDS,
             f"--gat-backend must be one of {', '.join(BACKENDS)}, got {self.gat_backend!r}")
        need(self.proxy_images >= 0, f"option proxy_images must be >= 0, got {self.proxy_images}")
        need(self.pretrain_steps >= 0, f"option pretrain_steps must be >= 0, got {self.pretrain_steps}")
        for name in ("lr", "pretrain_lr", "clip", "adv_floor"):
            need(getattr(self, name) > 0, f"option {name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda"):
            need(0 <= getattr(self, name) <= 1, f"option {name} must be in [0, 1], got {getattr(self, name)}")
        need(0 < self.ema < 1, f"option ema must be in (0, 1), got {self.ema}")
        need(0 < self.sensitivity_ratio < 1,
             f"option sensitivity_ratio must be in (0, 1), got {self.sensitivity_ratio}")
        need(0 < self.cem_elite <= 1 and 0 < self.cem_smoothing <= 1,
             "options cem_elite and cem_smoothing must be in (0, 1]")
        for name in ("entropy", "value_coef", "penalty", "prior"):
            need(getattr(self, name) >= 0, f"option {name} must be >= 0, got {getattr(self, name)}")
        need(not (self.policy and self.action == "blocks"),
             "--policy needs action=levels (block heads depend on the graph)")

    @property
    def advantage_baseline(self) -> str:
        return self.baseline or ("critic" if self.reward == "self-competition" else "batch")


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "paper": {"episodes": 2000, "batch": 32, "hidden": 64, "heads": 4, "layers": 3, "pretrain_steps": 1000,
              "ppo_epochs": 10, "lr": 0.0003, "final_top": 10},
    # the seed as published: binary blocks in one shot, self-competition reward, no projection
    "seed": {"action": "blocks", "steps": 1, "reward": "self-competition", "project": False, "prior": 3.0,
             "sensitivity": False},
}


def parse_config(options: dict[str, Any]) -> GatPpoConfig:
    """The options of a run (`preset` picks the base values); one-line InputError when bad."""
    return parse_options(GatPpoConfig, options, METHOD, presets=PRESETS)


def impact_scores(ctx: SearchContext) -> np.ndarray | None:
    """Unnormalized Taylor estimates (comparable across groups) for the impact-per-cost feature:
    `ctx.scores["impact"]` when given, else computed on the torch copy (None without data)."""
    if "impact" in ctx.scores:
        return np.asarray(ctx.scores["impact"])
    if ctx.copy is None or ctx.splits is None:
        return None
    from onnxprune.torchcopy.taylor import taylor_scores

    x, y = ctx.splits.train
    return taylor_scores(ctx.copy, ctx.analysis, x, y, seed=ctx.cfg.seed, normalize=False)


def proxy_images(ctx: SearchContext, cfg: GatPpoConfig) -> int | None:
    """Validation images per candidate: `proxy_images`, at most the evaluator's (`--eval-images`);
    None: the evaluator's own."""
    limit = ctx.cfg.eval.images
    if cfg.proxy_images == 0:
        return None
    return cfg.proxy_images if limit is None else min(cfg.proxy_images, limit)


def measure_sensitivity(ctx: SearchContext, projector: Projector, ratio: float,
                        images: int | None = None) -> tuple[np.ndarray, float]:
    """(drop per node, proxy of the unpruned model): the proxy drop when each group alone keeps
    its most important `ratio` of units (one evaluation per group, plus the unpruned model)."""
    graph = projector.graph
    full = ctx.analysis.full_keep()
    masks = [full]
    for i in range(graph.num_nodes):
        ratios = np.ones(graph.num_nodes)
        ratios[i] = ratio
        masks.append(projector.mask(ratios))
    values = ctx.evaluator.evaluate(masks, images=images)
    return np.asarray([values[0] - v for v in values[1:]], dtype=np.float64), float(values[0])


class _Search:
    """The state of one gat-ppo search (everything `--resume` needs is in `state()`)."""

    def __init__(self, ctx: SearchContext, cfg: GatPpoConfig, sensitivity: np.ndarray | None,
                 impact: np.ndarray | None = None) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.backend = resolve_backend(cfg.gat_backend)
        analysis = ctx.analysis
        self.importance = np.asarray(ctx.importance)
        self.sensitivity = sensitivity
        self.graph = build_state_graph(analysis, np.asarray(ctx.scores[L1.name]), self.importance, sensitivity, impact)
        self.device = ctx.device  # the policy's device (`--device`); actions are drawn on the CPU
        self.edges = Edges.of(self.graph.src, self.graph.dst, self.graph.num_nodes, self.device)
        multiples = ctx.multiples()
        self.projector = Projector(analysis, ctx.meter, self.graph, self.importance,
                                   [multiples.get(g, 1) for g in self.graph.group_ids], MIN_KEEP)
        if cfg.action == "levels":
            self.space: ActionSpace = level_space(cfg.levels, cfg.level_min)
        else:
            self.space = block_space(self.graph, self.importance, cfg.block, cfg.blocks_per_group)
        self.reference = make_feasible(ctx.meter, analysis.full_keep(), self.importance)  # global Taylor mask
        centre = None
        if cfg.action == "levels":
            reference_ratios = self.graph.keep_ratios(self.reference)
            prior = prior_levels(self.space.fractions, reference_ratios, cfg.prior)
            if cfg.head == "ordinal":
                centre = level_centres(self.space.fractions, reference_ratios)
        else:
            prior = prior_blocks(self.space.blocks, self.space.width, self.reference, cfg.prior)
        valid = self.space.valid(self.graph.num_nodes)
        with torch.random.fork_rng():
            torch.manual_seed(ctx.cfg.seed)
            self.policy = ActorCritic(len(FEATURE_NAMES), cfg.hidden, cfg.heads, cfg.layers, self.backend,
                                      cfg.action, prior, valid, centre, cfg.prior)
        self.policy.to(self.device)  # initialised on the CPU: a seed gives the same weights on any device
        if cfg.policy:
            load_policy(self.policy, cfg.policy, self.policy_meta())
        self.gen = torch.Generator().manual_seed(ctx.cfg.seed)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.reward = SelfCompetitionReward(cfg.ema, cfg.penalty)
        order = np.argsort(self.graph.depth, kind="stable")
        n_steps = self.graph.num_nodes if cfg.steps == 0 else min(cfg.steps, self.graph.num_nodes)
        self.slices = [s for s in np.array_split(order, n_steps) if s.size]
        # CEM: independent per-node distributions, started at the prior
        if cfg.action == "levels":
            p = np.exp(prior - prior.max(1, keepdims=True))
            self.cem = p / p.sum(1, keepdims=True)
        else:
            self.cem = np.where(valid, 1.0 / (1.0 + np.exp(-prior)), 0.0)
        self.episode = 0
        self.update = 0
        self.seen: set[bytes] = set()  # the distinct candidates scored so far
        self.best: list[tuple[float, int, np.ndarray]] = []  # (proxy, episode, keep)
        self.updates: list[dict[str, float]] = []
        self.pretrain_losses: list[float] = []

    def policy_meta(self) -> dict[str, Any]:
        c = self.cfg
        return {"kind": c.action, "hidden": c.hidden, "heads": c.heads, "layers": c.layers, "levels": c.levels,
                "head": "ordinal" if self.policy.ordinal else "categorical", "features": list(FEATURE_NAMES)}

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "episode": self.episode, "update": self.update, "policy": copy.deepcopy(self.policy.state_dict()),
            "optimizer": copy.deepcopy(self.opt.state_dict()), "reward": self.reward.state(),
            "rng": self.ctx.rng.bit_generator.state, "torch_rng": self.gen.get_state(), "cem": self.cem.copy(),
            "best": list(self.best), "updates": list(self.updates), "pretrain_losses": list(self.pretrain_losses),
            "records": copy.deepcopy(self.ctx.trajectory.records), "sensitivity": self.sensitivity,
            "seen": _key_rows(self.seen),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.episode, self.update = int(state["episode"]), int(state["update"])
        try:
            self.policy.load_state_dict(state["policy"])
        except RuntimeError:  # e.g. a checkpoint of the categorical head, written before session 11
            raise InputError(f"--resume: the checkpoint's {METHOD} policy does not fit this version's "
                             f"(head={self.cfg.head}): it was written by another version; run again without --resume") from None
        self.opt.load_state_dict(state["optimizer"])
        self.reward.load(state["reward"])
        self.ctx.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["torch_rng"])
        self.cem = np.asarray(state["cem"])
        self.best = list(state["best"])
        self.updates = list(state["updates"])
        self.pretrain_losses = list(state["pretrain_losses"])
        self.seen = {row.tobytes() for row in state.get("seen", ())}
        self.ctx.trajectory.records = copy.deepcopy(state["records"])

    # -- episodes ----------------------------------------------------------------------------
    def new_episode(self) -> Episode:
        return Episode(self.graph, self.space, self.projector, self.slices, self.ctx.meter.budget.target)

    def rollout(self, greedy: bool = False) -> tuple[np.ndarray, float, list[Transition], Episode]:
        """One episode of the current learner: (candidate, projection factor, transitions, episode)."""
        ep = self.new_episode()
        out: list[Transition] = []
        learner = self.cfg.learner
        n = self.graph.num_nodes
        while not ep.done:
            nodes = np.zeros(n, dtype=bool)
            nodes[self.slices[ep.step]] = True
            if learner in ("ppo", "prior"):
                x = ep.features()
                with torch.no_grad():
                    logits, value = self.policy(self.edges, torch.from_numpy(x)[None].to(self.device))
                    actions = self.policy.sample(logits[0], self.gen, greedy)  # on the CPU
                    logp, _ = self.policy.log_prob_entropy(logits, torch.from_numpy(nodes)[None].to(self.device),
                                                           actions[None].to(self.device))
                acts = actions.numpy()
                out.append(Transition(x, nodes, acts, float(logp[0]), float(value[0])))
            else:
                acts = self._control_actions(greedy)
            ep.apply(acts)
        keep, scale = ep.finish(self.ctx.meter, self.cfg.project)
        return keep, scale, out, ep

    def _control_actions(self, greedy: bool) -> np.ndarray:
        rng = self.ctx.rng
        probs = self.cem if self.cfg.learner == "cem" else None
        if self.space.kind == "levels":
            if probs is None:
                return rng.integers(0, self.space.width, size=self.graph.num_nodes)
            if greedy:
                return probs.argmax(1)
            u = rng.random((probs.shape[0], 1))
            return np.minimum((probs.cumsum(1) < u).sum(1), self.space.width - 1)
        p = probs if probs is not None else np.full((self.graph.num_nodes, self.space.width), 0.5)
        return (p > 0.5).astype(np.float32) if greedy else (rng.random(p.shape) < p).astype(np.float32)

    def _cem_update(self, episodes: list[Episode], proxies: list[float]) -> None:
        elite_n = max(1, int(round(self.cfg.cem_elite * len(episodes))))
        elite = np.argsort(-np.asarray(proxies), kind="stable")[:elite_n]
        if self.space.kind == "levels":
            freq = np.zeros_like(self.cem)
            for i in elite.tolist():
                levels = np.abs(episodes[i].ratios[:, None] - self.space.fractions[None, :]).argmin(1)
                freq[np.arange(len(levels)), levels] += 1.0 / elite_n
        else:
            freq = np.zeros_like(self.cem)
            for i in elite.tolist():
                for node, blocks in enumerate(self.space.blocks):
                    for k, b in enumerate(blocks):
                        freq[node, k] += float(episodes[i].keep[b].all()) / elite_n
        a = self.cfg.cem_smoothing
        self.cem = (1 - a) * self.cem + a * freq
        if self.space.kind == "levels":  # keep every level reachable
            self.cem = np.maximum(self.cem, 1e-3)
            self.cem /= self.cem.sum(1, keepdims=True)
        else:
            self.cem = np.clip(self.cem, 0.02, 0.98) * self.space.valid(self.graph.num_nodes)

    def run_batch(self, size: int) -> dict[str, Any]:
        """Sample `size` episodes, score them, reward them, update the learner."""
        ctx, cfg = self.ctx, self.cfg
        meter, analysis = ctx.meter, ctx.analysis
        rolled = [self.rollout() for _ in range(size)]
        keeps = [r[0] for r in rolled]
        feasible = [meter.feasible(k) for k in keeps]
        idx = [i for i, f in enumerate(feasible) if f]
        scored = ctx.evaluator.evaluate([keeps[i] for i in idx], images=proxy_images(ctx, cfg)) if idx else []
        proxies: list[float | None] = [None] * size
        for i, v in zip(idx, scored):
            proxies[i] = float(v)
        repeat = [False] * size
        for i in idx:
            key = mask_key(keeps[i])
            repeat[i] = key in self.seen
            self.seen.add(key)
        returns: list[float] = []
        for i, (keep, scale, _, ep) in enumerate(rolled):
            proxy = proxies[i]
            violation = meter.violation(keep)
            macs = analysis.cost.macs(keep)
            if cfg.reward == "self-competition":
                r = self.reward(violation, proxy)
            elif proxy is None:  # cannot happen with projection
                r = -cfg.penalty * violation
            elif cfg.reward == "amc":
                r = amc(proxy, macs)
            else:
                r = graded(proxy)
            returns.append(r)
            if proxy is not None:
                self.best.append((proxy, self.episode, keep))
                self.best.sort(key=lambda b: (-b[0], b[1]))
                del self.best[cfg.final_top:]
            ctx.trajectory.add(
                update=self.update, episode=self.episode, learner=cfg.learner, proxy=proxy, reward=r,
                macs=macs / max(analysis.macs, 1), params=analysis.cost.params(keep) / max(analysis.params, 1),
                latency=meter.ratio(keep) if meter.budget.kind == "latency" else None, feasible=proxy is not None,
                budget_ratio=meter.ratio(keep), scale=scale, repeat=repeat[i],
                ratios=self.graph.keep_ratios(keep).round(4))
            self.episode += 1
        stats: dict[str, Any] = {}
        if cfg.learner == "ppo":
            episodes = [r[2] for r in rolled]
            adv, targets = advantages(episodes, returns, cfg.advantage_baseline, cfg.gamma, cfg.gae_lambda,
                                      cfg.adv_floor)
            stats = ppo_update(self.policy, self.opt, self.edges, episodes, adv, targets, cfg.clip, cfg.entropy,
                               cfg.value_coef, cfg.ppo_epochs)
        elif cfg.learner == "cem":
            self._cem_update([r[3] for r in rolled], [p if p is not None else -1.0 for p in proxies])
        valid = [p for p in proxies if p is not None]
        self.updates.append({"update": self.update, "episode": self.episode,
                             "mean_proxy": float(np.mean(valid)) if valid else None,
                             "max_proxy": max(valid) if valid else None, "mean_reward": float(np.mean(returns)),
                             "feasible_share": len(valid) / size,
                             "distinct": len(self.seen), **stats})
        self.update += 1
        return self.updates[-1]

    def greedy(self) -> np.ndarray | None:
        """The learner's most likely candidate (None for random search)."""
        if self.cfg.learner == "random":
            return None
        keep, _, _, _ = self.rollout(greedy=True)
        return make_feasible(self.ctx.meter, keep, self.importance)

    def finalists_finetuned(self, keeps: tuple[np.ndarray, ...]) -> list[float]:
        """Validation top-1 of each finalist after a brief distillation (`finalist_images`)."""
        from onnxprune.search.finalists import brief_finetune, original_copy

        teacher = original_copy(self.ctx)
        out = []
        for i, keep in enumerate(keeps):
            self.ctx.say(f"{METHOD}: finalist {i + 1}/{len(keeps)}: distilling on {self.cfg.finalist_images} "
                         "training images")
            result = brief_finetune(self.ctx, keep, self.cfg.finalist_images, teacher)
            out.append(float(result.val_top1_history[-1] if result.val_top1_history else result.initial_val_top1))
        return out

    def finish(self, extra_evaluations: int) -> SearchResult:
        ctx, cfg = self.ctx, self.cfg
        candidates: dict[bytes, tuple[str, np.ndarray]] = {}
        for _, ep_i, keep in self.best:
            candidates.setdefault(mask_key(keep), (f"episode {ep_i}", keep))
        greedy = self.greedy()
        greedy_is = None  # the finalist the greedy candidate is (an episode's mask when equal)
        if greedy is not None:
            greedy_is = candidates.setdefault(mask_key(greedy), ("greedy", greedy))[0]
        names, keeps = zip(*candidates.values())
        full = ctx.evaluator.evaluate(list(keeps), images=0)
        tuned = self.finalists_finetuned(keeps) if cfg.finalist_images else None
        pick = int(np.argmax(full if tuned is None else tuned))
        if cfg.policy_out:
            save_policy(self.policy, cfg.policy_out, self.policy_meta())
        ctx.trajectory.meta.update(
            gat_backend=self.backend, learner=cfg.learner, action=cfg.action, reward=cfg.reward,
            pretrain_losses=[round(x, 5) for x in self.pretrain_losses], updates=self.updates,
            nodes=self.graph.num_nodes, edges=int(self.graph.src.size), steps=len(self.slices),
            feature_names=list(FEATURE_NAMES),
            group_ids=list(self.graph.group_ids),
            sensitivity=None if self.sensitivity is None else self.sensitivity.round(5).tolist(),
            reference_ratios=self.graph.keep_ratios(self.reference).round(4).tolist(),
            finalists=[{"from": n, "val_top1": float(v)} | ({} if tuned is None else {"finetuned_val_top1": tuned[i]})
                       for i, (n, v) in enumerate(zip(names, full))],
            greedy_is=greedy_is)
        curve = [u["mean_proxy"] for u in self.updates if u["mean_proxy"] is not None]
        summary = {
            "gat_backend": self.backend, "learner": cfg.learner, "action": cfg.action, "reward": cfg.reward,
            "head": "ordinal" if self.policy.ordinal else "categorical", "entropy": cfg.entropy,
            "episodes": self.episode, "distinct_candidates": len(self.seen), "count": cfg.count,
            "updates": self.update, "setup_evaluations": extra_evaluations,
            "pretrain_loss": _mean_tail(self.pretrain_losses),
            "pretrain_loss_start": round(self.pretrain_losses[0], 5) if self.pretrain_losses else None,
            "best_subset_val_top1": self.best[0][0] if self.best else None,
            "first_mean_proxy": curve[0] if curve else None, "last_mean_proxy": curve[-1] if curve else None,
            "picked": names[pick], "finalist_images": cfg.finalist_images,
            "picked_finetuned_val_top1": None if tuned is None else tuned[pick],
        }
        return ctx.finish(keeps[pick], val_top1=float(full[pick]), **summary)


def _key_rows(keys: set[bytes]) -> np.ndarray:
    """Mask keys as the rows of a uint8 array (what a checkpoint can store), in sorted order."""
    rows = [np.frombuffer(k, dtype=np.uint8) for k in sorted(keys)]
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.uint8)


def _mean_tail(values: list[float], n: int = 10) -> float | None:
    """Mean of the last `n` values (the pre-training loss at the end), None when empty."""
    return round(float(np.mean(values[-n:])), 5) if values else None


def run(ctx: SearchContext) -> SearchResult:
    """Search a keep mask with gat-ppo (see the module docstring)."""
    cfg = parse_config(dict(ctx.cfg.options))
    if not ctx.analysis.prunable():
        raise InputError(f"{METHOD}: the model has no prunable channel group")
    saved = ctx.checkpoint.load()
    impact = impact_scores(ctx) if cfg.learner == "ppo" else None
    sensitivity = None
    setup = 0
    nodes = len(ctx.analysis.prunable())
    episodes = cfg.episodes
    if cfg.sensitivity:
        setup = nodes + 1
        if cfg.learner == "ppo":
            if saved is not None:
                sensitivity = saved["sensitivity"]
            else:
                ctx.say(f"measuring the sensitivity of {nodes} groups")
                probe = _Search(ctx, dataclasses.replace(cfg, sensitivity=False, policy=""), None, impact)
                sensitivity, _ = measure_sensitivity(ctx, probe.projector, cfg.sensitivity_ratio,
                                                     proxy_images(ctx, cfg))
        else:  # controls spend the same evaluations on candidates
            episodes += setup
            setup = 0
    search = _Search(ctx, cfg, sensitivity, impact)
    if saved is not None:
        search.load(saved)
    else:
        if cfg.pretrain and cfg.learner == "ppo" and not cfg.policy:
            ctx.say(f"pre-training the GAT encoder ({cfg.pretrain_steps} steps, graph auto-encoder)")
            search.pretrain_losses = pretrain_encoder(search.policy.encoder, search.graph, search.edges,
                                                      cfg.pretrain_steps, cfg.pretrain_lr, ctx.rng)
        ctx.checkpoint.save(search.state())
    fields = {"proxy": "mean proxy", "best": "best proxy"}
    distinct = cfg.count == "distinct"
    samples = episodes * cfg.max_factor if distinct else episodes  # the most episodes sampled

    def done() -> int:  # the budget spent so far, in what `count` counts
        return len(search.seen) if distinct else search.episode

    with progress_bar(f"{METHOD} ({cfg.learner})", episodes, ctx.cfg.progress, fields=fields) as update:
        update(done())
        while done() < episodes and search.episode < samples:
            before = done()
            # `distinct`: a batch adds at most `size` distinct candidates, so the budget is never exceeded
            size = min(cfg.batch, episodes - before, samples - search.episode)
            stats = search.run_batch(size)
            best = search.best[0][0] if search.best else "-"
            update(done() - before, proxy=stats["mean_proxy"] if stats["mean_proxy"] is not None else "-",
                   best=best)
            ctx.checkpoint.save(search.state())
    return search.finish(setup)


__all__ = ["ACTIONS", "COUNTS", "LEARNERS", "PRESETS", "GatPpoConfig", "kept_count", "parse_config", "run"]
