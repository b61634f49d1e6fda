"""How close gat-ppo's projected candidates land to a MACs budget at the runtime's widths
(`--round-to auto`): random per-group levels projected by `Projector` (issue 14: candidates
generated at the rounded widths). Cost model only, seconds to run.

    python -m benchmarks.projection_budget   # -> benchmarks/results/gat_ppo/projection.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "gat_ppo" / "projection.json"


def main() -> None:
    from onnxprune.criteria import weight_scores
    from onnxprune.deps import analyze
    from onnxprune.search import Budget, BudgetMeter
    from onnxprune.search.gat_ppo.env import Projector
    from onnxprune.search.gat_ppo.features import build_state_graph
    from onnxprune.search.rounding import is_rounded, width_multiples
    from tests.tiny import digits_model

    models = {"digits_tiny": analyze(digits_model()[1]),
              "resnet20_folded": analyze(ROOT / "benchmarks" / "models" / "resnet20_folded.onnx")}
    rows = []
    for name, analysis in models.items():
        l1 = weight_scores(analysis, "l1")
        graph = build_state_graph(analysis, l1, l1)
        multiples = width_multiples(analysis, "auto")
        per_node = [multiples.get(g, 1) for g in graph.group_ids]
        for target in (0.25, 0.5, 0.7):
            meter = BudgetMeter(analysis, Budget("macs", target))
            proj = Projector(analysis, meter, graph, l1, per_node)
            rng = np.random.default_rng(0)
            ratios, rounded = [], []
            t0 = time.perf_counter()
            for _ in range(100):
                keep, _ = proj.project(rng.choice(np.linspace(0.2, 1.0, 9), graph.num_nodes))
                ratios.append(meter.ratio(keep))
                rounded.append(is_rounded(analysis, keep, multiples))
            r = np.array(ratios)
            rows.append({"model": name, "target": target, "candidates": len(r), "all_rounded": all(rounded),
                         "all_feasible": bool((r <= target + 1e-12).all()), "min": float(r.min()),
                         "mean": float(r.mean()), "max_gap": float(target - r.min()),
                         "share_within_0.5pct": float((r >= target - 0.005).mean()),
                         "share_within_2pct": float((r >= target - 0.02).mean()),
                         "seconds_per_candidate": (time.perf_counter() - t0) / len(r),
                         "multiples": per_node})
            print(rows[-1])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"kind": "projection", "note": "cost model only; seconds measured under load",
                               "levels": "9 levels 0.2..1, uniform random per group, seed 0", "rows": rows},
                              indent=1) + "\n")
    print(OUT)


if __name__ == "__main__":
    main()
