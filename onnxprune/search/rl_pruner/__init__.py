"""rl-pruner: Monte Carlo sampling + Q-learning over a layer-wise pruning distribution, with
knowledge-distillation post-training between pruning steps (RL-Pruner, arXiv 2411.06463).

`run(ctx)` is the search method (`--method rl-pruner`); `policy` holds the options and the small
pure functions (reward, epsilon schedule, clipped policy update), `masks` turns a distribution
into keep masks, `posttrain` the masked KD training, `search` the loop.
"""

from onnxprune.search.rl_pruner.masks import Pruner, State, step_targets
from onnxprune.search.rl_pruner.policy import (PRESETS, REWARDS, ReplayBuffer, ReplayEntry, RLPrunerConfig,
                                               constant_reward_terms, epsilon_at, initial_policy, options,
                                               reward_value, reward_weights, sample_action, update_policy)
from onnxprune.search.rl_pruner.search import RLPruner, run

__all__ = [
    "PRESETS", "REWARDS", "Pruner", "RLPruner", "RLPrunerConfig", "ReplayBuffer", "ReplayEntry", "State",
    "constant_reward_terms", "epsilon_at", "initial_policy", "options", "reward_value", "reward_weights", "run", "sample_action",
    "step_targets", "update_policy",
]
