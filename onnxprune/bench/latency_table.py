"""A per-layer latency table: a model's onnxruntime latency under any keep mask, looked up
instead of measured (`--target-latency`).

For every layer with a MACs term in the cost model (Conv, Gemm, MatMul ...), the table holds
its time at a grid of (input width, output width) pairs: the widths each channel group may take
(multiples of its `--round-to` block, at most `max_levels` per group). The times are measured
once, on the target provider at the target batch size, **in context**: the whole pruned model of
a grid mask runs in one onnxruntime session with profiling on, and each layer's cell is the
kernel time of the optimized node that holds it (onnxruntime fuses Conv + Add + Relu and moves
Convs to its blocked NCHWc layout, so the optimized node is named after a tensor of the fused
chain: `_owners` maps it back), plus the nodes onnxruntime added or kept around it (layout
reorders, pooling, Flatten ...), which are charged to the layer that feeds them. Grid masks set
the groups of one colour (a 2-colouring of "feeds a layer" between groups) to level i and the
others to level j, so one run measures a cell of nearly every layer; cells a layer still lacks
get masks of their own. A layer the profile does not show (another provider fused it away) is
timed alone instead, cut out of the model (`onnx.utils.Extractor`), and listed in the meta.

A mask's latency = `residual` + `scale` x the sum of its layers' times (bilinear between grid
widths, clamped outside). The profiler adds its own cost to every node's time: it is measured
once (`profiler_cost`: a chain of tiny nodes, profiled and not) and taken off each cell per
node it holds. The profiled nodes and the whole run measure the same work, so `scale` is 1;
`residual` (the per-run overhead, and whatever no layer holds) is the median difference between
whole-model times and the cells over about `CALIBRATION_MASKS` grid masks, each timed again
in its session after profiling stopped. `benchmarks/latency_table.py` validates it against
whole-model measurements.

Tables are cached as JSON under `$XDG_CACHE_HOME/onnxprune/latency/`, keyed by the model's
bytes, provider, batch, threads, grid and onnxruntime version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx.utils import Extractor

from onnxprune.bench.latency import BenchConfig, NodeProfile, benchmark_model, profile_model
from onnxprune.deps import Analysis

FORMAT = 2  # 2: cells measured in context (profiled whole model)
CALIBRATION_MASKS = 16  # about this many grid masks are also timed whole, without the profiler
# providers whose profile times every node as it runs; on the GPU a node's profiled time is its
# launch, not its kernel (asynchronous), so there the layers are timed alone (the first method)
IN_CONTEXT = ("cpu",)


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/onnxprune/latency`, by default `~/.cache/onnxprune/latency`."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "onnxprune" / "latency"


def group_widths(units: int, multiple: int, max_levels: int) -> list[int]:
    """The widths (kept units) the table measures for a group: multiples of `multiple` up to the
    full width, evenly thinned to at most `max_levels` (the smallest and the full one kept)."""
    widths = list(range(multiple, units, multiple)) + [units] if multiple < units else [units]
    if len(widths) > max_levels:
        pick = np.unique(np.round(np.linspace(0, len(widths) - 1, max_levels)).astype(int))
        widths = [widths[i] for i in pick]
    return widths


@dataclass(eq=False)
class LatencyTable:
    """Latency (seconds) of a model under keep masks, from per-layer times (see the module).

    `nodes[i]` has the unit segments `in_seg[i]` / `out_seg[i]` of the cost model (-1: none) and
    `cells[i]`: (kept input units, kept output units) -> seconds. Call it with a keep mask.
    """

    analysis: Analysis
    nodes: list[str]
    in_seg: list[int]
    out_seg: list[int]
    cells: list[dict[tuple[int, int], float]]
    full_seconds: float
    residual: float
    scale: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    cheap: bool = True  # a lookup: searches may probe many masks (`BudgetMeter.cheap`)

    def _counts(self, keep: np.ndarray) -> np.ndarray:
        cost = self.analysis.cost
        if cost.flat.size == 0:
            return np.zeros(1)
        kept = np.add.reduceat(np.asarray(keep, dtype=np.int64)[cost.flat], cost.starts)
        return np.append(kept, 0)

    def node_seconds(self, keep: np.ndarray) -> np.ndarray:
        counts = self._counts(keep)
        out = np.empty(len(self.nodes))
        for i, cells in enumerate(self.cells):
            a = int(counts[self.in_seg[i]]) if self.in_seg[i] >= 0 else 0
            b = int(counts[self.out_seg[i]]) if self.out_seg[i] >= 0 else 0
            out[i] = _lookup(cells, a, b)
        return out

    def __call__(self, keep: np.ndarray) -> float:
        return float(self.residual + self.scale * self.node_seconds(keep).sum())

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "meta": self.meta, "full_seconds": self.full_seconds, "residual": self.residual,
                "scale": self.scale,
                "nodes": [{"name": n, "in_seg": a, "out_seg": b, "cells": [[k[0], k[1], v] for k, v in c.items()]}
                          for n, a, b, c in zip(self.nodes, self.in_seg, self.out_seg, self.cells)]}

    @classmethod
    def from_json(cls, analysis: Analysis, data: Mapping[str, Any]) -> "LatencyTable":
        nodes = list(data["nodes"])
        return cls(analysis, [n["name"] for n in nodes], [int(n["in_seg"]) for n in nodes],
                   [int(n["out_seg"]) for n in nodes],
                   [{(int(a), int(b)): float(v) for a, b, v in n["cells"]} for n in nodes],
                   float(data["full_seconds"]), float(data["residual"]), float(data["scale"]),
                   dict(data.get("meta", {})))


def _lookup(cells: Mapping[tuple[int, int], float], a: int, b: int) -> float:
    """Bilinear between the measured widths around (a, b), clamped to the grid; a layer whose
    input and output widths are tied (depthwise) is read along its diagonal."""
    if (a, b) in cells:
        return cells[(a, b)]
    xs = sorted({k[0] for k in cells})
    ys = sorted({k[1] for k in cells})

    def bracket(v: int, grid: list[int]) -> tuple[int, int, float]:
        if v <= grid[0]:
            return grid[0], grid[0], 0.0
        if v >= grid[-1]:
            return grid[-1], grid[-1], 0.0
        hi = next(g for g in grid if g >= v)
        lo = max(g for g in grid if g <= v)
        return lo, hi, 0.0 if hi == lo else (v - lo) / (hi - lo)

    x0, x1, tx = bracket(a, xs)
    y0, y1, ty = bracket(b, ys)
    corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
    if all(c in cells for c in corners):
        v00, v10, v01, v11 = (cells[c] for c in corners)
        return (1 - tx) * (1 - ty) * v00 + tx * (1 - ty) * v10 + (1 - tx) * ty * v01 + tx * ty * v11
    # tied widths (or an incomplete grid): interpolate along the measured cells by total width
    keys = sorted(cells, key=lambda k: k[0] + k[1])
    sums = np.array([k[0] + k[1] for k in keys], dtype=np.float64)
    return float(np.interp(a + b, sums, [cells[k] for k in keys]))


def _segment_groups(analysis: Analysis) -> dict[int, int]:
    """Cost-model segment -> the prunable group its units belong to (segments of one group only)."""
    cost = analysis.cost
    owner = np.full(analysis.groups.num_units, -1, dtype=np.int64)
    for g in analysis.prunable():
        owner[g.unit_slice] = g.id
    out: dict[int, int] = {}
    for s, (start, n) in enumerate(zip(cost.starts.tolist(), cost.lengths.astype(int).tolist())):
        ids = np.unique(owner[cost.flat[start:start + n]])
        if ids.size == 1 and ids[0] >= 0:
            out[s] = int(ids[0])
    return out


def _two_colours(groups: list[int], edges: list[tuple[int, int]]) -> dict[int, int]:
    """A greedy BFS 2-colouring (edges between equal colours may remain: odd cycles)."""
    adj: dict[int, set[int]] = {g: set() for g in groups}
    for a, b in edges:
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    colour: dict[int, int] = {}
    for start in groups:
        if start in colour:
            continue
        colour[start] = 0
        queue = [start]
        while queue:
            g = queue.pop()
            for h in adj[g]:
                if h not in colour:
                    colour[h] = 1 - colour[g]
                    queue.append(h)
    return colour


def table_key(model_bytes: bytes, cfg: BenchConfig, multiples: Mapping[int, int], max_levels: int) -> str:
    h = hashlib.sha256(model_bytes)
    h.update(json.dumps([FORMAT, cfg.provider, cfg.batch_sizes[0], cfg.threads, sorted(multiples.items()),
                         max_levels, ort.__version__]).encode())
    return h.hexdigest()[:32]


_GENERATED = re.compile(r"(_token_\d+|_\d+)$")


def _owners(model: onnx.ModelProto, layers: set[str], profile: NodeProfile) -> dict[str, str]:
    """Optimized node -> the layer (a name in `layers`) it holds or is charged to.

    A node named after a node of `model`, or after one of its tensors (onnxruntime names a fused
    or NCHWc node after its chain's output tensor, with `_nchwc` and sometimes a `_token_N`
    counter appended), holds the layer found by walking that node's producers up through
    tensors read by one node only (the fused chain). Any other node (reorders, pooling ...) is
    charged to the layer of the node that produces its input in the optimized graph, or else
    of the node that reads its output; nodes with neither are left out (the fit's residual)."""
    nodes = {n.name: n for n in model.graph.node}
    producer = {t: n for n in model.graph.node for t in n.output}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for t in set(n.input):
            readers[t] = readers.get(t, 0) + 1

    def climb(node: onnx.NodeProto, depth: int = 0) -> str | None:
        if node.name in layers:
            return node.name
        if depth > 8:
            return None
        for t in node.input:
            if t in producer and readers.get(t, 0) == 1:
                found = climb(producer[t], depth + 1)
                if found is not None:
                    return found
        return None

    def held(name: str) -> str | None:
        for cand in dict.fromkeys([name, _GENERATED.sub("", name)]):
            for base in dict.fromkeys([cand, cand.removesuffix("_nchwc")]):
                if base in nodes:
                    return climb(nodes[base])
                if base in producer:
                    return climb(producer[base])
        return None

    owner: dict[str, str | None] = {n: held(n) for n in profile.kernel}
    made_by = {t: n for n, ts in profile.outputs.items() for t in ts}
    read_by: dict[str, list[str]] = {}
    for n, ts in profile.inputs.items():
        for t in ts:
            read_by.setdefault(t, []).append(n)

    def charged(name: str, step: int, seen: frozenset[str]) -> str | None:
        if owner.get(name) is not None:
            return owner[name]
        if name in seen:
            return None
        seen = seen | {name}
        near = ([made_by[t] for t in profile.inputs.get(name, []) if t in made_by] if step < 0 else
                [r for t in profile.outputs.get(name, []) for r in read_by.get(t, [])])
        for other in near:
            found = charged(other, step, seen)
            if found is not None:
                return found
        return None

    out: dict[str, str] = {}
    for n in profile.kernel:
        found = owner[n] or charged(n, -1, frozenset()) or charged(n, 1, frozenset())
        if found is not None:
            out[n] = found
    return out


def build_latency_table(analysis: Analysis, materialize: Callable[[np.ndarray], onnx.ModelProto],
                        multiples: Mapping[int, int], cfg: BenchConfig = BenchConfig(warmup=5, runs=30),
                        max_levels: int = 8, cache: Path | None = None,
                        say: Callable[[str], None] = lambda _m: None) -> LatencyTable:
    """Measure (or load from `cache`, default `cache_dir()`) the latency table of `analysis`'s
    model at `cfg.batch_sizes[0]` on `cfg.provider`. `materialize(keep)`: the pruned model;
    `multiples`: group id -> unit multiple of its widths."""
    model_bytes = analysis.graph.model.SerializeToString()
    key = table_key(model_bytes, cfg, multiples, max_levels)
    path = (cache or cache_dir()) / f"{key}.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("format") == FORMAT:
                return LatencyTable.from_json(analysis, data)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is measured again
    t0 = time.perf_counter()
    cost = analysis.cost
    n_seg = len(cost.lengths)
    seg_group = _segment_groups(analysis)
    groups = {g.id: g for g in analysis.prunable()}
    widths = {gid: group_widths(g.units, max(int(multiples.get(gid, 1)), 1), max_levels) for gid, g in groups.items()}
    nodes = list(cost.mac_nodes)
    index = {n: i for i, n in enumerate(nodes)}
    segs = [(int(o) if o < n_seg else -1, int(i) if i < n_seg else -1) for o, i in cost.mac_seg.tolist()]
    out_seg = [o for o, _ in segs]
    in_seg = [i for _, i in segs]
    pairs = [(seg_group.get(i, -1), seg_group.get(o, -1)) for i, o in zip(in_seg, out_seg)]
    colour = _two_colours(list(groups), [(a, b) for a, b in pairs if a >= 0 and b >= 0])
    cells: list[dict[tuple[int, int], float]] = [{} for _ in nodes]
    counts: list[dict[tuple[int, int], int]] = [{} for _ in nodes]  # optimized nodes in a cell
    seen: list[dict[tuple[int, int], list[float]]] = [{} for _ in nodes]  # a cell's observations: median
    batch = cfg.batch_sizes[0]
    single = BenchConfig(provider=cfg.provider, batch_sizes=(batch,), threads=cfg.threads, warmup=cfg.warmup,
                         runs=cfg.runs, seed=cfg.seed)
    measured: list[tuple[np.ndarray, float]] = []  # the calibration masks and their whole-model times
    profiled = [0]
    in_context = cfg.provider in IN_CONTEXT
    levels_max = max((len(w) for w in widths.values()), default=1)
    stride = max(1, levels_max ** 2 // CALIBRATION_MASKS)
    alone: set[str] = set()  # layers no profile showed: timed cut out of the model
    unheld: dict[str, float] = {}  # profiled nodes charged to no layer: seconds, largest seen
    scratch = tempfile.TemporaryDirectory(prefix="onnxprune-profile-")
    workdir = Path(scratch.name)

    def mask_of(levels: Mapping[int, int]) -> np.ndarray:
        keep = analysis.full_keep()
        for gid, w in levels.items():
            g = groups[gid]
            local = np.zeros(g.units, dtype=bool)
            local[:w] = True
            keep[g.unit_slice] = local
        return analysis.repair(keep)

    def measure(keep: np.ndarray, wanted: list[int]) -> None:
        kept = LatencyTable(analysis, nodes, in_seg, out_seg, cells, 0.0, 0.0)._counts(keep)
        at = [(int(kept[in_seg[i]]) if in_seg[i] >= 0 else 0, int(kept[out_seg[i]]) if out_seg[i] >= 0 else 0)
              for i in range(len(nodes))]
        if all(at[i] in cells[i] for i in wanted):
            return
        pruned = materialize(keep)
        timed = profiled[0] % stride == 0  # the whole-model time of every stride-th mask calibrates
        profiled[0] += 1
        seconds = np.zeros(len(nodes))
        held = np.zeros(len(nodes), dtype=np.int64)
        if in_context:
            profile = profile_model(pruned.SerializeToString(), single, workdir, None if timed else 0)
            if timed:
                measured.append((keep, profile.whole))
            owners = _owners(pruned, set(nodes), profile)
            for name, t in profile.kernel.items():
                if name in owners:
                    seconds[index[owners[name]]] += t
                    held[index[owners[name]]] += 1
                else:
                    unheld[name] = max(unheld.get(name, 0.0), t)
        elif timed:
            measured.append((keep, benchmark_model(pruned.SerializeToString(), single)[0].median_ms / 1000.0))
        for i in range(len(nodes)):  # every layer the profile shows: one more observation of its cell
            if held[i]:
                seen[i].setdefault(at[i], []).append(float(seconds[i]))
                counts[i][at[i]] = int(held[i])
                cells[i][at[i]] = float(np.median(seen[i][at[i]]))
        missing = [i for i in wanted if at[i] not in cells[i]]
        if missing:  # not in the profile (fused away by the provider, or not profiled): the layer alone
            by_name = {n.name: n for n in pruned.graph.node}
            inits = {t.name for t in pruned.graph.initializer}
            extractor = Extractor(onnx.shape_inference.infer_shapes(pruned, data_prop=True))
            for i in missing:
                node = by_name.get(nodes[i])
                if node is None:
                    continue
                sub = extractor.extract_model([x for x in node.input if x and x not in inits], list(node.output))
                cells[i][at[i]] = benchmark_model(sub.SerializeToString(), single)[0].median_ms / 1000.0
                counts[i][at[i]] = 0
                alone.add(nodes[i])

    everyone = list(range(len(nodes)))
    try:
        full = analysis.full_keep()
        measure(full, everyone)
        for i in range(levels_max):
            say(f"latency table: grid row {i + 1}/{levels_max}")
            for j in range(levels_max):
                levels = {gid: w[min(i if colour.get(gid, 0) == 0 else j, len(w) - 1)] for gid, w in widths.items()}
                measure(mask_of(levels), everyone)
        # cells a layer lacks (its two groups share a colour): masks of its own
        for n in everyone:
            a, b = pairs[n]
            if a < 0 or b < 0 or a == b or colour.get(a) != colour.get(b):
                continue
            for wa in widths[a]:
                for wb in widths[b]:
                    measure(mask_of({a: wa, b: wb}), [n])
        probe = profiler_cost(single, workdir) if in_context and len(alone) < len(nodes) else None
    finally:
        scratch.cleanup()
    kept_nodes = [i for i in everyone if cells[i]]
    table = LatencyTable(analysis, [nodes[i] for i in kept_nodes], [in_seg[i] for i in kept_nodes],
                         [out_seg[i] for i in kept_nodes], [cells[i] for i in kept_nodes], 0.0, 0.0)
    node_counts = LatencyTable(analysis, table.nodes, table.in_seg, table.out_seg,
                               [{k: float(v) for k, v in counts[i].items()} for i in kept_nodes], 0.0, 0.0)
    # calibration: the timed masks' whole-model times (profiler off) against their cells:
    # whole = residual + scale x (sum of cells - per_node x profiled nodes)
    sums = np.array([table.node_seconds(k).sum() for k, _ in measured])
    held_nodes = np.array([node_counts.node_seconds(k).sum() for k, _ in measured])
    wholes = np.array([w for _, w in measured])
    scale, residual, per_node = _fit(sums, held_nodes, wholes, probe)
    for i, c in zip(kept_nodes, table.cells):  # net of the profiler's cost (a layer below its resolution: 0)
        for k in c:
            c[k] = max(c[k] - per_node * counts[i][k], 0.0)
    table.scale, table.residual, table.full_seconds = scale, residual, float(wholes[0])
    predicted = residual + scale * (sums - per_node * held_nodes)
    table.meta = {"method": "in context (profiled whole model)" if probe is not None else "layers timed alone", "provider": cfg.provider, "batch": batch,
                  "threads": cfg.threads, "max_levels": max_levels, "onnxruntime": ort.__version__,
                  "seconds_to_build": round(time.perf_counter() - t0, 2),
                  "cells": int(sum(len(c) for c in table.cells)), "layers": len(table.nodes),
                  "layers_without_table": [nodes[i] for i in everyone if not cells[i]],
                  "layers_timed_alone": sorted(alone),
                  "nodes_charged_to_no_layer": {n: round(t, 9) for n, t in sorted(unheld.items())},
                  "cells_seen_again": _spread(seen),
                  "calibration": {"masks": len(measured), "profiler_seconds_per_node": per_node,
                                  "fit_mean_abs_error": float(np.mean(np.abs(predicted / wholes - 1.0))),
                                  "fit_max_abs_error": float(np.max(np.abs(predicted / wholes - 1.0))),
                                  "layer_sums": sums.tolist(), "profiled_nodes": held_nodes.tolist(),
                                  "whole": wholes.tolist()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table.to_json()) + "\n")
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs the next run a measurement
    return table


def _spread(seen: list[dict[tuple[int, int], list[float]]]) -> dict[str, float]:
    """Cells observed in several grid masks (the same widths, other neighbours): how many, and
    the median and largest ratio of their slowest to fastest observation."""
    ratios = [max(v) / min(v) for cells in seen for v in cells.values() if len(v) > 1 and min(v) > 0]
    return {"cells": len(ratios), "median_ratio": float(np.median(ratios)) if ratios else 1.0,
            "max_ratio": max(ratios, default=1.0)}


def profiler_cost(cfg: BenchConfig, workdir: Path, chain: int = 40, repeats: int = 5) -> float:
    """Seconds the profiler adds to each node's kernel time (beyond the node's own cost in an
    unprofiled run): profiled and unprofiled runs of a chain of `chain` tiny Relu nodes against
    a single one (100 runs each, the median of `repeats`), at most a chain node's profiled time."""
    from onnx import TensorProto, helper

    def model(n: int) -> bytes:
        shape = [cfg.batch_sizes[0], 8, 2, 2]
        graph = helper.make_graph([helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(n)],
                                  "chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, shape)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()

    runs = BenchConfig(provider=cfg.provider, batch_sizes=cfg.batch_sizes[:1], threads=cfg.threads, warmup=10,
                       runs=100, seed=cfg.seed)
    short, long = model(1), model(chain + 1)
    added = []
    for _ in range(repeats):
        one, many = profile_model(short, runs, workdir), profile_model(long, runs, workdir)
        per_node = sum(many.kernel.values()) / max(len(many.kernel), 1)
        added.append(min((sum(many.kernel.values()) - sum(one.kernel.values()) - (many.whole - one.whole)) / chain,
                         per_node))
    return max(float(np.median(added)), 0.0)


def _fit(sums: np.ndarray, nodes: np.ndarray, wholes: np.ndarray,
         per_node: float | None = None) -> tuple[float, float, float]:
    """(scale, residual, profiler seconds per node) of `wholes ~ residual + scale x (sums -
    per_node x nodes)`. Cells in context (`per_node` given, `profiler_cost`): the profiled nodes
    and the whole run measure the same work, so the scale is 1 and the residual is the median of
    `wholes - sums + per_node x nodes`. Cells timed alone (`per_node` None): each pays the
    per-run overhead and misses the graph's fusions, so scale and residual are a least-squares
    line (a constant where the layers do not explain the latency)."""
    if per_node is not None:
        return 1.0, float(np.median(wholes - sums + per_node * nodes)), per_node
    if len(sums) >= 2 and np.ptp(sums) > 0:
        scale, residual = np.polyfit(sums, wholes, 1)
        if scale > 0:
            return float(scale), float(residual), 0.0
    return 0.0, float(np.mean(wholes)), 0.0
