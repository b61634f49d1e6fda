"""Streaming mini-batches out of (possibly lazy) splits, and the per-use caps on images.

`loader` is a DataLoader over whole batches: each item is one batch, read, decoded and
preprocessed by a worker process (`workers > 0`, torch's `DataLoader`) or in this process
(`workers == 0`). Only `prefetch` batches per worker are in flight, so memory does not grow with
the dataset.

    >>> for idx, xb, yb in loader(x, y, batch_size=64, shuffle=True, seed=0, limit=2000, workers=2):
    ...     ...                                     # idx: positions in x of this batch's images

Caps (`ImageCaps`): every use of data reads at most its own number of images.
    calib     Taylor scores, BatchNorm re-estimation (final model and per candidate)
    eval      validation images per candidate score and for fine-tuning's model selection
    finetune  training images per fine-tuning epoch
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxprune.data.lazy import FolderSource, LazyImages
from onnxprune.errors import InputError

DEFAULT_CALIB_IMAGES = 512
DEFAULT_EVAL_IMAGES = 1000


@dataclass(frozen=True)
class ImageCaps:
    """How many images each use of the data reads (None: no cap, the whole split)."""

    calib: int = DEFAULT_CALIB_IMAGES
    eval: int | None = DEFAULT_EVAL_IMAGES
    finetune: int | None = None

    def __post_init__(self) -> None:
        for name in ("calib", "eval", "finetune"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name}-images must be >= 1, got {value}")


def default_workers(x: Any, device: Any = None) -> int:
    """Decoding processes worth starting for `x`: 0 for in-memory arrays (slicing them is cheaper
    than a process hop) and when the model runs on the CPU (`device`: a torch device or its name;
    decoding a batch of files takes a few percent of a CPU step, and workers would compete with
    the model for the same cores); else, for image files, 2 (at most the CPU count - 1)."""
    if device is not None and not str(device).startswith("cuda"):
        return 0
    if isinstance(x, LazyImages) and isinstance(x.source, FolderSource):
        return max(0, min(2, (os.cpu_count() or 1) - 1))
    return 0


class _Batches:
    """A map-style dataset whose item k is batch k: (positions, x, y)."""

    def __init__(self, x: Any, y: np.ndarray, plan: list[np.ndarray]) -> None:
        self.x, self.y, self.plan = x, y, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = self.plan[k]
        return idx, np.ascontiguousarray(self.x[idx]), self.y[idx]


def _plan(n: int, batch_size: int, shuffle: bool, seed: int, limit: int | None, drop_last: bool,
          order: np.ndarray | None = None) -> list[np.ndarray]:
    if order is None:
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    if limit is not None:
        order = order[:limit]
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[s:s + batch_size] for s in range(0, stop, batch_size)]


def loader(x: Any, y: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0,
           limit: int | None = None, drop_last: bool = False, workers: int | None = None,
           prefetch: int = 2, order: np.ndarray | None = None,
           ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (positions, x batch, y batch) over the first `limit` images of a seeded order.

    Args:
        x, y: a split (`LazyImages` or array, and labels).
        batch_size: images per batch.
        shuffle, seed: a seeded random order (else the stored order).
        limit: read at most this many images (None: all).
        drop_last: skip a last, smaller batch.
        workers: decoding processes (None: `default_workers(x)`; 0: this process).
        prefetch: batches each worker prepares ahead.
        order: the positions to visit, in order (replaces `shuffle` and `seed`).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} items but y has {len(y)}")
    plan = _plan(len(x), batch_size, shuffle, seed, limit, drop_last, order)
    data = _Batches(x, np.asarray(y), plan)
    workers = default_workers(x) if workers is None else workers
    if workers <= 0 or len(plan) <= 1:
        for k in range(len(plan)):
            yield data[k]
        return
    import torch.utils.data as tud

    dl = tud.DataLoader(data, batch_size=None, shuffle=False, num_workers=min(workers, len(plan)),
                        prefetch_factor=prefetch, collate_fn=_identity,
                        multiprocessing_context="fork", persistent_workers=False)
    for idx, xb, yb in dl:
        yield idx, xb, yb


def _identity(item: Any) -> Any:
    return item
