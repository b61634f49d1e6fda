"""gat-ppo transfer across graphs (issue 14, item 5): pre-train the policy on several small graphs,
then search an unseen graph from scratch and from the pre-trained policy, at equal evaluations.

    python -m benchmarks.gat_ppo_transfer                      # pre-train, then the target arms
    python -m benchmarks.gat_ppo_transfer --targets 0.25       # another MACs target (resumes)
    python -m benchmarks.gat_ppo_transfer report               # docs/gat-ppo-study.md (+ the plot)
    python -m benchmarks.gat_ppo_transfer --tiny --out-dir D   # seconds: the end-to-end check

Pre-training graphs (`PRETRAIN_ARCHS`): four small CNNs of different structure trained on
scikit-learn's digits (8x8) for a few seconds each and exported with BatchNorm folded, as users
export: a 4-group residual net (`tests.tiny.ResNetTiny`), a CIFAR ResNet-8 at half width
(8/16/32), a plain VGG-style chain and a MobileNetV2-style net (inverted residuals, depthwise
convolutions). They are rebuilt deterministically (seeded, one torch thread) into
`~/.cache/onnxprune/transfer/` when absent. The zoo exports are not used: their weights are random
(calibrated, `tests/zoo.py`) and there is no data they classify, so every mask's proxy is chance
and a policy would learn nothing from them.

Pre-training: `--rounds` passes over (graph, MACs target) stages; each stage is one gat-ppo search
(`--pretrain-episodes` candidates, proxy = masked validation top-1 with BatchNorm re-estimated,
at exact widths `--round-to 1`) that starts from the previous stage's policy (`policy=`) and
writes the next (`policy_out=`); the first stage pre-trains the encoder as a graph auto-encoder
as a fresh search does. The final policy is the pre-trained policy.

Target (unseen: its architecture, ResNet-20, is not among the pre-training graphs; nor is its
data): `benchmarks/models/resnet20_folded.onnx` (Fashion-MNIST, 93.66%), per MACs target and
seed three arms with the same options and evaluations: `scratch` (the default start, its encoder
pre-training included), `pretrained` (`policy=` the pre-trained policy) and `prior` (the prior
alone, best of N: the control). Paired differences (pretrained - scratch) of the best proxy found,
the mean proxy over all updates, of the first and of the last update, and of the finalist's
validation top-1, with their standard errors.

Results: `benchmarks/results/gat_ppo/transfer__<target>.json` (settings, the pre-training
record, every run's curve; resumable: finished runs are kept), the plot beside it (.png) and a
section in `docs/gat-ppo-study.md` (`python -m benchmarks.gat_ppo_study report` renders it too).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "gat_ppo"
CACHE = Path.home() / ".cache" / "onnxprune" / "transfer"
TARGET = ROOT / "benchmarks" / "models" / "resnet20_folded.onnx"
LOAD_NOTE = "measured on the shared 2-core CPU machine while other engineers' tests and a training job ran (under load)"
ARMS = ("scratch", "pretrained", "prior", "joint", "joint-lr0.001")
DEFAULT_ARMS = ARMS[:3]
METRICS = ("best_proxy", "best_first_update", "mean_proxy_all_updates", "mean_proxy_first_update", "mean_proxy_last_update", "val_top1")
COLORS = {"scratch": "tab:blue", "pretrained": "tab:green", "prior": "tab:gray", "joint": "tab:orange",
          "joint-lr0.001": "tab:red"}


# -- the pre-training graphs ------------------------------------------------------------------
def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class PlainNet(nn.Module):
    """VGG-style chain for 8x8 inputs: 16 -> 32 (s2) -> 32 -> 64 (s2) -> 64 -> GAP -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(1, 16), _cbr(16, 32, 2), _cbr(32, 32), _cbr(32, 64, 2), _cbr(64, 64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class MobileTiny(nn.Module):
    """MobileNetV2-style net for 8x8 inputs: stem 16, inverted residuals (expand 4) 16 -> 16 ->
    24 (s2) -> 24 -> 32 (s2), 1x1 head 64, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        from onnxprune.nets.cifar import InvertedResidual

        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1, 4), InvertedResidual(16, 24, 2, 4),
                                    InvertedResidual(24, 24, 1, 4), InvertedResidual(24, 32, 2, 4))
        self.head = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))).mean(dim=(2, 3)))


def _resnet_tiny() -> nn.Module:
    from tests.tiny import ResNetTiny

    return ResNetTiny()


def _resnet8() -> nn.Module:
    from onnxprune.nets.cifar import CifarResNet

    return CifarResNet(8, in_channels=1, num_classes=10, widths=(8, 16, 32))


PRETRAIN_ARCHS = {"resnet_tiny": _resnet_tiny, "resnet8_half": _resnet8, "plain5": PlainNet, "mobile_tiny": MobileTiny}


def digits_net(name: str, epochs: int, cache: Path) -> tuple[Path, dict[str, Any]]:
    """(ONNX path, record) of `name` trained on digits for `epochs` (Adam, `tests.tiny.fit`) and
    exported with BatchNorm folded; built once into `cache` (deterministic: seeded, one thread)."""
    from onnxprune.bench import evaluate_onnx
    from onnxprune.data import load_dataset
    from onnxprune.nets.train import export_onnx
    from tests.tiny import fit

    path = cache / f"torch-{torch.__version__}" / f"{name}-digits-e{epochs}.onnx"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())
    splits = load_dataset("digits", input_shape=(1, 1, 8, 8), seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        net = fit(PRETRAIN_ARCHS[name](), splits, epochs)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            export_onnx(net, (1, 1, 8, 8), path, fold_bn=True)
    finally:
        torch.set_num_threads(threads)
    import onnx

    x, y = splits.test
    record = {"name": name, "data": "digits", "epochs": epochs, "fold_bn": True, "train_seconds": time.perf_counter() - t0,
              "test_top1": evaluate_onnx(onnx.load(str(path)), x, y).top1, "torch": torch.__version__}
    meta.write_text(json.dumps(record, indent=1) + "\n")
    return path, record


# -- searches ---------------------------------------------------------------------------------
def _search(model: Path, splits: Any, target: float, seed: int, options: dict[str, Any], eval_images: int | None,
            bn_batches: int, round_to: Any) -> tuple[Any, float]:
    from onnxprune.deps import analyze
    from onnxprune.search import Budget, EvalConfig, SearchConfig, run_search
    from onnxprune.torchcopy import to_torch

    analysis = analyze(model)
    cfg = SearchConfig(budget=Budget("macs", target), seed=seed, progress=False, options=options, round_to=round_to,
                       eval=EvalConfig(images=eval_images, bn_batches=bn_batches, bn_batch_size=128, seed=seed))
    t0 = time.perf_counter()
    result = run_search("gat-ppo", analysis, to_torch(analysis, seed=seed), splits, cfg)
    return result, time.perf_counter() - t0


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def pretrain(args: argparse.Namespace, base: dict[str, Any], schedule: str = "sequential") -> tuple[Path, dict[str, Any]]:
    """Run (or reuse) the pre-training (`schedule`: sequential stages, or joint); (policy path, record)."""
    from onnxprune.data import load_dataset

    settings = {"archs": args.archs, "epochs": args.train_epochs, "rounds": args.rounds,
                "targets": args.pretrain_targets, "episodes": args.pretrain_episodes, "batch": args.batch,
                "base_options": base, "round_to": 1, "eval_images": None, "bn_batches": args.bn_batches}
    if schedule != "sequential":  # the sequential key predates the joint schedule
        settings["schedule"] = schedule
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = args.cache / f"torch-{torch.__version__}" / f"pretrain-{key}"
    record_path = folder / "pretrain.json"
    policy = folder / "policy.npz"
    if record_path.exists() and policy.exists():
        return policy, json.loads(record_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    splits = load_dataset("digits", input_shape=(1, 1, 8, 8), seed=0)
    nets = {name: digits_net(name, args.train_epochs, args.cache) for name in args.archs}
    if schedule == "joint":
        t_all = time.perf_counter()
        tasks = joint_pretrain(args, base, nets, splits, policy)
        record = {"settings": settings, "graphs": {n: r for n, (_, r) in nets.items()}, "tasks": tasks,
                  "seconds": time.perf_counter() - t_all, "policy_sha256_16": _sha(policy), "note": LOAD_NOTE}
        record_path.write_text(json.dumps(record, indent=1) + "\n")
        return policy, record
    stages: list[dict[str, Any]] = []
    current = ""
    t_all = time.perf_counter()
    for rnd in range(args.rounds):
        for name in args.archs:
            for target in args.pretrain_targets:
                out = folder / f"stage{len(stages):02d}.npz"
                opts = {**base, "episodes": args.pretrain_episodes, "policy": current, "policy_out": str(out)}
                result, secs = _search(nets[name][0], splits, target, 1000 + len(stages), opts, None,
                                       args.bn_batches, 1)
                curve = [u["mean_proxy"] for u in result.trajectory.meta["updates"]]
                stages.append({"round": rnd, "graph": name, "target": target, "groups": result.trajectory.meta["nodes"],
                               "curve": curve, "best": result.summary["best_subset_val_top1"],
                               "val_top1": result.val_top1, "seconds": secs})
                print(f"[{time.strftime('%H:%M:%S')}] pre-train {rnd}/{name}@{target}: mean proxy "
                      f"{curve[0]:.3f} -> {curve[-1]:.3f}, {secs:.1f}s", flush=True)
                current = str(out)
    Path(current).replace(policy)
    for stale in folder.glob("stage*.npz"):
        stale.unlink()
    record = {"settings": settings, "graphs": {n: r for n, (_, r) in nets.items()}, "stages": stages,
              "seconds": time.perf_counter() - t_all, "policy_sha256_16": _sha(policy), "note": LOAD_NOTE}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return policy, record


def _task(model: Path, splits: Any, target: float, seed: int, options: dict[str, Any], bn_batches: int) -> Any:
    """A gat-ppo search state (`_Search`) on `model` at `target`, sensitivity measured, ready to
    sample: what `gat_ppo.run` builds before its loop (exact widths, the whole validation split)."""
    from onnxprune.deps import analyze
    from onnxprune.methods import L1, TAYLOR
    from onnxprune.search import Budget, EvalConfig, SearchConfig, SearchContext
    from onnxprune.search.budget import BudgetMeter
    from onnxprune.search.evaluator import make_evaluator
    from onnxprune.search.gat_ppo.search import (_Search, impact_scores, measure_sensitivity, parse_config,
                                                 proxy_images)
    from onnxprune.torchcopy import to_torch

    analysis = analyze(model)
    cfg = SearchConfig(budget=Budget("macs", target), seed=seed, progress=False, options=options, round_to=1,
                       eval=EvalConfig(images=None, bn_batches=bn_batches, bn_batch_size=128, seed=seed))
    copy = to_torch(analysis, seed=seed)
    calib = {"images": cfg.eval.bn_batches * cfg.eval.bn_batch_size, "batch_size": cfg.eval.taylor_batch_size}
    scores = {L1.name: L1.load()(analysis, seed=seed),
              TAYLOR.name: TAYLOR.load()(analysis, seed=seed, copy=copy, splits=splits, **calib)}
    ctx = SearchContext("gat-ppo", analysis, make_evaluator(analysis, copy, splits, cfg.eval),
                        BudgetMeter(analysis, cfg.budget), scores, cfg, copy, splits)
    gcfg = parse_config(options)
    impact = impact_scores(ctx)
    probe = _Search(ctx, dataclasses.replace(gcfg, sensitivity=False), None, impact)
    sensitivity, _ = measure_sensitivity(ctx, probe.projector, gcfg.sensitivity_ratio, proxy_images(ctx, gcfg))
    return _Search(ctx, gcfg, sensitivity, impact)


def joint_pretrain(args: argparse.Namespace, base: dict[str, Any], nets: dict[str, tuple[Path, Any]], splits: Any,
                   policy: Path) -> list[dict[str, Any]]:
    """Multi-graph PPO: one policy (shared weights; each graph keeps its own prior) samples a batch
    on every (graph, MACs target) task, then each PPO step minimizes the mean of the tasks' losses.
    As many candidates as the sequential schedule. Writes `policy`; returns one record per task."""
    from onnxprune.search.gat_ppo.policy import save_policy
    from onnxprune.search.gat_ppo.ppo import PpoBatch, advantages, ppo_loss
    from onnxprune.search.gat_ppo.pretrain import pretrain_encoder
    from onnxprune.search.gat_ppo.search import proxy_images

    opts = {**base, "episodes": args.pretrain_episodes}
    tasks = [(name, t) for name in args.archs for t in args.pretrain_targets]
    searches = [_task(nets[name][0], splits, t, 1000 + i, opts, args.bn_batches) for i, (name, t) in enumerate(tasks)]
    first = searches[0]
    first.pretrain_losses = pretrain_encoder(first.policy.encoder, first.graph, first.edges, first.cfg.pretrain_steps,
                                             first.cfg.pretrain_lr, first.ctx.rng)
    for s in searches[1:]:  # one set of weights; the prior and valid buffers stay per graph
        s.policy.encoder, s.policy.actor, s.policy.critic = first.policy.encoder, first.policy.actor, first.policy.critic
    cfg = first.cfg
    opt = torch.optim.Adam(first.policy.parameters(), lr=cfg.lr)
    curves: list[list[float]] = [[] for _ in tasks]
    updates = args.rounds * args.pretrain_episodes // args.batch
    for update in range(updates):
        batches = []
        for i, s in enumerate(searches):
            rolled = [s.rollout() for _ in range(args.batch)]
            proxies = [float(v) for v in s.ctx.evaluator.evaluate([r[0] for r in rolled],
                                                                   images=proxy_images(s.ctx, s.cfg))]
            curves[i].append(float(np.mean(proxies)))
            adv, tgt = advantages([r[2] for r in rolled], proxies, "batch", cfg.gamma, cfg.gae_lambda, cfg.adv_floor)
            batches.append((s, PpoBatch.of(s.edges, [r[2] for r in rolled], adv, tgt)))
        for _ in range(cfg.ppo_epochs):
            loss = sum(ppo_loss(s.policy, s.edges, b, cfg.clip, cfg.entropy, cfg.value_coef)[0]
                       for s, b in batches) / len(batches)
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            nn.utils.clip_grad_norm_(first.policy.parameters(), 0.5)
            opt.step()
        if update % 8 == 0 or update == updates - 1:
            print(f"[{time.strftime('%H:%M:%S')}] joint pre-train update {update}: mean proxy per task "
                  + ", ".join(f"{c[-1]:.3f}" for c in curves), flush=True)
    save_policy(first.policy, policy, first.policy_meta())
    for s in searches:
        s.ctx.evaluator.close()
    return [{"graph": name, "target": t, "groups": s.graph.num_nodes, "curve": c}
            for (name, t), s, c in zip(tasks, searches, curves)]


def _target_splits(model: Path, val_images: int, seed: int) -> Any:
    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze

    analysis = analyze(model)
    first = analysis.graph.inputs[0].name
    splits = load_dataset(dataset_of(model), input_shape=analysis.graph.shapes[first], seed=seed)
    x_val, y_val = splits.val
    return dataclasses.replace(splits, val=(x_val[:val_images], y_val[:val_images]))


def dataset_of(model: Path) -> str:
    """The dataset a target model classifies (digits for the cached pre-training nets)."""
    return "digits" if "digits" in model.name else "fashion-mnist"


def _run_record(result: Any, secs: float) -> dict[str, Any]:
    records = result.trajectory.records
    proxies = [r["proxy"] for r in records]
    best, running = -1.0, []
    for p in proxies:
        best = max(best, p if p is not None else -1.0)
        running.append(best)
    updates = result.trajectory.meta["updates"]
    return {"curve": [u["mean_proxy"] for u in updates], "max_per_update": [u["max_proxy"] for u in updates],
            "episodes_at_update": [u["episode"] for u in updates], "proxies": proxies, "best_so_far": running,
            "best_proxy": result.summary["best_subset_val_top1"], "val_top1": result.val_top1,
            "setup_evaluations": result.summary["setup_evaluations"], "candidates": len(records),
            "evaluations": result.summary.get("evaluations"), "pretrain_loss": result.summary.get("pretrain_loss"),
            "macs": float(np.mean([r["macs"] for r in records])), "seconds": secs}


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean and standard error of a - b (paired), and whether the mean exceeds two s.e."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None  # None: one seed
    return {"mean": float(d.mean()), "se": se, "n": int(d.size),
            "above_2se": se is not None and bool(d.mean() > 2 * se),
            "below_2se": se is not None and bool(d.mean() < -2 * se)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per target: paired pretrained - scratch (and - prior) differences."""
    out: dict[str, Any] = {}
    for target in sorted({r["target"] for r in runs}):
        by = {(r["seed"], r["arm"]): r for r in runs if r["target"] == target}
        seeds = sorted({s for s, a in by if a == "scratch"})
        metrics = {
            "best_proxy": lambda r: r["best_proxy"],
            "best_first_update": lambda r: r["best_so_far"][r["episodes_at_update"][0] - 1],
            "val_top1": lambda r: r["val_top1"],
            "mean_proxy_all_updates": lambda r: float(np.mean([c for c in r["curve"] if c is not None])),
            "mean_proxy_first_update": lambda r: r["curve"][0],
            "mean_proxy_last_update": lambda r: r["curve"][-1],
        }
        entry: dict[str, Any] = {"seeds": seeds}
        for arm, other in (("pretrained", "scratch"), ("pretrained", "prior"), ("joint", "scratch"),
                           ("joint", "prior"), ("joint-lr0.001", "scratch"), ("joint-lr0.001", "joint")):
            ok = [s for s in seeds if (s, other) in by and (s, arm) in by]
            if ok:
                entry[f"{arm}_minus_{other}"] = {
                    m: paired([f(by[(s, arm)]) for s in ok], [f(by[(s, other)]) for s in ok]) for m, f in metrics.items()}
        entry["means"] = {arm: {m: float(np.mean([f(by[(s, arm)]) for s in seeds if (s, arm) in by]))
                                for m, f in metrics.items()} for arm in ARMS if any((s, arm) in by for s in seeds)}
        out[f"{target:g}"] = entry
    return out


def run(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    base = {"batch": args.batch, "gat_backend": "torch", "pretrain_steps": args.pretrain_steps}
    policy, pre = pretrain(args, base)
    joint = pretrain(args, base, "joint") if any(a.startswith("joint") for a in args.arms) else None
    model = Path(args.target_model)
    out = args.out_dir / f"transfer__{model.stem}.json"
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"runs": []}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    if data.get("pretrain", {}).get("policy_sha256_16") not in (None, pre["policy_sha256_16"]):
        raise SystemExit(f"{out} holds runs from another pre-trained policy; move it away to start again")
    if joint is not None:
        if data.get("pretrain_joint", {}).get("policy_sha256_16") not in (None, joint[1]["policy_sha256_16"]):
            raise SystemExit(f"{out} holds runs from another jointly pre-trained policy; move it away to start again")
        data["pretrain_joint"] = joint[1]
    data.update(kind="transfer", model=str(model), note=LOAD_NOTE, pretrain=pre, base_options=base,
                settings={**data.get("settings", {}), **settings}, arms={
                    "scratch": "the default start (encoder pre-trained as a graph auto-encoder on the target)",
                    "pretrained": "policy= the pre-trained policy (no encoder pre-training)",
                    "joint": "policy= the jointly pre-trained policy (multi-graph PPO, same candidates)",
                    "joint-lr0.001": "the joint arm with lr=0.001 on the target (default 0.01)",
                    "prior": "learner=prior: the untrained policy's prior alone, best of N (sensitivity evaluations "
                             "spent as candidates)"})
    done = {(r["target"], r["seed"], r["arm"]) for r in data["runs"]}
    arm_options = {"scratch": {}, "pretrained": {"policy": str(policy)}, "prior": {"learner": "prior"},
                   "joint": {"policy": str(joint[0]) if joint else ""},
                   "joint-lr0.001": {"policy": str(joint[0]) if joint else "", "lr": 0.001}}
    for target in args.targets:
        for seed in args.seeds:
            splits = _target_splits(model, args.val_images, seed)
            for arm in args.arms:
                if (target, seed, arm) in done:
                    continue
                opts = {**base, "episodes": args.episodes, **arm_options[arm]}
                result, secs = _search(model, splits, target, seed, opts, args.eval_images, args.bn_batches, "auto")
                rec = {"target": target, "seed": seed, "arm": arm, **_run_record(result, secs)}
                data["runs"].append(rec)
                data["summary"] = summarize(data["runs"])
                _write(out, data)
                print(f"[{time.strftime('%H:%M:%S')}] {model.stem}@{target} seed {seed} {arm}: best "
                      f"{rec['best_proxy']:.4f}, curve " + ", ".join(f"{c:.3f}" for c in rec["curve"])
                      + f" ({secs:.0f}s)", flush=True)
    data["summary"] = summarize(data["runs"])
    _write(out, data)
    plot(data, out.with_suffix(".png"))
    print(json.dumps(data["summary"], indent=1))
    return out


def _write(path: Path, data: dict[str, Any]) -> None:
    from onnxprune.fileio import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(data, indent=1) + "\n").encode())


