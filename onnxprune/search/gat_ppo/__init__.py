"""gat-ppo: a graph attention policy over the model's channel groups, trained with PPO
(arXiv 2509.10526, reworked so that it can learn; docs/gat-ppo.md).

`features` builds the state graph, `encoder` the GAT (DGL or plain PyTorch backend), `pretrain`
the graph auto-encoder pre-training, `env` the episodes (per-group keep levels or the seed's
binary blocks, decided group by group, projected onto the budget), `policy` the actor-critic,
`reward` the graded / AMC / self-competition rewards, `ppo` the learner and `search` the loop
(`run`) with its controls (prior alone, random search, CEM).
"""

from onnxprune.search.gat_ppo.encoder import GATEncoder, TorchGATConv, dgl_available, resolve_backend
from onnxprune.search.gat_ppo.features import FEATURE_NAMES, StateGraph, build_state_graph
from onnxprune.search.gat_ppo.reward import SelfCompetitionReward
from onnxprune.search.gat_ppo.search import LEARNERS, PRESETS, GatPpoConfig, parse_config, run

__all__ = ["FEATURE_NAMES", "LEARNERS", "PRESETS", "GATEncoder", "GatPpoConfig", "SelfCompetitionReward",
           "StateGraph", "TorchGATConv", "build_state_graph", "dgl_available", "parse_config", "resolve_backend",
           "run"]
