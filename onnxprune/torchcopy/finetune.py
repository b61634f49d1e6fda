"""Fine-tuning a pruned model with knowledge distillation, and the weights written back to ONNX.

The student is the torch copy of the physically pruned ONNX model (`to_torch(apply_keep(...))`),
the teacher the torch copy of the original. Loss per batch:

    tau * KL(softmax(t / T) || softmax(s / T)) * T^2 + (1 - tau) * CE(s, y)

SGD (momentum 0.9, Nesterov) or AdamW, cosine learning-rate schedule over all steps, validation
top-1 after every epoch, and the best checkpoint (by validation top-1, the weights before
fine-tuning included) kept. The trained weights are then written into the pruned ONNX model
(same initializer names, same dtypes) and the result is checked against the torch student
through onnxruntime.

Exporters that fold BatchNorm into Conv (the dynamo exporter, TorchScript in eval mode) leave
no BatchNorm to train: the conv weights and biases are trained instead. Models that keep
BatchNormalization train it in batch-statistics mode and write the running statistics back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from onnxprune.data import Splits
from onnxprune.data import batches as iter_batches
from onnxprune.errors import InputError, VerificationError
from onnxprune.ir import load_model
from onnxprune.numerics import compare_outputs, random_feeds, session
from onnxprune.torchcopy.convert import ATOL, RTOL, TorchCopy, to_torch, torch_outputs
from onnxprune.torchcopy.masked import accuracy, batched_logits, torch_threads

Optimizer = Literal["sgd", "adamw"]


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune (defaults suit a few epochs on small CNNs).

    `lr` None picks 0.01 for SGD and 1e-3 for AdamW. `tau` weighs distillation against
    cross-entropy (0: plain fine-tuning), `temperature` softens both distributions.
    `max_train` caps the training images used per epoch (a seeded subset each epoch).
    `threads` sets torch's intra-op threads while fine-tuning (None: torch's setting).
    """

    epochs: int = 5
    batch_size: int = 64
    optimizer: Optimizer = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    tau: float = 0.7
    temperature: float = 4.0
    seed: int = 0
    max_train: int | None = None
    eval_batch_size: int = 512
    progress: bool = True
    verify: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise InputError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise InputError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if not 0.0 <= self.tau <= 1.0:
            raise InputError(f"tau must be in [0, 1], got {self.tau}")
        if self.temperature <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.01 if self.optimizer == "sgd" else 1e-3


@dataclass(frozen=True, eq=False)
class FinetuneResult:
    """The fine-tuned ONNX model and how it got there.

    `val_top1_history[e]` is the validation top-1 after epoch e+1; `initial_val_top1` the one
    before fine-tuning; `best_epoch` 0 means no epoch beat the starting weights.
    """

    model: onnx.ModelProto
    val_top1_history: tuple[float, ...]
    best_val_top1: float
    seconds: float
    initial_val_top1: float = 0.0
    best_epoch: int = 0
    train_loss_history: tuple[float, ...] = field(default=())
    verify_max_abs_diff: float | None = None


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, tau: float,
                      temperature: float) -> torch.Tensor:
    """tau * KL(teacher || student at T) * T^2 + (1 - tau) * CE(student, y)."""
    ce = F.cross_entropy(student, y)
    if tau == 0.0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                  log_target=True, reduction="batchmean")
    return tau * kl * (t * t) + (1.0 - tau) * ce


def _state(copy: TorchCopy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in copy.module.state_dict().items()}


def write_back(pruned_model: onnx.ModelProto, student: TorchCopy) -> onnx.ModelProto:
    """A copy of `pruned_model` whose initializers hold the student's current weights.

    `pruned_model` must be the model the student was converted from, or its normalized form
    (`onnxprune.ir.load_model`); the student's normalized model is used when names are missing.
    """
    names = {t.name for t in pruned_model.graph.initializer}
    if all(n in names for n in student.bindings):
        return student.write_back(pruned_model)
    return student.write_back()


