"""gat-ppo: graph attention policy + PPO over binary channel-block masks (arXiv 2509.10526).

`features` builds the state graph, `encoder` the GAT (DGL or plain PyTorch backend), `pretrain`
the graph auto-encoder pre-training, `policy` the block actions and actor-critic, `reward` the
self-competition reward, `ppo` the learner and `search` the loop (`run`).
"""

from onnxprune.search.gat_ppo.encoder import GATEncoder, TorchGATConv, dgl_available, resolve_backend
from onnxprune.search.gat_ppo.features import FEATURE_NAMES, StateGraph, build_state_graph
from onnxprune.search.gat_ppo.reward import SelfCompetitionReward
from onnxprune.search.gat_ppo.search import PRESETS, GatPpoConfig, parse_config, run

__all__ = ["FEATURE_NAMES", "PRESETS", "GATEncoder", "GatPpoConfig", "SelfCompetitionReward", "StateGraph",
           "TorchGATConv", "build_state_graph", "dgl_available", "parse_config", "resolve_backend", "run"]
