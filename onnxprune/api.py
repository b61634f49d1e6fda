"""The typed Python API behind the CLI."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx

from onnxprune.criteria import WEIGHT_CRITERIA, weight_scores
from onnxprune.deps import Analysis, analyze
from onnxprune.errors import InputError
from onnxprune.ir import Shape
from onnxprune.rewrite import VerifyResult, apply_keep, verify
from onnxprune.search import AllocationConfig, allocate

METHODS = ("l1", "l2", "bn", "taylor", "random", "gat-ppo", "rl-pruner", "sacp")
AVAILABLE_METHODS = WEIGHT_CRITERIA


@dataclass(frozen=True)
class PruneConfig:
    method: str = "l1"
    sparsity: float | None = None
    target_flops: float | None = None
    global_ranking: bool = False
    round_to: int = 1
    seed: int = 0
    exclude: tuple[str, ...] = ()
    verify: bool = True
    input_shapes: Mapping[str, Shape] = field(default_factory=dict)

    def allocation(self) -> AllocationConfig:
        return AllocationConfig(sparsity=self.sparsity, target_flops=self.target_flops,
                                global_ranking=self.global_ranking, round_to=self.round_to)


@dataclass(frozen=True, eq=False)
class PruneResult:
    analysis: Analysis
    keep: np.ndarray
    model: onnx.ModelProto
    verified: VerifyResult | None
    seconds: dict[str, float]

    @property
    def macs(self) -> tuple[int, int]:
        return self.analysis.macs, self.analysis.cost.macs(self.keep)

    @property
    def params(self) -> tuple[int, int]:
        return self.analysis.params, self.analysis.cost.params(self.keep)

    def report(self) -> dict[str, Any]:
        data = self.analysis.to_json(self.keep)
        if self.verified is not None:
            data["verify"] = {"max_abs_diff": self.verified.max_abs_diff,
                              "inputs": self.verified.inputs_checked}
        data["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        return data


def prune(src: str | os.PathLike[str] | onnx.ModelProto, cfg: PruneConfig,
          progress: Callable[[str], None] | None = None) -> PruneResult:
    """Analyse, score, allocate, rewrite and (by default) verify. Writes nothing."""
    say = progress or (lambda _msg: None)
    if cfg.method not in METHODS:
        raise InputError(f"unknown method {cfg.method!r} (choose from {', '.join(METHODS)})")
    if cfg.method not in AVAILABLE_METHODS:
        raise InputError(
            f"--method {cfg.method} is not available in this version (available: {', '.join(AVAILABLE_METHODS)})"
        )
    alloc = cfg.allocation()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    say("analysing")
    analysis = analyze(src, cfg.input_shapes, cfg.exclude)
    times["analyze"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    say(f"scoring ({cfg.method})")
    scores = weight_scores(analysis, cfg.method, cfg.seed)
    keep = allocate(analysis, scores, alloc)
    times["select"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    say("rewriting")
    model = apply_keep(analysis, keep)
    times["rewrite"] = time.perf_counter() - t0
    verified = None
    if cfg.verify:
        t0 = time.perf_counter()
        say("verifying")
        verified = verify(analysis, keep, model, seed=cfg.seed)
        times["verify"] = time.perf_counter() - t0
    return PruneResult(analysis, keep, model, verified, times)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write atomically (temporary file in the same folder, then rename)."""
    _atomic_write(Path(path), model.SerializeToString())


def save_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    _atomic_write(Path(path), (json.dumps(data, indent=2) + "\n").encode())


def _atomic_write(path: Path, payload: bytes) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def check_output_paths(src: str | os.PathLike[str], outputs: Iterable[str | os.PathLike[str] | None]) -> None:
    for out in outputs:
        if out is not None and same_file(src, out):
            raise InputError(f"{out}: refusing to overwrite the input model")
