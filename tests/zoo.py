"""torchvision model zoo exported to ONNX, for the zoo tests and benchmarks (test support, not a test).

Every model is built with random weights (``weights=None``) right after ``torch.manual_seed(0)``,
so :func:`torch_model` and the exported ONNX files hold identical weights.

Exports are cached outside the repository, in ``$ONNXPRUNE_ZOO_CACHE`` or
``~/.cache/onnxprune/zoo/torch-<torch.__version__>/``, as ``<name>-<exporter>.onnx`` (the dynamo
exporter adds ``<name>-dynamo.onnx.data`` with the weights). Beside each file lies
``<name>-<exporter>.json`` (export time, numerical check), or ``<name>-<exporter>.error.txt``
when the export failed, so a known failure is not retried on every run (``retry_failed=True``
retries it).

Two exporters:

- ``"torchscript"``: ``torch.onnx.export(dynamo=False, opset_version=17)`` with a dynamic batch
  axis ``N`` on ``input`` and ``logits``.
- ``"dynamo"``: ``torch.onnx.export(dynamo=True)`` with the exporter's defaults (static shapes,
  opset 20 with torch 2.14, BatchNormalization folded into Conv, weights in external data).

Every export is run once in onnxruntime (CPU) and compared with torch before it enters the cache.

Usage::

    from tests import zoo
    path = zoo.export("resnet18", "dynamo")        # Path to the cached ONNX file
    model = zoo.torch_model("resnet18")             # same weights
    channels = zoo.tp_reference("resnet18")         # Torch-Pruning's group sizes, sorted
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")

#: numerical check of every export against torch (onnxruntime CPU, graph optimizations off):
#: |onnx - torch| <= ATOL * max|torch| + RTOL * |torch|, i.e. the absolute part is relative to the
#: output's range. With random weights the logits' range spans 19 decades across the zoo
#: (efficientnet_b0 ~4e-14, mobilenets ~1e-9, wide_resnet101_2 ~1e5): a fixed atol of 1e-4 would
#: pass any export of the former and fail correct exports of the latter (float32 rounding alone
#: gives |diff| ~4e-2 there). Correct exports agree to ~1e-6 of the range.
ATOL = 1e-4
RTOL = 1e-3

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET_TORCHSCRIPT = 17


class ZooError(Exception):
    """A zoo model could not be exported, checked, or analysed by the reference tool."""


class ZooExportError(ZooError):
    """The export of a zoo model failed, or its ONNX file disagrees with torch."""


class ZooReferenceError(ZooError):
    """Torch-Pruning could not build the reference groups of a zoo model."""


@dataclass(frozen=True)
class ZooEntry:
    """One torchvision classification model of the zoo.

    ``builder`` returns the module with random weights; call it after seeding (see
    :func:`torch_model`). ``big`` marks models whose files are large (> ~150 MB) or whose exports
    are slow: the zoo tests run them only in the slow CI stage.
    """

    name: str
    builder: Callable[[], nn.Module]
    input_shape: tuple[int, int, int, int] = (1, 3, 224, 224)
    big: bool = False


def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """Builder of torchvision model ``name`` with random weights (never downloads anything)."""
    import torchvision

    return functools.partial(torchvision.models.get_model, name, weights=None, **kwargs)


def _entry(
    name: str,
    *,
    big: bool = False,
    size: int = 224,
    **kwargs: Any,
) -> tuple[str, ZooEntry]:
    return name, ZooEntry(name, _tv(name, **kwargs), (1, 3, size, size), big)


# `big` was set from `python -m benchmarks.export_zoo` (torch 2.14.1, 2 shared CPU cores): a file
# over 150 MB, or both exports together over 12 s of CPU time (inception_v3, efficientnet_v2_s).
# Every export took <= 15 s wall; densenet121 (10 s CPU) and convnext_tiny (114 MB, 7 s CPU) are
# the largest models left in the fast stage.
ZOO: dict[str, ZooEntry] = dict(
    [
        # ResNet family
        _entry("resnet18"),
        _entry("resnet34"),
        _entry("resnet50"),
        _entry("resnet101", big=True),
        _entry("resnext50_32x4d"),
        _entry("resnext101_32x8d", big=True),
        _entry("wide_resnet50_2", big=True),
        _entry("wide_resnet101_2", big=True),
        # plain stacks
        _entry("alexnet", big=True),
        _entry("vgg11_bn", big=True),
        _entry("vgg16", big=True),
        # inverted residuals, squeeze-and-excitation, depthwise convs
        _entry("mobilenet_v2"),
        _entry("mobilenet_v3_small"),
        _entry("mobilenet_v3_large"),
        _entry("mnasnet0_5"),
        _entry("mnasnet1_0"),
        _entry("efficientnet_b0"),
        _entry("efficientnet_v2_s", big=True),
        # grouped convs, SE
        _entry("regnet_x_400mf"),
        _entry("regnet_y_400mf"),
        # concat-heavy
        _entry("densenet121"),
        _entry("googlenet", aux_logits=False, init_weights=False),
        _entry("inception_v3", big=True, size=299, aux_logits=False, init_weights=False),
        _entry("squeezenet1_0"),
        _entry("squeezenet1_1"),
        # channel shuffle, split
        _entry("shufflenet_v2_x0_5"),
        _entry("shufflenet_v2_x1_0"),
        # channels-last blocks (LayerNorm, Linear over C, layer scale)
        _entry("convnext_tiny"),
    ]
)


def names(*, big: bool | None = None) -> list[str]:
    """Zoo model names in ``ZOO`` order; ``big=False`` only the small ones, ``True`` the big ones."""
    return [n for n, e in ZOO.items() if big is None or e.big == big]


def _entry_of(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"no zoo model {name!r}; choose one of: {', '.join(ZOO)}") from None


# --------------------------------------------------------------------------------------------
# torch side


def torch_model(name: str) -> nn.Module:
    """A fresh copy of zoo model ``name`` in eval mode, with the weights of its ONNX exports."""
    entry = _entry_of(name)
    with _quiet():
        torch.manual_seed(0)
        model = entry.builder()
    return model.eval()


def example_input(name: str, batch: int | None = None) -> torch.Tensor:
    """A deterministic random input for ``name``: ``(N, 3, H, W)``, N from the entry unless given."""
    shape = list(_entry_of(name).input_shape)
    if batch is not None:
        shape[0] = batch
    generator = torch.Generator().manual_seed(1)
    return torch.randn(*shape, generator=generator)  # (N, 3, H, W)


def classifier(model: nn.Module) -> nn.Module:
    """The final classifier of a torchvision model: its last ``nn.Linear``, else its last ``nn.Conv2d``
    (SqueezeNet classifies with a 1x1 conv)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ZooError(f"{type(model).__name__} has neither nn.Linear nor nn.Conv2d")
    return convs[-1]


