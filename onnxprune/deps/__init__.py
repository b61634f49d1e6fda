"""Channel-group discovery (union-find over the op rules) and the MACs/params cost model."""

from onnxprune.deps.analysis import Analysis, Masks, analyze, analyze_graph
from onnxprune.deps.cost import CostModel, build_cost_model
from onnxprune.deps.groups import ChannelGroup, GroupSet, ResolvedMember, discover_groups

__all__ = [
    "Analysis", "ChannelGroup", "CostModel", "GroupSet", "Masks", "ResolvedMember",
    "analyze", "analyze_graph", "build_cost_model", "discover_groups",
]
