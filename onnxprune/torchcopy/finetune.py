"""Fine-tuning a pruned model with knowledge distillation, and the weights written back to ONNX.

The student is the torch copy of the physically pruned ONNX model (`to_torch(apply_keep(...))`),
the teacher the torch copy of the original. Loss per batch:

    tau * KL(softmax(t / T) || softmax(s / T)) * T^2 + (1 - tau) * CE(s, y)

SGD (momentum 0.9, Nesterov) or AdamW; the learning rate warms up linearly over the first
`warmup` fraction of the steps, then follows a cosine schedule; gradients are clipped to a norm
of `clip_grad_norm`. Validation top-1 after every epoch; the best checkpoint (by validation
top-1, the weights before fine-tuning included) is kept. The trained weights are written into
the pruned ONNX model (same initializer names, same dtypes) and the result is checked against
the torch student through onnxruntime.

BatchNorm: models that keep BatchNormalization train it in batch-statistics mode and write the
running statistics back. Exporters that fold BatchNorm into Conv (the dynamo exporter, TorchScript
in eval mode) leave an un-normalized network that SGD drives to NaN at the usual learning rates:
the student gets its BatchNorm back (`onnxprune.torchcopy.batchnorm`, initialised so that the
function is unchanged), trains with it, and has it folded into the Conv weights before the
write-back, so the written model has the pruned model's node structure.

Divergence: a non-finite loss, gradient norm or weight is caught at once; the training goes back
to the last good snapshot (taken every `snapshot_steps` steps while the loss of those steps stays
below twice the first step's; the start of the epoch when it diverges again from the same one),
the learning rate is multiplied by `lr_drop`, and training continues, at most `max_restarts`
times; then `FinetuneDivergedError`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from onnxprune.data import Splits, calibration_sample, default_workers, loader, take
from onnxprune.data import batches as iter_batches
from onnxprune.errors import FinetuneDivergedError, InputError, VerificationError
from onnxprune.ir import load_model
from onnxprune.numerics import compare_outputs, random_feeds, session
from onnxprune.ops import is_batchnorm
from onnxprune.torchcopy.batchnorm import (ReinsertedBatchNorm, eligible_layers, kept_positions, layer_statistics,
                                           reestimate)
from onnxprune.torchcopy.convert import ATOL, RTOL, TorchCopy, to_torch, torch_outputs
from onnxprune.torchcopy.device import resolve_device, to_device_batch
from onnxprune.torchcopy.masked import accuracy, batched_logits, torch_threads

if TYPE_CHECKING:
    from onnxprune.deps import Analysis

Optimizer = Literal["sgd", "adamw"]

#: default learning rates (see `FinetuneConfig.learning_rate`)
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune (defaults suit a few epochs on small CNNs).

    `lr` None picks `DEFAULT_LR[optimizer]`. `tau` weighs distillation against cross-entropy
    (0: plain fine-tuning), `temperature` softens both distributions. `max_train` caps the
    training images used per epoch (a seeded subset each epoch). `threads` sets torch's
    intra-op threads while fine-tuning (None: torch's setting). `warmup`: fraction of the steps
    with a linear learning-rate warm-up. `clip_grad_norm`: gradient norm clipping (None: off).
    `max_restarts`, `lr_drop`, `snapshot_steps`: divergence handling (module docstring).
    `reinsert_bn`: give layers whose BatchNorm the exporter folded a BatchNorm while training,
    initialised from statistics on `calib_images` training images.
    `device` ("auto", "cpu", "cuda", "cuda:N"; None: cpu) holds the student and the teacher;
    batches are streamed there one at a time. `amp` trains in float16 autocast with a gradient
    scaler (CUDA only); `channels_last` (None: on CUDA only) uses that memory format. `max_val`
    caps the validation images of model selection (a seeded subset; `--eval-images`).
    `workers`: decoding processes (None: `onnxprune.data.default_workers` for `device`).
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
    warmup: float = 0.05
    clip_grad_norm: float | None = 5.0
    max_restarts: int = 3
    lr_drop: float = 0.1
    snapshot_steps: int = 100
    reinsert_bn: bool = True
    calib_images: int = 512
    device: str | None = None
    amp: bool = False
    channels_last: bool | None = None
    max_val: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise InputError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise InputError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"the learning rate must be a positive number, got {self.lr}")
        if not 0.0 <= self.tau <= 1.0:
            raise InputError(f"tau must be in [0, 1], got {self.tau}")
        if self.temperature <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.warmup < 1.0:
            raise InputError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise InputError(f"clip_grad_norm must be > 0 (or None), got {self.clip_grad_norm}")
        if self.max_restarts < 0 or not 0.0 < self.lr_drop < 1.0 or self.snapshot_steps < 1:
            raise InputError("max_restarts must be >= 0, lr_drop in (0, 1), snapshot_steps >= 1")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR[self.optimizer]


@dataclass(frozen=True, eq=False)
class FinetuneResult:
    """The fine-tuned ONNX model and how it got there.

    `val_top1_history[e]` is the validation top-1 after epoch e+1; `initial_val_top1` the one
    before fine-tuning; `best_epoch` 0 means no epoch beat the starting weights (the model
    returned then holds the starting weights). `restarts`: times a non-finite value sent the
    training back to a snapshot with a lower learning rate; `lr`: the learning rate in the end.
    `reinserted_bn`: layers that trained with a re-inserted BatchNorm.
    """

    model: onnx.ModelProto
    val_top1_history: tuple[float, ...]
    best_val_top1: float
    seconds: float
    initial_val_top1: float = 0.0
    best_epoch: int = 0
    train_loss_history: tuple[float, ...] = field(default=())
    verify_max_abs_diff: float | None = None
    restarts: int = 0
    lr: float = 0.0
    reinserted_bn: int = 0

    @property
    def improved(self) -> bool:
        """Whether an epoch beat the starting weights on validation top-1."""
        return self.best_epoch > 0

    def summary(self) -> dict[str, object]:
        """What the report records about the fine-tune."""
        return {"initial_val_top1": self.initial_val_top1, "val_top1": list(self.val_top1_history),
                "best_val_top1": self.best_val_top1, "best_epoch": self.best_epoch, "improved": self.improved,
                "train_loss": list(self.train_loss_history), "restarts": self.restarts, "final_lr": self.lr,
                "reinserted_batchnorm": self.reinserted_bn, "write_back_max_abs_diff": self.verify_max_abs_diff}

    def message(self) -> str | None:
        """A one-line warning when the fine-tune did not improve on its start, else None."""
        if self.improved:
            return None
        if not self.val_top1_history:
            return None
        return (f"the fine-tune did not improve on its start (validation top-1 {self.initial_val_top1:.4f} before, "
                f"{max(self.val_top1_history):.4f} at best after an epoch): the model keeps the weights it had before")


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


def _optimizer(params: list[torch.nn.Parameter], cfg: FinetuneConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, total: int, warmup_steps: int, base: float) -> float:
    """The learning rate of step `step` (0-based) of `total`: linear warm-up, then cosine to 0."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return base * warm * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


