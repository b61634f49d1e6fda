"""BatchNorm re-inserted into a torch copy whose exporter folded it into Conv, and folded back.

Most exported CNNs have no BatchNormalization node: the exporter folded each BatchNorm into the
weights and bias of the Conv before it. Training such a model is training an un-normalized
network (SGD at the usual learning rates diverges), and re-estimating BatchNorm statistics after
pruning has nothing to re-estimate. `ReinsertedBatchNorm` gives every eligible layer of a torch
copy a BatchNorm on its output again, as a forward hook (the fx graph, the ONNX bindings and the
write-back are untouched):

    z -> (z - running_mean) / sqrt(running_var + eps) * weight + bias

initialised from per-channel statistics (mean, var) of z measured on calibration images:
running_mean = mean, running_var = var, weight = sqrt(var + eps), bias = mean. In eval mode that
is the identity (the function is unchanged); in train mode it normalizes with batch statistics,
as the BatchNorm the exporter folded did. `fold()` puts the trained (or re-estimated) BatchNorm
back into the layer's weight and bias,

    scale = weight / sqrt(running_var + eps),  W' = W * scale,  b' = (b - running_mean) * scale + bias,

and removes the hooks, so that `TorchCopy.write_back` writes a model with the input's node
structure. For a folded model the layer's output statistics of the *unpruned* model are the
BatchNorm affine parameters (`stats=`); re-estimating the running statistics under a pruning
mask then does what BatchNorm re-estimation does for a model that kept its BatchNorm.

Eligible layers: torch `Conv1d/2d/3d` (and `Linear` with `linear=True`) modules with a bias, whose
weight and bias are ONNX initializers held by that module alone, called once in the graph, whose
output feeds no BatchNorm module and is not a graph output. Layers without a bias are skipped:
folding back would need an initializer the ONNX model does not have.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from onnxprune.torchcopy.convert import TorchCopy
from onnxprune.torchcopy.device import to_device_batch

if TYPE_CHECKING:
    from onnxprune.deps import Analysis

#: BatchNorm epsilon of the re-inserted layers (PyTorch's default)
EPS = 1e-5

#: BatchNorm class by the rank of the layer's output (N, C, ...)
_BATCHNORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


@dataclass(frozen=True)
class Layer:
    """An eligible layer: its fx call node's target, and the ONNX initializers of its weight and bias."""

    target: str
    weight: str
    bias: str


@dataclass(frozen=True, eq=False)
class LayerStats:
    """Per-channel statistics of a layer's output."""

    mean: np.ndarray  # (C,) float64
    var: np.ndarray  # (C,) float64, biased
    ndim: int  # rank of the output, (N, C, ...)

    def take(self, idx: np.ndarray) -> LayerStats:
        """The statistics of channels `idx` only."""
        return LayerStats(self.mean[idx], self.var[idx], self.ndim)


def _feeds_batchnorm(module: fx.GraphModule, node: fx.Node) -> bool:
    for user in node.users:
        if user.op == "call_module" and isinstance(module.get_submodule(str(user.target)),
                                                   nn.modules.batchnorm._BatchNorm):  # noqa: SLF001
            return True
    return False


def eligible_layers(copy: TorchCopy, linear: bool = False) -> list[Layer]:
    """The layers of `copy` that get a BatchNorm (see the module docstring), in graph order."""
    kinds: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d) + ((nn.Linear,) if linear else ())
    module = copy.module
    calls: dict[str, int] = {}
    for node in module.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    holders: dict[int, int] = {}  # id(parameter) -> how many modules hold it
    for sub in module.modules():
        for p in sub.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    bound: dict[tuple[str, str], str] = {}
    for name, binds in copy.bindings.items():
        for b in binds:
            bound.setdefault((b.owner, b.attr), name)
    layers = []
    for node in module.graph.nodes:
        if node.op != "call_module" or calls[str(node.target)] != 1:
            continue
        target = str(node.target)
        sub = module.get_submodule(target)
        if type(sub) not in kinds or getattr(sub, "bias", None) is None:
            continue
        weight, bias = bound.get((target, "weight")), bound.get((target, "bias"))
        if weight is None or bias is None or len(copy.bindings[weight]) != 1 or len(copy.bindings[bias]) != 1:
            continue
        if holders.get(id(sub.weight), 0) != 1 or holders.get(id(sub.bias), 0) != 1:
            continue
        if _feeds_batchnorm(module, node) or any(u.op == "output" for u in node.users):
            continue
        layers.append(Layer(target, weight, bias))
    return layers


#: elements of a layer output converted to float64 at a time by `_moments` (32 MiB)
_MOMENT_CHUNK = 1 << 22


