"""The search framework shared by gat-ppo, rl-pruner and sacp: budgets and `make_feasible`,
the evaluator (cache, worker processes), checkpoints, options, trajectory and plot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from onnxprune.criteria import weight_scores
from onnxprune.deps import Analysis
from onnxprune.errors import InputError, UnsupportedModelError
from onnxprune.search import (Budget, BudgetMeter, EvalConfig, LocalEvaluator, SearchConfig, SearchContext,
                              make_feasible, parse_options, removal_order)
from onnxprune.search.plot import plot_trajectory
from onnxprune.torchcopy import MaskedModel, to_torch


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_keep(analysis: Analysis, rng: np.random.Generator, p: float = 0.6) -> np.ndarray:
    keep = analysis.full_keep()
    for g in analysis.prunable():
        local = rng.random(g.units) < p
        local[rng.integers(g.units)] = True
        keep[g.unit_slice] = local
    return keep


@pytest.mark.parametrize("kind", ["macs", "params", "channels"])
def test_budget_ratio_and_feasibility(tiny, kind: str) -> None:
    _, analysis = tiny
    meter = BudgetMeter(analysis, Budget(kind, 0.5))
    assert meter.ratio(analysis.full_keep()) == pytest.approx(1.0)
    assert not meter.feasible(analysis.full_keep())
    assert meter.violation(analysis.full_keep()) == pytest.approx(0.5)
    keep = _random_keep(analysis, np.random.default_rng(0), 0.3)
    expect = {"macs": analysis.cost.macs(keep) / analysis.macs,
              "params": analysis.cost.params(keep) / analysis.params,
              "channels": sum(keep[g.unit_slice].sum() for g in analysis.prunable())
              / sum(g.units for g in analysis.prunable())}[kind]
    assert meter.ratio(keep) == pytest.approx(expect)


def test_latency_budget_uses_the_measurement_and_caches_it(tiny) -> None:
    _, analysis = tiny
    calls = []

    def fake(keep: np.ndarray) -> float:
        calls.append(1)
        return float(keep.sum())

    meter = BudgetMeter(analysis, Budget("latency", 0.8), latency_fn=fake)
    keep = _random_keep(analysis, np.random.default_rng(1))
    assert meter.ratio(keep) == pytest.approx(keep.sum() / analysis.full_keep().sum())
    meter.ratio(keep)
    assert len(calls) == 2  # the full model once, the candidate once


@pytest.mark.parametrize("bad", [("flops", 0.5), ("macs", 0.0), ("macs", 1.5)])
def test_budget_is_validated(bad: tuple[str, float]) -> None:
    with pytest.raises(InputError):
        Budget(*bad)


@pytest.mark.parametrize("kind, target", [("macs", 0.5), ("macs", 0.2), ("params", 0.4), ("channels", 0.3)])
def test_make_feasible_is_feasible_and_minimal(tiny, kind: str, target: float) -> None:
    _, analysis = tiny
    scores = weight_scores(analysis, "l1")
    meter = BudgetMeter(analysis, Budget(kind, target))
    start = analysis.full_keep()
    keep = make_feasible(meter, start, scores)
    assert meter.feasible(keep)
    removed = np.flatnonzero(start & ~keep)
    order = removal_order(analysis, scores, start)
    assert set(removed.tolist()) == set(order[:removed.size].tolist())  # least important first
    one_less = start.copy()
    one_less[order[:removed.size - 1]] = False
    assert not meter.feasible(analysis.repair(one_less, scores))  # not one unit more than needed


def test_make_feasible_out_of_reach(tiny) -> None:
    _, analysis = tiny
    meter = BudgetMeter(analysis, Budget("macs", 0.001))
    with pytest.raises(UnsupportedModelError, match="out of reach"):
        make_feasible(meter, analysis.full_keep(), weight_scores(analysis, "l1"))


def test_evaluator_matches_masked_model_and_caches(tiny) -> None:
    splits, analysis = tiny
    rng = np.random.default_rng(2)
    keeps = [_random_keep(analysis, rng) for _ in range(3)]
    cfg = EvalConfig(images=100, recalibrate_bn=False)
    with LocalEvaluator(analysis, to_torch(analysis), splits, cfg) as ev:
        accs = ev.evaluate(keeps + [keeps[0]])
        assert ev.evaluations == 3 and accs[0] == accs[3]
        assert ev.evaluate([keeps[1]]) == [accs[1]] and ev.evaluations == 3
        full = ev.evaluate([analysis.full_keep()], images=0)[0]
        assert ev.evaluations == 4
    masked = MaskedModel(to_torch(analysis), analysis)
    x, y = splits.val
    masked.apply(analysis.full_keep())
    assert full == pytest.approx(masked.evaluate(x, y)[0])
    # the evaluator's subset is a seeded permutation prefix: compare on the same images
    order = np.random.default_rng(cfg.seed).permutation(len(y))[:100]
    masked.apply(keeps[2])
    assert accs[2] == pytest.approx(masked.evaluate(x[order], y[order])[0])


def test_worker_processes_give_the_same_scores(tiny) -> None:
    splits, analysis = tiny
    rng = np.random.default_rng(3)
    keeps = [_random_keep(analysis, rng) for _ in range(4)]
    cfg = EvalConfig(images=120, recalibrate_bn=True, bn_batches=2, bn_batch_size=64)
    with LocalEvaluator(analysis, to_torch(analysis), splits, cfg) as ev:
        local = ev.evaluate(keeps)
    with LocalEvaluator(analysis, to_torch(analysis), splits, EvalConfig(**{**cfg.__dict__, "workers": 2})) as ev:
        pooled = ev.evaluate(keeps)
        assert ev.evaluations == 4
    assert pooled == pytest.approx(local, abs=1e-6)


def _context(analysis: Analysis, splits: object, **cfg: object) -> SearchContext:
    ev = LocalEvaluator(analysis, to_torch(analysis), splits, EvalConfig(images=50, recalibrate_bn=False))
    scfg = SearchConfig(budget=Budget("macs", 0.5), **cfg)  # type: ignore[arg-type]
    return SearchContext("test", analysis, ev, BudgetMeter(analysis, scfg.budget),
                         {"l1": weight_scores(analysis, "l1")}, scfg)


def test_checkpoint_round_trip_and_refusals(tiny, tmp_path: Path) -> None:
    splits, analysis = tiny
    path = tmp_path / "search.ckpt"
    ctx = _context(analysis, splits, checkpoint=str(path), options={"episodes": 3})
    assert ctx.checkpoint.load() is None  # not resuming
    ctx.checkpoint.save({"episode": 2, "keep": analysis.full_keep()})
    again = _context(analysis, splits, checkpoint=str(path), resume=True, options={"episodes": 3})
    state = again.checkpoint.load()
    assert state is not None and state["episode"] == 2 and state["keep"].all()
    other = _context(analysis, splits, checkpoint=str(path), resume=True, options={"episodes": 4})
    with pytest.raises(InputError, match="another model"):
        other.checkpoint.load()
    path.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="not an onnxprune checkpoint"):
        again.checkpoint.load()
    with pytest.raises(InputError, match="resume needs checkpoint"):  # the API names parameters
        SearchConfig(resume=True)


def test_finish_enforces_the_budget_and_writes_trajectory_and_plot(tiny, tmp_path: Path) -> None:
    splits, analysis = tiny
    traj, png = tmp_path / "t.json", tmp_path / "t.png"
    ctx = _context(analysis, splits, trajectory=str(traj), plot=str(png))
    for i in range(6):
        ctx.trajectory.add(episode=i, reward=-0.5 + 0.2 * i, feasible=i > 2, val_top1=0.5 + 0.05 * i,
                           keep_ratio=np.float64(0.6))
    result = ctx.finish(analysis.full_keep(), picked="sampled")  # over budget: made feasible
    assert ctx.meter.feasible(result.keep) and result.summary["made_feasible"]
    assert result.summary["picked"] == "sampled+made_feasible"  # the label follows the returned mask
    data = json.loads(traj.read_text())
    assert data["method"] == "test" and len(data["records"]) == 6
    assert data["meta"]["summary"]["budget_ratio"] <= 0.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_trajectory({"records": []}, tmp_path / "empty.png")  # nothing to plot is not an error


@dataclass(frozen=True)
class _Opts:
    episodes: int = 3
    lr: float = 0.1
    pretrain: bool = True
    backend: str = "auto"


def test_parse_options() -> None:
    got = parse_options(_Opts, {"episodes": "5", "lr": "0.5", "pretrain": "false"}, "m", preset={"episodes": 9})
    assert got == _Opts(episodes=5, lr=0.5, pretrain=False)
    assert parse_options(_Opts, {}, "m", preset={"episodes": 9}).episodes == 9
    with pytest.raises(InputError, match="unknown option 'foo'"):
        parse_options(_Opts, {"foo": 1}, "m")
    with pytest.raises(InputError, match="cannot read"):
        parse_options(_Opts, {"episodes": "many"}, "m")


@pytest.mark.parametrize("kind, target", [("macs", 0.5), ("params", 0.6), ("channels", 0.4)])
def test_fill_budget_adds_the_best_units_up_to_the_budget(tiny, kind: str, target: float) -> None:
    from onnxprune.search import fill_budget

    _, analysis = tiny
    scores = weight_scores(analysis, "l1")
    meter = BudgetMeter(analysis, Budget(kind, target))
    low = make_feasible(BudgetMeter(analysis, Budget(kind, target * 0.6)), analysis.full_keep(), scores)
    filled = fill_budget(meter, low, scores)
    assert meter.feasible(filled)
    assert (filled | low).tolist() == filled.tolist() and filled.sum() > low.sum()  # only additions
    if kind == "channels":  # every unit costs the same: exactly as many as fit were added
        assert meter.ratio(filled) > target - 1.0 / sum(g.units for g in analysis.prunable())
    added = np.flatnonzero(filled & ~low)
    left = np.flatnonzero(~filled & analysis.full_keep())
    normed = {g.id: scores[g.unit_slice].mean() for g in analysis.prunable()}
    group_of = analysis.groups.unit_group
    worst_added = min(scores[u] / normed[group_of[u]] for u in added)
    best_left = max(scores[u] / normed[group_of[u]] for u in left)
    assert worst_added >= best_left  # the most important removed units came back first
    over = analysis.full_keep()
    assert fill_budget(meter, over, scores) is over or np.array_equal(fill_budget(meter, over, scores), over)
