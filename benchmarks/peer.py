"""The peer most users would pick instead: Torch-Pruning (group L1, `GroupMagnitudeImportance(p=1)`)
on the same PyTorch model, at the same budget.

The PyTorch model is rebuilt from `models.cifar` and loaded with the weights of the trained ONNX
file (checked against onnxruntime), pruned by Torch-Pruning's `MetaPruner` with uniform
per-layer ratios (the final classifier ignored), and exported back to ONNX with BatchNorm kept,
so that fine-tuning, evaluation and latency go through exactly the path of every other method.
A MACs target is met by bisection on the pruning ratio, measured with onnxprune's cost model on
the exported file (the same measure as for every other method).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from models.cifar import build
from models.train import export_onnx
from onnxprune.deps import analyze
from onnxprune.ir import load_model


def torch_model_from_onnx(arch: str, path: str | Path) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """`arch` with the weights of the ONNX file `path` (exported by models/train.py)."""
    loaded = load_model(path).model
    inits = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    dims = [d.dim_value for d in loaded.graph.input[0].type.tensor_type.shape.dim]
    shape = (1, dims[1], dims[2], dims[3])
    out_dim = loaded.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    net = build(arch, in_channels=shape[1], num_classes=out_dim)
    state = net.state_dict()
    missing = [k for k in state if k not in inits and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"{path}: no initializer for {missing[:5]}")
    new = {k: (torch.from_numpy(inits[k].copy()).to(v.dtype) if k in inits else v) for k, v in state.items()}
    net.load_state_dict(new)
    net.eval()
    _check_against_ort(net, loaded, shape)
    return net, shape


def _check_against_ort(net: nn.Module, model: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((4,) + shape[1:]).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
        raise RuntimeError(f"rebuilt torch model differs from the ONNX file (max {np.abs(got - want).max():.3g})")


def tp_prune(net: nn.Module, shape: tuple[int, ...], ratio: float) -> nn.Module:
    """A pruned deep copy of `net`: Torch-Pruning group L1, `ratio` of every layer's channels."""
    import torch_pruning as tp

    model = copy.deepcopy(net).eval()
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    example = torch.zeros(*shape)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[fc], global_pruning=False)
    pruner.step()
    return model


def tp_export(arch: str, path: str | Path, *, sparsity: float | None = None,
              target_flops: float | None = None) -> tuple[onnx.ModelProto, float]:
    """(pruned ONNX model, pruning ratio used) for a channel sparsity or a MACs target."""
    net, shape = torch_model_from_onnx(arch, path)
    base_macs = analyze(load_model(path).model).macs
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tp.onnx"

        def export(ratio: float) -> tuple[onnx.ModelProto, float]:
            export_onnx(tp_prune(net, shape, ratio), shape, out)
            model = onnx.load(str(out))
            return model, analyze(model).macs / base_macs

        if sparsity is not None:
            return export(sparsity)[0], sparsity
        assert target_flops is not None
        lo, hi = 0.0, 0.95
        best_model, frac = export(hi)
        if frac > target_flops:
            raise RuntimeError(f"Torch-Pruning cannot reach {target_flops} of the MACs (ratio {hi} keeps {frac:.3f})")
        best_ratio = hi
        for _ in range(12):
            mid = 0.5 * (lo + hi)
            model, frac = export(mid)
            if frac <= target_flops:
                hi, best_model, best_ratio = mid, model, mid
            else:
                lo = mid
        return best_model, best_ratio
