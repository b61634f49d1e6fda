"""The ONNX -> torch round trip: `to_torch` builds a `TorchCopy` with onnx2torch and maps every
ONNX initializer to the torch tensor that holds it, so that scores, masks and trained weights can
travel between the two.

How initializers are found in the torch module: while onnx2torch converts, every tensor it reads
from an initializer (`OnnxTensor.to_torch`) is recorded; after conversion each parameter and
buffer of the module is looked up by its storage. A converter that copies instead of sharing
(`Gemm` -> `nn.Linear` stores `alpha * B` or `alpha * B.T`) is matched by what it computes, with
the transform recorded in the `Binding`. Copies of one initializer (onnx2torch makes one buffer
per use) are tied back into one tensor, so that training keeps them equal.

Trainable: the parameters of the modules onnx2torch builds (`nn.Conv2d`, `nn.Linear`,
`nn.BatchNorm2d`, `nn.LayerNorm`...) and the float initializers an op holds as learned
parameters (`onnxprune.ops.param_inputs`: Conv / Gemm / MatMul weights, PRelu slopes,
normalization scale and shift) or adds to / multiplies with such an op's output
(`onnxprune.ops.is_affine`: bias `Add`, per-channel `Mul`). Everything else (shapes, axes, clip bounds,
BatchNormalization running statistics, input normalization constants) stays a buffer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import helper
from torch import fx, nn

from onnxprune.deps import Analysis
from onnxprune.errors import InputError, UnsupportedModelError, VerificationError
from onnxprune.ir import load_model, with_initializers
from onnxprune.numerics import compare_outputs, random_feeds, session, static_input_shapes
from onnxprune.ops import has_params, is_affine, param_inputs
from onnxprune.torchcopy.converters import register

#: round-trip tolerance: |torch - onnxruntime| <= RTOL * |ort| + ATOL * max(1, max |ort|)
RTOL = 1e-3
ATOL = 1e-4


@dataclass(frozen=True)
class Binding:
    """Where (part of) an ONNX initializer lives in the torch copy.

    The torch tensor is `getattr(module.get_submodule(owner), attr)` and holds
    `scale * value` (transposed first when `transpose`), `value` being the ONNX initializer.
    """

    initializer: str
    owner: str  # qualified name of the owning submodule ("" for the root)
    attr: str  # "weight", "bias", "running_mean", "onnx_initializer_3"...
    transpose: bool = False
    scale: float = 1.0

    @property
    def path(self) -> str:
        return f"{self.owner}.{self.attr}" if self.owner else self.attr

    def torch_axis(self, onnx_axis: int, ndim: int) -> int:
        """The torch axis holding ONNX axis `onnx_axis` of the initializer."""
        axis = onnx_axis % ndim
        return 1 - axis if self.transpose else axis


@dataclass(frozen=True)
class RoundTripCheck:
    """Torch copy vs onnxruntime on seeded random inputs."""

    max_abs_diff: float
    max_abs_output: float
    inputs_checked: int
    batch: int


class TorchCopy:
    """A torch `fx.GraphModule` made from an ONNX model, plus the initializer -> tensor mapping.

    Attributes:
        module: the onnx2torch GraphModule (eval mode after creation).
        model: the normalized ONNX model it was converted from (initializer names as the analysis
            knows them).
        bindings: initializer name -> where its values live (several places for a shared one).
        input_names, output_names: the graph's inputs (forward's positional arguments) and outputs.
        fixed_batch: the batch size the graph is fixed to, or None when the batch is dynamic.
        check: the round-trip check done at creation (None when skipped).
    """

    def __init__(self, module: fx.GraphModule, model: onnx.ModelProto, bindings: Mapping[str, tuple[Binding, ...]],
                 input_names: Sequence[str], output_names: Sequence[str], fixed_batch: int | None,
                 check: RoundTripCheck | None = None) -> None:
        self.module = module
        self.model = model
        self.bindings = dict(bindings)
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.fixed_batch = fixed_batch
        self.check = check
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> "TorchCopy":
        """Move the module to `device` (in place; inputs are moved there per call). Returns self."""
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    # --- tensors -------------------------------------------------------------------------------
    def resolve(self, binding: Binding) -> torch.Tensor:
        """The live torch tensor (parameter or buffer) of `binding`."""
        return getattr(self.module.get_submodule(binding.owner), binding.attr)

    def tensor(self, initializer: str) -> torch.Tensor:
        """The torch tensor holding `initializer` (its first binding)."""
        try:
            return self.resolve(self.bindings[initializer][0])
        except KeyError:
            raise KeyError(f"initializer {initializer!r} is not held by a torch tensor "
                           f"(absorbed as a constant attribute, or not an initializer)") from None

    def onnx_value(self, initializer: str) -> np.ndarray:
        """The current torch values of `initializer`, in the ONNX layout and dtype."""
        binding = self.bindings[initializer][0]
        value = self.resolve(binding).detach().cpu()
        if binding.scale != 1.0:
            value = value / binding.scale
        if binding.transpose:
            value = value.T
        arr = value.contiguous().numpy()
        init = _initializer(self.model, initializer)
        dtype = helper.tensor_dtype_to_np_dtype(init.data_type) if init is not None else arr.dtype
        return arr.astype(dtype, copy=False)

    def trainable(self) -> list[str]:
        """Initializers held by a tensor that requires grad."""
        return [n for n, bs in self.bindings.items() if self.resolve(bs[0]).requires_grad]

    # --- running -------------------------------------------------------------------------------
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.module(*inputs)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The first output for the first input, flattened to (N, classes)."""
        out = self.module(x.to(self.device) if x.device != self.device else x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)

    def initializer_values(self) -> dict[str, np.ndarray]:
        """The current torch values of every bound initializer, in the ONNX layout and dtype."""
        return {name: self.onnx_value(name) for name in self.bindings}

    def write_back(self, base: onnx.ModelProto | None = None) -> onnx.ModelProto:
        """A copy of `base` (default: `self.model`) with every bound initializer replaced by the
        torch copy's current values (same names, same dtypes)."""
        model = self.model if base is None else base
        present = {t.name for t in model.graph.initializer}
        missing = [n for n in self.bindings if n not in present]
        if base is not None and missing:
            raise InputError(f"the model to write into lacks initializer(s) {', '.join(missing[:5])}: "
                             "write back into the model the torch copy was made from")
        return with_initializers(model, {n: v for n, v in self.initializer_values().items() if n in present})


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto | None:
    for t in model.graph.initializer:
        if t.name == name:
            return t
    return None


