"""BENCHMARKS.md, results.json and the PNG plots, from the stored runs of `benchmarks.run` only.

Every number comes from a file under `benchmarks/results/`; every setting shown is read from the
run records (never filled in here). Runs of the protocol that are not stored are listed as missing,
with the reason when one is known; runs made on another base file than the current one are left
out and counted as stale.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from onnxprune import plotstyle

from benchmarks import run as bench

ROOT = bench.ROOT
RESULTS = bench.RESULTS
RUNS = bench.RUNS
METHOD_ORDER = bench.METHODS
COLORS = {"l1-uniform": "tab:blue", "taylor-global": "tab:orange", "random": "tab:gray",
          "tp-l1-local": "tab:purple", "tp-l1-global": "mediumpurple", "tp-taylor-local": "tab:cyan",
          "tp-taylor-global": "tab:green", "rl-pruner": "tab:brown", "rl-pruner-nopost": "tab:pink",
          "sacp": "tab:olive", "gat-ppo": "tab:red"}
Cell = tuple[str, str, str, str]  # model, form, target, method


def load_runs() -> tuple[dict[tuple[str, str], dict[str, Any]], list[dict[str, Any]]]:
    """(originals by (model, form), run records) of every stored JSON file."""
    originals, runs = {}, []
    for path in sorted(RUNS.glob("*.json")):
        rec = json.loads(path.read_text())
        rec["_file"] = path.name
        if path.stem.endswith("__original"):
            originals[(rec["model"], rec.get("form", "bn"))] = rec
        else:
            runs.append(rec)
    return originals, runs


LATENCY_SLACK = 0.1  # latency rows: timing noise is larger than the MACs rounding
MACS_SLACK = 0.02  # a MACs-budget row keeping less than (1 - this) of its budget is marked unequal


def macs_mark(target: str, macs_ratio: float) -> str:
    """The mark "†" when a `macs-F` row keeps less than (1 - MACS_SLACK) * F of the MACs (it is not
    compared at the cost the others could use), else ""; other targets are never marked."""
    kind, _, value = target.partition("-")
    return "†" if kind == "macs" and macs_ratio < (1.0 - MACS_SLACK) * float(value) else ""


def latency_mark(target: str, speedup_one_thread: float | None) -> str:
    """For a `latency-F` row, by its quiet one-thread batch-1 latency as a share of the original's
    (1 / speed-up): "‡" when over F (it used more latency than its budget), "†" when under
    (1 - LATENCY_SLACK) * F (compared at less latency than the others could use), else ""."""
    kind, _, value = target.partition("-")
    if kind != "latency" or speedup_one_thread is None:
        return ""
    share = 1.0 / speedup_one_thread
    return "‡" if share > float(value) else "†" if share < (1.0 - LATENCY_SLACK) * float(value) else ""


def mean_se(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (nan for one value) and count of the finite values."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se, int(v.size)


def _pct(values: list[float | None]) -> str:
    m, se, n = mean_se(values)
    if n == 0:
        return "-"
    return f"{100 * m:.2f}" + (f" ± {100 * se:.2f}" if n > 1 else "")


def paired_diff(runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]], key: str,
                same_machine: bool = False) -> tuple[float, float, int]:
    """Mean and SE of a - b over the seeds both have (paired by seed); `same_machine`: only pairs
    made on the same machine (a latency target is a share of the measuring machine's latency)."""
    a = {r["seed"]: r.get(key) for r in runs_a}
    b = {r["seed"]: r.get(key) for r in runs_b}
    if same_machine:
        where = {r["seed"]: r.get("machine") for r in runs_b}
        a = {s: v for s, v in a.items() if s in where and where[s] == _machine_of(runs_a, s)}
    d = [a[s] - b[s] for s in sorted(set(a) & set(b)) if a[s] is not None and b[s] is not None]
    return mean_se(d)


NO_PAIRS = "no paired seeds on the same machine"


def _diff_text(runs: list[dict[str, Any]], refs: list[dict[str, Any]], target: str) -> str:
    """The paired difference of fine-tuned accuracy (points) of `runs` minus `refs`, as a table cell."""
    dm, dse, dn = paired_diff(runs, refs, "test_top1", same_machine=target.startswith("latency-"))
    if dn == 0:
        return NO_PAIRS
    return f"{100 * dm:+.2f}" + (f" ± {100 * dse:.2f}" if dn > 1 else "") + f" (n={dn})"


def _diff_cell(method: str, runs: list[dict[str, Any]], refs: list[dict[str, Any]], old_refs: list[dict[str, Any]],
               target: str) -> str:
    """The "vs gat-ppo" cell of `method`: against gat-ppo's runs `refs`, or, where the cell has none
    comparable (not re-run since gat-ppo's session-11 defaults, or only on another machine for a
    latency target), against gat-ppo-v1's `old_refs`."""
    ref = bench.REFERENCE
    if method == ref:
        return "reference"
    text = _diff_text(runs, refs, target) if refs else None
    if old_refs and method != bench.GAT_PPO_V1 and text in (None, NO_PAIRS):
        return f"{ref} {text or 'missing'}; vs {bench.GAT_PPO_V1}: {_diff_text(runs, old_refs, target)}"
    return text or f"{ref} missing"


def _machine_of(runs: list[dict[str, Any]], seed: int) -> str | None:
    return next((r.get("machine") for r in runs if r["seed"] == seed), None)


def _machine_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Which machines made the latency-target runs (their targets are each machine's own)."""
    count: dict[str, int] = defaultdict(int)
    for r in runs:
        if str(r.get("target", "")).startswith("latency-"):
            count[r.get("machine", "unknown machine")] += 1
    if not count:
        return []
    return ["- Latency targets are a share of the original's latency measured on the machine that made the run, "
            "so the methods of a latency cell are compared (paired differences) only on runs made on the same "
            "machine: " + "; ".join(f"{n} run(s) on {m}" for m, n in sorted(count.items())) + "."]


def _legacy_latency_lines() -> list[str]:
    """Latency-target runs set aside because a later session ran on another machine."""
    out = []
    for folder in sorted(RESULTS.glob("legacy-latency-*")):
        recs = [json.loads(f.read_text()) for f in sorted((folder / "runs").glob("*.json"))]
        if not recs:
            continue
        machines = sorted({r.get("machine", "unknown machine") for r in recs})
        base_ms = [r["latency_target_check"]["original_ms"] for r in recs if r.get("latency_target_check")]
        out.append(f"{len(recs)} latency-target runs made on {', '.join(machines)} (the original's batch-1 latency "
                   f"at the target's threads {np.median(base_ms):.2f} ms there, median over the runs) are kept under "
                   f"`benchmarks/results/{folder.name}/`: the later runs were made on another machine, and a latency "
                   "target is a share of the measuring machine's latency, so the two sets are not compared.")
    return ["", *out] if out else []


def _seeds(seeds: Iterable[int]) -> str:
    s = sorted(seeds)
    if s and s == list(range(s[0], s[-1] + 1)) and len(s) > 2:
        return f"{s[0]}-{s[-1]}"
    return ", ".join(map(str, s))


def _current_sha(model: str, form: str) -> str | None:
    try:
        return bench._sha256(bench.base_path_if_present(model, form))
    except FileNotFoundError:
        return None


def _latency(rec: dict[str, Any], originals: dict[tuple[str, str], dict[str, Any]], batch: int,
             one_thread: bool = False) -> tuple[float | None, bool]:
    """(speed-up over the original at `batch`, from the quiet pass?); `one_thread`: onnxruntime
    on one thread (timed by quiet passes since session 5 only)."""
    quiet = rec.get("latency_quiet")
    if one_thread:
        return (quiet or {}).get(f"speedup_b{batch}_t1"), bool(quiet)
    if quiet:
        return quiet[f"speedup_b{batch}"], True
    base = originals.get((rec["model"], rec["form"]), {}).get("latency_run", {})
    run = rec.get("latency_run", {})
    if base.get(f"b{batch}_ms") and run.get(f"b{batch}_ms"):
        return base[f"b{batch}_ms"] / run[f"b{batch}_ms"], False
    return None, False


def _pass_sources(quiet: dict[str, Any], cells: dict[Cell, list[dict[str, Any]]]) -> list[str]:
    """What the latest quiet pass timed (stored models, rebuilt twins, the check between them) and
    the earlier passes that timed the rows it could not."""
    lines = []
    if "rebuilt" in quiet:
        lines.append(f"Of the {quiet['models']} models, {quiet['stored']} were the runs' stored pruned models and "
                     f"{quiet['rebuilt']} rebuilt twins (runs made in earlier sessions, whose pruned models were not "
                     "on this machine: the widths each run recorded, cut from its base by our rewrite keeping each "
                     "group's first channels; latency depends on the structure only).")
        check = quiet.get("rebuilt_check") or {}
        if check:
            parts = []
            for col, label in (("b1_t1", "batch 1 on one thread"), ("b1", "batch 1"), ("b32", "batch 32")):
                ratios = [c[col] for c in check.values()]
                within = sum(abs(r - 1) <= 0.1 for r in ratios) / len(ratios)
                parts.append(f"{label} {min(ratios):.2f}-{max(ratios):.2f} ({100 * within:.0f}% within 10%)")
            lines[-1] += (f" Check: each of the {len(check)} stored models was timed beside its rebuilt twin in the "
                          "same rounds; twin/stored latency " + ", ".join(parts) + ".")
        if quiet.get("not_timed"):
            why: dict[str, int] = {}
            for reason in quiet["not_timed"].values():
                why[reason] = why.get(reason, 0) + 1
            lines[-1] += " Not timed by this pass: " + "; ".join(f"{n} run(s): {r}" for r, n in sorted(why.items())) + "."
    earlier = sorted({r["latency_quiet"]["pass"] for rs in cells.values() for r in rs
                      if r.get("latency_quiet") and r["latency_quiet"].get("pass") != quiet["started"]})
    for started in earlier:
        name = bench.pass_file(started)
        old = RESULTS / "latency_passes" / name
        head = json.loads(old.read_text()) if old.exists() else None
        where = (f" (`results/latency_passes/{name}`: {head['models']} models, other processes "
                 f"{head['other_cores_busy']} cores)" if head else "")
        n = sum(1 for rs in cells.values() for r in rs if (r.get("latency_quiet") or {}).get("pass") == started)
        lines.append(f"§ {n} run(s) keep their timings from the quiet pass of {started}{where}.")
    return ["", *lines] if lines else []


def plots(originals: dict[tuple[str, str], dict[str, Any]], cells: dict[Cell, list[dict[str, Any]]],
          form: str) -> list[str]:
    """Accuracy vs MACs and vs latency per model (mean ± SE over seeds), and learning curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    models = [m for m in bench.MODELS if any(k[0] == m and k[1] == form for k in cells)]
    if models:
        fig, axes = plt.subplots(2, len(models), figsize=(4.5 * len(models) + 2, 8.5), squeeze=False, sharey=True)
        handles: dict[str, Any] = {}
        for col, model in enumerate(models):
            for row, (xlabel, xfun) in enumerate((
                    ("MACs kept (fraction of the original)", lambda r: r.get("macs_ratio")),
                    ("latency, batch 1 (fraction of the original)",
                     lambda r: (1 / s) if (s := _latency(r, originals, 1)[0]) else None))):
                ax = axes[row][col]
                for (mo, fo, target, method), recs in sorted(cells.items()):
                    if mo != model or fo != form:
                        continue
                    xm, xse, _ = mean_se(xfun(r) for r in recs)
                    ym, yse, n = mean_se(r.get("test_top1") for r in recs)
                    if n == 0 or not np.isfinite(xm):
                        continue
                    marker = {"macs-0.5": "o", "macs-0.25": "s", "latency-0.5": "^"}.get(target, "x")
                    h = ax.errorbar(xm, 100 * ym, xerr=None if np.isnan(xse) else xse,
                                    yerr=None if np.isnan(yse) else 100 * yse, fmt=marker,
                                    color=COLORS.get(method, "black"), ms=5, capsize=2)
                    handles.setdefault(method, h)
                base = originals.get((model, form))
                if base:
                    h = ax.axhline(100 * base["test_top1"], ls="--", c="black", lw=0.8)
                    handles.setdefault("original", h)
                ax.set_xlim(0, 1.05)
                ax.set_xlabel(xlabel)
                ax.grid(alpha=0.3)
                if row == 0:
                    ax.set_title(f"{model} ({form})")
                if col == 0:
                    ax.set_ylabel("test top-1 (%) after fine-tune")
        from matplotlib.lines import Line2D

        order = [m for m in (*METHOD_ORDER, "original") if m in handles]
        for target, marker in (("macs-0.5", "o"), ("macs-0.25", "s"), ("latency-0.5", "^")):
            handles[target] = Line2D([], [], ls="", marker=marker, color="gray")
            order.append(target)
        fig.legend([handles[m] for m in order], order, loc="lower center", ncol=5, fontsize=8,
                   title="mean ± standard error over seeds", title_fontsize=8)
        runs = [r for rs in cells.values() for r in rs]
        plotstyle.caption(fig, "Markers: o macs-0.5, s macs-0.25, ^ latency-0.5. Points: mean over seeds "
                               f"(seeds {_seeds({r['seed'] for r in runs})}), bars: standard error (none for one seed); "
                               "dashed: the original. " + " ".join(_protocol_lines(runs)).replace("- ", ""))
        name = f"accuracy_{form}.png"
        fig.savefig(RESULTS / name, dpi=100)
        plt.close(fig)
        made.append(name)
    # learning curves of the search methods (running best proxy of feasible candidates)
    curves = []
    for (model, fo, target, method), recs in sorted(cells.items()):
        if fo != form or method not in bench.SEARCHES:
            continue
        for r in recs:
            traj = ROOT / r.get("trajectory", "-")
            if traj.is_file():
                curves.append((model, target, method, r["seed"], json.loads(traj.read_text())))
    if curves:
        panels = sorted({(m, t) for m, t, *_ in curves})
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 1, 3.8), squeeze=False, sharey=True)
        handles = {}
        for ax, (model, target) in zip(axes[0], panels):
            for m, t, method, seed, traj in curves:
                if (m, t) != (model, target):
                    continue
                ys, best = [], float("nan")
                for rec in traj.get("records", []):
                    proxy = rec.get("proxy")
                    if proxy is not None and rec.get("feasible", True):
                        best = proxy if not np.isfinite(best) else max(best, proxy)
                    ys.append(best)
                (h,) = ax.plot(range(1, len(ys) + 1), ys, c=COLORS.get(method, "black"), lw=1)
                handles.setdefault(method, h)
            ax.set_title(f"{model} {target}")
            ax.set_xlabel("evaluated candidates")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("best feasible proxy so far")
        plotstyle.one_legend(fig, handles, METHOD_ORDER)
        plotstyle.caption(fig, "Running best proxy (masked validation top-1 on the search's evaluation images) of "
                               "the feasible candidates, one line per seed; shared y axis.")
        name = f"learning_curves_{form}.png"
        fig.savefig(RESULTS / name, dpi=100)
        plt.close(fig)
        made.append(name)
    return made


def _drift_lines() -> list[str]:
    """How far two quiet passes disagreed on the same files (`benchmarks.latency_drift`), for
    every comparison stored (`results/latency_drift*.json`), oldest first."""
    paths = sorted(RESULTS.glob("latency_drift*.json"), key=lambda p: json.loads(p.read_text())["pass_started"])
    return [line for path in paths for line in _drift_pair(path)]


def _drift_pair(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    col = d["second_over_first"]

    def agree(key: str) -> str:
        c = col[key]
        return f"{100 * c['within_10pct']:.0f}% (ratios {c['min_ratio']:.2f}-{c['max_ratio']:.2f})"

    lines = ["", f"Between two quiet passes ({d['pass_started'][0]} and {d['pass_started'][1]}; `{d['command']}`, "
             f"`results/{path.name}`), the speed-ups of the same {d['models']} pruned files agreed within 10% "
             f"for {agree('speedup_b1')} at batch 1 and {agree('speedup_b32')} at batch 32 with onnxruntime's "
             "default threads; the originals' own batch-1 times (the same files, timed in both passes) changed by "
             f"ratios {col['original_b1_ms']['min_ratio']:.2f}-{col['original_b1_ms']['max_ratio']:.2f}, within 10% "
             f"for {100 * col['original_b1_ms']['within_10pct']:.0f}% of the pairs."]
    if "speedup_b1_t1" in col:
        lines[-1] += f" On one thread the batch-1 speed-ups agreed within 10% for {agree('speedup_b1_t1')}."
    else:
        c = col["speedup_b1"]
        lines[-1] += (f" So one pass's batch-1 speed-up at the default threads can be off by a factor of up to "
                      f"{max(c['max_ratio'], 1 / c['min_ratio']):.1f}. The one-thread column was added because "
                      "the latency table's validation found one-thread timings consistent"
                      + _table_agreement() + "; it has not been compared across two passes yet.")
    return lines


def _table_agreement() -> str:
    """The latency table's whole-model agreement at one and at the default threads, from its files."""
    files = {"one thread": "latency_table__resnet20_folded__cpu__threads1.json",
             "the default threads": "latency_table__resnet20_folded__cpu.json"}
    parts = []
    for label, name in files.items():
        if (RESULTS / name).exists():
            sm = json.loads((RESULTS / name).read_text())["summary"]
            parts.append(f"{round(sm['within_10pct'] * sm['masks'])} of {sm['masks']} ResNet-20 masks within 10% "
                         f"of the table at {label} (`results/{name}`)")
    return f" ({'; '.join(parts)})" if parts else ""


def _teacher_line(runs: list[dict[str, Any]]) -> list[str]:
    """How the fine-tunes got the teacher's logits (shared per base and seed since commit 1add6ab)."""
    shared = sum(1 for r in runs if "teacher_logits" in (r.get("finetune") or {}))
    tuned = sum(1 for r in runs if r.get("finetune"))
    if not shared:
        return []
    return [f"- Teacher logits: in {shared} of the {tuned} fine-tuned runs, the original's logits on the seed's "
            "training split were computed once per base and seed and shared by the fine-tunes at that seed "
            "(`finetune.teacher_logits` in the run; `benchmarks.run.shared_teacher_logits`); the others computed "
            "them inside their fine-tune. The values are the same up to float rounding (a test checks the "
            "trained weights agree); the note in each run says how the logits were batched."]


def _torch_threads_line(runs: list[dict[str, Any]]) -> list[str]:
    """How many torch threads the runs used (the count changes speed, not what a run computes)."""
    counts = Counter(r["threads"] for r in runs if r.get("threads"))
    if not counts:
        return []
    parts = ", ".join(f"{n} run(s) on {t}" for t, n in sorted(counts.items(), reverse=True))
    return [f"- Torch threads (pruning, scoring, fine-tuning; `threads` in each run): {parts}. The count changes "
            "timings and float rounding, not the data, its order or any setting; each run records the machine's "
            "load at its start and end."]


def _gat_ppo_defaults_line(runs: list[dict[str, Any]]) -> list[str]:
    """Which gat-ppo-family runs used the defaults before session 11 (no `head` in their summary)."""
    old = Counter(r["method"] for r in runs if r["method"].startswith(bench.REFERENCE)
                  and r["method"] != bench.GAT_PPO_V1 and r.get("search_summary") is not None
                  and r["search_summary"].get("learner", "ppo") == "ppo"
                  and "head" not in r["search_summary"])
    if not old:
        return []
    parts = ", ".join(f"{m} ({n})" for m, n in sorted(old.items()))
    return [f"- gat-ppo's defaults changed in session 11 (ordinal head and entropy 0.2, from the categorical head "
            f"and 0.01; docs/gat-ppo.md): its runs made before are tabled as `{bench.GAT_PPO_V1}` "
            f"(`python -m benchmarks.relabel`), and these variants' runs still used the old defaults: {parts}; "
            f"compare them with `{bench.GAT_PPO_V1}`."]


def _threads(n: int) -> str:
    return "at onnxruntime's default threads" if n == 0 else f"on {n} onnxruntime thread{'s' if n > 1 else ''}"


def _protocol_lines(runs: list[dict[str, Any]]) -> list[str]:
    protocols = {json.dumps(r["protocol"], sort_keys=True) for r in runs if "protocol" in r}
    out = []
    for text in sorted(protocols):
        p = json.loads(text)
        n = sum(1 for r in runs if json.dumps(r.get("protocol"), sort_keys=True) == text)
        images = "all training images" if p["finetune_images"] is None else f"{p['finetune_images']} images"
        out.append(f"- Recorded in {n} run(s): fine-tune {p['finetune_epochs']} epoch(s) of knowledge distillation "
                   f"from the original over {images} per epoch (batch {p['finetune_batch_size']}, "
                   f"{p['finetune_optimizer']} lr {p['finetune_lr']} cosine, tau {p['finetune_tau']}, "
                   f"T {p['finetune_temperature']}, best validation epoch kept); search proxy on "
                   f"{p['eval_images']} validation images; latency: median of {p['latency_runs']} onnxruntime CPU "
                   f"runs after {p['latency_warmup']} warm-up, latency targets at batch {p['latency_target_batch']} "
                   f"{_threads(p.get('latency_target_threads', 0))}; "
                   f"round-to {p['round_to']}.")
    return out


def _missing(mode: bench.Mode, cells: dict[Cell, list[dict[str, Any]]], failed: dict[Cell, list[dict[str, Any]]],
             present: set[tuple[str, str]]) -> list[str]:
    lines = []
    per_model = len(mode.targets) * len(mode.methods) * len(mode.seeds)
    for model in mode.models:
        for form in mode.forms:
            if (model, form) not in present:
                why = bench.TRAINING[model].get("not_trained", "not in benchmarks/models/ or the model cache yet")
                lines.append(f"- **{model} ({form})**: all {per_model} runs ({len(mode.targets)} targets x "
                             f"{len(mode.methods)} methods x {len(mode.seeds)} seeds): base {why}.")
                continue
            for target in mode.targets:
                for method in mode.methods:
                    have = {r["seed"] for r in cells.get((model, form, target, method), [])}
                    bad = {r["seed"] for r in failed.get((model, form, target, method), [])}
                    lost = [s for s in mode.seeds if s not in have and s not in bad]
                    why = bench.PENDING.get(method, "not run yet (CPU time)")
                    if lost:
                        lines.append(f"- {model} ({form}) {target} {method}: seed(s) {_seeds(lost)}: {why}.")
                    untuned = [r["seed"] for r in cells.get((model, form, target, method), [])
                               if r.get("test_top1") is None]
                    if untuned:
                        lines.append(f"- {model} ({form}) {target} {method}: seed(s) {_seeds(untuned)} pruned and "
                                     f"measured without fine-tune; the fine-tune is {why}.")
                    if bad:
                        err = failed[(model, form, target, method)][0]["error"]
                        lines.append(f"- {model} ({form}) {target} {method}: seed(s) {_seeds(bad)} FAILED: {err[:160]}")
    return lines


def write_report(mode_name: str = "protocol") -> Path:
    """Write BENCHMARKS.md, results/results.json and the plots from the stored runs."""
    mode = bench.MODES[mode_name]
    originals, runs = load_runs()
    RESULTS.mkdir(parents=True, exist_ok=True)
    shas = {(m, f): _current_sha(m, f) for m in bench.MODELS for f in bench.FORMS}
    absent = {k for k, sha in shas.items() if sha is None and k in originals}
    for k in absent:  # a base not on this machine (its cache is per machine): its record names it
        shas[k] = originals[k].get("sha256")
    present = {k for k, sha in shas.items() if sha is not None}  # base files shipped or cached, or recorded
    originals = {k: o for k, o in originals.items() if shas.get(k) == o.get("sha256")}
    cells: dict[Cell, list[dict[str, Any]]] = defaultdict(list)
    failed: dict[Cell, list[dict[str, Any]]] = defaultdict(list)
    stale, other_modes = [], defaultdict(int)
    for r in runs:
        if r.get("mode", "protocol") != mode_name:
            other_modes[r.get("mode", "?")] += 1
            continue
        key = (r["model"], r.get("form", "bn"), r["target"], r["method"])
        if "error" in r:
            failed[key].append(r)
        elif r.get("base", {}).get("sha256") != shas.get((r["model"], r.get("form", "bn"))):
            stale.append(r["_file"])
        else:
            cells[key].append(r)
    made = []
    for form in bench.FORMS:
        made += plots(originals, cells, form)
    (RESULTS / "results.json").write_text(json.dumps(
        {"originals": {f"{m}__{f}": o for (m, f), o in originals.items()},
         "runs": [r for rs in cells.values() for r in rs], "failed": [r for rs in failed.values() for r in rs],
         "stale": stale}, indent=1, default=str) + "\n")
    quiet_file = RESULTS / "latency_pass.json"
    quiet = json.loads(quiet_file.read_text()) if quiet_file.exists() else None
    done = sum(len(v) for v in cells.values())
    fine = sum(1 for v in cells.values() for r in v if r.get("test_top1") is not None)
    expected = len(mode.models) * len(mode.forms) * len(mode.targets) * len(mode.methods) * len(mode.seeds)
    out = ["# Benchmarks", "",
           "Rendered by `python -m benchmarks.run --report-only` from the run records under "
           "`benchmarks/results/runs/` (one JSON file per run, holding every setting it used); plots and "
           "`benchmarks/results/results.json` come from the same files. Nothing is copied from papers.", "",
           f"- Rendered: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit `{bench.git_commit()}`.",
           f"- Protocol runs stored: {done} of {expected} ({fine} of them fine-tuned) "
           f"({len(mode.models)} models x {len(mode.forms)} form x {len(mode.targets)} targets x "
           f"{len(mode.methods)} methods x {len(mode.seeds)} seeds); {sum(len(v) for v in failed.values())} failed, "
           f"{len(stale)} stale (made on another base file, left out). The missing runs are listed below.",
           ]
    if other_modes:
        out.append("- Not tabled: " + ", ".join(f"{n} run(s) of mode `{m}`" for m, n in sorted(other_modes.items()))
                   + " (another protocol).")
    all_runs = [r for rs in cells.values() for r in rs]
    out += ["", "## Protocol", "",
            "- Bases: `models/` nets trained on Fashion-MNIST with `models.train` (settings below and in "
            "`benchmarks/run.py::TRAINING`), exported twice from the same weights: BatchNorm folded into "
            "Conv (what both torch exporters write by default; the primary column) and BatchNorm kept "
            "(optional second column).",
            "- Targets: `macs-F` keeps at most F of the MACs; `latency-F` at most F of the original's "
            "measured onnxruntime latency (search methods: their own latency budget; score-based methods and "
            "Torch-Pruning: bisection on the MACs fraction / pruning ratio until the pruned model's measured "
            "latency fits).",
            "- Each run measures test top-1 right after pruning (no fine-tune) and after the fine-tune below; "
            "test top-1 is onnxruntime on Fashion-MNIST's t10k (never used for search, scoring or fine-tuning). "
            "The no-fine-tune column is what each method writes: methods that use data (Taylor, the searches) "
            "re-estimate BatchNorm under the mask (on folded bases: re-inserted, re-estimated, folded back), "
            "the Torch-Pruning peers (pruned in their own code) re-estimate it only on BN-kept bases, and so "
            "did L1 and random in the runs made before `prune --data` re-estimated BatchNorm for data-free "
            "methods (commit 3f606ad; each run's `commit` says which): on folded bases those are not "
            "comparable in that column; "
            "the fine-tune re-inserts BatchNorm for all.",
            "- Seeds are paired across methods: seed s fixes the validation split, the fine-tune order and "
            "the method's own randomness, the same for every method. Tables give mean ± standard error over "
            "seeds, and each method's paired difference against gat-ppo (mean ± SE over the seeds both have).",
            "- rl-pruner post-trains between its pruning steps (part of that method; extra training the others "
            "do not get); `rl-pruner-nopost` is the same search without it.",
            ] + _teacher_line(all_runs) + _torch_threads_line(all_runs) + _gat_ppo_defaults_line(all_runs) + _protocol_lines(all_runs) + _machine_lines(all_runs)
    out += ["", "## Bases", "",
            "| model | form | test top-1 (%) | MACs | params | trained | settings |", "|---|---|---|---|---|---|---|"]
    for model in mode.models:
        spec = bench.TRAINING[model]
        for form in bench.FORMS:
            o = originals.get((model, form))
            if (model, form) in present and o:
                tr = o.get("training", {})
                out.append(f"| {model} | {form} | {100 * o['test_top1']:.2f} | {o['macs'] / 1e6:.1f} M | "
                           f"{o['params'] / 1e6:.3f} M | {tr.get('epochs', '?')} epochs, "
                           f"{tr.get('train_images', '?')} images, {tr.get('train_seconds', 0) / 60:.0f} min"
                           + ("; the base file was not on the machine that rendered this (its record is)"
                              if (model, form) in absent else "") + f" | `{spec['command']}` |")
            elif (model, form) in present:
                tr = bench.base_record(model)
                out.append(f"| {model} | {form} | {100 * tr['test_top1']:.2f} (training record) | - | - | "
                           f"{tr.get('epochs', '?')} epochs, {tr.get('train_images', '?')} images, "
                           f"{tr.get('train_seconds', 0) / 60:.0f} min; not yet measured by a benchmark run | "
                           f"`{spec['command']}` |")
            elif form == "folded":
                out.append(f"| {model} | both | - | - | - | {spec.get('not_trained', 'not in benchmarks/models/ or the cache yet')} | "
                           f"`{spec['command']}` |")
    epoch_file = RESULTS / "epoch_time.json"
    if epoch_file.exists():
        et = json.loads(epoch_file.read_text())
        out += ["", "Measured training time per epoch (`python -m benchmarks.epoch_time`, "
                f"{et['steps']} steps of batch {et['batch_size']} timed and scaled to {et['train_images']} images, "
                f"{et['threads']} threads, {et['note']}): "
                + "; ".join(f"{m} {v['epoch_s'] / 60:.1f} min" for m, v in et["models"].items())
                + ". `TRAINING` plans 15 epochs for each base."]
    out.append("")
    ref = bench.REFERENCE
    for form in bench.FORMS:
        models = [m for m in mode.models if any(k[0] == m and k[1] == form for k in cells)]
        for model in models:
            base = originals.get((model, form), {})
            out += [f"## {model}, {'BatchNorm folded' if form == 'folded' else 'BatchNorm kept'}", "",
                    f"Original: {100 * base.get('test_top1', float('nan')):.2f}% test top-1.", "",
                    f"| target | method | seeds | no fine-tune (%) | fine-tuned (%) | vs {ref} (points) | MACs | "
                    "params | speed-up b1 | speed-up b32 | speed-up b1, 1 thread | search (s) |",
                    "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for target in mode.targets:
                for method in METHOD_ORDER:
                    recs = cells.get((model, form, target, method))
                    if not recs:
                        continue
                    refs = cells.get((model, form, target, ref), [])
                    old_refs = cells.get((model, form, target, bench.GAT_PPO_V1), [])
                    diff = _diff_cell(method, recs, refs, old_refs, target)
                    lat = [(_latency(r, originals, b)) for r in recs for b in (1,)]
                    b1 = mean_se(x for x, _ in lat)[0]
                    b32 = mean_se(_latency(r, originals, 32)[0] for r in recs)[0]
                    q = "" if lat and all(qq for _, qq in lat) else "*"
                    if not q and quiet and any(r["latency_quiet"].get("pass") != quiet["started"] for r in recs):
                        q = "§"  # timed by an earlier quiet pass
                    t1 = [_latency(r, originals, 1, one_thread=True)[0] for r in recs]
                    t1_mean = mean_se(t1)[0] if all(x is not None for x in t1) else None
                    b1_t1 = "-" if t1_mean is None else (f"{t1_mean:.2f}x{latency_mark(target, t1_mean)}"
                                                         + ("§" if q == "§" else ""))
                    tuned = [r["seed"] for r in recs if r.get("test_top1") is not None]
                    seeds = _seeds(r["seed"] for r in recs)
                    if len(tuned) < len(recs):
                        seeds += f" (fine-tuned: seed(s) {_seeds(tuned)})" if tuned else " (none fine-tuned)"
                    out.append(f"| {target} | {method} | {seeds} | "
                               f"{_pct([r.get('test_top1_noft') for r in recs])} | {_pct([r.get('test_top1') for r in recs])} | "
                               f"{diff} | {mean_se(r['macs_ratio'] for r in recs)[0]:.3f}"
                               f"{macs_mark(target, mean_se(r['macs_ratio'] for r in recs)[0])} | "
                               f"{mean_se(r['params_ratio'] for r in recs)[0]:.3f} | {b1:.2f}x{q} | {b32:.2f}x{q} | {b1_t1} | "
                               f"{mean_se(r.get('search_s') for r in recs)[0]:.1f} |")
            out += ["", "Speed-ups marked * were timed right after their run, under load (not yet re-timed by the "
                    "quiet `--latency-only` pass); those marked § were timed by an earlier quiet pass (\"Latency pass\" lists "
                    "it; the latest pass could not time them); unmarked ones come from the latest pass. The one-thread column (onnxruntime on one thread, timed by the "
                    "quiet pass only; - where a run has not been re-timed since it was added) is there because the "
                    "default-thread batch-1 times moved between passes (see \"Latency pass\"), while one-thread "
                    "timings were consistent in the latency table's validation. MACs marked † are more than "
                    f"{100 * MACS_SLACK:.0f}% under the MACs budget: that method was compared at fewer MACs than the "
                    "others could use (not at equal cost). One-thread speed-ups of latency-target rows are marked ‡ "
                    "when their mean quiet one-thread batch-1 latency is over the budget, † when it is more than "
                    f"{100 * LATENCY_SLACK:.0f}% under it (the latency target is "
                    "measured at batch 1 on `latency_target_threads` threads; each run's own check is "
                    "`latency_target_check` in its record).", ""]
    out += ["## Missing runs", ""] + (_missing(mode, cells, failed, present) or ["None."]) + [""]
    out += ["## Latency pass", ""]
    if quiet:
        out.append(f"`python -m benchmarks.run --latency-only` on {quiet['started']}: {quiet['models']} pruned models, "
                   f"each timed interleaved with its original ({quiet['rounds']} rounds; {quiet['statistic']}; "
                   f"batch 1 and 32" + (", and batch 1 on one thread" if quiet.get("one_thread_batches") else "")
                   + f"; {quiet['provider']}). Machine: {quiet['machine']}. Other processes used "
                   f"{quiet['other_cores_busy']} cores on average during the pass (load average "
                   f"{quiet['load_start']} at the start, {quiet['load_end']} at the end)"
                   + (": nothing else ran." if (quiet['other_cores_busy'] or 0) < 0.05 else
                      ": other work shared the machine, so these latencies are not quiet."))
        out += _pass_sources(quiet, cells)
    else:
        out.append("Not run yet: every speed-up above was timed right after its run, under load.")
    out += _drift_lines()
    out.append("")
    coverage = RESULTS / "zoo_coverage.md"
    if coverage.exists():
        out += [coverage.read_text().strip(), ""]
    if made:
        out += ["## Plots", ""] + [f"![{m}](benchmarks/results/{m})" for m in made] + [""]
    out += ["## Earlier results", "",
            "The runs made before this protocol (BN-kept bases trained for 2-3 epochs to 80-91%, fine-tune "
            "on 5,000 images, mostly one seed) are kept under `benchmarks/results/legacy-2026-11-22/` for the "
            "record. They cannot rank the methods and are not shown here."] + _legacy_latency_lines() + [""]
    out += ["## Commands", "", "```",
            "python -m benchmarks.run                       # the protocol; resumable, stored runs are skipped",
            "python -m benchmarks.run --models resnet20 --targets macs-0.5 --seeds 0 1 2 3 4",
            "python -m benchmarks.run --forms bn            # the BatchNorm-kept column",
            "python -m benchmarks.run --latency-only         # quiet pass (nothing else running)",
            "python -m benchmarks.run --report-only          # rebuild this file",
            "python -m benchmarks.epoch_time                 # training time per epoch of each base", "```", ""]
    path = ROOT / "BENCHMARKS.md"
    path.write_text("\n".join(out))
    return path
