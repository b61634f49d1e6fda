"""Candidate evaluation: one interface, shared by every search method.

An `Evaluator` scores a batch of keep masks by validation top-1 of the masked torch copy
(`MaskedModel`, optionally with BatchNorm re-calibration). Work is reused: results are cached per
(mask, number of images), and a method can ask for a small subset first and the full validation
split only for the best candidates.

`LocalEvaluator` runs in this process (`workers=1`) or in local worker processes (`workers>1`,
forked, one torch thread each, every worker holding its own copy of the model). A distributed
backend (Ray, a job queue...) only has to implement `evaluate`; the methods do not change.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from onnxprune.deps import Analysis
from onnxprune.errors import InputError
from onnxprune.search.budget import mask_key


@dataclass(frozen=True)
class EvalConfig:
    """How candidates are scored.

    `images`: validation images per cheap evaluation (None: the whole validation split).
    `recalibrate_bn`: re-estimate BatchNorm statistics under each mask on `bn_batches` batches
    of training images (makes masked accuracy track post-fine-tune accuracy much better).
    `workers`: local processes (1: in this process). `threads`: torch threads per evaluator.
    """

    images: int | None = 1000
    recalibrate_bn: bool = True
    bn_batches: int = 4
    bn_batch_size: int = 128
    batch_size: int = 256
    workers: int = 1
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.images is not None and self.images < 1:
            raise InputError(f"evaluation images must be >= 1, got {self.images}")
        if self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.threads < 1:
            raise InputError(f"evaluation threads must be >= 1, got {self.threads}")


class Evaluator(Protocol):
    """Scores keep masks. `evaluations` counts the masked forward passes actually run."""

    evaluations: int
    seconds: float

    def evaluate(self, keeps: Sequence[np.ndarray], images: int | None = None) -> list[float]:
        """Validation top-1 of each mask, on the first `images` validation images (None: the
        configured default; 0: the whole split)."""
        ...

    def close(self) -> None: ...


class _Scorer:
    """What runs in a worker: a masked copy plus the data it needs."""

    def __init__(self, masked: Any, x_val: np.ndarray, y_val: np.ndarray, x_bn: np.ndarray,
                 cfg: EvalConfig) -> None:
        self.masked = masked
        self.x_val, self.y_val, self.x_bn = x_val, y_val, x_bn
        self.cfg = cfg

    def __call__(self, keep: np.ndarray, images: int) -> float:
        from onnxprune.torchcopy.masked import torch_threads

        with torch_threads(self.cfg.threads):
            self.masked.apply(keep)
            if self.cfg.recalibrate_bn:
                self.masked.recalibrate_bn(self.x_bn, batches=self.cfg.bn_batches,
                                           batch_size=self.cfg.bn_batch_size)
            top1, _ = self.masked.evaluate(self.x_val[:images], self.y_val[:images], self.cfg.batch_size)
        return top1


_WORKER: _Scorer | None = None  # set in the parent before forking; inherited by the workers


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _worker_eval(args: tuple[np.ndarray, int]) -> float:
    assert _WORKER is not None
    return _WORKER(*args)


class LocalEvaluator:
    """Masked evaluation in this process or in forked local workers.

    Example:
        ev = LocalEvaluator(analysis, to_torch(analysis), splits, EvalConfig(images=500))
        accs = ev.evaluate([keep_a, keep_b])
    """

    def __init__(self, analysis: Analysis, copy: Any, splits: Any, cfg: EvalConfig = EvalConfig()) -> None:
        from onnxprune.torchcopy import MaskedModel

        self.cfg = cfg
        self.analysis = analysis
        rng = np.random.default_rng(cfg.seed)
        x_val, y_val = splits.val
        order = rng.permutation(len(y_val))  # a prefix of any length is a random subset
        x_train, _ = splits.train
        bn_n = min(len(x_train), cfg.bn_batches * cfg.bn_batch_size)
        x_bn = x_train[rng.choice(len(x_train), size=bn_n, replace=False)]
        self.val_images = len(y_val)
        self._scorer = _Scorer(MaskedModel(copy, analysis, threads=cfg.threads),
                               x_val[order], y_val[order], x_bn, cfg)
        self._cache: dict[tuple[bytes, int], float] = {}
        self._pool: Any = None
        self.evaluations = 0
        self.seconds = 0.0

    def _images(self, images: int | None) -> int:
        if images is None:
            images = self.cfg.images or 0
        return self.val_images if images <= 0 else min(images, self.val_images)

    def _ensure_pool(self) -> Any:
        global _WORKER
        if self._pool is None:
            _WORKER = self._scorer
            ctx = multiprocessing.get_context("fork")
            self._pool = ctx.Pool(self.cfg.workers, initializer=_worker_init)
        return self._pool

    def evaluate(self, keeps: Sequence[np.ndarray], images: int | None = None) -> list[float]:
        n = self._images(images)
        keys = [(mask_key(k), n) for k in keeps]
        todo: dict[tuple[bytes, int], np.ndarray] = {}
        for key, keep in zip(keys, keeps):
            if key not in self._cache and key not in todo:
                todo[key] = np.asarray(keep, dtype=bool)
        if todo:
            t0 = time.perf_counter()
            jobs = [(keep, n) for keep in todo.values()]
            if self.cfg.workers > 1 and len(jobs) > 1:
                values = self._ensure_pool().map(_worker_eval, jobs)
            else:
                values = [self._scorer(*job) for job in jobs]
            for key, value in zip(todo, values):
                self._cache[key] = float(value)
            self.evaluations += len(jobs)
            self.seconds += time.perf_counter() - t0
        return [self._cache[key] for key in keys]

    def close(self) -> None:
        global _WORKER
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
            _WORKER = None
        self._scorer.masked.reset()

    def __enter__(self) -> "LocalEvaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
