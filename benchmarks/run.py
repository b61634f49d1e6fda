"""The comparison of pruning methods on real data, one stored run at a time; regenerates BENCHMARKS.md.

    python -m benchmarks.run                          # the protocol (resumable; hours on 2 cores)
    python -m benchmarks.run --models resnet20 --targets macs-0.5 --methods l1-uniform random --seeds 0 1
    python -m benchmarks.run --forms bn               # the optional BatchNorm-kept column
    python -m benchmarks.run --latency-only           # quiet pass: re-time every stored model
    python -m benchmarks.run --report-only            # rebuild BENCHMARKS.md from the stored runs

The protocol (issue 17): every base is benchmarked as users export it (BatchNorm folded into Conv,
the default of both torch exporters; the BN-kept export is an optional second column), at 50% and
25% of the MACs and at 50% of the measured batch-1 latency. Each run prunes, measures the pruned
model without fine-tuning (what a search's proxy sees), then fine-tunes it for one full epoch of
knowledge distillation from the original over all training images, and measures it again. Seeds
are paired across methods: seed s fixes the validation split, the fine-tune data order (and subset,
when capped) and the method's own randomness, identically for every method.

Every (model, form, method, target, seed) run is one JSON file under `benchmarks/results/runs/`,
holding its mode and every setting it used (protocol, method settings, base file hash, machine,
load); a stored run is skipped (`--force` redoes it). The report (`benchmarks/report.py`) reads
only these files and lists the runs of the protocol that are missing.

Runs use every core for torch (`OMP_NUM_THREADS` overrides; each run records `threads`): run them
one at a time on an otherwise idle machine, since OpenMP threads stall on shared cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.peer import PEERS
from onnxprune.methods import GAT_PPO, L1, RANDOM, RL_PRUNER, TAYLOR, names_of

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "runs"
TRAJECTORIES = RESULTS / "trajectories"
PASSES = RESULTS / "latency_passes"  # every quiet pass's header (rows name theirs in `latency_quiet.pass`)
SHIPPED = ROOT / "benchmarks" / "models"  # small bases shipped with the repo (ResNet-20)
MODEL_DIR = Path(os.environ.get("ONNXPRUNE_BENCH_MODELS", Path.home() / ".cache" / "onnxprune" / "bench-models"))
MODEL_OUT = MODEL_DIR / "pruned"  # every run's final ONNX (outside the repo), for `--latency-only`

# Score-based baselines: benchmark label -> (registered criterion, global ranking).
SCORE_METHODS: dict[str, tuple[str, bool]] = {f"{L1.name}-uniform": (L1.name, False),
                                              f"{TAYLOR.name}-global": (TAYLOR.name, True),
                                              RANDOM.name: (RANDOM.name, False)}
PEER_METHODS = tuple(PEERS)
# Benchmark-only variants: (method, options). rl-pruner post-trains between its pruning steps
# (extra training the others do not get); without it, its masks meet the same fine-tune budget.
# gat-ppo's controls (issue 14): the same search and evaluations, other learners proposing candidates.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    f"{RL_PRUNER.name}-nopost": (RL_PRUNER.name, {"post_epochs": 0}),
    **{f"{GAT_PPO.name}-{learner}": (GAT_PPO.name, {"learner": learner}) for learner in ("prior", "random", "cem")},
    # PPO (and its prior) repeat candidates, which the evaluator does not re-run: count=distinct
    # samples until 160 distinct candidates are scored (at most 4x the episodes), as random search does
    f"{GAT_PPO.name}-distinct": (GAT_PPO.name, {"count": "distinct"}),
    # the proxy's second tier: the best 5 candidates (and the greedy one) distilled for 200 steps of
    # 64 images each, the best after it wins (more compute than gat-ppo: about 25 s a finalist on ResNet-20)
    f"{GAT_PPO.name}-finalists": (GAT_PPO.name, {"final_top": 5, "finalist_images": 12800}),
    # the tier the 25% proxy study ranks best (50 distillation steps: Spearman 0.82 against the
    # fine-tuned accuracy, 0.80 on the better half, where masked accuracy has 0.29), on 16 finalists
    f"{GAT_PPO.name}-tier2": (GAT_PPO.name, {"final_top": 16, "finalist_images": 3200}),
    # gat-ppo with its defaults before session 11 (the categorical head, entropy 0.01): the runs stored
    # as gat-ppo before then are relabelled to it (`python -m benchmarks.relabel`)
    f"{GAT_PPO.name}-v1": (GAT_PPO.name, {"head": "categorical", "entropy": 0.01}),
}
GAT_PPO_V1 = f"{GAT_PPO.name}-v1"
SEARCHES = names_of("search") + tuple(VARIANTS)  # every registered search method
METHODS = tuple(SCORE_METHODS) + PEER_METHODS + SEARCHES
REFERENCE = GAT_PPO.name  # every method's paired difference is taken against this one
TARGETS = ("macs-0.5", "macs-0.25", "latency-0.5")
FORMS = ("folded", "bn")
MODELS = ("resnet20", "resnet56", "mobilenetv2", "vgg19_bn")
# Why a method's runs are missing, when it is known (the report says so next to the missing runs).
PENDING: dict[str, str] = {}

# How each base is trained (`models.train.train`, i.e. `python -m models.train`), and its status.
# A base is exported twice from the same trained weights: `<arch>_folded.onnx` and `<arch>_bn.onnx`.
TRAINING: dict[str, dict[str, Any]] = {
    "resnet20": {"settings": {"epochs": 15, "seed": 0, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4,
                              "augment": True},
                 "command": "python -m models.train --arch resnet20 --epochs 15 --seed 0",
                 "trained_by": "the project lead's /work/assets/train_r20.py (models.train.train with these "
                               "settings, both exports from the same weights); shipped in benchmarks/models/"},
    "resnet56": {"settings": {"epochs": 15, "seed": 0, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4,
                              "augment": True},
                 "command": "python -m benchmarks.run --train resnet56",
                 "trained_by": "the project lead, 2026-11-29 14:40-15:40 UTC, 2 torch threads (a helper's "
                               "tests shared the cores during epochs 4-7); shipped in benchmarks/models/"},
    "mobilenetv2": {"settings": {"epochs": 15, "seed": 0, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4,
                                 "augment": True},
                    "command": "python -m benchmarks.run --train mobilenetv2",
                    "trained_by": "the project lead, 2026-11-29 17:31-19:36 UTC, 2 torch threads (a niced CI "
                                  "try and a niced prune shared the cores during epochs 2-3); kept outside the "
                                  "repo (8.9 MB per export) in the bench-models cache, record and log in "
                                  "benchmarks/results/train_mobilenetv2.{json,log}; this command re-creates it "
                                  "(about 2 h)"},
    "vgg19_bn": {"settings": {"epochs": 15, "seed": 0, "lr": 0.05, "batch_size": 128, "weight_decay": 5e-4,
                              "augment": True},
                 "command": "python -m benchmarks.run --train vgg19_bn",
                 "not_trained": "not trained yet: 15 epochs at about 9 min each (the quiet measured "
                                "epoch time) did not fit a session beside the ResNet-56 runs"},
}


@dataclass(frozen=True)
class Protocol:
    """Settings every method gets; recorded whole in every run."""

    data: str = "fashion-mnist"
    finetune_epochs: int = 1
    finetune_images: int | None = None  # None: every training image, each epoch
    finetune_batch_size: int = 64
    finetune_optimizer: str = "sgd"
    finetune_lr: float = 0.01
    finetune_tau: float = 0.7
    finetune_temperature: float = 4.0
    eval_images: int = 1000  # search methods: validation images per cheap candidate evaluation
    latency_runs: int = 30
    latency_warmup: int = 5
    latency_target_batch: int = 1  # the batch size a latency target is measured at
    # onnxruntime threads a latency target is measured at: one thread, because at the default (two
    # here) batch-1 times moved by up to a factor of 2 between quiet passes, one thread's by 1%
    # (`benchmarks.latency_drift`, results/latency_drift.json)
    latency_target_threads: int = 1
    round_to: int | str = "auto"  # onnxprune's default rounding (the runtime width rule), searches included


@dataclass(frozen=True)
class Mode:
    models: tuple[str, ...]
    forms: tuple[str, ...]
    targets: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    protocol: Protocol = Protocol()
    search_options: dict[str, dict[str, Any]] = field(default_factory=dict)


MODES = {
    # The issue-17 protocol; the report lists its missing runs.
    # (gat-ppo-v1 is tabled for comparison where its runs exist, not required: it is not the product's default)
    "protocol": Mode(models=MODELS, forms=("folded",), targets=TARGETS,
                     methods=tuple(m for m in METHODS if m != GAT_PPO_V1), seeds=(0, 1, 2, 3, 4)),
    # A smoke test (minutes): its runs are stored apart from the protocol's and not tabled.
    "quick": Mode(models=("resnet20",), forms=("folded",), targets=("macs-0.5",), methods=METHODS, seeds=(0,),
                  protocol=Protocol(finetune_images=5000, eval_images=500)),
}


class BaseMissing(RuntimeError):
    """The base model is not available and is not trained here."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def base_path_if_present(arch: str, form: str) -> Path:
    """The shipped or cached base in `form`; FileNotFoundError when neither exists."""
    for folder in (SHIPPED, MODEL_DIR):
        path = folder / f"{arch}_{form}.onnx"
        if path.exists():
            return path
    raise FileNotFoundError(f"{arch}_{form}.onnx")