# -- plot and report --------------------------------------------------------------------------
def plot(data: dict[str, Any], path: Path) -> None:
    """Per MACs target: mean proxy per update (left) and best proxy so far per evaluated
    candidate (right), every seed thin, the mean over seeds thick, per arm."""
    from onnxprune import plotstyle

    runs = data["runs"]
    targets = sorted({r["target"] for r in runs})
    fig, axes = plotstyle.panels(len(targets), 2, sharey="row")
    handles: dict[str, Any] = {}
    for row, target in enumerate(targets):
        ax_c, ax_b = axes[row]
        for arm in ARMS:
            rs = [r for r in runs if r["target"] == target and r["arm"] == arm]
            if not rs:
                continue
            for r in rs:
                ax_c.plot(np.asarray(r["episodes_at_update"]) + r["setup_evaluations"], r["curve"], color=COLORS[arm],
                          alpha=0.3, lw=0.8)
                ax_b.plot(np.arange(1, len(r["best_so_far"]) + 1) + r["setup_evaluations"], r["best_so_far"],
                          color=COLORS[arm], alpha=0.3, lw=0.8)
            n = min(len(r["curve"]) for r in rs)
            handles[arm] = ax_c.plot(np.asarray(rs[0]["episodes_at_update"][:n]) + rs[0]["setup_evaluations"],
                                     np.mean([r["curve"][:n] for r in rs], 0), color=COLORS[arm], lw=2, marker="o",
                                     ms=3, label=arm)[0]
            m = min(len(r["best_so_far"]) for r in rs)
            ax_b.plot(np.arange(1, m + 1) + rs[0]["setup_evaluations"], np.mean([r["best_so_far"][:m] for r in rs], 0),
                      color=COLORS[arm], lw=2)
        ax_c.set_title(f"{Path(data['model']).stem}, {target:g} of the MACs: mean proxy per update")
        ax_b.set_title("best proxy so far")
        ax_c.set_xlabel("evaluations at the end of the update (setup included)")
        ax_b.set_xlabel("evaluations (setup included)")
        ax_c.set_ylabel("proxy (masked val top-1, BN re-estimated)")
    axes[0][0].legend(handles=[handles[a] for a in ARMS if a in handles], loc="lower right")
    seeds = sorted({r["seed"] for r in runs})
    plotstyle.caption(fig, f"gat-ppo on {Path(data['model']).name} from scratch (default start), from the policy "
                      f"pre-trained on {', '.join(data['pretrain']['settings']['archs'])} (digits; pretrained: one "
                      f"search after the other, joint: multi-graph PPO), and its prior alone; "
                      f"seeds {seeds} (thin: one seed, thick: mean). {LOAD_NOTE}.")
    plotstyle.save(fig, path)


