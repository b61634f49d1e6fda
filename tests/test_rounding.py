"""`--round-to auto` (the default): widths multiple of what suits the runtime, MACs target met
within 2%, in every method (search methods round their result in `SearchContext.finish`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest

from onnxprune.api import PruneConfig, prune
from onnxprune.criteria import weight_scores
from onnxprune.criteria.normalize import cross_group_importance
from onnxprune.deps import Analysis, ChannelGroup, analyze
from onnxprune.errors import InputError
from onnxprune.search import AllocationConfig, Budget, BudgetMeter, allocate
from onnxprune.search.rounding import (RUNTIME_WIDTHS, channel_multiples, fill_rounded, floor_rounded,
                                       group_multiple, is_rounded, parse_round_to, swap_rounded,
                                       width_multiples)
from tests import graphs, zoo
from tests.test_zoo import FAST

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.02  # of the original MACs


def _kept(analysis: Analysis, keep: np.ndarray) -> dict[int, int]:
    return {g.id: int(keep[g.unit_slice].sum()) for g in analysis.prunable()}


def assert_rounded(analysis: Analysis, keep: np.ndarray, multiples: dict[int, int]) -> None:
    for g in analysis.prunable():
        k = int(keep[g.unit_slice].sum())
        m = multiples[g.id]
        assert k == g.units or k % m == 0, f"group {g.id}: {k} of {g.units} units kept, not a multiple of {m}"


def test_auto_multiples_follow_the_runtime() -> None:
    analysis = analyze(graphs.concat_channels())  # groups of a few channels: below every threshold
    assert set(width_multiples(analysis, "auto", "cpu").values()) == {1}
    wide = analyze(zoo.export("resnet18", "torchscript"))
    cpu = width_multiples(wide, "auto", "cpu")
    rule = RUNTIME_WIDTHS["cpu"]
    for g in wide.prunable():
        assert cpu[g.id] == rule.channel_multiple(g.channels)  # one channel per unit here
    assert width_multiples(wide, 16, "cpu") == {g.id: 16 for g in wide.prunable()}
    assert set(width_multiples(wide, 1, "cpu").values()) == {1}


def test_grouped_conv_units_round_channels() -> None:
    """A unit of a grouped Conv covers one channel per conv group: 8 channels = 4 units of 2."""
    analysis = analyze(graphs.grouped_conv(groups=2))
    for g in analysis.prunable():
        per_unit = g.channels // g.units
        m = group_multiple(g, 8)
        assert (m * per_unit) % 8 == 0 or m == 1
    assert all(v >= 1 for v in channel_multiples(analysis, 8).values())


def test_round_to_values() -> None:
    assert parse_round_to("auto") == "auto" and parse_round_to("8") == 8 and parse_round_to(1) == 1
    for bad in (0, -8, "x", "1.5", True):
        with pytest.raises(InputError, match="round_to"):
            parse_round_to(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="runtime"):
        AllocationConfig(target_flops=0.5, runtime="tpu")


@pytest.mark.parametrize("round_to", [8, 16])
def test_fill_gives_back_what_bisection_left(round_to: int) -> None:
    """Bisection alone jumps far below the target when every group rounds at once; the fill lands
    just under it, only adding whole blocks."""
    analysis = analyze(zoo.export("resnet18", "torchscript"))
    scores = weight_scores(analysis, "l1")
    multiples = width_multiples(analysis, round_to)
    target = 0.5 * analysis.macs
    low = floor_rounded(analysis, analysis.full_keep() & (np.random.default_rng(0).random(scores.size) < 0.3),
                        scores, multiples)
    low = analysis.repair(low, scores)
    assert_rounded(analysis, low, multiples)
    assert analysis.cost.macs(low) < 0.4 * analysis.macs
    filled = fill_rounded(analysis, low, scores, multiples, lambda k: analysis.cost.macs(k), target)
    assert_rounded(analysis, filled, multiples)
    assert (filled | low).sum() == filled.sum()  # only added
    assert target * (1 - TOLERANCE / 0.5) <= analysis.cost.macs(filled) <= target


def test_global_allocation_swaps_into_the_budget_blocks_cannot_reach() -> None:
    """Global ranking on the shipped ResNet-20 at 50% MACs: whole blocks leave it 1.5% under
    (0.4927); a swap (one group grows, another gives blocks back) lands within 0.2% of the MACs."""
    analysis = analyze(str(ROOT / "benchmarks" / "models" / "resnet20_folded.onnx"))
    scores = weight_scores(analysis, "l1")
    keep = allocate(analysis, scores, AllocationConfig(target_flops=0.5, global_ranking=True))
    assert_rounded(analysis, keep, width_multiples(analysis, "auto", "cpu"))
    ratio = analysis.cost.macs(keep) / analysis.macs
    assert 0.498 <= ratio <= 0.5, ratio


def _groups(*units: int) -> tuple[SimpleNamespace, list[ChannelGroup]]:
    """A stand-in analysis whose prunable groups have `units` units each (one channel a unit)."""
    groups, start = [], 0
    for i, n in enumerate(units):
        groups.append(ChannelGroup(i, n, n, True, None, (), (), start, np.arange(n)))
        start += n
    return SimpleNamespace(prunable=lambda: groups, groups=SimpleNamespace(num_units=start)), groups


#   A: 16 units in blocks of 8, 8 kept (scored 1.0; its 8 removed units score `a_removed`)
#   B:  8 units in steps of 1, all kept, every unit scores 1.0
#   C:  4 units in steps of 1, all kept (`scores_c`), each unit costs 2 (the others 1)
# cost 24 of a limit 27: A's next block (+8) does not fit alone. The swaps: A grows and B gives 5
# units (cost 27: the most budget), or A grows and C gives its 3 worst (cost 26).
UNIT_COST = np.array([1.0] * 16 + [1.0] * 8 + [2.0] * 4)
MULTIPLES = {0: 8, 1: 1, 2: 1}


def _swap_case(a_removed: float, scores_c: list[float]) -> tuple[SimpleNamespace, np.ndarray, np.ndarray,
                                                                  Callable[[np.ndarray], float]]:
    analysis, _ = _groups(16, 8, 4)
    scores = np.array([1.0] * 8 + [a_removed] * 8 + [1.0] * 8 + scores_c)
    keep = np.array([True] * 8 + [False] * 8 + [True] * 12)
    return analysis, scores, keep, lambda k: float(UNIT_COST[k].sum())


def _values(analysis: SimpleNamespace, scores: np.ndarray) -> np.ndarray:
    return cross_group_importance(analysis, scores)  # type: ignore[arg-type]


def test_swap_takes_the_net_positive_swap_not_the_one_using_most_budget() -> None:
    """A's block gains 8 x 0.571 (normalized); B's swap loses 5 x 1.0 (net -0.43), C's loses its
    3 worst, 0.02 + 0.02 + 1.88 (net +2.65): C's is taken although B's uses more budget."""
    analysis, scores, keep, cost = _swap_case(0.4, [10.0, 9.0, 0.1, 0.1])
    multiples = MULTIPLES
    values = _values(analysis, scores)
    out = swap_rounded(analysis, keep, scores, multiples, cost, 27.0, rounds=1, values=values)  # type: ignore[arg-type]
    assert out[:24].all() and out[24:].tolist() == [True, False, False, False], out.astype(int)
    assert cost(out) == 26.0
    assert values[out & ~keep].sum() > values[keep & ~out].sum()
    # without `values` (the searches' use): the swap that uses the most budget, as before
    most = swap_rounded(analysis, keep, scores, multiples, cost, 27.0, rounds=1)  # type: ignore[arg-type]
    assert cost(most) == 27.0 and int(most[16:24].sum()) == 3 and most[24:].all()


def test_swap_declines_a_swap_that_loses_more_importance_than_it_gains() -> None:
    """A's block gains 8 x 0.18 (normalized); B's swap loses 5 x 1.0, C's 3 x 1.0: both declined,
    the mask stays 3 under the limit rather than trading importance for MACs."""
    analysis, scores, keep, cost = _swap_case(0.1, [1.0, 1.0, 1.0, 1.0])
    multiples = MULTIPLES
    out = swap_rounded(analysis, keep, scores, multiples, cost, 27.0, values=_values(analysis, scores))  # type: ignore[arg-type]
    assert out.tolist() == keep.tolist()
    assert cost(swap_rounded(analysis, keep, scores, multiples, cost, 27.0)) == 27.0  # type: ignore[arg-type]


def test_swap_with_per_cost_weighs_unnormalized_impact() -> None:
    """With `per_cost` the scores are loss estimates comparable across groups: A's block, worth
    8 x 10 in impact, pays for 3 of C's units (worth 1 each) although, divided by their group's
    mean, the same scores decline every swap (as in the test above)."""
    analysis, scores, keep, cost = _swap_case(0.1, [1.0, 1.0, 1.0, 1.0])
    scores[:16] *= 100.0  # A: 100 and 10 per unit; B and C: 1
    by_impact = cross_group_importance(analysis, scores, by_cost=True)  # type: ignore[arg-type]
    out = swap_rounded(analysis, keep, scores, MULTIPLES, cost, 27.0, rounds=1, values=by_impact)  # type: ignore[arg-type]
    assert out[:24].all() and int(out[24:].sum()) == 1 and cost(out) == 26.0
    normed = swap_rounded(analysis, keep, scores, MULTIPLES, cost, 27.0, values=_values(analysis, scores))  # type: ignore[arg-type]
    assert normed.tolist() == keep.tolist()


def test_global_allocation_declines_a_net_negative_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped ResNet-20 at 50% MACs with L2 scores: blocks alone keep 0.4899; the swap that
    uses the most budget (0.4972) would lose 7.95 of importance (per-group normalized scores, the
    ranking's scale) for 6.88 gained, and no swap gains more than it loses: none is made."""
    import sys

    analysis = analyze(str(ROOT / "benchmarks" / "models" / "resnet20_folded.onnx"))
    scores = weight_scores(analysis, "l2")
    cfg = AllocationConfig(target_flops=0.5, global_ranking=True)
    keep = allocate(analysis, scores, cfg)
    module = sys.modules["onnxprune.search.allocate"]
    monkeypatch.setattr(module, "swap_rounded", lambda analysis, keep, *args, **kwargs: keep)
    filled = allocate(analysis, scores, cfg)
    values = cross_group_importance(analysis, scores)
    assert analysis.cost.macs(filled) < 0.498 * analysis.macs  # room a swap could use
    gained, lost = values[keep & ~filled].sum(), values[filled & ~keep].sum()
    assert (keep == filled).all(), (gained, lost)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("global_ranking", [False, True], ids=["uniform", "global"])
