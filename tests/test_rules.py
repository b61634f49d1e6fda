"""Channel rules and group discovery on tiny graphs (`tests/graphs.py`): exact group membership,
member unit mappings (Concat/Split/Slice/Flatten/shuffle offsets), the cost model, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.deps import Analysis, ChannelGroup, ResolvedMember, analyze
from onnxprune.errors import InputError, OnnxPruneError, UnsupportedModelError
from tests import graphs

Summary = tuple[tuple[str, ...], tuple[str, ...], int, int, bool]

# The channels of the graph input, as conv0 sees them: never prunable.
INPUT: Summary = ((), ("conv0",), 3, 3, False)


# --- helpers ---------------------------------------------------------------------------------

def summary(a: Analysis) -> list[Summary]:
    """(producers, consumers, units, channels, prunable) of every group, in group order."""
    return [(g.producers, g.consumers, g.units, g.channels, g.prunable) for g in a.channel_groups]


def group(a: Analysis, producer: str) -> ChannelGroup:
    """The one group `producer` produces channels for."""
    found = [g for g in a.channel_groups if producer in g.producers]
    assert len(found) == 1, f"{producer} produces {len(found)} groups"
    return found[0]


def member(a: Analysis, node: str, kind: str) -> ResolvedMember:
    found = [rm for rm in a.groups.members if rm.member.node == node and rm.member.kind == kind]
    assert len(found) == 1, f"{len(found)} {kind!r} members on {node}"
    return found[0]


def units(rm: ResolvedMember) -> list[int]:
    return rm.units.tolist()


def unit_of(g: ChannelGroup, channel: int) -> int:
    """Global unit index of channel `channel` of the group's leading producer."""
    return g.unit_start + int(g.channel_units[channel])


def all_units(g: ChannelGroup) -> list[int]:
    return [unit_of(g, c) for c in range(g.channels)]


def reason(a: Analysis, producer: str) -> str:
    r = group(a, producer).reason
    assert r is not None, f"the group of {producer} is prunable"
    return r


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, f"not a one-line message: {text!r}"
    return text


