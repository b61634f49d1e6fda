"""Paired-seed ablations of a search method's options: the same model, budget, data split and
seed for every variant, so that differences between variants are paired.

    python -m benchmarks.ablations --method rl-pruner --model /work/assets/resnet20/resnet20_bn.onnx \
        --target-flops 0.5 --seeds 0 1 2 --eval-images 300 \
        --variant old:noise=0.0016,horizon=1 --variant v04:noise=0.04,horizon=1 \
        --out benchmarks/results/ablations/rl_pruner_r20.json

Every (variant, seed) run is one record of the output JSON (written after each run; a run that is
already there is skipped, so an interrupted ablation continues). A record holds the options, the
searched mask's top-1 (after the framework's `--round-to`) on the whole validation split (masked copy, BatchNorm re-estimated, or the
method's own trained model when it returns one), its budget / MACs / params ratios, the number of
evaluations and the wall time. The summary holds, per variant, the mean and standard error over
seeds and the paired difference to the first variant.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _commit() -> str | None:
    """The git commit of the code that ran (with "+dirty" when files differ), or None."""
    import subprocess

    try:
        here = Path(__file__).resolve().parent
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    opts: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        opts[key.strip()] = value.strip()
    return name, opts


def run_one(method: str, model: str, budget: tuple[str, float], seed: int, eval_images: int,
            options: dict[str, Any], bn_batches: int, data: str = "fashion-mnist",
            round_to: str = "auto") -> dict[str, Any]:
    """One seeded search; its record."""
    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze
    from onnxprune.search import Budget, EvalConfig, SearchConfig
    from onnxprune.search.runner import run_search
    from onnxprune.torchcopy import to_torch

    analysis = analyze(model)
    splits = load_dataset(data, input_shape=analysis.graph.shapes[analysis.graph.inputs[0].name], seed=seed)
    cfg = SearchConfig(budget=Budget(*budget), seed=seed, progress=False, options=dict(options), round_to=round_to,
                       eval=EvalConfig(images=eval_images, bn_batches=bn_batches, seed=seed))
    t0 = time.perf_counter()
    result = run_search(method, analysis, to_torch(analysis, seed=seed), splits, cfg)
    seconds = time.perf_counter() - t0
    keep = result.keep
    summary = result.summary
    return {"seed": seed, "options": options, "val_top1": result.val_top1,
            "macs_ratio": analysis.cost.macs(keep) / analysis.macs,
            "params_ratio": analysis.cost.params(keep) / analysis.params,
            "budget_ratio": summary.get("budget_ratio"),
            "evaluations": summary.get("total_evaluations", result.evaluations),
            "seconds": round(seconds, 1), "summary": summary}


def summarize(records: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per variant: mean, standard error; paired difference to the first variant."""
    by = {n: {r["seed"]: r for r in records if r["variant"] == n} for n in names}
    out: dict[str, Any] = {}
    ref = by[names[0]]
    for n in names:
        accs = np.array([r["val_top1"] for r in by[n].values()])
        entry: dict[str, Any] = {"runs": int(accs.size)}
        if accs.size:
            entry.update(mean=float(accs.mean()),
                         se=float(accs.std(ddof=1) / math.sqrt(accs.size)) if accs.size > 1 else None,
                         evaluations=float(np.mean([r["evaluations"] for r in by[n].values()])),
                         seconds=float(np.mean([r["seconds"] for r in by[n].values()])),
                         macs_ratio=float(np.mean([r["macs_ratio"] for r in by[n].values()])))
        seeds = sorted(set(ref) & set(by[n]))
        if n != names[0] and seeds:
            d = np.array([by[n][s]["val_top1"] - ref[s]["val_top1"] for s in seeds])
            entry["paired_diff_vs_" + names[0]] = {
                "mean": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None,
                "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "seeds": seeds}
        out[n] = entry
    return out


def table(path: Path, extra: tuple[str, ...] = ()) -> str:
    """A markdown table of a results file: per variant, per-seed top-1, mean +/- se, paired
    difference to the first variant, evaluations, seconds; `extra` summary keys as mean columns."""
    data = json.loads(path.read_text())
    names = list(data["variants"])
    seeds = sorted({r["seed"] for r in data["records"]})
    head = ["variant", "options"] + [f"seed {s}" for s in seeds] + ["mean ± se", f"paired diff vs {names[0]}",
                                                                    "evals", "s"] + list(extra)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summ = data["summary"]
    for n in names:
        recs = {r["seed"]: r for r in data["records"] if r["variant"] == n}
        e = summ.get(n, {})
        opts = ", ".join(f"{k}={v}" for k, v in data["variants"][n].items())
        cells = [n, opts] + [f"{100 * recs[s]['val_top1']:.2f}" if s in recs else "-" for s in seeds]
        cells.append(f"{100 * e['mean']:.2f} ± {100 * (e.get('se') or 0):.2f}" if "mean" in e else "-")
        d = e.get("paired_diff_vs_" + names[0])
        cells.append(f"{100 * d['mean']:+.2f} ± {100 * (d.get('se') or 0):.2f} ({d['wins']}/{len(d['seeds'])} up)"
                     if d else "")
        cells += [f"{e.get('evaluations', float('nan')):.0f}", f"{e.get('seconds', float('nan')):.0f}"]
        for key in extra:
            vals = [r["summary"].get(key) for r in recs.values() if r["summary"].get(key) is not None]
            cells.append(f"{np.mean(vals):.3f}" if vals else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", metavar="RESULTS.json", help="only print the markdown table of a results file")
    ap.add_argument("--columns", nargs="*", default=[], help="summary keys shown as extra columns (--table)")
    if "--table" in sys.argv:
        args = ap.parse_args()
        print(table(Path(args.table), tuple(args.columns)))
        return
    ap.add_argument("--method", required=True)
    ap.add_argument("--model", required=True)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--target-flops", type=float)
    group.add_argument("--sparsity", type=float)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--eval-images", type=int, default=300)
    ap.add_argument("--bn-batches", type=int, default=2)
    ap.add_argument("--round-to", default="auto", help="the result's width multiple (auto, K, or 1: exact widths)")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:KEY=VALUE,...",
                    help="a variant's options (repeatable; the first is the reference)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    budget = ("macs", args.target_flops) if args.target_flops is not None else ("channels", 1.0 - args.sparsity)
    variants = [_parse_variant(v) for v in args.variant]
    out = Path(args.out)
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"records": []}
    data.update(method=args.method, model=args.model, data=args.data, budget={"kind": budget[0], "target": budget[1]},
                eval_images=args.eval_images, bn_batches=args.bn_batches, round_to=args.round_to,
                seeds=sorted(set(data.get("seeds", [])) | set(args.seeds)),
                variants={n: o for n, o in variants}, note=args.note,
                machine=f"{platform.machine()}, {torch.get_num_threads()} torch thread, shared 2-core machine",
                command="python -m benchmarks.ablations " + " ".join(sys.argv[1:]), commit=_commit())
    done = {(r["variant"], r["seed"]) for r in data["records"]}
    for seed in args.seeds:  # seed-major: a partial run still has paired seeds
        for name, opts in variants:
            if (name, seed) in done:
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {args.method} {name} seed {seed} {opts}", flush=True)
            rec = run_one(args.method, args.model, budget, seed, args.eval_images, opts, args.bn_batches, args.data,
                          args.round_to)
            rec["variant"], rec["commit"] = name, data["commit"]
            data["records"].append(rec)
            data["summary"] = summarize(data["records"], [n for n, _ in variants])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, indent=1, default=float) + "\n")
            print(f"    val_top1 {rec['val_top1']:.4f} macs {rec['macs_ratio']:.3f} evals {rec['evaluations']} "
                  f"{rec['seconds']}s", flush=True)
    data["summary"] = summarize(data["records"], [n for n, _ in variants])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=float) + "\n")
    print(json.dumps(data["summary"], indent=1))


if __name__ == "__main__":
    main()