# ------------------------------------------------------------------------------------ conversion


@contextlib.contextmanager
def _recording() -> Iterator[dict[int, tuple[str, torch.Tensor]]]:
    """Record every tensor onnx2torch reads from an initializer: data_ptr -> (name, tensor)."""
    from onnx2torch.onnx_tensor import OnnxTensor

    seen: dict[int, tuple[str, torch.Tensor]] = {}
    original = OnnxTensor.to_torch

    def to_torch(self: OnnxTensor) -> torch.Tensor:
        tensor = original(self)
        if tensor.numel() and self.name:
            seen[tensor.data_ptr()] = (self.name, tensor)  # keeps it alive: pointers stay unique
        return tensor

    OnnxTensor.to_torch = to_torch  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        OnnxTensor.to_torch = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger = logging.getLogger("onnx2torch")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logger.setLevel(level)


def _split_path(path: str) -> tuple[str, str]:
    owner, _, attr = path.rpartition(".")
    return owner, attr


def _bind(module: fx.GraphModule, model: onnx.ModelProto,
          seen: Mapping[int, tuple[str, torch.Tensor]]) -> dict[str, list[Binding]]:
    """Find every initializer's tensor(s) in `module` (see the module docstring)."""
    bindings: dict[str, list[Binding]] = {}
    tensors = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    for path, tensor in tensors:
        if tensor.numel() == 0:
            continue
        hit = seen.get(tensor.data_ptr())
        if hit is not None and hit[1].shape == tensor.shape:
            owner, attr = _split_path(path)
            bindings.setdefault(hit[0], []).append(Binding(hit[0], owner, attr))
    # nn.Linear made from a Gemm holds alpha * B (transposed unless transB) and beta * C.
    by_output = {o: n for n in model.graph.node for o in n.output}
    for fx_node in module.graph.nodes:
        if fx_node.op != "call_module":
            continue
        sub = module.get_submodule(fx_node.target)
        mapping = getattr(sub, "onnx_mapping", None)  # attach_onnx_mapping=True puts it there
        onnx_node = by_output.get(mapping.outputs[0]) if mapping is not None and mapping.outputs else None
        if onnx_node is None or onnx_node.op_type != "Gemm" or not isinstance(sub, nn.Linear):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in onnx_node.attribute}
        b_name = onnx_node.input[1]
        if b_name not in bindings:
            bindings[b_name] = [Binding(b_name, fx_node.target, "weight", transpose=not attrs.get("transB", 0),
                                        scale=float(attrs.get("alpha", 1.0)))]
        if len(onnx_node.input) > 2 and onnx_node.input[2] and sub.bias is not None and onnx_node.input[2] not in bindings:
            c_name = onnx_node.input[2]
            bindings[c_name] = [Binding(c_name, fx_node.target, "bias", scale=float(attrs.get("beta", 1.0)))]
    return bindings


