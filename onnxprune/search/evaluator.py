"""Candidate evaluation: one interface, shared by every search method.

An `Evaluator` scores a batch of keep masks by validation top-1 of the masked torch copy
(`MaskedModel`, optionally with BatchNorm re-calibration). Work is reused: results are cached per
(mask, number of images), and a method can ask for a small subset first and the full validation
split only for the best candidates.

Two backends (`EvalConfig.backend`, `--evaluator`), and `make_evaluator` picks one:

- `LocalEvaluator` runs in this process (`workers=1`) or in local worker processes
  (`workers>1`, forked, one torch thread each, every worker holding its own copy of the model).
- `RayEvaluator` (`onnxprune[ray]`) runs `workers` Ray actors, on this machine (a local Ray
  instance it starts) or on a cluster (`ray_address`). Each actor receives the analysis, the
  copy's weights and the images it scores once (Ray's object store) and then scores masks sent
  to it; with a CUDA `device` every actor asks Ray for one GPU. An actor that dies is restarted
  and its tasks are retried, so results do not change. The scores equal `LocalEvaluator`'s for
  the same masks and seed: the same `_Scorer` code runs on the same data.

Data: the validation images of the cheap evaluations (the first `images` of a seeded order) are
read once and kept; requests for more (the full split) stream the rest batch by batch. BatchNorm
re-calibration uses `bn_batches * bn_batch_size` training images (`--calib-images`), drawn by
`onnxprune.data.calibration_sample` with the evaluation seed: the images the API re-estimates
the written model's BatchNorm on, so a written mask scores what the search saw.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from onnxprune.deps import Analysis
from onnxprune.errors import InputError, option
from onnxprune.search.budget import mask_key

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class EvalConfig:
    """How candidates are scored.

    `images`: validation images per cheap evaluation (None: the whole validation split).
    `recalibrate_bn`: re-estimate BatchNorm statistics under each mask on `bn_batches` batches
    of training images (makes masked accuracy track post-fine-tune accuracy much better);
    `bn_batches * bn_batch_size` are the calibration images (`--calib-images`), which the
    search's Taylor scores use too, in batches of `taylor_batch_size`.
    `workers`: local processes (1: in this process) or Ray actors. `threads`: torch threads per
    evaluator. `device`: where the masked copy runs ("cpu", "cuda", "cuda:N"; None: the copy's
    own device). `backend`: "local" or "ray"; `ray_address`: a Ray cluster to join (None: start
    a local Ray instance, or use the one this process already joined).
    """

    images: int | None = 1000
    recalibrate_bn: bool = True
    bn_batches: int = 4
    bn_batch_size: int = 128
    batch_size: int = 256
    taylor_batch_size: int = 64
    workers: int = 1
    threads: int = 1
    seed: int = 0
    device: str | None = None
    backend: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.images is not None and self.images < 1:
            raise InputError(f"evaluation images must be >= 1, got {self.images}")
        if self.workers < 1:
            raise InputError(f"{option('workers')} must be >= 1, got {self.workers}")
        if self.threads < 1:
            raise InputError(f"evaluation threads must be >= 1, got {self.threads}")
        if self.backend not in BACKENDS:
            raise InputError(f"--evaluator {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.ray_address is not None and self.backend != "ray":
            raise InputError("--ray-address needs --evaluator ray")


class Evaluator(Protocol):
    """Scores keep masks. `evaluations` counts the masked forward passes actually run."""

    evaluations: int
    seconds: float

    def evaluate(self, keeps: Sequence[np.ndarray], images: int | None = None) -> list[float]:
        """Validation top-1 of each mask, on the first `images` validation images (None: the
        configured default; 0: the whole split)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, eq=False)
class _EvalData:
    """What scoring needs besides the model: validation images in a seeded order (the first
    `len(head)` read into an array; `full` the whole ordered split, lazy when the dataset is, or
    None when `head` is all of it) and the BatchNorm sample."""

    head: np.ndarray
    full: Any
    y_val: np.ndarray
    x_bn: np.ndarray

    @classmethod
    def from_splits(cls, splits: Any, cfg: EvalConfig) -> "_EvalData":
        from onnxprune.data import calibration_sample, take

        x_val, y_val = splits.val
        order = np.random.default_rng(cfg.seed).permutation(len(y_val))  # a prefix of any length is a random subset
        # the images the API re-estimates the written model's BatchNorm on (same count and seed)
        x_bn = np.asarray(calibration_sample(splits.train[0], cfg.bn_batches * cfg.bn_batch_size, cfg.seed))
        if isinstance(x_val, np.ndarray):
            return cls(x_val[order], None, y_val[order], x_bn)
        cached = len(order) if cfg.images is None else min(len(order), cfg.images)
        full = take(x_val, order)
        return cls(np.asarray(take(full, slice(0, cached))), None if cached == len(order) else full,
                   y_val[order], x_bn)

    def images(self, n: int) -> Any:
        """The first `n` ordered validation images (an array, or a lazy view beyond `head`)."""
        from onnxprune.data import take

        if n <= len(self.head) or self.full is None:
            return self.head[:n]
        return take(self.full, slice(0, n))


