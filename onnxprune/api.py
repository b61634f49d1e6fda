"""The typed Python API behind the CLI."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx

from onnxprune.deps import Analysis, analyze, analyze_graph
from onnxprune.errors import InputError, VerificationError, option
from onnxprune.fileio import STDOUT, atomic_write, check_outputs, model_files
from onnxprune.ir import LoadedModel, Shape, build_graph, load_model, with_initializers
from onnxprune.ir.simplify import SimplifyInfo, check_mode
from onnxprune.ir.simplify import simplify as simplify_model
from onnxprune.ir.validate import check_runtime
from onnxprune.methods import L1, method, names_of
from onnxprune.rewrite import VerifyResult, apply_keep, check_runs, verify
from onnxprune.schema import stamped
from onnxprune.search import AllocationConfig, allocate
from onnxprune.search.rounding import RoundTo

@dataclass(frozen=True)
class PruneConfig:
    method: str = L1.name  # a name registered in onnxprune.methods
    sparsity: float | None = None
    target_flops: float | None = None
    global_ranking: bool = False
    round_to: RoundTo = "auto"  # width multiple per group: "auto" (from `runtime`), K, or 1 (off)
    runtime: str = "cpu"  # what the pruned model will run on: cpu | cuda | tensorrt (picks auto widths)
    seed: int = 0
    exclude: tuple[str, ...] = ()
    verify: bool = True
    simplify: str = "auto"  # onnxsim before the analysis: auto (on; as given if it fails) | on | off
    input_shapes: Mapping[str, Shape] = field(default_factory=dict)
    data: str | None = None  # dataset spec (onnxprune.data), needed by taylor and fine-tuning
    finetune_epochs: int = 0
    finetune_images: int | None = None  # cap on training images per epoch
    finetune_lr: float | None = None  # None: onnxprune.torchcopy.finetune.DEFAULT_LR
    data_options: Mapping[str, Any] = field(default_factory=dict)  # layout/resize/mean/std for load_dataset
    # search methods only (gat-ppo, rl-pruner, sacp)
    target_params: float | None = None  # fraction of the params kept (at most)
    target_latency: float | None = None  # fraction of the measured onnxruntime latency (at most)
    latency_table: bool = True  # target_latency: per-layer latency table (False: time every candidate)
    latency_threads: int = 0  # target_latency: onnxruntime intra-op threads it is measured at (0: the default)
    workers: int = 1  # evaluation processes (local) or actors (Ray)
    eval_images: int | None = 1000  # validation images per candidate evaluation and for fine-tuning's selection
    # the PyTorch side (Taylor, masked evaluation, BatchNorm re-estimation, fine-tuning)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # float16 autocast when fine-tuning on CUDA
    calib_images: int = 512  # Taylor scores and BatchNorm re-estimation
    data_workers: int | None = None  # decoding processes (None: 2 for image folders on CUDA, else 0)
    evaluator: str = "local"  # local | ray
    ray_address: str | None = None  # a Ray cluster (None: a local Ray instance)
    checkpoint: str | None = None
    resume: bool = False
    trajectory: str | None = None  # JSON trajectory output
    plot: str | None = None  # PNG plot of the trajectory
    search_progress: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)  # the method's own settings

    def allocation(self) -> AllocationConfig:
        return AllocationConfig(sparsity=self.sparsity, target_flops=self.target_flops,
                                global_ranking=self.global_ranking, round_to=self.round_to, runtime=self.runtime)

    def budget(self) -> Any:
        """The search budget (`onnxprune.search.Budget`) from whichever target was given."""
        from onnxprune.search import Budget

        targets = {"macs": self.target_flops, "params": self.target_params, "latency": self.target_latency,
                   "channels": None if self.sparsity is None else 1.0 - self.sparsity}
        given = [(k, v) for k, v in targets.items() if v is not None]
        if len(given) != 1:
            raise InputError("give exactly one of " + ", ".join(option(n) for n in ("target_flops", "target_params", "target_latency", "sparsity")))
        return Budget(*given[0])

    def search(self) -> Any:
        """The `onnxprune.search.SearchConfig` of a search method."""
        from onnxprune.search import EvalConfig, SearchConfig

        return SearchConfig(budget=self.budget(), seed=self.seed,
                            eval=EvalConfig(images=self.eval_images or None, workers=self.workers, seed=self.seed,
                                            bn_batches=max(1, -(-self.calib_images // 128)),
                                            backend=self.evaluator, ray_address=self.ray_address),
                            checkpoint=self.checkpoint, resume=self.resume, trajectory=self.trajectory,
                            plot=self.plot, progress=self.search_progress, options=dict(self.options),
                            round_to=self.round_to, runtime=self.runtime)


@dataclass(frozen=True, eq=False)
class PruneResult:
    analysis: Analysis
    keep: np.ndarray
    model: onnx.ModelProto
    verified: VerifyResult | None
    seconds: dict[str, float]
    finetuned: Any = None  # onnxprune.torchcopy.FinetuneResult when fine-tuned
    searched: Any = None  # onnxprune.search.SearchResult for the search methods
    simplified: SimplifyInfo | None = None  # what --simplify did

    @property
    def macs(self) -> tuple[int, int]:
        return self.analysis.macs, self.analysis.cost.macs(self.keep)

    @property
    def params(self) -> tuple[int, int]:
        return self.analysis.params, self.analysis.cost.params(self.keep)

    def report(self) -> dict[str, Any]:
        data = self.analysis.to_json(self.keep)
        if self.simplified is not None:
            data["simplify"] = self.simplified.to_json()
        if self.verified is not None:
            data["verify"] = self.verified.to_json()
        if self.finetuned is not None:
            data["finetune"] = self.finetuned.summary()
        if self.searched is not None:
            data["search"] = dict(self.searched.summary)
        data["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        return data


def prune(src: str | os.PathLike[str] | onnx.ModelProto, cfg: PruneConfig,
          progress: Callable[[str], None] | None = None) -> PruneResult:
    """Analyse, score, allocate, rewrite and (by default) verify. Writes nothing."""
    say = progress or (lambda _msg: None)
    chosen = method(cfg.method)
    if (chosen.needs_data or cfg.finetune_epochs > 0) and not cfg.data:
        why = option("method", cfg.method) if chosen.needs_data else option("finetune_epochs")
        raise InputError(f"{why} needs data: pass {option('data')} (a spec such as fashion-mnist, digits, folder:DIR)")
    if cfg.finetune_epochs < 0:
        raise InputError(f"{option('finetune_epochs')} must be >= 0, got {cfg.finetune_epochs}")
    if cfg.calib_images < 1:
        raise InputError(f"{option('calib_images')} must be >= 1, got {cfg.calib_images}")
    if cfg.latency_threads < 0:
        raise InputError(f"{option('latency_threads')} must be >= 0 (0: onnxruntime's default), got {cfg.latency_threads}")
    if cfg.eval_images is not None and cfg.eval_images < 0:
        raise InputError(f"{option('eval_images')} must be >= 0 (0: the whole split), got {cfg.eval_images}")
    if cfg.finetune_images is not None and cfg.finetune_images < 1:
        raise InputError(f"{option('finetune_images')} must be >= 1, got {cfg.finetune_images}")
    # with data, every method's written model gets its BatchNorm re-estimated under the mask
    # (data-free criteria included: on a folded model, pruning without it can collapse accuracy)
    torch_side = bool(cfg.data)
    device = _device(cfg.device, torch_side)
    searching = chosen.searches
    if searching:
        if cfg.global_ranking:
            raise InputError(f"{option('global_ranking')} applies to score-based methods, not to {option('method', cfg.method)}")
        search_cfg = cfg.search()
    else:
        if cfg.target_params is not None or cfg.target_latency is not None:
            raise InputError(f"{option('target_params')} and {option('target_latency')} need a search method ({', '.join(names_of('search'))})")
        alloc = cfg.allocation()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    say("analysing")
    analysis, original, simplified = analyze_simplified(src, cfg.input_shapes, cfg.exclude, cfg.simplify)
    if not analysis.graph.runtime_checked:  # custom-domain operators: prune must run it
        check_runtime(analysis.graph.model, analysis.graph.source)
    times["analyze"] = time.perf_counter() - t0
    splits = copy = None
    if cfg.data:
        from onnxprune.data import load_dataset

        t0 = time.perf_counter()
        say(f"loading {cfg.data}")
        first = analysis.graph.inputs[0].name
        splits = load_dataset(cfg.data, input_shape=analysis.graph.shapes[first], seed=cfg.seed,
                              **dict(cfg.data_options))
        times["data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    say(f"scoring ({cfg.method})")
    searched = None
    if searching:
        from onnxprune.search import run_search
        from onnxprune.torchcopy import to_torch

        copy = to_torch(analysis, seed=cfg.seed, device=device)
        search_cfg = _fit_search(search_cfg, analysis, device, cfg.calib_images)
        searched = run_search(cfg.method, analysis, copy, splits, search_cfg, say, **search_callables(
            analysis, splits, search_cfg, say, cfg.latency_table, cfg.latency_threads))
        keep = searched.keep
    else:
        calib: dict[str, Any] = {}
        if chosen.needs_data:
            from onnxprune.torchcopy import to_torch
            from onnxprune.torchcopy.device import fit_batch_size

            copy = to_torch(analysis, seed=cfg.seed, device=device)
            # data-driven criteria take the calibration settings (`--calib-images`)
            calib = {"images": cfg.calib_images, "workers": cfg.data_workers,
                     "batch_size": fit_batch_size(analysis, 64, training=True, device=device)}
        scores = chosen.load()(analysis, seed=cfg.seed, copy=copy, splits=splits, **calib)
    if not searching:
        keep = allocate(analysis, scores, alloc)
    times["select"] = time.perf_counter() - t0
    _release(torch_side)
    t0 = time.perf_counter()
    say("rewriting")
    model, verified = rewrite_and_verify(analysis, keep, searched, cfg.verify, cfg.seed, cfg.input_shapes, cfg.exclude,
                                         data=_verify_data(splits),
                                         original=original.model if simplified.applied else None)
    times["rewrite"] = time.perf_counter() - t0
    if splits is not None and (searched is None or not searched.trained):
        from onnxprune.torchcopy import recalibrate_batchnorm

        t0 = time.perf_counter()
        say("re-estimating BatchNorm statistics")
        if searched is None:
            from onnxprune.torchcopy.device import fit_batch_size

            step = min(fit_batch_size(analysis, 128, training=False, device=device), cfg.calib_images)
            bn = {"batches": max(1, -(-cfg.calib_images // step)), "batch_size": step}
        else:
            bn = {"batches": search_cfg.eval.bn_batches, "batch_size": search_cfg.eval.bn_batch_size}
        model, _ = recalibrate_batchnorm(model, splits.train[0], seed=cfg.seed, original=analysis, keep=keep,
                                         original_copy=copy if searched is None else None, device=device, **bn)
        times["bn_recalibration"] = time.perf_counter() - t0
        _release(torch_side)
    tuned = None
    if cfg.finetune_epochs > 0:
        from onnxprune.torchcopy import FinetuneConfig, finetune, to_torch
        from onnxprune.torchcopy.device import fit_batch_size

        t0 = time.perf_counter()
        say("fine-tuning with knowledge distillation")
        teacher = copy if copy is not None else to_torch(analysis, seed=cfg.seed)
        tuned = finetune(model, teacher, splits,  # type: ignore[arg-type]
                         FinetuneConfig(epochs=cfg.finetune_epochs, seed=cfg.seed, max_train=cfg.finetune_images,
                                        lr=cfg.finetune_lr, calib_images=cfg.calib_images,
                                        max_val=cfg.eval_images or None, device=str(device), amp=cfg.amp,
                                        workers=cfg.data_workers,
                                        batch_size=fit_batch_size(analysis, 64, training=True, device=device),
                                        eval_batch_size=fit_batch_size(analysis, 512, training=False, device=device)))
        model = tuned.model
        times["finetune"] = time.perf_counter() - t0
        _release(torch_side)
    return PruneResult(analysis, keep, model, verified, times, tuned, searched, simplified)


def _check_count(name: str, value: int | None, minimum: int, zero_means: str = "") -> None:
    if value is not None and value < minimum:
        extra = f" ({zero_means})" if zero_means else ""
        raise InputError(f"{option(name)} must be >= {minimum}{extra}, got {value}")


def _load_for(model: str | os.PathLike[str] | onnx.ModelProto, data: str, input_shapes: Mapping[str, Shape] | None,
              data_options: Mapping[str, Any] | None, seed: int) -> tuple[LoadedModel, Any, Any]:
    """The loaded model, its graph (shapes from `input_shapes`) and the dataset preprocessed for it."""
    from onnxprune.data import load_dataset

    loaded = load_model(model)
    graph = build_graph(loaded, input_shapes)
    splits = load_dataset(data, input_shape=graph.shapes[graph.inputs[0].name], seed=seed, **dict(data_options or {}))
    return loaded, graph, splits


def evaluate_model(model: str | os.PathLike[str] | onnx.ModelProto, data: str, *, split: str = "test",
                   batch_size: int = 256, images: int | None = None, seed: int = 0,
                   input_shapes: Mapping[str, Shape] | None = None,
                   data_options: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """Top-1 and loss of `model` on a split (onnxruntime, CPU), on a seeded subset of `images`
    images when given. Returns `(Accuracy, Splits)`. What `eval` and `onnxprune.evaluate` run."""
    from onnxprune.bench import evaluate_onnx
    from onnxprune.data import take

    if split not in ("train", "val", "test"):
        raise InputError(f"{option('split')} must be train, val or test, got {split!r}")
    _check_count("batch_size", batch_size, 1)
    _check_count("images", images, 1)
    _, _, splits = _load_for(model, data, input_shapes, data_options, seed)
    x, y = splits.split(split)
    if images is not None and len(x) > images:  # a seeded subset, in the split's order
        sel = np.sort(np.random.default_rng(seed).permutation(len(x))[:images])
        x, y = take(x, sel), y[sel]
    return evaluate_onnx(model, x, y, batch_size), splits


def finetune_model(model: str | os.PathLike[str] | onnx.ModelProto, teacher: str | os.PathLike[str] | onnx.ModelProto,
                   data: str, *, epochs: int = 5, optimizer: str = "sgd", lr: float | None = None, tau: float = 0.7,
                   temperature: float = 4.0, images: int | None = None, eval_images: int | None = 1000,
                   calib_images: int = 512, device: str = "auto", amp: bool = False, data_workers: int | None = None,
                   seed: int = 0, input_shapes: Mapping[str, Shape] | None = None,
                   data_options: Mapping[str, Any] | None = None) -> Any:
    """Knowledge-distillation fine-tune of a pruned `model` from `teacher`, with the same caps
    and device handling as `prune --finetune-epochs` (batch sizes fitted to the model and
    device). Returns `onnxprune.torchcopy.FinetuneResult`. What `finetune` and
    `onnxprune.finetune` run."""
    from onnxprune.torchcopy import FinetuneConfig, finetune
    from onnxprune.torchcopy.device import fit_batch_size, resolve_device

    if optimizer not in ("sgd", "adamw"):
        raise InputError(f"{option('optimizer')} must be sgd or adamw, got {optimizer!r}")
    _check_count("epochs", epochs, 1)
    _check_count("images", images, 1)
    _check_count("eval_images", eval_images, 0, "0: the whole split")
    _check_count("calib_images", calib_images, 1)
    _check_count("data_workers", data_workers, 0)
    dev = resolve_device(device)  # an absent GPU is reported before anything is loaded
    student, graph, splits = _load_for(model, data, input_shapes, data_options, seed)
    cfg = FinetuneConfig(epochs=epochs, optimizer=optimizer, lr=lr, tau=tau,  # type: ignore[arg-type]
                         temperature=temperature, seed=seed, max_train=images, max_val=eval_images or None,
                         calib_images=calib_images, device=str(dev), amp=amp, workers=data_workers,
                         batch_size=fit_batch_size(graph, 64, training=True, device=dev),
                         eval_batch_size=fit_batch_size(graph, 512, training=False, device=dev))
    return finetune(student.model, load_model(teacher).model, splits, cfg)


def analyze_simplified(src: str | os.PathLike[str] | onnx.ModelProto, input_shapes: Mapping[str, Shape] | None = None,
                       exclude: Iterable[str] = (), simplify: str = "auto") -> tuple[Analysis, LoadedModel, SimplifyInfo]:
    """Load and normalize `src`, simplify it with onnxsim (`simplify` mode), analyse the result.

    Returns the analysis, the normalized model as given (what verification compares with) and
    what simplification did. Node names are the same with and without simplification.
    """
    check_mode(simplify)
    original = load_model(src)
    loaded, info = simplify_model(original, simplify)
    graph = build_graph(loaded, input_shapes)
    exclude = tuple(exclude)
    if info.applied:
        kept = {n.name for n in loaded.model.graph.node}
        gone = sorted(n for n in set(exclude) - kept if n in {m.name for m in original.model.graph.node})
        if gone:
            raise InputError(f"{option('exclude')}: node(s) {', '.join(gone)} were folded away by onnxsim; "
                             f"pass {option('simplify', 'off')} to exclude them")
    return analyze_graph(graph, exclude), original, info


def _device(spec: str, needed: bool) -> Any:
    """The torch device of `--device` (checked even when no step needs torch, so that an absent
    GPU is reported); None when nothing needs torch and the device is not CUDA."""
    if not needed and not spec.lower().startswith("cuda"):
        if spec.lower() not in ("auto", "cpu"):
            raise InputError(f"{option('device', spec)}: expected auto, cpu, cuda or cuda:N")
        return None
    from onnxprune.torchcopy.device import resolve_device

    return resolve_device(spec)


def _release(torch_side: bool) -> None:
    """After a step that ran the torch side: its freed activations back to the system."""
    if torch_side:
        from onnxprune.torchcopy.device import release_memory

        release_memory()


def _fit_search(search_cfg: Any, analysis: Analysis, device: Any, calib_images: int) -> Any:
    """`search_cfg` with its evaluation batch sizes fitted to the model and device, the
    calibration images spread over BatchNorm batches, and the device set."""
    from onnxprune.torchcopy.device import fit_batch_size

    ev = search_cfg.eval
    bn_step = min(fit_batch_size(analysis, ev.bn_batch_size, training=False, device=device), calib_images)
    fitted = replace(ev, bn_batch_size=bn_step, bn_batches=max(1, -(-calib_images // bn_step)),
                     batch_size=fit_batch_size(analysis, ev.batch_size, training=False, device=device),
                     taylor_batch_size=fit_batch_size(analysis, ev.taylor_batch_size, training=True, device=device),
                     device=str(device))
    return replace(search_cfg, eval=fitted)


def search_callables(analysis: Analysis, splits: Any, search_cfg: Any = None,
                     say: Callable[[str], None] | None = None, latency_table: bool = True,
                     latency_threads: int = 0) -> dict[str, Callable[..., Any]]:
    """What a search method may ask of the layers it must not import (`run_search` keywords):
    `materialize(keep)` the pruned ONNX model, `latency(keep)` its onnxruntime latency at batch 1
    in seconds, `score_model(model)` an ONNX model's top-1 on the validation split.

    With a latency budget in `search_cfg` and `latency_table`, `latency` is a per-layer latency
    table (`onnxprune.bench.latency_table`: measured once on `search_cfg.runtime`'s provider at
    the widths of `search_cfg.round_to`, cached on disk), else every candidate is rewritten and
    timed on the CPU; both at `latency_threads` onnxruntime intra-op threads (0: its default)."""
    from onnxprune.bench import BenchConfig, benchmark_model, evaluate_onnx

    def materialize(keep: np.ndarray) -> onnx.ModelProto:
        return apply_keep(analysis, keep)

    def latency(keep: np.ndarray) -> float:
        result = benchmark_model(materialize(keep).SerializeToString(),
                                 BenchConfig(batch_sizes=(1,), warmup=3, runs=15, threads=latency_threads))
        return result[0].median_ms / 1000.0

    def score_model(model: onnx.ModelProto) -> float:
        return evaluate_onnx(model, *splits.val).top1

    if latency_table and search_cfg is not None and search_cfg.budget.kind == "latency":
        from onnxprune.bench.latency_table import build_latency_table
        from onnxprune.search.rounding import width_multiples

        (say or (lambda _m: None))(f"latency table ({search_cfg.runtime}, batch 1): measuring once, then cached")
        table = build_latency_table(analysis, materialize, width_multiples(analysis, search_cfg.round_to,
                                                                            search_cfg.runtime),
                                    BenchConfig(provider=search_cfg.runtime, batch_sizes=(1,), warmup=5, runs=30,
                                                threads=latency_threads),
                                    say=say or (lambda _m: None))
        return {"materialize": materialize, "latency": table, "score_model": score_model}
    return {"materialize": materialize, "latency": latency, "score_model": score_model}


def rewrite_and_verify(analysis: Analysis, keep: np.ndarray, searched: Any = None, check: bool = True, seed: int = 0,
                       input_shapes: Mapping[str, Shape] | None = None, exclude: Iterable[str] = (),
                       data: Any = None, original: onnx.ModelProto | None = None,
                       ) -> tuple[onnx.ModelProto, VerifyResult | None]:
    """The pruned model of `keep` and, when `check`, its verification.

    With a search result that trained weights (`onnxprune.search.SearchResult`): `weights` (the
    original model's, full size) are written in first, and the rewrite is verified against the
    trained model with the same channels masked; `pruned_weights` are written into the rewrite
    after the rewrite itself was verified, and the result must still pass the checker and run.
    `data`: images for verification when the outputs are too small on random ones (`verify`).
    Without `check`, the rewrite must still load in onnxruntime.
    `original`: the user's model when the analysed one was simplified: without trained weights,
    the rewrite is verified against it, masked.
    """
    weights = getattr(searched, "weights", None)
    pruned_weights = getattr(searched, "pruned_weights", None)
    source = analysis
    if weights is not None:
        source = analyze(with_initializers(analysis.graph.model, weights), input_shapes, tuple(exclude))
        if source.groups.num_units != analysis.groups.num_units:
            raise VerificationError("the trained weights changed the channel analysis")
    model = apply_keep(source, keep)
    if check:
        verified = verify(source, keep, model, seed=seed, data=data,
                          original=original if weights is None else None)
    else:
        verified = None
        check_loads(model, "the pruned model")  # --no-verify still never returns a model that does not load
    if pruned_weights is not None:
        try:
            model = with_initializers(model, pruned_weights)
        except InputError as exc:
            raise VerificationError(f"trained weights do not fit the pruned model: {exc}") from None
        if check:
            check_runs(source, model, seed=seed)
    return model, verified


def _verify_data(splits: Any) -> Callable[[], np.ndarray | None] | None:
    """Validation images for verification (tiny outputs), when data was given (`--data` loads the
    splits for every method)."""
    if splits is None:
        return None
    return lambda: splits.val[0][:4]


def check_loads(model: onnx.ModelProto, what: str) -> None:
    """onnxruntime loads `model` (CPU, optimizations off), else `VerificationError` (our fault)."""
    try:
        check_runtime(model, what)
    except InputError as exc:
        raise VerificationError(str(exc)) from None


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write atomically (temporary file in the same folder, fsync, then rename)."""
    atomic_write(Path(path), model.SerializeToString())


def save_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write JSON atomically, with `schema_version` and the tool version added; the path `-`
    writes to standard output."""
    payload = (json.dumps(stamped(data), indent=2) + "\n").encode()
    atomic_write(STDOUT if str(path) == STDOUT else Path(path), payload)


def check_output_paths(src: str | os.PathLike[str], outputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Refuse outputs that are the model `src` (or its external data), directories, or unwritable."""
    check_outputs({str(out): out for out in outputs if out is not None}, model_files(src))
