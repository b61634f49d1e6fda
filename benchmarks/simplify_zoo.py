"""What `--simplify` changes on the torchvision zoo: frozen groups and prunable channels with and
without onnxsim, per export (analysis only, no pruning).

    python -m benchmarks.simplify_zoo [--models NAME ...] [--exporters torchscript dynamo] [--export]

Uses the cached exports of `tests/zoo.py` (`--export` exports the missing ones). Writes
`benchmarks/results/simplify_zoo.json` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from onnxprune.api import analyze_simplified
from onnxprune.schema import stamped
from tests import zoo

RESULTS = Path(__file__).resolve().parent / "results"


def summary(analysis: Any) -> dict[str, Any]:
    groups = analysis.channel_groups
    prunable = [g for g in groups if g.prunable]
    return {"groups": len(groups), "frozen": len(groups) - len(prunable), "prunable_groups": len(prunable),
            "prunable_channels": sum(g.channels for g in prunable), "nodes": len(analysis.graph.model.graph.node)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, help="default: every zoo model")
    ap.add_argument("--exporters", nargs="+", default=["torchscript", "dynamo"])
    ap.add_argument("--export", action="store_true", help="export what is not cached yet")
    ap.add_argument("--json", type=Path, default=RESULTS / "simplify_zoo.json")
    args = ap.parse_args(argv)
    rows, skipped = [], []
    for name in args.models or zoo.names():
        for exporter in args.exporters:
            path = zoo.onnx_path(name, exporter)
            if not path.exists():
                if not args.export:
                    skipped.append(f"{name}-{exporter}")
                    continue
                path = zoo.export(name, exporter)
            row: dict[str, Any] = {"model": name, "exporter": exporter}
            try:
                off, _, _ = analyze_simplified(path, simplify="off")
                t0 = time.perf_counter()
                on, _, info = analyze_simplified(path, simplify="on")
                row.update(off=summary(off), on=summary(on), onnxsim_seconds=round(info.seconds, 2),
                           analysis_with_onnxsim_seconds=round(time.perf_counter() - t0, 2))
            except Exception as exc:  # recorded, not hidden
                row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = stamped({"command": "python -m benchmarks.simplify_zoo " + " ".join(argv or sys.argv[1:]),
                   "rows": rows, "skipped_not_cached": skipped})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print("| export | frozen groups off -> on | prunable groups off -> on | prunable channels off -> on | onnxsim s |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']}-{r['exporter']} | error: {r['error']} | | | |")
            continue
        a, b = r["off"], r["on"]
        print(f"| {r['model']}-{r['exporter']} | {a['frozen']} -> {b['frozen']} | {a['prunable_groups']} -> "
              f"{b['prunable_groups']} | {a['prunable_channels']:,} -> {b['prunable_channels']:,} | "
              f"{r['onnxsim_seconds']} |")
    print(f"wrote {args.json}; not cached (skipped): {len(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