# --- every builder is a valid model ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(graphs.all_builders()))
def test_builder_is_valid_onnx_and_runs(name: str) -> None:
    model = graphs.all_builders()[name]()
    onnx.checker.check_model(model)
    assert model.ir_version <= 10
    if name == "unknown_op_custom":
        return  # no onnxruntime kernel for com.example.Mystery
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3  # IR-4 models warn about initializers listed as inputs
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for inp in sess.get_inputs():
        shape = [2 if not isinstance(d, int) else d for d in inp.shape]
        feeds[inp.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outs = sess.run(None, feeds)
    assert all(np.isfinite(o).all() for o in outs)


# --- plain chains and how models are stored --------------------------------------------------

CHAIN = [INPUT, (("conv0",), ("conv1",), 8, 8, True), (("conv1",), (), 4, 4, False)]


def test_conv_bn_relu_conv() -> None:
    a = analyze(graphs.conv_bn_relu_conv())
    assert summary(a) == CHAIN
    groups = a.channel_groups
    assert "graph input" in groups[0].reason
    assert groups[1].reason is None
    assert groups[2].reason == "graph output y"
    g = group(a, "conv0")
    assert units(member(a, "conv0", "out")) == all_units(g)
    assert units(member(a, "conv1", "in")) == all_units(g)
    bn = {rm.member.tensor: units(rm) for rm in a.groups.members if rm.member.node == "bn0"}
    assert bn == {t: all_units(g) for t in ("bn0.weight", "bn0.bias", "bn0.running_mean", "bn0.running_var")}
    assert {rm.member.kind for rm in a.groups.members if rm.member.node == "bn0"} == {"param"}


@pytest.mark.parametrize("make", [
    pytest.param(lambda: graphs.conv_bn_relu_conv(weights="constant"), id="constant-nodes"),
    pytest.param(lambda: graphs.conv_bn_relu_conv(weights="identity"), id="identity"),
    pytest.param(lambda: graphs.conv_bn_relu_conv(weights="cast"), id="cast-fp16"),
    pytest.param(lambda: graphs.conv_bn_relu_conv(opset=11), id="opset11"),
    pytest.param(graphs.nhwc_input, id="nhwc-input"),
])
def test_storage_opset_and_layout_variants_analyse_alike(make) -> None:
    base = analyze(graphs.conv_bn_relu_conv())
    a = analyze(make())
    assert summary(a) == summary(base)
    assert a.cost.cost(a.full_keep()) == base.cost.cost(base.full_keep())
    half = {group(a, "conv0").id: [0, 1, 2, 3]}
    assert a.cost.cost(a.keep_vector(half)) == base.cost.cost(base.keep_vector(half))
    assert not any(n.op_type in ("Constant", "Cast", "Identity") for n in a.graph.nodes)
    assert sorted(rm.member.tensor for rm in a.groups.members) == sorted(
        rm.member.tensor for rm in base.groups.members)


@pytest.mark.parametrize("weights", ["constant", "identity", "cast"])
def test_folded_weights_count_once(weights: graphs.WeightStorage) -> None:
    """Folding Constant/Identity/Cast weights leaves no unused source initializer to count."""
    base = analyze(graphs.conv_bn_relu_conv())
    a = analyze(graphs.conv_bn_relu_conv(weights=weights))
    used = {x for n in a.graph.nodes for x in n.inputs} | set(a.graph.outputs)
    assert sorted(t for t in a.graph.initializers if t not in used) == []
    half = {group(a, "conv0").id: [0, 1, 2, 3]}
    assert a.params == base.params
    assert a.cost.params(a.keep_vector(half)) == base.cost.params(base.keep_vector(half))


def test_opset11_is_converted_to_13() -> None:
    a = analyze(graphs.conv_bn_relu_conv(opset=11))
    assert (a.graph.original_opset, a.graph.opset) == (11, 13)


def test_opset9_pad_and_upsample_attributes_load() -> None:
    a = analyze(graphs.opset9_upsample_pad())
    assert (a.graph.original_opset, a.graph.opset) == (9, 13)
    assert summary(a) == CHAIN
    assert [i.name for i in a.graph.inputs] == ["x"]  # initializers listed as inputs are dropped
    assert {n.op_type for n in a.graph.nodes} >= {"Pad", "Resize"}  # Upsample became Resize
    # conv1 runs on the padded, upsampled (N,8,20,20) map
    assert a.cost.node_macs(a.full_keep())["conv1"] == 4 * 8 * 9 * 20 * 20


# --- residual couplings ----------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Max"])
def test_binary_op_ties_its_producers(op: str) -> None:
    a = analyze(graphs.residual(op))
    assert summary(a) == [
        INPUT,
        (("conv0",), ("conv_a", "conv_b"), 6, 6, True),
        (("conv_a", "conv_b"), ("conv_c",), 8, 8, True),
        (("conv_c",), (), 4, 4, False),
    ]
    g = group(a, "conv_a")
    assert units(member(a, "conv_a", "out")) == units(member(a, "conv_b", "out")) == all_units(g)


def test_identity_shortcut_ties_block_input_and_output() -> None:
    a = analyze(graphs.residual_identity())
    assert summary(a) == [
        INPUT,
        (("conv0", "conv1"), ("conv1", "conv2"), 8, 8, True),
        (("conv2",), (), 4, 4, False),
    ]


# --- concat / split / slice ------------------------------------------------------------------

@pytest.mark.parametrize("axis", [1, -3])
def test_concat_on_channels_keeps_producers_apart_at_offsets(axis: int) -> None:
    a = analyze(graphs.concat_channels(axis))
    assert summary(a) == [
        INPUT,
        (("conv0",), ("conv_a", "conv_b"), 4, 4, True),
        (("conv_a",), ("conv_c",), 3, 3, True),
        (("conv_b",), ("conv_c",), 5, 5, True),
        (("conv_c",), (), 4, 4, False),
    ]
    ga, gb = group(a, "conv_a"), group(a, "conv_b")
    # conv_c's input channels 0..2 are conv_a's, 3..7 conv_b's
    assert units(member(a, "conv_c", "in")) == all_units(ga) + all_units(gb)
    assert member(a, "conv_c", "in").member.axis == 1


def test_concat_with_the_graph_input_freezes_only_the_input_part() -> None:
    a = analyze(graphs.concat_with_input())
    assert summary(a) == [
        INPUT,
        (("conv0",), ("conv1",), 5, 5, True),
        ((), ("conv1",), 3, 3, False),
        (("conv1",), (), 4, 4, False),
    ]
    frozen = a.channel_groups[2]
    assert "untracked input x of Concat cat" in frozen.reason
    assert units(member(a, "conv1", "in")) == all_units(frozen) + all_units(group(a, "conv0"))


def test_concat_on_another_axis_ties_inputs() -> None:
    a = analyze(graphs.concat_spatial())
    assert summary(a) == [
        INPUT,
        (("conv0",), ("conv_a", "conv_b"), 4, 4, True),
        (("conv_a", "conv_b"), ("conv_c",), 6, 6, True),
        (("conv_c",), (), 4, 4, False),
    ]
    g = group(a, "conv_a")
    assert units(member(a, "conv_b", "out")) == units(member(a, "conv_c", "in")) == all_units(g)


@pytest.mark.parametrize("sizes,opset", [
    pytest.param((3, 5), 17, id="sizes-input"),
    pytest.param((3, 5), 11, id="sizes-attribute-opset11"),
    pytest.param(None, 17, id="equal"),
    pytest.param(None, 18, id="num_outputs-opset18"),
])
def test_split_on_channels_gives_each_consumer_its_part(sizes, opset: int) -> None:
    a = analyze(graphs.split_channels(sizes, opset=opset))
    first = (sizes or (4, 4))[0]
    assert summary(a) == [
        INPUT,
        (("conv0",), ("conv_a", "conv_b"), 8, 8, True),
        (("conv_a",), (), 4, 4, False),
        (("conv_b",), (), 4, 4, False),
    ]
    g = group(a, "conv0")
    split = member(a, "split", "split")
    assert (split.member.axis, split.member.parts) == (1, (first, 8 - first))
    assert units(split) == all_units(g)
    assert units(member(a, "conv_a", "in")) == all_units(g)[:first]
    assert units(member(a, "conv_b", "in")) == all_units(g)[first:]


@pytest.mark.parametrize("start,end,axis,opset,kept", [
    pytest.param(2, 6, 1, 17, (2, 6), id="middle"),
    pytest.param(-5, 2**63 - 1, -3, 17, (3, 8), id="negative-start-huge-end"),
    pytest.param(2, 6, 1, 9, (2, 6), id="attributes-opset9"),
])
def test_slice_on_channels_maps_the_kept_range(start: int, end: int, axis: int, opset: int, kept) -> None:
    a = analyze(graphs.slice_channels(start, end, axis=axis, opset=opset))
    assert summary(a) == [INPUT, (("conv0",), ("conv1",), 8, 8, True), (("conv1",), (), 4, 4, False)]
    g = group(a, "conv0")
    cut = member(a, "cut", "slice")
    assert cut.member.parts == kept
    assert units(cut) == all_units(g)
    assert units(member(a, "conv1", "in")) == all_units(g)[kept[0]:kept[1]]


# --- depthwise / grouped ---------------------------------------------------------------------

@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_ties_output_to_input_channels(multiplier: int) -> None:
    a = analyze(graphs.depthwise(multiplier))
    # The depthwise conv is neither producer nor consumer: it only carries conv0's channels.
    assert summary(a) == [INPUT, (("conv0",), ("conv2",), 4, 4, True), (("conv2",), (), 4, 4, False)]
    g = group(a, "conv0")
    repeated = np.repeat(all_units(g), multiplier).tolist()  # output 2i, 2i+1 read input i
    assert units(member(a, "dw", "out")) == repeated
    assert units(member(a, "dw", "param")) == repeated
    assert units(member(a, "dw", "group_attr")) == all_units(g)
    assert units(member(a, "conv2", "in")) == repeated
    assert not [rm for rm in a.groups.members if rm.member.node == "dw" and rm.member.kind == "in"]
    # removing 2 of conv0's 4 channels halves the depthwise conv's MACs
    keep = a.keep_vector({g.id: [0, 2]})
    assert a.cost.node_macs(keep)["dw"] == 4 * multiplier * 9 * 64 // 2


def test_grouped_conv_ties_channel_j_of_every_conv_group() -> None:
    """Deliberate: a group=2 conv keeps its conv groups equal, so channel j and j+4 are one unit."""
    a = analyze(graphs.grouped_conv(2))
    assert summary(a) == [
        INPUT,
        (("conv0",), ("gconv",), 4, 8, True),
        (("gconv",), ("conv2",), 4, 8, True),
        (("conv2",), (), 4, 4, False),
    ]
    g0, g1 = group(a, "conv0"), group(a, "gconv")
    assert g0.channel_units.tolist() == g1.channel_units.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert units(member(a, "gconv", "in")) == all_units(g0)[:4]  # weight axis 1 holds 8/2 channels
    assert units(member(a, "gconv", "out")) == all_units(g1)
    # keep 2 of 4 units on both sides: gconv becomes 4 -> 4 with group 2, a quarter of its MACs
    keep = a.keep_vector({g0.id: [0, 1], g1.id: [0, 1]})
    assert a.cost.node_macs(keep)["gconv"] == 4 * 2 * 9 * 64


# --- squeeze-and-excitation and attention ----------------------------------------------------

def test_se_block_ties_excitation_to_the_feature_map() -> None:
    a = analyze(graphs.se_block())
    assert summary(a) == [
        INPUT,
        (("conv0", "conv_e"), ("conv_r", "conv2"), 8, 8, True),
        (("conv_r",), ("conv_e",), 2, 2, True),
        (("conv2",), (), 4, 4, False),
    ]
    g = group(a, "conv0")
    assert units(member(a, "conv_e", "out")) == units(member(a, "conv_r", "in")) == all_units(g)


def test_se_block_with_gemm() -> None:
    a = analyze(graphs.se_block_gemm())
    assert summary(a) == [
        INPUT,
        (("conv0", "fc_e"), ("fc_r", "conv2"), 8, 8, True),
        (("fc_r",), ("fc_e",), 2, 2, True),
        (("conv2",), (), 4, 4, False),
    ]
    g = group(a, "conv0")
    assert units(member(a, "fc_e", "out")) == units(member(a, "fc_r", "in")) == all_units(g)
    assert member(a, "fc_e", "out").member.axis == 0  # transB=1: weight (8, 2)


def test_single_channel_attention_map_broadcasts_without_freezing() -> None:
    a = analyze(graphs.spatial_attention())
    assert summary(a) == [
        INPUT,
        (("conv0",), ("conv_s", "conv2"), 8, 8, True),
        (("conv_s",), (), 1, 1, False),
        (("conv2",), (), 4, 4, False),
    ]
    assert "broadcasts a single channel" in reason(a, "conv_s")


# --- classifier heads ------------------------------------------------------------------------

def test_flatten_then_gemm_repeats_each_channel_hw_times() -> None:
    a = analyze(graphs.flatten_gemm())
    assert summary(a) == [
        INPUT,
        (("conv0",), ("fc",), 4, 4, True),
        (("fc",), ("fc2",), 10, 10, True),
        (("fc2",), (), 3, 3, False),
    ]
    g = group(a, "conv0")
    fc_in = member(a, "fc", "in")
    assert fc_in.member.axis == 1  # transB=1: weight (10, 64)
    assert units(fc_in) == np.repeat(all_units(g), 16).tolist()  # feature 16*c + s is channel c
    keep = a.keep_vector({g.id: [1, 3]})
    assert a.cost.node_macs(keep)["fc"] == 32 * 10


def test_reshape_then_gemm_adds_a_reshape_member() -> None:
    a = analyze(graphs.reshape_gemm())
    assert summary(a) == [INPUT, (("conv0",), ("fc",), 4, 4, True), (("fc",), (), 10, 10, False)]
    g = group(a, "conv0")
    flat = member(a, "flat", "reshape")
    assert (flat.member.tensor, flat.member.axis) == ("flat.shape", 1)
    assert units(flat) == units(member(a, "fc", "in")) == np.repeat(all_units(g), 16).tolist()


def test_flatten_then_matmul_with_bias_add() -> None:
    a = analyze(graphs.flatten_matmul())
    assert summary(a) == [
        INPUT,
        (("conv0",), ("mm",), 4, 4, True),
        (("mm",), ("mm2",), 10, 10, True),
        (("mm2",), (), 3, 3, False),
    ]
    mm_in = member(a, "mm", "in")
    assert mm_in.member.axis == 0
    assert units(mm_in) == np.repeat(all_units(group(a, "conv0")), 16).tolist()
    bias = member(a, "mm_bias", "param")
    assert (bias.member.tensor, units(bias)) == ("mm.bias", all_units(group(a, "mm")))


@pytest.mark.parametrize("make", [
    pytest.param(graphs.reduce_mean_gemm, id="reducemean-axes-attribute"),
    pytest.param(lambda: graphs.reduce_mean_gemm(18), id="reducemean-axes-input-opset18"),
    pytest.param(graphs.gap_squeeze_gemm, id="gap-squeeze"),
])
def test_global_pooling_to_2d_then_gemm(make) -> None:
    a = analyze(make())
    assert summary(a) == [INPUT, (("conv0",), ("fc",), 8, 8, True), (("fc",), (), 10, 10, False)]
    assert units(member(a, "fc", "in")) == all_units(group(a, "conv0"))


@pytest.mark.parametrize("entry,prunable", [(-1, True), (64, False)])
def test_computed_reshape_shape(entry: int, prunable: bool) -> None:
    """`x.view(x.size(0), -1)` follows pruning; a literal 64 in the computed shape would not."""
    a = analyze(graphs.reshape_computed(entry))
    g = group(a, "conv0")
    assert g.prunable is prunable
    assert not [rm for rm in a.groups.members if rm.member.kind == "reshape"]  # nothing to rewrite
    if prunable:
        assert g.consumers == ("fc",)
        assert units(member(a, "fc", "in")) == np.repeat(all_units(g), 16).tolist()
    else:
        assert "Reshape target shape holds the channel count" in g.reason


# --- shuffles, channels-last, layout ops -----------------------------------------------------

def test_channel_shuffle_ties_groups_and_maps_shuffled_positions() -> None:
    a = analyze(graphs.channel_shuffle())
    assert summary(a) == [
        INPUT,
        (("conv0",), ("conv_a", "conv_b"), 4, 8, True),
        (("conv_a",), (), 4, 4, False),
        (("conv_b",), (), 4, 4, False),
    ]
    g = group(a, "conv0")
    assert g.channel_units.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # channel j and 4+j: one unit
    r1 = member(a, "r1", "reshape")
    assert (r1.member.axis, units(r1)) == (2, all_units(g)[:4])  # (N, 2, 4, H, W): entry 2 shrinks
    # After the shuffle, position p = 2*j + s holds conv0's channel s*4 + j.
    shuffled = [unit_of(g, s * 4 + j) for j in range(4) for s in range(2)]
    r2 = member(a, "r2", "reshape")
    assert (r2.member.axis, units(r2)) == (1, shuffled)
    assert member(a, "split", "split").member.parts == (4, 4)
    assert units(member(a, "conv_a", "in")) == shuffled[:4]
    assert units(member(a, "conv_b", "in")) == shuffled[4:]


def test_channels_last_mlp_hidden_group_is_prunable() -> None:
    a = analyze(graphs.channels_last_mlp())
    assert summary(a) == [
        INPUT,
        (("conv0", "mm2"), ("mm1", "conv2"), 8, 8, True),
        (("mm1",), ("mm2",), 32, 32, True),
        (("conv2",), (), 4, 4, False),
    ]
    g, hidden = group(a, "conv0"), group(a, "mm1")
    assert (member(a, "mm1", "in").member.axis, units(member(a, "mm1", "in"))) == (0, all_units(g))
    assert (member(a, "mm1", "out").member.axis, units(member(a, "mm1", "out"))) == (1, all_units(hidden))
    assert units(member(a, "mm2", "in")) == all_units(hidden)
    keep = a.keep_vector({hidden.id: range(8)})
    macs = a.cost.node_macs(keep)
    assert (macs["mm1"], macs["mm2"]) == (64 * 8 * 8, 64 * 8 * 8)  # 32 -> 8 hidden, 64 rows


def test_matmul_over_width_passes_channels_and_scales_its_macs() -> None:
    a = analyze(graphs.matmul_spatial())
    assert summary(a) == CHAIN
    g = group(a, "conv0")
    assert a.cost.node_macs(a.full_keep())["mix"] == 64 * 8 * 8  # rows N*C*H = 64
    assert a.cost.node_macs(a.keep_vector({g.id: [0, 1, 2, 3]}))["mix"] == 32 * 8 * 8


def test_expand_that_does_not_reach_the_channels_passes() -> None:
    a = analyze(graphs.expand_spatial())
    assert summary(a) == CHAIN


def test_conv_transpose_consumes_and_produces() -> None:
    a = analyze(graphs.conv_transpose())
    assert summary(a) == [
        INPUT,
        (("conv0",), ("up",), 8, 8, True),
        (("up",), ("conv2",), 4, 4, True),
        (("conv2",), (), 4, 4, False),
    ]
    assert (member(a, "up", "in").member.axis, units(member(a, "up", "in"))) == (0, all_units(group(a, "conv0")))
    assert (member(a, "up", "out").member.axis, units(member(a, "up", "out"))) == (1, all_units(group(a, "up")))
    assert a.cost.node_macs(a.full_keep())["up"] == 8 * 4 * 4 * 64  # every input pixel scatters 2x2


# --- per-channel constants and passthrough ---------------------------------------------------

def test_per_channel_constants_become_param_members() -> None:
    a = analyze(graphs.per_channel_constants())
    assert summary(a) == CHAIN
    g = group(a, "conv0")
    params = {(rm.member.node, rm.member.tensor, rm.member.axis): units(rm)
              for rm in a.groups.members if rm.member.kind == "param" and rm.member.node != "conv1"}
    assert params == {
        ("bias", "bias.value", 1): all_units(g),      # (1, 8, 1, 1)
        ("mul", "mul.value", 0): all_units(g),        # (8, 1, 1)
        ("prelu", "prelu.slope", 0): all_units(g),    # (8, 1, 1)
        ("inorm", "inorm.scale", 0): all_units(g),
        ("inorm", "inorm.bias", 0): all_units(g),
    }
    # params: conv0 8*3*9, five per-channel vectors of 8, conv1 4*8*9 + 4
    assert a.params == 216 + 5 * 8 + 288 + 4
    assert a.cost.params(a.keep_vector({g.id: [0, 1, 2, 3]})) == 108 + 5 * 4 + 144 + 4


@pytest.mark.parametrize("op", graphs.PASSTHROUGH_OPS)
def test_passthrough_ops_keep_the_group(op: str) -> None:
    a = analyze(graphs.passthrough(op))
    assert summary(a) == CHAIN
    assert units(member(a, "conv1", "in")) == all_units(group(a, "conv0"))


# --- what freezes ----------------------------------------------------------------------------

@pytest.mark.parametrize("make,why", [
    pytest.param(graphs.layernorm_channels, "LayerNormalization mixes values across channels", id="layernorm"),
    pytest.param(graphs.pad_channels, "Pad adds channels", id="pad-channels"),
    pytest.param(graphs.softmax_channels, "Softmax mixes values across channels", id="softmax"),
    pytest.param(lambda: graphs.softmax_channels(11), "Softmax mixes values across channels", id="softmax-opset11"),
    pytest.param(graphs.unknown_op, "no rule for com.example.Mystery (odd)", id="custom-op"),
    pytest.param(lambda: graphs.unknown_op("GridSample"), "no rule for GridSample (odd)", id="gridsample"),
])
def test_ops_that_mix_or_are_unknown_freeze_the_group(make, why: str) -> None:
    """The rule stops following conv0's channels there: conv1 reads channels of no producer."""
    a = analyze(make())
    width = 10 if "Pad" in why else 8
    assert summary(a) == [
        INPUT,
        (("conv0",), (), 8, 8, False),
        ((), ("conv1",), width, width, False),
        (("conv1",), (), 4, 4, False),
    ]
    assert why in reason(a, "conv0")
    assert "not tracked" in a.channel_groups[2].reason
    assert not a.prunable()


def test_conv_output_that_is_a_graph_output_freezes() -> None:
    a = analyze(graphs.conv_graph_output())
    assert summary(a) == [INPUT, (("conv0",), ("conv1",), 8, 8, False), (("conv1",), (), 4, 4, False)]
    assert reason(a, "conv0") == "graph output y0"


def test_excluded_node_freezes_its_group() -> None:
    a = analyze(graphs.residual_identity(), exclude=["conv1"])
    assert reason(a, "conv0") == "excluded by the user (conv1)"
    assert [g.prunable for g in a.channel_groups] == [False, False, False]
    # A node that produces no channels of its own: the channels it carries are kept.
    a = analyze(graphs.depthwise(), exclude=["dw"])
    assert reason(a, "conv0") == "excluded by the user (dw)"
    a = analyze(graphs.conv_bn_relu_conv(), exclude=["bn0"])
    assert reason(a, "conv0") == "excluded by the user (bn0)"
    with pytest.raises(InputError, match="exclude names no node: nope"):  # the API names its parameter (the CLI: --exclude)
        analyze(graphs.residual_identity(), exclude=["nope"])


# --- cost model ------------------------------------------------------------------------------

def test_cost_of_two_convs_by_hand() -> None:
    """conv0 3->8 and conv1 8->4, 3x3 on 8x8 (64 positions), with biases and a BatchNormalization."""
    a = analyze(graphs.conv_bn_relu_conv())
    full_macs = 8 * 3 * 9 * 64 + 4 * 8 * 9 * 64
    full_params = (8 * 3 * 9 + 8) + 4 * 8 + (4 * 8 * 9 + 4)
    assert a.cost.cost(a.full_keep()) == (full_macs, full_params) == (32256, 548)
    assert (a.macs, a.params) == (full_macs, full_params)
    g = group(a, "conv0")
    keep = a.keep_vector({g.id: [0, 2, 5, 7]})
    assert keep.sum() == a.groups.num_units - 4
    half_macs = 4 * 3 * 9 * 64 + 4 * 4 * 9 * 64
    half_params = (4 * 3 * 9 + 4) + 4 * 4 + (4 * 4 * 9 + 4)
    assert a.cost.cost(keep) == (half_macs, half_params) == (16128, 276)
    assert a.cost.node_macs(keep) == {"conv0": 4 * 3 * 9 * 64, "conv1": 4 * 4 * 9 * 64}
    masks = a.masks_from_keep(keep)
    assert list(masks) == [g.id] and masks[g.id].tolist() == [0, 2, 5, 7]


# --- bad input -------------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        analyze(tmp_path / "nope.onnx")
    assert "no such file" in one_line(err.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        analyze(tmp_path)
    assert "directory" in one_line(err.value)


def test_file_that_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for\n" * 20)
    with pytest.raises(InputError) as err:
        analyze(path)
    assert str(path) in one_line(err.value)


def test_truncated_protobuf(tmp_path: Path) -> None:
    data = graphs.conv_bn_relu_conv().SerializeToString()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        analyze(path)
    assert str(path) in one_line(err.value)


def test_graph_without_conv(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(graphs.no_conv(), str(path))
    with pytest.raises(UnsupportedModelError) as err:
        analyze(path)
    assert "no Conv" in one_line(err.value)
    assert isinstance(err.value, OnnxPruneError)


def test_dynamic_spatial_dims_need_input_shape() -> None:
    model = graphs.conv_bn_relu_conv()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(InputError) as err:
        analyze(model)
    assert "input_shapes x:1x3x?x?" in one_line(err.value)  # the API names its parameter
    a = analyze(model, input_shapes={"x": (1, 3, 16, 16)})
    assert a.macs == (8 * 3 * 9 + 4 * 8 * 9) * 256
