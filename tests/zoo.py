"""torchvision model zoo exported to ONNX, for the zoo tests and benchmarks (test support, not a test).

Every model is built with random weights (``weights=None``) right after ``torch.manual_seed(0)``,
its BatchNorms' weights and biases drawn from U(0.5, 1.5) (:func:`_build`), then calibrated so
that its activations and logits are of order 1 and depend on the input: its BatchNorm running
statistics are re-estimated on random inputs and its final classifier is scaled to logits of RMS
1 (:func:`_calibrate`; the result is cached as ``<name>-calibration.pt``). :func:`torch_model`
and the exported ONNX files hold identical weights; each export's json names the calibration it
was made with, and an export made with another is redone.

Exports are cached outside the repository, in ``$ONNXPRUNE_ZOO_CACHE`` or
``~/.cache/onnxprune/zoo/torch-<torch.__version__>-<CACHE_TAG>/``, as ``<name>-<exporter>.onnx``
(the dynamo exporter adds ``<name>-dynamo.onnx.data`` with the weights). Beside each file lies
``<name>-<exporter>.json`` (export time, numerical check), or ``<name>-<exporter>.error.txt`` when
the export failed, so a known failure is not retried on every run (``retry_failed=True`` retries
it).

Two exporters:

- ``"torchscript"``: ``torch.onnx.export(dynamo=False, opset_version=17)`` with a dynamic batch
  axis ``N`` on ``input`` and ``logits``.
- ``"dynamo"``: ``torch.onnx.export(dynamo=True)``, traced with batch 2 and
  ``dynamic_shapes=({0: Dim("N")},)``, so the batch axis ``N`` is dynamic too; a model whose
  dynamic export fails is exported with a static batch of 1 instead (``static_reason`` in its
  json). Otherwise the exporter's defaults: opset 20 with torch 2.14, BatchNormalization folded
  into Conv, weights in external data.

Every export is run in onnxruntime (CPU) and compared with torch before it enters the cache, at
batches 1 and 2 when its batch is dynamic.

Usage::

    from tests import zoo
    path = zoo.export("resnet18", "dynamo")        # Path to the cached ONNX file
    model = zoo.torch_model("resnet18")             # same weights
    channels = zoo.tp_reference("resnet18")         # Torch-Pruning's group sizes, sorted
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import math
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
#: output's range, which the calibration (:func:`_calibrate`) makes ~3-5 for every model (logits
#: of RMS 1), so this is about onnxprune's own verification tolerance (atol 1e-5, rtol 1e-4).
#: Measured (zoo2, torch 2.14.1, onnxruntime 1.31.1): max |onnx - torch| <= 3e-6 in most models,
#: 4-8e-6 in efficientnet_v2_s, vgg16, inception_v3, googlenet, 1.0e-5 in vgg11_bn (float32
#: summation over its 25088-wide Linear), i.e. <= 3e-6 of the range.
ATOL = 1e-5
RTOL = 1e-4

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
# over 150 MB, or both exports together over 12 s of CPU time (inception_v3, efficientnet_v2_s)
# with static dynamo exports. The dynamic batch of the zoo2 dynamo exports costs ~4 s more each
# (symbolic shapes): then every fast-stage export took <= 18 s wall, densenet121 the slowest (7 s
# torchscript + 17 s dynamo, on CPUs shared with other jobs); a cold cache adds each model's
# calibration (<= 20 s in the fast stage, up to ~45 s for wide_resnet101_2).
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
        # layer_scale: torchvision's 1e-6 init scales every block's output by 1e-6, so that
        # zeroing 100 of a block's output channels moves the logits by ~5e-7 of their range, below
        # any verification tolerance; with 1.0 it moves them by ~0.1 (same graph, other values)
        _entry("convnext_tiny", layer_scale=1.0),
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
    """A fresh copy of zoo model ``name`` in eval mode, with the weights of its ONNX exports:
    built by :func:`_build`, then calibrated (:func:`_calibrate`)."""
    model = _build(name)
    _apply_calibration(model, _calibration(name))
    return model.eval()


#: BatchNorm affine parameters of every zoo model (:func:`_build`): weight (gamma) and bias
#: (beta) drawn from U(BN_AFFINE_RANGE), per channel, from a generator seeded with BN_AFFINE_SEED
BN_AFFINE_RANGE = (0.5, 1.5)
BN_AFFINE_SEED = 3
#: BatchNorm recalibration (:func:`_calibrate`): passes of CALIBRATION_BATCH standard-normal
#: images each, from a generator seeded with CALIBRATION_SEED (example_input uses seed 1)
CALIBRATION_PASSES = 4
CALIBRATION_BATCH = 4
CALIBRATION_SEED = 2
#: RMS of every zoo model's logits on random inputs, after calibration
LOGITS_RMS = 1.0


def _build(name: str) -> nn.Module:
    """Zoo model ``name`` in eval mode, before calibration: torchvision's random init
    (``weights=None``) right after ``torch.manual_seed(0)``, then every BatchNorm's weight and
    bias drawn from U(BN_AFFINE_RANGE).

    torchvision sets weight 1 and bias 0 in every BatchNorm channel, which is a poor test case
    and a chaotic network:

    - all channels alike: an export or a pruning that drops, permutes or misaligns BatchNorm
      channels gives the same numbers;
    - bias 0: once :func:`_calibrate` centres every pre-activation, each conv-BN-ReLU amplifies
      small perturbations (~1.2x a layer, the mean-field "gradient explosion" of BatchNorm), so
      deep models amplify float32 rounding beyond any verification tolerance: |fp32 - fp64|
      reached 1.2e-4 of the logits' range in resnet101, 2.9e-5 in inception_v3, 1.9e-5 in
      resnet50, where onnxruntime and torch disagreed by 2.5e-5 of the range. A positive bias
      keeps most ReLUs active: 5e-7 in resnet101, 1.3e-6 in inception_v3, while two random
      inputs still give logits that differ by > 4% of their range.
    """
    entry = _entry_of(name)
    with _quiet():
        torch.manual_seed(0)
        model = entry.builder()
    generator = torch.Generator().manual_seed(BN_AFFINE_SEED)
    low, high = BN_AFFINE_RANGE
    with torch.no_grad():
        for bn in _batchnorms(model).values():
            if bn.affine:
                bn.weight.uniform_(low, high, generator=generator)
                bn.bias.uniform_(low, high, generator=generator)
    return model.eval()


def _calibration_key() -> str:
    """What a calibration depends on besides the model: cached calibrations and exports made
    with another key are not reused."""
    return (
        f"bn-affine U{BN_AFFINE_RANGE} seed {BN_AFFINE_SEED}; "
        f"{CALIBRATION_PASSES} passes x {CALIBRATION_BATCH} seed {CALIBRATION_SEED}"
    )


def _calibration_inputs(name: str) -> Iterator[torch.Tensor]:
    _, channels, height, width = _entry_of(name).input_shape
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    for _ in range(CALIBRATION_PASSES + 1):  # the last one measures the logits
        yield torch.randn(CALIBRATION_BATCH, channels, height, width, generator=generator)


def _batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def _calibrate(name: str, model: nn.Module) -> dict[str, Any]:
    """Give ``model`` (from :func:`_build`) activations and logits of order 1; return what changed.

    torchvision's random init leaves BatchNorm running statistics at mean 0 / var 1 while the real
    activations are nowhere near that, so in eval mode the scales compound layer after layer
    (logits ~1e-14 in efficientnet_b0, ~1e5 in wide_resnet101_2) and some outputs hardly depend
    on the input (googlenet, inception_v3, shufflenet: relative change ~1e-5 between two inputs).
    Numerical checks at a fixed tolerance are meaningless there. Two steps fix it:

    1. every BatchNorm's running statistics are re-estimated: ``reset_running_stats()``,
       ``momentum=None`` (cumulative average), then CALIBRATION_PASSES forward passes on random
       inputs with the BatchNorms alone in train mode (dropout and stochastic depth stay off),
       under ``torch.no_grad()``; each BatchNorm then normalizes its input to mean 0 / var 1;
    2. the final classifier (:func:`classifier`) is multiplied by a positive scale so that the
       logits have RMS LOGITS_RMS on one more random batch. That is exact, since positive scaling
       commutes with what follows the classifier (SqueezeNet's ReLU and average pool). It gives
       every model the same logit scale, and fixes those whose logits are small even with
       normalized features (alexnet has no BatchNorm, mobilenet_v3's head has none after its
       BatchNorms: logits ~0.03 in both).

    Returns ``{"key": _calibration_key(), "buffers": {BN buffer name: tensor}, "logits_rms":
    float}``, ``logits_rms`` measured before step 2 (:func:`_apply_calibration` scales the
    classifier by ``LOGITS_RMS / logits_rms``).
    """
    batchnorms = _batchnorms(model)
    momenta = {n: bn.momentum for n, bn in batchnorms.items()}
    inputs = list(_calibration_inputs(name))
    try:
        for bn in batchnorms.values():
            bn.reset_running_stats()
            bn.momentum = None
        model.eval()
        for bn in batchnorms.values():
            bn.train()
        with torch.no_grad():
            if batchnorms:
                for x in inputs[:-1]:
                    model(x)
    finally:
        for n, bn in batchnorms.items():
            bn.momentum = momenta[n]
        model.eval()
    with torch.no_grad():
        logits = model(inputs[-1])  # (batch, classes)
    rms = float(logits.square().mean().sqrt())
    if not (math.isfinite(rms) and rms > 0):
        raise ZooError(f"{name}: logits of RMS {rms} after BatchNorm recalibration")
    buffers = {
        f"{n}.{b}": t.detach().clone()
        for n, bn in batchnorms.items()
        for b, t in bn.named_buffers(recurse=False)
    }
    return {"key": _calibration_key(), "buffers": buffers, "logits_rms": rms}


def _apply_calibration(model: nn.Module, calibration: dict[str, Any]) -> None:
    with torch.no_grad():
        for name, value in calibration["buffers"].items():
            model.get_buffer(name).copy_(value)  # not load_state_dict: MNASNet rejects partial ones
        head = classifier(model)
        scale = LOGITS_RMS / calibration["logits_rms"]
        head.weight.mul_(scale)
        if head.bias is not None:
            head.bias.mul_(scale)


_calibrations: dict[str, dict[str, Any]] = {}


def _calibration(name: str) -> dict[str, Any]:
    """The calibration of ``name``: from memory, else from the cache (``<name>-calibration.pt``),
    else computed and cached. The exports and every later :func:`torch_model` load the same
    file, so they agree exactly although a recomputation may differ in the last bits (CPU
    reductions depend on the thread count). Concurrent processes: the first file written wins.
    """
    if name in _calibrations:
        return _calibrations[name]
    path = _calibration_path(name)
    calibration = _load_calibration(path)
    if calibration is None:
        with _quiet():
            computed = _calibrate(name, _build(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(computed, tmp)
        try:
            os.link(tmp, path)  # fails if another process got there first: keep its file
        except FileExistsError:
            if _load_calibration(path) is None:  # unless it is stale
                os.replace(tmp, path)
        except OSError:  # no hard links on this file system
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        calibration = _load_calibration(path) or computed
    _calibrations[name] = calibration
    return calibration


def _calibration_path(name: str) -> Path:
    return cache_dir() / f"{name}-calibration.pt"


def _load_calibration(path: Path) -> dict[str, Any] | None:
    """The calibration in ``path``; None if absent, unreadable, or made with another key."""
    try:
        calibration = torch.load(path, weights_only=True)
    except Exception:  # absent, or unreadable: torch.load raises many types
        return None
    if not isinstance(calibration, dict) or calibration.get("key") != _calibration_key():
        return None
    if not {"buffers", "logits_rms"} <= calibration.keys():
        return None
    return calibration


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


#: bumped whenever the zoo's models or exports change, so that older caches are not reused
#: (zoo2: calibrated BatchNorms and classifier, dynamic batch in the dynamo exports)
CACHE_TAG = "zoo2"


def cache_dir() -> Path:
    """Where exports live: ``$ONNXPRUNE_ZOO_CACHE`` or
    ``~/.cache/onnxprune/zoo/torch-<torch.__version__>-<CACHE_TAG>/``."""
    env = os.environ.get("ONNXPRUNE_ZOO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "onnxprune" / "zoo" / f"torch-{torch.__version__}-{CACHE_TAG}"


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
    check_seconds: float  # onnxruntime sessions + runs + torch forwards
    max_abs_diff: float  # max |onnx - torch| over the checked batches
    size: int  # bytes, external data included
    opset: int
    dynamic_batch: bool  # input and logits have a symbolic batch dim "N"
    static_reason: str | None  # why the dynamo export fell back to a static batch
    logits_max_abs: float  # max |torch logits| on example_input(name, 2)
    input_sensitivity: float  # max |logits[0] - logits[1]| / logits_max_abs, same input


#: the fields of ExportResult stored in the sidecar json
_META_FIELDS = (
    "seconds", "cpu_seconds", "check_seconds", "max_abs_diff", "opset", "dynamic_batch",
    "static_reason", "logits_max_abs", "input_sensitivity",
)  # fmt: skip


def export(name: str, exporter: Exporter, *, retry_failed: bool = False) -> Path:
    """Path to zoo model ``name`` exported by ``exporter`` ("torchscript" or "dynamo").

    Exports and checks it in onnxruntime on first use, then reuses the cached file.
    Raises ZooExportError (with the exporter's reason) when the export or the check fails; a
    failure is remembered in the cache and raised again without retrying unless ``retry_failed``.
    """
    return export_result(name, exporter, retry_failed=retry_failed).path


def export_result(name: str, exporter: Exporter, *, retry_failed: bool = False) -> ExportResult:
    """Like :func:`export`, with timings, file size, batch dynamism and the numerical check."""
    path = onnx_path(name, exporter)
    meta_path, error_path = _meta_path(path), _error_path(path)
    calibration = _calibration_id(name)
    if path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if meta["calibration"] == calibration:
                fields = {k: meta[k] for k in _META_FIELDS}
                return ExportResult(name, exporter, path, True, size=file_size(path), **fields)
        except (ValueError, KeyError, TypeError, OSError):
            pass  # sidecar from an older zoo.py, or a file vanished: export again
    if error_path.exists() and not retry_failed:
        with contextlib.suppress(OSError):
            message, _, made_with = error_path.read_text().rpartition(_ERROR_CALIBRATION)
            if made_with.strip() == calibration:
                raise ZooExportError(message.rstrip())

    path.parent.mkdir(parents=True, exist_ok=True)
    # Export next to the cache (same file system), then rename into place: concurrent test
    # workers never see a half-written file. The external-data file keeps its final name, which
    # the .onnx file refers to.
    with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-{exporter}-", dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        try:
            result = _export_and_check(name, exporter, tmp_path)
        except ZooExportError as exc:
            _atomic_write_text(error_path, f"{exc}{_ERROR_CALIBRATION}{calibration}\n")
            raise
        meta = {"name": name, "exporter": exporter, "torch": torch.__version__}
        meta["calibration"] = calibration
        meta.update((k, getattr(result, k)) for k in _META_FIELDS)
        for src in reversed(onnx_files(tmp_path)):  # data file first, the .onnx file last
            os.replace(src, path.parent / src.name)
        _atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    error_path.unlink(missing_ok=True)
    return dataclasses.replace(result, path=path, size=file_size(path))


_ERROR_CALIBRATION = "\n\ncalibration: "


def _calibration_id(name: str) -> str:
    """Identifies the weights an export of ``name`` holds (in its json and error file)."""
    calibration = _calibration(name)
    return f"{calibration['key']}; logits_rms {calibration['logits_rms']!r} -> {LOGITS_RMS!r}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _export_and_check(name: str, exporter: Exporter, path: Path) -> ExportResult:
    model = torch_model(name)
    log = io.StringIO()
    static_reason = None
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        if exporter == "torchscript":
            with _quiet(log):
                torch.onnx.export(
                    model,
                    (example_input(name),),  # (1, 3, H, W)
                    str(path),
                    dynamo=False,
                    opset_version=OPSET_TORCHSCRIPT,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                )
        else:
            try:
                # traced with batch 2: torch.export specializes sizes 0 and 1
                _export_dynamo(model, example_input(name, 2), path, log, dynamic=True)
            except Exception as exc:
                static_reason = _describe(exc)
                for p in onnx_files(path):
                    p.unlink(missing_ok=True)
                start, cpu_start = time.perf_counter(), time.process_time()
                log = io.StringIO()
                _export_dynamo(model, example_input(name), path, log, dynamic=False)
    except Exception as exc:  # the exporters raise many unrelated types
        raise ZooExportError(
            f"{name}: {exporter} export failed: {_describe(exc)}{_tail(log.getvalue())}"
        ) from exc
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if not path.exists():
        raise ZooExportError(f"{name}: {exporter} export wrote no file{_tail(log.getvalue())}")

    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    dims = [
        proto.graph.input[0].type.tensor_type.shape.dim[0],
        proto.graph.output[0].type.tensor_type.shape.dim[0],
    ]
    dynamic_batch = all(d.dim_param and not d.HasField("dim_value") for d in dims)
    if static_reason is None and not dynamic_batch:
        static_reason = f"the exporter kept a static batch: {[str(d).strip() for d in dims]}"

    # a dynamic batch is checked at batch 1 and batch 2 (one of them differs from the traced one)
    start = time.perf_counter()
    max_diff = 0.0
    for batch in [1, 2] if dynamic_batch else [1]:
        diff, expected = _check_onnxruntime(name, exporter, path, model, batch)
        max_diff = max(max_diff, diff)
    check_seconds = time.perf_counter() - start
    if dynamic_batch:
        logits = expected  # batch 2
    else:
        with torch.no_grad():
            logits = model(example_input(name, 2)).numpy()
    logits_max_abs = float(np.max(np.abs(logits)))
    sensitivity = float(np.max(np.abs(logits[0] - logits[1]))) / logits_max_abs
    return ExportResult(
        name, exporter, path, False, seconds, cpu_seconds, check_seconds, max_diff,
        file_size(path), opset, dynamic_batch, static_reason, logits_max_abs, sensitivity,
    )  # fmt: skip


def _export_dynamo(
    model: nn.Module, x: torch.Tensor, path: Path, log: io.StringIO, *, dynamic: bool,
    opset: int | None = None,
) -> None:
    dynamic_shapes = ({0: torch.export.Dim("N")},) if dynamic else None
    extra = {} if opset is None else {"opset_version": opset}
    with _quiet(log):
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            verbose=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            **extra,
        )


#: (exporter, opset) pairs of the zoo's opset tests, besides the main ones (TorchScript at 17,
#: dynamo at its default 20 with a dynamic batch). torch 2.14's dynamo exporter cannot write
#: opset 17 (asked for it, it writes 18), so opset 17 comes from TorchScript only.
OPSET_EXPORTS: tuple[tuple[Exporter, int], ...] = (("torchscript", 18), ("torchscript", 20), ("dynamo", 18),
                                                   ("dynamo", 20))


def export_at_opset(name: str, exporter: Exporter, opset: int, *, default_init: bool = False) -> Path:
    """Zoo model ``name`` exported by ``exporter`` at ``opset`` with a static batch of 1, cached
    as ``<name>-<exporter>-opset<N>[-default-init].onnx``.

    ``default_init``: torchvision's own initialization instead of the zoo's calibrated weights.
    Its BatchNorms all hold weight 1, bias 0, mean 0, var 1, which the dynamo exporter
    deduplicates into initializers shared between nodes and between inputs of one node (how the
    DenseNet-121 opset-18 IndexError of issue 11 arose). Checked in onnxruntime against torch at
    batch 1. Raises ZooExportError when the exporter fails or writes another opset.
    """
    _check_exporter(exporter)
    suffix = "-default-init" if default_init else ""
    path = cache_dir() / f"{name}-{exporter}-opset{opset}{suffix}.onnx"
    meta_path = _meta_path(path)
    key = "torchvision default init" if default_init else _calibration_id(name)
    if path.exists() and meta_path.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            if json.loads(meta_path.read_text())["weights"] == key:
                return path
    if default_init:
        with _quiet():
            torch.manual_seed(0)
            model = _entry_of(name).builder().eval()
    else:
        model = torch_model(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-{exporter}-opset{opset}-", dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        log = io.StringIO()
        try:
            if exporter == "dynamo":
                _export_dynamo(model, example_input(name), tmp_path, log, dynamic=False, opset=opset)
            else:
                with _quiet(log):
                    torch.onnx.export(model, (example_input(name),), str(tmp_path), dynamo=False,
                                      opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
        except Exception as exc:  # the exporters raise many unrelated types
            raise ZooExportError(
                f"{name}: {exporter} export at opset {opset} failed: {_describe(exc)}{_tail(log.getvalue())}"
            ) from exc
        import onnx

        written = next(o.version for o in onnx.load(str(tmp_path), load_external_data=False).opset_import
                       if o.domain in ("", "ai.onnx"))
        if written != opset:
            raise ZooExportError(f"{name}: the {exporter} exporter asked for opset {opset} wrote opset {written}")
        _check_onnxruntime(name, exporter, tmp_path, model, 1)
        for src in reversed(onnx_files(tmp_path)):
            os.replace(src, path.parent / src.name)
    _atomic_write_text(meta_path, json.dumps({"name": name, "exporter": exporter, "opset": opset,
                                              "weights": key}) + "\n")
    return path


def _check_onnxruntime(
    name: str, exporter: Exporter, path: Path, model: nn.Module, batch: int
) -> tuple[float, np.ndarray]:
    """Run ``path`` in onnxruntime (CPU, no graph optimizations) on ``example_input(name, batch)``
    and compare with ``model``; return the max absolute difference and torch's logits, raise
    ZooExportError if outside ATOL/RTOL."""
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
    return diff, expected


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
    """Delete the cached exports and calibrations (of ``name`` only, if given), failures too."""
    root = cache_dir()
    if name is None:
        _calibrations.clear()
        if root.exists():
            shutil.rmtree(root)
        return
    _calibrations.pop(name, None)
    _calibration_path(name).unlink(missing_ok=True)
    for exporter in EXPORTERS:
        path = onnx_path(name, exporter)
        for p in [*onnx_files(path), _meta_path(path), _error_path(path)]:
            p.unlink(missing_ok=True)
