"""Tiny ONNX graphs built with `onnx.helper`, one per op rule and per coupling pattern (test support).

Every builder returns a fresh `onnx.ModelProto` (opset 17 and IR version 10 unless told otherwise,
so onnxruntime 1.31 runs it) with seeded random float32 weights. Inputs are NCHW `(N, 3, 8, 8)`
with a dynamic batch `N`. Every node has an explicit name (`conv0`, `conv_a`, `add`...), which is
what the tests assert on; graph outputs are named `y` (or `y0`, `y1`...).

Convolutions are 3x3 with padding 1 unless told otherwise, so the spatial size stays 8x8.

Usage::

    from tests import graphs
    model = graphs.conv_bn_relu_conv()
    a = onnxprune.deps.analyze(model)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WeightStorage = Literal["initializer", "constant", "identity", "cast"]

IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 writes 14 by default
CUSTOM_DOMAIN = "com.example"


class GraphBuilder:
    """Accumulates nodes, seeded random weights and inputs of one tiny graph.

    `weights` says how weights are stored, as different exporters do:
    `"initializer"` (torch), `"constant"` (paddle2onnx: `Constant` nodes, small constants too),
    `"identity"` (initializer behind an `Identity` node), `"cast"` (float16 initializer behind a
    `Cast` to float).
    """

    def __init__(self, seed: int = 0, weights: WeightStorage = "initializer") -> None:
        self.rng = np.random.default_rng(seed)
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []

    # --- tensors ---------------------------------------------------------------------------
    def input(self, name: str = "x", shape: Sequence[int | str] = ("N", 3, 8, 8)) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def const(self, name: str, value: Any) -> str:
        """A constant (shape, axes, scalar...): an initializer, or a `Constant` node in "constant" mode."""
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        tensor = numpy_helper.from_array(arr, name)
        if self.weights == "constant":
            self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const", value=tensor))
        else:
            self.initializers.append(tensor)
        return name

    def weight(self, name: str, shape: Sequence[int], kind: str = "normal") -> str:
        """A random float32 weight of `shape`, stored the way `self.weights` says."""
        if kind == "positive":  # BN scale and variance, InstanceNormalization scale
            arr = self.rng.uniform(0.5, 1.5, size=tuple(shape)).astype(np.float32)
        else:
            arr = (self.rng.standard_normal(tuple(shape)) * 0.2).astype(np.float32)
        if self.weights in ("initializer", "constant"):
            return self.const(name, arr)
        raw = f"{name}_raw"
        if self.weights == "identity":
            self.initializers.append(numpy_helper.from_array(arr, raw))
            self.nodes.append(helper.make_node("Identity", [raw], [name], name=f"{name}_identity"))
        else:  # cast
            self.initializers.append(numpy_helper.from_array(arr.astype(np.float16), raw))
            self.nodes.append(helper.make_node("Cast", [raw], [name], name=f"{name}_cast", to=TensorProto.FLOAT))
        return name

    # --- nodes -----------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], name: str, outputs: int = 1, domain: str = "",
           **attrs: Any) -> str:
        """Add a node; returns its (first) output `<name>_out` (more outputs: `<name>_out1`...)."""
        outs = [f"{name}_out"] + [f"{name}_out{i}" for i in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain or None,
                                           **attrs))
        return outs[0]

    def outputs_of(self, name: str, count: int) -> list[str]:
        return [f"{name}_out"] + [f"{name}_out{i}" for i in range(1, count)]

    def conv(self, x: str, name: str, c_in: int, c_out: int, k: int = 3, group: int = 1,
             bias: bool = True, stride: int = 1) -> str:
        w = self.weight(f"{name}.weight", (c_out, c_in // group, k, k))
        inputs = [x, w]
        if bias:
            inputs.append(self.weight(f"{name}.bias", (c_out,)))
        return self.op("Conv", inputs, name, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride],
                       group=group)

    def bn(self, x: str, name: str, c: int) -> str:
        params = [
            self.weight(f"{name}.weight", (c,), "positive"),
            self.weight(f"{name}.bias", (c,)),
            self.weight(f"{name}.running_mean", (c,)),
            self.weight(f"{name}.running_var", (c,), "positive"),
        ]
        return self.op("BatchNormalization", [x, *params], name, epsilon=1e-5)

    def gemm(self, x: str, name: str, k: int, n: int, bias: bool = True) -> str:
        inputs = [x, self.weight(f"{name}.weight", (n, k))]
        if bias:
            inputs.append(self.weight(f"{name}.bias", (n,)))
        return self.op("Gemm", inputs, name, transB=1)

    def model(self, outputs: Sequence[str], opset: int = 17, ir_version: int = IR_VERSION,
              extra_opsets: Sequence[tuple[str, int]] = (), initializers_as_inputs: bool = False,
              name: str = "tiny") -> onnx.ModelProto:
        """Wrap everything into a model whose graph outputs are `outputs`, renamed `y`/`y0`, `y1`..."""
        final = ["y"] if len(outputs) == 1 else [f"y{i}" for i in range(len(outputs))]
        nodes = list(self.nodes)
        for src, dst in zip(outputs, final):  # rename the producing node's output
            for node in nodes:
                for i, out in enumerate(node.output):
                    if out == src:
                        node.output[i] = dst
                for i, inp in enumerate(node.input):
                    if inp == src:
                        node.input[i] = dst
        inputs = list(self.inputs)
        if initializers_as_inputs:  # IR < 4 exports list every initializer as a graph input
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.initializers]
        graph = helper.make_graph(
            nodes, name, inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in final],
            initializer=self.initializers,
        )
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
        model = helper.make_model(graph, ir_version=ir_version, opset_imports=opsets, producer_name="tests.graphs")
        _declare_output_shapes(model)
        return model


def _declare_output_shapes(model: onnx.ModelProto) -> None:
    """Give graph outputs the shapes shape inference finds (the checker wants one); rank 4 if unknown."""
    inferred = onnx.shape_inference.infer_shapes(model)
    found = {vi.name: vi for vi in inferred.graph.output if vi.type.tensor_type.HasField("shape")}
    for out in model.graph.output:
        if out.name in found:
            out.CopyFrom(found[out.name])
        else:  # after an op shape inference does not know (custom domain)
            out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [None] * 4))


# --- plain chains ----------------------------------------------------------------------------

def conv_bn_relu_conv(opset: int = 17, weights: WeightStorage = "initializer") -> onnx.ModelProto:
    """The smallest prunable network: one group (conv0's 8 channels) between two convs.

    ```
    x (N,3,8,8)
      │
    conv0 3->8 ─ bn0 ─ relu0
      │ (N,8,8,8)
    conv1 8->4
      │
      y (N,4,8,8)
    ```
    """
    b = GraphBuilder(weights=weights)
    x = b.input()
    h = b.op("Relu", [b.bn(b.conv(x, "conv0", 3, 8), "bn0", 8)], "relu0")
    return b.model([b.conv(h, "conv1", 8, 4)], opset=opset)


def nhwc_input() -> onnx.ModelProto:
    """`conv_bn_relu_conv` with a channels-last input, as tf2onnx exports it.

    ```
    x (N,8,8,3)
      │
    to_nchw Transpose(0,3,1,2)
      │ (N,3,8,8)
    conv0 3->8 ─ bn0 ─ relu0 ─ conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    x = b.op("Transpose", [b.input("x", ("N", 8, 8, 3))], "to_nchw", perm=[0, 3, 1, 2])
    h = b.op("Relu", [b.bn(b.conv(x, "conv0", 3, 8), "bn0", 8)], "relu0")
    return b.model([b.conv(h, "conv1", 8, 4)])


def opset9_upsample_pad() -> onnx.ModelProto:
    """An opset-9 export (IR 4, initializers also listed as inputs): Pad and Upsample of that era.

    ```
    x (N,3,8,8)
      │
    conv0 3->8 ─ bn0 ─ relu0
      │
    pad0 Pad(pads attribute, spatial only)   (N,8,10,10)
      │
    up0 Upsample(scales input [1,1,2,2])     (N,8,20,20)
      │
    conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    x = b.input()
    h = b.op("Relu", [b.bn(b.conv(x, "conv0", 3, 8), "bn0", 8)], "relu0")
    h = b.op("Pad", [h], "pad0", mode="constant", pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0)
    h = b.op("Upsample", [h, b.const("up0.scales", np.array([1, 1, 2, 2], np.float32))], "up0", mode="nearest")
    return b.model([b.conv(h, "conv1", 8, 4)], opset=9, ir_version=4, initializers_as_inputs=True)


# --- residual couplings ----------------------------------------------------------------------

def residual(op: str = "Add") -> onnx.ModelProto:
    """Two convs joined by a binary element-wise op (`op` in Add, Sub, Mul, Max): one group.

    ```
    x ─ conv0 3->6 ─┬─ conv_a 6->8 ─ relu_a ─┐
                    └─ conv_b 6->8 ──────────┴─ join (op) ─ conv_c 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 6)
    left = b.op("Relu", [b.conv(h, "conv_a", 6, 8)], "relu_a")
    right = b.conv(h, "conv_b", 6, 8)
    return b.model([b.conv(b.op(op, [left, right], "join"), "conv_c", 8, 4)])


def residual_identity() -> onnx.ModelProto:
    """A ResNet basic block with an identity shortcut: conv0 and conv1 are one group.

    ```
    x ─ conv0 3->8 ─ relu0 ─┬─ conv1 8->8 ─┐
                            └──────────────┴─ add ─ relu1 ─ conv2 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("Relu", [b.conv(b.input(), "conv0", 3, 8)], "relu0")
    s = b.op("Add", [b.conv(h, "conv1", 8, 8), h], "add")
    return b.model([b.conv(b.op("Relu", [s], "relu1"), "conv2", 8, 4)])


# --- concat / split / slice ------------------------------------------------------------------

def concat_channels(axis: int = 1) -> onnx.ModelProto:
    """Concat on the channel axis: conv_c sees conv_a's 3 channels, then conv_b's 5.

    ```
    x ─ conv0 3->4 ─┬─ conv_a 4->3 ─┐
                    └─ conv_b 4->5 ─┴─ cat Concat(axis) (N,8,8,8) ─ conv_c 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 4)
    cat = b.op("Concat", [b.conv(h, "conv_a", 4, 3), b.conv(h, "conv_b", 4, 5)], "cat", axis=axis)
    return b.model([b.conv(cat, "conv_c", 8, 4)])


