"""Seeded mutation fuzzing of the CLI, and graphs with control flow (test support, not a test).

`mutants(seed, count)` draws `count` broken (or merely odd) variants of a few valid models with
the operators a tester would try: delete a node, rewire an input, give a Conv a weight of the
wrong shape or a wrong attribute, duplicate a node name, drop an initializer, change a dtype,
truncate the file; and two that often keep the model valid: make a node read another
initializer of the same shape (as deduplicating exporters do), change an integer constant (a
Reshape target, Split sizes) by one. `run_mutant` runs `onnxprune prune` on one of them, in process (the CLI's
`main`, stderr captured at the file-descriptor level so onnxruntime's C++ log would show), and
`Outcome.problems()` lists what broke the contract: every mutant must end in exit 0 with an
output onnxruntime runs, or exit 2 with one line on stderr; never exit 1, a traceback, a hang,
a temporary file left behind, or a changed input.

Used by `tests/test_fuzz.py` (a CI subset and the full run behind the `fuzz` marker) and by
`python -m benchmarks.fuzz` (the full run's counts, written to `benchmarks/results/`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests import graphs

# --------------------------------------------------------------------------------------------
# graphs with control flow


def control_flow(kind: str = "if") -> onnx.ModelProto:
    """conv0 -> relu -> conv1 -> relu -> conv2 -> y0, and conv1's output read inside a subgraph.

    ```
    x (N,3,8,8)
      │
    conv0 3->8 ─ relu0 ─ conv1 8->8 ─ relu1 ─ conv2 8->4 ─ y0
                              │ (read in the subgraph, not as an input of the node)
                 If / Loop / Scan / If{Loop}  ─ y1
    ```

    conv0's group stays prunable; conv1's must freeze (its output is read inside the subgraph).
    `kind`: "if", "loop", "scan", or "nested" (a Loop inside an If branch).
    """
    b = graphs.GraphBuilder()
    x = b.input()
    h0 = b.op("Relu", [b.conv(x, "conv0", 3, 8)], "relu0")
    c1 = b.conv(h0, "conv1", 8, 8)
    h1 = b.op("Relu", [c1], "relu1")
    y0 = b.conv(h1, "conv2", 8, 4)
    scalar = helper.make_tensor_value_info
    reduce_all = {"axes": [0, 1, 2, 3], "keepdims": 0}

    def loop_node(name: str, out: str) -> onnx.NodeProto:
        body = helper.make_graph(
            [helper.make_node("ReduceMean", [c1], [f"{name}_m"], name=f"{name}_mean", **reduce_all),
             helper.make_node("Add", [f"{name}_acc", f"{name}_m"], [f"{name}_acc_out"], name=f"{name}_add"),
             helper.make_node("Identity", [f"{name}_cond"], [f"{name}_cond_out"], name=f"{name}_id")],
            f"{name}_body",
            [scalar(f"{name}_i", TensorProto.INT64, []), scalar(f"{name}_cond", TensorProto.BOOL, []),
             scalar(f"{name}_acc", TensorProto.FLOAT, [])],
            [scalar(f"{name}_cond_out", TensorProto.BOOL, []), scalar(f"{name}_acc_out", TensorProto.FLOAT, [])],
        )
        return helper.make_node("Loop", ["trips", "cond", "acc0"], [out], name=name, body=body)

    b.const("trips", np.array(2, dtype=np.int64))
    b.const("cond", np.array(True))
    b.const("acc0", np.array(0.0, dtype=np.float32))
    if kind in ("if", "nested"):
        if kind == "if":
            then_nodes = [helper.make_node("ReduceMean", [c1], ["t_out"], name="then_mean", **reduce_all)]
        else:
            then_nodes = [loop_node("inner_loop", "t_out")]
        then = helper.make_graph(then_nodes, "then", [], [scalar("t_out", TensorProto.FLOAT, [])])
        other = helper.make_graph([helper.make_node("ReduceMax", [c1], ["e_out"], name="else_max", **reduce_all)],
                                  "else", [], [scalar("e_out", TensorProto.FLOAT, [])])
        b.nodes.append(helper.make_node("If", ["cond"], ["cf_out"], name="branch", then_branch=then,
                                        else_branch=other))
    elif kind == "loop":
        b.nodes.append(loop_node("loop", "cf_out"))
    elif kind == "scan":
        b.const("seq", np.ones((2, 1), dtype=np.float32))
        body = helper.make_graph(
            [helper.make_node("ReduceMean", [c1], ["s_m"], name="scan_mean", **reduce_all),
             helper.make_node("ReduceSum", ["s_x"], ["s_sx"], name="scan_sum", keepdims=0),
             helper.make_node("Add", ["s_state", "s_m"], ["s_a"], name="scan_add"),
             helper.make_node("Add", ["s_a", "s_sx"], ["s_state_out"], name="scan_add2"),
             helper.make_node("Identity", ["s_state_out"], ["s_y"], name="scan_id")],
            "scan_body", [scalar("s_state", TensorProto.FLOAT, []), scalar("s_x", TensorProto.FLOAT, [1])],
            [scalar("s_state_out", TensorProto.FLOAT, []), scalar("s_y", TensorProto.FLOAT, [])],
        )
        b.nodes.append(helper.make_node("Scan", ["acc0", "seq"], ["cf_out", "scan_ys"], name="scan", body=body,
                                        num_scan_inputs=1))
    else:
        raise ValueError(f"unknown control-flow kind {kind!r}")
    model = b.model([y0, "cf_out"])
    return model


CONTROL_FLOW_NODES = {"if": "branch", "loop": "loop", "scan": "scan", "nested": "branch"}

# --------------------------------------------------------------------------------------------
# base models and mutation operators


def base_models() -> dict[str, Callable[[], onnx.ModelProto]]:
    """The valid models the mutants start from (tiny graphs; a torch export of a small ResNet)."""
    return {
        "conv_bn_relu_conv": graphs.conv_bn_relu_conv,
        "residual_add": lambda: graphs.residual("Add"),
        "concat": graphs.concat_channels,
        "se_gemm": graphs.se_block_gemm,
        "shuffle": graphs.channel_shuffle,
        "resnet_tiny": _resnet_tiny,
    }


def _resnet_tiny() -> onnx.ModelProto:
    from tests.tiny import digits_model

    model = onnx.ModelProto()
    model.CopyFrom(digits_model(epochs=1)[1])
    return model


Mutation = Callable[[onnx.ModelProto, np.random.Generator], "onnx.ModelProto | bytes | None"]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _pick(rng: np.random.Generator, items: list) -> object:
    return items[int(rng.integers(len(items)))]


def delete_node(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    m = _copy(model)
    del m.graph.node[int(rng.integers(len(m.graph.node)))]
    return m


def rewire_input(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto | None:
    m = _copy(model)
    names = [i.name for i in m.graph.input] + [o for n in m.graph.node for o in n.output]
    names += [t.name for t in m.graph.initializer]
    node = _pick(rng, [n for n in m.graph.node if len(n.input)])
    slot = int(rng.integers(len(node.input)))
    choices = [n for n in names if n != node.input[slot]]
    if not choices:
        return None
    node.input[slot] = _pick(rng, choices)
    return m


def _conv_weights(m: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    inits = {t.name: t for t in m.graph.initializer}
    return [(n, inits[n.input[1]]) for n in m.graph.node if n.op_type == "Conv" and n.input[1] in inits]


def conv_weight_shape(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto | None:
    m = _copy(model)
    convs = _conv_weights(m)
    if not convs:
        return None
    _, w = _pick(rng, convs)
    arr = numpy_helper.to_array(w)
    axis = int(rng.integers(arr.ndim))
    delta = int(_pick(rng, [-1, 1, 2]))
    if arr.shape[axis] + delta < 1:
        delta = 1
    shape = list(arr.shape)
    shape[axis] += delta
    new = (np.random.default_rng(int(rng.integers(1 << 30))).standard_normal(shape) * 0.1).astype(arr.dtype)
    w.CopyFrom(numpy_helper.from_array(new, w.name))
    return m


def conv_attribute(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto | None:
    m = _copy(model)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    if not convs:
        return None
    node = _pick(rng, convs)
    name, value = _pick(rng, [
        ("group", int(_pick(rng, [0, 2, 3, 5]))), ("kernel_shape", [1, 1]), ("kernel_shape", [5, 5]),
        ("strides", [0, 1]), ("strides", [2, 2]), ("pads", [-1, 0, 0, 0]), ("pads", [1, 1]),
        ("pads", [3, 3, 3, 3]), ("dilations", [0, 1]), ("dilations", [4, 4]), ("auto_pad", "SAME_UPPER"),
    ])
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))
    return m


def duplicate_name(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto | None:
    m = _copy(model)
    if len(m.graph.node) < 2:
        return None
    a, b = rng.choice(len(m.graph.node), size=2, replace=False)
    m.graph.node[int(b)].name = m.graph.node[int(a)].name
    return m


def drop_initializer(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto | None:
    m = _copy(model)
    if not len(m.graph.initializer):
        return None
    del m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
    return m


_DTYPES = [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32, TensorProto.UINT8]


def change_dtype(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto | None:
    m = _copy(model)
    dtype = int(_pick(rng, _DTYPES))
    where = int(rng.integers(3))
    if where == 0 and len(m.graph.initializer):  # an initializer, values converted
        t = _pick(rng, list(m.graph.initializer))
        arr = numpy_helper.to_array(t).astype(helper.tensor_dtype_to_np_dtype(dtype))
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
    elif where == 1:  # the graph input's declared type
        m.graph.input[0].type.tensor_type.elem_type = dtype
    else:  # a graph output's declared type
        m.graph.output[0].type.tensor_type.elem_type = dtype
    return m


def share_constant(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto | None:
    """One node reads another initializer of the same shape and type (as exporters that
    deduplicate equal constants write): a valid model computing something else."""
    m = _copy(model)
    inits = {t.name: t for t in m.graph.initializer}
    pairs = []
    for node in m.graph.node:
        for slot, name in enumerate(node.input):
            t = inits.get(name)
            if t is None:
                continue
            for other in m.graph.initializer:
                if other.name != name and list(other.dims) == list(t.dims) and other.data_type == t.data_type:
                    pairs.append((node, slot, other.name))
    if not pairs:
        return None
    node, slot, other = _pick(rng, pairs)
    node.input[slot] = other
    return m


def shape_constant(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto | None:
    """An integer initializer (a Reshape target, Split sizes, Slice bounds...) changed by one."""
    m = _copy(model)
    ints = [t for t in m.graph.initializer if t.data_type in (TensorProto.INT64, TensorProto.INT32)
            and 0 < int(np.prod(t.dims, dtype=np.int64)) <= 16]
    if not ints:
        return None
    t = _pick(rng, ints)
    arr = numpy_helper.to_array(t).copy().reshape(-1)
    k = int(rng.integers(arr.size))
    arr[k] += int(_pick(rng, [-1, 1]))
    t.CopyFrom(numpy_helper.from_array(arr.reshape(tuple(t.dims)), t.name))
    return m


def truncate(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    data = model.SerializeToString()
    return data[: int(rng.integers(1, len(data)))]


MUTATIONS: dict[str, Mutation] = {
    "delete_node": delete_node,
    "rewire_input": rewire_input,
    "conv_weight_shape": conv_weight_shape,
    "conv_attribute": conv_attribute,
    "duplicate_name": duplicate_name,
    "drop_initializer": drop_initializer,
    "change_dtype": change_dtype,
    "truncate": truncate,
    "share_constant": share_constant,
    "shape_constant": shape_constant,
}


@dataclass(frozen=True)
class Mutant:
    index: int
    base: str
    mutation: str
    data: bytes
    no_verify: bool


def mutants(seed: int, count: int, bases: list[str] | None = None) -> Iterator[Mutant]:
    """`count` seeded mutants, cycling through operators and base models (same seed, same mutants)."""
    rng = np.random.default_rng(seed)
    builders = base_models()
    names = bases or list(builders)
    cache: dict[str, onnx.ModelProto] = {}
    ops = list(MUTATIONS)
    # first every operator on every model, in rounds of one mutant per operator that shift the
    # model, so that any first len(ops) mutants cover every operator and (len(ops) >= len(names))
    # every model; then drawn at random
    pairs = [(names[(j + r) % len(names)], ops[j]) for r in range(len(names)) for j in range(len(ops))]
    made = 0
    attempt = 0
    while made < count:
        if attempt < len(pairs):
            base, op = pairs[attempt]
        else:
            base, op = _pick(rng, names), _pick(rng, ops)
        attempt += 1
        if base not in cache:
            cache[base] = builders[base]()
        out = MUTATIONS[op](cache[base], rng)  # type: ignore[arg-type]
        if out is None:
            continue
        data = out if isinstance(out, bytes) else out.SerializeToString()
        yield Mutant(made, base, op, data, no_verify=bool(made % 2))
        made += 1


# --------------------------------------------------------------------------------------------
# running one


class Hang(BaseException):
    """A mutant ran past its time limit (raised by SIGALRM; not an Exception, so not swallowed)."""


@dataclass
class Outcome:
    mutant: Mutant
    rc: int | None
    stderr: str
    seconds: float
    output_runs: bool | None = None  # exit 0: onnxruntime loads and runs the output
    output_error: str | None = None
    leftovers: list[str] = field(default_factory=list)  # temporary files left in the folder
    input_changed: bool = False
    hang: bool = False

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def problems(self) -> list[str]:
        out = []
        if self.hang:
            out.append("hang")
        elif self.rc not in (0, 2):
            out.append(f"exit {self.rc}")
        if "Traceback" in self.stderr:
            out.append("traceback")
        if self.rc == 2 and len(self.lines) != 1:
            out.append(f"{len(self.lines)} lines on stderr")
        if self.rc == 0 and not self.output_runs:
            out.append(f"output does not run: {self.output_error}")
        if self.leftovers:
            out.append(f"temporary files left: {self.leftovers}")
        if self.input_changed:
            out.append("input changed")
        return out

    def to_json(self) -> dict:
        m = self.mutant
        return {"index": m.index, "base": m.base, "mutation": m.mutation, "no_verify": m.no_verify,
                "rc": self.rc, "seconds": round(self.seconds, 3), "stderr": self.lines[:3],
                "problems": self.problems()}


@contextlib.contextmanager
def _fd_capture() -> Iterator[Callable[[], str]]:
    """Capture standard error into a string: `sys.stderr` (whatever pytest made of it) and file
    descriptor 2 (what native libraries such as onnxruntime write)."""
    import io
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    python = io.StringIO()
    with tempfile.TemporaryFile() as tmp, contextlib.redirect_stderr(python):
        os.dup2(tmp.fileno(), 2)
        text: list[str] = []
        try:
            yield lambda: "".join(text)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(python.getvalue())
            text.append(tmp.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def fire(_signum: int, _frame: object) -> None:
        raise Hang()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _runs(path: Path) -> tuple[bool, str | None]:
    return _runs_model(str(path))


def _runs_model(model: onnx.ModelProto | str) -> tuple[bool, str | None]:
    """(True, None) when onnxruntime loads and runs `model` on random inputs, else (False, why)."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        source = model if isinstance(model, str) else model.SerializeToString()
        sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            dtype = np.float32 if "float" in i.type else np.int64
            feeds[i.name] = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        sess.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return False, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return True, None