def test_auto_rounding_meets_target_on_zoo(name: str, exporter: str, global_ranking: bool) -> None:
    """The default (`round_to="auto"`) gives multiples of the chosen widths and lands within 2%
    of the target."""
    analysis = analyze(zoo.export(name, exporter))
    scores = weight_scores(analysis, "l1")
    for target in (0.5, 0.3):
        keep = allocate(analysis, scores, AllocationConfig(target_flops=target, global_ranking=global_ranking))
        assert_rounded(analysis, keep, width_multiples(analysis, "auto", "cpu"))
        ratio = analysis.cost.macs(keep) / analysis.macs
        assert target - TOLERANCE <= ratio <= target, (name, target, ratio)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_default_prune_is_rounded_and_verified(name: str) -> None:
    path = zoo.export(name, "torchscript")
    result = prune(path, PruneConfig(target_flops=0.5))
    analysis = result.analysis
    assert_rounded(analysis, result.keep, width_multiples(analysis, "auto", "cpu"))
    m0, m1 = result.macs
    assert 0.5 - TOLERANCE <= m1 / m0 <= 0.5
    assert result.verified is not None
    # the rule applied to some group (groups under the smallest tier keep any width)
    assert any(m > 1 for m in width_multiples(analysis, "auto", "cpu").values())


