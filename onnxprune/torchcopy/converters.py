"""onnxprune's own onnx2torch converters, for what onnx2torch 1.5.15 lacks.

onnx2torch looks a converter up by (domain, op_type, *since version*): an opset-20 model asks for
`ReduceMean` 18 and `Reshape` 19, which 1.5.15 does not have. The default torch exporter
(`dynamo=True`, opset 20) writes both in every classification model (global average pool as
`ReduceMean` with `axes` as an input, the flatten as `Reshape(allowzero=1)`), so without these
no dynamo export converts at all. Registered here, the same way onnx2torch registers its own
(`add_converter(operation_type=..., version=...)`):

- new semantics: `ReduceMean` and the other reductions 18 (axes as an input; `ReduceMax` /
  `ReduceMin` 20), `Reshape` 14/19/21 with `allowzero=1` (a 0 in the shape means 0, not "copy"),
  `Split` 18 (`num_outputs`, last part smaller), `Gelu` 20 (ConvNeXt, dynamo export),
  `AveragePool` 19 (dilations: only 1 supported), `Pad` 18/19/21 (`axes` input and `wrap` mode
  refused), `Resize` 18/19 (new attributes refused unless at their defaults);
- version bumps that only widened the accepted types: `Cast`, `Constant`, `Identity`, `Shape`
  19/21, `Flatten`, `Transpose`, `Unsqueeze` 21, `Equal` 19, `ConstantOfShape` 20/21: the
  converter of the previous version, unchanged.

What a converter cannot do raises `NotImplementedError` naming the op and the attribute, as
onnx2torch does; `to_torch` turns it into `UnsupportedModelError`.

`register()` is idempotent: a version onnx2torch already has is never registered again (a
future onnx2torch keeps its own), and the one existing converter replaced (`Reshape` 14, which
refuses `allowzero=1`) is replaced once.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Sequence

import torch
from onnx import defs
from onnx2torch.node_converters import add_converter
from onnx2torch.node_converters import registry as _registry
from onnx2torch.onnx_graph import OnnxGraph, ValueType
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (OnnxMapping, OnnxToTorchModule, OperationConverterResult,
                                     onnx_mapping_from_node)
from torch import nn

Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]

_LOCK = threading.Lock()
_DONE = False
#: (op_type, version) -> "added" | "replaced": what `register()` did, for reports and tests
REGISTERED: dict[tuple[str, int], str] = {}


def _has(op_type: str, version: int) -> bool:
    """Whether onnx2torch holds a converter registered exactly for `op_type` `version`."""
    desc = _registry.OperationDescription(domain=defs.ONNX_DOMAIN, operation_type=op_type, version=version)
    return desc in _registry._CONVERTER_REGISTRY  # noqa: SLF001 - the registry has no public lookup


def _existing(op_type: str, version: int) -> Converter:
    return _registry.get_converter(op_type, version)


def _add(op_type: str, version: int, converter: Converter) -> None:
    if _has(op_type, version):
        return
    add_converter(operation_type=op_type, version=version)(converter)
    REGISTERED[(op_type, version)] = "added"


def _const_list(graph: OnnxGraph, name: str) -> list[int] | None:
    """The value of initializer `name` as a list of ints, or None when it is computed."""
    if not name or name not in graph.initializers:
        return None
    return [int(v) for v in graph.initializers[name].to_numpy().reshape(-1).tolist()]


def _optional_input(node: OnnxNode, index: int) -> str:
    values = node.input_values
    return values[index] if len(values) > index else ""


# ------------------------------------------------------------------------------------ reductions


def _reduce_prod(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


_REDUCE: dict[str, Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]] = {
    "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
    "ReduceProd": _reduce_prod,
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
}


class OnnxReduceAxesInput(nn.Module, OnnxToTorchModule):
    """`Reduce*` from opset 18 on: `axes` is an optional input, `noop_with_empty_axes` an attribute.

    `axes` holds the constant axes when the ONNX input is an initializer; otherwise they are read
    from the second forward argument at run time.
    """

    def __init__(self, op_type: str, keepdims: bool, noop_with_empty_axes: bool,
                 axes: Sequence[int] | None) -> None:
        super().__init__()
        self.op_type = op_type
        self.keepdims = keepdims
        self.noop_with_empty_axes = noop_with_empty_axes
        self.axes = None if axes is None else tuple(int(a) for a in axes)
        self._fn = _REDUCE[op_type]

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        dims = self.axes if axes is None else tuple(int(a) for a in axes.reshape(-1).tolist())
        if not dims:
            if self.noop_with_empty_axes:
                return x
            dims = tuple(range(x.dim()))
        return self._fn(x, dims, self.keepdims)


def _convert_reduce(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    keepdims = bool(node.attributes.get("keepdims", 1))
    noop = bool(node.attributes.get("noop_with_empty_axes", 0))
    axes_name = _optional_input(node, 1)
    axes = _const_list(graph, axes_name)
    if axes_name and axes is None:  # computed at run time
        module = OnnxReduceAxesInput(node.operation_type, keepdims, noop, None)
        mapping = OnnxMapping(inputs=(node.input_values[0], axes_name), outputs=node.output_values)
    else:
        module = OnnxReduceAxesInput(node.operation_type, keepdims, noop, axes or ())
        mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


# --------------------------------------------------------------------------------------- Reshape


class OnnxReshapeAllowZero(nn.Module, OnnxToTorchModule):
    """`Reshape` with the `allowzero` attribute (opset 14 on).

    allowzero=0: a 0 in `shape` copies the input's dimension; allowzero=1: a 0 is a 0.
    """

    def __init__(self, allowzero: bool) -> None:
        super().__init__()
        self.allowzero = allowzero

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        dims = [int(d) for d in shape.reshape(-1).tolist()]
        if not self.allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return torch.reshape(x, dims)


def _convert_reshape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(
        torch_module=OnnxReshapeAllowZero(bool(node.attributes.get("allowzero", 0))),
        onnx_mapping=onnx_mapping_from_node(node),
    )


_convert_reshape.onnxprune = True  # type: ignore[attr-defined]  # marks the replacement


def _replace(op_type: str, version: int, converter: Converter) -> None:
    """Put `converter` in place of onnx2torch's converter for `op_type` `version` (once)."""
    desc = _registry.OperationDescription(domain=defs.ONNX_DOMAIN, operation_type=op_type, version=version)
    current = _registry._CONVERTER_REGISTRY.get(desc)  # noqa: SLF001
    if current is not None and getattr(current, "onnxprune", False):
        return
    _registry._CONVERTER_REGISTRY[desc] = converter  # noqa: SLF001
    REGISTERED[(op_type, version)] = "replaced" if current is not None else "added"


