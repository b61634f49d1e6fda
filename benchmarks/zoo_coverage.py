"""Coverage and speed on the torchvision zoo: which models onnxprune analyses and prunes with
verified equivalence (both exporters), next to what Torch-Pruning does with the same models.

    python -m benchmarks.zoo_coverage [--fast]     # --fast: the 5 models of the CI suite

For every zoo model and exporter: `analyze` wall time and prunable groups; `prune --method l1
--target-flops 0.5` (rewrite + verification against the masked original on 3 random inputs)
wall time, MACs kept and the largest output difference. For Torch-Pruning, on the torch model:
DependencyGraph build time, its groups, and whether a uniform 30% group-L1 pruning step runs and
gives a model that still produces an output of the right shape. Writes
`benchmarks/results/zoo_coverage.json` and `zoo_coverage.md` (included in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import cached_export
from tests import zoo

RESULTS = Path(__file__).resolve().parent / "results"
FAST = ("resnet18", "mobilenet_v3_small", "squeezenet1_1", "mnasnet0_5", "shufflenet_v2_x0_5")


def ours(name: str, exporter: str) -> dict[str, Any]:
    from onnxprune.api import PruneConfig, prune
    from onnxprune.deps import analyze

    path = cached_export(name, exporter)
    row: dict[str, Any] = {}
    t0 = time.perf_counter()
    analysis = analyze(path)
    row["analyze_s"] = time.perf_counter() - t0
    row["groups"] = len(analysis.prunable())
    t0 = time.perf_counter()
    try:
        result = prune(path, PruneConfig(method="l1", target_flops=0.5))
        row["prune_s"] = time.perf_counter() - t0
        row["macs_kept"] = result.macs[1] / result.macs[0]
        row["max_abs_diff"] = result.verified.max_abs_diff if result.verified else None
        row["verified"] = result.verified is not None
    except Exception as exc:
        row["prune_error"] = f"{type(exc).__name__}: {exc}"[:200]
        row["verified"] = False
    return row


def torch_pruning(name: str) -> dict[str, Any]:
    import torch_pruning as tp

    info = zoo.tp_reference_info(name)
    row: dict[str, Any] = {"tp_build_s": info.build_seconds,
                           "tp_groups": len(info.channels) if info.channels is not None else None}
    if info.error:
        row["tp_error"] = info.error[:200]
        return row
    model = zoo.torch_model(name)
    x = zoo.example_input(name)
    try:
        with torch.no_grad():
            want = model(x).shape
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                      pruning_ratio=0.3, ignored_layers=[zoo.classifier(model)])
        pruner.step()
        with torch.no_grad():
            got = model(x).shape
        row["tp_pruned"] = got == want
    except Exception as exc:
        row["tp_pruned"] = False
        row["tp_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return row


def run_coverage(full: bool = True) -> Path:
    torch.set_num_threads(1)
    names = zoo.names() if full else list(FAST)
    rows = []
    for name in names:
        tp_row = torch_pruning(name)
        for exporter in ("torchscript", "dynamo"):
            row = {"model": name, "exporter": exporter, **ours(name, exporter), **tp_row}
            rows.append(row)
            print(json.dumps({k: row.get(k) for k in ("model", "exporter", "verified", "prune_s", "tp_pruned")}),
                  flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "zoo_coverage.json").write_text(json.dumps(rows, indent=1) + "\n")
    ok = sum(r["verified"] for r in rows)
    tp_ok = sum(bool(r.get("tp_pruned")) for r in rows[::2])
    lines = ["## Torchvision zoo: coverage and speed", "",
             f"`python -m benchmarks.zoo_coverage{'' if full else ' --fast'}`: {ok} of {len(rows)} exports "
             f"(both exporters) pruned to 50% MACs with verified equivalence; Torch-Pruning ran a 30% "
             f"group-L1 step on {tp_ok} of {len(rows) // 2} torch models.", "",
             "| model | exporter | groups (ours / TP) | analyze (s) | prune+verify (s) | MACs kept | max diff | "
             "TP build (s) | TP prunes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pr = (f"{r['prune_s']:.2f} | {r['macs_kept']:.3f} | {r['max_abs_diff']:.1e}" if r["verified"]
              else f"failed: {r.get('prune_error', '')[:60]} | | ")
        tp_cell = "yes" if r.get("tp_pruned") else f"no: {r.get('tp_error', '')[:60]}"
        lines.append(f"| {r['model']} | {r['exporter']} | {r['groups']} / {r.get('tp_groups')} | {r['analyze_s']:.2f} | "
                     f"{pr} | {r['tp_build_s']:.2f} | {tp_cell} |")
    path = RESULTS / "zoo_coverage.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true")
    print(run_coverage(full=not ap.parse_args().fast))
    sys.exit(0)