class _Scorer:
    """What runs in a worker: a masked copy plus the data it needs."""

    def __init__(self, masked: Any, data: _EvalData, cfg: EvalConfig) -> None:
        self.masked = masked
        self.data = data
        self.cfg = cfg

    @classmethod
    def build(cls, analysis: Analysis, state: dict[str, Any], data: _EvalData, cfg: EvalConfig) -> "_Scorer":
        """A scorer made from scratch (in a Ray actor): the analysis' torch copy with `state`'s
        weights, on `cfg.device`."""
        import torch

        from onnxprune.torchcopy import MaskedModel, to_torch

        torch.set_num_threads(cfg.threads)
        copy = to_torch(analysis, check=False, device=cfg.device or "cpu")
        copy.module.load_state_dict(state)
        return cls(MaskedModel(copy, analysis, threads=cfg.threads), data, cfg)

    def __call__(self, keep: np.ndarray, images: int) -> float:
        from onnxprune.torchcopy.masked import torch_threads

        with torch_threads(self.cfg.threads):
            self.masked.apply(keep)
            if self.cfg.recalibrate_bn:
                self.masked.recalibrate_bn(self.data.x_bn, batches=self.cfg.bn_batches,
                                           batch_size=self.cfg.bn_batch_size)
            top1, _ = self.masked.evaluate(self.data.images(images), self.data.y_val[:images], self.cfg.batch_size)
        return top1


_WORKER: _Scorer | None = None  # set in the parent before forking; inherited by the workers


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _worker_eval(args: tuple[np.ndarray, int]) -> float:
    assert _WORKER is not None
    return _WORKER(*args)


class _CachedEvaluator:
    """The cache and bookkeeping both backends share; subclasses implement `_run(jobs)`."""

    cfg: EvalConfig
    val_images: int

    def _setup(self, cfg: EvalConfig, val_images: int) -> None:
        self.cfg = cfg
        self.val_images = val_images
        self._cache: dict[tuple[bytes, int], float] = {}
        self.evaluations = 0
        self.seconds = 0.0

    def _images(self, images: int | None) -> int:
        if images is None:
            images = self.cfg.images or 0
        return self.val_images if images <= 0 else min(images, self.val_images)

    def _run(self, jobs: list[tuple[np.ndarray, int]]) -> list[float]:
        raise NotImplementedError

    def evaluate(self, keeps: Sequence[np.ndarray], images: int | None = None) -> list[float]:
        n = self._images(images)
        keys = [(mask_key(k), n) for k in keeps]
        todo: dict[tuple[bytes, int], np.ndarray] = {}
        for key, keep in zip(keys, keeps):
            if key not in self._cache and key not in todo:
                todo[key] = np.asarray(keep, dtype=bool)
        if todo:
            t0 = time.perf_counter()
            values = self._run([(keep, n) for keep in todo.values()])
            for key, value in zip(todo, values):
                self._cache[key] = float(value)
            self.evaluations += len(todo)
            self.seconds += time.perf_counter() - t0
        return [self._cache[key] for key in keys]


class LocalEvaluator(_CachedEvaluator):
    """Masked evaluation in this process or in forked local workers.

    Example:
        ev = LocalEvaluator(analysis, to_torch(analysis), splits, EvalConfig(images=500))
        accs = ev.evaluate([keep_a, keep_b])
    """

    def __init__(self, analysis: Analysis, copy: Any, splits: Any, cfg: EvalConfig = EvalConfig()) -> None:
        from onnxprune.torchcopy import MaskedModel

        if cfg.device is not None:
            from onnxprune.torchcopy.device import resolve_device

            device = resolve_device(cfg.device)
            if device.type == "cuda" and cfg.workers > 1:
                raise InputError("--workers > 1 forks local CPU processes; with --device cuda use one local "
                                 "worker, or --evaluator ray for several GPUs")
            copy.to(device)
        self.analysis = analysis
        data = _EvalData.from_splits(splits, cfg)
        self._setup(cfg, len(data.y_val))
        self._scorer = _Scorer(MaskedModel(copy, analysis, threads=cfg.threads), data, cfg)
        self._pool: Any = None

    def _ensure_pool(self) -> Any:
        global _WORKER
        if self._pool is None:
            _WORKER = self._scorer
            ctx = multiprocessing.get_context("fork")
            self._pool = ctx.Pool(self.cfg.workers, initializer=_worker_init)
        return self._pool

    def _run(self, jobs: list[tuple[np.ndarray, int]]) -> list[float]:
        if self.cfg.workers > 1 and len(jobs) > 1:
            return self._ensure_pool().map(_worker_eval, jobs)
        return [self._scorer(*job) for job in jobs]

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


