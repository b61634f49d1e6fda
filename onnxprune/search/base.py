"""What every search method shares: its inputs (`SearchContext`), its output (`SearchResult`),
the JSON trajectory, checkpoints for `--resume` and the progress bar (methods are registered in `onnxprune.methods`).

A method is a function `run(ctx: SearchContext) -> SearchResult`. It reads candidates' costs
from `ctx.meter`, scores them through `ctx.evaluator`, records each episode / stage with
`ctx.trajectory.add(...)`, saves its state with `ctx.checkpoint.save(...)` at safe points and
loads it with `ctx.checkpoint.load()` when resuming. The returned mask must meet the budget:
`ctx.finish(...)` enforces that (with `make_feasible`) and fills the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import numpy as np

from onnxprune.deps import Analysis
from onnxprune.errors import InputError, option
from onnxprune.fileio import atomic_write
from onnxprune.methods import L1, TAYLOR, method
from onnxprune.search import checkpoint as checkpoint_format
from onnxprune.search.budget import Budget, BudgetMeter, make_feasible
from onnxprune.search.evaluator import EvalConfig, Evaluator
from onnxprune.schema import stamped
from onnxprune.search.rounding import (RoundTo, check_runtime, fit_rounded, is_rounded, parse_round_to,
                                       width_multiples)


@dataclass(frozen=True)
class SearchConfig:
    """Settings common to every search method; `options` holds the method's own (validated by
    the method's config class, e.g. `--option episodes=40`)."""

    budget: Budget = Budget()
    seed: int = 0
    eval: EvalConfig = EvalConfig()
    checkpoint: str | None = None
    resume: bool = False
    trajectory: str | None = None
    plot: str | None = None
    progress: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    round_to: RoundTo = "auto"  # width multiple of the result's groups (onnxprune.search.rounding)
    runtime: str = "cpu"  # the runtime `round_to="auto"` picks widths for

    def __post_init__(self) -> None:
        object.__setattr__(self, "round_to", parse_round_to(self.round_to))
        check_runtime(self.runtime)
        if self.resume and not self.checkpoint:
            raise InputError(f"{option('resume')} needs {option('checkpoint')}")


class Trajectory:
    """Records of a search (one dict per episode, stage or candidate), written as JSON."""

    def __init__(self, method: str, meta: Mapping[str, Any] | None = None) -> None:
        self.method = method
        self.meta = dict(meta or {})
        self.records: list[dict[str, Any]] = []

    def add(self, **record: Any) -> dict[str, Any]:
        clean = {k: _jsonable(v) for k, v in record.items()}
        self.records.append(clean)
        return clean

    def to_json(self) -> dict[str, Any]:
        return stamped({"method": self.method, "meta": self.meta, "records": self.records})

    def write(self, path: str | os.PathLike[str]) -> None:
        atomic_write(Path(path), (json.dumps(self.to_json(), indent=1) + "\n").encode())


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


class Checkpoint:
    """A method's search state, saved atomically in a format that cannot run code
    (`onnxprune.search.checkpoint`: JSON plus numpy arrays); refused on resume when it was made
    for another model, method or configuration (`fingerprint`), or is corrupt or foreign."""

    def __init__(self, path: str | None, fingerprint: str, resume: bool) -> None:
        self.path = Path(path) if path else None
        self.fingerprint = fingerprint
        self.resume = resume
        self.saves = 0

    def save(self, state: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        # written at once, even inside the CLI's all-or-nothing transaction: it is what --resume needs
        atomic_write(self.path, checkpoint_format.encode(self.fingerprint, dict(state)), stage=False)
        self.saves += 1

    def load(self) -> dict[str, Any] | None:
        """The saved state when resuming, else None."""
        if not self.resume or self.path is None:
            return None
        if not self.path.exists():
            raise InputError(f"--resume: checkpoint {self.path} does not exist")
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"--resume: cannot read {self.path} ({exc.strerror or type(exc).__name__})") from None
        fingerprint, state = checkpoint_format.decode(data, f"--resume {self.path}")
        if fingerprint != self.fingerprint or not isinstance(state, dict):
            raise InputError(f"--resume: {self.path} was made for another model, method or setting")
        return state