def concat_with_input() -> onnx.ModelProto:
    """DenseNet-style Concat of the graph input and a conv output: the input's part stays frozen.

    ```
    x ─┬───────────────┐
       └─ conv0 3->5 ──┴─ cat Concat(axis=1) (N,8,8,8) ─ conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    x = b.input()
    cat = b.op("Concat", [x, b.conv(x, "conv0", 3, 5)], "cat", axis=1)
    return b.model([b.conv(cat, "conv1", 8, 4)])


def concat_spatial() -> onnx.ModelProto:
    """Concat along H: channel c of both inputs lands in channel c of the output (tied).

    ```
    x ─ conv0 3->4 ─┬─ conv_a 4->6 ─┐
                    └─ conv_b 4->6 ─┴─ cat Concat(axis=2) (N,6,16,8) ─ conv_c 6->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 4)
    cat = b.op("Concat", [b.conv(h, "conv_a", 4, 6), b.conv(h, "conv_b", 4, 6)], "cat", axis=2)
    return b.model([b.conv(cat, "conv_c", 6, 4)])


def split_channels(sizes: Sequence[int] | None = (3, 5), opset: int = 17) -> onnx.ModelProto:
    """Split conv0's 8 channels into parts: sizes given as the opset-13+ input (an attribute before
    opset 13), or equal halves (no sizes; from opset 18 with the `num_outputs` attribute).

    ```
    x ─ conv0 3->8 ─ split Split(axis=1, sizes) ─┬─ part 0 ─ conv_a ─ y0
                                                 └─ part 1 ─ conv_b ─ y1
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    parts = list(sizes) if sizes is not None else [4, 4]
    attrs: dict[str, Any] = {"num_outputs": 2} if sizes is None and opset >= 18 else {}
    if sizes is not None and opset < 13:  # the `split` attribute of opset 2-12
        inputs, attrs = [h], {"split": parts}
    else:
        inputs = [h] + ([b.const("split.sizes", np.array(parts, np.int64))] if sizes is not None else [])
    b.op("Split", inputs, "split", outputs=2, axis=1, **attrs)
    first, second = b.outputs_of("split", 2)
    return b.model([b.conv(first, "conv_a", parts[0], 4), b.conv(second, "conv_b", parts[1], 4)], opset=opset)


