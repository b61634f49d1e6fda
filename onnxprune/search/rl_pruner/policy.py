"""The RL-Pruner policy: options, reward, exploration schedule, noisy actions, the replay buffer
and the clipped policy update (arXiv 2411.06463, section 3.2). Everything here is a small pure
function of numpy arrays, so that it can be tested on its own.

Vocabulary (the paper's): the policy is the pruning distribution `PD` over the prunable channel
groups (non-negative, sums to 1); an action `a = PD + z`, `z ~ N(0, v)` per group (`v = noise`, a
variance as in the paper's eq. 11: the standard deviation is sqrt(v)), clipped at 0 and renormalized; a step with sparsity `S` removes `round(a_i * S * U)` units from group i
(`U`: prunable units of the original model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from onnxprune.errors import InputError
from onnxprune.methods import RL_PRUNER
from onnxprune.search.base import parse_options

METHOD = RL_PRUNER.name

# (alpha, beta) of R = acc + alpha * C_F + beta * C_P: the paper's three reward strategies.
REWARDS: dict[str, tuple[float, float]] = {"accuracy": (0.0, 0.0), "flops": (0.25, 0.0), "params": (0.0, 0.25)}
DECAYS = ("constant", "linear", "cosine")

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    # The paper's defaults (section 4.1). It prunes in many small steps with a longer
    # post-training; `steps` and `post_images` here are our choice of "many" and "all".
    "paper": {"steps": 10, "stages": 10, "samples": 10, "noise": 0.04, "lam": 0.1, "gamma": 0.9, "horizon": 2,
              "lookahead": 10, "delta": 0.2, "epsilon": 0.4, "epsilon_decay": "cosine", "calibration": 100, "tau": 0.75,
              "iso_cost": False, "post_images": 1_000_000},
}


@dataclass(frozen=True)
class RLPrunerConfig:
    """rl-pruner options (CPU-scale defaults; `preset=paper` for the paper's values).

    steps: pruning steps to reach the budget (the kept fraction follows target^(k/steps)).
    stages: sampling stages per step (CLI `--episodes` is an alias).
    samples: actions sampled per stage (N_S); also the replay buffer's size.
    noise: variance v of the Gaussian noise added to PD (the paper's v; standard deviation sqrt(v)).
    lam: policy step size (lambda). gamma: discount.
    horizon: pruning steps a Q value looks at. 1: Q = R. 2 (the paper's eq. 13, its bootstrap cut
        after one step): Q = R + gamma * max_j R(s', a'_j) over `lookahead` next actions a'_j
        landed on the next step's target from the candidate s'; deeper trees recurse. The last
        pruning step is terminal (Q = R there).
    lookahead: next actions per candidate below the first level; the first is PD itself (no
        noise), the others PD + z. A stage evaluates samples * (1 + lookahead + ...) candidates.
    delta: per-element clip of the policy change ratio. epsilon, epsilon_decay, epsilon_span:
        exploration probability, decayed (constant | linear | cosine) to 0 over the first
        `epsilon_span` of the pruning steps.
    reward: accuracy | flops | params (the paper's (alpha, beta) presets); alpha, beta override.
    tau, temperature: distillation weight and temperature of the post-training.
    post_epochs, post_images, post_lr: post-training after every step (0 epochs: none).
    calibration: images for the Taylor scores recomputed after each post-training.
    min_keep: fraction of every group that is always kept.
    iso_cost: each action gets its own sparsity so that every candidate of a step lands on the
        step's target (candidates compared at equal cost); false: all actions of a stage share
        the sparsity of PD (the paper).
    """

    steps: int = 3
    stages: int = 3
    samples: int = 6
    noise: float = 0.04  # the paper's v; the earlier 0.0016 did not measure better (docs/rl_pruner.md)
    lam: float = 0.1
    gamma: float = 0.9
    horizon: int = 2
    lookahead: int = 1
    delta: float = 0.2
    epsilon: float = 0.4
    epsilon_decay: str = "cosine"
    epsilon_span: float = 0.1
    reward: str = "accuracy"
    alpha: float | None = None
    beta: float | None = None
    tau: float = 0.75
    temperature: float = 4.0
    post_epochs: int = 1
    post_images: int = 2000
    post_lr: float = 0.01
    calibration: int = 100
    min_keep: float = 0.05
    iso_cost: bool = True
    preset: str = "cpu"

    def __post_init__(self) -> None:
        def need(ok: bool, text: str) -> None:
            if not ok:
                raise InputError(f"{METHOD}: {text}")

        for name in ("steps", "stages", "samples", "horizon", "lookahead", "calibration"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"option {name} must be an integer >= 1, got {value!r}")
        for name in ("post_epochs", "post_images"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                 f"option {name} must be an integer >= 0, got {value!r}")
        for name in ("noise", "lam", "gamma", "delta", "epsilon", "epsilon_span", "tau", "temperature",
                     "post_lr", "min_keep"):
            need(isinstance(getattr(self, name), (int, float)), f"option {name} must be a number")
        need(self.noise >= 0, f"noise must be >= 0, got {self.noise}")
        need(self.lam > 0, f"lam must be > 0, got {self.lam}")
        need(0 <= self.gamma <= 1, f"gamma must be in [0, 1], got {self.gamma}")
        need(0 <= self.delta < 1, f"delta must be in [0, 1), got {self.delta}")
        need(0 <= self.epsilon <= 1, f"epsilon must be in [0, 1], got {self.epsilon}")
        need(0 < self.epsilon_span <= 1, f"epsilon_span must be in (0, 1], got {self.epsilon_span}")
        need(self.epsilon_decay in DECAYS,
             f"epsilon_decay must be one of {', '.join(DECAYS)}, got {self.epsilon_decay!r}")
        need(self.reward in REWARDS, f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        need(0 <= self.tau <= 1, f"tau must be in [0, 1], got {self.tau}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(self.post_lr > 0, f"post_lr must be > 0, got {self.post_lr}")
        need(0 <= self.min_keep < 1, f"min_keep must be in [0, 1), got {self.min_keep}")
        need(isinstance(self.iso_cost, bool), f"iso_cost must be true or false, got {self.iso_cost!r}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
                 f"option {name} must be a number, got {value!r}")

    @property
    def weights(self) -> tuple[float, float]:
        """(alpha, beta) of the reward."""
        return reward_weights(self.reward, self.alpha, self.beta)

    @property
    def post_training(self) -> bool:
        return self.post_epochs > 0 and self.post_images > 0


def options(raw: Mapping[str, Any]) -> RLPrunerConfig:
    """The config from method options (CLI strings or values); `episodes` is an alias of
    `stages`, `preset` (cpu | paper) applies first and explicit options override it."""
    opts = dict(raw)
    if "episodes" in opts:
        episodes = opts.pop("episodes")
        if "stages" in opts and str(opts["stages"]) != str(episodes):
            raise InputError(f"{METHOD}: --episodes and stages= both given (episodes is an alias of stages)")
        opts["stages"] = episodes
    return parse_options(RLPrunerConfig, opts, METHOD, presets=PRESETS)


def reward_weights(reward: str, alpha: float | None = None, beta: float | None = None) -> tuple[float, float]:
    """(alpha, beta) of the reward preset `reward`, with explicit `alpha`/`beta` taking over."""
    if reward not in REWARDS:
        raise InputError(f"{METHOD}: reward must be one of {', '.join(REWARDS)}, got {reward!r}")
    a, b = REWARDS[reward]
    return (float(a if alpha is None else alpha), float(b if beta is None else beta))


def reward_value(top1: float, macs_ratio: float, params_ratio: float, alpha: float, beta: float) -> float:
    """R = top1 + alpha * C_F + beta * C_P (eq. 17).

    C_F = 1 - MACs(candidate) / MACs(original) and C_P = 1 - params(candidate) / params(original):
    the fractions of the ORIGINAL model's MACs and parameters that the candidate removes.
    """
    return float(top1 + alpha * (1.0 - macs_ratio) + beta * (1.0 - params_ratio))


def constant_reward_terms(kind: str, iso_cost: bool) -> list[str]:
    """The reward's cost terms that cannot rank the candidates of a step: with `iso_cost` every
    candidate lands on the step's target, so C_F is constant under a MACs budget (and a latency
    one, planned in MACs) and C_P under a params budget. Channel budgets leave both free."""
    if not iso_cost:
        return []
    return {"macs": ["C_F"], "latency": ["C_F"], "params": ["C_P"]}.get(kind, [])


def epsilon_at(progress: float, epsilon: float, decay: str, span: float = 0.1) -> float:
    """Exploration probability after `progress` (fraction of the pruning steps done, 0..1).

    `constant`: always `epsilon`; `linear` / `cosine`: from `epsilon` at 0 down to 0 at `span`
    (the paper: cosine over the first 10% of the pruning steps), 0 afterwards.
    """
    if decay == "constant":
        return float(epsilon)
    x = min(max(progress / span, 0.0), 1.0)
    if decay == "linear":
        return float(epsilon * (1.0 - x))
    if decay == "cosine":
        return float(epsilon * 0.5 * (1.0 + math.cos(math.pi * x)))
    raise InputError(f"{METHOD}: epsilon_decay must be one of {', '.join(DECAYS)}, got {decay!r}")


def initial_policy(units: np.ndarray) -> np.ndarray:
    """PD proportional to the groups' widths (units): a uniform sparsity over the groups."""
    units = np.asarray(units, dtype=np.float64)
    return units / units.sum()


def sample_action(pd: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    """a = PD + z, z ~ N(0, variance) per group (standard deviation sqrt(variance)); clipped at 0
    and renormalized (eqs. 11-12)."""
    a = np.clip(pd + rng.normal(0.0, math.sqrt(variance), size=pd.shape), 0.0, None)
    total = a.sum()
    return a / total if total > 0 else pd.copy()


def update_policy(pd: np.ndarray, a_star: np.ndarray, lam: float, delta: float) -> np.ndarray:
    """PD_new = PD + lam * a*, with every element's change ratio clipped to [1 - delta, 1 + delta]
    (eqs. 19-20), renormalized to sum 1 without leaving the clip box.

    The renormalization solves sum(clip(c * PD_new, (1-delta) PD, (1+delta) PD)) = 1 for the scale
    c (monotone in c; the box sums to 1 -/+ delta, so a solution exists). Where the clip does not
    bind this is the plain normalization PD_new / sum(PD_new).
    """
    pd = np.asarray(pd, dtype=np.float64)
    new = pd + lam * np.asarray(a_star, dtype=np.float64)
    lo, hi = (1.0 - delta) * pd, (1.0 + delta) * pd
    if delta == 0.0:
        return pd.copy()

    def total(c: float) -> float:
        return float(np.clip(c * new, lo, hi).sum())

    c_lo, c_hi = 0.0, float(np.max(hi / np.maximum(new, 1e-300)))
    for _ in range(200):
        mid = 0.5 * (c_lo + c_hi)
        if total(mid) < 1.0:
            c_lo = mid
        else:
            c_hi = mid
        if c_hi - c_lo <= 1e-15 * max(c_hi, 1.0):
            break
    out = np.clip(0.5 * (c_lo + c_hi) * new, lo, hi)
    return out / out.sum()


@dataclass
class ReplayEntry:
    """One sampled action of the current pruning step, its Q value and its candidate mask."""

    q: float
    action: np.ndarray
    keep: np.ndarray
    reward: float
    top1: float
    stage: int
    sample: int


class ReplayBuffer:
    """The best `capacity` actions (by Q) of the current pruning step: a new entry replaces the
    lowest-Q one when its Q is at least as high, and is discarded otherwise."""

    def __init__(self, capacity: int, entries: list[ReplayEntry] | None = None) -> None:
        self.capacity = capacity
        self.entries: list[ReplayEntry] = list(entries or [])

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: ReplayEntry) -> bool:
        if len(self.entries) < self.capacity:
            self.entries.append(entry)
            return True
        worst = int(np.argmin([e.q for e in self.entries]))
        if entry.q >= self.entries[worst].q:
            self.entries[worst] = entry
            return True
        return False

    def best(self) -> ReplayEntry:
        return self.entries[int(np.argmax([e.q for e in self.entries]))]

    def choose(self, epsilon: float, rng: np.random.Generator) -> tuple[ReplayEntry, bool]:
        """a*: a random entry with probability `epsilon` (exploration), else the best Q.
        Returns (entry, explored)."""
        u, pick = rng.random(), int(rng.integers(len(self.entries)))
        if u < epsilon:
            return self.entries[pick], True
        return self.best(), False