def test_search_result_is_rounded() -> None:
    """`SearchContext.finish` rounds what a search returns (here a deliberately ragged mask)."""
    from onnxprune.search.base import SearchConfig, SearchContext
    from onnxprune.search.evaluator import Evaluator

    class NoEval(Evaluator):
        evaluations = 0
        seconds = 0.0

        def evaluate(self, masks, images=None):  # type: ignore[no-untyped-def]
            return [0.5 for _ in masks]

        def close(self) -> None:
            pass

    analysis = analyze(zoo.export("resnet18", "torchscript"))
    scores = weight_scores(analysis, "l1")
    budget = Budget("macs", 0.5)
    cfg = SearchConfig(budget=budget, progress=False)
    ctx = SearchContext("test", analysis, NoEval(), BudgetMeter(analysis, budget), {"l1": scores}, cfg)
    ragged = allocate(analysis, scores, AllocationConfig(target_flops=0.5, round_to=1))
    multiples = width_multiples(analysis, "auto", "cpu")
    assert not is_rounded(analysis, ragged, multiples)
    result = ctx.finish(ragged)
    assert_rounded(analysis, result.keep, multiples)
    ratio = analysis.cost.macs(result.keep) / analysis.macs
    assert 0.5 - TOLERANCE <= ratio <= 0.5
    assert result.summary.get("rounded") is True
    off = SearchContext("test", analysis, NoEval(), BudgetMeter(analysis, budget),
                        {"l1": scores}, SearchConfig(budget=budget, progress=False, round_to=1))
    assert off.finish(ragged).keep.tolist() == ragged.tolist()


def test_cli_help_states_the_auto_rule() -> None:
    """`prune --help` describes the rule `RUNTIME_WIDTHS` holds (one source; the help must follow)."""
    import argparse

    from onnxprune.cli import build_parser

    root = build_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["prune"]._actions if "--round-to" in a.option_strings)
    text = " ".join(action.help.split())
    assert f"cpu: {RUNTIME_WIDTHS['cpu'].describe()}" in text
    assert RUNTIME_WIDTHS["cuda"].tiers == RUNTIME_WIDTHS["tensorrt"].tiers
    assert f"cuda/tensorrt: {RUNTIME_WIDTHS['cuda'].describe()}" in text
    assert RUNTIME_WIDTHS["cpu"].channel_multiple(15) == 1