def slice_channels(start: int = 2, end: int = 6, axis: int = 1, opset: int = 17) -> onnx.ModelProto:
    """Slice channels [start, end) of conv0 (negative and huge bounds allowed, ONNX-style);
    bounds are inputs from opset 10, attributes before.

    ```
    x ─ conv0 3->8 ─ cut Slice(axes=[axis], starts=[start], ends=[end]) ─ conv1 ->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    if opset < 10:
        cut = b.op("Slice", [h], "cut", starts=[start], ends=[end], axes=[axis])
    else:
        cut = b.op("Slice", [h, b.const("cut.starts", np.array([start], np.int64)),
                             b.const("cut.ends", np.array([end], np.int64)),
                             b.const("cut.axes", np.array([axis], np.int64))], "cut")
    kept = len(range(8)[slice(start, end)])
    return b.model([b.conv(cut, "conv1", kept, 4)], opset=opset)


# --- depthwise / grouped ---------------------------------------------------------------------

def depthwise(multiplier: int = 1) -> onnx.ModelProto:
    """A depthwise conv (group == C_in) ties its output channels to its input channels.

    With channel multiplier m, output channels m*i .. m*i+m-1 read input channel i.

    ```
    x ─ conv0 3->4 ─ relu0 ─ dw 4->4m (group=4) ─ relu1 ─ conv2 4m->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("Relu", [b.conv(b.input(), "conv0", 3, 4)], "relu0")
    h = b.op("Relu", [b.conv(h, "dw", 4, 4 * multiplier, group=4)], "relu1")
    return b.model([b.conv(h, "conv2", 4 * multiplier, 4)])


def grouped_conv(groups: int = 2) -> onnx.ModelProto:
    """A grouped (not depthwise) conv: channel j of every conv group is one unit, on both sides.

    ```
    x ─ conv0 3->8 ─ gconv 8->8 (group=2, W (8,4,3,3)) ─ conv2 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    h = b.conv(h, "gconv", 8, 8, group=groups)
    return b.model([b.conv(h, "conv2", 8, 4)])


