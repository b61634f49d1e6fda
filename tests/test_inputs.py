"""Inputs validated up front, control flow followed, outputs written safely, checkpoints that are
data only, verification that can fail (the API side of issue 11; the CLI side is in test_cli.py)."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxprune import fileio
from onnxprune.api import PruneConfig, prune
from onnxprune.deps import analyze
from onnxprune.errors import InputError, OutputError, VerificationError
from onnxprune.ir import build_graph, load_model
from onnxprune.rewrite import apply_keep, verify
from onnxprune.search import checkpoint as ckpt
from tests import fuzzkit, graphs

# --------------------------------------------------------------------------------------------
# exporters' deduplicated constants (the DenseNet-121 dynamo opset-18 IndexError)


def shared_constants() -> onnx.ModelProto:
    """Two BatchNormalizations reading one initializer as scale and var, another as bias and mean
    (what the dynamo exporter writes for torchvision's default init), and two Convs sharing weights.

    ```
    x ─ conv0 3->8 ─ bn0(ones, zeros, zeros, ones) ─ relu ─ conv1 8->8 ─ bn1(same) ─ relu
        ─ conv2 8->8 (weights shared with conv3) ─ relu ─ conv3 8->8 ─ y
    ```
    """
    b = graphs.GraphBuilder()
    x = b.input()
    b.const("ones", np.ones(8, np.float32))
    b.const("zeros", np.zeros(8, np.float32))
    h = b.op("Relu", [b.op("BatchNormalization", [b.conv(x, "conv0", 3, 8), "ones", "zeros", "zeros", "ones"],
                           "bn0")], "relu0")
    h = b.op("Relu", [b.op("BatchNormalization", [b.conv(h, "conv1", 8, 8), "ones", "zeros", "zeros", "ones"],
                           "bn1")], "relu1")
    w = b.weight("shared.weight", (8, 8, 3, 3))
    h = b.op("Relu", [b.op("Conv", [h, w], "conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "relu2")
    y = b.op("Conv", [h, w], "conv3", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b.model([y])


@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_shared_constants_prune_exactly(sparsity: float) -> None:
    # simplify off: onnxsim would fold the identity BatchNormalizations, the structure under test
    result = prune(shared_constants(), PruneConfig(method="l1", sparsity=sparsity, simplify="off"))
    assert result.verified is not None and result.verified.max_abs_diff <= 1e-4
    nodes = {n.name: n for n in result.model.graph.node}
    bn0 = nodes["bn0"]
    assert bn0.input[1] == bn0.input[4] and bn0.input[2] == bn0.input[3]  # still one tensor each
    kept = int((8 * (1 - sparsity)))
    inits = {t.name: t for t in result.model.graph.initializer}
    assert list(inits[bn0.input[1]].dims) == [kept]
    again = analyze(result.model)
    assert again.macs == result.macs[1]


# --------------------------------------------------------------------------------------------
# control flow


@pytest.mark.parametrize("kind", ["if", "loop", "scan", "nested"])
def test_tensors_read_in_subgraphs_freeze_their_group(kind: str) -> None:
    model = fuzzkit.control_flow(kind)
    analysis = analyze(model)
    by_producer = {p: g for g in analysis.channel_groups for p in g.producers}
    node = fuzzkit.CONTROL_FLOW_NODES[kind]
    frozen = by_producer["conv1"]
    assert not frozen.prunable and node in (frozen.reason or "") and "subgraph" in (frozen.reason or "")
    assert by_producer["conv0"].prunable
    reads = analysis.graph.consumers["conv1_out"]
    assert any(n.name == node and slot == -1 for n, slot in reads)
    for verify_it in (True, False):
        result = prune(model, PruneConfig(method="l1", sparsity=0.5, verify=verify_it))
        assert result.keep[frozen.unit_slice].all()
        assert not result.keep[by_producer["conv0"].unit_slice].all()
        ok, error = fuzzkit._runs_model(result.model)
        assert ok, error


def test_subgraph_reads_order_the_graph() -> None:
    """A node whose subgraph reads a tensor comes after that tensor's producer."""
    model = fuzzkit.control_flow("if")
    nodes = list(model.graph.node)
    branch = next(n for n in nodes if n.op_type == "If")
    nodes.remove(branch)
    del model.graph.node[:]
    model.graph.node.extend([branch] + nodes)  # the If first: only its subgraph reads conv1_out
    graph = build_graph(load_model(model, validate=False))
    order = [n.name for n in graph.nodes]
    assert order.index("branch") > order.index("conv1")


# --------------------------------------------------------------------------------------------
# validation


def _with_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value, name))
    return model


