"""`taylor`: first-order Taylor importance |gradient x weight| of every unit (Molchanov et al.,
2019), computed on the torch copy over a few calibration batches.

For every member of a group that holds weights (producer weights "out", per-channel constants
"param" such as bias and BatchNormalization scale / shift, consumer input weights "in"), the
estimate of a position is |sum over its weights of g * w| for one batch (the first-order change
of the loss when the position is zeroed), summed over the batches. As in
`onnxprune.criteria.weights`, each member's estimates are divided by their mean so that no layer
dominates, averaged over the positions of a unit, then averaged over the members that touch the
unit. Frozen groups get +inf. BatchNormalization running statistics carry no gradient and are
left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onnxprune.criteria.normalize import mean_normalized
from onnxprune.data import default_workers, loader
from onnxprune.deps import Analysis
from onnxprune.torchcopy.convert import TorchCopy
from onnxprune.torchcopy.device import to_device_batch
from onnxprune.torchcopy.masked import torch_threads

_KINDS = ("out", "param", "in")


@dataclass(eq=False)
class _Probe:
    units: np.ndarray  # (positions,) global unit per position
    tensor: torch.Tensor
    axis: int  # torch axis of the positions
    total: torch.Tensor  # (positions,) float64 accumulated |sum g*w|


def _is_running_stat(copy: TorchCopy, owner: str, attr: str) -> bool:
    module = copy.module.get_submodule(owner)
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and attr in ("running_mean", "running_var")  # noqa: SLF001


def _probes(copy: TorchCopy, analysis: Analysis) -> list[_Probe]:
    probes = []
    for rm in analysis.groups.members:
        m = rm.member
        if m.kind not in _KINDS or not m.tensor or not rm.units.size:
            continue
        for binding in copy.bindings.get(m.tensor, ())[:1]:
            if _is_running_stat(copy, binding.owner, binding.attr):
                continue
            tensor = copy.resolve(binding)
            if not tensor.is_floating_point() or tensor.dim() == 0:
                continue
            axis = binding.torch_axis(m.axis, tensor.dim())
            if tensor.shape[axis] != rm.units.size:
                continue
            probes.append(_Probe(rm.units, tensor, axis,
                                 torch.zeros(rm.units.size, dtype=torch.float64, device=tensor.device)))
    return probes


def _accumulate(copy: TorchCopy, probes: list[_Probe], x: np.ndarray, y: np.ndarray, batches: int,
                step: int, seed: int, workers: int | None = None) -> None:
    """Add |sum g * w| per position to every probe, over `batches` batches (eval mode)."""
    tensors = {id(p.tensor): p.tensor for p in probes}
    flags = {k: t.requires_grad for k, t in tensors.items()}
    module = copy.module
    was_training = module.training
    module.eval()  # BatchNorm with its running statistics, as in the ONNX model
    try:
        for t in tensors.values():
            t.requires_grad_(True)
        workers = default_workers(x, copy.device) if workers is None else workers
        for _, xb, yb in loader(x, y, step, shuffle=True, seed=seed, limit=batches * step,
                                drop_last=len(x) >= step, workers=workers):
            for t in tensors.values():
                t.grad = None
            logits = copy.logits(to_device_batch(xb, copy.device))
            loss = F.cross_entropy(logits, torch.from_numpy(yb).long().to(logits.device))
            loss.backward()
            with torch.no_grad():
                for p in probes:
                    g = p.tensor.grad
                    if g is None:
                        continue
                    gw = (g * p.tensor).movedim(p.axis, 0).reshape(p.tensor.shape[p.axis], -1)
                    p.total += gw.sum(dim=1).abs().double()
    finally:
        for k, t in tensors.items():
            t.grad = None
            t.requires_grad_(flags[k])
        module.train(was_training)


def taylor_scores(copy: TorchCopy, analysis: Analysis, x: np.ndarray, y: np.ndarray, batches: int = 8,
                  batch_size: int = 64, seed: int = 0, threads: int | None = None,
                  normalize: bool = True, images: int | None = None, workers: int | None = None) -> np.ndarray:
    """Importance of every unit (float64 (num_units,); higher = more important; frozen: +inf).

    Args:
        copy: the torch copy of `analysis`' model (`to_torch(analysis)`).
        x, y: calibration data (e.g. the train split), float32 in the model's layout and int64.
        batches: number of mini-batches of `batch_size` to accumulate over (seeded shuffle).
        threads: torch intra-op threads meanwhile (None: torch's setting).
        normalize: divide each member's estimates by their mean (the criterion, for ranking
            inside groups). False: the raw estimates (summed |g . w| over the batches, averaged
            over the members), comparable across groups as estimates of the loss change.
        images: calibration images to read (`--calib-images`); replaces `batches` by
            ceil(images / batch_size) when given.
        workers: decoding processes (None: `onnxprune.data.default_workers` for the copy's device).

    The copy may live on any device (`TorchCopy.to`); batches are moved there one at a time.
    """
    n = analysis.groups.num_units
    probes = _probes(copy, analysis)
    step = copy.fixed_batch or batch_size
    if images is not None:  # read exactly `images` images (fewer per batch when they are few)
        step = copy.fixed_batch or max(1, min(step, images))
        batches = max(1, -(-images // step))
    with torch_threads(threads):
        _accumulate(copy, probes, x, y, batches, step, seed, workers)

    total = np.zeros(n)
    count = np.zeros(n)
    for p in probes:
        est = p.total.cpu().numpy()
        est = mean_normalized(est) if normalize else est
        per_unit = np.zeros(n)
        hits = np.zeros(n)
        np.add.at(per_unit, p.units, est)
        np.add.at(hits, p.units, 1.0)
        touched = hits > 0
        total[touched] += per_unit[touched] / hits[touched]
        count[touched] += 1
    scores = np.divide(total, count, out=np.zeros(n), where=count > 0)
    for grp in analysis.channel_groups:
        if not grp.prunable:
            scores[grp.unit_slice] = np.inf
    return scores


def taylor_criterion(analysis: Analysis, *, seed: int = 0, copy: TorchCopy | None = None,
                     splits: Any = None, images: int | None = None, batch_size: int = 64,
                     workers: int | None = None) -> np.ndarray:
    """The registry's `taylor` criterion: `taylor_scores` on the training split of `splits`,
    over `images` calibration images (`--calib-images`; None: 8 batches) in batches of
    `batch_size`, read by `workers` decoding processes."""
    if copy is None or splits is None:
        raise ValueError("taylor needs the torch copy and the data splits")
    x, y = splits.train
    return taylor_scores(copy, analysis, x, y, seed=seed, batch_size=batch_size, images=images, workers=workers)