def verify_write_back(model: onnx.ModelProto, student: TorchCopy, x: np.ndarray | None = None,
                      trials: int = 2, seed: int = 0) -> float:
    """Check that onnxruntime on `model` computes what the torch `student` computes (eval mode),
    on seeded random inputs and, when given, on a batch of real inputs `x`.

    Returns the max abs difference; raises `VerificationError` when outputs disagree
    (rtol 1e-3, atol 1e-4 x max(1, max |output|)).
    """
    try:
        sess = session(model)
    except Exception as exc:
        raise VerificationError(f"onnxruntime cannot load the fine-tuned model: {str(exc).splitlines()[0][:300]}") from None
    names = [o.name for o in sess.get_outputs()]
    batch = student.fixed_batch or 2
    feeds_list = [random_feeds(model, batch, seed + t) for t in range(trials)]
    if x is not None and len(student.input_names) == 1:
        n = student.fixed_batch or min(len(x), 16)
        if len(x) >= n:
            feeds_list.append({student.input_names[0]: np.ascontiguousarray(x[:n])})
    worst = 0.0
    for feeds in feeds_list:
        expect = sess.run(names, feeds)
        got = torch_outputs(student, feeds)
        diff, _ = compare_outputs(got, expect, names, "written-back model vs torch student", RTOL, ATOL)
        worst = max(worst, diff)
    return worst