@dataclass(eq=False)
class SearchContext:
    """Everything a search method needs.

    `scores` maps criterion names (`L1.name`, `TAYLOR.name` of `onnxprune.methods`) to per-unit
    importance (frozen units +inf). `copy` is the torch copy of the original (the teacher for any
    post-training), `splits` the data. `rng` is seeded from `cfg.seed`.

    Plain callables from the API (search never rewrites or benchmarks a model itself):
    `materialize(keep)` the pruned ONNX model of a mask (original weights); `score_model(model)`
    the validation top-1 of an ONNX model through onnxruntime. Either is None when not given.
    """

    method: str
    analysis: Analysis
    evaluator: Evaluator
    meter: BudgetMeter
    scores: Mapping[str, np.ndarray]
    cfg: SearchConfig
    copy: Any = None
    splits: Any = None
    say: Callable[[str], None] = lambda _msg: None
    materialize: Callable[[np.ndarray], Any] | None = None
    score_model: Callable[[Any], float] | None = None
    trajectory: Trajectory = field(init=False)
    checkpoint: Checkpoint = field(init=False)
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.cfg.seed)
        self.started = time.perf_counter()
        self.trajectory = Trajectory(self.method, {
            "budget": {"kind": self.cfg.budget.kind, "target": self.cfg.budget.target},
            "seed": self.cfg.seed, "options": dict(self.cfg.options), "model": self.analysis.graph.source,
        })
        self.checkpoint = Checkpoint(self.cfg.checkpoint, self.fingerprint(), self.cfg.resume)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for init in self.analysis.graph.model.graph.initializer:  # a copy, once per search
            h.update(init.name.encode())
            h.update(init.raw_data[:4096])
        h.update(json.dumps([self.method, self.cfg.budget.kind, self.cfg.budget.target, self.cfg.seed,
                             sorted((k, repr(v)) for k, v in self.cfg.options.items())]).encode())
        return h.hexdigest()[:32]

    @property
    def device(self) -> Any:
        """The torch device of the search's own networks and training (`--device`, as the API
        resolved it into `cfg.eval.device`; the CPU when unset)."""
        from onnxprune.torchcopy.device import resolve_device

        return resolve_device(self.cfg.eval.device or "cpu")

    @property
    def importance(self) -> np.ndarray:
        """The best available importance: Taylor when computed, else L1."""
        return self.scores.get(TAYLOR.name, self.scores[L1.name])

    def option(self, name: str, default: Any) -> Any:
        return self.cfg.options.get(name, default)

    def multiples(self) -> dict[int, int]:
        """Group id -> unit multiple the result's widths honour (`cfg.round_to`, `cfg.runtime`).
        Methods that generate candidates at these widths get them back from `finish` unchanged."""
        return width_multiples(self.analysis, self.cfg.round_to, self.cfg.runtime)

    def round_result(self, keep: np.ndarray) -> np.ndarray:
        """`keep` with every pruned group's width a multiple of its block (`cfg.round_to`), as
        close to the budget as blocks allow (`fit_rounded`: rounded down, made feasible if a
        group had to grow to one block, the unused budget given back block by block unless each
        try would be a latency measurement). Returns `keep` itself when it is already rounded."""
        multiples = self.multiples()
        keep = np.asarray(keep, dtype=bool)
        if is_rounded(self.analysis, keep, multiples):
            return keep
        return fit_rounded(self.meter, keep, self.importance, multiples, refill=self.meter.cheap)

    def finish(self, keep: np.ndarray, val_top1: float | None = None, weights: Mapping[str, np.ndarray] | None = None,
               pruned_weights: Mapping[str, np.ndarray] | None = None, **summary: Any) -> "SearchResult":
        """The result, rounded to the widths of `cfg.round_to` (`round_result`) and made feasible
        if needed; writes the trajectory (and plot) when asked.

        `weights` / `pruned_weights`: trained weights for methods that train during the search
        (see `SearchResult`); `pruned_weights` are dropped if `keep` has to be changed (`weights`
        are full size and fit any mask).
        `summary["picked"]`, when given, names where the returned mask came from (e.g. "best_q",
        "greedy", "filled"); "+made_feasible" is appended when the mask had to be changed.
        """
        rounded = self.round_result(keep)
        if rounded is not keep:
            summary["rounded"] = True
            if summary.get("picked"):
                summary["picked"] = f"{summary['picked']}+rounded"
            val_top1, pruned_weights = None, None
            keep = rounded
        feasible = self.meter.feasible(keep)
        final = keep if feasible else make_feasible(self.meter, keep, self.importance)
        if not feasible:
            summary["made_feasible"] = True
            if summary.get("picked"):  # the label named the method's mask, not the one returned
                summary["picked"] = f"{summary['picked']}+made_feasible"
            val_top1, weights, pruned_weights = None, None, None
        if val_top1 is None:
            val_top1 = self.evaluator.evaluate([final], images=0)[0]
        seconds = time.perf_counter() - self.started
        summary.update(evaluations=self.evaluator.evaluations, eval_seconds=round(self.evaluator.seconds, 3),
                       seconds=round(seconds, 3), budget_ratio=self.meter.ratio(final), val_top1=val_top1)
        self.trajectory.meta["summary"] = _jsonable(summary)
        if self.cfg.trajectory:
            self.trajectory.write(self.cfg.trajectory)
        if self.cfg.plot:
            from onnxprune.search.plot import plot_trajectory

            plot_trajectory(self.trajectory.to_json(), self.cfg.plot)
        return SearchResult(final, float(val_top1), self.evaluator.evaluations, seconds, self.trajectory, summary,
                            weights, pruned_weights)


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The chosen mask (always within budget) and how the search got there.

    `val_top1`: validation top-1 of the result on the whole validation split (masked copy, or
    the trained weights when the method trained some).
    `weights`: trained values of the original model's initializers (by name, full size; e.g.
    rl-pruner's post-training), or None; the API writes them in before rewriting `keep`.
    `pruned_weights`: trained values of the initializers of `materialize(keep)` (e.g. sacp's
    fine-tuned winner), or None; the API writes them into its rewrite of `keep`.
    A search returns masks and weight arrays, never a model: the API rewrites and verifies.
    """

    keep: np.ndarray
    val_top1: float
    evaluations: int
    seconds: float
    trajectory: Trajectory
    summary: dict[str, Any]
    weights: Mapping[str, np.ndarray] | None = None
    pruned_weights: Mapping[str, np.ndarray] | None = None

    @property
    def trained(self) -> bool:
        """Whether the method trained weights (the API then skips BatchNorm re-estimation)."""
        return self.weights is not None or self.pruned_weights is not None


T = TypeVar("T")


def parse_options(cls: type[T], options: Mapping[str, Any], method: str, preset: Mapping[str, Any] | None = None,
                  presets: Mapping[str, Mapping[str, Any]] | None = None) -> T:
    """A method's config dataclass from `options` (values may be strings from the command line).

    `preset` values apply first, `options` override them; with `presets`, the option `preset`
    (default "cpu") names the preset (kept as an option only if `cls` has such a field). An
    unknown key or preset, or a value of the wrong type, is a one-line `InputError`.
    """
    fields_ = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    options = dict(options)
    if presets is not None:
        name = str(options.get("preset", "cpu"))
        if name not in presets:
            raise InputError(f"{method}: unknown preset {name!r} (choose from {', '.join(presets)})")
        if "preset" not in fields_:
            options.pop("preset", None)
        preset = presets[name]
    merged = dict(preset or {})
    merged.update(options)
    values: dict[str, Any] = {}
    for key, raw in merged.items():
        if key not in fields_:
            raise InputError(f"{method}: unknown option {key!r} (valid: {', '.join(sorted(fields_))})")
        default = getattr(cls, key, None)
        values[key] = _coerce(raw, default, f"{method}: option {key}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise InputError(f"{method}: {exc}") from None


def _coerce(raw: Any, default: Any, what: str) -> Any:
    if not isinstance(raw, str) or isinstance(default, str) or default is None:
        if isinstance(raw, str) and default is None:
            for kind in (int, float):
                try:
                    return kind(raw)
                except ValueError:
                    pass
            return {"none": None, "true": True, "false": False}.get(raw.lower(), raw)
        return raw
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(float(v) for v in raw.split(","))
    except ValueError:
        raise InputError(f"{what}: cannot read {raw!r} as {type(default).__name__}") from None
    return raw


SearchFn = Callable[[SearchContext], SearchResult]


def search_fn(name: str) -> SearchFn:
    """The `run` function of the search method `name` (registered in `onnxprune.methods`; imported lazily)."""
    return method(name, "search").load()


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True,
                 fields: Mapping[str, str] | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields `update(advance=1, **field_values)`.

    `fields` maps a field name to its column label, e.g. {"reward": "reward"}; values given to
    `update` appear after the bar. Disabled (or not a terminal): updates do nothing visible.
    """
    if not enabled:
        yield lambda advance=1, **_kw: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    for name, label in (fields or {}).items():
        cols.append(TextColumn(f"{label} {{task.fields[{name}]}}"))
    initial = {name: "-" for name in (fields or {})}
    with Progress(*cols, console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(description, total=total, **initial)

        def update(advance: int = 1, **values: Any) -> None:
            shown = {k: (f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in values.items()}
            prog.update(task, advance=advance, **shown)

        yield update
