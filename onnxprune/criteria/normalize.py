"""Score normalization shared by every criterion and every ranking across groups.

`mean_normalized`: scores made scale-free (divided by their mean), per member inside a criterion
and per group when groups are ranked together (the default global ranking).
`per_cost`: unnormalized importance (an estimate of the loss change when a unit is removed,
comparable across groups) divided by the MACs removing that unit saves: global ranking by
estimated loss impact per unit of cost (Molchanov et al.'s FLOPs-aware Taylor ranking).
`cross_group`: the one function a global ranking calls to compare units of different groups;
`cross_group_importance`: the same scale as importance that adds up over units (what a swap of
blocks between groups gains and loses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnxprune.deps import Analysis


def mean_normalized(values: np.ndarray) -> np.ndarray:
    """`values` (as float64) divided by the mean of its finite entries, so that no layer or group
    dominates a comparison across them; unchanged when that mean is not positive (or absent)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    mean = float(finite.mean()) if finite.size else 0.0
    return v / mean if mean > 0 else v


def unit_costs(analysis: "Analysis") -> np.ndarray:
    """(num_units,) MACs saved by removing one unit of its group from the unpruned model
    (exact marginal cost from the cost model, one evaluation per prunable group; 0 elsewhere)."""
    out = np.zeros(analysis.groups.num_units)
    full = analysis.full_keep()
    total = analysis.cost.macs(full)
    for g in analysis.prunable():
        one = full.copy()
        one[g.unit_start] = False
        out[g.unit_slice] = max(total - analysis.cost.macs(one), 1)
    return out


def per_cost(analysis: "Analysis", impact: np.ndarray) -> np.ndarray:
    """`impact` (unnormalized, comparable across groups) divided by each unit's MACs cost."""
    costs = unit_costs(analysis)
    return np.divide(np.asarray(impact, dtype=np.float64), costs, out=np.asarray(impact, dtype=np.float64).copy(),
                     where=costs > 0)


def cross_group(analysis: "Analysis", scores: np.ndarray, by_cost: bool = False) -> list[np.ndarray]:
    """Per prunable group, its units' values on one scale shared by all groups: scores divided
    by their group's mean (`by_cost` False), or impact per MACs (`by_cost` True: `scores` must be
    unnormalized, e.g. `taylor_scores(..., normalize=False)`)."""
    if by_cost:
        values = per_cost(analysis, scores)
        return [values[g.unit_slice] for g in analysis.prunable()]
    return [mean_normalized(scores[g.unit_slice]) for g in analysis.prunable()]


def cross_group_importance(analysis: "Analysis", scores: np.ndarray, by_cost: bool = False) -> np.ndarray:
    """(num_units,) each prunable unit's importance on the scale a global ranking compares groups
    on, to be summed over units (0 outside prunable groups): its score divided by its group's
    mean (`by_cost` False), or the unnormalized impact itself (`by_cost` True: `cross_group`
    ranks it per MACs, but importance lost and gained add up in impact)."""
    out = np.zeros(analysis.groups.num_units)
    for g in analysis.prunable():
        local = np.asarray(scores[g.unit_slice], dtype=np.float64)
        out[g.unit_slice] = local if by_cost else mean_normalized(local)
    return out