# --- squeeze-and-excitation ------------------------------------------------------------------

def se_block() -> onnx.ModelProto:
    """Squeeze-and-excitation with 1x1 convs: conv_e's output scales conv0's channels (tied).

    ```
    x ─ conv0 3->8 ─ relu0 ─┬──────────────────────────────────────────────────────────┐
                            └─ gap ─ conv_r 8->2 (1x1) ─ relu_r ─ conv_e 2->8 ─ gate ─┴─ scale Mul
                                                                     (Sigmoid)            │
                                                                                 conv2 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("Relu", [b.conv(b.input(), "conv0", 3, 8)], "relu0")
    s = b.op("GlobalAveragePool", [h], "gap")
    s = b.op("Relu", [b.conv(s, "conv_r", 8, 2, k=1)], "relu_r")
    s = b.op("Sigmoid", [b.conv(s, "conv_e", 2, 8, k=1)], "gate")
    return b.model([b.conv(b.op("Mul", [h, s], "scale"), "conv2", 8, 4)])


def se_block_gemm() -> onnx.ModelProto:
    """Squeeze-and-excitation with fully connected layers (Flatten, Gemm, Unsqueeze back).

    ```
    x ─ conv0 3->8 ─ relu0 ─┬───────────────────────────────────────────────────────────────┐
                            └─ gap ─ flat ─ fc_r 8->2 ─ relu_r ─ fc_e 2->8 ─ gate ─ unsq ─┴─ scale Mul
                                                                                             │
                                                                                    conv2 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("Relu", [b.conv(b.input(), "conv0", 3, 8)], "relu0")
    s = b.op("Flatten", [b.op("GlobalAveragePool", [h], "gap")], "flat", axis=1)
    s = b.op("Relu", [b.gemm(s, "fc_r", 8, 2)], "relu_r")
    s = b.op("Sigmoid", [b.gemm(s, "fc_e", 2, 8)], "gate")
    s = b.op("Unsqueeze", [s, b.const("unsq.axes", np.array([2, 3], np.int64))], "unsq")
    return b.model([b.conv(b.op("Mul", [h, s], "scale"), "conv2", 8, 4)])


# --- classifier heads ------------------------------------------------------------------------

def flatten_gemm() -> onnx.ModelProto:
    """Flatten then Gemm: each of conv0's 4 channels is 4*4 = 16 consecutive Gemm inputs.

    ```
    x ─ conv0 3->4 ─ pool MaxPool 2x2 (N,4,4,4) ─ flat Flatten (N,64) ─ fc 64->10 ─ relu ─ fc2 10->3 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("MaxPool", [b.conv(b.input(), "conv0", 3, 4)], "pool", kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Flatten", [h], "flat", axis=1)
    h = b.op("Relu", [b.gemm(h, "fc", 64, 10)], "relu")
    return b.model([b.gemm(h, "fc2", 10, 3)])


def reshape_gemm() -> onnx.ModelProto:
    """Reshape to (-1, C*H*W) then Gemm: like `flatten_gemm`, plus a shape constant to rewrite.

    ```
    x ─ conv0 3->4 ─ pool MaxPool 2x2 (N,4,4,4) ─ flat Reshape([-1, 64]) ─ fc 64->10 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("MaxPool", [b.conv(b.input(), "conv0", 3, 4)], "pool", kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Reshape", [h, b.const("flat.shape", np.array([-1, 64], np.int64))], "flat")
    return b.model([b.gemm(h, "fc", 64, 10)])


def flatten_matmul() -> onnx.ModelProto:
    """Flatten then MatMul by a constant and a bias Add (how some exporters write Linear).

    ```
    x ─ conv0 3->4 ─ pool MaxPool 2x2 ─ flat Flatten (N,64) ─ mm MatMul (64,10) ─ mm_bias Add (10,)
                                                                                          │
                                                                   relu ─ mm2 MatMul (10,3) ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("MaxPool", [b.conv(b.input(), "conv0", 3, 4)], "pool", kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Flatten", [h], "flat", axis=1)
    h = b.op("MatMul", [h, b.weight("mm.weight", (64, 10))], "mm")
    h = b.op("Relu", [b.op("Add", [h, b.weight("mm.bias", (10,))], "mm_bias")], "relu")
    return b.model([b.op("MatMul", [h, b.weight("mm2.weight", (10, 3))], "mm2")])


def reduce_mean_gemm(opset: int = 17) -> onnx.ModelProto:
    """Global pooling written as ReduceMean over H, W with keepdims=0, then Gemm
    (axes an attribute up to opset 17, an input from opset 18).

    ```
    x ─ conv0 3->8 ─ mean ReduceMean(axes=[2,3], keepdims=0) (N,8) ─ fc 8->10 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    if opset >= 18:
        h = b.op("ReduceMean", [h, b.const("mean.axes", np.array([2, 3], np.int64))], "mean", keepdims=0)
    else:
        h = b.op("ReduceMean", [h], "mean", axes=[2, 3], keepdims=0)
    return b.model([b.gemm(h, "fc", 8, 10)], opset=opset)


def gap_squeeze_gemm() -> onnx.ModelProto:
    """GlobalAveragePool, then Squeeze of H and W (axes input), then Gemm.

    ```
    x ─ conv0 3->8 ─ gap (N,8,1,1) ─ sq Squeeze(axes=[2,3]) (N,8) ─ fc 8->10 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("GlobalAveragePool", [b.conv(b.input(), "conv0", 3, 8)], "gap")
    h = b.op("Squeeze", [h, b.const("sq.axes", np.array([2, 3], np.int64))], "sq")
    return b.model([b.gemm(h, "fc", 8, 10)])


def conv_transpose() -> onnx.ModelProto:
    """A ConvTranspose consumes conv0's channels (weight axis 0) and produces its own (axis 1).

    ```
    x ─ conv0 3->8 ─ up ConvTranspose 8->4 (k2, s2) (N,4,16,16) ─ conv2 4->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    h = b.op("ConvTranspose", [h, b.weight("up.weight", (8, 4, 2, 2)), b.weight("up.bias", (4,))], "up",
             kernel_shape=[2, 2], strides=[2, 2])
    return b.model([b.conv(h, "conv2", 4, 4)])


def spatial_attention() -> onnx.ModelProto:
    """CBAM-style spatial attention: a 1-channel map scales every channel of conv0 (broadcast).

    conv0's channels stay prunable; conv_s's single channel cannot be removed.

    ```
    x ─ conv0 3->8 ─ relu0 ─┬─────────────────────────────────────────┐
                            └─ conv_s 8->1 ─ gate Sigmoid (N,1,8,8) ─┴─ scale Mul ─ conv2 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("Relu", [b.conv(b.input(), "conv0", 3, 8)], "relu0")
    s = b.op("Sigmoid", [b.conv(h, "conv_s", 8, 1)], "gate")
    return b.model([b.conv(b.op("Mul", [h, s], "scale"), "conv2", 8, 4)])


def matmul_spatial() -> onnx.ModelProto:
    """A MatMul by a constant over the last axis (W): channels pass through on axis 1.

    ```
    x ─ conv0 3->8 ─ mix MatMul (8,8) over W (N,8,8,8) ─ conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    h = b.op("MatMul", [h, b.weight("mix.weight", (8, 8))], "mix")
    return b.model([b.conv(h, "conv1", 8, 4)])


def reshape_computed(channel_entry: int = -1) -> onnx.ModelProto:
    """`x.view(x.size(0), -1)` as the torchscript exporter writes it with a dynamic batch.

    The shape is computed: Concat(batch from Shape, constant [channel_entry]). With -1 the Reshape
    follows any channel count; with 64 (a literal C*H*W) the constant names the channel count.

    ```
    x ─ conv0 3->4 ─ pool MaxPool 2x2 (N,4,4,4) ─┬─────────────────────────────── flat Reshape ─ fc 64->10 ─ y
                                                 └─ shape ─ batch Gather(0) ─ unsq ─ dims Concat ─┘
                                                                                [channel_entry] ┘
    ```
    """
    b = GraphBuilder()
    h = b.op("MaxPool", [b.conv(b.input(), "conv0", 3, 4)], "pool", kernel_shape=[2, 2], strides=[2, 2])
    n = b.op("Gather", [b.op("Shape", [h], "shape"), b.const("batch.index", np.array(0, np.int64))], "batch",
             axis=0)
    n = b.op("Unsqueeze", [n, b.const("unsq.axes", np.array([0], np.int64))], "unsq")
    dims = b.op("Concat", [n, b.const("dims.rest", np.array([channel_entry], np.int64))], "dims", axis=0)
    h = b.op("Reshape", [h, dims], "flat")
    return b.model([b.gemm(h, "fc", 64, 10)])


def expand_spatial() -> onnx.ModelProto:
    """Expand of a pooled (N,8,1,1) tensor along W with a 2-entry shape that does not reach the channels.

    ```
    x ─ conv0 3->8 ─ gap (N,8,1,1) ─ wide Expand([1, 8]) (N,8,1,8) ─ conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("GlobalAveragePool", [b.conv(b.input(), "conv0", 3, 8)], "gap")
    h = b.op("Expand", [h, b.const("wide.shape", np.array([1, 8], np.int64))], "wide")
    return b.model([b.conv(h, "conv1", 8, 4)])


# --- shuffles and channels-last blocks -------------------------------------------------------

def channel_shuffle() -> onnx.ModelProto:
    """ShuffleNet's channel shuffle with 2 groups, then a Split in halves.

    Output position p = 2*j + g holds input channel g*4 + j, so channels j and 4+j are tied.

    ```
    x ─ conv0 3->8 ─ r1 Reshape (N,2,4,8,8) ─ tr Transpose(0,2,1,3,4) ─ r2 Reshape (N,8,8,8)
                                                                              │
                                                 split Split(axis=1, [4, 4]) ─┬─ conv_a 4->4 ─ y0
                                                                              └─ conv_b 4->4 ─ y1
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    h = b.op("Reshape", [h, b.const("r1.shape", np.array([0, 2, 4, 8, 8], np.int64))], "r1")
    h = b.op("Transpose", [h], "tr", perm=[0, 2, 1, 3, 4])
    h = b.op("Reshape", [h, b.const("r2.shape", np.array([0, 8, 8, 8], np.int64))], "r2")
    b.op("Split", [h, b.const("split.sizes", np.array([4, 4], np.int64))], "split", outputs=2, axis=1)
    first, second = b.outputs_of("split", 2)
    return b.model([b.conv(first, "conv_a", 4, 4), b.conv(second, "conv_b", 4, 4)])


def channels_last_mlp() -> onnx.ModelProto:
    """A ConvNeXt-style inverted MLP in channels-last layout with a residual Add.

    ```
    x ─ conv0 3->8 ─┬─ to_nhwc Transpose(0,2,3,1) ─ mm1 MatMul (8,32) ─ act Relu ─ mm2 MatMul (32,8)
                    │                                                                   │
                    │                                             to_nchw Transpose(0,3,1,2)
                    └─────────────────────────────────────────────────────────────── add ─ conv2 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    t = b.op("Transpose", [h], "to_nhwc", perm=[0, 2, 3, 1])
    t = b.op("Relu", [b.op("MatMul", [t, b.weight("mm1.weight", (8, 32))], "mm1")], "act")
    t = b.op("MatMul", [t, b.weight("mm2.weight", (32, 8))], "mm2")
    t = b.op("Transpose", [t], "to_nchw", perm=[0, 3, 1, 2])
    return b.model([b.conv(b.op("Add", [t, h], "add"), "conv2", 8, 4)])


def layernorm_channels() -> onnx.ModelProto:
    """LayerNormalization over the channels (channels-last): freezes conv0's group.

    ```
    x ─ conv0 3->8 ─ to_nhwc Transpose(0,2,3,1) ─ ln LayerNormalization(axis=-1) ─ to_nchw ─ conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    t = b.op("Transpose", [b.conv(b.input(), "conv0", 3, 8)], "to_nhwc", perm=[0, 2, 3, 1])
    t = b.op("LayerNormalization", [t, b.weight("ln.weight", (8,), "positive"), b.weight("ln.bias", (8,))],
             "ln", axis=-1, epsilon=1e-5)
    t = b.op("Transpose", [t], "to_nchw", perm=[0, 3, 1, 2])
    return b.model([b.conv(t, "conv1", 8, 4)])


# --- per-channel constants and passthrough ops -----------------------------------------------

def per_channel_constants() -> onnx.ModelProto:
    """Per-channel constants of every common shape: each becomes a `param` member of conv0's group.

    ```
    x ─ conv0 3->8 (no bias) ─ bias Add (1,8,1,1) ─ mul Mul (8,1,1) ─ prelu PRelu slope (8,1,1)
                                                                                   │
                                  inorm InstanceNormalization scale (8,), B (8,) ─ conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8, bias=False)
    h = b.op("Add", [h, b.weight("bias.value", (1, 8, 1, 1))], "bias")
    h = b.op("Mul", [h, b.weight("mul.value", (8, 1, 1))], "mul")
    h = b.op("PRelu", [h, b.weight("prelu.slope", (8, 1, 1))], "prelu")
    h = b.op("InstanceNormalization", [h, b.weight("inorm.scale", (8,), "positive"),
                                       b.weight("inorm.bias", (8,))], "inorm", epsilon=1e-5)
    return b.model([b.conv(h, "conv1", 8, 4)])


