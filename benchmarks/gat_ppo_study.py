"""gat-ppo study (issue 14): does the search proxy rank masks like fine-tuned accuracy, and does
gat-ppo beat the heuristics and its own controls at equal evaluation and fine-tune budgets?

    python -m benchmarks.gat_ppo_study proxy   --model M.onnx --masks 30     # proxy validation
    python -m benchmarks.gat_ppo_study compare --model M.onnx --seeds 0 1 2  # methods, paired seeds
    python -m benchmarks.gat_ppo_study report                               # tables -> docs/gat-ppo-study.md

`proxy`: masks at the MACs target from the heuristics (Taylor global old / per-cost, L1 uniform
/ global, Taylor uniform), random per-group allocations (levels projected onto the budget, the
most important channels kept), samples of gat-ppo's prior and random channel choices. For each:
the proxy tiers (masked validation top-1 with BatchNorm re-estimated on `--tier-images`
images, the same without re-estimation, and tier 2: validation top-1 after a brief
distillation fine-tune of `--tier2-steps` steps), and the target (test top-1 after the
comparison's short fine-tune). Spearman's rho of every tier against the target.

`compare`: per seed, every method's mask at the target (searches with the same number of
evaluations), the same short distillation fine-tune (`--finetune-steps` batches of 64 from the
train split, SGD + cosine, tau 0.7, T 4: `onnxprune.torchcopy.finetune`), test top-1 on the first
`--test-images` of Fashion-MNIST's t10k. Paired differences against gat-ppo per seed.

Every result file records its settings and that it ran on the shared 2-core machine under load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "gat_ppo"
DOC = ROOT / "docs" / "gat-ppo-study.md"
LOAD_NOTE = "measured on the shared 2-core CPU machine while other engineers' tests and a training job ran (under load)"


# -- shared -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    model: Path
    analysis: Any
    splits: Any
    target: float
    seed: int
    teacher: Any = None

    def teacher_copy(self) -> Any:
        """The original's torch copy (the distillation teacher), made once."""
        if self.teacher is None:
            from onnxprune.torchcopy import to_torch

            self.teacher = to_torch(self.analysis, seed=self.seed)
        return self.teacher


def load(model: Path, target: float, seed: int, val_images: int) -> Setup:
    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze

    analysis = analyze(model)
    first = analysis.graph.inputs[0].name
    splits = load_dataset("fashion-mnist", input_shape=analysis.graph.shapes[first], seed=seed)
    x_val, y_val = splits.val
    splits = dataclasses.replace(splits, val=(x_val[:val_images], y_val[:val_images]))
    return Setup(model, analysis, splits, target, seed)


def scores_of(s: Setup) -> dict[str, np.ndarray]:
    """L1, Taylor (per-member normalized, as the criterion) and the unnormalized Taylor impact."""
    from onnxprune.criteria import weight_scores
    from onnxprune.torchcopy import to_torch
    from onnxprune.torchcopy.taylor import taylor_scores

    copy = to_torch(s.analysis, seed=s.seed)
    x, y = s.splits.train
    out = {"l1": weight_scores(s.analysis, "l1", s.seed),
           "taylor": taylor_scores(copy, s.analysis, x, y, seed=s.seed)}
    try:
        out["impact"] = taylor_scores(copy, s.analysis, x, y, seed=s.seed, normalize=False)  # type: ignore[call-arg]
    except TypeError:  # a criterion without unnormalized scores
        pass
    return out


