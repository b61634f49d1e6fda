"""The top-level Python API: `onnxprune.analyze / prune / benchmark / evaluate / finetune`.

Each function takes a model as a path (or an `onnx.ModelProto` where noted) and keyword
settings named like the command line's options (`target_flops` for `--target-flops`). Errors are
`onnxprune.errors.OnnxPruneError` subclasses whose messages name these parameters. Inputs are
never modified; outputs are written atomically, and only once complete (and verified).

    import onnxprune

    analysis = onnxprune.analyze("model.onnx")
    result = onnxprune.prune("model.onnx", "pruned.onnx", target_flops=0.5)
    print(result.macs)                      # (MACs before, MACs after)
    for r in onnxprune.benchmark(["model.onnx", "pruned.onnx"]):
        print(r.model, r.median_ms)

`onnxprune.api.prune(model, PruneConfig(...))` is the same pipeline driven by a config object.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import onnx

from onnxprune.errors import InputError

if TYPE_CHECKING:
    from onnxprune.api import PruneResult
    from onnxprune.bench import Accuracy, BenchResult
    from onnxprune.deps import Analysis
    from onnxprune.torchcopy import FinetuneResult

ModelArg = str | os.PathLike[str] | onnx.ModelProto
PathArg = str | os.PathLike[str]
InputShapes = Mapping[str, Sequence[int]]


def _shapes(input_shapes: InputShapes | None) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in shape) for name, shape in (input_shapes or {}).items()}


def _check_outputs(model: ModelArg, outputs: Sequence[PathArg | None]) -> None:
    from onnxprune.api import check_output_paths

    if not isinstance(model, onnx.ModelProto):
        check_output_paths(model, outputs)


def analyze(model: ModelArg, *, input_shapes: InputShapes | None = None, exclude: Sequence[str] = (),
            simplify: str = "auto", json: PathArg | None = None) -> "Analysis":
    """Channel groups, MACs and params of `model`.

    Args:
        model: path of an ONNX file, or a `ModelProto`.
        input_shapes: static shapes for inputs with dynamic dimensions, e.g. `{"input": (1, 3, 224, 224)}`.
        exclude: node names whose channels are never pruned.
        simplify: "auto" (onnxsim first; the model as given if it fails), "on" or "off".
        json: also write the analysis as JSON there.

    Returns:
        `onnxprune.deps.Analysis`: `.macs`, `.params`, `.channel_groups` (id, channels, prunable,
        reason, producers, consumers), `.prunable()`, `.to_json()`.
    """
    from onnxprune.api import analyze_simplified, save_json

    _check_outputs(model, [json])
    analysis, _, info = analyze_simplified(model, _shapes(input_shapes), exclude, simplify)
    if json is not None:
        save_json({**analysis.to_json(), "simplify": info.to_json()}, json)
    return analysis


def prune(model: ModelArg, output: PathArg | None = None, *, target_flops: float | None = None,
          sparsity: float | None = None, method: str = "l1", global_ranking: bool = False,
          round_to: int | str = "auto", runtime: str = "cpu", simplify: str = "auto", exclude: Sequence[str] = (),
          data: str | None = None, finetune_epochs: int = 0, finetune_images: int | None = None, seed: int = 0,
          verify: bool = True, input_shapes: InputShapes | None = None, report: PathArg | None = None,
          progress: Callable[[str], None] | None = None, **settings: Any) -> "PruneResult":
    """Prune channels of `model` and (if `output` is given) write the smaller model there.

    Give exactly one budget: `target_flops` (keep at most this fraction of the MACs) or `sparsity`
    (remove this fraction of the channels of every group); search methods also take
    `target_params` and `target_latency`.

    Args:
        model: path of an ONNX file, or a `ModelProto`.
        output: where to write the pruned model (atomically, after verification); None: not written.
        method: "l1", "l2", "bn", "random", "taylor" (needs `data`), or a search method
            ("gat-ppo", "rl-pruner", "sacp"; need `data`).
        global_ranking: rank all channels together instead of the same fraction per group.
        round_to: kept widths multiple of this ("auto": what suits `runtime`; 1: any width).
        runtime: "cpu", "cuda" or "tensorrt": what the pruned model will run on.
        simplify: "auto", "on" or "off": onnxsim before the analysis.
        exclude: node names whose channels are never pruned.
        data: dataset spec ("fashion-mnist", "digits", "folder:DIR", ...) for taylor, search
            methods and fine-tuning.
        finetune_epochs: knowledge-distillation epochs after pruning (needs `data`).
        finetune_images: training images per fine-tuning epoch (None: all).
        seed: seed of everything random.
        verify: compare the result with the masked original in onnxruntime (default True).
        input_shapes: static shapes for inputs with dynamic dimensions.
        report: also write the JSON report there.
        progress: called with a short message at each stage.
        **settings: any other `onnxprune.api.PruneConfig` field (`target_params`,
            `target_latency`, `workers`, `eval_images`, `trajectory`, `plot`, `options`...).

    Returns:
        `onnxprune.api.PruneResult`: `.model` (ONNX), `.macs` and `.params` (before, after),
        `.keep`, `.verified`, `.report()`.
    """
    from onnxprune.api import PruneConfig, save_json, save_model
    from onnxprune.api import prune as run_prune

    known = {f.name for f in dataclasses.fields(PruneConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"prune() got unknown parameter(s) {', '.join(unknown)}")
    _check_outputs(model, [output, report, settings.get("trajectory"), settings.get("plot"),
                           settings.get("checkpoint")])
    cfg = PruneConfig(method=method, sparsity=sparsity, target_flops=target_flops, global_ranking=global_ranking,
                      round_to=round_to, runtime=runtime, simplify=simplify, seed=seed, exclude=tuple(exclude),
                      verify=verify, input_shapes=_shapes(input_shapes), data=data, finetune_epochs=finetune_epochs,
                      finetune_images=finetune_images, **settings)
    result = run_prune(model, cfg, progress=progress)
    if output is not None:
        save_model(result.model, output)
    if report is not None:
        save_json(result.report(), report)
    return result


def benchmark(models: PathArg | Sequence[PathArg], *, provider: str = "cpu", batch_sizes: Sequence[int] = (1,),
              threads: int = 0, warmup: int = 5, runs: int = 30, input_shapes: InputShapes | None = None,
              json: PathArg | None = None) -> list["BenchResult"]:
    """onnxruntime latency of one or more models (the first is the baseline of speed-ups).

    Args:
        models: one path or several.
        provider: "cpu", "cuda" or "tensorrt" (falls back to CPU without a GPU: see
            `BenchResult.provider_used` and `.fell_back`).
        batch_sizes: batch sizes to time.
        threads: intra-op threads (0: onnxruntime's default).
        warmup, runs: untimed and timed runs per model and batch size.
        input_shapes: static shapes for inputs with dynamic non-batch dimensions.
        json: also write the results (with onnxruntime version, providers, machine) there.

    Returns:
        One `onnxprune.bench.BenchResult` per model and batch size (`median_ms`, `p90_ms`, ...).
    """
    from onnxprune.api import save_json
    from onnxprune.bench import BenchConfig, benchmark_models, results_to_json

    paths = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    for path in paths:
        _check_outputs(path, [json])
    cfg = BenchConfig(provider=provider, batch_sizes=tuple(batch_sizes), threads=threads, warmup=warmup, runs=runs)
    results = benchmark_models(paths, cfg, _shapes(input_shapes))
    if json is not None:
        save_json(results_to_json(results), json)
    return results


def _data_options(layout: str, resize: tuple[int, int] | None, mean: Sequence[float] | None,
                  std: Sequence[float] | None) -> dict[str, Any]:
    return {"layout": layout, "resize": resize, "mean": mean, "std": std}


def evaluate(model: ModelArg, data: str, *, split: str = "test", batch_size: int = 256, images: int | None = None,
             seed: int = 0, input_shapes: InputShapes | None = None, layout: str = "auto",
             resize: tuple[int, int] | None = None, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, json: PathArg | None = None) -> "Accuracy":
    """Top-1 accuracy and cross-entropy of a classifier on a dataset split.

    Runs in onnxruntime on the CPU (the runtime the pruned model is deployed with; there is no
    PyTorch side, hence no `device`). Images are read and preprocessed one batch at a time.

    Args:
        model: path of an ONNX file, or a `ModelProto`.
        data: dataset spec: "digits", "fashion-mnist[:DIR]", "idx:DIR", "folder:DIR", "npz:FILE", "random".
        split: "train", "val" or "test".
        batch_size: images per onnxruntime run.
        images: evaluate a seeded subset of this many images of the split (None: all of it).
        seed: seed of the subset (and of the train/val split of datasets that have none).
        input_shapes: static shapes for inputs with dynamic dimensions.
        layout, resize, mean, std: preprocessing (defaults follow the model's input shape).
        json: also write `{"top1", "loss", "n", "split", "data"}` as JSON there.

    Returns:
        `onnxprune.bench.Accuracy` (`top1`, `loss`, `n`).
    """
    from onnxprune.api import evaluate_model, save_json

    _check_outputs(model, [json])
    acc, _ = evaluate_model(model, data, split=split, batch_size=batch_size, images=images, seed=seed,
                            input_shapes=_shapes(input_shapes), data_options=_data_options(layout, resize, mean, std))
    if json is not None:
        save_json({"top1": acc.top1, "n": acc.n, "loss": acc.loss, "split": split, "data": data}, json)
    return acc


def finetune(model: ModelArg, teacher: ModelArg, data: str, output: PathArg | None = None, *, epochs: int = 5,
             optimizer: str = "sgd", lr: float | None = None, tau: float = 0.7, temperature: float = 4.0,
             images: int | None = None, eval_images: int | None = 1000, calib_images: int = 512,
             device: str = "auto", amp: bool = False, data_workers: int | None = None, seed: int = 0,
             input_shapes: InputShapes | None = None, layout: str = "auto", resize: tuple[int, int] | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> "FinetuneResult":
    """Fine-tune a pruned `model` with knowledge distillation from `teacher` (the original).

    The same training as `prune(..., finetune_epochs=N)`: batches streamed to `device`, batch
    sizes fitted to the model's activations and the device, the best epoch on the validation
    split kept, the weights written back into the ONNX graph and verified.

    Args:
        model: the pruned model (path or `ModelProto`); never modified.
        teacher: the original model it imitates.
        data: dataset spec (see `evaluate`).
        output: where to write the fine-tuned model; None: not written.
        epochs: training epochs (>= 1).
        optimizer: "sgd" or "adamw"; lr: its learning rate (None: the optimizer's default).
        tau: weight of the distillation loss (1 - tau goes to cross-entropy); temperature: its softening.
        images: training images per epoch (a seeded subset; None: all).
        eval_images: validation images for choosing the best epoch (None or 0: the whole split).
        calib_images: training images for the statistics of re-inserted BatchNorm layers.
        device: where PyTorch trains: "auto" (the GPU when torch sees one), "cpu", "cuda", "cuda:N".
        amp: float16 mixed precision (CUDA only).
        data_workers: image-decoding processes (None: 2 for folder:DIR on a GPU; 0 on the CPU and for
            in-memory data).
        seed: seed of data order, subsets and initialization.
        input_shapes: static shapes for inputs with dynamic dimensions.
        layout, resize, mean, std: preprocessing (defaults follow the model's input shape).

    Returns:
        `onnxprune.torchcopy.FinetuneResult` (`.model`, `.initial_val_top1`, `.best_val_top1`,
        `.message()` when training did not improve or diverged).
    """
    from onnxprune.api import finetune_model, save_model

    _check_outputs(model, [output])
    _check_outputs(teacher, [output])
    result = finetune_model(model, teacher, data, epochs=epochs, optimizer=optimizer, lr=lr, tau=tau,
                            temperature=temperature, images=images, eval_images=eval_images,
                            calib_images=calib_images, device=device, amp=amp, data_workers=data_workers, seed=seed,
                            input_shapes=_shapes(input_shapes), data_options=_data_options(layout, resize, mean, std))
    if output is not None:
        save_model(result.model, output)
    return result


def demo_model() -> Path:
    """Path of the ResNet-20 shipped with onnxprune: trained on Fashion-MNIST (test top-1 0.9366),
    input N x 1 x 28 x 28 in [0, 1], BatchNorm folded into Conv. A model to try the API on."""
    from onnxprune.assets import DEMO_MODEL

    return DEMO_MODEL