PASSTHROUGH_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "Pad", "Resize", "Dropout", "Clip",
                   "HardSwish", "LeakyRelu", "Identity", "Sigmoid", "Softmax_W")


def passthrough(op: str) -> onnx.ModelProto:
    """One channel-preserving op between two convs: conv0's group passes through it untouched.

    `op` is one of `PASSTHROUGH_OPS` ("Softmax_W" is Softmax over the last axis, W).

    ```
    x ─ conv0 3->8 ─ mid (op) ─ conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    if op in ("MaxPool", "AveragePool"):
        h = b.op(op, [h], "mid", kernel_shape=[2, 2], strides=[2, 2])
    elif op == "Pad":  # spatial padding only
        h = b.op("Pad", [h, b.const("mid.pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], "mid")
    elif op == "Resize":
        h = b.op("Resize", [h, "", b.const("mid.scales", np.array([1, 1, 2, 2], np.float32))], "mid",
                 mode="nearest")
    elif op == "Clip":
        h = b.op("Clip", [h, b.const("mid.min", np.float32(0)), b.const("mid.max", np.float32(6))], "mid")
    elif op == "LeakyRelu":
        h = b.op("LeakyRelu", [h], "mid", alpha=0.1)
    elif op == "Softmax_W":
        h = b.op("Softmax", [h], "mid", axis=-1)
    else:
        h = b.op(op, [h], "mid")
    return b.model([b.conv(h, "conv1", 8, 4)])


# --- what freezes ----------------------------------------------------------------------------

def pad_channels() -> onnx.ModelProto:
    """Pad that adds a zero channel before and after: conv0's group freezes.

    ```
    x ─ conv0 3->8 ─ pad Pad(pads on axis 1: 1, 1) (N,10,8,8) ─ conv1 10->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    h = b.op("Pad", [h, b.const("pad.pads", np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64))], "pad")
    return b.model([b.conv(h, "conv1", 10, 4)])


def softmax_channels(opset: int = 17) -> onnx.ModelProto:
    """Softmax over the channels: every channel depends on all others, conv0's group freezes.

    (Before opset 13, Softmax(axis=1) normalizes over C*H*W together: it freezes too.)

    ```
    x ─ conv0 3->8 ─ soft Softmax(axis=1) ─ conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("Softmax", [b.conv(b.input(), "conv0", 3, 8)], "soft", axis=1)
    return b.model([b.conv(h, "conv1", 8, 4)], opset=opset)


