"""Loading, normalization and the frozen `LayerGraph` view (no torch, no graphsurgeon here)."""

from onnxprune.ir.graph import GraphInput, LayerGraph, NodeView, Shape, build_graph, parse_input_shapes
from onnxprune.ir.model import LoadedModel, load_model, read_model, with_initializers

__all__ = [
    "GraphInput", "LayerGraph", "LoadedModel", "NodeView", "Shape",
    "build_graph", "load_model", "parse_input_shapes", "read_model", "with_initializers",
]