def section(path: Path) -> list[str]:
    """The docs/gat-ppo-study.md section of one transfer results file."""
    d = json.loads(path.read_text())
    pre, st = d["pretrain"], d["settings"]
    ps = pre["settings"]
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    graphs = ", ".join(f"{n} ({g['test_top1']:.3f} test top-1)" for n, g in pre["graphs"].items())
    stages = pre["stages"]
    lines = [f"## Transfer across graphs: {Path(d['model']).name}", "",
             f"`python -m benchmarks.gat_ppo_transfer` (`{rel}`, plot `{rel.with_suffix('.png')}`). "
             f"Pre-training: {len(stages)} stages ({ps['rounds']} rounds over {len(ps['archs'])} graphs x MACs targets "
             f"{ps['targets']}) of {ps['episodes']} candidates each, every stage a gat-ppo search starting from the "
             f"previous stage's policy; graphs trained on digits for {ps['epochs']} epochs, BatchNorm folded: {graphs}. "
             f"{pre['seconds']:.0f} s in all. Mean proxy of the first / last update, first round vs last round: "
             f"{np.mean([s['curve'][0] for s in stages if s['round'] == 0]):.3f} / "
             f"{np.mean([s['curve'][-1] for s in stages if s['round'] == 0]):.3f} vs "
             f"{np.mean([s['curve'][0] for s in stages if s['round'] == ps['rounds'] - 1]):.3f} / "
             f"{np.mean([s['curve'][-1] for s in stages if s['round'] == ps['rounds'] - 1]):.3f}.", "",
             f"Target: {st['episodes']} candidates per search (batch {st['batch']}) plus the sensitivity "
             f"measurement, proxy on 128 of {st['eval_images']} validation images with BatchNorm re-estimated on "
             f"{st['bn_batches']} x 128 train images, `--round-to auto`; val top-1 = the finalist on "
             f"{st['val_images']} validation images." + (
                 " Its architecture (ResNet-20) and data (Fashion-MNIST) are not among the pre-training graphs "
                 "(residual nets are: the 4-group net and ResNet-8)." if Path(d["model"]).name == TARGET.name else ""),
             "",
             "Does pre-training accumulate? Mean proxy of the first update of each pre-training stage (the policy "
             "as the previous stages left it, before it sees this stage's rewards), per round:", "",
             "| graph | MACs | groups | " + " | ".join(f"round {r}" for r in range(ps["rounds"])) + " |",
             "|---|---|---|" + "---|" * ps["rounds"]]
    for name in ps["archs"]:
        for t in ps["targets"]:
            row = [s for s in stages if s["graph"] == name and s["target"] == t]
            lines.append(f"| {name} | {t:g} | {row[0]['groups']} | " + " | ".join(f"{s['curve'][0]:.3f}" for s in row) + " |")
    joint = d.get("pretrain_joint")
    if joint:
        first = np.mean([t["curve"][0] for t in joint["tasks"]])
        last = np.mean([np.mean(t["curve"][-4:]) for t in joint["tasks"]])
        lines += ["", f"Joint pre-training (arm `joint`, `--arms ... joint`): the same graphs, targets and number of "
                  f"candidates, but one multi-graph PPO: every update samples a batch of {st['batch']} on each of the "
                  f"{len(joint['tasks'])} (graph, MACs) tasks and each PPO step minimizes the mean of their losses "
                  f"({len(joint['tasks'][0]['curve'])} updates, {joint['seconds']:.0f} s). Mean proxy over the tasks, "
                  f"first update {first:.3f}, last four updates {last:.3f}; per task: "
                  + ", ".join(f"{t['graph']}@{t['target']:g} {t['curve'][0]:.3f} -> {np.mean(t['curve'][-4:]):.3f}"
                              for t in joint["tasks"]) + "."]
    lines += ["",
             "| MACs | arm | seeds | best proxy | best of the first update | mean proxy, all updates | first update | "
             "last update | val top-1 |", "|---|---|---|---|---|---|---|---|---|"]
    for target, entry in d["summary"].items():
        for arm, m in entry["means"].items():
            n = len([r for r in d["runs"] if f"{r['target']:g}" == target and r["arm"] == arm])
            lines.append(f"| {target} | {arm} | {n} | {m['best_proxy']:.4f} | {m['best_first_update']:.4f} | "
                         f"{m['mean_proxy_all_updates']:.4f} | "
                         f"{m['mean_proxy_first_update']:.4f} | {m['mean_proxy_last_update']:.4f} | {m['val_top1']:.4f} |")
    lines += ["", "Paired differences between arms (mean ± s.e. over seeds; * beyond two s.e.):", "",
              "| MACs | difference | best proxy | best of the first update | mean proxy, all updates | first update | "
              "last update | val top-1 |", "|---|---|---|---|---|---|---|---|"]
    for target, entry in d["summary"].items():
        for key, diffs in entry.items():
            if "_minus_" not in key:
                continue
            arm, other = key.split("_minus_")
            cells = [f"{v['mean']:+.4f} ± {'-' if v['se'] is None else format(v['se'], '.4f')}"
                     f"{' *' if v['above_2se'] or v['below_2se'] else ''}" for v in (diffs[m] for m in METRICS)]
            lines.append(f"| {target} | {arm} - {other} (n={next(iter(diffs.values()))['n']}) | " + " | ".join(cells)
                         + " |")
    lines.append("")
    return lines


