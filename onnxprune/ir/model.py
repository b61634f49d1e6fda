"""Loading and normalizing ONNX models.

Loading validates first (`onnxprune.ir.validate`): `onnx.checker`, then an onnxruntime load (CPU,
optimizations off) of the model as read (its IR version clamped to what onnxruntime reads), so a
broken input is a one-line `InputError` (exit 2) before any work.

Normalization makes every later stage see one shape of graph, whatever exporter wrote it:

- external-data weights are loaded into memory (the input file is never touched);
- opsets below 13 are converted to 13 (one form of Split/Squeeze/Slice/... to handle);
- weights held in `Constant` nodes (paddle2onnx) or behind `Identity`/`Cast` of an initializer
  become plain initializers;
- initializers listed as graph inputs (IR < 4 exports) stop being inputs;
- every node gets a unique, non-empty name (the names are what users pass to `--exclude`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.errors import InputError, UnsupportedModelError

MIN_OPSET = 9
MAX_OPSET = 21
TARGET_MIN_OPSET = 13
# onnxruntime 1.31 reads IR version <= 13; onnx 1.23 writes 14 by default.
MAX_IR_VERSION = 10


@dataclass(frozen=True)
class LoadedModel:
    """A normalized model plus where it came from."""

    model: onnx.ModelProto
    source: str
    opset: int
    original_opset: int
    runtime_checked: bool = False  # onnxruntime loaded the input (False: not validated, or custom domains)


def read_model(src: str | os.PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read a model from a path or copy a `ModelProto`; raise `InputError` with one clear line."""
    if isinstance(src, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(src)
        return model, "<ModelProto>"
    path = Path(src)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: external data file missing ({exc.filename or exc})") from None
    except Exception as exc:  # protobuf raises DecodeError, onnx raises various
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    if len(model.graph.node) == 0:
        raise InputError(f"{path}: not an ONNX model (empty graph; truncated or not a .onnx file?)")
    return model, str(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ("" or "ai.onnx") domain."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise InputError("model imports no version of the default ONNX domain")


def load_model(src: str | os.PathLike[str] | onnx.ModelProto, validate: bool = True) -> LoadedModel:
    """Read, validate (unless `validate` is False) and normalize a model (see module docstring)."""
    from onnxprune.ir.validate import check_onnx, check_runtime, runtime_can_load

    model, source = read_model(src)
    original = default_opset(model)
    if not MIN_OPSET <= original <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{source}: opset {original} is not supported (supported: {MIN_OPSET} to {MAX_OPSET})"
        )
    _check_operators(model, source)
    with_ir_version(model)
    runtime_checked = False
    if validate:
        check_onnx(model, source)
        if runtime_can_load(model):
            check_runtime(model, source)
            runtime_checked = True
    model = _convert_opset(model, original, source)
    normalize(model)
    with_ir_version(model)
    return LoadedModel(model=model, source=source, opset=default_opset(model), original_opset=original,
                       runtime_checked=runtime_checked)


def _check_operators(model: onnx.ModelProto, source: str) -> None:
    """Every default-domain node must be a real ONNX operator (custom domains are left to the
    analysis, which freezes what it has no rule for)."""
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            raise UnsupportedModelError(
                f"{source}: node {node.name or node.op_type!r} uses {node.op_type!r}, which is not an ONNX operator"
            )


def _convert_opset(model: onnx.ModelProto, opset: int, source: str) -> onnx.ModelProto:
    if opset >= TARGET_MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, TARGET_MIN_OPSET)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{source}: could not convert opset {opset} to {TARGET_MIN_OPSET} ({_first_line(exc)})"
        ) from None
    return converted


def normalize(model: onnx.ModelProto) -> None:
    """Normalize `model` in place (Constant nodes, Identity/Cast of weights, names)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        folded = None
        if node.domain in ("", "ai.onnx") and len(node.output) == 1 and node.output[0] not in outputs:
            folded = _fold_constant(node, inits)
        if folded is not None:
            folded.name = node.output[0]
            graph.initializer.append(folded)
            inits[folded.name] = folded
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    # Weights only a folded Identity/Cast read are dead now.
    used = _used_names(graph) | outputs
    live = [t for t in graph.initializer if t.name in used]
    if len(live) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(live)
        inits = {t.name: t for t in live}
    # Initializers listed as inputs (IR < 4) are constants, not inputs.
    real_inputs = [i for i in graph.input if i.name not in inits]
    if len(real_inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(real_inputs)
    _name_nodes(graph)


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, subgraphs (If/Loop bodies) included."""
    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in list(attr.g.node and [attr.g]) + list(attr.graphs):
                used |= _used_names(sub)
    return used


def _fold_constant(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    if node.op_type == "Constant":
        attr = node.attribute[0] if node.attribute else None
        if attr is None:
            return None
        if attr.name == "value":
            out = onnx.TensorProto()
            out.CopyFrom(attr.t)
            return out
        value = helper.get_attribute_value(attr)
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(value, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(value, dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(value, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(value, dtype=np.int64))
        return None
    if node.op_type in ("Identity", "Cast") and len(node.input) == 1 and node.input[0] in inits:
        arr = numpy_helper.to_array(inits[node.input[0]])
        if node.op_type == "Cast":
            to = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "to")
            arr = arr.astype(helper.tensor_dtype_to_np_dtype(to))
        return numpy_helper.from_array(np.ascontiguousarray(arr))
    return None


def _name_nodes(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if name in seen:
            name = f"{name}__{i}"
        node.name = name
        seen.add(name)


def with_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Clamp the IR version to what onnxruntime reads (in place; returns the model)."""
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    return model


def with_initializers(model: onnx.ModelProto, values: Mapping[str, np.ndarray], copy: bool = True) -> onnx.ModelProto:
    """A copy of `model` (`model` itself when `copy` is False) whose initializers named in
    `values` hold those values (same names).

    The one place that writes weight values into a model (trained weights written back, masked
    references); structural edits live in `onnxprune.rewrite`. Raises `InputError` when a name is
    not an initializer of `model` or a shape differs.
    """
    out = model
    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    present = {t.name: t for t in out.graph.initializer}
    missing = [n for n in values if n not in present]
    if missing:
        raise InputError(f"the model lacks initializer(s) {', '.join(missing[:5])}: "
                         "write weights into the model they were made from")
    for name, value in values.items():
        t = present[name]
        arr = np.ascontiguousarray(value)
        if tuple(arr.shape) != tuple(t.dims):
            raise InputError(f"initializer {name}: new value has shape {tuple(arr.shape)}, the model's has {tuple(t.dims)}")
        t.CopyFrom(numpy_helper.from_array(arr, name))
    return out