@dataclass(frozen=True, eq=False)
class _Snapshot:
    """Where training can go back to after a non-finite value."""

    epoch: int
    pos: int  # batches done in the epoch
    step: int  # global step
    loss_sum: float
    seen: int
    weights: dict[str, dict[str, torch.Tensor]]


def _finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def finetune(pruned: onnx.ModelProto, teacher: onnx.ModelProto | TorchCopy, splits: Splits,
             cfg: FinetuneConfig = FinetuneConfig(), console: Console | None = None,
             teacher_logits: np.ndarray | None = None) -> FinetuneResult:
    """Fine-tune `pruned` with `teacher` distilled into it; return the trained ONNX model.

    Args:
        pruned: the physically pruned ONNX model (e.g. `onnxprune.rewrite.apply_keep(...)`).
        teacher: the original ONNX model, or its torch copy.
        splits: data (`onnxprune.data.load_dataset`); trains on `train`, selects on `val`.
        cfg: optimizer, schedule, distillation settings.
        console: where the progress bar and restart notices go (default: stderr).
        teacher_logits: the teacher's logits for every image of `splits.train`, in its order
            (`train_logits`), when several fine-tunes share one teacher and one split; None:
            computed here, once per image.

    Raises:
        UnsupportedModelError: a model cannot be converted to torch.
        FinetuneDivergedError: training kept producing non-finite values after `cfg.max_restarts`
            restarts with a lower learning rate.
        VerificationError: the written-back model disagrees with the torch student.
    """
    if teacher_logits is not None:
        shape = np.shape(teacher_logits)
        if len(shape) != 2 or shape[0] != len(splits.train[0]):
            raise InputError(f"teacher_logits must hold one row per training image ({len(splits.train[0])}), "
                             f"got shape {shape}")
        if not np.all(np.isfinite(teacher_logits)):
            raise InputError("teacher_logits holds non-finite values")
    with torch_threads(cfg.threads):
        return _finetune(pruned, teacher, splits, cfg, console or Console(stderr=True), teacher_logits)


