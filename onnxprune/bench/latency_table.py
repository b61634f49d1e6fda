"""A per-layer latency table: a model's onnxruntime latency under any keep mask, looked up
instead of measured (`--target-latency`).

For every layer with a MACs term in the cost model (Conv, Gemm, MatMul ...), the table holds
its time at a grid of (input width, output width) pairs: the widths each channel group may take
(multiples of its `--round-to` block, at most `max_levels` per group). The times are measured
once, on the target provider at the target batch size, on the layer alone: the pruned model of
a grid mask is cut down to that one node (`onnx.utils.Extractor`, so the layer is exactly what
the rewrite produced, whatever its op) and timed. Grid masks set the groups of one colour (a
2-colouring of "feeds a layer" between groups) to level i and the others to level j, so one
rewrite measures a cell of nearly every layer; cells a layer still lacks get masks of their own.

A mask's latency = `residual` + `scale` x the sum of its layers' times (bilinear between grid
widths, clamped outside). `scale` and `residual` are fitted (least squares) to whole-model
measurements of the original and of uniformly thinned masks: timed alone, every layer pays
onnxruntime's per-run overhead and misses the fusions of the whole graph, and the other ops
(Add, pooling ...) are not in the sum. `benchmarks/latency_table.py` validates it
against whole-model measurements.

Tables are cached as JSON under `$XDG_CACHE_HOME/onnxprune/latency/`, keyed by the model's
bytes, provider, batch, threads, grid and onnxruntime version.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx.utils import Extractor

from onnxprune.bench.latency import BenchConfig, benchmark_model
from onnxprune.deps import Analysis

FORMAT = 1
CALIBRATION = (0.0, 0.33, 0.67, 1.0)  # uniform grid levels of the calibration masks (1.0: the original)


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
    segs = [(int(o) if o < n_seg else -1, int(i) if i < n_seg else -1) for o, i in cost.mac_seg.tolist()]
    out_seg = [o for o, _ in segs]
    in_seg = [i for _, i in segs]
    pairs = [(seg_group.get(i, -1), seg_group.get(o, -1)) for i, o in zip(in_seg, out_seg)]
    colour = _two_colours(list(groups), [(a, b) for a, b in pairs if a >= 0 and b >= 0])
    cells: list[dict[tuple[int, int], float]] = [{} for _ in nodes]
    batch = cfg.batch_sizes[0]
    single = BenchConfig(provider=cfg.provider, batch_sizes=(batch,), threads=cfg.threads, warmup=cfg.warmup,
                         runs=cfg.runs, seed=cfg.seed)

    def mask_of(levels: Mapping[int, int]) -> np.ndarray:
        keep = analysis.full_keep()
        for gid, w in levels.items():
            g = groups[gid]
            local = np.zeros(g.units, dtype=bool)
            local[:w] = True
            keep[g.unit_slice] = local
        return analysis.repair(keep)

    def measure(keep: np.ndarray, wanted: list[int]) -> None:
        counts = LatencyTable(analysis, nodes, in_seg, out_seg, cells, 0.0, 0.0)._counts(keep)
        todo = []
        for i in wanted:
            cell = (int(counts[in_seg[i]]) if in_seg[i] >= 0 else 0, int(counts[out_seg[i]]) if out_seg[i] >= 0 else 0)
            if cell not in cells[i]:
                todo.append((i, cell))
        if not todo:
            return
        pruned = materialize(keep)
        by_name = {n.name: n for n in pruned.graph.node}
        inits = {t.name for t in pruned.graph.initializer}
        extractor = Extractor(onnx.shape_inference.infer_shapes(pruned, data_prop=True))
        for i, cell in todo:
            node = by_name.get(nodes[i])
            if node is None:
                continue
            inputs = [x for x in node.input if x and x not in inits]
            sub = extractor.extract_model(inputs, list(node.output))
            seconds = benchmark_model(sub.SerializeToString(), single)[0].median_ms / 1000.0
            cells[i][cell] = seconds

    levels_max = max((len(w) for w in widths.values()), default=1)
    everyone = list(range(len(nodes)))
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
    full = analysis.full_keep()
    measure(full, everyone)
    kept_nodes = [i for i in everyone if cells[i]]
    table = LatencyTable(analysis, [nodes[i] for i in kept_nodes], [in_seg[i] for i in kept_nodes],
                         [out_seg[i] for i in kept_nodes], [cells[i] for i in kept_nodes], 0.0, 0.0)
    # calibration: whole-model latency against the layers' sum, original and uniformly thinned
    sums, wholes = [], []
    for q in CALIBRATION:
        keep = full if q == 1.0 else mask_of({gid: w[int(round(q * (len(w) - 1)))] for gid, w in widths.items()})
        sums.append(float(table.node_seconds(keep).sum()))
        wholes.append(benchmark_model(materialize(keep).SerializeToString(), single)[0].median_ms / 1000.0)
    table.full_seconds = wholes[-1]
    scale, residual = np.polyfit(sums, wholes, 1) if np.ptp(sums) > 0 else (0.0, wholes[-1])
    if scale <= 0:  # the layers do not explain the latency: a constant (the measurement says so)
        scale, residual = 0.0, float(np.mean(wholes))
    table.scale, table.residual = float(scale), float(residual)
    table.meta = {"provider": cfg.provider, "batch": batch, "threads": cfg.threads, "max_levels": max_levels,
                  "onnxruntime": ort.__version__, "seconds_to_build": round(time.perf_counter() - t0, 2),
                  "cells": int(sum(len(c) for c in table.cells)), "layers": len(table.nodes),
                  "layers_without_table": [nodes[i] for i in everyone if not cells[i]],
                  "calibration": {"levels": list(CALIBRATION), "layer_sums": sums, "whole": wholes}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table.to_json()) + "\n")
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs the next run a measurement
    return table