def base_path(arch: str, form: str) -> Path:
    """The trained base in `form` ("folded" or "bn"): shipped, cached, or trained now."""
    for folder in (SHIPPED, MODEL_DIR):
        path = folder / f"{arch}_{form}.onnx"
        if path.exists():
            return path
    spec = TRAINING[arch]
    if "not_trained" in spec:
        raise BaseMissing(f"{arch}: {spec['not_trained']}")
    train_base(arch)
    return MODEL_DIR / f"{arch}_{form}.onnx"


def base_record(arch: str) -> dict[str, Any]:
    """The training record of a base (its JSON next to the ONNX files)."""
    for folder in (SHIPPED, MODEL_DIR):
        path = folder / f"{arch}.json"
        if path.exists():
            return json.loads(path.read_text())
    return {}


def train_base(arch: str) -> Path:
    """Train `arch` with its TRAINING settings and export both forms and the record to MODEL_DIR
    (`python -m benchmarks.run --train ARCH`); returns the record's path."""
    from models.train import export_onnx, train

    spec = TRAINING[arch]
    print(f"training {arch} ({spec['command']}), {torch.get_num_threads()} torch threads", flush=True)
    started, load = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), _load()
    r = train(arch, "fashion-mnist", export=False, **spec["settings"])
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    export_onnx(r.model, r.input_shape, MODEL_DIR / f"{arch}_bn.onnx", fold_bn=False)
    export_onnx(r.model, r.input_shape, MODEL_DIR / f"{arch}_folded.onnx", fold_bn=True)
    record = {"arch": arch, "data": r.data, "test_top1": r.test_top1, "val_top1": list(r.val_top1),
              "train_seconds": r.train_seconds, "train_images": r.train_images, **spec["settings"],
              "settings": spec["settings"], "command": spec["command"], "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": machine(), "started": started,
              "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_start": load,
              "load_end": _load()}
    path = MODEL_DIR / f"{arch}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def run_key(arch: str, form: str, method: str, target: str, seed: int, mode: str = "protocol") -> str:
    prefix = "" if mode == "protocol" else f"{mode}__"
    return f"{prefix}{arch}__{form}__{method}__{target}__s{seed}"