def train_logits(teacher: onnx.ModelProto | TorchCopy, splits: Splits, batch_size: int = 512,
                 threads: int | None = None) -> np.ndarray:
    """The teacher's (N, classes) float32 logits for every image of `splits.train`, in order: what
    `finetune(..., teacher_logits=...)` takes, to share one teacher pass among fine-tunes."""
    copy = teacher if isinstance(teacher, TorchCopy) else to_torch(teacher)
    copy.module.eval()
    with torch_threads(threads):
        return batched_logits(copy, splits.train[0], batch_size).float().cpu().numpy()


def _finetune(pruned: onnx.ModelProto, teacher: onnx.ModelProto | TorchCopy, splits: Splits,
              cfg: FinetuneConfig, console: Console, teacher_logits: np.ndarray | None) -> FinetuneResult:
    teacher_copy = teacher if isinstance(teacher, TorchCopy) else to_torch(teacher, seed=cfg.seed)
    home = teacher_copy.device
    try:
        return _finetune_on(pruned, teacher_copy, splits, cfg, console, teacher_logits)
    finally:
        teacher_copy.to(home)


def _finetune_on(pruned: onnx.ModelProto, teacher_copy: TorchCopy, splits: Splits, cfg: FinetuneConfig,
                 console: Console, precomputed: np.ndarray | None) -> FinetuneResult:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device or "cpu")
    amp = cfg.amp and device.type == "cuda"
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    base = load_model(pruned).model
    student = to_torch(base, seed=cfg.seed, device=device)
    teacher_copy.to(device)
    if channels_last:
        student.module.to(memory_format=torch.channels_last)
    x_train, y_train = splits.train
    x_val, y_val = splits.val
    if len(x_train) == 0 or len(x_val) == 0:
        raise InputError("fine-tuning needs non-empty train and val splits")
    if cfg.max_val is not None and len(x_val) > cfg.max_val:  # model selection on a seeded subset
        sel = np.sort(np.random.default_rng(cfg.seed).permutation(len(x_val))[:cfg.max_val])
        x_val, y_val = take(x_val, sel), y_val[sel]
    rng = np.random.default_rng(cfg.seed)
    workers = default_workers(x_train, device) if cfg.workers is None else cfg.workers
    bn = None
    if cfg.reinsert_bn and cfg.epochs > 0:
        calib = take(x_train, np.sort(rng.choice(len(x_train), size=min(len(x_train), cfg.calib_images),
                                                 replace=False)))
        bn = ReinsertedBatchNorm(student, calib, batch_size=cfg.eval_batch_size)
        if not len(bn):
            bn = None

    # The teacher is fixed and the data is not augmented: its logits are computed once per
    # image, from the batch that first holds it (with --finetune-images only a subset is ever
    # used), and kept on the CPU; or taken from `precomputed` (`train_logits`).
    teacher_copy.module.eval()
    teacher_cache: dict[int, torch.Tensor] = {}

    def teacher_logits(idx: np.ndarray, xb: np.ndarray) -> torch.Tensor:
        if precomputed is not None:
            return torch.from_numpy(np.ascontiguousarray(precomputed[idx], dtype=np.float32)).to(device)
        todo = [k for k, i in enumerate(idx) if int(i) not in teacher_cache]
        if todo:
            fresh = batched_logits(teacher_copy, xb[np.asarray(todo)], cfg.eval_batch_size).float().cpu()
            teacher_cache.update(zip((int(idx[k]) for k in todo), fresh))
        return torch.stack([teacher_cache[int(i)] for i in idx]).to(device)

    def set_train(mode: bool) -> None:
        student.module.train(mode)
        if bn is not None:
            bn.train(mode)

    def val_top1() -> float:
        set_train(False)
        return accuracy(batched_logits(student, x_val, cfg.eval_batch_size, channels_last), y_val)[0]

    def state() -> dict[str, dict[str, torch.Tensor]]:
        return {"student": _state(student), "bn": bn.state_dict() if bn is not None else {}}

    def load(snapshot: dict[str, dict[str, torch.Tensor]]) -> None:
        student.module.load_state_dict(snapshot["student"])
        if bn is not None:
            bn.load_state_dict(snapshot["bn"])

    initial = val_top1()
    initial_state = state()
    best, best_epoch, best_state = initial, 0, initial_state
    params = [p for p in student.module.parameters() if p.requires_grad]
    if bn is not None:
        params += bn.parameters()
    watched = params + [b for b in student.module.buffers()] + ([t for t in bn.norms.buffers()] if bn else [])
    step_size = student.fixed_batch or cfg.batch_size
    n_train = min(len(x_train), cfg.max_train or len(x_train))
    drop_last = n_train >= 2 * step_size or student.fixed_batch is not None
    steps_per_epoch = n_train // step_size if drop_last else -(-n_train // step_size)
    total = cfg.epochs * steps_per_epoch
    warmup_steps = int(round(cfg.warmup * total))
    history: list[float] = []
    losses: list[float] = []
    restarts = 0
    lr = cfg.learning_rate
    if cfg.epochs > 0 and steps_per_epoch > 0 and params:
        opt = _optimizer(params, cfg, lr)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        columns = [TextColumn("[bold]fine-tune[/] epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  val top-1 {task.fields[val]:.4f}"), TimeElapsedColumn()]
        orders = [rng.permutation(len(x_train))[:n_train] for _ in range(cfg.epochs)]
        with Progress(*columns, console=console, disable=not cfg.progress, transient=False) as bar:
            task = bar.add_task("fine-tune", total=total, epoch=f"0/{cfg.epochs}", loss=float("nan"), val=initial)
            # A snapshot: (epoch, position in the epoch, global step, loss sum, images, weights).
            # `start` is the state at the start of the epoch (known good); `recent` is taken every
            # `snapshot_steps` steps when the loss of those steps stayed finite and below twice the
            # loss of the first step (a diverging run is on its way up before it overflows).
            start_snap = recent = _Snapshot(1, 0, 0, 0.0, 0, initial_state)
            recent_used = False
            first_loss: float | None = None
            epoch, step = 1, 0
            while epoch <= cfg.epochs:
                idx = orders[epoch - 1]
                plan = [b for b, _ in iter_batches(idx, idx, step_size, drop_last=drop_last)
                        if len(b) >= 2 or student.fixed_batch]  # BatchNorm cannot train on one image
                snap = recent if recent.epoch == epoch else start_snap
                pos, step, loss_sum, seen = snap.pos, snap.step, snap.loss_sum, snap.seen
                window: list[float] = []
                set_train(True)
                bad: str | None = None
                # the rest of the epoch's batches, read (and decoded by workers) as they are needed
                stream = loader(x_train, y_train, step_size, workers=workers,
                                order=np.concatenate(plan[pos:]) if pos < len(plan) else np.zeros(0, np.int64))
                while pos < len(plan):
                    tb_idx, xb, yb = next(stream)
                    for group in opt.param_groups:
                        group["lr"] = lr_at(step, total, warmup_steps, lr)
                    xt = to_device_batch(xb, device, channels_last)
                    yt = torch.from_numpy(yb).long().to(device)
                    t_logits = teacher_logits(tb_idx, xb)  # first: its activations are gone before the student's
                    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                        s_logits = student.logits(xt)
                    loss = distillation_loss(s_logits.float(), t_logits, yt, cfg.tau, cfg.temperature)
                    if not bool(torch.isfinite(loss)):
                        bad = f"loss {float(loss)}"
                        break
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm or float("inf"))
                    if not bool(torch.isfinite(norm)) and not amp:  # AMP: the scaler skips the step
                        bad = f"gradient norm {float(norm)}"
                        break
                    scaler.step(opt)
                    scaler.update()
                    value = float(loss.detach())
                    first_loss = value if first_loss is None else first_loss
                    window.append(value)
                    step += 1
                    pos += 1
                    loss_sum += value * len(tb_idx)
                    seen += len(tb_idx)
                    bar.update(task, completed=step, loss=loss_sum / seen, epoch=f"{epoch}/{cfg.epochs}")
                    if len(window) >= cfg.snapshot_steps and pos < len(plan):
                        if not _finite(watched):
                            bad = "weights"
                            break
                        if float(np.mean(window)) <= 2.0 * max(first_loss, 1e-3):
                            recent, recent_used = _Snapshot(epoch, pos, step, loss_sum, seen, state()), False
                        window = []
                if bad is None and not _finite(watched):
                    bad = "weights"
                if bad is not None:
                    restarts += 1
                    where = f"epoch {epoch}, step {step + 1} of {total}"
                    if restarts > cfg.max_restarts:
                        raise FinetuneDivergedError(
                            f"fine-tuning diverged: non-finite {bad} at {where}, after {cfg.max_restarts} "
                            f"restart(s) with the learning rate lowered to {lr:.3g}; try a smaller learning rate "
                            f"(first was {cfg.learning_rate:.3g})")
                    lr *= cfg.lr_drop
                    if recent_used or recent.epoch != epoch:  # diverged again from it: further back
                        recent = start_snap
                    recent_used = True
                    console.print(f"[yellow]fine-tune: non-finite {bad} at {where}: back to step {recent.step} "
                                  f"with the learning rate lowered to {lr:.3g} (restart {restarts}/{cfg.max_restarts})")
                    load(recent.weights)
                    opt = _optimizer(params, cfg, lr)
                    continue
                acc = val_top1()
                history.append(acc)
                losses.append(loss_sum / max(seen, 1))
                bar.update(task, val=acc)
                if acc > best:
                    best, best_epoch, best_state = acc, epoch, state()
                epoch += 1
                start_snap = recent = _Snapshot(epoch, 0, step, 0.0, 0, state())
                recent_used = False
    reinserted = len(bn) if bn is not None else 0
    # folded, written back and verified on the CPU, in the plain memory format
    student.to("cpu")
    student.module.to(memory_format=torch.contiguous_format)
    if bn is not None:
        bn.norms.to("cpu")
    if best_epoch == 0:
        load(initial_state)
        if bn is not None:
            bn.remove()  # the starting weights exactly, not a BatchNorm folded into them
        model = write_back(base, student)
    else:
        load(best_state)
        set_train(False)
        if bn is not None:
            bn.fold()
        model = write_back(base, student)
    student.module.eval()
    diff = verify_write_back(model, student, x_val, seed=cfg.seed) if cfg.verify else None
    return FinetuneResult(model=model, val_top1_history=tuple(history), best_val_top1=best,
                          seconds=time.perf_counter() - start, initial_val_top1=initial, best_epoch=best_epoch,
                          train_loss_history=tuple(losses), verify_max_abs_diff=diff, restarts=restarts, lr=lr,
                          reinserted_bn=reinserted)