def heuristic_masks(s: Setup, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from onnxprune.search import AllocationConfig, allocate

    def alloc(name: str, global_ranking: bool, **extra: Any) -> np.ndarray:
        return allocate(s.analysis, scores[name], AllocationConfig(target_flops=s.target, global_ranking=global_ranking,
                                                                   **extra))

    out = {"l1-uniform": alloc("l1", False), "l1-global": alloc("l1", True), "taylor-uniform": alloc("taylor", False),
           "taylor-global": alloc("taylor", True)}
    if "impact" in scores:
        try:
            out["taylor-global-cost"] = allocate(s.analysis, scores["impact"], AllocationConfig(
                target_flops=s.target, global_ranking=True, per_cost=True))  # type: ignore[call-arg]
        except TypeError:
            pass
    return out


def short_finetune(s: Setup, keep: np.ndarray, steps: int | None, test_images: int, seed: int,
                   lr: float | None = None) -> dict[str, float]:
    """Rewrite, re-estimate BatchNorm, distil for `steps` batches of 64 (None: one epoch of every
    training image, as `benchmarks.run`'s protocol); val and test top-1."""
    from onnxprune.bench import evaluate_onnx
    from onnxprune.rewrite import apply_keep
    from onnxprune.torchcopy import FinetuneConfig, finetune, recalibrate_batchnorm

    t0 = time.perf_counter()
    pruned = apply_keep(s.analysis, keep)
    # as the API does: BatchNorm re-estimated under the mask (folded models: re-inserted, re-estimated, folded back)
    pruned, _ = recalibrate_batchnorm(pruned, s.splits.train[0], seed=seed, original=s.analysis, keep=keep,
                                      original_copy=s.teacher_copy())
    max_train = None if steps is None else steps * 64
    tuned = finetune(pruned, s.teacher_copy(), s.splits, FinetuneConfig(epochs=1, max_train=max_train, seed=seed, lr=lr,
                                                               progress=False, verify=False))
    x, y = s.splits.test
    test = evaluate_onnx(tuned.model, x[:test_images], y[:test_images]).top1 if test_images else float("nan")
    return {"val_after": tuned.val_top1_history[-1] if tuned.val_top1_history else tuned.initial_val_top1,
            "val_before": tuned.initial_val_top1, "test_top1": test, "seconds": time.perf_counter() - t0}


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho (average ranks for ties)."""
    def ranks(v: list[float]) -> np.ndarray:
        arr = np.asarray(v, dtype=np.float64)
        order = arr.argsort(kind="stable")
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr))
        for value in np.unique(arr):
            idx = arr == value
            r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


# -- proxy validation -------------------------------------------------------------------------
def proxy_study(args: argparse.Namespace) -> Path:
    from onnxprune.search import Budget, BudgetMeter, EvalConfig, LocalEvaluator
    from onnxprune.search.gat_ppo.env import Projector, level_space
    from onnxprune.search.gat_ppo.features import build_state_graph
    from onnxprune.search.gat_ppo.policy import prior_levels
    from onnxprune.search.budget import make_feasible
    from onnxprune.torchcopy import to_torch

    torch.set_num_threads(args.threads)
    s = load(Path(args.model), args.target, args.seed, args.val_images)
    scores = scores_of(s)
    masks = heuristic_masks(s, scores)
    meter = BudgetMeter(s.analysis, Budget("macs", s.target))
    importance = scores["taylor"]
    graph = build_state_graph(s.analysis, scores["l1"], importance)
    proj = Projector(s.analysis, meter, graph, importance)
    rng = np.random.default_rng(args.seed)
    space = level_space(9, 0.2)
    n_random = max(args.masks - len(masks) - args.prior_samples - 3, 0)
    for i in range(n_random):
        masks[f"random-levels-{i}"] = proj.project(space.fractions[rng.integers(0, 9, graph.num_nodes)])[0]
    reference = make_feasible(meter, s.analysis.full_keep(), importance)
    prior = prior_levels(space.fractions, graph.keep_ratios(reference), 1.0)
    p = np.exp(prior - prior.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for i in range(args.prior_samples):
        levels = np.array([rng.choice(9, p=row) for row in p])
        masks[f"prior-sample-{i}"] = proj.project(space.fractions[levels])[0]
    for i in range(3):
        from onnxprune.search import AllocationConfig, allocate

        masks[f"random-channels-{i}"] = allocate(s.analysis, rng.random(len(importance)),
                                                 AllocationConfig(target_flops=s.target))
    names = list(masks)  # heuristics first, then the rest interleaved: a stopped run keeps a mixed sample
    heur = [n for n in names if not n.startswith(("random-", "prior-"))]
    rest = [names[i] for i in rng.permutation(len(names)) if names[i] not in heur]
    masks = {n: masks[n] for n in heur + rest}
    ev_recal = LocalEvaluator(s.analysis, to_torch(s.analysis, seed=s.seed), s.splits,
                              EvalConfig(images=None, bn_batches=args.bn_batches, bn_batch_size=128, seed=s.seed))
    ev_plain = LocalEvaluator(s.analysis, to_torch(s.analysis, seed=s.seed), s.splits,
                              EvalConfig(images=None, recalibrate_bn=False, seed=s.seed))
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    out = Path(args.out or OUT / f"proxy__{s.model.stem}__macs{s.target}.json")
    stored = _stored_targets(args, masks, s)

    def save() -> dict[str, float]:  # after every mask: a stopped run keeps what it measured
        target_vals = [r["target_test_top1"] for r in rows]
        tiers = [k for k in rows[0] if k.startswith(("masked_", "tier2_", "retest_")) and not k.endswith("_seconds")]
        rho = {t: spearman([r[t] for r in rows], target_vals) for t in tiers}
        cost = {t: float(np.mean([r.get(f"{t}_seconds", r["tier1_seconds"] if t.startswith("masked") else 0.0)
                                  for r in rows])) for t in tiers}
        _write(out, {"kind": "proxy", "model": str(s.model), "target_macs": s.target, "seed": s.seed,
                     "masks": len(rows), "masks_planned": len(masks),
                     "settings": {k: v for k, v in vars(args).items() if k != "func"}, "note": args.note,
                     "spearman": rho, "mean_seconds_tier1_all_image_counts_or_tier2": cost,
                     "seconds": time.perf_counter() - t_start, "rows": rows,
                     "target": f"test top-1 on {args.test_images} t10k images after "
                               + ("one full distillation epoch of every training image, batch 64, lr "
                                  "0.01 (benchmarks.run's protocol)" if args.protocol_finetune else
                                  f"{args.finetune_steps} distillation steps of 64 images")
                               + " (BatchNorm re-estimated under the mask first)"})
        return rho

    rho: dict[str, float] = {}
    for name, keep in masks.items():
        t0 = time.perf_counter()
        row: dict[str, Any] = {"mask": name, "macs": s.analysis.cost.macs(keep) / s.analysis.macs,
                               "keep_bits": np.packbits(keep).tobytes().hex()}  # a rerun can reuse the mask
        for n in args.tier_images:
            row[f"masked_bn_{n}"] = ev_recal.evaluate([keep], images=n)[0]
        row[f"masked_nobn_{max(args.tier_images)}"] = ev_plain.evaluate([keep], images=max(args.tier_images))[0]
        row["tier1_seconds"] = time.perf_counter() - t0
        for steps in args.tier2_steps:
            tier2 = short_finetune(s, keep, steps, 0, s.seed, lr=args.tier2_lr)
            row[f"tier2_{steps}steps"] = tier2["val_after"]
            row[f"tier2_{steps}steps_seconds"] = tier2["seconds"]
        if args.retest_seed is not None:  # the target's own noise: the same fine-tune, another seed
            from benchmarks.run import Protocol

            retest = short_finetune(s, keep, None, args.test_images, args.retest_seed, lr=Protocol().finetune_lr)
            row[f"retest_seed{args.retest_seed}"] = retest["test_top1"]
            row[f"retest_seed{args.retest_seed}_seconds"] = retest["seconds"]
        if name in stored:  # the target measured by an earlier run of the same masks
            row.update(stored[name])
        elif args.protocol_finetune:  # the benchmark protocol's fine-tune: one full epoch, its lr
            from benchmarks.run import Protocol

            target = short_finetune(s, keep, None, args.test_images, s.seed, lr=Protocol().finetune_lr)
        else:
            target = short_finetune(s, keep, args.finetune_steps, args.test_images, s.seed)
        if name not in stored:
            row["target_test_top1"] = target["test_top1"]
            row["target_val"] = target["val_after"]
            row["target_seconds"] = target["seconds"]
        rows.append(row)
        rho = save()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    ev_recal.close()
    ev_plain.close()
    print(json.dumps(rho, indent=1))
    return out


def _stored_targets(args: argparse.Namespace, masks: dict[str, np.ndarray], s: Setup) -> dict[str, dict[str, Any]]:
    """`--targets-from FILE`: the targets of an earlier proxy run, by mask name. Its stored masks
    replace this run's (`keep_bits`); without them the masks are made again from the same seed and
    settings, and one whose MACs differ from the stored row is an error."""
    if not args.targets_from:
        return {}
    d = json.loads(Path(args.targets_from).read_text())
    if all("keep_bits" in r for r in d["rows"]):
        n = len(s.analysis.full_keep())
        masks.clear()
        masks.update({r["mask"]: np.unpackbits(np.frombuffer(bytes.fromhex(r["keep_bits"]), np.uint8))[:n].astype(bool)
                      for r in d["rows"]})
    for key in ("seed", "masks", "prior_samples"):  # only matters when the masks are made again
        if "keep_bits" not in d["rows"][0] and d["settings"][key] != getattr(args, key):
            raise SystemExit(f"--targets-from {args.targets_from}: its {key} is {d['settings'][key]}, "
                             f"this run's {getattr(args, key)}: the masks would differ")
    out: dict[str, dict[str, Any]] = {}
    for r in d["rows"]:
        macs = s.analysis.cost.macs(masks[r["mask"]]) / s.analysis.macs
        if abs(macs - r["macs"]) > 1e-9:
            raise SystemExit(f"--targets-from: mask {r['mask']} has {macs:.6f} of the MACs now, "
                             f"{r['macs']:.6f} there")
        out[r["mask"]] = {k: r[k] for k in ("target_test_top1", "target_val", "target_seconds")}
    return out


# -- comparison -------------------------------------------------------------------------------
SEARCH_LEARNERS = ("ppo", "prior", "random", "cem")


def search_mask(s: Setup, scores: dict[str, np.ndarray], options: dict[str, Any], eval_images: int,
                bn_batches: int) -> tuple[np.ndarray, dict[str, Any]]:
    from onnxprune.search import Budget, BudgetMeter, EvalConfig, LocalEvaluator, SearchConfig, SearchContext
    from onnxprune.search.gat_ppo import run
    from onnxprune.torchcopy import to_torch

    copy = to_torch(s.analysis, seed=s.seed)
    cfg = SearchConfig(budget=Budget("macs", s.target), seed=s.seed, progress=False, options=options,
                       eval=EvalConfig(images=eval_images, bn_batches=bn_batches, bn_batch_size=128, seed=s.seed))
    ev = LocalEvaluator(s.analysis, copy, s.splits, cfg.eval)
    try:
        ctx = SearchContext("gat-ppo", s.analysis, ev, BudgetMeter(s.analysis, cfg.budget), scores, cfg, copy, s.splits)
        t0 = time.perf_counter()
        result = run(ctx)
        info = {"search_seconds": time.perf_counter() - t0, "summary": result.summary,
                "curve": [u["mean_proxy"] for u in result.trajectory.meta["updates"]],
                "candidates": len(result.trajectory.records)}
        return result.keep, info
    finally:
        ev.close()


def compare(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    out = Path(args.out or OUT / f"compare__{Path(args.model).stem}__macs{args.target}.json")
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"runs": []}
    done = {(r["seed"], r["method"]) for r in data["runs"]}
    data.update(kind="compare", model=str(args.model), target_macs=args.target, note=LOAD_NOTE,
                settings={k: v for k, v in vars(args).items() if k != "func"})
    base = {"episodes": args.episodes, "batch": args.batch, "gat_backend": "torch", "pretrain_steps": 100}
    variants: dict[str, dict[str, Any]] = {f"gat-ppo-{lr}" if lr != "ppo" else "gat-ppo": {"learner": lr}
                                           for lr in SEARCH_LEARNERS}
    for extra in args.ablations:
        key, _, value = extra.partition("=")
        variants[f"gat-ppo[{extra}]"] = {key: value}
    for seed in args.seeds:
        s = load(Path(args.model), args.target, seed, args.val_images)
        scores = scores_of(s)
        masks = heuristic_masks(s, scores)
        wanted = [m for m in args.methods if m in masks] + [v for v in variants if v in args.methods or
                                                                  v.startswith("gat-ppo[")]
        for method in wanted:
            if (seed, method) in done:
                continue
            info: dict[str, Any] = {}
            if method in masks:
                keep = masks[method]
            else:
                keep, info = search_mask(s, scores, {**base, **variants[method]}, args.eval_images, args.bn_batches)
            res = short_finetune(s, keep, args.finetune_steps, args.test_images, seed)
            run = {"seed": seed, "method": method, "macs": s.analysis.cost.macs(keep) / s.analysis.macs, **res,
                   **info, "ratios": [round(float(keep[g.unit_slice].mean()), 4) for g in s.analysis.prunable()]}
            data["runs"].append(run)
            _write(out, data)
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed} {method}: test {res['test_top1']:.4f} "
                  f"macs {run['macs']:.3f} {info.get('search_seconds', 0):.0f}s search", flush=True)
    return out


# -- report -----------------------------------------------------------------------------------
def report(_args: argparse.Namespace) -> Path:
    lines = ["# gat-ppo study (issue 14)", "",
             "Generated by `python -m benchmarks.gat_ppo_study report` from `benchmarks/results/gat_ppo/*.json`.",
             f"Unless a section says otherwise, numbers were {LOAD_NOTE}.", ""]
    for planted in sorted(OUT.glob("planted*.json")):  # planted.json (session 5), then by session
        d = json.loads(planted.read_text())
        rows = d["rows"]
        where = "" if "machine" not in d else f" Machine: {d['machine']}; {d.get('note', '')}."
        if not any("before session 11" in r["variant"] for r in rows):
            where += " Made before session 11: gat-ppo's defaults were then the categorical head and entropy 0.01."
        lines += [f"## Planted problem (synthetic proxy, digits test model): `{planted.name}`", "",
                  f"`python -m benchmarks.gat_ppo_planted` (`{planted.relative_to(ROOT)}`): thinning one group costs "
                  f"everything, another nothing; optimum {d['optimum']}. {d['settings']['episodes']} candidates per run, "
                  f"prior strength {d['settings']['prior']}, seeds {d['settings']['seeds']}.{where}", "",
                  "| variant | best proxy (mean) | planted answer found | mean proxy first update -> last two |",
                  "|---|---|---|---|"]
        for name in dict.fromkeys(r["variant"] for r in rows):
            rs = [r for r in rows if r["variant"] == name]
            lines.append(f"| {name} | {np.mean([r['best'] for r in rs]):.3f} | {sum(r['found'] for r in rs)}/{len(rs)} | "
                         f"{np.mean([r['first_mean'] for r in rs]):.3f} -> {np.mean([r['last_mean'] for r in rs]):.3f} |")
        lines.append("")
    for path in sorted(OUT.glob("proxy__*.json")):
        d = json.loads(path.read_text())
        st = d["settings"]
        partial = "" if d["masks"] >= d.get("masks_planned", d["masks"]) else \
            f" (of {d['masks_planned']} planned: the run was stopped by its time limit)"
        lines += [f"## Proxy validation: {Path(d['model']).name}, {d['target_macs']:g} of the MACs, {d['masks']} masks"
                  f"{partial}",
                  "", f"Target: {d['target']}. Masks: heuristics, random per-group allocations, samples of "
                  f"gat-ppo's prior, random channels (`{path.relative_to(ROOT)}`)."
                  + ("" if d.get("note", LOAD_NOTE) == LOAD_NOTE else f" Conditions: {d['note']}."), "",
                  "| proxy | Spearman rho vs target | rho, better half of the masks | mean seconds per mask |",
                  "|---|---|---|---|"]
        tv = [r["target_test_top1"] for r in d["rows"]]
        top = [r for r in d["rows"] if r["target_test_top1"] >= float(np.median(tv))]  # where a search decides
        for tier, rho in d["spearman"].items():
            half = spearman([r[tier] for r in top], [r["target_test_top1"] for r in top])
            lines.append(f"| {tier} | {rho:.3f} | {half:.3f} (n={len(top)}) | "
                         f"{d['mean_seconds_tier1_all_image_counts_or_tier2'][tier]:.1f} |")
        lines += ["", f"Target spread: {min(tv):.4f} to {max(tv):.4f} (std {np.std(tv):.4f}). "
                  f"tier 1 seconds are for all image counts of one mask together; BatchNorm re-estimated on "
                  f"{st['bn_batches']} x 128 train images; tier 2 = validation top-1 on {st['val_images']} images "
                  f"after N distillation steps of 64 images (tier2_Nsteps; lr {st.get('tier2_lr') or 'the default, 0.01'})"
                  + (f"; retest = the target's fine-tune again with seed {st['retest_seed']} (its rho is the "
                     "target's own test-retest agreement: how far its noise lets any proxy agree)" if st.get("retest_seed") is not None
                     else "")
                  + (f"; targets reused from `{st['targets_from']}`" if st.get("targets_from") else "") + ".", ""]
    for path in sorted(OUT.glob("compare__*.json")):
        d = json.loads(path.read_text())
        st = d["settings"]
        runs = d["runs"]
        methods = list(dict.fromkeys(r["method"] for r in runs))
        seeds = sorted({r["seed"] for r in runs})
        by = {(r["seed"], r["method"]): r for r in runs}
        lines += [f"## Comparison: {Path(d['model']).name}, {d['target_macs']:g} of the MACs, seeds {seeds}", "",
                  f"Short fine-tune for every method: {st['finetune_steps']} distillation steps of 64 images; test "
                  f"top-1 on the first {st['test_images']} t10k images. Searches: {st['episodes']} candidates "
                  f"(batch {st['batch']}), proxy on {st['eval_images']} validation images with BatchNorm "
                  f"re-estimated on {st['bn_batches']} x 128 train images (`{path.relative_to(ROOT)}`).", "",
                  "This short-fine-tune comparison was made before candidates were generated at rounded widths "
                  "and before the 128-image proxy became the default; the comparison at the benchmark "
                  "protocol's full fine-tune (one epoch, 5 paired seeds, gat-ppo's controls included) is in "
                  "BENCHMARKS.md (`python -m benchmarks.run`).", "",
                  "| method | mean test top-1 | per seed | gat-ppo minus method, paired (mean ± s.e.) | MACs | search s |",
                  "|---|---|---|---|---|---|"]
        for m in methods:
            vals = [by[(sd, m)]["test_top1"] for sd in seeds if (sd, m) in by]
            diffs = [by[(sd, "gat-ppo")]["test_top1"] - by[(sd, m)]["test_top1"] for sd in seeds
                     if (sd, m) in by and (sd, "gat-ppo") in by]
            if m == "gat-ppo" or not diffs:
                dtxt = "-"
            else:
                se = float(np.std(diffs, ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
                dtxt = f"{np.mean(diffs):+.4f} ± {se:.4f} (n={len(diffs)})"
            macs = np.mean([by[(sd, m)]["macs"] for sd in seeds if (sd, m) in by])
            secs = [by[(sd, m)].get("search_seconds") for sd in seeds if (sd, m) in by]
            stxt = f"{np.mean(secs):.0f}" if all(x is not None for x in secs) else "-"
            lines.append(f"| {m} | {np.mean(vals):.4f} | {', '.join(f'{v:.4f}' for v in vals)} | {dtxt} | "
                         f"{macs:.3f} | {stxt} |")
        curves = [(r["seed"], r["method"], r["curve"]) for r in runs if r.get("curve")]
        if curves:
            lines += ["", "Mean proxy per update (learning curve) of each search:", ""]
            for sd, m, c in curves:
                lines.append(f"- seed {sd} {m}: " + ", ".join(f"{v:.3f}" for v in c if v is not None))
        lines.append("")
    from benchmarks.gat_ppo_transfer import section as transfer_section

    for path in sorted(OUT.glob("transfer__*.json")):  # python -m benchmarks.gat_ppo_transfer
        lines += transfer_section(path)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines) + "\n")
    return DOC


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(required=True)
    common: list[tuple[str, dict[str, Any]]] = [
        ("--model", {"default": "/work/assets/resnet20/resnet20_folded.onnx"}),
        ("--target", {"type": float, "default": 0.5}),
        ("--val-images", {"type": int, "default": 1000}),
        ("--test-images", {"type": int, "default": 2000}),
        ("--finetune-steps", {"type": int, "default": 32}),
        ("--bn-batches", {"type": int, "default": 2}),
        ("--threads", {"type": int, "default": 2}),
        ("--out", {"default": None}),
    ]
    p = sub.add_parser("proxy")
    for flag, kw in common:
        p.add_argument(flag, **kw)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--masks", type=int, default=30)
    p.add_argument("--prior-samples", type=int, default=6)
    p.add_argument("--tier-images", type=int, nargs="+", default=[128, 256, 512, 1000])
    p.add_argument("--tier2-steps", type=int, nargs="*", default=[8])
    p.add_argument("--tier2-lr", type=float, default=None, help="tier 2's learning rate (default: the fine-tune's)")
    p.add_argument("--retest-seed", type=int, default=None,
                   help="also repeat the protocol fine-tune with this seed: the target's own noise")
    p.add_argument("--targets-from", default=None,
                   help="reuse the targets of an earlier proxy run (same seed, masks, prior samples)")
    p.add_argument("--note", default=LOAD_NOTE, help="how the machine was shared, recorded in the result")
    p.add_argument("--protocol-finetune", action="store_true",
                   help="target: test top-1 after the benchmark protocol's fine-tune (one full epoch; minutes per mask)")
    p.set_defaults(func=proxy_study)
    c = sub.add_parser("compare")
    for flag, kw in common:
        c.add_argument(flag, **kw)
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--methods", nargs="+", default=["l1-uniform", "taylor-global", "taylor-global-cost", "gat-ppo",
                                                    "gat-ppo-prior", "gat-ppo-random", "gat-ppo-cem"])
    c.add_argument("--ablations", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra gat-ppo variants, e.g. action=blocks reward=self-competition")
    c.add_argument("--episodes", type=int, default=48)
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--eval-images", type=int, default=256)
    c.set_defaults(func=compare)
    r = sub.add_parser("report")
    r.set_defaults(func=report)
    args = ap.parse_args()
    print(args.func(args))


if __name__ == "__main__":
    main()
