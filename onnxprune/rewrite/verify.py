"""Verification: the pruned model must compute exactly what the original computes once the
removed channels are masked out (their consumers' input weights zeroed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from onnxprune.deps import Analysis
from onnxprune.errors import VerificationError, option
from onnxprune.ir import with_initializers
from onnxprune.numerics import compare_outputs, random_arrays, session

RTOL = 1e-4
ATOL = 1e-5
#: besides `allclose(rtol, atol)`: max |pruned - masked| <= SCALE_RTOL * max |masked|, per output,
#: so that outputs far below `ATOL` (a randomly initialised MobileNetV3's logits are ~1e-9) still
#: have to agree
SCALE_RTOL = 1e-4
#: outputs whose largest magnitude is below this tell `ATOL` nothing: verification then scales the
#: random inputs up (x10, x100, ... up to x1e6), or uses real data when it has some, and says so
SMALL_OUTPUT = 10 * ATOL
INPUT_SCALES = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)


@dataclass(frozen=True)
class VerifyResult:
    max_abs_diff: float
    inputs_checked: int
    max_rel_diff: float = 0.0  # max |pruned - masked| / max |masked|, over outputs and inputs
    output_scale: float = 0.0  # the smallest max |masked output| among the outputs checked
    inputs: str = "random N(0, 1)"  # what was fed
    note: str | None = None  # why the inputs are not the default ones, or what could not be told
    # what the pruned model was compared with: "original" (the model as given, masked), or, when
    # the analysed model was simplified and its weights do not map back by name,
    # "simplified" (masked; the simplified model itself checked equal to the original)
    reference: str = "original"

    def to_json(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "output_scale": self.output_scale, "inputs_checked": self.inputs_checked,
                "inputs": self.inputs, "note": self.note, "rtol": RTOL, "atol": ATOL, "scale_rtol": SCALE_RTOL,
                "reference": self.reference}

    def describe(self) -> str:
        what = "the masked original" if self.reference == "original" else \
            "the masked simplified model (itself checked equal to the original)"
        text = (f"equal to {what} on {self.inputs_checked} inputs ({self.inputs}), "
                f"max abs diff {self.max_abs_diff:.3g} (max |y| {self.output_scale:.3g})")
        return text + (f"; {self.note}" if self.note else "")


class _NoMapping(Exception):
    """The masked weights of the analysed model have no same-named, same-shaped initializer (or
    their consumer no same-named node) in the original."""


def masked_reference(analysis: Analysis, keep: np.ndarray, base: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """The original model with the input weights of consumers zeroed for removed channels.

    A weight another node (or another input, or a subgraph) also reads is zeroed in a copy that
    only the consumer reads, so masking one consumer never changes another.
    `base`: the model to mask instead of the analysed one (the user's model before `--simplify`):
    its weights and consumers are found by name, and must have the same shapes.
    """
    if base is not None:
        return _masked_base(analysis, keep, base)
    g = analysis.graph
    zeroed: dict[tuple[str, str], np.ndarray] = {}  # (node, tensor) -> its masked copy
    for rm in analysis.groups.members:
        m = rm.member
        if m.kind != "in":
            continue
        mask = keep[rm.units]
        if mask.all():
            continue
        arr = zeroed.get((m.node, m.tensor))
        if arr is None:
            arr = np.array(g.const(m.tensor))
        index = [slice(None)] * arr.ndim
        index[m.axis] = ~mask
        arr[tuple(index)] = 0
        zeroed[(m.node, m.tensor)] = arr
    readers: dict[str, int] = {}
    for n in g.nodes:
        for name in list(n.inputs) + list(n.subgraph_inputs):
            readers[name] = readers.get(name, 0) + 1
    own = {t: arr for (_, t), arr in zeroed.items() if readers.get(t, 0) == 1 and t not in g.outputs}
    model = with_initializers(g.model, own, copy=False)  # g.model is a copy already
    _add_private_copies(model, {k: arr for k, arr in zeroed.items() if k[1] not in own})
    return model


def _add_private_copies(model: onnx.ModelProto, zeroed: dict[tuple[str, str], np.ndarray]) -> None:
    """Give each (node, tensor) its zeroed values as a private initializer read by that node only,
    so other readers of the tensor keep the original values."""
    protos = {n.name: n for n in model.graph.node}
    for (node, tensor), arr in zeroed.items():
        private = f"{tensor}__masked_{node}"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), private))
        proto = protos[node]
        for i, name in enumerate(proto.input):
            if name == tensor:
                proto.input[i] = private


def _masked_base(analysis: Analysis, keep: np.ndarray, base: onnx.ModelProto) -> onnx.ModelProto:
    """`masked_reference` on `base`: the same consumers (by node name) and weights (by name and
    shape) as the analysed model, zeroed in `base`'s own values, each in a private copy."""
    model = onnx.ModelProto()
    model.CopyFrom(base)
    inits = {t.name: t for t in model.graph.initializer}
    protos = {n.name: n for n in model.graph.node}
    zeroed: dict[tuple[str, str], np.ndarray] = {}
    for rm in analysis.groups.members:
        m = rm.member
        if m.kind != "in" or keep[rm.units].all():
            continue
        arr = zeroed.get((m.node, m.tensor))
        if arr is None:
            init, proto = inits.get(m.tensor), protos.get(m.node)
            if init is None or proto is None or m.tensor not in proto.input or \
                    tuple(init.dims) != tuple(np.shape(analysis.graph.const(m.tensor))):
                raise _NoMapping(m.tensor)
            arr = np.array(numpy_helper.to_array(init))
        index = [slice(None)] * arr.ndim
        index[m.axis] = ~keep[rm.units]
        arr[tuple(index)] = 0
        zeroed[(m.node, m.tensor)] = arr
    _add_private_copies(model, zeroed)
    return model


def _check_same(analysis: Analysis, original: onnx.ModelProto, trials: int, seed: int) -> None:
    """The analysed (simplified) model computes what `original` computes."""
    a, b = session(analysis.graph.model, log_level=4), session(original, log_level=4)
    names = [o.name for o in b.get_outputs()]
    for t in range(trials):
        feeds = random_inputs(analysis, batch=2 if t % 2 else 1, seed=seed + t)
        try:
            compare_outputs(_outputs(a, names, feeds, "the simplified model"),
                            _outputs(b, names, feeds, "the original"), names, "the simplified model", RTOL, ATOL,
                            scaled=True, reference="the original")
        except VerificationError as exc:
            raise VerificationError(f"{exc}; pass {option('simplify', 'off')}") from None


def _checker_error(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model)
        shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return None


def check_model(model: onnx.ModelProto,
                original: onnx.ModelProto | Callable[[], onnx.ModelProto] | None = None) -> None:
    """`onnx.checker` plus strict shape inference; raise `VerificationError` on failure.

    A complaint the `original` model (or what the callable returns, asked only on a complaint)
    already triggers (e.g. graph outputs declared without a shape, which some exporters write)
    is not the rewrite's doing and is tolerated.
    """
    error = _checker_error(model)
    if error is None:
        return
    if callable(original):
        original = original()
    if original is not None and _checker_error(original) == error:
        return
    raise VerificationError(f"pruned model fails the ONNX checker: {error}")


def random_inputs(analysis: Analysis, batch: int, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input (dynamic batch set to `batch`; other dimensions
    as the analysis fixed them), float ones N(0, scale^2)."""
    specs = []
    for inp in analysis.graph.inputs:
        shape = list(analysis.graph.shapes[inp.name])
        if inp.shape and not (isinstance(inp.shape[0], int) and inp.shape[0] > 0):
            shape[0] = batch
        specs.append((inp.name, tuple(shape), inp.elem_type))
    feeds = random_arrays(specs, seed)
    if scale != 1.0:
        feeds = {k: (v * v.dtype.type(scale)) if np.issubdtype(v.dtype, np.floating) else v for k, v in feeds.items()}
    return feeds


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def _data_feeds(analysis: Analysis, data: np.ndarray | None, batch: int) -> dict[str, np.ndarray] | None:
    """Real images for a single-input model whose input they fit, else None."""
    inputs = analysis.graph.inputs
    if data is None or len(inputs) != 1 or len(data) == 0:
        return None
    inp = inputs[0]
    shape = analysis.graph.shapes[inp.name]
    dynamic = not (inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0)
    n = batch if dynamic else shape[0]
    x = np.asarray(data[:n])
    if len(x) < n or tuple(x.shape[1:]) != tuple(shape[1:]):
        return None
    return {inp.name: x.astype(helper.tensor_dtype_to_np_dtype(inp.elem_type))}


def _outputs(sess, names: list[str], feeds: dict[str, np.ndarray], what: str) -> list[np.ndarray]:  # noqa: ANN001
    try:
        return sess.run(names, feeds)
    except Exception as exc:  # onnxruntime raises many types
        raise VerificationError(f"{what} fails to run: {_first_line(exc)}") from None


def _scale(arrays: list[np.ndarray]) -> float:
    """The smallest max |y| among the float outputs (inf when there is none)."""
    values = [float(np.max(np.abs(a))) for a in arrays if a.size and np.issubdtype(a.dtype, np.floating)]
    return min(values) if values else float("inf")


def verify(analysis: Analysis, keep: np.ndarray, pruned: onnx.ModelProto, trials: int = 3,
           seed: int = 0, data: np.ndarray | Callable[[], np.ndarray | None] | None = None,
           original: onnx.ModelProto | None = None) -> VerifyResult:
    """Checker, then outputs of `pruned` vs the masked original on `trials` inputs.

    Inputs are seeded N(0, 1) (batch 1 and 2); when the masked original's outputs are too small
    for `ATOL` to mean anything (max |y| < SMALL_OUTPUT), real images from `data` (when given)
    or random inputs scaled up until they are not. Every output must satisfy
    `allclose(rtol=RTOL, atol=ATOL)` and max |diff| <= SCALE_RTOL * max |y|. `data` (images
    shaped like the model's input, or a function returning them, called only when needed).
    `original`: the model as the user gave it when the analysed one was simplified; the reference
    is then the original masked (or, if its weights do not map back by name, the simplified model
    masked, after checking that the simplified model equals the original).
    """
    check_model(pruned, lambda: analysis.graph.model)
    reference = "original"
    masked = None
    if original is not None:
        try:
            masked = masked_reference(analysis, keep, base=original)
        except _NoMapping:
            _check_same(analysis, original, trials, seed)
            reference = "simplified"
    try:
        ref = session(masked if masked is not None else masked_reference(analysis, keep), log_level=4)
    except Exception as exc:
        raise VerificationError(f"onnxruntime cannot load the masked original: {_first_line(exc)}") from None
    try:
        new = session(pruned, log_level=4)
    except Exception as exc:
        raise VerificationError(f"onnxruntime cannot load the pruned model: {_first_line(exc)}") from None
    names = [o.name for o in ref.get_outputs()]

    def expected(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return _outputs(ref, names, feeds, "the masked original")

    inputs, note, factor = "random N(0, 1)", None, 1.0
    probe = random_inputs(analysis, batch=1, seed=seed)
    small = _scale(expected(probe))
    use_data = False
    if small < SMALL_OUTPUT:
        if callable(data):
            data = data()
        feeds = _data_feeds(analysis, data, 1)
        if feeds is not None and _scale(expected(feeds)) >= SMALL_OUTPUT:
            use_data = True
            inputs = "real data"
            note = f"outputs too small on random inputs (max |y| {small:.2g}): verified on real data"
        else:
            for factor in INPUT_SCALES[1:]:
                if _scale(expected(random_inputs(analysis, batch=1, seed=seed, scale=factor))) >= SMALL_OUTPUT:
                    break
            inputs = f"random N(0, 1) x {factor:g}"
            note = f"outputs too small on N(0, 1) inputs (max |y| {small:.2g}): verified on inputs scaled x{factor:g}"
            final = _scale(expected(random_inputs(analysis, batch=1, seed=seed, scale=factor)))
            if final < SMALL_OUTPUT:
                note = (f"outputs stay small whatever the input scale (max |y| {final:.2g} at x{factor:g}): "
                        f"only the check relative to their scale ({SCALE_RTOL:g} of max |y|) tells anything")
    worst = worst_rel = 0.0
    out_scale = float("inf")
    for t in range(trials):
        batch = 2 if t % 2 else 1
        feeds = (_data_feeds(analysis, None if data is None else data[t:], batch) if use_data else None) \
            or random_inputs(analysis, batch=batch, seed=seed + t, scale=factor)
        expect = expected(feeds)
        got = _outputs(new, names, feeds, "the pruned model")
        compare_outputs(got, expect, names, "pruned model", RTOL, ATOL, scaled=False, reference="the masked original")
        for name, e, g in zip(names, expect, got):
            if not e.size:
                continue
            diff = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64))))
            scale = float(np.max(np.abs(e.astype(np.float64))))
            worst = max(worst, diff)
            rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
            worst_rel = max(worst_rel, rel)
            if np.issubdtype(e.dtype, np.floating):
                out_scale = min(out_scale, scale)
            if diff > SCALE_RTOL * scale:
                raise VerificationError(
                    f"pruned model: output {name} differs from the masked original relative to its scale (max abs "
                    f"diff {diff:.3g}, max |y| {scale:.3g}, allowed {SCALE_RTOL:g} of it; inputs: {inputs})"
                )
    return VerifyResult(max_abs_diff=worst, inputs_checked=trials, max_rel_diff=worst_rel,
                        output_scale=0.0 if out_scale == float("inf") else out_scale, inputs=inputs, note=note,
                        reference=reference)


def check_runs(analysis: Analysis, model: onnx.ModelProto, trials: int = 2, seed: int = 0) -> None:
    """Checker, then `model` runs in onnxruntime on `trials` seeded random inputs and gives finite
    outputs of the original's shapes (for models whose weights were trained, which no masked
    original can reproduce)."""
    check_model(model, lambda: analysis.graph.model)
    try:
        sess = session(model)
    except Exception as exc:
        raise VerificationError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:300]}") from None
    ref = session(analysis.graph.model)
    names = [o.name for o in ref.get_outputs()]
    for t in range(trials):
        feeds = random_inputs(analysis, batch=2 if t % 2 else 1, seed=seed + t)
        expect = ref.run(names, feeds)
        got = sess.run(names, feeds)
        for name, e, g in zip(names, expect, got):
            if e.shape != g.shape or not np.all(np.isfinite(g)):
                raise VerificationError(f"output {name}: shape {g.shape} (original {e.shape}) or non-finite values")
