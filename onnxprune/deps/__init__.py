"""Channel-group discovery (union-find over the op rules), the MACs/params cost model, and the
channel knowledge later stages build on: channel maps per tensor and the layer network."""

from onnxprune.deps.analysis import Analysis, Masks, analyze, analyze_graph
from onnxprune.deps.cost import CostModel, build_cost_model
from onnxprune.deps.groups import ChannelGroup, GroupSet, ResolvedMember, TensorChannels, discover_groups
from onnxprune.deps.layers import Layer, LayerNet, build_layer_net

__all__ = [
    "Analysis", "ChannelGroup", "CostModel", "GroupSet", "Layer", "LayerNet", "Masks", "ResolvedMember",
    "TensorChannels", "analyze", "analyze_graph", "build_cost_model", "build_layer_net", "discover_groups",
]