def _moments(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel (sum, sum of squares, count) of a (N, C, ...) tensor, in float64.

    Converted a few images at a time: a float64 copy of a whole 224x224 batch output (plus its
    square) would take several times the batch's own activations."""
    out = out.detach()
    c = out.shape[1]
    dims = [0] + list(range(2, out.dim()))
    per_image = max(1, out[:1].numel())
    step = max(1, _MOMENT_CHUNK // per_image)
    s = out.new_zeros(c, dtype=torch.float64)
    sq = out.new_zeros(c, dtype=torch.float64)
    for start in range(0, out.shape[0], step):
        part = out[start:start + step].to(torch.float64, copy=True)  # (n, C, ...)
        s += part.sum(dims)
        sq += part.square_().sum(dims)
    return s, sq, out.numel() // max(c, 1)


def layer_statistics(copy: TorchCopy, layers: list[Layer], x: np.ndarray | torch.Tensor,
                     batch_size: int = 128) -> dict[str, LayerStats]:
    """Per-channel mean and biased variance of each layer's output over `x` (eval mode, no grad),
    keyed by layer target. Layers whose output has no channel axis 1 are left out."""
    sums: dict[str, list] = {}
    skipped: set[str] = set()
    handles = []

    def make_hook(target: str):
        def hook(mod: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            if not isinstance(out, torch.Tensor) or out.dim() not in _BATCHNORM or \
                    (isinstance(mod, nn.Linear) and out.dim() != 2):  # a Linear's channels are last
                skipped.add(target)
                return
            s, sq, n = _moments(out)
            acc = sums.setdefault(target, [0.0, 0.0, 0, out.dim()])
            acc[0], acc[1], acc[2] = acc[0] + s, acc[1] + sq, acc[2] + n
        return hook

    for layer in layers:
        handles.append(copy.module.get_submodule(layer.target).register_forward_hook(make_hook(layer.target)))
    was_training = copy.module.training
    copy.module.eval()
    step = copy.fixed_batch or batch_size
    try:
        with torch.no_grad():
            for start in range(0, len(x), step):
                xb = x[start:start + step]  # x may be lazy: read one batch at a time
                if copy.fixed_batch and len(xb) != step:
                    break
                copy.logits(to_device_batch(xb, copy.device))
    finally:
        for h in handles:
            h.remove()
        copy.module.train(was_training)
    stats = {}
    for target, (s, sq, n, ndim) in sums.items():
        if target in skipped:
            continue
        mean = s / n
        var = (sq / n - mean * mean).clamp_min(0.0)
        stats[target] = LayerStats(mean.cpu().numpy(), var.cpu().numpy(), ndim)
    return stats


class ReinsertedBatchNorm:
    """BatchNorm layers on the outputs of a torch copy's eligible layers (see the module docstring).

    Example:
        bn = ReinsertedBatchNorm(student, x_calib)   # function unchanged (eval mode)
        opt = SGD([*student.module.parameters(), *bn.parameters()])
        ... train ...
        bn.fold()                                   # back into the Conv weights; hooks removed
        model = student.write_back()

    `stats` (layer target -> `LayerStats`, e.g. an unpruned model's statistics at the kept
    channels) sets the affine parameters instead of the statistics measured on `x`; the running
    statistics are then measured on `x` (re-estimated). `enabled` switches the hooks off
    without removing them (`active()` switches them on inside a block). `measure=False` with
    `stats` skips the pass over `x`: the running statistics start from `stats`, for a caller that
    re-estimates them right away (`recalibrate_batchnorm`).
    """

    def __init__(self, copy: TorchCopy, x: np.ndarray | torch.Tensor, *, linear: bool = False,
                 stats: Mapping[str, LayerStats] | None = None, batch_size: int = 128,
                 layers: list[Layer] | None = None, enabled: bool = True, measure: bool = True) -> None:
        self.copy = copy
        self.layers = eligible_layers(copy, linear) if layers is None else list(layers)
        if not measure and stats is not None:  # the caller re-estimates at once: start from `stats`
            measured = {lay.target: stats[lay.target] for lay in self.layers if lay.target in stats}
        else:
            measured = layer_statistics(copy, self.layers, x, batch_size) if self.layers else {}
        self.layers = [lay for lay in self.layers if lay.target in measured]
        self.norms = nn.ModuleDict()
        self._keys: dict[str, str] = {}
        self.enabled = enabled
        self._handles = []
        for i, layer in enumerate(self.layers):
            own = measured[layer.target]
            ref = stats[layer.target] if stats is not None and layer.target in stats else own
            if ref.mean.shape != own.mean.shape:
                raise ValueError(f"{layer.target}: {own.mean.size} channels, statistics given for {ref.mean.size}")
            sub = copy.module.get_submodule(layer.target)
            bn = _BATCHNORM[own.ndim](own.mean.size, eps=EPS)
            dtype = sub.weight.dtype
            with torch.no_grad():
                bn.running_mean.copy_(torch.from_numpy(own.mean))
                bn.running_var.copy_(torch.from_numpy(own.var))
                bn.weight.copy_(torch.from_numpy(np.sqrt(ref.var + EPS)))
                bn.bias.copy_(torch.from_numpy(ref.mean))
            bn.to(dtype=dtype, device=sub.weight.device)
            bn.train(copy.module.training)
            key = f"bn{i}"
            self.norms[key] = bn
            self._keys[layer.target] = key
            self._handles.append(sub.register_forward_hook(self._hook(bn)))

    def __len__(self) -> int:
        return len(self.layers)

    def _hook(self, bn: nn.Module):
        def hook(_mod: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
            return bn(out) if self.enabled else out
        return hook

    def bn(self, target: str) -> nn.modules.batchnorm._BatchNorm:  # noqa: SLF001
        """The BatchNorm on layer `target`'s output."""
        return self.norms[self._keys[target]]  # type: ignore[return-value]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The hooks on inside the block."""
        previous = self.enabled
        self.enabled = True
        try:
            yield
        finally:
            self.enabled = previous

    def parameters(self) -> list[nn.Parameter]:
        return list(self.norms.parameters())

    def train(self, mode: bool = True) -> None:
        """BatchNorm train (batch statistics, running statistics updated) or eval mode."""
        self.norms.train(mode)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.norms.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.norms.load_state_dict(state)

    def reset_running_stats(self, momentum: float | None = None) -> list[float | None]:
        """Zero the running statistics (to re-estimate them); set `momentum`; return the old ones."""
        old = []
        for bn in self.norms.values():
            old.append(bn.momentum)
            bn.reset_running_stats()
            bn.momentum = momentum
        return old

    def fold(self) -> None:
        """Fold every BatchNorm (eval form) into its layer's weight and bias; remove the hooks."""
        module = self.copy.module
        with torch.no_grad():
            for layer in self.layers:
                bn = self.bn(layer.target)
                sub = module.get_submodule(layer.target)
                scale = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps))  # (C,)
                shift = bn.bias.double() - bn.running_mean.double() * scale
                shape = (-1,) + (1,) * (sub.weight.dim() - 1)
                sub.weight.copy_((sub.weight.double() * scale.view(shape)).to(sub.weight.dtype))
                sub.bias.copy_((sub.bias.double() * scale + shift).to(sub.bias.dtype))
        self.remove()

    def remove(self) -> None:
        """Remove the hooks without folding (the layers compute what they did before)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.layers = []
        self._keys = {}
        self.norms = nn.ModuleDict()


def reestimate(copy: TorchCopy, norms: Sequence[nn.Module], x: np.ndarray | torch.Tensor, batches: int = 4,
               batch_size: int = 128, channels_last: bool = False) -> None:
    """Re-estimate the running statistics of the BatchNorm modules `norms` on the first `batches`
    batches of `x` (cumulative average; every other module of `copy` in eval mode, no grad)."""
    step = copy.fixed_batch or batch_size
    momenta = [bn.momentum for bn in norms]
    was_training = copy.module.training
    copy.module.eval()
    try:
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average over the batches seen
            bn.train()
        with torch.no_grad():
            for k, start in enumerate(range(0, len(x), step)):
                if k >= batches:
                    break
                xb = x[start:start + step]  # x may be lazy: read one batch at a time
                if len(xb) < 2 or (copy.fixed_batch and len(xb) != step):
                    break
                copy.logits(to_device_batch(xb, copy.device, channels_last))
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
            bn.eval()
        copy.module.train(was_training)


def kept_positions(analysis: Analysis, keep: np.ndarray, copy: TorchCopy) -> dict[str, np.ndarray]:
    """For each layer of `copy` (the torch copy of `analysis`' unpruned model), the indices of the
    output channels a pruned model keeps under `keep`, keyed by layer target.

    Read from the analysis' "out" members (the producer weights); layers whose output channels
    are not pruned keep them all.
    """
    owner: dict[str, str] = {}
    for name, binds in copy.bindings.items():
        for b in binds:
            if b.attr == "weight":
                owner.setdefault(name, b.owner)
    kept: dict[str, np.ndarray] = {}
    for rm in analysis.groups.members:
        m = rm.member
        if m.kind != "out" or m.tensor not in owner or not rm.units.size:
            continue
        binding = copy.bindings[m.tensor][0]
        if binding.torch_axis(m.axis, copy.resolve(binding).dim()) != 0:
            continue
        kept[owner[m.tensor]] = np.flatnonzero(np.asarray(keep, dtype=bool)[rm.units])
    return kept
