"""Rewards of gat-ppo: the graded reward (default), AMC's error-with-cost form, and the seed's
two-phase self-competition reward (arXiv 2509.10526, section 2.2.4), kept for the ablation.

`graded`: the candidate's proxy (validation top-1 of the masked copy); PPO subtracts the batch
mean (`ppo.advantages`, baseline "batch"), so a candidate is rewarded by how much better than its
batch it is, in accuracy points. `amc`: `-(1 - proxy) * log(MACs)` (AMC's R_FLOPs).

Self-competition:

Phase 1, the budget is violated: a penalty that grows with the violation,
`-1 - penalty * violation` (violation in fractions of the original cost, e.g. 0.05 when a
candidate keeps 55% of the MACs under a 50% budget); no accuracy is measured.
Phase 2, the candidate is feasible: +1 if its validation accuracy beats the exponential moving
average of the past feasible accuracies, else -1; then the average moves towards it,
`ema <- decay * ema + (1 - decay) * acc`. The first feasible candidate starts the average and
gets +1 (reaching the budget is what phase 1 asks for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REWARDS = ("graded", "amc", "self-competition")


def graded(proxy: float) -> float:
    """The graded reward: the proxy itself (the baseline is subtracted by PPO)."""
    return float(proxy)


def amc(proxy: float, macs: float) -> float:
    """AMC's R_FLOPs: `-(1 - proxy) * log(macs)` (`macs`: the candidate's absolute MACs)."""
    return -(1.0 - float(proxy)) * math.log(max(float(macs), 2.0))


@dataclass
class SelfCompetitionReward:
    """Two-phase reward with its state (`ema`, `feasible_seen`), to be checkpointed."""

    decay: float = 0.9
    penalty: float = 10.0
    ema: float | None = None
    feasible_seen: int = 0

    def infeasible(self, violation: float) -> float:
        """Phase 1: the budget penalty (violation > 0)."""
        return -1.0 - self.penalty * max(float(violation), 0.0)

    def feasible(self, accuracy: float) -> float:
        """Phase 2: +1 / -1 against the EMA of past feasible accuracies, then update it."""
        self.feasible_seen += 1
        if self.ema is None:
            self.ema = float(accuracy)
            return 1.0
        reward = 1.0 if accuracy > self.ema else -1.0
        self.ema = self.decay * self.ema + (1.0 - self.decay) * float(accuracy)
        return reward

    def __call__(self, violation: float, accuracy: float | None) -> float:
        """The reward of one candidate: `accuracy` is only read when `violation` is 0."""
        if violation > 0:
            return self.infeasible(violation)
        if accuracy is None:
            raise ValueError("a feasible candidate needs its accuracy")
        return self.feasible(accuracy)

    def state(self) -> dict[str, float | int | None]:
        return {"ema": self.ema, "feasible_seen": self.feasible_seen}

    def load(self, state: dict[str, float | int | None]) -> None:
        self.ema = state["ema"]  # type: ignore[assignment]
        self.feasible_seen = int(state["feasible_seen"] or 0)