def run_mutant(mutant: Mutant, folder: Path, timeout: int = 60) -> Outcome:
    """`onnxprune prune MUTANT -o out.onnx --sparsity 0.3 --report r.json [--no-verify]` in process."""
    from onnxprune import cli

    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "mutant.onnx"
    src.write_bytes(mutant.data)
    digest = hashlib.sha256(mutant.data).hexdigest()
    out, report = folder / "out.onnx", folder / "report.json"
    argv = ["prune", str(src), "-o", str(out), "--sparsity", "0.3", "--report", str(report)]
    if mutant.no_verify:
        argv.append("--no-verify")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    start = time.perf_counter()
    rc, hang = None, False
    with warnings.catch_warnings(), _fd_capture() as captured:
        try:
            with _alarm(timeout):
                rc = cli.main(argv)
        except Hang:
            hang = True
        except SystemExit as exc:  # argparse
            rc = int(exc.code) if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - the CLI let something escape: a finding
            import traceback

            traceback.print_exc()
            rc = -1
            del exc
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
    seconds = time.perf_counter() - start
    outcome = Outcome(mutant, rc, captured(), seconds, hang=hang)
    if rc == 0:
        outcome.output_runs, outcome.output_error = _runs(out)
    outcome.leftovers = sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))
    outcome.input_changed = hashlib.sha256(src.read_bytes()).hexdigest() != digest
    for p in folder.iterdir():
        p.unlink()
    return outcome


def run_fuzz(seed: int, count: int, folder: Path, timeout: int = 60,
             progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run `count` mutants of `seed` one after the other in `folder`."""
    outcomes = []
    for mutant in mutants(seed, count):
        outcome = run_mutant(mutant, folder / "work", timeout)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return outcomes


def summary(outcomes: list[Outcome]) -> dict:
    """Counts per exit code, per operator and per base model, and the failures."""
    def count(key: Callable[[Outcome], str]) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for o in outcomes:
            row = table.setdefault(key(o), {})
            label = "hang" if o.hang else f"exit {o.rc}"
            row[label] = row.get(label, 0) + 1
        return table

    failures = [o.to_json() for o in outcomes if o.problems()]
    return {
        "mutants": len(outcomes),
        "exit": {k: v for k, v in count(lambda o: "all").get("all", {}).items()},
        "by_mutation": count(lambda o: o.mutant.mutation),
        "by_base": count(lambda o: o.mutant.base),
        "no_verify": sum(o.mutant.no_verify for o in outcomes),
        "outputs_run": sum(bool(o.output_runs) for o in outcomes),
        "failures": failures,
        "seconds": round(sum(o.seconds for o in outcomes), 2),
    }
