"""The per-layer latency table (`onnxprune.bench.latency_table`): every layer gets a cell at
each measured width pair, measured in context (the profiled whole model, its optimized nodes
mapped back to the layers), lookups between them interpolate, the table is cached on disk and
keyed by what it was measured for, and a latency-budgeted gat-ppo search uses it as a cheap
meter (every candidate within budget, at the runtime's widths). Whether it predicts measured
latency within 10% is timing-sensitive: `benchmarks/latency_table.py` on a quiet machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence
from unittest import mock

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.bench import BenchConfig, benchmark_model
from onnxprune.bench import latency_table as lt
from onnxprune.bench.latency import NodeProfile, profile_model
from onnxprune.criteria import weight_scores
from onnxprune.deps import Analysis, analyze
from onnxprune.rewrite import apply_keep
from onnxprune.search import Budget, BudgetMeter, SearchConfig, SearchContext
from onnxprune.search.gat_ppo import run as gat_ppo_run
from onnxprune.search.rounding import is_rounded, width_multiples

FAST = BenchConfig(warmup=1, runs=3)
RESNET20 = Path(__file__).resolve().parent.parent / "benchmarks" / "models" / "resnet20_folded.onnx"


@pytest.fixture(scope="module")
def table(tiny, tmp_path_factory: pytest.TempPathFactory) -> lt.LatencyTable:
    _, analysis = tiny
    cache = tmp_path_factory.mktemp("latency")
    return lt.build_latency_table(analysis, lambda k: apply_keep(analysis, k), width_multiples(analysis, "auto"),
                                  FAST, max_levels=4, cache=cache)


def test_group_widths_follow_the_multiples() -> None:
    assert lt.group_widths(64, 8, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert lt.group_widths(64, 8, 4) == [8, 24, 48, 64]  # thinned evenly, smallest and full kept
    assert lt.group_widths(16, 1, 4) == [1, 6, 11, 16]
    assert lt.group_widths(6, 8, 8) == [6]


def test_every_layer_has_a_full_grid(tiny, table: lt.LatencyTable) -> None:
    _, analysis = tiny
    assert table.meta["layers_without_table"] == [] and len(table.nodes) == len(analysis.cost.mac_nodes)
    multiples = width_multiples(analysis, "auto")
    widths = {g.id: lt.group_widths(g.units, multiples[g.id], 4) for g in analysis.prunable()}
    seg_group = lt._segment_groups(analysis)
    for name, a, b, cells in zip(table.nodes, table.in_seg, table.out_seg, table.cells):
        ga, gb = seg_group.get(a), seg_group.get(b)
        if ga is not None and gb is not None and ga != gb:  # every (input, output) width pair measured
            assert {(x, y) for x in widths[ga] for y in widths[gb]} <= set(cells), name
        assert all(v >= 0 for v in cells.values())  # net of the profiler's cost: a 1-node layer may be ~0
    assert table.node_seconds(analysis.full_keep()).sum() > 0
    # every layer found in the profile (none timed alone on the CPU), nothing left unattributed
    assert table.meta["layers_timed_alone"] == [] and table.meta["nodes_charged_to_no_layer"] == {}
    # latency = residual + scale x the layers' sum, fitted on every profiled grid mask
    calibration = table.meta["calibration"]
    assert table.scale == 1.0 and calibration["masks"] == len(calibration["whole"]) >= 4
    assert calibration["profiler_seconds_per_node"] >= 0
    full = analysis.full_keep()
    assert table(full) == pytest.approx(table.residual + table.scale * table.node_seconds(full).sum())


def test_in_context_node_times_add_up_to_the_whole_model(tiny, tmp_path: Path) -> None:
    """Every optimized node of the profile is charged to a layer and every layer is found; on
    ResNet-20 (25 profiled nodes, about 0.5 ms), the nodes net of the profiler's own cost add up
    to the whole run (the rest, the per-run overhead, is a few microseconds), where a layer
    timed alone would pay the per-run overhead and the layout reorders again."""
    _, analysis = tiny
    model = apply_keep(analysis, analysis.full_keep())
    cfg = BenchConfig(threads=1, warmup=5, runs=50)
    profile = profile_model(model.SerializeToString(), cfg, tmp_path)
    owners = lt._owners(model, set(analysis.cost.mac_nodes), profile)
    assert set(owners) == set(profile.kernel)  # every optimized node charged to a layer
    assert set(owners.values()) == set(analysis.cost.mac_nodes)  # and every layer found
    fused = [n for n in profile.kernel if n not in {x.name for x in model.graph.node}]
    assert fused  # onnxruntime renamed (fused / NCHWc) nodes: the mapping is not the identity
    assert not list(tmp_path.iterdir())  # the profile and the optimized model are read and removed

    resnet = analyze(RESNET20)
    model = apply_keep(resnet, resnet.full_keep())
    profile = profile_model(model.SerializeToString(), cfg, tmp_path)
    owners = lt._owners(model, set(resnet.cost.mac_nodes), profile)
    assert set(owners) == set(profile.kernel) and set(owners.values()) == set(resnet.cost.mac_nodes)
    net = sum(profile.kernel.values()) - lt.profiler_cost(cfg, tmp_path) * len(profile.kernel)
    assert 0.75 * profile.whole < net < 1.25 * profile.whole, (net, profile.whole)
    whole = benchmark_model(model.SerializeToString(), cfg)[0].median_ms / 1e3
    assert 0.5 * whole < profile.whole < 2.0 * whole  # timed in the profiled session ~ timed afresh


def _graph(nodes: list[tuple[str, str, list[str], list[str]]]) -> onnx.ModelProto:
    made = [helper.make_node(op, ins, outs, name=name) for name, op, ins, outs in nodes]
    graph = helper.make_graph(made, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info(nodes[-1][3][0], TensorProto.FLOAT, None)])
    return helper.make_model(graph)


def test_optimized_nodes_map_back_to_layers() -> None:
    """onnxruntime's names, as read from its profiles: an NCHWc Conv fused with its Relu is named
    after the Relu's output (`/relu/Relu_output_0_nchwc`), one fused with Add + Relu after the
    Conv's output, a generated node (`ReorderOutput_token_7`) after nothing; an unfused node
    keeps its name."""
    #   x -> conv1 -> relu -> conv2 -> add(+relu out) -> relu2 -> pool -> flat -> fc -> y
    model = _graph([("conv1", "Conv", ["x", "w1"], ["c1"]), ("relu", "Relu", ["c1"], ["r1"]),
                    ("conv2", "Conv", ["r1", "w2"], ["c2"]), ("add", "Add", ["c2", "r1"], ["a"]),
                    ("relu2", "Relu", ["a"], ["r2"]), ("pool", "GlobalAveragePool", ["r2"], ["p"]),
                    ("flat", "Flatten", ["p"], ["f"]), ("fc", "Gemm", ["f", "wf"], ["y"])])
    layers = {"conv1", "conv2", "fc"}
    optimized = {  # name: (inputs, outputs) in the optimized graph
        "ReorderInput": (["x"], ["x_nchwc"]),
        "r1_nchwc": (["x_nchwc", "w1"], ["t1"]),
        "c2_nchwc": (["t1", "w2", "t1"], ["t2"]),
        "p_nchwc": (["t2"], ["t3"]),
        "ReorderOutput_token_7": (["t3"], ["p"]),
        "flat": (["p"], ["f"]),
        "fc": (["f", "wf"], ["y"]),
        "lonely": ([], ["z"]),
    }
    profile = NodeProfile({n: 1e-6 for n in optimized}, {n: v[0] for n, v in optimized.items()},
                          {n: v[1] for n, v in optimized.items()}, 1e-5)
    owners = lt._owners(model, layers, profile)
    assert owners == {"ReorderInput": "conv1", "r1_nchwc": "conv1", "c2_nchwc": "conv2", "p_nchwc": "conv2",
                      "ReorderOutput_token_7": "conv2", "flat": "conv2", "fc": "fc"}  # "lonely": nobody's


def test_a_layer_missing_from_the_profile_is_timed_alone(tiny, tmp_path: Path) -> None:
    """A provider that fuses a layer away (no node of the profile holds it): its cells are timed
    on the layer cut out of the model, and the table says so."""
    _, analysis = tiny
    lost = analysis.cost.mac_nodes[1]
    real = lt.profile_model

    def without(model_bytes: bytes, cfg: BenchConfig, workdir: Path, timed_runs: int | None = None) -> NodeProfile:
        profile = real(model_bytes, cfg, workdir, timed_runs)
        model = onnx.load_from_string(model_bytes)
        owners = lt._owners(model, set(analysis.cost.mac_nodes), profile)
        kernel = {n: t for n, t in profile.kernel.items() if owners.get(n) != lost}
        return NodeProfile(kernel, profile.inputs, profile.outputs, profile.whole)

    with mock.patch.object(lt, "profile_model", side_effect=without):
        table = lt.build_latency_table(analysis, lambda k: apply_keep(analysis, k), width_multiples(analysis, "auto"),
                                       FAST, 2, tmp_path)
    assert table.meta["layers_timed_alone"] == [lost] and table.meta["layers_without_table"] == []
    assert all(v > 0 for v in table.cells[table.nodes.index(lost)].values())


def test_the_fit_of_each_method() -> None:
    rng = np.random.default_rng(0)
    sums = rng.uniform(1e-4, 5e-4, 40)
    nodes = rng.integers(20, 33, 40).astype(float)
    # in context: scale 1, the residual the median of what the cells (net of the profiler) miss
    wholes = 2e-5 + sums - 2e-6 * nodes
    wholes[3] *= 3  # a load burst moves the median by one mask at most
    scale, residual, per_node = lt._fit(sums, nodes, wholes, 2e-6)
    assert (scale, per_node) == (1.0, 2e-6) and residual == pytest.approx(2e-5, abs=1e-12)
    # timed alone: a least-squares line (each cell pays the run overhead)
    assert lt._fit(sums, nodes, 1e-4 + 0.5 * sums) == pytest.approx((0.5, 1e-4, 0.0))
    assert lt._fit(sums, nodes, 1e-4 - 0.5 * sums)[0] == 0.0  # no positive scale: a constant


def test_providers_without_synchronous_profiles_time_layers_alone(tiny, tmp_path: Path) -> None:
    """On the GPU a node's profiled time is the launch of an asynchronous kernel (and TensorRT
    is one node): there every layer is timed alone, with the first method's fitted line."""
    _, analysis = tiny
    cfg = BenchConfig(provider="cuda", warmup=1, runs=3)
    with mock.patch.object(lt, "profile_model", side_effect=AssertionError("profiled")):
        table = lt.build_latency_table(analysis, lambda k: apply_keep(analysis, k), width_multiples(analysis, "auto"),
                                       cfg, 2, tmp_path)
    assert table.meta["method"] == "layers timed alone"
    assert table.meta["layers_timed_alone"] == sorted(analysis.cost.mac_nodes)
    assert all(v > 0 for c in table.cells for v in c.values())