# --------------------------------------------------------------------------------------------
# cache


def cache_dir() -> Path:
    """Where exports live: ``$ONNXPRUNE_ZOO_CACHE`` or ``~/.cache/onnxprune/zoo/torch-<version>/``."""
    env = os.environ.get("ONNXPRUNE_ZOO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "onnxprune" / "zoo" / f"torch-{torch.__version__}"


def onnx_path(name: str, exporter: Exporter) -> Path:
    """The cached file of ``name`` exported by ``exporter`` (it may not exist yet)."""
    _entry_of(name)
    _check_exporter(exporter)
    return cache_dir() / f"{name}-{exporter}.onnx"


def onnx_files(path: Path) -> list[Path]:
    """``path`` and its external-data file, if it has one."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def file_size(path: Path) -> int:
    """Bytes of an ONNX file together with its external data."""
    return sum(p.stat().st_size for p in onnx_files(path))


def _check_exporter(exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _error_path(path: Path) -> Path:
    return path.with_suffix(".error.txt")


# --------------------------------------------------------------------------------------------
# export


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_result` did: ``seconds`` and ``check_seconds`` are those of the export
    that filled the cache (read back from its sidecar when ``cached``)."""

    name: str
    exporter: Exporter
    path: Path
    cached: bool
    seconds: float  # torch.onnx.export alone, wall clock
    cpu_seconds: float  # torch.onnx.export alone, CPU time of this process (all threads)
    check_seconds: float  # onnxruntime session + run + torch forward
    max_abs_diff: float
    size: int  # bytes, external data included
    opset: int


def export(name: str, exporter: Exporter, *, retry_failed: bool = False) -> Path:
    """Path to zoo model ``name`` exported by ``exporter`` ("torchscript" or "dynamo").

    Exports and checks it in onnxruntime on first use, then reuses the cached file.
    Raises ZooExportError (with the exporter's reason) when the export or the check fails; a
    failure is remembered in the cache and raised again without retrying unless ``retry_failed``.
    """
    return export_result(name, exporter, retry_failed=retry_failed).path


def export_result(name: str, exporter: Exporter, *, retry_failed: bool = False) -> ExportResult:
    """Like :func:`export`, with timings, file size and the numerical check's max difference."""
    path = onnx_path(name, exporter)
    meta_path, error_path = _meta_path(path), _error_path(path)
    if path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            return ExportResult(
                name, exporter, path, True, meta["seconds"], meta["cpu_seconds"],
                meta["check_seconds"], meta["max_abs_diff"], file_size(path), meta["opset"],
            )  # fmt: skip
        except (ValueError, KeyError, OSError):
            pass  # sidecar from an older zoo.py, or a file vanished: export again
    if error_path.exists() and not retry_failed:
        raise ZooExportError(error_path.read_text())

    path.parent.mkdir(parents=True, exist_ok=True)
    # Export next to the cache (same file system), then rename into place: concurrent test
    # workers never see a half-written file. The external-data file keeps its final name, which
    # the .onnx file refers to.
    with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-{exporter}-", dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        try:
            result = _export_and_check(name, exporter, tmp_path)
        except ZooExportError as exc:
            _atomic_write_text(error_path, str(exc))
            raise
        meta = {
            "name": name,
            "exporter": exporter,
            "torch": torch.__version__,
            "seconds": result.seconds,
            "cpu_seconds": result.cpu_seconds,
            "check_seconds": result.check_seconds,
            "max_abs_diff": result.max_abs_diff,
            "opset": result.opset,
        }
        for src in reversed(onnx_files(tmp_path)):  # data file first, the .onnx file last
            os.replace(src, path.parent / src.name)
        _atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    error_path.unlink(missing_ok=True)
    return ExportResult(
        name, exporter, path, False, result.seconds, result.cpu_seconds, result.check_seconds,
        result.max_abs_diff, file_size(path), result.opset,
    )  # fmt: skip


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _export_and_check(name: str, exporter: Exporter, path: Path) -> ExportResult:
    model = torch_model(name)
    x = example_input(name)  # (1, 3, H, W)
    log = io.StringIO()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        with _quiet(log):
            if exporter == "torchscript":
                torch.onnx.export(
                    model,
                    (x,),
                    str(path),
                    dynamo=False,
                    opset_version=OPSET_TORCHSCRIPT,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                )
            else:
                torch.onnx.export(
                    model,
                    (x,),
                    str(path),
                    dynamo=True,
                    verbose=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                )
    except Exception as exc:  # the exporters raise many unrelated types
        raise ZooExportError(
            f"{name}: {exporter} export failed: {_describe(exc)}{_tail(log.getvalue())}"
        ) from exc
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if not path.exists():
        raise ZooExportError(f"{name}: {exporter} export wrote no file{_tail(log.getvalue())}")

    start = time.perf_counter()
    # torchscript exports have a dynamic batch axis: check it with a batch of 2 as well
    batches = [None, 2] if exporter == "torchscript" else [None]
    max_diff = 0.0
    for batch in batches:
        max_diff = max(max_diff, _check_onnxruntime(name, exporter, path, model, batch))
    check_seconds = time.perf_counter() - start

    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return ExportResult(
        name, exporter, path, False, seconds, cpu_seconds, check_seconds, max_diff,
        file_size(path), opset,
    )  # fmt: skip


def _check_onnxruntime(
    name: str, exporter: Exporter, path: Path, model: nn.Module, batch: int | None
) -> float:
    """Run ``path`` in onnxruntime (CPU, no graph optimizations) and compare with ``model``;
    return the max absolute difference, raise ZooExportError if outside ATOL/RTOL."""
    import onnxruntime as ort

    x = example_input(name, batch)  # (N, 3, H, W)
    with torch.no_grad():
        expected = model(x).numpy()  # (N, classes)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    except Exception as exc:
        raise ZooExportError(
            f"{name}: the {exporter} export does not run in onnxruntime "
            f"(input {tuple(x.shape)}): {_describe(exc)}"
        ) from exc
    if got.shape != expected.shape:
        raise ZooExportError(
            f"{name}: the {exporter} export gives shape {got.shape}, torch {expected.shape} "
            f"(input {tuple(x.shape)})"
        )
    if not np.all(np.isfinite(expected)):
        raise ZooExportError(f"{name}: torch gives non-finite logits; the model cannot be checked")
    diff = float(np.max(np.abs(got - expected)))
    scale = float(np.max(np.abs(expected))) or 1.0
    if not np.allclose(got, expected, rtol=RTOL, atol=ATOL * scale):
        raise ZooExportError(
            f"{name}: the {exporter} export disagrees with torch (input {tuple(x.shape)}): "
            f"max |diff| {diff:.3g} > {ATOL} * {scale:.3g} (max |torch|) + {RTOL} * |torch|"
        )
    return diff


# --------------------------------------------------------------------------------------------
# Torch-Pruning reference


@dataclass(frozen=True)
class TpReference:
    """Torch-Pruning (DepGraph) groups of a zoo model: the root's output channels of each group,
    sorted, or ``error`` when Torch-Pruning raised."""

    name: str
    channels: tuple[int, ...] | None
    build_seconds: float
    error: str | None = None
    roots: tuple[str, ...] = field(default=(), compare=False)  # root module names, ZOO order


@functools.lru_cache(maxsize=None)
def tp_reference_info(name: str) -> TpReference:
    """Torch-Pruning's reference groups for ``name``, never raising: a failure is in ``error``.

    ``tp.DependencyGraph().build_dependency(model, example_inputs=x)``, then
    ``get_all_groups(ignored_layers=[final classifier], root_module_types=(Conv2d, Linear))``;
    each group counts ``len(group[0].idxs)`` channels (the root layer's output channels).
    """
    with _quiet():
        import torch_pruning as tp

    model = torch_model(name)
    x = example_input(name)
    start = time.perf_counter()
    try:
        with _quiet():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
            build_seconds = time.perf_counter() - start
            groups = list(
                graph.get_all_groups(
                    ignored_layers=[classifier(model)],
                    root_module_types=(nn.Conv2d, nn.Linear),
                )
            )
    except Exception as exc:  # reference tool failures are data, not crashes
        return TpReference(name, None, time.perf_counter() - start, _describe(exc))
    module_names = {m: n for n, m in model.named_modules()}
    roots = tuple(module_names.get(g[0].dep.target.module, "?") for g in groups)
    channels = tuple(sorted(len(g[0].idxs) for g in groups))
    return TpReference(name, channels, build_seconds, None, roots)


def tp_reference(name: str) -> list[int]:
    """Sorted channel counts of Torch-Pruning's groups for ``name`` (one per group).

    Raises ZooReferenceError with Torch-Pruning's reason when it cannot build them
    (:func:`tp_reference_info` returns the failure instead).
    """
    info = tp_reference_info(name)
    if info.channels is None:
        raise ZooReferenceError(f"{name}: Torch-Pruning failed: {info.error}")
    return list(info.channels)


# --------------------------------------------------------------------------------------------
# helpers


def _describe(exc: BaseException) -> str:
    """``Type: first lines of the message`` (exporter messages run to pages)."""
    text = str(exc).strip() or repr(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    short = "\n".join(lines[:6])
    if len(short) > 1200:
        short = short[:1200] + " ..."
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" [at {Path(frame.filename).name}:{frame.lineno}]" if frame else ""
    return f"{type(exc).__name__}: {short}{where}"


def _tail(log: str, lines: int = 8) -> str:
    kept = [line for line in log.splitlines() if line.strip()][-lines:]
    return ("\nexporter output (tail):\n" + "\n".join(kept)) if kept else ""


@contextlib.contextmanager
def _quiet(sink: io.StringIO | None = None) -> Iterator[None]:
    """Silence warnings, logging and stdout/stderr (Python and C++ writes) inside the block;
    what was written goes to ``sink``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    previous_disable = logging.root.manager.disable
    with tempfile.TemporaryFile(mode="w+b") as capture:
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            logging.disable(logging.WARNING)
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()) as out,
                contextlib.redirect_stderr(out),
            ):
                warnings.simplefilter("ignore")
                try:
                    yield
                finally:
                    if sink is not None:
                        sink.write(out.getvalue())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            logging.disable(previous_disable)
            if sink is not None:
                capture.seek(0)
                sink.write(capture.read().decode("utf-8", "replace"))


def clear_cache(name: str | None = None) -> None:
    """Delete the cached exports (of ``name`` only, if given), failures included."""
    root = cache_dir()
    if not root.exists():
        return
    if name is None:
        shutil.rmtree(root)
        return
    for exporter in EXPORTERS:
        path = onnx_path(name, exporter)
        for p in [*onnx_files(path), _meta_path(path), _error_path(path)]:
            p.unlink(missing_ok=True)
