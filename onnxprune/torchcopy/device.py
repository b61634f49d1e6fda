"""Where the PyTorch side runs (`--device auto|cpu|cuda|cuda:N`) and batch sizes that fit memory.

    >>> dev = resolve_device("auto")          # cuda when torch sees a GPU, else cpu
    >>> copy = to_torch(analysis, device=dev)  # the copy lives there; batches are moved per step

Batch sizes: a 224x224 ResNet-50 holds ~100 MB of activations per image during a backward pass,
so the batch sizes that suit 28x28 images would need tens of GB. `fit_batch_size` caps a default
batch size with an estimate of activation memory per image from the analysed graph's shapes:
training keeps every activation (and, on a folded model, the re-inserted BatchNorm's output)
for the backward pass; inference holds only the few tensors alive at once around the largest
layer. `release_memory` hands memory freed by a finished step back to the system.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from onnxprune.errors import InputError, option

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
# Activation memory a batch may take on the CPU (bytes): training keeps every activation for the
# backward pass; inference frees them layer by layer. On GPU the device's own memory bounds it
# instead. The process itself (torch, onnxruntime, the models) needs memory besides; the peaks
# these budgets give on MobileNetV2 / ResNet-50 at 224x224 are in benchmarks/results/scale_memory.json.
TRAIN_BUDGET = 768 << 20
INFER_BUDGET = 256 << 20
# Training: each activation is kept, plus its gradient and the BatchNorm output where one is
# re-inserted (about 2x the forward sum). Inference: a layer's input and output, a residual
# branch and an operator's scratch space around the largest activation (4x it).
TRAIN_FACTOR = 2.0
INFER_LIVE = 4.0


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (a separate function so tests can pretend either way)."""
    return torch.cuda.is_available()


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device named by `spec` ("auto", "cpu", "cuda", "cuda:N"; None: "auto").

    Raises:
        InputError: an unknown name, or a CUDA device that torch does not see.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda") if cuda_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cpu:\d+", text):  # torch's own spelling of the CPU
        return torch.device(text)
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise InputError(f"{option('device', spec)}: expected {DEVICE_CHOICES}")
    if not cuda_available():
        raise InputError(f"{option('device', text)}: torch sees no CUDA GPU on this machine "
                         f"(torch.cuda.is_available() is False); use {option('device', 'cpu')} or "
                         f"{option('device', 'auto')}")
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise InputError(f"{option('device', text)}: torch sees {count} GPU(s) (cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index)
    return torch.device("cuda")


def _activation_sizes(analysis: Any) -> list[int]:
    """Bytes of every float32 node output per image (batch dimension excluded; tensors of
    unknown shape left out)."""
    graph = getattr(analysis, "graph", analysis)
    sizes = []
    for node in graph.nodes:
        for out in node.outputs:
            shape = graph.shapes.get(out) if out else None
            if not shape or len(shape) < 2:
                continue
            dims = [int(d) for d in shape[1:] if isinstance(d, (int, np.integer)) and int(d) > 0]
            if len(dims) == len(shape) - 1:
                sizes.append(int(np.prod(dims)) * 4)
    return sizes


def activation_bytes(analysis: Any) -> int:
    """Bytes of float32 activations one image produces in the analysed graph (an `Analysis` or
    a `LayerGraph`; sum of the outputs of every node, batch dimension excluded)."""
    return sum(_activation_sizes(analysis))


def largest_activation_bytes(analysis: Any) -> int:
    """Bytes of the largest single float32 node output per image (0 when no shape is known)."""
    return max(_activation_sizes(analysis), default=0)


def batch_bytes_per_image(analysis: Any, training: bool) -> float:
    """Estimated memory one image of a batch takes: training `TRAIN_FACTOR` x all activations,
    inference `INFER_LIVE` x the largest one (never more than all of them)."""
    total = activation_bytes(analysis)
    if training:
        return TRAIN_FACTOR * total
    return min(float(total), INFER_LIVE * largest_activation_bytes(analysis))


def fit_batch_size(analysis: Any, default: int, training: bool, device: torch.device | None = None,
                   budget: int | None = None) -> int:
    """`default` reduced so that one batch's activations stay within `budget` bytes
    (`TRAIN_BUDGET` / `INFER_BUDGET` on CPU; on GPU a quarter of the device's memory), at least 2.

    The memory of one image is `batch_bytes_per_image`: training keeps all activations plus
    their gradients; inference keeps the few tensors alive around the largest layer.
    """
    need = batch_bytes_per_image(analysis, training)
    if need <= 0:
        return default
    if budget is None:
        if device is not None and device.type == "cuda":
            budget = torch.cuda.get_device_properties(device).total_memory // 4
        else:
            budget = TRAIN_BUDGET if training else INFER_BUDGET
    return int(max(2, min(default, budget // max(need, 1))))


def release_memory() -> None:
    """Collect garbage and return the C heap's free memory to the system (glibc `malloc_trim`),
    so that a finished step's activations do not stay in the process' resident memory."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def to_device_batch(x: np.ndarray | torch.Tensor, device: torch.device, channels_last: bool = False,
                    ) -> torch.Tensor:
    """A numpy or torch batch as a tensor on `device` (pinned and non-blocking for CUDA)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if device.type == "cuda" and not t.is_cuda:
        t = t.pin_memory().to(device, non_blocking=True)
    elif t.device != device:
        t = t.to(device)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t
