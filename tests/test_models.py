"""Tests of the reference CNNs in models/ and of models.train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models import ARCHS, build
from models.train import main, train


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_shape(arch: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = ARCHS[arch](in_channels=shape[0], num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_resnet_uses_option_b_shortcuts() -> None:
    model = build("resnet20", in_channels=1, num_classes=10)
    shortcut_convs = [m for name, m in model.named_modules()
                      if name.endswith("shortcut.0") and isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in shortcut_convs] == [
        (16, 32, (1, 1), (2, 2)), (32, 64, (1, 1), (2, 2))]
    n_blocks = sum(1 for m in model.modules() if m.__class__.__name__ == "BasicBlock")
    assert n_blocks == 9
    assert sum(1 for m in build("resnet56").modules() if m.__class__.__name__ == "BasicBlock") == 27


def test_build_rejects_unknown_arch() -> None:
    with pytest.raises(KeyError, match="unknown architecture"):
        build("resnet18")


def test_resnet20_onnx_export_matches_torch(tmp_path: Path) -> None:
    import onnxruntime as ort

    from models.train import export_onnx

    torch.manual_seed(0)
    model = build("resnet20", in_channels=1, num_classes=10)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    model.eval()
    path = export_onnx(model, (1, 1, 28, 28), tmp_path / "r20.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    ops = {n.op_type for n in proto.graph.node}
    assert "Pad" not in ops and {"Conv", "BatchNormalization", "Add", "Gemm"} <= ops

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "input" and sess.get_outputs()[0].name == "logits"
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)  # batch 3: dynamic N
    (got,) = sess.run(["logits"], {"input": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.fixture
def one_thread() -> object:
    """Train on one thread: on a shared 2-core machine two threads can be several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_one_epoch_on_digits_beats_chance(tmp_path: Path, one_thread: object) -> None:
    result = train("resnet20", "digits", epochs=1, batch_size=32, lr=0.05, out_dir=tmp_path,
                   max_train_images=800, verbose=False)
    assert result.test_top1 > 0.3  # chance is 0.1
    assert result.input_shape == (1, 1, 8, 8) and result.num_classes == 10
    assert result.onnx_path is not None and result.onnx_path.exists()
    assert result.json_path is not None
    record = json.loads(result.json_path.read_text())
    assert {"arch", "data", "epochs", "test_top1", "train_seconds", "torch"} <= set(record)
    assert record["arch"] == "resnet20" and record["data"] == "digits" and record["epochs"] == 1
    assert record["test_top1"] == pytest.approx(result.test_top1, abs=1e-6)
    assert record["torch"] == torch.__version__
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    # The exported file (trained in channels-last format) computes what the trained model does.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((5, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        want = result.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, rtol=1e-4, atol=1e-4)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(result.onnx_path)).graph.node}
    # ... and the folded form users export by default: no BatchNormalization, same function
    folded = result.folded_onnx_path
    assert folded is not None and folded.name == "resnet20_digits-folded.onnx" and record["onnx_folded"] == folded.name
    ops = [n.op_type for n in onnx.load(str(folded)).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 21
    sess = ort.InferenceSession(str(folded), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, rtol=1e-4, atol=1e-4)


def test_train_cli_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--arch", "resnet20", "--data", f"fashion-mnist:{tmp_path / 'absent'}",
                 "--epochs", "1", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.onnx"))