def _tie(module: fx.GraphModule, bindings: dict[str, list[Binding]]) -> None:
    """Make every untransformed copy of one initializer the same tensor (first copy wins).

    onnx2torch adds one buffer per use of an initializer: the duplicates are dropped and their
    `get_attr` nodes read the first one. Two modules sharing a weight get the same `Parameter`.
    """
    changed = False
    for name, binds in bindings.items():
        plain = [b for b in binds if not b.transpose and b.scale == 1.0]
        if len(plain) < 2:
            continue
        first = plain[0]
        keeper = getattr(module.get_submodule(first.owner), first.attr)
        kept = [b for b in binds if b not in plain[1:]]
        for b in plain[1:]:
            owner = module.get_submodule(b.owner)
            if getattr(owner, b.attr) is keeper:
                kept.append(b)
            elif b.attr in owner._buffers and first.attr in module.get_submodule(first.owner)._buffers:  # noqa: SLF001
                for fx_node in module.graph.nodes:
                    if fx_node.op == "get_attr" and fx_node.target == b.path:
                        fx_node.target = first.path
                del owner._buffers[b.attr]  # noqa: SLF001
                changed = True
            elif b.attr in owner._parameters and isinstance(keeper, nn.Parameter):  # noqa: SLF001
                setattr(owner, b.attr, keeper)
                kept.append(b)
            else:
                kept.append(b)
        bindings[name] = kept
    if changed:
        module.recompile()


def _promote(module: fx.GraphModule, model: onnx.ModelProto, bindings: dict[str, list[Binding]]) -> None:
    """Turn the float buffers that are weights (see the module docstring) into parameters."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in model.graph.node:
        for i, x in enumerate(n.input):
            consumers.setdefault(x, []).append((n, i))

    def is_weight(name: str) -> bool:
        for node, idx in consumers.get(name, []):
            if idx in param_inputs(node.op_type):
                return True
            if is_affine(node.op_type):
                other = [x for x in node.input if x != name]
                src = producers.get(other[0]) if other else None
                if src is not None and has_params(src.op_type):
                    return True
        return False

    for name, binds in bindings.items():
        if not is_weight(name):
            continue
        for b in binds:
            owner = module.get_submodule(b.owner)
            tensor = owner._buffers.get(b.attr)  # noqa: SLF001
            if tensor is None or not tensor.is_floating_point():
                continue
            if isinstance(owner, nn.modules.batchnorm._BatchNorm):  # noqa: SLF001 - running stats
                continue
            del owner._buffers[b.attr]  # noqa: SLF001
            owner.register_parameter(b.attr, nn.Parameter(tensor))


def torch_outputs(copy: TorchCopy, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run the torch copy (eval mode, no grad) on numpy feeds; one array per graph output."""
    was_training = copy.module.training
    copy.module.eval()
    try:
        with torch.no_grad():
            out = copy(*[torch.from_numpy(np.ascontiguousarray(feeds[n])).to(copy.device) for n in copy.input_names])
    finally:
        copy.module.train(was_training)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o.detach().cpu().numpy() for o in outs]


