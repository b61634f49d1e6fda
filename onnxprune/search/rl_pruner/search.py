"""The rl-pruner search loop: pruning steps of sampling stages, Q values, replay buffer, policy
updates, post-training with teacher switching, checkpoints and trajectory.

One pruning step k (of `steps`) brings the model from the kept fraction target^((k-1)/steps) to
target^(k/steps) of the budget's kind:
  1. every sampling stage draws `samples` actions around PD, each with `lookahead` next actions
     landed on the next step's targets (a tree of depth `horizon`, cut at the last step, which is
     terminal), turns each into a mask (`masks.Pruner`), scores ALL of them with one
     `evaluator.evaluate` call, computes R and Q (Q = R + gamma * max Q of the children; R at the
     leaves), fills the replay buffer with the first level, picks a* epsilon-greedily and updates PD;
  2. the next state is the best-Q candidate of the buffer (an evaluated architecture that meets
     the step's target; the last step's meets the budget);
  3. post-training (KD from the current teacher) on the full-size student with the mask
     enforced; if the student beats the teacher on validation it becomes the teacher; Taylor
     scores are recomputed on the trained student and later candidates are scored with its
     weights (a new evaluator, `make_evaluator`).
Latency budgets: masks are planned with MACs as the proxy; each step's MACs target is read off
PD's mask landed on the latency target (measured), and the result is made feasible at the end.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from onnxprune.errors import InputError, UnsupportedModelError
from onnxprune.search.base import SearchContext, SearchResult, progress_bar
from onnxprune.search.budget import make_feasible
from onnxprune.search.evaluator import Evaluator, make_evaluator
from onnxprune.search.rl_pruner.masks import Pruner, step_targets
from onnxprune.search.rl_pruner.policy import (METHOD, ReplayBuffer, ReplayEntry, RLPrunerConfig,
                                               constant_reward_terms, epsilon_at, initial_policy, options,
                                               reward_value, sample_action, update_policy)
from onnxprune.data import take
from onnxprune.search.rl_pruner.posttrain import PostTrainConfig, post_batch_sizes, post_train, state_of, top1
from onnxprune.torchcopy.masked import MaskProjection

_CHECKPOINT_VERSION = 2


def run(ctx: SearchContext) -> SearchResult:
    """rl-pruner search (see the module docstring); options: `RLPrunerConfig`."""
    return RLPruner(ctx, options(ctx.cfg.options)).run()


class RLPruner:
    """The search state and loop (one instance per search)."""

    def __init__(self, ctx: SearchContext, cfg: RLPrunerConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        analysis = ctx.analysis
        groups = analysis.prunable()
        if not groups:
            raise UnsupportedModelError(f"{METHOD}: the model has no prunable channel group")
        if cfg.post_training and ctx.splits is None:
            raise InputError(f"{METHOD}: post-training needs data (or pass --option post_epochs=0)")
        self.budget = ctx.cfg.budget
        self.latency = self.budget.kind == "latency"
        self.targets = step_targets(self.budget.target, cfg.steps)
        self.macs0, self.params0 = max(analysis.macs, 1), max(analysis.params, 1)
        self.alpha, self.beta = cfg.weights
        self.constant_terms = constant_reward_terms(self.budget.kind, cfg.iso_cost)
        wasted = [t for t, w in (("C_F", self.alpha), ("C_P", self.beta)) if t in self.constant_terms and w]
        if wasted:
            ctx.say(f"{METHOD}: with iso_cost=true every candidate of a step has the same "
                    f"{' and '.join(wasted)}, so its reward weight does not change the ranking")
        # search state (checkpointed)
        self.step, self.stage = 0, 0
        self.pd = initial_policy(np.array([g.units for g in groups]))
        self.rb = ReplayBuffer(cfg.samples)
        self.base = analysis.full_keep()
        self.scores = np.asarray(ctx.importance, dtype=np.float64)
        self.proxy_targets: list[float] | None = None
        self.student_state: dict[str, torch.Tensor] | None = None
        self.teacher_state: dict[str, torch.Tensor] | None = None  # None: the original model
        self.teacher_acc: float | None = None
        self.step_best = float("nan")
        self.counters = {"trained_evaluations": 0, "direct_evaluations": 0, "teacher_switches": 0,
                         "post_train_seconds": 0.0, "trained_eval_seconds": 0.0}
        # working objects (rebuilt from the state)
        self.ev: Evaluator = ctx.evaluator
        self.student: Any = None
        self.teacher: Any = None
        self.original_state: dict[str, torch.Tensor] | None = None
        self.projection: MaskProjection | None = None
        self._pruner: Pruner | None = None
        if ctx.splits is not None:
            x_val, y_val = ctx.splits.val
            order = np.random.default_rng(ctx.cfg.eval.seed).permutation(len(y_val))
            n = ctx.cfg.eval.images or len(y_val)
            self.val_subset = (take(x_val, order[:n]), y_val[order[:n]])  # read a batch at a time when lazy

    # --- ratios --------------------------------------------------------------------------------
    def macs_ratio(self, keep: np.ndarray) -> float:
        return self.ctx.analysis.cost.macs(keep) / self.macs0

    def params_ratio(self, keep: np.ndarray) -> float:
        return self.ctx.analysis.cost.params(keep) / self.params0

    def proxy(self, keep: np.ndarray) -> float:
        """The cost the masks are planned with: the budget's kind, MACs for latency."""
        return self.macs_ratio(keep) if self.latency else self.ctx.meter.ratio(keep)

    @property
    def pruner(self) -> Pruner:
        if self._pruner is None:
            self._pruner = Pruner(self.ctx.analysis, self.scores, self.cfg.min_keep)
        return self._pruner

    # --- loop ----------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        cfg = self.cfg
        saved = self.ctx.checkpoint.load()
        if saved is not None:
            self._restore(saved)
        total = cfg.steps * cfg.stages
        fields = {"step": "step", "stage": "stage", "reward": "reward", "best": "best acc"}
        try:
            with progress_bar(METHOD, total, self.ctx.cfg.progress, fields=fields) as update:
                if saved is not None:
                    update(self.step * cfg.stages + self.stage)
                while self.step < cfg.steps:
                    if self.proxy_targets is None:
                        self._begin_step()
                    while self.stage < cfg.stages:
                        reward = self._sampling_stage()
                        self.stage += 1
                        self._save()
                        update(1, step=f"{self.step + 1}/{cfg.steps}", stage=f"{self.stage}/{cfg.stages}",
                               reward=reward, best=self.step_best)
                    self._end_step()
                    self.step, self.stage = self.step + 1, 0
                    self.rb = ReplayBuffer(cfg.samples)
                    self.proxy_targets = None
                    self.step_best = float("nan")
                    self._save()
            return self._finish()
        finally:
            if self.ev is not self.ctx.evaluator:
                self.ev.close()

    def _begin_step(self) -> None:
        wanted = self.targets[self.step:self.step + self.cfg.horizon]  # the last step is terminal
        if not self.latency:
            self.proxy_targets = wanted
            return
        landed = self.pruner.land(self.pruner.state(self.base), self.pd, wanted[0], self.ctx.meter.ratio)
        macs = self.macs_ratio(landed)
        self.proxy_targets = [macs * t / wanted[0] for t in wanted]

    def _sampling_stage(self) -> float:
        """One sampling stage; returns the best reward among its actions."""
        cfg, ctx, pruner = self.cfg, self.ctx, self.pruner
        assert self.proxy_targets is not None
        # candidates: a tree over the step's targets (parent index, depth, sample, action, keep);
        # below the first level, child 0 is PD itself and the others PD + noise
        nodes: list[tuple[int, int, int, np.ndarray, np.ndarray]] = []
        frontier = [(-1, pruner.state(self.base))]
        depths = len(self.proxy_targets)
        for depth in range(depths):
            target = self.proxy_targets[depth]
            following = []
            for parent, state in frontier:
                shared = None if cfg.iso_cost else pruner.solve(state, self.pd, target, self.proxy)
                for j in range(cfg.samples if depth == 0 else cfg.lookahead):
                    action = (self.pd.copy() if depth > 0 and j == 0
                              else sample_action(self.pd, cfg.noise, ctx.rng))
                    if shared is None:
                        keep = pruner.land(state, action, target, self.proxy)
                    else:
                        keep = pruner.prune(state, action, shared)
                    nodes.append((parent, depth, j, action, keep))
                    if depth + 1 < depths:
                        following.append((len(nodes) - 1, pruner.state(keep)))
            frontier = following
        accs = self.ev.evaluate([n[4] for n in nodes])  # one call: workers run the stage in parallel
        macs = [self.macs_ratio(n[4]) for n in nodes]
        params = [self.params_ratio(n[4]) for n in nodes]
        rewards = [reward_value(a, m, p, self.alpha, self.beta) for a, m, p in zip(accs, macs, params)]
        q = list(rewards)
        children: dict[int, list[int]] = {}
        for i, (parent, *_rest) in enumerate(nodes):
            if parent >= 0:
                children.setdefault(parent, []).append(i)
        for i in reversed(range(len(nodes))):  # children come after their parent
            if i in children:
                q[i] = rewards[i] + cfg.gamma * max(q[c] for c in children[i])
        for i, (parent, depth, j, action, keep) in enumerate(nodes):
            if depth == 0:
                self.rb.add(ReplayEntry(q[i], action, keep, rewards[i], accs[i], self.stage, j))
                self.step_best = accs[i] if math.isnan(self.step_best) else max(self.step_best, accs[i])
            ratio = None if self.latency else self.ctx.meter.ratio(keep)
            feasible = (ratio is not None and ratio <= self.budget.target + 1e-12) or \
                (self.latency and depth == 0 and self.step == cfg.steps - 1)
            ctx.trajectory.add(kind="sample", step=self.step + 1, stage=self.stage + 1, sample=j, depth=depth,
                               reward=rewards[i], q=q[i], val_top1=accs[i], budget_ratio=ratio,
                               macs_ratio=macs[i], params_ratio=params[i], feasible=bool(feasible))
        progress = (self.step + self.stage / cfg.stages) / cfg.steps
        eps = epsilon_at(progress, cfg.epsilon, cfg.epsilon_decay, cfg.epsilon_span)
        chosen, explored = self.rb.choose(eps, ctx.rng)
        self.pd = update_policy(self.pd, chosen.action, cfg.lam, cfg.delta)
        ctx.trajectory.add(kind="stage", step=self.step + 1, stage=self.stage + 1, epsilon=eps, explored=explored,
                           a_star_q=chosen.q, best_q=self.rb.best().q, pd=self.pd)
        return max(rewards[i] for i, n in enumerate(nodes) if n[1] == 0)

    def _end_step(self) -> None:
        """The next state: the best-Q candidate that meets the step's target; then post-train."""
        assert self.proxy_targets is not None
        target = self.proxy_targets[0]
        fits = [e for e in self.rb.entries if self.proxy(e.keep) <= target + 1e-9]
        if fits:
            keep, picked = max(fits, key=lambda e: e.q).keep, "best_q"
        else:
            keep, picked = self.pruner.land(self.pruner.state(self.base), self.pd, target, self.proxy), "pd_landed"
        last = self.step == self.cfg.steps - 1
        if last and not self.ctx.meter.feasible(keep):
            keep, picked = make_feasible(self.ctx.meter, keep, self.scores, self.cfg.min_keep), f"{picked}+made_feasible"
        self.base = keep
        record: dict[str, Any] = {"kind": "step", "step": self.step + 1, "picked": picked,
                                  "macs_ratio": self.macs_ratio(keep), "params_ratio": self.params_ratio(keep)}
        if not self.latency or last:
            record["budget_ratio"] = self.ctx.meter.ratio(keep)
        if self.cfg.post_training:
            record.update(self._post_train())
        self.ctx.trajectory.add(**record)

    # --- post-training -------------------------------------------------------------------------
    def _ensure_copies(self) -> None:
        from onnxprune.torchcopy import to_torch

        if self.student is not None:
            return
        device = self.ctx.device  # post-training runs on `--device`
        self.student = to_torch(self.ctx.analysis, check=False, seed=self.ctx.cfg.seed, device=device)
        self.student.module.to(memory_format=torch.channels_last)
        self.teacher = to_torch(self.ctx.analysis, check=False, seed=self.ctx.cfg.seed, device=device)
        self.original_state = state_of(self.teacher)
        if self.student_state is not None:
            self.student.module.load_state_dict(self.student_state)
        self.projection = MaskProjection(self.student, self.ctx.analysis)

    def _post_train(self) -> dict[str, Any]:
        """KD post-training of the student under `self.base`; teacher switch; new scores and
        evaluator for the trained weights. Returns what the step record shows."""
        from onnxprune.torchcopy import taylor_scores

        cfg, ctx = self.cfg, self.ctx
        t0 = time.perf_counter()
        self._close_trained_evaluator()
        self._ensure_copies()
        assert self.projection is not None and self.original_state is not None
        if self.student_state is not None:  # the weights as trained (not as a candidate masked them)
            self.student.module.load_state_dict(self.student_state)
        x_val, y_val = self.val_subset
        self.teacher.module.load_state_dict(self.teacher_state or self.original_state)
        if self.teacher_acc is None:
            self.teacher_acc = top1(self.teacher, x_val, y_val)
            self.counters["direct_evaluations"] += 1
        x, y = ctx.splits.train
        seed = ctx.cfg.seed * 1000 + self.step
        loss = post_train(self.student, self.teacher, self.projection, self.base, x, y,
                          PostTrainConfig(cfg.post_epochs, cfg.post_images, cfg.tau, cfg.temperature, cfg.post_lr,
                                          seed, **post_batch_sizes(ctx)))
        self.student_state = state_of(self.student)
        acc = top1(self.student, x_val, y_val)
        self.counters["direct_evaluations"] += 1
        switched = acc > self.teacher_acc
        if switched:
            self.teacher_state, self.teacher_acc = self.student_state, acc
            self.counters["teacher_switches"] += 1
        batches = -(-cfg.calibration // 64)
        self.scores = taylor_scores(self.student, ctx.analysis, x, y, batches=batches,
                                    batch_size=-(-cfg.calibration // batches), seed=seed)
        self._pruner = None
        self.ev = make_evaluator(ctx.analysis, self.student, ctx.splits, ctx.cfg.eval)
        seconds = time.perf_counter() - t0
        self.counters["post_train_seconds"] += seconds
        ctx.say(f"{METHOD}: step {self.step + 1} post-trained in {seconds:.1f}s, val top-1 {acc:.4f}"
                + (" (new teacher)" if switched else ""))
        return {"val_top1": acc, "feasible": bool(self.ctx.meter.feasible(self.base)), "post_loss": loss,
                "teacher_switched": switched, "teacher_top1": self.teacher_acc}

    def _close_trained_evaluator(self) -> None:
        if self.ev is not self.ctx.evaluator:
            self.counters["trained_evaluations"] += self.ev.evaluations
            self.counters["trained_eval_seconds"] += self.ev.seconds
            self.ev.close()
            self.ev = self.ctx.evaluator

    # --- end -----------------------------------------------------------------------------------
    def _finish(self) -> SearchResult:
        ctx, cfg = self.ctx, self.cfg
        keep = self.base
        self._close_trained_evaluator()
        steps = [r for r in ctx.trajectory.records if r.get("kind") == "step"]
        summary: dict[str, Any] = {
            "steps": cfg.steps, "stages": cfg.stages, "samples": cfg.samples, "horizon": cfg.horizon,
            "lookahead": cfg.lookahead, "noise_variance": cfg.noise, "noise_std": math.sqrt(cfg.noise),
            "picked": steps[-1].get("picked") if steps else None,
            "reward": cfg.reward, "alpha": self.alpha, "beta": self.beta, "iso_cost": cfg.iso_cost,
            "constant_reward_terms": self.constant_terms,
            "pd": [round(float(p), 6) for p in self.pd], "post_trained": self.student_state is not None, **self.counters,
        }
        if self.student_state is None:
            return ctx.finish(keep, **summary)
        self._ensure_copies()
        self.student.module.load_state_dict(self.student_state)
        x_val, y_val = ctx.splits.val
        val = top1(self.student, x_val, y_val)
        self.counters["direct_evaluations"] += 1
        summary["direct_evaluations"] = self.counters["direct_evaluations"]
        summary["total_evaluations"] = (ctx.evaluator.evaluations + self.counters["trained_evaluations"]
                                        + self.counters["direct_evaluations"])
        return ctx.finish(keep, val_top1=val, weights=self.student.initializer_values(), **summary)

    # --- checkpoint ----------------------------------------------------------------------------
    def _save(self) -> None:
        ctx = self.ctx
        if ctx.checkpoint.path is None:
            return
        ctx.checkpoint.save({
            "version": _CHECKPOINT_VERSION, "step": self.step, "stage": self.stage, "pd": self.pd,
            "rb": [asdict(e) for e in self.rb.entries], "rng": ctx.rng.bit_generator.state, "base": self.base,
            "scores": self.scores, "proxy_targets": self.proxy_targets, "student": self.student_state,
            "teacher": self.teacher_state, "teacher_acc": self.teacher_acc, "step_best": self.step_best,
            "counters": dict(self.counters), "records": list(ctx.trajectory.records),
        })

    def _restore(self, s: dict[str, Any]) -> None:
        if s.get("version") != _CHECKPOINT_VERSION:
            raise InputError(f"--resume: the checkpoint was written by another version of {METHOD}")
        self.step, self.stage, self.pd = int(s["step"]), int(s["stage"]), np.asarray(s["pd"])
        self.rb = ReplayBuffer(self.cfg.samples, [ReplayEntry(**e) for e in s["rb"]])
        self.ctx.rng.bit_generator.state = s["rng"]
        self.base, self.scores = np.asarray(s["base"], dtype=bool), np.asarray(s["scores"])
        self.proxy_targets = s["proxy_targets"]
        self.student_state, self.teacher_state = s["student"], s["teacher"]
        self.teacher_acc, self.step_best = s["teacher_acc"], s["step_best"]
        self.counters.update(s["counters"])
        self.ctx.trajectory.records = list(s["records"])
        if self.student_state is not None:
            self._ensure_copies()
            self.ev = make_evaluator(self.ctx.analysis, self.student, self.ctx.splits, self.ctx.cfg.eval)
