"""BENCHMARKS.md, results.json and the PNG plots, from the stored runs of `benchmarks.run`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "runs"
METHOD_ORDER = ("l1-uniform", "taylor-global", "random", "torch-pruning", "rl-pruner", "rl-pruner-nopost", "sacp",
                "gat-ppo")
TARGET_ORDER = ("sparsity-0.25", "sparsity-0.5", "sparsity-0.75", "flops-0.5")
COLORS = {"l1-uniform": "tab:blue", "taylor-global": "tab:orange", "random": "tab:gray",
          "torch-pruning": "tab:purple", "rl-pruner": "tab:brown", "rl-pruner-nopost": "tab:pink", "sacp": "tab:olive", "gat-ppo": "tab:red"}


def load_runs() -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    originals, runs = {}, []
    for path in sorted(RUNS.glob("*.json")):
        rec = json.loads(path.read_text())
        if path.stem.endswith("__original"):
            originals[rec["model"]] = rec
        else:
            runs.append(rec)
    return originals, runs


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


def _mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _fmt_acc(values: list[float]) -> str:
    m, s, n = _mean_std(values)
    if n == 0:
        return "-"
    return f"{100 * m:.2f}" + (f" ± {100 * s:.2f} (n={n})" if n > 1 else "")


def _group(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        out[(r["model"], r["target"], r["method"])].append(r)
    return out


def _ordered(items: Iterable[str], order: tuple[str, ...]) -> list[str]:
    items = set(items)
    return [x for x in order if x in items] + sorted(items - set(order))


def plots(originals: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    ok = [r for r in runs if "error" not in r]
    models = _ordered({r["model"] for r in ok}, tuple(originals))
    for metric, ylabel, fname in (("test_top1", "test top-1", "accuracy_vs_macs.png"),
                                  ("latency_b1_ms", "latency batch 1 (ms, onnxruntime CPU)", "latency_vs_macs.png")):
        if not models:
            break
        fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
        for ax, model in zip(axes[0], models):
            for method in _ordered({r["method"] for r in ok if r["model"] == model}, METHOD_ORDER):
                pts = sorted((r["macs_ratio"], r[metric]) for r in ok
                             if r["model"] == model and r["method"] == method and r.get(metric) is not None)
                if pts:
                    xs, ys = zip(*pts)
                    ax.scatter(xs, ys, s=18, c=COLORS.get(method, "black"), label=method)
            base = originals.get(model)
            if base and base.get(metric) is not None:
                ax.axhline(base[metric], ls="--", c="black", lw=0.8, label="original")
            ax.set_title(model)
            ax.set_xlabel("MACs kept (fraction)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(RESULTS / fname, dpi=100)
        plt.close(fig)
        made.append(fname)
    # layer-wise kept channels at 50% MACs, one panel per model
    flops = [r for r in ok if r["target"] == "flops-0.5" and r.get("kept")]
    fmodels = _ordered({r["model"] for r in flops}, tuple(originals))
    if fmodels:
        fig, axes = plt.subplots(len(fmodels), 1, figsize=(9, 3 * len(fmodels)), squeeze=False)
        for ax, model in zip(axes[:, 0], fmodels):
            for method in _ordered({r["method"] for r in flops if r["model"] == model}, METHOD_ORDER):
                rec = min((r for r in flops if r["model"] == model and r["method"] == method), key=lambda r: r["seed"])
                ax.plot(range(len(rec["kept"])), rec["kept"], marker=".", c=COLORS.get(method, "black"), label=method)
            ax.set_title(f"{model}: kept fraction per prunable channel group at 50% MACs")
            ax.set_xlabel("prunable group (topological order)")
            ax.set_ylabel("kept")
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7, ncol=4)
        fig.tight_layout()
        fig.savefig(RESULTS / "kept_channels.png", dpi=100)
        plt.close(fig)
        made.append("kept_channels.png")
    return made


def _verdicts(grouped: dict[tuple[str, str, str], list[dict[str, Any]]], models: list[str]) -> list[str]:
    lines = []
    for model in models:
        cell = {m: _mean_std(r.get("test_top1") for r in grouped.get((model, "flops-0.5", m), []))[0]
                for m in METHOD_ORDER}
        cell = {m: v for m, v in cell.items() if np.isfinite(v)}
        if "gat-ppo" not in cell or len(cell) < 2:
            continue
        # rl-pruner post-trains inside its search: not the same training budget as the others
        others = {m: v for m, v in cell.items() if m not in ("gat-ppo", "rl-pruner")}
        if not others:
            continue
        best = max(others, key=others.get)
        diff = 100 * (cell["gat-ppo"] - others[best])
        word = "ahead of" if diff > 0 else "behind"
        line = (f"- **{model}**: gat-ppo {100 * cell['gat-ppo']:.2f}% is {word} the best other method at equal "
                f"fine-tune budget ({best}, {100 * others[best]:.2f}%) by {abs(diff):.2f} points")
        if "rl-pruner" in cell:
            line += (f"; rl-pruner, which also post-trains between its pruning steps, reaches "
                     f"{100 * cell['rl-pruner']:.2f}%")
        lines.append(line + ".")
    return lines


def write_report(mode: str) -> Path:
    originals, runs = load_runs()
    RESULTS.mkdir(parents=True, exist_ok=True)
    made = plots(originals, runs)
    (RESULTS / "results.json").write_text(json.dumps({"originals": originals, "runs": runs}, indent=1) + "\n")
    grouped = _group(runs)
    models = _ordered({r["model"] for r in runs}, ("resnet20", "resnet56", "mobilenetv2", "vgg19_bn"))
    out = ["# Benchmarks", "",
           "Regenerated by `python -m benchmarks.run` (this file, `benchmarks/results/results.json` and the "
           "plots). Every number below was measured by that command on this machine; nothing is copied "
           "from papers.", "",
           f"- Machine: {_machine()}",
           f"- Last regenerated: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, last mode run: `{mode}`",
           f"- Commit: `{_git('rev-parse', '--short', 'HEAD')}`", "",
           "## Protocol", "",
           "- Models from `models/`, trained on Fashion-MNIST by `python -m models.train` "
           "(settings in `benchmarks/run.py::TRAINING`), exported with BatchNorm kept.",
           "- Targets: `sparsity-S` removes a fraction S of the prunable channels (uniform per group for "
           "l1-uniform, random and Torch-Pruning; global for taylor-global); the search methods get the MACs l1-uniform keeps at S as their budget "
           "(runs stored before that had a channel budget: rows marked †); `flops-0.5` keeps at most 50% of the MACs.",
           "- Same fine-tune budget for every method: knowledge distillation from the original "
           "(tau 0.7, T 4, SGD + cosine), the epochs and images per epoch given in each run record; the "
           "best validation epoch is kept. rl-pruner additionally post-trains between its pruning steps "
           "(part of that method), which the search time includes.",
           "- Test top-1: onnxruntime on Fashion-MNIST t10k (never used for search, scoring or fine-tuning). "
           "Latency: onnxruntime CPU, median of 30 runs, batch 1 and 32, default threads. "
           "Search time: scoring + search (not fine-tuning). Evaluations: masked validation passes.",
           "- Torch-Pruning 1.6: `MetaPruner` with `GroupMagnitudeImportance(p=1)` (group L1), uniform "
           "ratio (bisection to the MACs target, measured with onnxprune's cost model), classifier ignored, "
           "on the `models/` PyTorch model loaded with the ONNX weights.", ""]
    out += ["## Original models", "",
            "| model | test top-1 | MACs | params | latency b1 (ms) | latency b32 (ms) |",
            "|---|---|---|---|---|---|"]
    for model in models:
        o = originals.get(model, {})
        out.append(f"| {model} | {100 * o.get('test_top1', float('nan')):.2f} | {o.get('macs', 0) / 1e6:.1f} M | "
                   f"{o.get('params', 0) / 1e6:.3f} M | {o.get('latency_b1_ms', float('nan')):.2f} | "
                   f"{o.get('latency_b32_ms', float('nan')):.2f} |")
    out.append("")
    verdicts = _verdicts(grouped, models)
    if verdicts:
        out += ["## gat-ppo against the others at 50% MACs", ""] + verdicts + [
            "", "Compare the gaps with the seed spread in the tables (± is the standard deviation over seeds, "
            "where several were run): a gap smaller than that is not a ranking.", ""]
    for model in models:
        base = originals.get(model, {})
        out += [f"## {model}", "",
                "| target | method | test top-1 (%) | MACs | params | latency b1 | latency b32 | search (s) | evals |",
                "|---|---|---|---|---|---|---|---|---|"]
        marked = False
        for target in _ordered({k[1] for k in grouped if k[0] == model}, TARGET_ORDER):
            for method in _ordered({k[2] for k in grouped if k[0] == model and k[1] == target}, METHOD_ORDER):
                recs = grouped[(model, target, method)]
                errors = [r["error"] for r in recs if "error" in r]
                good = [r for r in recs if "error" not in r]
                if not good:
                    out.append(f"| {target} | {method} | failed: {errors[0][:80]} | | | | | | |")
                    continue

                def mean(key: str) -> float:
                    return _mean_std(r.get(key) for r in good)[0]

                ref = [r["macs_ratio"] for r in grouped.get((model, target, "l1-uniform"), []) if "macs_ratio" in r]
                mark = " †" if (target.startswith("sparsity") and ref and
                                abs(mean("macs_ratio") / np.mean(ref) - 1) > 0.02) else ""
                marked = marked or bool(mark)
                b1 = base.get("latency_b1_ms", float("nan")) / mean("latency_b1_ms")
                b32 = base.get("latency_b32_ms", float("nan")) / mean("latency_b32_ms")
                evals = _mean_std(r.get("search_summary", {}).get("total_evaluations", r.get("evaluations"))
                                  for r in good)[0]
                out.append(f"| {target} | {method}{mark} | {_fmt_acc([r['test_top1'] for r in good])} | "
                           f"{mean('macs_ratio'):.3f} | {mean('params_ratio'):.3f} | {b1:.2f}x | {b32:.2f}x | "
                           f"{mean('search_s'):.1f} | {'' if not np.isfinite(evals) else int(evals)} |")
        out.append("")
        if marked:
            out += ["† MACs differ from l1-uniform's at this channel sparsity by more than 2%: not an equal-cost "
                    "comparison (newer runs give the search methods l1-uniform's MACs as their budget).", ""]
        settings = sorted({(r["method"], r.get("eval_images", 500 if "evaluations" in r else None), json.dumps(r.get("search_options", {}), sort_keys=True),
                            r.get("finetune_epochs"), r.get("finetune_images"))
                           for r in runs if r["model"] == model and "error" not in r}, key=str)
        budgets = sorted({(e, i) for _, _, _, e, i in settings})
        searched = [f"{m} eval-images {ev}" + (f" options {o}" if o != "{}" else "")
                    for m, ev, o, _, _ in settings if ev is not None]
        out.append("Fine-tune budget: " + "; ".join(f"{e} epoch(s) x {i} images" for e, i in budgets) + "."
                   + (" Search settings: " + "; ".join(searched) + "." if searched else ""))
        out.append("")
    sacp = [r for r in runs if r.get("method") == "sacp" and "error" not in r]
    if sacp:
        out += ["## SACP: does embedding similarity rank candidates by accuracy?", "",
                "Rank correlation between the similarity ranking and the measured (masked, BN re-calibrated) "
                "validation accuracy of the evaluated top-m candidates.", "",
                "| model | target | Spearman | Kendall |", "|---|---|---|---|"]
        for r in sacp:
            s = r.get("search_summary", {})
            out.append(f"| {r['model']} | {r['target']} | {s.get('spearman', float('nan')):.3f} | "
                       f"{s.get('kendall', float('nan')):.3f} |")
        out.append("")
    coverage = RESULTS / "zoo_coverage.md"
    if coverage.exists():
        out += [coverage.read_text().strip(), ""]
    if made:
        out += ["## Plots", ""] + [f"![{m}](benchmarks/results/{m})" for m in made] + [""]
    out += ["## Commands", "", "```", "python -m benchmarks.run --mode quick      # minutes",
            "python -m benchmarks.run --mode full       # hours; resumable, stored runs are skipped",
            "python -m benchmarks.run --mode full --zoo # plus the torchvision zoo coverage",
            "python -m benchmarks.run --report-only     # rebuild this file", "```", ""]
    path = ROOT / "BENCHMARKS.md"
    path.write_text("\n".join(out))
    return path


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
