"""The peer most users would pick instead: Torch-Pruning, on the same trained model, at the same budget.

Four variants, as the Torch-Pruning documentation presents them: group L1
(`GroupMagnitudeImportance(p=1)`) or group Taylor (`GroupTaylorImportance()`, gradients of the
cross-entropy on 8 seeded batches of 64 training images, the calibration onnxprune's `taylor` uses),
each with local (uniform per-layer ratio) or global ranking (`global_pruning=True`). Everything
else is Torch-Pruning's default (`MetaPruner`, one step, `max_pruning_ratio` 1.0); the classifier
is ignored.

Torch-Pruning prunes PyTorch modules, so it gets what its users have: the `models/` PyTorch model
with BatchNorm, loaded with the weights of the BN-kept ONNX file of the base (checked against
onnxruntime, and against the folded file when the benchmark column is the folded one). The pruned
module is exported back to ONNX in the benchmark's form (BatchNorm folded into Conv, or kept), so
that fine-tuning, evaluation and latency go through exactly the path of every other method. A
MACs target is met by bisection on the pruning ratio, measured with onnxprune's cost model on the
exported file (the same measure as for every other method).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from onnxprune.nets.cifar import build
from onnxprune.nets.train import export_onnx
from onnxprune.deps import analyze
from onnxprune.ir import load_model

TAYLOR_BATCHES = 8
TAYLOR_BATCH_SIZE = 64


@dataclass(frozen=True)
class PeerSpec:
    """One Torch-Pruning variant: importance criterion and ranking scope."""

    importance: str  # "l1" | "taylor"
    global_pruning: bool

    def settings(self) -> dict[str, Any]:
        imp = ("GroupMagnitudeImportance(p=1)" if self.importance == "l1" else
               f"GroupTaylorImportance() on {TAYLOR_BATCHES} x {TAYLOR_BATCH_SIZE} training images")
        return {"library": "torch-pruning", "pruner": "MetaPruner", "importance": imp,
                "global_pruning": self.global_pruning, "max_pruning_ratio": 1.0, "iterative_steps": 1,
                "ignored_layers": "final Linear", "source": "models/ PyTorch model with BatchNorm"}


PEERS: dict[str, PeerSpec] = {
    "tp-l1-local": PeerSpec("l1", False),
    "tp-l1-global": PeerSpec("l1", True),
    "tp-taylor-local": PeerSpec("taylor", False),
    "tp-taylor-global": PeerSpec("taylor", True),
}


def torch_model_from_onnx(arch: str, path: str | Path) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """`arch` with the weights of the BN-kept ONNX file `path` (exported by models/train.py)."""
    loaded = load_model(path).model
    inits = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    dims = [d.dim_value for d in loaded.graph.input[0].type.tensor_type.shape.dim]
    shape = (1, dims[1], dims[2], dims[3])
    out_dim = loaded.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    net = build(arch, in_channels=shape[1], num_classes=out_dim)
    state = net.state_dict()
    missing = [k for k in state if k not in inits and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"{path}: no initializer for {missing[:5]} (Torch-Pruning needs the BN-kept export)")
    new = {k: (torch.from_numpy(inits[k].copy()).to(v.dtype) if k in inits else v) for k, v in state.items()}
    net.load_state_dict(new)
    net.eval()
    check_against_ort(net, loaded, shape)
    return net, shape


def check_against_ort(net: nn.Module, model: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    """Raise when `net` and the ONNX `model` disagree on seeded random inputs."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((4,) + tuple(shape[1:])).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
        raise RuntimeError(f"rebuilt torch model differs from the ONNX file (max {np.abs(got - want).max():.3g})")


def _taylor_batches(x: np.ndarray, y: np.ndarray, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    idx = np.random.default_rng(seed).permutation(len(x))[:TAYLOR_BATCHES * TAYLOR_BATCH_SIZE]
    return [(torch.from_numpy(np.ascontiguousarray(x[b])), torch.from_numpy(y[b]).long())
            for b in np.array_split(idx, TAYLOR_BATCHES)]


def tp_prune(net: nn.Module, shape: tuple[int, ...], ratio: float, spec: PeerSpec,
             calib: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> nn.Module:
    """A pruned deep copy of `net`: Torch-Pruning with `spec` at pruning ratio `ratio`."""
    import torch_pruning as tp

    model = copy.deepcopy(net).eval()
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    importance: Any = (tp.importance.GroupMagnitudeImportance(p=1) if spec.importance == "l1"
                       else tp.importance.GroupTaylorImportance())
    pruner = tp.pruner.MetaPruner(model, torch.zeros(*shape), importance=importance, pruning_ratio=ratio,
                                  ignored_layers=[fc], global_pruning=spec.global_pruning)
    if spec.importance == "taylor":
        if not calib:
            raise ValueError("Taylor importance needs calibration batches")
        model.zero_grad()
        for xb, yb in calib:  # eval mode: BatchNorm statistics untouched, gradients accumulated
            F.cross_entropy(model(xb), yb).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def tp_export(arch: str, bn_path: str | Path, spec: PeerSpec, *, fold_bn: bool,
              reference: str | Path | None = None, train: tuple[np.ndarray, np.ndarray] | None = None,
              seed: int = 0, sparsity: float | None = None,
              target_flops: float | None = None,
              accept: Callable[[onnx.ModelProto], bool] | None = None) -> tuple[onnx.ModelProto, float]:
    """(pruned ONNX model, pruning ratio used) for a channel sparsity, a MACs target or a test.

    `bn_path` is the BN-kept export of the base (what Torch-Pruning prunes); `reference` the file
    the benchmark column starts from (the folded export), checked to compute the same function.
    `accept(model)` (e.g. a latency test) replaces the MACs test in the bisection.
    """
    net, shape = torch_model_from_onnx(arch, bn_path)
    ref = load_model(reference if reference is not None else bn_path).model
    if reference is not None:
        check_against_ort(net, ref, shape)
    base_macs = analyze(ref).macs
    calib = _taylor_batches(*train, seed) if spec.importance == "taylor" and train is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tp.onnx"

        def export(ratio: float) -> tuple[onnx.ModelProto, float]:
            export_onnx(tp_prune(net, shape, ratio, spec, calib), shape, out, fold_bn=fold_bn)
            model = onnx.load(str(out))
            return model, analyze(model).macs / base_macs

        if sparsity is not None:
            return export(sparsity)[0], sparsity
        if target_flops is None and accept is None:
            raise ValueError("give sparsity, target_flops or accept")

        def ok(model: onnx.ModelProto, frac: float) -> bool:
            return accept(model) if accept is not None else frac <= target_flops  # type: ignore[operator]

        lo, hi = 0.0, 0.95
        best_model, frac = export(hi)
        if not ok(best_model, frac):
            test = (f"is over the latency target at {frac:.3f} of the MACs" if accept is not None
                    else f"keeps {frac:.3f} of the MACs, over the target's {target_flops:.3f}")
            raise RuntimeError(f"Torch-Pruning cannot reach the target (its largest ratio, {hi}, {test})")
        best_ratio = hi
        for _ in range(10 if accept is None else 7):
            mid = 0.5 * (lo + hi)
            model, frac = export(mid)
            if ok(model, frac):
                hi, best_model, best_ratio = mid, model, mid
            else:
                lo = mid
        return best_model, best_ratio