def _target(target: str) -> tuple[str, float]:
    kind, _, value = target.partition("-")
    return kind, float(value)


def machine() -> str:
    """The CPU (name, family and model: machines of one name differ, and a latency target is the
    measuring machine's), core count, OS and library versions."""
    cpu = "unknown CPU"
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        cpu = fields.get("model name", cpu)
        if "cpu family" in fields:
            cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    except OSError:
        pass
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def latency_ms(model_bytes: bytes, batches: tuple[int, ...], protocol: Protocol, threads: int = 0) -> dict[int, float]:
    """Median onnxruntime CPU latency (ms) per batch size (`threads` 0: onnxruntime's default)."""
    from onnxprune.bench import BenchConfig, benchmark_model

    res = benchmark_model(model_bytes, BenchConfig(batch_sizes=batches, warmup=protocol.latency_warmup,
                                                   runs=protocol.latency_runs, threads=threads))
    return {r.batch: r.median_ms for r in res}


def _kept_fractions(model: Any, original: Any) -> list[float]:
    """Kept fraction of every prunable group of the original, in group order (structure only:
    the widths of the pruned model's producers compared with the original's)."""
    from onnxprune.deps import analyze

    widths = {}
    pruned_graph = analyze(model).graph
    for node in pruned_graph.nodes:
        for out in node.outputs:
            shape = pruned_graph.shapes.get(out)
            if shape and len(shape) >= 2:
                widths[node.name] = shape[1]
    out = []
    for g in original.prunable():
        prod = g.producers[0] if g.producers else None
        now = widths.get(prod) if prod else None
        out.append(round(now / g.channels, 4) if now else float("nan"))
    return out


def rebuilt_from_widths(rec: dict[str, Any], base: Any) -> Any | None:
    """A model with the widths run `rec` recorded (`kept`), cut from its `base` (an ONNX model, or
    its `Analysis`, which the pass reuses across the base's runs) by our rewrite, keeping the first
    units of every group: latency depends on the structure only. None when the recorded widths or
    MACs are not reproduced exactly (the pass then skips the run)."""
    from onnxprune.deps import Analysis, analyze
    from onnxprune.rewrite.apply import apply_keep

    kept = rec.get("kept")
    analysis = base if isinstance(base, Analysis) else analyze(base)
    groups = analysis.prunable()
    if not kept or len(kept) != len(groups):
        return None
    keep = analysis.full_keep()
    for g, frac in zip(groups, kept):
        n = round(frac * g.units)
        if not 1 <= n <= g.units:
            return None
        local = np.zeros(g.units, dtype=bool)
        local[:n] = True
        keep[g.unit_slice] = local
    model = apply_keep(analysis, keep)
    same_macs = abs(analyze(model).macs / analysis.macs - rec.get("macs_ratio", -1.0)) < 1e-9
    return model if same_macs and _kept_fractions(model, analysis) == list(kept) else None