# ----------------------------------------------------------------------------------------- Split


class OnnxSplitNumOutputs(nn.Module, OnnxToTorchModule):
    """`Split` 18 without a `split` input: `num_outputs` parts of ceil(n / num_outputs), the last
    one smaller."""

    def __init__(self, axis: int, num_outputs: int) -> None:
        super().__init__()
        self.axis = axis
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = math.ceil(x.shape[self.axis] / self.num_outputs)
        return torch.split(x, size, dim=self.axis)


class OnnxSplitSizes(nn.Module, OnnxToTorchModule):
    """`Split` with part sizes as an input."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor, split: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(x, [int(s) for s in split.reshape(-1).tolist()], dim=self.axis)


def _convert_split18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    axis = int(node.attributes.get("axis", 0))
    split_name = _optional_input(node, 1)
    if split_name:
        return OperationConverterResult(
            torch_module=OnnxSplitSizes(axis),
            onnx_mapping=OnnxMapping(inputs=(node.input_values[0], split_name), outputs=node.output_values),
        )
    num_outputs = int(node.attributes.get("num_outputs", len(node.output_values)))
    return OperationConverterResult(
        torch_module=OnnxSplitNumOutputs(axis, num_outputs),
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )


# ------------------------------------------------------------------------------------------ Gelu


def _convert_gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu with approximate={approximate!r} is not implemented")
    return OperationConverterResult(torch_module=nn.GELU(approximate=approximate),
                                    onnx_mapping=onnx_mapping_from_node(node))


# ------------------------------------------------- newer versions that only add refused features


def _delegate(op_type: str, old_version: int, refuse: Callable[[OnnxNode, OnnxGraph], str | None]) -> Converter:
    """A converter that refuses what `refuse` names, else runs onnx2torch's `old_version` one."""
    old = _existing(op_type, old_version)

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        reason = refuse(node, graph)
        if reason:
            raise NotImplementedError(f"{op_type}: {reason} is not implemented")
        return old(node, graph)

    convert.__name__ = f"convert_{op_type}_via_{old_version}"
    return convert


