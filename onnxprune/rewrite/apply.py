"""Apply a keep mask to a model with onnx-graphsurgeon: the only place that mutates a graph."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.deps import Analysis
from onnxprune.ir.model import with_ir_version


def _edit_values(analysis: Analysis, keep: np.ndarray) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, dict]]:
    """New constant values per (node, input index) and new attributes per node."""
    g = analysis.graph
    values: dict[tuple[str, int], np.ndarray] = {}
    attrs: dict[str, dict] = defaultdict(dict)

    def current(node: str, idx: int, name: str) -> np.ndarray:
        key = (node, idx)
        if key not in values:
            values[key] = np.array(g.const(name))
        return values[key]

    sliced: dict[tuple[str, str, int], np.ndarray] = {}  # (node, tensor, axis) -> the units it was sliced by
    for rm in analysis.groups.members:
        m = rm.member
        mask = keep[rm.units]
        if mask.all():
            continue
        node = g.by_name[m.node]
        if m.kind in ("out", "in", "param"):
            # A node may read one initializer at several inputs (exporters deduplicate equal
            # constants: a BatchNormalization with scale == var reads one tensor twice). Each
            # (node, tensor, axis) is sliced once, and every input reading it gets the result.
            key = (m.node, m.tensor, m.axis)
            done = sliced.get(key)
            if done is not None:
                if not np.array_equal(done, rm.units):
                    raise RuntimeError(f"internal error: {m.tensor} of {m.node} sliced two ways on axis {m.axis}")
                continue
            sliced[key] = rm.units
            positions = [i for i, name in enumerate(node.inputs) if name == m.tensor]
            value = np.compress(mask, current(m.node, positions[0], m.tensor), axis=m.axis)
            for idx in positions:
                values[(m.node, idx)] = value
        elif m.kind == "group_attr":
            attrs[m.node]["group"] = int(mask.sum())
        elif m.kind == "reshape":
            shape = current(m.node, 1, m.tensor).copy()
            if shape[m.axis] not in (-1, 0):
                shape[m.axis] = int(mask.sum())
            values[(m.node, 1)] = shape
        elif m.kind == "split":
            bounds = np.cumsum((0,) + m.parts)
            sizes = [int(mask[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
            values[(m.node, 1)] = np.array(sizes, dtype=np.int64)
            attrs[m.node]["num_outputs"] = None
        elif m.kind == "slice":
            start, stop = m.parts
            new_start = int(mask[:start].sum())
            new_stop = new_start + int(mask[start:stop].sum())
            starts = current(m.node, 1, node.inputs[1]).copy()
            ends = current(m.node, 2, node.inputs[2]).copy()
            starts[m.axis], ends[m.axis] = new_start, new_stop
            values[(m.node, 1)], values[(m.node, 2)] = starts, ends
        else:  # pragma: no cover - Member kinds are closed
            raise RuntimeError(f"unknown member kind {m.kind}")
    return values, attrs


def apply_keep(analysis: Analysis, keep: np.ndarray) -> onnx.ModelProto:
    """Return a new model with the units where `keep` is False removed.

    Shared constants are copied per node before slicing, so one use never changes another.
    """
    empty = analysis.empty_members(keep)
    if empty.size:
        raise ValueError(f"the mask removes every channel of {empty.size} tensor(s); use Analysis.repair")
    values, attrs = _edit_values(analysis, keep)
    original = analysis.graph.model  # a copy, ours to read
    graph = gs.import_onnx(original)
    nodes = {n.name: n for n in graph.nodes}
    read_in_subgraphs = {t for n in analysis.graph.nodes for t in n.subgraph_inputs}
    made: dict[tuple[str, int], gs.Constant] = {}  # (node, id of the new value) -> its constant
    for (name, idx), value in values.items():
        node = nodes[name]
        while len(node.inputs) <= idx:  # e.g. a Split without its optional sizes input
            node.inputs.append(gs.Variable.empty())
        old = node.inputs[idx]
        if (isinstance(old, gs.Constant) and len(old.outputs) == 1 and old.name not in read_in_subgraphs):
            old.values = value
        elif (name, id(value)) in made:  # the same tensor at another input of this node
            node.inputs[idx] = made[(name, id(value))]
        else:
            base = old.name if old.name else f"{name}_in{idx}"
            made[(name, id(value))] = node.inputs[idx] = gs.Constant(f"{base}__pruned_{name}",
                                                                      np.ascontiguousarray(value))
    for name, changes in attrs.items():
        node = nodes[name]
        for key, value in changes.items():
            if value is None:
                node.attrs.pop(key, None)
            else:
                node.attrs[key] = value
    graph.cleanup().toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]
    # Graph inputs and outputs keep their names, types and shapes exactly.
    source = original.graph
    for dst, src in ((model.graph.input, source.input), (model.graph.output, source.output)):
        del dst[:]
        dst.extend(src)
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    model.ir_version = original.ir_version
    return with_ir_version(model)