def _bisect_latency(make: Callable[[float], Any], fits: Callable[[Any], bool], steps: int = 8) -> tuple[Any, float]:
    """The model `make(f)` with the largest MACs fraction f in (0, 1] that `fits` (bisection). A
    fraction below what the method can reach (`make` raises UnsupportedModelError: every group at
    its minimum width keeps more) counts as too small."""
    from onnxprune.errors import UnsupportedModelError

    lo, hi = 0.0, 1.0
    best, best_f = None, 0.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        try:
            model = make(mid)
        except UnsupportedModelError:
            lo = mid
            continue
        if fits(model):
            lo, best, best_f = mid, model, mid
        else:
            hi = mid
    if best is None:
        raise RuntimeError(f"the latency target is not reached at {lo:.3f} of the MACs or any larger fraction")
    return best, best_f


def run_one(arch: str, form: str, method: str, target: str, seed: int, mode_name: str, mode: Mode,
            with_finetune: bool = True) -> dict[str, Any]:
    """Prune, evaluate, (fine-tune, evaluate) and time one configuration; the run's JSON record."""
    from onnxprune.api import PruneConfig, prune
    from onnxprune.bench import evaluate_onnx
    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze
    from onnxprune.torchcopy import recalibrate_batchnorm

    p = mode.protocol
    path = base_path(arch, form)
    original = analyze(path)
    kind, value = _target(target)
    splits = load_dataset(p.data, input_shape=original.graph.shapes[original.graph.inputs[0].name], seed=seed)
    key = run_key(arch, form, method, target, seed, mode_name)
    record: dict[str, Any] = {
        "model": arch, "form": form, "method": method, "target": target, "seed": seed, "mode": mode_name,
        "protocol": dataclasses.asdict(p),
        "pairing": "seed fixes the validation split, the fine-tune order/subset and the method's randomness",
        "base": {"file": path.name, "sha256": _sha256(path), "test_top1": base_record(arch).get("test_top1")},
        "train_images": int(len(splits.train[0])), "val_images": int(len(splits.val[0])),
        "test_images": int(len(splits.test[0])),
        "machine": machine(), "commit": git_commit(), "threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_start": _load(),
    }
    meter = _OtherLoad()
    base_bytes = path.read_bytes()
    b, threads = p.latency_target_batch, p.latency_target_threads
    base_lat = latency_ms(base_bytes, (b,), p, threads=threads)[b] if kind == "latency" else None

    def fits_latency(model: Any) -> bool:
        lat = latency_ms(model.SerializeToString(), (b,), p, threads=threads)[b]
        return lat <= value * base_lat  # type: ignore[operator]

    t0 = time.perf_counter()
    searched = None
    if method in PEERS:
        from benchmarks.peer import tp_export

        spec = PEERS[method]
        record["method_settings"] = spec.settings()
        common = dict(fold_bn=form == "folded", reference=path, train=splits.train, seed=seed)
        bn = base_path(arch, "bn")
        if kind == "latency":
            pruned, ratio = tp_export(arch, bn, spec, accept=fits_latency, **common)  # type: ignore[arg-type]
        else:
            pruned, ratio = tp_export(arch, bn, spec, target_flops=value, **common)  # type: ignore[arg-type]
        record["tp_ratio"] = ratio
        record["search_s"] = time.perf_counter() - t0
    else:
        name, global_ranking = SCORE_METHODS.get(method, (method, False))
        variant: dict[str, Any] = {}
        if method in VARIANTS:
            name, variant = VARIANTS[method][0], dict(VARIANTS[method][1])
        options = {**variant, **mode.search_options.get(method, {})}
        searching = method in SEARCHES
        base_cfg = dict(method=name, global_ranking=global_ranking, seed=seed, data=p.data, finetune_epochs=0,
                        round_to=p.round_to, search_progress=False)
        if searching:
            TRAJECTORIES.mkdir(parents=True, exist_ok=True)
            base_cfg.update(eval_images=p.eval_images, options=options,
                            trajectory=str(TRAJECTORIES / f"{key}.json"))
            if kind == "latency":
                base_cfg.update(target_latency=value, latency_threads=p.latency_target_threads)
            else:
                base_cfg["target_flops"] = value
            result = prune(path, PruneConfig(**base_cfg))
            record["macs_target_used"] = None
        elif kind == "latency":
            results: dict[int, Any] = {}

            def make(f: float) -> Any:
                res = prune(path, PruneConfig(target_flops=f, **base_cfg))
                results[id(res.model)] = res
                return res.model

            model, f = _bisect_latency(make, fits_latency)
            result = results[id(model)]
            record["macs_target_used"] = f
        else:
            result = prune(path, PruneConfig(target_flops=value, **base_cfg))
        record["method_settings"] = {"onnxprune_method": name, "global_ranking": global_ranking,
                                     "round_to": base_cfg["round_to"], "options": options,
                                     **({"eval_images": p.eval_images} if searching else {})}
        pruned = result.model
        searched = result.searched
        record["search_s"] = result.seconds.get("select", 0.0)
        record["verify_max_abs_diff"] = result.verified.max_abs_diff if result.verified else None
        if searched is not None:
            record["evaluations"] = searched.summary.get("total_evaluations", searched.evaluations)
            record["search_val_top1"] = searched.val_top1
            record["search_summary"] = searched.summary
            record["trajectory"] = f"benchmarks/results/trajectories/{key}.json"
    post_trained = searched is not None and searched.trained  # the method trained weights (rl-pruner, sacp)
    record["post_trained_by_method"] = post_trained
    if not post_trained:  # BN-kept models: statistics re-estimated after pruning (no-op when folded)
        pruned, record["bn_recalibrated"] = recalibrate_batchnorm(pruned, splits.train[0], seed=seed)
    pruned_analysis = analyze(pruned)
    record["macs_ratio"] = pruned_analysis.macs / original.macs
    record["params_ratio"] = pruned_analysis.params / original.params
    record["kept"] = _kept_fractions(pruned, original)
    record["test_top1_noft"] = evaluate_onnx(pruned, *splits.test).top1
    record["prune_wall_s"] = time.perf_counter() - t0
    MODEL_OUT.mkdir(parents=True, exist_ok=True)
    (MODEL_OUT / f"{key}__noft.onnx").write_bytes(pruned.SerializeToString())
    lat = latency_ms(pruned.SerializeToString(), (1, 32), p)
    record["latency_run"] = {"b1_ms": lat[1], "b32_ms": lat[32], "note": "measured right after the run, not in a quiet pass"}
    if kind == "latency":  # the target as the run measured it (the quiet pass re-times it)
        got = latency_ms(pruned.SerializeToString(), (b,), p, threads=threads)[b]
        record["latency_target_check"] = {"batch": b, "threads": threads, "original_ms": base_lat, "pruned_ms": got,
                                          "ratio": got / base_lat}  # type: ignore[operator]
    record["finetune"] = None  # pending: `finetune_run` completes the record
    meter.note(record, "pruning")
    if with_finetune:
        finetune_run(record, pruned, mode)
    record["load_end"] = _load()
    record["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return record


class _OtherLoad:
    """The CPU other processes used beside this one since it was made (from /proc/stat), written
    into a run's record: `other_cores_busy` per phase and a `note` that says it."""

    def __init__(self) -> None:
        self.start, self.t0 = _cpu_jiffies(), time.perf_counter()

    def seconds(self) -> tuple[float, float]:
        """(CPU seconds other processes used, wall seconds), both since this meter was made."""
        (busy0, own0), (busy1, own1) = self.start, _cpu_jiffies()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK"), time.perf_counter() - self.t0

    def note(self, record: dict[str, Any], phase: str) -> None:
        other, wall = self.seconds()
        cores = other / wall if wall > 0 else 0.0
        record.setdefault("other_cores_busy", {})[phase] = round(cores, 3)
        record["note"] = "other processes used on average " + ", ".join(
            f"{c:.2f} cores while {p}" for p, c in record["other_cores_busy"].items()) + " (from /proc/stat)"


def finetune_run(record: dict[str, Any], pruned: Any, mode: Mode) -> None:
    """Fine-tune the pruned model of `record` with the protocol's knowledge distillation, then
    measure it; completes `record` in place and stores the model for the latency pass."""
    from onnxprune.bench import evaluate_onnx
    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze
    from onnxprune.torchcopy import FinetuneConfig, finetune, to_torch

    p = Protocol(**record["protocol"])
    seed = record["seed"]
    path = base_path(record["model"], record["form"])
    if _sha256(path) != record["base"]["sha256"]:
        raise RuntimeError(f"{path} changed since the run was pruned")
    meter = _OtherLoad()
    original = analyze(path)
    splits = load_dataset(p.data, input_shape=original.graph.shapes[original.graph.inputs[0].name], seed=seed)
    t1 = time.perf_counter()
    ft_cfg = FinetuneConfig(epochs=p.finetune_epochs, batch_size=p.finetune_batch_size,
                            optimizer=p.finetune_optimizer,  # type: ignore[arg-type]
                            lr=p.finetune_lr, tau=p.finetune_tau, temperature=p.finetune_temperature, seed=seed,
                            max_train=p.finetune_images, progress=sys.stderr.isatty())
    teacher = to_torch(original, seed=seed)
    logits, teacher_note = shared_teacher_logits(path, p.data, seed, teacher, splits, p.finetune_batch_size)
    tuned = finetune(pruned, teacher, splits, ft_cfg, teacher_logits=logits)
    model = tuned.model
    record["finetune_s"] = time.perf_counter() - t1
    record["finetune"] = {"teacher_logits": teacher_note,
                          "initial_val_top1": tuned.initial_val_top1, "val_top1": list(tuned.val_top1_history),
                          "best_epoch": tuned.best_epoch, "train_loss": list(tuned.train_loss_history),
                          "write_back_max_abs_diff": tuned.verify_max_abs_diff,
                          "started_load": record.get("load_end"), "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    record["test_top1"] = evaluate_onnx(model, *splits.test).top1
    MODEL_OUT.mkdir(parents=True, exist_ok=True)
    key = run_key(record["model"], record["form"], record["method"], record["target"], seed, record["mode"])
    (MODEL_OUT / f"{key}.onnx").write_bytes(model.SerializeToString())
    lat = latency_ms(model.SerializeToString(), (1, 32), p)
    record["latency_run"] = {"b1_ms": lat[1], "b32_ms": lat[32], "note": "measured right after the run, not in a quiet pass"}
    record["load_end"] = _load()
    meter.note(record, "fine-tuning")


def shared_teacher_logits(base: Path, data: str, seed: int, teacher: Any, splits: Any,
                          batch_size: int = 64) -> tuple[Any, str]:
    """The base's logits on the seed's training split, computed by the first fine-tune of that base
    and seed and cached beside the bases (the teacher and the split are the same for every method
    at that seed, so each run would otherwise repeat the same forward pass); with a note for the
    run record. `batch_size`: the fine-tune's, as the teacher ran inside the fine-tune before
    (the first MobileNetV2 run computed them in batches of 512: 447 s)."""
    import numpy as np

    from onnxprune.torchcopy import train_logits

    cache = MODEL_DIR / "teacher" / f"{base.stem}_{_sha256(base)}_{data}_s{seed}.npy"
    if cache.exists():
        logits = np.load(cache)
        if logits.shape[0] == len(splits.train[0]):
            return logits, f"shared: read from the cache ({cache.name})"
    t0 = time.perf_counter()
    logits = train_logits(teacher, splits, batch_size=batch_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npy")
    np.save(tmp, logits)
    tmp.replace(cache)
    return logits, (f"shared: computed by this run in {time.perf_counter() - t0:.1f} s in batches of {batch_size} "
                    f"and cached ({cache.name})")


def original_record(arch: str, form: str, protocol: Protocol) -> dict[str, Any]:
    from onnxprune.bench import evaluate_onnx
    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze

    path = base_path(arch, form)
    a = analyze(path)
    splits = load_dataset(protocol.data, input_shape=a.graph.shapes[a.graph.inputs[0].name], seed=0)
    lat = latency_ms(path.read_bytes(), (1, 32), protocol)
    return {"model": arch, "form": form, "file": path.name, "sha256": _sha256(path), "macs": a.macs,
            "params": a.params, "test_top1": evaluate_onnx(path, *splits.test).top1, "test_images": len(splits.test[0]),
            "training": base_record(arch), "latency_run": {"b1_ms": lat[1], "b32_ms": lat[32]},
            "machine": machine(), "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _cpu_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine, jiffies of this process)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)  # minus idle and iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime (threads included)


def pass_file(started: str) -> str:
    """The file name under `results/latency_passes/` of the pass that started at `started`."""
    return f"{started[:16].replace(' ', 'T').replace(':', '')}.json"


def latency_pass(rounds: int = 5, runs: int = 30, warmup: int = 5) -> dict[str, Any]:
    """Time every stored model interleaved with its original: per round, original then pruned, at
    batch 1 and 32 with onnxruntime's default threads and at batch 1 with one thread; each model's
    latency is the minimum over rounds of the per-round medians. Writes the results into every
    run record, `results/latency_pass.json` (the latest pass) and `results/latency_passes/`.

    A run whose pruned model is not in this machine's cache (made in another session) is timed on
    its rebuilt twin: the widths it recorded, cut from its base (`rebuilt_from_widths`). Where
    the stored model exists the twin is timed beside it, and `rebuilt_check` records the ratio
    of their latencies.

    The one-thread column is there because the default-thread batch-1 times of these
    sub-millisecond models move between two levels from one pass to the next (the same original
    0.33 or 0.44 ms, its pruned models by about the same amount), which moved their speed-ups by
    up to a factor of 2 (`benchmarks.latency_drift`); one thread measured consistently in the
    latency table's validation."""
    import onnx

    from onnxprune.deps import analyze

    protocol = Protocol(latency_runs=runs, latency_warmup=warmup)
    meter = _OtherLoad()
    info: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                            "load_start": _load(), "rounds": rounds, "runs": runs, "warmup": warmup,
                            "batches": [1, 32], "one_thread_batches": [1],
                            "statistic": f"minimum over rounds of the median of {runs} timings",
                            "provider": "CPUExecutionProvider, onnxruntime default threads", "models": 0}
    info.update({"stored": 0, "rebuilt": 0, "not_timed": {}})
    originals: dict[tuple[str, str], bytes] = {}
    analyses: dict[tuple[str, str], Any] = {}  # analysed once per base: apply_keep only reads it
    for path in sorted(RUNS.glob("*.json")):
        rec = json.loads(path.read_text())
        if "error" in rec or path.stem.endswith("__original"):
            continue
        model_file = MODEL_OUT / f"{path.stem}.onnx"  # latency depends on the structure only:
        if not model_file.exists():  # a run not fine-tuned yet is timed on its pruned model
            model_file = MODEL_OUT / f"{path.stem}__noft.onnx"
        try:
            base = base_path_if_present(rec["model"], rec.get("form", "bn"))
        except FileNotFoundError:
            info["not_timed"][path.stem] = "base not on this machine"
            continue
        if _sha256(base) != rec.get("base", {}).get("sha256"):
            info["not_timed"][path.stem] = "base file changed since the run"
            continue
        orig = originals.setdefault((rec["model"], rec["form"]), base.read_bytes())
        key = (rec["model"], rec["form"])
        if key not in analyses:
            analyses[key] = analyze(onnx.load_from_string(orig))
        rebuilt = rebuilt_from_widths(rec, analyses[key])
        blobs = [("original", orig)]
        if model_file.exists():  # timed beside its rebuilt twin, which checks the rebuilding
            source = "stored"
            blobs += [("pruned", model_file.read_bytes())] + ([("rebuilt", rebuilt.SerializeToString())]
                                                              if rebuilt is not None else [])
        elif rebuilt is not None:  # a run made on another machine: the same widths cut from its base
            source = "rebuilt"
            blobs += [("pruned", rebuilt.SerializeToString())]
        else:
            info["not_timed"][path.stem] = "pruned model not stored and its widths not reproduced"
            continue
        info[source] += 1
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, blob in blobs:
                timed = {f"b{b}": ms for b, ms in latency_ms(blob, (1, 32), protocol).items()}
                timed["b1_t1"] = latency_ms(blob, (1,), protocol, threads=1)[1]
                for col, ms in timed.items():
                    k = f"{name}_{col}_ms"
                    best[k] = min(best.get(k, float("inf")), ms)
        q = {**best, **{f"speedup_{col}": best[f"original_{col}_ms"] / best[f"pruned_{col}_ms"]
                        for col in ("b1", "b32", "b1_t1")}, "pass": info["started"], "timed": source}
        if "rebuilt_b1_ms" in best:
            info.setdefault("rebuilt_check", {})[path.stem] = {
                col: best[f"rebuilt_{col}_ms"] / best[f"pruned_{col}_ms"] for col in ("b1", "b32", "b1_t1")}
        rec["latency_quiet"] = q
        path.write_text(json.dumps(rec, indent=1) + "\n")
        info["models"] += 1
        print(f"  {path.stem}: x{q['speedup_b1']:.2f} (b1) x{q['speedup_b32']:.2f} (b32) "
              f"x{q['speedup_b1_t1']:.2f} (b1, 1 thread)", flush=True)
    other, wall = meter.seconds()
    info.update({"ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "wall_s": round(wall, 1),
                 "load_end": _load(), "other_cpu_s": round(other, 1),
                 "other_cores_busy": round(other / wall, 3) if wall > 0 else None})
    for folder in (RESULTS, PASSES):
        folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(info, indent=1) + "\n"
    (PASSES / pass_file(info["started"])).write_text(text)
    (RESULTS / "latency_pass.json").write_text(text)  # the latest pass
    return info


def run_mode(mode_name: str, mode: Mode, force: bool, with_finetune: bool = True) -> None:
    """Every run of `mode` that is not stored (or, with fine-tune, stored without it)."""
    RUNS.mkdir(parents=True, exist_ok=True)
    for arch in mode.models:
        for form in mode.forms:
            try:
                base_path(arch, form)
            except BaseMissing as exc:
                print(f"skipping {arch}: {exc}", flush=True)
                continue
            base_file = RUNS / f"{arch}__{form}__original.json"
            if force or not base_file.exists() or \
                    json.loads(base_file.read_text()).get("sha256") != _sha256(base_path(arch, form)):
                base_file.write_text(json.dumps(original_record(arch, form, mode.protocol), indent=1) + "\n")
            for target in mode.targets:
                for method in mode.methods:
                    for seed in mode.seeds:
                        key = run_key(arch, form, method, target, seed, mode_name)
                        out = RUNS / f"{key}.json"
                        old = json.loads(out.read_text()) if out.exists() and not force else None
                        if old is not None and ("error" in old or "test_top1" in old or not with_finetune):
                            continue
                        stage = "fine-tune" if old is not None else ("prune" if not with_finetune else "run")
                        print(f"[{time.strftime('%H:%M:%S')}] {arch} {form} {method} {target} seed {seed}: {stage}",
                              flush=True)
                        try:
                            if old is not None:  # pruned earlier (--no-finetune): fine-tune its stored model
                                import onnx

                                rec = old
                                finetune_run(rec, onnx.load(str(MODEL_OUT / f"{key}__noft.onnx")), mode)
                            else:
                                rec = run_one(arch, form, method, target, seed, mode_name, mode, with_finetune)
                        except Exception as exc:  # recorded, the report lists it as failed
                            rec = {"model": arch, "form": form, "method": method, "target": target, "seed": seed,
                                   "mode": mode_name, "protocol": dataclasses.asdict(mode.protocol),
                                   "error": f"{type(exc).__name__}: {exc}"[:400]}
                        out.write_text(json.dumps(rec, indent=1) + "\n")
                        shown = {k: rec.get(k) for k in ("test_top1_noft", "test_top1", "macs_ratio", "prune_wall_s", "finetune_s", "error")}
                        print(f"    {json.dumps(shown)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.report import write_report

    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="protocol")
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="only these methods")
    ap.add_argument("--models", nargs="+", choices=MODELS, help="only these models")
    ap.add_argument("--forms", nargs="+", choices=FORMS, help="base forms (default: the mode's, folded)")
    ap.add_argument("--targets", nargs="+", choices=TARGETS, help="only these targets")
    ap.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the mode's)")
    ap.add_argument("--finetune-images", type=int, help="cap the fine-tune images per epoch (changes the protocol; recorded)")
    ap.add_argument("--eval-images", type=int, help="search proxy images (changes the protocol; recorded)")
    ap.add_argument("--search-option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                    help="a search method's option, e.g. gat-ppo.episodes=96 (repeatable; recorded)")
    ap.add_argument("--force", action="store_true", help="redo runs that are already stored")
    ap.add_argument("--no-finetune", action="store_true",
                    help="prune and measure only (the no-fine-tune column); a later run without it fine-tunes "
                         "the stored pruned models")
    ap.add_argument("--report-only", action="store_true", help="only rebuild BENCHMARKS.md from stored runs")
    ap.add_argument("--latency-only", action="store_true",
                    help="quiet pass: time every stored model interleaved with its original, then report")
    ap.add_argument("--rounds", type=int, default=5, help="--latency-only: rounds (default 5)")
    ap.add_argument("--train", choices=MODELS, metavar="ARCH",
                    help="train a base with its TRAINING settings into the model cache (torch's default "
                         "threads), then stop; ship it by copying the three files into benchmarks/models/")
    args = ap.parse_args(argv)
    if args.train:
        print(f"wrote {train_base(args.train)}", flush=True)
        return 0
    mode = MODES[args.mode]
    for name, value in (("models", args.models), ("forms", args.forms), ("targets", args.targets),
                        ("methods", args.methods), ("seeds", args.seeds)):
        if value:
            mode = dataclasses.replace(mode, **{name: tuple(value)})
    for name, value in (("finetune_images", args.finetune_images), ("eval_images", args.eval_images)):
        if value is not None:
            if value < 1:
                print(f"error: --{name.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
                return 2
            mode = dataclasses.replace(mode, protocol=dataclasses.replace(mode.protocol, **{name: value}))
    if args.search_option:
        options: dict[str, dict[str, Any]] = {m: dict(o) for m, o in mode.search_options.items()}
        for text in args.search_option:
            k, _, v = text.partition("=")
            method, _, name = k.partition(".")
            if not v or method not in SEARCHES or not name:
                print(f"error: --search-option {text!r}: expected METHOD.KEY=VALUE with METHOD one of "
                      f"{', '.join(SEARCHES)}", file=sys.stderr)
                return 2
            options.setdefault(method, {})[name] = v
        mode = dataclasses.replace(mode, search_options=options)
    if args.latency_only:
        info = latency_pass(rounds=args.rounds)
        print(f"re-timed {info['models']} models in {info['wall_s']} s; other processes used "
              f"{info['other_cores_busy']} cores on average", flush=True)
    elif not args.report_only:
        # every core unless OMP_NUM_THREADS says otherwise (recorded as `threads` in each run): the
        # runs are meant to run alone, and one thread made ResNet-56's fine-tune 1.7x slower (0.33
        # against 0.19 s a step, alone, on 2 cores). On shared cores 2 threads stall (6.5 s a step).
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
        run_mode(args.mode, mode, args.force, with_finetune=not args.no_finetune)
    print(f"wrote {write_report()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