def recalibrate_batchnorm(model: onnx.ModelProto, x: np.ndarray, batches: int = 4, batch_size: int = 128,
                          seed: int = 0, threads: int | None = None, original: Analysis | None = None,
                          keep: np.ndarray | None = None, original_copy: TorchCopy | None = None,
                          device: str | torch.device | None = None) -> tuple[onnx.ModelProto, int]:
    """`model` with the running statistics of its BatchNorm layers re-estimated on `batches`
    batches of `x` (a seeded sample), and how many were re-estimated.

    After pruning, the BatchNorm layers downstream of removed channels see other statistics;
    search methods score masks with them re-estimated, so the written model must carry them too.
    A pruned model whose exporter folded BatchNorm into Conv has none: given the unpruned
    model (`original`, its analysis, and `keep`, the mask that made `model`), its layers get a
    BatchNorm whose affine parameters are the unpruned layer's output statistics at the kept
    channels, re-estimated, then folded back (`onnxprune.torchcopy.batchnorm`). Without them,
    such a model is returned unchanged (and 0). The written-back model is checked against the
    torch copy. `x` may be lazy (read one batch at a time); the statistics are measured on
    `device` (None: cpu), the write-back and its check run on the CPU.
    """
    folded_path = original is not None and keep is not None
    if not folded_path and not any(is_batchnorm(n.op_type) for n in model.graph.node):
        return model, 0
    with torch_threads(threads):
        base = load_model(model).model
        copy = to_torch(base, seed=seed, device=resolve_device(device or "cpu"))
        sample = calibration_sample(x, batches * batch_size, seed)  # the search evaluator's images
        inserted = None
        if folded_path:
            ref_copy = original_copy if original_copy is not None else to_torch(original, check=False, seed=seed)
            ref = layer_statistics(ref_copy, eligible_layers(ref_copy), sample, batch_size)
            kept = kept_positions(original, keep, ref_copy)
            stats = {t: (s.take(kept[t]) if t in kept else s) for t, s in ref.items()}
            inserted = ReinsertedBatchNorm(copy, sample, stats=stats, batch_size=batch_size, measure=False,
                                           layers=[lay for lay in eligible_layers(copy) if lay.target in stats])
        norms = [m for m in copy.module.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]  # noqa: SLF001
        if inserted is not None:
            norms += list(inserted.norms.values())
        if not norms:
            return model, 0
        reestimate(copy, norms, sample, batches, batch_size)
        copy.to("cpu")
        if inserted is not None:
            inserted.norms.to("cpu")
            inserted.fold()
        out = write_back(base, copy)
        verify_write_back(out, copy, sample[:64], seed=seed)
    return out, len(norms)