def unknown_op(kind: Literal["custom", "GridSample"] = "custom") -> onnx.ModelProto:
    """An op no rule knows (a custom-domain op, or GridSample) between two convs: conv0's group freezes.

    The GridSample variant has a static batch (its constant grid has batch 1).

    ```
    x ─ conv0 3->8 ─ odd (com.example.Mystery | GridSample with a constant grid) ─ conv1 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    if kind == "custom":
        h = b.op("Mystery", [h], "odd", domain=CUSTOM_DOMAIN)
        return b.model([b.conv(h, "conv1", 8, 4)], extra_opsets=[(CUSTOM_DOMAIN, 1)])
    grid = b.const("odd.grid", b.rng.uniform(-1, 1, size=(1, 8, 8, 2)).astype(np.float32))
    b.inputs[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]))  # grid has batch 1
    h = b.op("GridSample", [h, grid], "odd")
    return b.model([b.conv(h, "conv1", 8, 4)])


def conv_graph_output() -> onnx.ModelProto:
    """conv0's output is both consumed and a graph output: its group freezes.

    ```
    x ─ conv0 3->8 ─┬─ y0
                    └─ relu0 ─ conv1 8->4 ─ y1
    ```
    """
    b = GraphBuilder()
    h = b.conv(b.input(), "conv0", 3, 8)
    y1 = b.conv(b.op("Relu", [h], "relu0"), "conv1", 8, 4)
    return b.model([h, y1])


def no_conv() -> onnx.ModelProto:
    """A valid model without any Conv (an MLP): onnxprune refuses it.

    ```
    x (N,16) ─ fc 16->8 ─ relu ─ fc2 8->4 ─ y
    ```
    """
    b = GraphBuilder()
    h = b.op("Relu", [b.gemm(b.input("x", ("N", 16)), "fc", 16, 8)], "relu")
    return b.model([b.gemm(h, "fc2", 8, 4)])


def all_builders() -> dict[str, Callable[[], onnx.ModelProto]]:
    """Every graph above under a test id (parametrized builders once per variant)."""
    out: dict[str, Callable[[], onnx.ModelProto]] = {
        "conv_bn_relu_conv": conv_bn_relu_conv,
        "conv_bn_relu_conv_opset11": lambda: conv_bn_relu_conv(opset=11),
        "nhwc_input": nhwc_input,
        "opset9_upsample_pad": opset9_upsample_pad,
        "residual_identity": residual_identity,
        "concat_channels": concat_channels,
        "concat_spatial": concat_spatial,
        "concat_with_input": concat_with_input,
        "split_channels": split_channels,
        "split_equal": lambda: split_channels(None),
        "split_num_outputs": lambda: split_channels(None, opset=18),
        "concat_channels_negative_axis": lambda: concat_channels(-3),
        "slice_channels_negative": lambda: slice_channels(-5, 2**63 - 1, axis=-3),
        "slice_channels_opset9": lambda: slice_channels(opset=9),
        "split_channels_opset11": lambda: split_channels(opset=11),
        "softmax_channels_opset11": lambda: softmax_channels(opset=11),
        "conv_transpose": conv_transpose,
        "spatial_attention": spatial_attention,
        "matmul_spatial": matmul_spatial,
        "reshape_computed": reshape_computed,
        "reshape_computed_literal": lambda: reshape_computed(64),
        "expand_spatial": expand_spatial,
        "slice_channels": slice_channels,
        "depthwise": depthwise,
        "depthwise_x2": lambda: depthwise(2),
        "grouped_conv": grouped_conv,
        "se_block": se_block,
        "se_block_gemm": se_block_gemm,
        "flatten_gemm": flatten_gemm,
        "reshape_gemm": reshape_gemm,
        "flatten_matmul": flatten_matmul,
        "reduce_mean_gemm": reduce_mean_gemm,
        "reduce_mean_gemm_opset18": lambda: reduce_mean_gemm(18),
        "gap_squeeze_gemm": gap_squeeze_gemm,
        "channel_shuffle": channel_shuffle,
        "channels_last_mlp": channels_last_mlp,
        "layernorm_channels": layernorm_channels,
        "per_channel_constants": per_channel_constants,
        "pad_channels": pad_channels,
        "softmax_channels": softmax_channels,
        "unknown_op_custom": unknown_op,
        "unknown_op_gridsample": lambda: unknown_op("GridSample"),
        "conv_graph_output": conv_graph_output,
        "no_conv": no_conv,
    }
    for op in ("Add", "Sub", "Mul", "Max"):
        out[f"residual_{op}"] = lambda op=op: residual(op)
    for op in PASSTHROUGH_OPS:
        out[f"passthrough_{op}"] = lambda op=op: passthrough(op)
    for storage in ("constant", "identity", "cast"):
        out[f"conv_bn_relu_conv_{storage}"] = lambda s=storage: conv_bn_relu_conv(weights=s)
    return out
