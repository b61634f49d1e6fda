"""Analysis speed: onnxprune (ONNX alone) vs Torch-Pruning's DependencyGraph (torch model).

    python -m benchmarks.analysis_speed [--models resnet50 densenet121] [--repeats 5]

For each model, in one run on the same machine: the best-of-N time of
- onnxprune: graph building (shape inference) + channel groups + cost model, after the file is
  loaded (`load_model` is timed separately);
- Torch-Pruning: `DependencyGraph().build_dependency(model, example)` + `get_all_groups()`;
- the whole `onnxprune analyze MODEL.onnx` command in a fresh process (Python start-up included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from onnxprune.deps import analyze_graph
from onnxprune.ir import build_graph, load_model
from benchmarks.common import cached_export
from tests import zoo


def best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def torch_pruning_time(name: str, repeats: int) -> tuple[float, int]:
    import torch_pruning as tp

    model = zoo.torch_model(name)
    example = zoo.example_input(name)
    fc = zoo.classifier(model)
    count = 0

    def run() -> None:
        nonlocal count
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        count = sum(1 for _ in dg.get_all_groups(ignored_layers=[fc], root_module_types=(torch.nn.Conv2d, torch.nn.Linear)))

    return best_of(repeats, run), count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "densenet121"])
    ap.add_argument("--exporter", default="torchscript", choices=["torchscript", "dynamo"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in args.models:
        path = cached_export(name, args.exporter)
        t0 = time.perf_counter()
        loaded = load_model(path)
        load_s = time.perf_counter() - t0
        groups = 0

        def ours() -> None:
            nonlocal groups
            groups = len(analyze_graph(build_graph(loaded)).prunable())

        ours_s = best_of(args.repeats, ours)
        tp_s, tp_groups = torch_pruning_time(name, args.repeats)
        cli = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([str(Path(sys.executable).with_name("onnxprune")), "analyze", str(path)],
                           check=True, stdout=subprocess.DEVNULL)
            cli.append(time.perf_counter() - t0)
        row = {"model": name, "exporter": args.exporter, "load_s": round(load_s, 3),
               "onnxprune_analysis_s": round(ours_s, 3), "torch_pruning_s": round(tp_s, 3),
               "ratio": round(ours_s / tp_s, 3), "groups": groups, "tp_groups": tp_groups,
               "cli_analyze_s": round(min(cli), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