def report(_args: argparse.Namespace) -> Path:
    from benchmarks import gat_ppo_study

    for path in sorted(OUT.glob("transfer__*.json")):  # statistics recomputed from the stored runs
        data = json.loads(path.read_text())
        data["summary"] = summarize(data["runs"])
        _write(path, data)
        plot(data, path.with_suffix(".png"))
    return gat_ppo_study.report(argparse.Namespace())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="run", choices=["run", "report"])
    ap.add_argument("--tiny", action="store_true",
                    help="seconds: one pre-training graph, a digits target (plain5), few candidates, one seed")
    ap.add_argument("--target-model", default=str(TARGET))
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS,
                    help="joint: also pre-train jointly (multi-graph PPO) and search from that policy; "
                         "joint-lr0.001: the same at lr=0.001 on the target")
    ap.add_argument("--episodes", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--val-images", type=int, default=1000)
    ap.add_argument("--bn-batches", type=int, default=2)
    ap.add_argument("--pretrain-steps", type=int, default=100, help="encoder pre-training steps of a fresh search")
    ap.add_argument("--archs", nargs="+", default=list(PRETRAIN_ARCHS), choices=list(PRETRAIN_ARCHS))
    ap.add_argument("--train-epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pretrain-targets", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--pretrain-episodes", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--out-dir", type=Path, default=OUT)
    args = ap.parse_args()
    if args.command == "report":
        print(report(args))
        return
    if args.tiny:
        args.archs, args.rounds, args.pretrain_targets, args.pretrain_episodes = ["resnet_tiny"], 1, [0.5], 16
        args.train_epochs, args.episodes, args.seeds, args.pretrain_steps = 3, 16, [0], 10
        args.eval_images, args.val_images, args.threads = 128, 150, 1
        args.target_model = str(digits_net("plain5", 3, args.cache)[0])
    print(run(args))


if __name__ == "__main__":
    main()