def check_against_ort(copy: TorchCopy, model: onnx.ModelProto | None = None, trials: int = 2, seed: int = 0,
                      what: str = "torch copy", input_shapes: Mapping[str, Sequence[int]] | None = None,
                      ) -> RoundTripCheck:
    """Compare `copy` with onnxruntime on `model` (default: the model it came from)."""
    model = copy.model if model is None else model
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    batch = copy.fixed_batch or 2
    worst, scale = 0.0, 0.0
    for t in range(trials):
        feeds = random_feeds(model, batch, seed + t, input_shapes)
        expect = sess.run(names, feeds)
        got = torch_outputs(copy, feeds)
        if len(got) != len(expect):
            raise VerificationError(f"{what}: {len(got)} outputs, onnxruntime gives {len(expect)}")
        d, s = compare_outputs(got, expect, names, what, RTOL, ATOL)
        worst, scale = max(worst, d), max(scale, s)
    return RoundTripCheck(max_abs_diff=worst, max_abs_output=scale, inputs_checked=trials, batch=batch)


def _normalized(model: onnx.ModelProto | Analysis) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """The normalized model, and the static shapes of inputs with a dynamic non-batch dimension
    (known only from an `Analysis`, which was given them)."""
    if isinstance(model, Analysis):
        graph = model.graph
        shapes = {i.name: tuple(graph.shapes[i.name]) for i in graph.inputs
                  if any(not (isinstance(d, int) and d > 0) for d in i.shape[1:]) and i.name in graph.shapes}
        return graph.model, shapes
    if isinstance(model, onnx.ModelProto):
        return load_model(model).model, {}
    raise TypeError(f"to_torch takes an onnx.ModelProto or an Analysis, not {type(model).__name__}")


def to_torch(model: onnx.ModelProto | Analysis, *, check: bool = True, seed: int = 0,
             input_shapes: Mapping[str, Sequence[int]] | None = None,
             device: torch.device | str | None = None) -> TorchCopy:
    """Convert an ONNX model (or an `Analysis`' normalized model) to a `TorchCopy`.

    The model is normalized first (`onnxprune.ir.load_model`), so that initializer names are the
    ones the analysis uses. With `check`, the copy is run against onnxruntime on two seeded random
    inputs (`RTOL`, `ATOL`), on the CPU; the copy then moves to `device` (None: stays on the CPU).

    Raises:
        UnsupportedModelError: onnx2torch cannot convert an op (the message names it), or the
            copy disagrees with onnxruntime.
        InputError: a graph input has a dynamic non-batch dimension and no `input_shapes`.
    """
    register()
    normalized, shapes = _normalized(model)
    shapes.update(input_shapes or {})
    _, fixed = static_input_shapes(normalized, None, shapes)
    try:
        with _quiet(), _recording() as seen:
            import onnx2torch

            module = onnx2torch.convert(normalized, attach_onnx_mapping=True)
            bindings = _bind(module, normalized, seen)
    except NotImplementedError as exc:
        raise UnsupportedModelError(f"cannot build the torch copy: {_first_line(exc)}") from None
    except Exception as exc:  # onnx2torch raises KeyError/ValueError/RuntimeError on odd graphs
        raise UnsupportedModelError(
            f"cannot build the torch copy: onnx2torch failed ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    _tie(module, bindings)
    _promote(module, normalized, bindings)
    module.eval()
    copy = TorchCopy(
        module=module, model=normalized,
        bindings={k: tuple(v) for k, v in bindings.items()},
        input_names=[vi.name for vi in normalized.graph.input],
        output_names=[o.name for o in normalized.graph.output],
        fixed_batch=fixed,
    )
    if check:
        try:
            copy.check = check_against_ort(copy, seed=seed, input_shapes=shapes or None)
        except VerificationError as exc:
            raise UnsupportedModelError(f"the torch copy disagrees with onnxruntime: {exc}") from None
        except Exception as exc:
            raise UnsupportedModelError(
                f"the torch copy fails to run ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
    if device is not None:
        copy.to(device)
    return copy


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
