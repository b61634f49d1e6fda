"""Post-training between pruning steps: knowledge distillation into the full-size torch copy with
the current mask enforced (arXiv 2411.06463, section 3.4).

The student keeps the ORIGINAL model's shapes, so the analysis (groups, units, cost model) stays
valid for the whole search. A removed unit is simulated as in `MaskedModel`: the input weights of
its consumers are zero, so that nothing downstream sees it, and the full-size student computes
exactly what the physically pruned model computes (in training mode too). `MaskProjection`
(`onnxprune.torchcopy.masked`) re-zeroes those weights after every optimizer step (a projection
onto the pruned model's weight space). The search returns the trained full-size weights
(`TorchCopy.initializer_values()`); the API writes them into the model and rewrites it.

Device: the student and teacher run where their copies live (`TorchCopy.to`; rl-pruner and sacp
put them on `--device`); batches are read (lazily, for large datasets) and moved there one at a
time, the teacher's logits of an epoch are kept on that device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from onnxprune.data import take
from onnxprune.torchcopy import TorchCopy
from onnxprune.torchcopy.device import to_device_batch
from onnxprune.torchcopy.finetune import distillation_loss
from onnxprune.torchcopy.masked import MaskProjection, accuracy, batched_logits


@dataclass(frozen=True)
class PostTrainConfig:
    epochs: int
    images: int
    tau: float
    temperature: float
    lr: float
    seed: int
    batch_size: int = 64
    eval_batch_size: int = 512  # the teacher's logits
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
        # (n, classes) on the teacher's device; fixed teacher, no augmentation; read a batch at a time
        t_logits = batched_logits(teacher, take(x, idx), cfg.eval_batch_size).to(student.device)
        student.module.train()
        total, seen = 0.0, 0
        for b in range(per_epoch):
            sel = np.arange(b * step, min((b + 1) * step, n))
            if len(sel) < 2 or (student.fixed_batch and len(sel) != step):
                continue  # BatchNorm cannot train on one image
            xb = to_device_batch(x[idx[sel]], student.device, channels_last=True)
            yb = torch.from_numpy(y[idx[sel]]).long().to(student.device)
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


def post_batch_sizes(ctx: Any) -> dict[str, int]:
    """`PostTrainConfig` batch sizes for a search context's model on its device (`--device`):
    64 training and 512 teacher images, fewer where a batch would not fit (`fit_batch_size`)."""
    from onnxprune.torchcopy.device import fit_batch_size

    return {"batch_size": fit_batch_size(ctx.analysis, 64, training=True, device=ctx.device),
            "eval_batch_size": fit_batch_size(ctx.analysis, 512, training=False, device=ctx.device)}


def top1(copy: TorchCopy, x: np.ndarray, y: np.ndarray) -> float:
    """Validation top-1 of a copy as it is (eval mode, its own BatchNorm statistics)."""
    copy.module.eval()
    return accuracy(batched_logits(copy, x, 256), y)[0]


def state_of(copy: TorchCopy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in copy.module.state_dict().items()}