def _optimizer(params: list[torch.nn.Parameter], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def finetune(pruned: onnx.ModelProto, teacher: onnx.ModelProto | TorchCopy, splits: Splits,
             cfg: FinetuneConfig = FinetuneConfig(), console: Console | None = None) -> FinetuneResult:
    """Fine-tune `pruned` with `teacher` distilled into it; return the trained ONNX model.

    Args:
        pruned: the physically pruned ONNX model (e.g. `onnxprune.rewrite.apply_keep(...)`).
        teacher: the original ONNX model, or its torch copy.
        splits: data (`onnxprune.data.load_dataset`); trains on `train`, selects on `val`.
        cfg: optimizer, schedule, distillation settings.
        console: where the progress bar goes (default: stderr).

    Raises:
        UnsupportedModelError: a model cannot be converted to torch.
        VerificationError: the written-back model disagrees with the torch student.
    """
    with torch_threads(cfg.threads):
        return _finetune(pruned, teacher, splits, cfg, console)


def _finetune(pruned: onnx.ModelProto, teacher: onnx.ModelProto | TorchCopy, splits: Splits,
              cfg: FinetuneConfig, console: Console | None) -> FinetuneResult:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    base = load_model(pruned).model
    student = to_torch(base, seed=cfg.seed)
    teacher_copy = teacher if isinstance(teacher, TorchCopy) else to_torch(teacher, seed=cfg.seed)
    x_train, y_train = splits.train
    x_val, y_val = splits.val
    if len(x_train) == 0 or len(x_val) == 0:
        raise InputError("fine-tuning needs non-empty train and val splits")

    # The teacher is fixed and the data is not augmented: its logits are computed once per
    # image, when a batch first needs them (with --finetune-images only a subset is ever used).
    teacher_copy.module.eval()
    teacher_cache: dict[int, torch.Tensor] = {}

    def teacher_logits(idx: np.ndarray) -> torch.Tensor:
        todo = [int(i) for i in idx if int(i) not in teacher_cache]
        if todo:
            fresh = batched_logits(teacher_copy, x_train[np.asarray(todo)], cfg.eval_batch_size)
            teacher_cache.update(zip(todo, fresh))
        return torch.stack([teacher_cache[int(i)] for i in idx])

    def val_top1() -> float:
        student.module.eval()
        return accuracy(batched_logits(student, x_val, cfg.eval_batch_size), y_val)[0]

    initial = val_top1()
    best, best_epoch, best_state = initial, 0, _state(student)
    params = [p for p in student.module.parameters() if p.requires_grad]
    step_size = student.fixed_batch or cfg.batch_size
    n_train = min(len(x_train), cfg.max_train or len(x_train))
    drop_last = n_train >= 2 * step_size or student.fixed_batch is not None
    steps_per_epoch = n_train // step_size if drop_last else -(-n_train // step_size)
    history: list[float] = []
    losses: list[float] = []
    if cfg.epochs > 0 and steps_per_epoch > 0 and params:
        opt = _optimizer(params, cfg)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
        rng = np.random.default_rng(cfg.seed)
        columns = [TextColumn("[bold]fine-tune[/] epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  val top-1 {task.fields[val]:.4f}"), TimeElapsedColumn()]
        with Progress(*columns, console=console, disable=not cfg.progress, transient=False) as bar:
            task = bar.add_task("fine-tune", total=cfg.epochs * steps_per_epoch, epoch=f"0/{cfg.epochs}",
                                loss=float("nan"), val=initial)
            for epoch in range(1, cfg.epochs + 1):
                idx = rng.permutation(len(x_train))[:n_train]
                student.module.train()
                loss_sum, seen = 0.0, 0
                for tb_idx, _ in iter_batches(idx, idx, step_size, drop_last=drop_last):
                    if len(tb_idx) < 2 and not student.fixed_batch:
                        continue  # BatchNorm cannot train on one image
                    xb = x_train[tb_idx]
                    xt = torch.from_numpy(np.ascontiguousarray(xb))
                    yt = torch.from_numpy(y_train[tb_idx]).long()
                    loss = distillation_loss(student.logits(xt), teacher_logits(tb_idx), yt, cfg.tau, cfg.temperature)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    loss_sum += float(loss.detach()) * len(xb)
                    seen += len(xb)
                    bar.update(task, advance=1, loss=loss_sum / seen, epoch=f"{epoch}/{cfg.epochs}")
                acc = val_top1()
                history.append(acc)
                losses.append(loss_sum / max(seen, 1))
                bar.update(task, val=acc)
                if acc > best:
                    best, best_epoch, best_state = acc, epoch, _state(student)
    student.module.load_state_dict(best_state)
    student.module.eval()
    model = write_back(base, student)
    diff = verify_write_back(model, student, x_val, seed=cfg.seed) if cfg.verify else None
    return FinetuneResult(model=model, val_top1_history=tuple(history), best_val_top1=best,
                          seconds=time.perf_counter() - start, initial_val_top1=initial, best_epoch=best_epoch,
                          train_loss_history=tuple(losses), verify_max_abs_diff=diff)



def recalibrate_batchnorm(model: onnx.ModelProto, x: np.ndarray, batches: int = 4, batch_size: int = 128,
                          seed: int = 0, threads: int | None = None) -> tuple[onnx.ModelProto, int]:
    """`model` with the running statistics of its BatchNormalization nodes re-estimated on
    `batches` batches of `x` (a seeded sample), and how many were re-estimated.

    After pruning, the BatchNorm layers downstream of removed channels see other statistics;
    search methods score masks with them re-estimated, so the written model must carry them too.
    Returns `model` unchanged (and 0) when it has no BatchNormalization (folded by the exporter).
    The written-back model is checked against the torch copy.
    """
    from onnxprune.deps import analyze
    from onnxprune.torchcopy.masked import MaskedModel

    if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return model, 0
    with torch_threads(threads):
        base = load_model(model).model
        analysis = analyze(base)
        masked = MaskedModel(to_torch(analysis, seed=seed), analysis, channels_last=False)
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(len(x), size=min(len(x), batches * batch_size), replace=False)]
        count = masked.recalibrate_bn(sample, batches=batches, batch_size=batch_size)
        out = write_back(base, masked.copy)
        verify_write_back(out, masked.copy, sample[:64], seed=seed)
    return out, count
