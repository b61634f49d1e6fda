"""Global ranking by estimated loss impact per unit of cost (Molchanov-style global Taylor):
unnormalized Taylor estimates, the exact marginal MACs of a unit, and `global_keep(per_cost=True)`
keeping the units that buy the most loss per MAC."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.criteria.normalize import cross_group, mean_normalized, unit_costs
from onnxprune.search import AllocationConfig, allocate
from onnxprune.torchcopy import to_torch
from onnxprune.torchcopy.taylor import taylor_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_unit_costs_are_the_exact_marginal_macs(tiny) -> None:
    _, analysis = tiny
    costs = unit_costs(analysis)
    full = analysis.full_keep()
    for g in analysis.prunable():
        for u in (g.unit_start, g.unit_start + g.units - 1):
            one = full.copy()
            one[u] = False
            assert costs[u] == analysis.macs - analysis.cost.macs(one) > 0


def test_unnormalized_taylor_compares_groups_and_keeps_the_order_inside_them(tiny) -> None:
    splits, analysis = tiny
    copy = to_torch(analysis)
    x, y = splits.train
    raw = taylor_scores(copy, analysis, x, y, seed=0, normalize=False)
    normed = taylor_scores(copy, analysis, x, y, seed=0)
    means_raw = [raw[g.unit_slice].mean() for g in analysis.prunable()]
    means_normed = [normed[g.unit_slice].mean() for g in analysis.prunable()]
    # normalized per member, every group's mean is about 1; the raw estimates differ by group
    assert np.ptp(means_normed) < 0.2 and max(means_raw) > 2 * min(means_raw)
    for g in analysis.prunable():  # one member per group here: the same order inside a group
        if len(analysis.groups.members) and g.units > 1:
            r, n = raw[g.unit_slice], normed[g.unit_slice]
            assert np.corrcoef(r, n)[0, 1] > 0.5


def test_global_ranking_per_cost_keeps_the_units_with_most_impact_per_mac(tiny) -> None:
    _, analysis = tiny
    groups = analysis.prunable()
    costs = unit_costs(analysis)
    rng = np.random.default_rng(0)
    impact = rng.uniform(0.5, 1.5, analysis.groups.num_units) * costs  # every unit: impact ~ its cost
    rich, poor = groups[1], groups[2]
    impact[rich.unit_slice] *= 100.0  # a lot of loss per MAC: must stay
    impact[poor.unit_slice] *= 0.01  # nothing per MAC: goes first
    # exact widths (round_to=1): the ranking is under test, not the width rule (with the CPU
    # rule a 16-channel group can only keep 8 or 16)
    keep = allocate(analysis, impact, AllocationConfig(target_flops=0.5, global_ranking=True, per_cost=True,
                                                       round_to=1))
    assert analysis.cost.macs(keep) <= 0.5 * analysis.macs
    assert keep[rich.unit_slice].all()
    # the budget comes from the poor group first: it is cut far more than the others
    kept = [float(keep[g.unit_slice].mean()) for g in groups]
    assert kept[2] < 0.5 and kept[2] < min(k for i, k in enumerate(kept) if i != 2) - 0.3
    # the old normalization cannot see the planted differences: each group's mean is 1
    old = cross_group(analysis, impact, by_cost=False)
    np.testing.assert_allclose([v.mean() for v in old], 1.0)
    by_cost = cross_group(analysis, impact, by_cost=True)
    assert by_cost[1].mean() > 50 * by_cost[0].mean() and by_cost[2].mean() < by_cost[0].mean() / 50
    np.testing.assert_allclose(mean_normalized(np.array([2.0, 4.0])), [2 / 3, 4 / 3])