def _refuse_avgpool19(node: OnnxNode, graph: OnnxGraph) -> str | None:
    del graph
    dilations = node.attributes.get("dilations")
    if dilations is not None and any(int(d) != 1 for d in dilations):
        return f"dilations={list(dilations)}"
    return None


def _refuse_pad18(node: OnnxNode, graph: OnnxGraph) -> str | None:
    axes_name = _optional_input(node, 3)
    if axes_name and graph.value_type(axes_name) != ValueType.EMPTY:
        return "the axes input"
    if node.attributes.get("mode", "constant") == "wrap":
        return "mode 'wrap'"
    return None


def _refuse_resize18(node: OnnxNode, graph: OnnxGraph) -> str | None:
    del graph
    attrs = node.attributes
    if int(attrs.get("antialias", 0)):
        return "antialias=1"
    if attrs.get("axes") is not None:
        return "the axes attribute"
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return f"keep_aspect_ratio_policy={attrs['keep_aspect_ratio_policy']!r}"
    if attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        return "coordinate_transformation_mode 'half_pixel_symmetric'"
    return None


def _never(node: OnnxNode, graph: OnnxGraph) -> str | None:
    del node, graph
    return None


#: (op_type, new version, onnx2torch's version it behaves like): type-only version bumps
_TYPE_ONLY: tuple[tuple[str, int, int], ...] = (
    ("Cast", 19, 13), ("Cast", 21, 13),
    ("Constant", 19, 13), ("Constant", 21, 13),
    ("Identity", 19, 16), ("Identity", 21, 16),
    ("Shape", 19, 15), ("Shape", 21, 15),
    ("Flatten", 21, 13), ("Transpose", 21, 13), ("Unsqueeze", 21, 13),
    ("Equal", 19, 13),
    ("ConstantOfShape", 20, 9), ("ConstantOfShape", 21, 9),
)  # fmt: skip


def register() -> dict[tuple[str, int], str]:
    """Register onnxprune's converters with onnx2torch (once per process; safe to call again)."""
    global _DONE
    with _LOCK:
        if _DONE:
            return dict(REGISTERED)
        for op in _REDUCE:
            if op != "ReduceSum":  # ReduceSum took axes as an input already in opset 13
                _add(op, 18, _convert_reduce)
        _add("ReduceMax", 20, _convert_reduce)
        _add("ReduceMin", 20, _convert_reduce)
        _replace("Reshape", 14, _convert_reshape)  # onnx2torch's refuses allowzero=1
        _add("Reshape", 19, _convert_reshape)
        _add("Reshape", 21, _convert_reshape)
        _add("Split", 18, _convert_split18)
        _add("Gelu", 20, _convert_gelu)
        _add("AveragePool", 19, _delegate("AveragePool", 11, _refuse_avgpool19))
        for version in (18, 19, 21):
            _add("Pad", version, _delegate("Pad", 13, _refuse_pad18))
        for version in (18, 19):
            _add("Resize", version, _delegate("Resize", 13, _refuse_resize18))
        for op, new, old in _TYPE_ONLY:
            _add(op, new, _delegate(op, old, _never))
        _DONE = True
        return dict(REGISTERED)


def describe() -> list[dict[str, Any]]:
    """What `register()` did, one entry per (op_type, version)."""
    return [{"op_type": op, "version": v, "how": how} for (op, v), how in sorted(REGISTERED.items())]