@pytest.mark.parametrize("case, needle", [
    ("conv_weight", "onnxruntime cannot run the input"),  # it loads, and fails only when run
    ("dropped", "not a valid ONNX model"),
    ("dtype", "onnxruntime cannot load the input"),
])
def test_broken_inputs_are_input_errors(case: str, needle: str) -> None:
    model = graphs.conv_bn_relu_conv()
    if case == "conv_weight":
        _with_initializer(model, "conv1.weight", np.zeros((4, 7, 3, 3), np.float32))
    elif case == "dropped":
        del model.graph.initializer[0]
    else:
        _with_initializer(model, "conv1.weight", np.zeros((4, 8, 3, 3), np.float64))
    with pytest.raises(InputError, match=needle):
        prune(model, PruneConfig(method="l1", sparsity=0.3))


def test_layer_consistency_is_checked_before_the_rules() -> None:
    """What onnxruntime's load does not see (it infers no shapes past a custom op) is still refused."""
    model = graphs.unknown_op("custom")  # conv0 -> Mystery (com.example) -> conv1
    _with_initializer(model, "conv1.bias", np.zeros(3, np.float32))
    with pytest.raises(InputError, match="bias of shape"):
        analyze(model)


def test_contradicting_input_shape() -> None:
    with pytest.raises(InputError, match="contradicts"):
        analyze(graphs.conv_bn_relu_conv(), {"x": (1, 3, 16, 16)})
    assert analyze(graphs.conv_bn_relu_conv(), {"x": (2, 3, 8, 8)}).macs > 0  # the batch is dynamic


# --------------------------------------------------------------------------------------------
# verification that can fail


def _tiny_outputs(factor: float = 1e-9) -> onnx.ModelProto:
    model = graphs.conv_bn_relu_conv()
    for t in model.graph.initializer:
        if t.name.startswith("conv1."):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
    return model


def test_tiny_outputs_are_verified_on_scaled_inputs_and_can_fail() -> None:
    analysis = analyze(_tiny_outputs())
    keep = analysis.full_keep()
    keep[analysis.prunable()[0].unit_slice.start] = False
    pruned = apply_keep(analysis, keep)
    result = verify(analysis, keep, pruned)
    assert result.output_scale > 0 and result.note and "scaled" in result.note
    # an error in one kept weight: invisible to atol 1e-5 on N(0, 1) inputs, where outputs are ~1e-9
    for t in pruned.graph.initializer:
        if t.name.startswith("conv1.weight"):
            arr = numpy_helper.to_array(t).copy()
            arr[0, 0, 0, 0] *= 1.5
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    import onnxruntime as ort

    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    a = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ref = apply_keep(analysis, keep)
    b = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.allclose(a, b, rtol=1e-4, atol=1e-5) and np.abs(a - b).max() > 0  # what used to pass
    with pytest.raises(VerificationError, match="differs from the masked original"):
        verify(analysis, keep, pruned)


def test_tiny_outputs_use_real_data_when_given() -> None:
    analysis = analyze(_tiny_outputs())
    keep = analysis.full_keep()
    keep[analysis.prunable()[0].unit_slice.start] = False
    data = np.random.default_rng(0).uniform(0, 1e6, size=(4, 3, 8, 8)).astype(np.float32)
    result = verify(analysis, keep, apply_keep(analysis, keep), data=data)
    assert result.inputs == "real data" and "real data" in (result.note or "")
    assert result.to_json()["note"] == result.note


# --------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_round_trip() -> None:
    import torch

    rng = np.random.default_rng(3)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))])
    opt.zero_grad()
    state = {
        "episode": 7, "nan": float("nan"), "none": None, "flag": True, "text": "x",
        "rng": rng.bit_generator.state, "array": np.arange(6).reshape(2, 3), "bits": np.packbits([1, 0, 1]),
        "scalar": np.float32(0.25), "tuple": (1, (2.5, "a")), "list": [np.int64(3), {"k": [1]}],
        "tensor": torch.arange(4, dtype=torch.float32), "bf16": torch.ones(2, dtype=torch.bfloat16),
        "torch_rng": torch.Generator().manual_seed(1).get_state(), "optimizer": opt.state_dict(),
        "int_keys": {0: "a", 1: "b"},
    }
    fp, back = ckpt.decode(ckpt.encode("abc", state), "test")
    assert fp == "abc"
    assert back["episode"] == 7 and np.isnan(back["nan"]) and back["none"] is None and back["flag"] is True
    assert back["rng"] == state["rng"] and back["tuple"] == (1, (2.5, "a"))
    assert np.array_equal(back["array"], state["array"]) and np.array_equal(back["bits"], state["bits"])
    assert back["scalar"] == np.float32(0.25) and back["scalar"].dtype == np.float32
    assert isinstance(back["list"][0], np.int64) and back["list"][1] == {"k": [1]}
    assert torch.equal(back["tensor"], state["tensor"]) and back["bf16"].dtype == torch.bfloat16
    assert torch.equal(back["torch_rng"], state["torch_rng"])
    assert back["int_keys"] == {0: "a", 1: "b"}
    assert back["optimizer"]["param_groups"][0]["params"] == [0]
    with pytest.raises(TypeError):
        ckpt.encode("abc", {"bad": {1, 2}})