# ------------------------------------------------------------------------------------------- Ray


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--evaluator ray needs Ray: pip install 'onnxprune[ray]'") from None
    return ray


_ACTOR_CLASS: Any = None


def _actor_class(ray: Any) -> Any:
    """The Ray actor class (made once; Ray needs the module importable on every node)."""
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        class _RayScorer:
            def __init__(self, analysis: Analysis, state: dict[str, Any], data: _EvalData, cfg: EvalConfig) -> None:
                self.scorer = _Scorer.build(analysis, state, data, cfg)

            def score(self, keep: np.ndarray, images: int) -> float:
                return self.scorer(keep, images)

            def pid(self) -> int:
                return os.getpid()

        _ACTOR_CLASS = ray.remote(_RayScorer)
    return _ACTOR_CLASS


class RayEvaluator(_CachedEvaluator):
    """Masked evaluation on `cfg.workers` Ray actors (same scores as `LocalEvaluator`).

    Joins `cfg.ray_address` when given (`ray start --head` on one machine, `ray start --address`
    on the others), else the Ray instance this process already joined, else starts a local one
    (shut down again by `close`). Every actor takes `cfg.threads` CPUs, and one GPU when
    `cfg.device` is CUDA. Actors that die are restarted (`max_restarts`) and their tasks retried
    (`max_task_retries`); `restarts_seen` counts the actors found on a new process.
    """

    def __init__(self, analysis: Analysis, copy: Any, splits: Any, cfg: EvalConfig = EvalConfig(),
                 max_restarts: int = 3) -> None:
        ray = _import_ray()
        self._ray = ray
        self.analysis = analysis
        self._started = False
        if not ray.is_initialized():
            try:
                if cfg.ray_address:
                    ray.init(address=cfg.ray_address, log_to_driver=False, configure_logging=False)
                else:
                    ray.init(num_cpus=max(os.cpu_count() or 1, cfg.workers * cfg.threads),
                             include_dashboard=False, log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise InputError(f"--ray-address {cfg.ray_address}: cannot join the Ray cluster ({exc})") from None
            self._started = True
        gpu = cfg.device is not None and str(cfg.device).startswith("cuda")
        data = _EvalData.from_splits(splits, cfg)
        self._setup(cfg, len(data.y_val))
        state = {k: v.detach().cpu() for k, v in copy.module.state_dict().items()}
        worker_cfg = cfg if not gpu else EvalConfig(**{**cfg.__dict__, "device": "cuda"})
        # Held for the evaluator's life: a restarted actor reads its arguments again.
        self._refs = [ray.put(analysis), ray.put(state), ray.put(data), ray.put(worker_cfg)]
        actor = _actor_class(ray).options(num_cpus=cfg.threads, num_gpus=1 if gpu else 0,
                                          max_restarts=max_restarts, max_task_retries=max_restarts)
        self._actors = [actor.remote(*self._refs) for _ in range(cfg.workers)]
        self._pids = ray.get([a.pid.remote() for a in self._actors])
        self.restarts_seen = 0

    @property
    def actor_pids(self) -> list[int]:
        """Process ids of the actors (as last seen)."""
        return list(self._pids)

    def _run(self, jobs: list[tuple[np.ndarray, int]]) -> list[float]:
        from ray.util import ActorPool

        pool = ActorPool(self._actors)
        try:
            values = list(pool.map(lambda a, job: a.score.remote(*job), jobs))
        except self._ray.exceptions.RayActorError as exc:
            raise RuntimeError(f"a Ray evaluation worker died more than its restarts allow: {exc}") from None
        pids = self._ray.get([a.pid.remote() for a in self._actors])
        self.restarts_seen += sum(p != q for p, q in zip(pids, self._pids))
        self._pids = pids
        return values

    def close(self) -> None:
        for a in getattr(self, "_actors", []):
            self._ray.kill(a)
        self._actors = []
        self._refs = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False

    def __enter__(self) -> "RayEvaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_evaluator(analysis: Analysis, copy: Any, splits: Any, cfg: EvalConfig = EvalConfig()) -> Any:
    """The evaluator `cfg.backend` names ("local": `LocalEvaluator`, "ray": `RayEvaluator`)."""
    if cfg.backend == "ray":
        return RayEvaluator(analysis, copy, splits, cfg)
    return LocalEvaluator(analysis, copy, splits, cfg)
