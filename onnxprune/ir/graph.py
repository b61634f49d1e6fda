"""`LayerGraph`: a frozen, read-only view of a normalized ONNX graph with inferred shapes.

Frozen in fact: the view hands out no live protobuf. Nodes, inputs and initializer metadata are
frozen dataclasses, mappings are read-only, `const()` returns read-only arrays, and `model` is a
copy of the normalized model (edits to it never reach the view). Weight values are written into
a model only by `onnxprune.ir.with_initializers`; structure only by `onnxprune.rewrite`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from onnxprune.errors import InputError, UnsupportedModelError, option
from onnxprune.ir.model import LoadedModel
from onnxprune.numerics import session

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NodeView:
    """One ONNX node, as the analysis sees it."""

    index: int
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    # tensors of this graph read inside the node's subgraphs (If branches, Loop/Scan bodies,
    # nested ones too): consumers like `inputs`, though no input slot names them
    subgraph_inputs: tuple[str, ...] = ()

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


@dataclass(frozen=True)
class Initializer:
    """An initializer's metadata (its values: `LayerGraph.const`)."""

    name: str
    dims: tuple[int, ...]
    data_type: int  # onnx.TensorProto.DataType


@dataclass(frozen=True)
class GraphInput:
    name: str
    shape: tuple[int | str | None, ...]
    elem_type: int


def parse_input_shapes(specs: list[str] | None) -> dict[str, Shape]:
    """Parse `NAME:1x3x224x224` strings (the `--input-shape` flag)."""
    shapes: dict[str, Shape] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise InputError(f"{option('input_shapes')} {spec!r}: expected NAME:1x3x224x224") from None
    return shapes


