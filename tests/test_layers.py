"""The channel knowledge `deps` exposes (channel maps, the layer network, op kinds, the layer
facts of each group's producers, the data flow between groups) and the frozen `LayerGraph` view."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.deps import analyze
from onnxprune.ir import build_graph, load_model
from onnxprune.ops import kind_of, layer_facts
from tests import graphs


def test_layer_net_of_a_residual_block() -> None:
    # x ─ conv0 3->6 ─┬─ conv_a 6->8 ─ relu_a ─┐
    #                 └─ conv_b 6->8 ──────────┴─ join Add ─ conv_c 8->4 ─ y
    a = analyze(graphs.residual("Add"))
    net = a.layers
    names = [layer.node for layer in net.layers]
    assert names == ["conv0", "conv_a", "conv_b", "join", "conv_c"]  # relu_a is bridged
    idx = {n: i for i, n in enumerate(names)}
    assert set(net.edges) == {(idx["conv0"], idx["conv_a"]), (idx["conv0"], idx["conv_b"]),
                              (idx["conv_a"], idx["join"]), (idx["conv_b"], idx["join"]),
                              (idx["join"], idx["conv_c"])}
    layers = {layer.node: layer for layer in net.layers}
    assert [layers[n].kind for n in names] == ["conv", "conv", "conv", "binary", "conv"]
    # the Add ties conv_a and conv_b into one group: same units, in the same order
    assert np.array_equal(layers["conv_a"].units, layers["conv_b"].units)
    assert np.array_equal(layers["join"].units, layers["conv_a"].units)
    assert layers["join"].groups == layers["conv_a"].groups and len(layers["join"].groups) == 1
    assert layers["conv0"].channels == 6 and layers["conv_c"].channels == 4


def test_channel_maps_follow_concat_offsets() -> None:
    # conv_c sees conv_a's 3 channels, then conv_b's 5
    a = analyze(graphs.concat_channels())
    cat = a.channels(next(n.outputs[0] for n in a.graph.nodes if n.name == "cat"))
    conv_a = a.channels(next(n.outputs[0] for n in a.graph.nodes if n.name == "conv_a"))
    conv_b = a.channels(next(n.outputs[0] for n in a.graph.nodes if n.name == "conv_b"))
    assert cat is not None and conv_a is not None and conv_b is not None and cat.axis == 1
    assert np.array_equal(cat.units, np.concatenate([conv_a.units, conv_b.units]))
    assert a.channels("no such tensor") is None


def test_op_kinds_come_from_the_rules() -> None:
    a = analyze(graphs.conv_bn_relu_conv())
    assert [kind_of(n) for n in a.graph.nodes] == ["conv", "norm", "activation", "conv"]


def test_producers_say_what_kind_of_layer_makes_a_group() -> None:
    # x ─ conv0 3->8 ─ gconv 8->8 (group=2, W (8,4,3,3)) ─ conv2 8->4 ─ y
    a = analyze(graphs.grouped_conv())
    facts = {f.node: f for g in a.channel_groups for f in a.producers(g)}
    assert (facts["conv0"].kind, facts["conv0"].groups, facts["conv0"].kernel) == ("conv", 1, 9)
    assert (facts["gconv"].kind, facts["gconv"].groups) == ("grouped_conv", 2)
    assert facts["conv2"].index == 2 and facts["conv2"].stride == 1.0
    # x ─ conv0 3->8 ─ up ConvTranspose 8->4 (k2, s2) ─ conv2 4->4 ─ y
    a = analyze(graphs.conv_transpose())
    up = next(f for g in a.channel_groups for f in a.producers(g) if f.node == "up")
    assert (up.kind, up.kernel, up.stride) == ("conv_transpose", 4, 2.0)
    # x ─ conv0 ─ pool ─ Flatten ─ fc 64->10 ─ relu ─ fc2 10->3 ─ y: a linear layer has a 1x1 "kernel"
    a = analyze(graphs.flatten_gemm())
    linear = [f for g in a.channel_groups for f in a.producers(g) if f.op_type == "Gemm"]
    assert [(f.node, f.kind, f.kernel, f.stride, f.groups) for f in linear] == [("fc", "linear", 1, 1.0, 1),
                                                                                ("fc2", "linear", 1, 1.0, 1)]
    # a depthwise Conv carries its input's channels (it produces no group) but is a grouped layer
    a = analyze(graphs.depthwise())
    dw = next(n for n in a.graph.nodes if n.name == "dw")
    assert "dw" not in {p for g in a.channel_groups for p in g.producers}
    assert layer_facts(dw, a.graph).kind == "grouped_conv"
    relu = next(n for n in a.graph.nodes if n.op_type == "Relu")
    assert layer_facts(relu, a.graph).kind == "other" and layer_facts(relu, a.graph).kernel is None


def test_group_flow_of_a_residual_block() -> None:
    # x ─ conv0 3->6 ─┬─ conv_a 6->8 ─ relu_a ─┐
    #                 └─ conv_b 6->8 ──────────┴─ join Add ─ conv_c 8->4 ─ y
    a = analyze(graphs.residual("Add"))
    group_of = {p: g.id for g in a.channel_groups for p in g.producers}
    x = next(g.id for g in a.channel_groups if not g.producers)  # the input's channels (frozen)
    assert group_of["conv_a"] == group_of["conv_b"]
    assert a.group_flow == ((x, group_of["conv0"]), (group_of["conv0"], group_of["conv_a"]),
                            (group_of["conv_a"], group_of["conv_c"]))


def test_layer_graph_is_frozen_in_fact() -> None:
    loaded = load_model(graphs.conv_bn_relu_conv())
    before = [t.SerializeToString() for t in loaded.model.graph.initializer]
    graph = build_graph(loaded)
    # shape inference on a weightless copy never empties the caller's initializers
    assert [t.SerializeToString() for t in loaded.model.graph.initializer] == before
    name = next(iter(graph.initializers))
    value = graph.const(name)
    assert value is not None and not value.flags.writeable
    with pytest.raises(ValueError):
        value[...] = 0
    with pytest.raises(TypeError):
        graph.initializers[name] = graph.initializers[name]  # type: ignore[index]
    # `model` is a copy: editing it, or the caller's loaded model, does not reach the view
    copy = graph.model
    del copy.graph.initializer[:]
    loaded.model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.zeros(1, np.float32), "x"))
    assert len(graph.model.graph.initializer) == len(before)
    assert [t.SerializeToString() for t in graph.model.graph.initializer] == before
    assert graph.initializers[name].dims == tuple(value.shape)