def test_lookup_is_exact_on_cells_and_bilinear_between() -> None:
    cells = {(8, 8): 1.0, (16, 8): 2.0, (8, 16): 3.0, (16, 16): 5.0}
    assert lt._lookup(cells, 16, 8) == 2.0
    assert lt._lookup(cells, 12, 8) == pytest.approx(1.5)
    assert lt._lookup(cells, 12, 12) == pytest.approx((1 + 2 + 3 + 5) / 4)
    assert lt._lookup(cells, 4, 40) == 3.0  # clamped to the grid
    tied = {(8, 8): 1.0, (16, 16): 3.0}  # a depthwise layer: input and output widths move together
    assert lt._lookup(tied, 12, 12) == pytest.approx(2.0)


def test_the_table_is_cached_and_keyed(tiny, table: lt.LatencyTable, tmp_path: Path) -> None:
    _, analysis = tiny
    multiples = width_multiples(analysis, "auto")
    built = lt.build_latency_table(analysis, lambda k: apply_keep(analysis, k), multiples, FAST, 4, tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1
    with mock.patch.object(lt, "benchmark_model", side_effect=AssertionError("measured again")), \
            mock.patch.object(lt, "profile_model", side_effect=AssertionError("profiled again")):
        again = lt.build_latency_table(analysis, lambda k: apply_keep(analysis, k), multiples, FAST, 4, tmp_path)
    keep = analysis.full_keep()
    keep[analysis.prunable()[1].unit_slice][:8] = False
    assert again(keep) == built(keep) and again.cells == built.cells
    model = analysis.graph.model.SerializeToString()
    key = lt.table_key(model, FAST, multiples, 4)
    assert key != lt.table_key(model, BenchConfig(provider="cuda", warmup=1, runs=3), multiples, 4)
    assert key != lt.table_key(model, BenchConfig(batch_sizes=(8,), warmup=1, runs=3), multiples, 4)
    assert key != lt.table_key(model, FAST, width_multiples(analysis, 1), 4)
    assert key != lt.table_key(model + b"x", FAST, multiples, 4)


class _Proxy:
    """A cheap stand-in for the evaluator: the kept share of the MACs."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis, self.evaluations, self.seconds = analysis, 0, 0.0

    def evaluate(self, keeps: Sequence[np.ndarray], images: Any = None) -> list[float]:
        self.evaluations += len(keeps)
        return [self.analysis.cost.macs(k) / self.analysis.macs for k in keeps]

    def close(self) -> None:
        pass


def test_a_latency_budgeted_search_reads_the_table(tiny, table: lt.LatencyTable) -> None:
    _, analysis = tiny
    l1 = weight_scores(analysis, "l1")
    # the measured grid with deterministic times (a staircase in blocks of 16 output channels)
    table = lt.LatencyTable(analysis, table.nodes, table.in_seg, table.out_seg,
                            [{(a, b): 1e-6 * (1 + max(a, 1) * -(-b // 16)) for a, b in c} for c in table.cells],
                            table.full_seconds, 1e-5, 1.0)
    # a target the table can reach (its smallest grid mask keeps some latency: run overhead)
    low = analysis.full_keep()
    for g in analysis.prunable():
        low[g.unit_slice] = False
        low[g.unit_start:g.unit_start + 8] = True
    target = 0.5 * (1.0 + table(low) / table(analysis.full_keep()))
    cfg = SearchConfig(budget=Budget("latency", target), seed=0, progress=False,
                       options={"episodes": 16, "batch": 8, "gat_backend": "torch", "pretrain": False,
                                "sensitivity": False})
    meter = BudgetMeter(analysis, cfg.budget, table)
    assert meter.cheap
    result = gat_ppo_run(SearchContext("gat-ppo", analysis, _Proxy(analysis), meter, {"l1": l1, "taylor": l1}, cfg))
    multiples = width_multiples(analysis, "auto")
    assert meter.feasible(result.keep) and is_rounded(analysis, result.keep, multiples)
    assert "rounded" not in result.summary
    records = result.trajectory.records
    assert len(records) == 16 and all(r["feasible"] and r["latency"] <= target + 1e-6 for r in records)  # records: 6 decimals


def test_the_api_hands_latency_searches_the_cached_table(tiny, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    from onnxprune.api import search_callables

    splits, analysis = tiny
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = SearchConfig(budget=Budget("latency", 0.8), progress=False)
    said: list[str] = []
    calls = search_callables(analysis, splits, cfg, said.append)
    assert isinstance(calls["latency"], lt.LatencyTable) and BudgetMeter(analysis, cfg.budget, calls["latency"]).cheap
    assert len(list((tmp_path / "onnxprune" / "latency").glob("*.json"))) == 1 and said
    # --latency-per-candidate, or another budget: every candidate rewritten and timed
    assert not isinstance(search_callables(analysis, splits, cfg, latency_table=False)["latency"], lt.LatencyTable)
    macs = SearchConfig(budget=Budget("macs", 0.5), progress=False)
    assert not isinstance(search_callables(analysis, splits, macs)["latency"], lt.LatencyTable)
    # --latency-threads: another table, measured at that many onnxruntime threads
    one = search_callables(analysis, splits, cfg, latency_threads=1)["latency"]
    assert isinstance(one, lt.LatencyTable) and one.meta["threads"] == 1 and calls["latency"].meta["threads"] == 0
    assert len(list((tmp_path / "onnxprune" / "latency").glob("*.json"))) == 2
