"""Post-training between pruning steps: knowledge distillation into the full-size torch copy with
the current mask enforced (arXiv 2411.06463, section 3.4).

The student keeps the ORIGINAL model's shapes, so the analysis (groups, units, cost model) stays
valid for the whole search. A removed unit is simulated as in `MaskedModel`: the input weights of
its consumers are zero, so that nothing downstream sees it, and the full-size student computes
exactly what the physically pruned model computes (in training mode too). `MaskProjection`
re-zeroes those weights after every optimizer step (a projection onto the pruned model's weight
space). `with_weights` puts trained weights into the analysis' normalized ONNX model, so
`apply_keep(with_weights(...), keep)` is the pruned model with the trained weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from onnxprune.deps import Analysis
from onnxprune.errors import UnsupportedModelError
from onnxprune.torchcopy import TorchCopy
from onnxprune.torchcopy.finetune import distillation_loss
from onnxprune.torchcopy.masked import accuracy, batched_logits


@dataclass(frozen=True, eq=False)
class _Zeroed:
    tensor: torch.Tensor  # live parameter (modified in place)
    units: torch.Tensor  # (positions,) global unit of each position along the axis
    shape: tuple[int, ...]  # broadcast shape of the factor


class MaskProjection:
    """Zeroes the consumer input weights of removed units in a torch copy of `analysis`' model."""

    def __init__(self, copy: TorchCopy, analysis: Analysis) -> None:
        self.num_units = analysis.groups.num_units
        parts = []
        for rm in analysis.groups.members:
            m = rm.member
            if m.kind != "in" or not rm.units.size:
                continue
            binds = copy.bindings.get(m.tensor)
            if not binds:
                raise UnsupportedModelError(f"post-training: consumer weight {m.tensor} is not a torch tensor")
            for binding in binds:
                tensor = copy.resolve(binding)
                axis = binding.torch_axis(m.axis, tensor.dim())
                shape = [1] * tensor.dim()
                shape[axis] = rm.units.size
                parts.append(_Zeroed(tensor, torch.from_numpy(rm.units.astype(np.int64)), tuple(shape)))
        self._parts = tuple(parts)

    def apply(self, keep: np.ndarray) -> None:
        factor = torch.from_numpy(np.asarray(keep, dtype=np.float32))  # (num_units,)
        with torch.no_grad():
            for p in self._parts:
                p.tensor.data.mul_(factor[p.units].to(p.tensor.dtype).view(p.shape))


@dataclass(frozen=True)
class PostTrainConfig:
    epochs: int
    images: int
    tau: float
    temperature: float
    lr: float
    seed: int
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4


def post_train(student: TorchCopy, teacher: TorchCopy, projection: MaskProjection, keep: np.ndarray,
               x: np.ndarray, y: np.ndarray, cfg: PostTrainConfig) -> float:
    """Distil `teacher` into `student` (loss = tau * KD + (1 - tau) * CE) on `cfg.images` seeded
    training images per epoch, keeping the units removed by `keep` at zero. Returns the mean
    loss of the last epoch. The student ends in eval mode."""
    projection.apply(keep)  # units removed by this step: zero now, stay zero after every step
    params = [p for p in student.module.parameters() if p.requires_grad]
    step = student.fixed_batch or cfg.batch_size
    n = min(len(x), cfg.images)
    per_epoch = n // step if (student.fixed_batch or n >= 2 * step) else -(-n // step)
    if not params or per_epoch == 0 or cfg.epochs == 0:
        student.module.eval()
        return float("nan")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * per_epoch)
    teacher.module.eval()
    mean_loss = float("nan")
    for _ in range(cfg.epochs):
        idx = rng.permutation(len(x))[:n]
        t_logits = batched_logits(teacher, x[idx], 512)  # (n, classes), fixed teacher, no augmentation
        student.module.train()
        total, seen = 0.0, 0
        for b in range(per_epoch):
            sel = np.arange(b * step, min((b + 1) * step, n))
            if len(sel) < 2 or (student.fixed_batch and len(sel) != step):
                continue  # BatchNorm cannot train on one image
            xb = torch.from_numpy(np.ascontiguousarray(x[idx[sel]]))
            if xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = torch.from_numpy(y[idx[sel]]).long()
            loss = distillation_loss(student.logits(xb), t_logits[sel], yb, cfg.tau, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            projection.apply(keep)
            total += float(loss.detach()) * len(sel)
            seen += len(sel)
        mean_loss = total / max(seen, 1)
    student.module.eval()
    return mean_loss


def top1(copy: TorchCopy, x: np.ndarray, y: np.ndarray) -> float:
    """Validation top-1 of a copy as it is (eval mode, its own BatchNorm statistics)."""
    copy.module.eval()
    return accuracy(batched_logits(copy, x, 256), y)[0]


def state_of(copy: TorchCopy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in copy.module.state_dict().items()}


def with_weights(analysis: Analysis, copy: TorchCopy) -> Analysis:
    """`analysis` with the initializers of its normalized model replaced by `copy`'s weights.

    `copy` must be a torch copy of `analysis` (`to_torch(analysis)`): same graph, same names, so
    groups, units and cost model are unchanged (and `--exclude` choices kept); `apply_keep` on
    the result slices the trained weights.
    """
    model: onnx.ModelProto = copy.write_back(analysis.graph.model)
    graph = analysis.graph
    loaded = dataclasses.replace(graph.loaded, model=model)
    new_graph = dataclasses.replace(graph, loaded=loaded, initializers={t.name: t for t in model.graph.initializer},
                                    _arrays={})
    return dataclasses.replace(analysis, graph=new_graph)
