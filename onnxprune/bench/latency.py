"""onnxruntime latency benchmarking of ONNX files (the `onnxprune bench` command).

Each model gets one `InferenceSession` (graph optimizations `ORT_ENABLE_ALL`, what a deployment
gets) reused across batch sizes. Inputs are random and seeded, so every model sees the same
tensors at the same batch size. The provider actually used is read back from the session: without
a GPU, onnxruntime-gpu silently falls back to CPU when CUDA or TensorRT is requested.

`profile_model` runs one model with onnxruntime's profiler on: the time of every node of the
optimized graph in context (the per-layer latency table, `onnxprune.bench.latency_table`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from rich.table import Table

from onnxprune.errors import InputError

PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

# onnxruntime's default logger severity (0 verbose .. 4 fatal); there is no getter to restore from.
_ORT_DEFAULT_SEVERITY = 2

_FLOAT_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}
_INT_TYPES: dict[str, type[np.generic]] = {
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

ModelSource = str | os.PathLike[str] | bytes
Shape = tuple[int, ...]


@dataclass(frozen=True)
class BenchConfig:
    """How to benchmark: provider, batch sizes, threads (0 = onnxruntime default), run counts."""

    provider: str = "cpu"
    batch_sizes: tuple[int, ...] = (1,)
    threads: int = 0
    warmup: int = 5
    runs: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            choices = "|".join(PROVIDERS)
            raise InputError(f"unknown provider {self.provider!r}; choose one of {choices}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise InputError(f"batch sizes must be positive integers, got {self.batch_sizes!r}")
        if self.threads < 0:
            raise InputError(f"threads must be >= 0 (0 = onnxruntime default), got {self.threads}")
        if self.warmup < 0 or self.runs < 1:
            raise InputError(
                f"need warmup >= 0 and runs >= 1, got warmup={self.warmup} runs={self.runs}"
            )


@dataclass(frozen=True)
class BenchResult:
    """Latency of one model at one batch size; times in milliseconds per `session.run`."""

    model: str
    batch: int
    provider_requested: str
    provider_used: str
    fell_back: bool
    threads: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return asdict(self)


@dataclass(frozen=True)
class _InputSpec:
    """One graph input as the session reports it; `None` or a name marks a dynamic dim."""

    name: str
    elem_type: str
    shape: tuple[int | str | None, ...]


def benchmark_model(
    path_or_bytes: ModelSource,
    cfg: BenchConfig = BenchConfig(),
    input_shapes: Mapping[str, Shape] | None = None,
) -> list[BenchResult]:
    """Time one model at every batch size of `cfg`; one `BenchResult` per batch size.

    `input_shapes` maps an input name to a full shape for inputs with dynamic non-batch dims
    (the CLI's `--input-shape NAME:1x3x224x224`); a dynamic first dim always takes the batch size.
    """
    label = _label(path_or_bytes)
    session = _make_session(path_or_bytes, cfg, label)
    provider_used = session.get_providers()[0]
    fell_back = provider_used != PROVIDERS[cfg.provider][0]
    specs = [_InputSpec(i.name, i.type, tuple(i.shape)) for i in session.get_inputs()]
    overrides = dict(input_shapes or {})
    unknown = sorted(set(overrides) - {s.name for s in specs})
    if unknown:
        names = ", ".join(s.name for s in specs)
        raise InputError(
            f"{label}: --input-shape names unknown input(s) {unknown}; inputs: {names}"
        )

    results: list[BenchResult] = []
    for batch in cfg.batch_sizes:
        feeds = _feeds(session, batch, cfg.seed, overrides, label)
        times_ms = _time_runs(session, feeds, cfg.warmup, cfg.runs, label)
        results.append(
            BenchResult(
                model=label,
                batch=batch,
                provider_requested=cfg.provider,
                provider_used=provider_used,
                fell_back=fell_back,
                threads=cfg.threads,
                median_ms=float(np.median(times_ms)),
                p90_ms=float(np.percentile(times_ms, 90)),
                p99_ms=float(np.percentile(times_ms, 99)),
                mean_ms=float(np.mean(times_ms)),
                runs=cfg.runs,
            )
        )
    return results


def benchmark_models(
    paths: Sequence[ModelSource],
    cfg: BenchConfig = BenchConfig(),
    input_shapes: Mapping[str, Shape] | None = None,
) -> list[BenchResult]:
    """Benchmark several models in order (the first is the speed-up baseline of `format_table`)."""
    results: list[BenchResult] = []
    for path in paths:
        results.extend(benchmark_model(path, cfg, input_shapes))
    return results


@dataclass(frozen=True)
class NodeProfile:
    """One profiled run of a whole model: `kernel[n]` seconds per run of optimized node `n`
    (onnxruntime's profile, the trimmed mean over the timed runs), `inputs[n]` / `outputs[n]` its
    tensors in the optimized graph, and `whole` the model's median seconds per run, timed in the
    same session after profiling stopped (the profiler costs time per node)."""

    kernel: dict[str, float]
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]
    whole: float


PROFILE_TRIM = (0.2, 0.8)  # a node's time: the mean of its per-run times between these quantiles


def profile_model(model_bytes: bytes, cfg: BenchConfig, workdir: Path, timed_runs: int | None = None) -> NodeProfile:
    """Run `model_bytes` at `cfg.batch_sizes[0]` on `cfg.provider` with onnxruntime's profiler on
    (`cfg.warmup` + `cfg.runs` runs), then `timed_runs` (default `cfg.runs`; 0: none, `whole` is
    NaN) timed runs of the same session without it; `workdir` holds the profile and the
    optimized model while they are read."""
    timed_runs = cfg.runs if timed_runs is None else timed_runs
    label = _label(model_bytes)
    optimized = workdir / "optimized.onnx"
    session = _make_session(model_bytes, cfg, label, profile=workdir)
    feeds = _feeds(session, cfg.batch_sizes[0], cfg.seed, None, label)
    _time_runs(session, feeds, cfg.warmup, cfg.runs, label)
    path = Path(session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink(missing_ok=True)
    times = _time_runs(session, feeds, min(cfg.warmup, 3), timed_runs, label) if timed_runs else np.full(1, np.nan)
    per: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per.setdefault(e["name"][: -len("_kernel_time")], []).append(float(e["dur"]) * 1e-6)
    kernel = {}
    for name, durs in per.items():
        d = np.sort(np.asarray(durs[-cfg.runs:]))  # the timed runs (the first ones warmed up)
        lo = int(len(d) * PROFILE_TRIM[0])
        kernel[name] = float(d[lo:max(int(np.ceil(len(d) * PROFILE_TRIM[1])), lo + 1)].mean())
    graph = onnx.load(str(optimized), load_external_data=False).graph if optimized.exists() else None
    optimized.unlink(missing_ok=True)
    inputs = {n.name: [t for t in n.input if t] for n in graph.node} if graph is not None else {}
    outputs = {n.name: [t for t in n.output if t] for n in graph.node} if graph is not None else {}
    return NodeProfile(kernel, inputs, outputs, float(np.median(times)) / 1e3)


def format_table(results: Sequence[BenchResult]) -> Table:
    """A rich table, one row per (model, batch), with speed-up against the first model's median."""
    table = Table(title="onnxruntime latency (ms per run)")
    table.add_column("model")
    table.add_column("batch", justify="right")
    table.add_column("provider")
    for name in ("median", "p90", "p99", "speed-up"):
        table.add_column(name, justify="right")

    baseline = _baseline_medians(results)
    for r in results:
        provider = r.provider_used
        if r.fell_back:
            provider += f" (fell back from {r.provider_requested})"
        base = baseline.get(r.batch)
        speedup = f"{base / r.median_ms:.2f}x" if base is not None and r.median_ms > 0 else "-"
        table.add_row(
            _display_name(r.model),
            str(r.batch),
            provider,
            f"{r.median_ms:.3f}",
            f"{r.p90_ms:.3f}",
            f"{r.p99_ms:.3f}",
            speedup,
        )
    return table


def _baseline_medians(results: Sequence[BenchResult]) -> dict[int, float]:
    """Median per batch of the first model: the leading rows until the model or a batch repeats.

    Stopping at a repeated batch keeps the baseline right when one file is benchmarked twice.
    """
    baseline: dict[int, float] = {}
    for r in results:
        if r.model != results[0].model or r.batch in baseline:
            break
        baseline[r.batch] = r.median_ms
    return baseline


def results_to_json(results: Sequence[BenchResult]) -> dict[str, Any]:
    """`bench --json`: the results, the onnxruntime version and providers used, and the machine."""
    from onnxprune.schema import machine, stamped

    return stamped({"onnxruntime": {"version": ort.__version__, "available_providers": ort.get_available_providers(),
                                    "providers_used": sorted({r.provider_used for r in results})},
                    "machine": machine(), "results": [r.to_dict() for r in results]})


def _label(path_or_bytes: ModelSource) -> str:
    """The model's name in results and messages: its path, or `<bytes>`."""
    if isinstance(path_or_bytes, bytes):
        return "<bytes>"
    return os.fspath(path_or_bytes)


def _display_name(model: str) -> str:
    """File name only, for the table."""
    return model if model.startswith("<") else Path(model).name


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Silence onnxruntime while a session is created.

    A missing CUDA/TensorRT library is logged at ERROR severity by the default logger (not the
    session's), and the Python wrapper prints an "EP Error" banner on stdout before retrying
    without TensorRT; both are noise here since the provider used is read from the session.
    """
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An onnxruntime error message squeezed to one short line."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _feeds(session: ort.InferenceSession, batch: int, seed: int, overrides: Mapping[str, Shape] | None,
           label: str) -> dict[str, np.ndarray]:
    """Seeded random inputs of every graph input at `batch`."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        spec = _InputSpec(i.name, i.type, tuple(i.shape))
        feeds[spec.name] = _random_input(spec, _resolve_shape(spec, batch, (overrides or {}).get(spec.name), label),
                                         rng, label)
    return feeds


def _make_session(path_or_bytes: ModelSource, cfg: BenchConfig, label: str,
                  profile: Path | None = None) -> ort.InferenceSession:
    """Open the model on the requested providers; any failure becomes an `InputError`. With
    `profile` (a folder), onnxruntime's profiler is on and the optimized model is written there
    (`optimized.onnx`)."""
    if not isinstance(path_or_bytes, bytes):
        path = Path(path_or_bytes)
        if not path.exists():
            raise InputError(f"{label}: no such file")
        if not path.is_file():
            raise InputError(f"{label}: not a file")
    elif not path_or_bytes:
        raise InputError(f"{label}: empty model bytes")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if cfg.threads > 0:
        options.intra_op_num_threads = cfg.threads
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile / "profile")
        options.optimized_model_filepath = str(profile / "optimized.onnx")
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else os.fspath(path_or_bytes)
    try:
        with _quiet_ort():
            return ort.InferenceSession(source, options, providers=list(PROVIDERS[cfg.provider]))
    except Exception as err:  # onnxruntime raises its own pybind exception types
        raise InputError(
            f"{label}: onnxruntime cannot load this model (not a valid ONNX file?): "
            f"{_one_line(err)}"
        ) from err


def _resolve_shape(spec: _InputSpec, batch: int, override: Shape | None, label: str) -> Shape:
    """Concrete shape of one input at `batch`: dynamic first dim -> batch, others from override."""
    dims = spec.shape
    if override is not None:
        override = tuple(int(d) for d in override)
        if len(override) != len(dims) or any(d < 1 for d in override):
            raise InputError(
                f"{label}: --input-shape for '{spec.name}' is {_fmt_dims(override)}, "
                f"but the input has shape {_fmt_dims(dims)}"
            )
        for i, (model_dim, given) in enumerate(zip(dims, override)):
            if i > 0 and _is_static(model_dim) and model_dim != given:
                raise InputError(
                    f"{label}: --input-shape for '{spec.name}' sets dim {i} to {given}, "
                    f"but the model fixes it at {model_dim}"
                )
    if not dims:
        return ()

    first = dims[0]
    if _is_static(first) and first != batch:
        raise InputError(
            f"{label}: the model has a fixed batch of {first} (input '{spec.name}' has shape "
            f"{_fmt_dims(dims)}); benchmark it with --batch {first} "
            "or re-export with a dynamic batch"
        )
    shape = [batch]
    for i, dim in enumerate(dims[1:], start=1):
        if _is_static(dim):
            shape.append(int(dim))  # type: ignore[arg-type]
        elif override is not None:
            shape.append(override[i])
        else:
            raise InputError(
                f"{label}: input '{spec.name}' has dynamic dims {_fmt_dims(dims)}; give its shape "
                f"with --input-shape {spec.name}:1x3x224x224"
            )
    return tuple(shape)


def _is_static(dim: int | str | None) -> bool:
    """True for a known, positive dim."""
    return isinstance(dim, int) and dim > 0


def _fmt_dims(dims: Sequence[int | str | None]) -> str:
    """`[N, 3, ?, ?]` style."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _random_input(
    spec: _InputSpec, shape: Shape, rng: np.random.Generator, label: str
) -> np.ndarray:
    """Seeded input: standard normal for float types, zeros for integer and bool types."""
    if spec.elem_type in _FLOAT_TYPES:
        return rng.standard_normal(shape, dtype=np.float32).astype(_FLOAT_TYPES[spec.elem_type])
    if spec.elem_type in _INT_TYPES:
        return np.zeros(shape, dtype=_INT_TYPES[spec.elem_type])
    raise InputError(
        f"{label}: input '{spec.name}' has type {spec.elem_type}, which bench cannot feed"
    )


def _time_runs(
    session: ort.InferenceSession,
    feeds: dict[str, np.ndarray],
    warmup: int,
    runs: int,
    label: str,
) -> np.ndarray:
    """Wall time of each timed `session.run` in milliseconds, after `warmup` untimed runs."""
    times_ns = np.empty(runs, dtype=np.int64)
    try:
        for _ in range(warmup):
            session.run(None, feeds)
        for i in range(runs):
            start = time.perf_counter_ns()
            session.run(None, feeds)
            times_ns[i] = time.perf_counter_ns() - start
    except Exception as err:  # e.g. a shape the model rejects at run time
        raise InputError(f"{label}: onnxruntime failed to run the model: {_one_line(err)}") from err
    return times_ns / 1e6