@dataclass(frozen=True, eq=False)
class LayerGraph:
    """Nodes in topological order, producer/consumer maps, initializers and static shapes.

    Shapes are inferred with the batch dimension set to 1 (and other dynamic dimensions from
    `input_shapes`); they are what the channel rules and the cost model use.
    """

    source: str  # where the model came from (path or "<ModelProto>")
    opset: int  # default-domain opset after normalization
    original_opset: int  # as the file declared it
    nodes: tuple[NodeView, ...]
    inputs: tuple[GraphInput, ...]
    outputs: tuple[str, ...]
    shapes: Mapping[str, Shape]
    initializers: Mapping[str, Initializer]
    _model: onnx.ModelProto = field(repr=False)  # never handed out: `model` copies it
    runtime_checked: bool = False  # onnxruntime loaded the input (`LoadedModel.runtime_checked`)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> onnx.ModelProto:
        """A copy of the normalized model (the view's own is never handed out)."""
        out = onnx.ModelProto()
        out.CopyFrom(self._model)
        return out

    @property
    def loaded(self) -> LoadedModel:
        """The normalized model (a copy) with where it came from."""
        return LoadedModel(self.model, self.source, self.opset, self.original_opset, self.runtime_checked)

    @cached_property
    def producer(self) -> dict[str, NodeView]:
        return {out: n for n in self.nodes for out in n.outputs if out}

    @cached_property
    def consumers(self) -> dict[str, list[tuple[NodeView, int]]]:
        """Tensor -> (node, input slot) reading it; slot -1 for a read inside the node's subgraphs."""
        cons: dict[str, list[tuple[NodeView, int]]] = {}
        for n in self.nodes:
            for i, name in enumerate(n.inputs):
                if name:
                    cons.setdefault(name, []).append((n, i))
            for name in n.subgraph_inputs:
                cons.setdefault(name, []).append((n, -1))
        return cons

    @cached_property
    def by_name(self) -> dict[str, NodeView]:
        return {n.name: n for n in self.nodes}

    def is_const(self, name: str) -> bool:
        return name in self.initializers

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer (cached, read-only), or None for a computed tensor."""
        if not name or name not in self.initializers:
            return None
        arr = self._arrays.get(name)
        if arr is None:
            arr = numpy_helper.to_array(self._protos[name])
            arr.setflags(write=False)
            self._arrays[name] = arr
        return arr

    @cached_property
    def _protos(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self._model.graph.initializer}

    def const_shape(self, name: str) -> Shape | None:
        t = self.initializers.get(name)
        return t.dims if t is not None else None

    def shape(self, name: str) -> Shape | None:
        """Static shape of any tensor (initializers included), or None when unknown."""
        s = self.const_shape(name)
        return s if s is not None else self.shapes.get(name)


def build_graph(loaded: LoadedModel, input_shapes: Mapping[str, Shape] | None = None,
                copy: bool = True) -> LayerGraph:
    """Build the `LayerGraph` of a normalized model (shape inference with static inputs).

    The view keeps a private copy of `loaded.model`; `copy=False` hands the model over instead
    (for a caller that made `loaded` itself and keeps no reference to it, e.g. `analyze`).
    """
    model = loaded.model
    graph = model.graph
    input_shapes = dict(input_shapes or {})
    inputs: list[GraphInput] = []
    fixed: dict[str, Shape] = {}
    for vi in graph.input:
        tt = vi.type.tensor_type
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        inputs.append(GraphInput(vi.name, tuple(dims), tt.elem_type))
        if vi.name in input_shapes:
            shape = input_shapes.pop(vi.name)
            if len(shape) != len(dims):
                raise InputError(
                    f"{option('input_shapes')} {vi.name}: {len(shape)} dims given, the model's input has {len(dims)}"
                )
            for pos, (given, declared) in enumerate(zip(shape, dims)):
                if given < 1:
                    raise InputError(f"--input-shape {vi.name}: dimension {pos} must be positive, got {given}")
                if isinstance(declared, int) and declared > 0 and given != declared:
                    raise InputError(
                        f"--input-shape {vi.name}:{'x'.join(map(str, shape))} contradicts the model's static "
                        f"dimension {pos} ({declared}); only dynamic dimensions can be set"
                    )
            fixed[vi.name] = shape
            continue
        resolved: list[int] = []
        for pos, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                resolved.append(d)
            elif pos == 0:
                resolved.append(1)  # dynamic batch: analyse with batch 1
            else:
                example = "x".join(str(x if isinstance(x, int) and x > 0 else (1 if p == 0 else "?"))
                                   for p, x in enumerate(dims))
                raise InputError(
                    f"input {vi.name!r} has a dynamic dimension {d or '?'!r} at position {pos}: "
                    f"pass {option('input_shapes')} {vi.name}:{example}"
                )
        fixed[vi.name] = tuple(resolved)
    if input_shapes:
        raise InputError(f"{option('input_shapes')} names no graph input: {', '.join(sorted(input_shapes))}")

    if loaded.runtime_checked:  # validated input: it must also run at the shapes analysed
        from onnxprune.ir.validate import check_run

        check_run(model, loaded.source, fixed)
    shapes = _infer_shapes(model, fixed)
    missing = [o for n in graph.node for o in n.output if o and o not in shapes]
    if missing:
        shapes.update(_run_shapes(model, fixed, missing))
    initializers = {t.name: Initializer(t.name, tuple(int(d) for d in t.dims), int(t.data_type))
                    for t in graph.initializer}
    nodes = _toposort(graph, initializers)
    own = model
    if copy:  # the view's private copy: later changes to `loaded.model` cannot reach it
        own = onnx.ModelProto()
        own.CopyFrom(model)
    return LayerGraph(
        source=loaded.source,
        opset=loaded.opset,
        original_opset=loaded.original_opset,
        nodes=nodes,
        inputs=tuple(inputs),
        outputs=tuple(o.name for o in graph.output),
        shapes=MappingProxyType(shapes),
        initializers=MappingProxyType(initializers),
        _model=own,
        runtime_checked=loaded.runtime_checked,
    )


def _infer_shapes(model: onnx.ModelProto, fixed: Mapping[str, Shape]) -> dict[str, Shape]:
    """Shape inference on a weightless copy with the graph inputs fixed to `fixed`."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(_without_weights(model))
    for vi in skeleton.graph.input:
        if vi.name in fixed:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in fixed[vi.name]:
                dims.add().dim_value = int(d)
    del skeleton.graph.value_info[:]
    for out in skeleton.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise UnsupportedModelError(f"shape inference failed: {str(exc).splitlines()[0][:200]}") from None
    shapes: dict[str, Shape] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _run_shapes(model: onnx.ModelProto, fixed: Mapping[str, Shape], names: list[str]) -> dict[str, Shape]:
    """Shapes that static inference could not find, read off one onnxruntime run on zeros.

    Exporters with dynamic axes compute Reshape targets from `Shape` ops, which ONNX's data
    propagation does not always follow (TorchScript's channel shuffle, for instance).
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    for name in names:
        if name not in declared:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        sess = session(probe, log_level=4)
        feeds = {}
        for i in sess.get_inputs():
            dtype = helper.tensor_dtype_to_np_dtype(
                next(v.type.tensor_type.elem_type for v in model.graph.input if v.name == i.name))
            feeds[i.name] = np.zeros(fixed[i.name], dtype=dtype)
        values = sess.run(names, feeds)
    except Exception:
        return {}  # the rules then freeze what they cannot see, with a reason
    return {n: tuple(int(d) for d in v.shape) for n, v in zip(names, values) if hasattr(v, "shape")}


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large initializers are replaced by graph inputs of the same type and shape.

    Shape inference does not need weight values (only small shape-like constants), and copying
    half a gigabyte of VGG weights twice costs seconds.
    """
    light = onnx.ModelProto()
    for fd, value in model.ListFields():  # everything but the graph, as it is
        if fd.name != "graph":
            light.MergeFrom(onnx.ModelProto(**{fd.name: value}))
    graph, lg = model.graph, light.graph
    for fd, value in graph.ListFields():  # the graph without its initializers (never touched)
        if fd.name != "initializer":
            lg.MergeFrom(onnx.GraphProto(**{fd.name: value}))
    lg.initializer.extend(t for t in graph.initializer if _numel(t) <= 64)
    for t in graph.initializer:
        if _numel(t) > 64:
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def _numel(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list):
            v = tuple(x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v)
        out[a.name] = v
    return out


