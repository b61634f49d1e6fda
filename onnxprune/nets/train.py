"""Training and ONNX export of the reference CNNs (`onnxprune.nets.cifar`) on an offline dataset:
what `onnxprune demo` and the benchmarks use; `python -m models.train` is the command line.

SGD with momentum, cosine learning-rate schedule (per step), light augmentation (random crop with
zero padding, horizontal flip), validation accuracy after every epoch, test accuracy at the end on
the dataset's held-out test split. Writes `<out>/<arch>_<data>.onnx` (TorchScript exporter,
opset 17, dynamic batch; BatchNormalization kept), `<out>/<arch>_<data>-folded.onnx` (the same
weights with BatchNorm folded into Conv, the export users make by default) and a JSON record.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onnxprune.data import DataSpec, Splits, batches, load_dataset, parse_data_spec
from onnxprune.nets.cifar import ARCHS, build

__all__ = ["TrainResult", "default_out_dir", "evaluate", "export_onnx", "train"]

__all__ = ["TrainResult", "default_out_dir", "evaluate", "export_onnx", "main", "train"]


def default_out_dir() -> Path:
    """`$XDG_CACHE_HOME/onnxprune/models`, by default `~/.cache/onnxprune/models`."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "onnxprune" / "models"


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What `train` produced.

    Attributes:
        arch, data: architecture name and canonical data spec.
        epochs: epochs trained.
        test_top1: top-1 accuracy on the test split (the dataset's held-out test set if it has one).
        val_top1: top-1 accuracy on the validation split after each epoch.
        train_seconds: wall time of the training epochs (validation included, not loading/export).
        input_shape: the exported model's input shape, (1, C, H, W).
        num_classes: number of outputs.
        train_images: number of training images used per epoch.
        onnx_path, json_path: the files written (None when export was off).
        folded_onnx_path: the export with BatchNorm folded into Conv (None when export was off;
            `onnx_path` itself with `fold_bn=True`).
        model: the trained torch module, in eval mode, on the CPU.
    """

    arch: str
    data: str
    epochs: int
    test_top1: float
    val_top1: tuple[float, ...]
    train_seconds: float
    input_shape: tuple[int, int, int, int]
    num_classes: int
    train_images: int
    onnx_path: Path | None
    json_path: Path | None
    model: nn.Module = field(repr=False)
    folded_onnx_path: Path | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-").lower() or "data"


def _data_slug(spec: DataSpec) -> str:
    """A file-name part for a data spec: `fashion-mnist`, `digits`, `npz-cifar10`..."""
    text = str(spec)
    if ":" in text and spec.path is not None:
        text = f"{spec.kind}-{spec.path.stem}"
    return _slug(text)


def _augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by `pad`, and random horizontal flip. x: (N, C, H, W)."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))  # (N, C, H + 2p, W + 2p)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512,
             device: str | torch.device = "cpu",
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of `model` on (x, y); (nan, nan) when empty."""
    if len(x) == 0:
        return float("nan"), float("nan")
    model.eval()
    correct, loss_sum = 0, 0.0
    for xb, yb in batches(x, y, batch_size):
        logits = model(torch.from_numpy(xb).to(device).contiguous(memory_format=memory_format))
        target = torch.from_numpy(yb).to(device)
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return correct / len(x), loss_sum / len(x)


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str | os.PathLike[str], *,
                fold_bn: bool = False) -> Path:
    """Export `model` (TorchScript exporter, opset 17, dynamic batch N) to `path`, atomically.

    The model is exported in eval mode. By default BatchNormalization nodes are kept (the
    exporter's `TrainingMode.PRESERVE`; BN scales are a pruning criterion); `fold_bn=True` uses
    the exporter's default `TrainingMode.EVAL`, which folds each BatchNorm into its Conv.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    model = model.eval().cpu().to(memory_format=torch.contiguous_format)
    x = torch.zeros(*input_shape)
    try:
        mode = torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # legacy exporter
            warnings.filterwarnings("ignore", message=".*constant.folding.*")
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=17, training=mode,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_json(path: Path, record: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def train(
    arch: str,
    data_spec: str = "fashion-mnist",
    epochs: int = 10,
    *,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    max_train_images: int | None = None,
    input_size: int | None = None,
    in_channels: int | None = None,
    augment: bool = True,
    flip: bool | None = None,
    device: str = "auto",
    channels_last: bool | None = None,
    export: bool = True,
    fold_bn: bool = False,
    verbose: bool = True,
) -> TrainResult:
    """Train `arch` on `data_spec` and (by default) export it to ONNX with a JSON record.

    Args:
        arch: a key of `models.ARCHS` (resnet20, resnet56, vgg16_bn, vgg19_bn, mobilenetv2).
        data_spec: an onnxprune data spec (fashion-mnist, digits, idx:DIR, folder:DIR, npz:FILE...).
        epochs: training epochs (cosine schedule over all of them).
        batch_size, lr, momentum, weight_decay: SGD settings.
        seed: seeds the splits, the subset, the initialization and the batch order.
        out_dir: where the .onnx and .json go (default `default_out_dir()`).
        name: file stem (default `<arch>_<data>`).
        max_train_images: train on a seeded subset of this many images (quick demos).
        input_size: resize images to input_size x input_size (default: the data's own size).
        in_channels: 1 or 3 (default: the data's own channel count).
        augment: random crop with padding (and flip, see `flip`).
        flip: random horizontal flips; default on, except for digits.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        channels_last: train in channels-last memory format (default: on CPU, where it is about
            1.6x faster for ResNet-20 and 2x for MobileNetV2).
        export: write the ONNX file and its JSON record.
        fold_bn: fold BatchNorm into Conv in `<stem>.onnx` too (default: keep BatchNormalization
            there; the folded form is always written as `<stem>-folded.onnx`).
        verbose: show a progress bar and per-epoch lines (rich).

    Raises:
        DataError: the dataset is missing or unusable.
        KeyError: unknown architecture.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    spec = parse_data_spec(data_spec)
    model_key = arch.lower().replace("-", "_")
    if model_key not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHS)}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else ("cpu" if device == "auto" else device))
    console = Console(quiet=not verbose, highlight=False)

    # Dynamic dims keep the data's own channels / size (layout NCHW).
    shape_hint = (None, in_channels, input_size, input_size)
    splits: Splits = load_dataset(spec, input_shape=shape_hint, layout="nchw", seed=seed)
    x_train, y_train = splits.train
    if max_train_images is not None and max_train_images < len(x_train):
        idx = np.sort(np.random.default_rng(seed + 1).choice(len(x_train), max_train_images, replace=False))
        x_train, y_train = x_train[idx], y_train[idx]
    x_val, y_val = splits.val
    x_test, y_test = splits.test
    c, h, w = x_train.shape[1:]
    input_shape = (1, int(c), int(h), int(w))

    torch.manual_seed(seed)
    model = build(model_key, in_channels=int(c), num_classes=splits.num_classes).to(dev)
    use_cl = dev.type == "cpu" if channels_last is None else channels_last
    mem_format = torch.channels_last if use_cl else torch.contiguous_format
    model = model.to(memory_format=mem_format)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    steps_per_epoch = -(-len(x_train) // batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    pad = max(1, round(min(h, w) / 8)) if augment else 0  # 4 px at 32, 4 at 28, 1 at 8
    do_flip = augment and (spec.kind != "digits" if flip is None else flip)
    gen = torch.Generator().manual_seed(seed)

    console.print(f"[bold]{model_key}[/] ({params_m:.2f} M params) on {splits.spec}: "
                  f"{len(x_train)} train / {len(x_val)} val / {len(x_test)} test images, "
                  f"input {input_shape}, {splits.num_classes} classes, {epochs} epochs, device {dev}")
    val_history: list[float] = []
    start = time.perf_counter()
    columns = (TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not verbose) as progress:
        for epoch in range(epochs):
            task = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps_per_epoch, stats="")
            model.train()
            seen, correct, loss_sum = 0, 0, 0.0
            epoch_start = time.perf_counter()
            for xb, yb in batches(x_train, y_train, batch_size, shuffle=True, seed=seed * 1000 + epoch):
                inputs = torch.from_numpy(xb)  # (B, C, H, W)
                if augment:
                    inputs = _augment(inputs, pad, do_flip, gen)
                inputs = inputs.to(dev).contiguous(memory_format=mem_format)
                target = torch.from_numpy(yb).to(dev)
                logits = model(inputs)
                loss = F.cross_entropy(logits, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                seen += len(yb)
                loss_sum += loss.item() * len(yb)
                correct += int((logits.argmax(1) == target).sum())
                progress.update(task, advance=1,
                                stats=f"loss {loss_sum / seen:.3f} acc {correct / seen:.1%}")
            val_acc, val_loss = evaluate(model, x_val, y_val, device=dev, memory_format=mem_format)
            val_history.append(val_acc)
            progress.remove_task(task)
            console.print(f"epoch {epoch + 1:>3}/{epochs}  loss {loss_sum / seen:.4f}  "
                          f"train {correct / seen:.2%}  val {val_acc:.2%} (loss {val_loss:.4f})  "
                          f"{time.perf_counter() - epoch_start:.0f}s")
    train_seconds = time.perf_counter() - start
    test_acc, test_loss = evaluate(model, x_test, y_test, device=dev, memory_format=mem_format)
    split_note = "held-out test set" if splits.held_out_test else "test split"
    console.print(f"[bold]test top-1 {test_acc:.2%}[/] (loss {test_loss:.4f}, {len(x_test)} images, "
                  f"{split_note}); trained in {train_seconds:.0f}s")

    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    onnx_path = json_path = folded_path = None
    if export:
        out = Path(out_dir).expanduser() if out_dir is not None else default_out_dir()
        stem = name or f"{model_key}_{_data_slug(spec)}"
        onnx_path = export_onnx(model, input_shape, out / f"{stem}.onnx", fold_bn=fold_bn)
        folded_path = onnx_path if fold_bn else export_onnx(model, input_shape, out / f"{stem}-folded.onnx",
                                                            fold_bn=True)
        json_path = out / f"{stem}.json"
        _write_json(json_path, {
            "arch": model_key,
            "data": splits.spec,
            "epochs": epochs,
            "test_top1": round(test_acc, 6),
            "train_seconds": round(train_seconds, 2),
            "torch": torch.__version__,
            "val_top1": [round(v, 6) for v in val_history],
            "test_images": len(x_test),
            "held_out_test": splits.held_out_test,
            "train_images": len(x_train),
            "input_shape": list(input_shape),
            "num_classes": splits.num_classes,
            "preprocessing": {"layout": "nchw", "scale": "[0, 1]", "mean": None, "std": None},
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "seed": seed,
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "onnx": onnx_path.name,
            "bn_folded": fold_bn,
            "onnx_folded": folded_path.name,
        })
        extra = "" if fold_bn else f", {folded_path.name} (BatchNorm folded)"
        console.print(f"wrote {onnx_path}{extra} and {json_path.name}")
    return TrainResult(arch=model_key, data=splits.spec, epochs=epochs, test_top1=test_acc,
                       val_top1=tuple(val_history), train_seconds=train_seconds,
                       input_shape=input_shape, num_classes=splits.num_classes,
                       train_images=len(x_train), onnx_path=onnx_path, json_path=json_path,
                       model=model, folded_onnx_path=folded_path)