def test_checkpoint_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (marker,))

    monkeypatch.setattr(ckpt, "VERSION", 9)
    future = ckpt.encode("x", {})
    monkeypatch.undo()
    for data in (pickle.dumps({"fingerprint": "x", "state": Evil()}), b"", b"PK\x03\x04garbage", future,
                 ckpt.encode("x", {})[:-40]):
        with pytest.raises(InputError):
            ckpt.decode(data, "f")
    assert not marker.exists()
    with pytest.raises(InputError, match="version 9"):
        ckpt.decode(future, "f")


# --------------------------------------------------------------------------------------------
# files


def test_new_outputs_follow_the_umask_and_replaced_ones_keep_their_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fileio.atomic_write(tmp_path / "a", b"1")
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
        os.umask(0o002)
        fileio.atomic_write(tmp_path / "b", b"1")
        assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o664
        (tmp_path / "a").chmod(0o640)
        fileio.atomic_write(tmp_path / "a", b"2")
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640 and (tmp_path / "a").read_bytes() == b"2"
    finally:
        os.umask(old)


def test_file_and_folder_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    fileio.atomic_write(tmp_path / "a", b"1")
    assert synced == ["file", "dir"]


def test_transaction_writes_all_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError):
        with fileio.transaction():
            fileio.atomic_write(tmp_path / "a", b"1")
            raise RuntimeError("work failed")
    assert list(tmp_path.iterdir()) == []
    real = fileio._write_temp

    def fail_second(path: Path, payload: bytes) -> Path:
        if path.name == "b":
            raise OutputError(f"{path}: cannot write (No space left on device)")
        return real(path, payload)

    monkeypatch.setattr(fileio, "_write_temp", fail_second)
    with pytest.raises(OutputError, match="No space"):
        with fileio.transaction():
            fileio.atomic_write(tmp_path / "a", b"1")
            fileio.atomic_write(tmp_path / "b", b"2")
    assert list(tmp_path.iterdir()) == []  # neither, and no temporary file
    checkpoint = tmp_path / "c"
    with pytest.raises(RuntimeError), fileio.transaction():
        fileio.atomic_write(checkpoint, b"state", stage=False)  # a checkpoint is written at once
        raise RuntimeError
    assert checkpoint.read_bytes() == b"state"


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above any pid_max default: no such process
    stale = tmp_path / f".out.onnx.{dead}.0badcafe.tmp"
    other = tmp_path / f".other.onnx.{dead}.0badcafe.tmp"
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    fileio.atomic_write(tmp_path / "out.onnx", b"whole")
    assert not stale.exists() and other.exists()


def test_check_outputs(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    from onnx.external_data_helper import convert_model_to_external_data

    proto = graphs.conv_bn_relu_conv()
    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    onnx.save(proto, str(model))
    (tmp_path / "link.onnx").symlink_to(model)
    os.link(model, tmp_path / "hard.onnx")
    inputs = fileio.model_files(model)
    assert tmp_path / "m.onnx.data" in inputs
    for out, needle in [(tmp_path / "link.onnx", "overwrite an input"), (tmp_path / "hard.onnx", "overwrite"),
                        (tmp_path / "m.onnx.data", "overwrite"), (tmp_path, "is a directory"),
                        (tmp_path / "no" / "o.onnx", "does not exist")]:
        with pytest.raises(InputError, match=needle):
            fileio.check_outputs({"-o": out}, inputs)
    with pytest.raises(InputError, match="same file as -o"):
        fileio.check_outputs({"-o": tmp_path / "o", "--report": tmp_path / "o"}, inputs)
    fileio.check_outputs({"-o": tmp_path / "o", "--report": None, "--json": "-"}, inputs)