def _toposort(graph: onnx.GraphProto, initializers: Mapping[str, Initializer]) -> tuple[NodeView, ...]:
    protos = list(graph.node)
    available = set(initializers) | {i.name for i in graph.input} | {""}
    produced_by: dict[str, int] = {}
    for i, n in enumerate(protos):
        for o in n.output:
            produced_by[o] = i
    indeg = [0] * len(protos)
    users: dict[int, list[int]] = {}
    outer = [subgraph_inputs(n) for n in protos]
    for i, n in enumerate(protos):
        reads = list(n.input) + list(outer[i])
        deps = {produced_by[x] for x in reads if x not in available and x in produced_by}
        indeg[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)  # stable: keeps the file's order where the graph allows
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(protos):
        raise UnsupportedModelError("the graph has a cycle (or a node reads a tensor nothing produces)")
    views = []
    for k, i in enumerate(order):
        n = protos[i]
        views.append(NodeView(k, n.name, n.op_type, n.domain, tuple(n.input), tuple(n.output), _attrs(n),
                              outer[i]))
    return tuple(views)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.HasField("g"):
            out.append(a.g)
        out.extend(a.graphs)
    return out


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads but does not define itself (nested subgraphs included)."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    local |= {t.values.name for t in graph.sparse_initializer}
    local |= {o for n in graph.node for o in n.output}
    reads: set[str] = set()
    for n in graph.node:
        reads.update(n.input)
        for sub in _subgraphs(n):
            reads |= _outer_reads(sub)
    return reads - local - {""}


def subgraph_inputs(node: onnx.NodeProto) -> tuple[str, ...]:
    """Tensors of the enclosing graph that `node`'s subgraphs read (sorted)."""
    reads: set[str] = set()
    for sub in _subgraphs(node):
        reads |= _outer_reads(sub)
    return tuple(sorted(reads))
