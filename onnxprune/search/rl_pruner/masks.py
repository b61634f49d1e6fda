"""From a pruning distribution to a keep mask (arXiv 2411.06463, sections 3.2-3.3).

A step starts from the current state (`State`: its keep mask, and per prunable group the kept
units ordered by Taylor importance, least important first). An action `a` with sparsity `S`
removes `round(a_i * S * U)` of group i's least important kept units (`U`: prunable units of the
original model), never going below `min_keep` of the group (and 1 unit). `land` finds the
smallest `S` whose mask meets a target cost ratio (bisection: the cost falls monotonically with
`S`), so a step's candidates arrive on the step's target, and the last step within the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnxprune.deps import Analysis
from onnxprune.search.budget import removal_order

RatioFn = Callable[[np.ndarray], float]
_TOL = 1e-12


@dataclass(frozen=True, eq=False)
class State:
    """A pruning state: `keep` plus, per prunable group, its removable units by rising importance."""

    keep: np.ndarray
    orders: tuple[np.ndarray, ...]  # (removable,) global unit indices, least important first


class Pruner:
    """Builds masks for actions on the prunable groups of `analysis`, ranked by `scores`."""

    def __init__(self, analysis: Analysis, scores: np.ndarray, min_keep: float = 0.05) -> None:
        self.analysis = analysis
        self.scores = np.asarray(scores, dtype=np.float64)
        self.min_keep = min_keep
        self.groups = analysis.prunable()
        self.units = np.array([g.units for g in self.groups], dtype=np.int64)
        self.total_units = int(self.units.sum())

    def state(self, keep: np.ndarray) -> State:
        keep = np.asarray(keep, dtype=bool)
        orders = []
        for g in self.groups:
            kept = np.flatnonzero(keep[g.unit_slice])
            floor = max(1, int(math.ceil(self.min_keep * g.units)))
            spare = max(0, kept.size - floor)
            local = self.scores[g.unit_slice][kept]
            orders.append((g.unit_start + kept[np.argsort(local, kind="stable")])[:spare])
        return State(keep.copy(), tuple(orders))

    def counts(self, state: State, action: np.ndarray, sparsity: float) -> np.ndarray:
        """Units removed per group: round(a_i * S * U), at most what the group can spare."""
        spare = np.array([o.size for o in state.orders], dtype=np.int64)
        want = np.rint(np.asarray(action, dtype=np.float64) * sparsity * self.total_units).astype(np.int64)
        return np.minimum(np.maximum(want, 0), spare)

    def prune(self, state: State, action: np.ndarray, sparsity: float) -> np.ndarray:
        """The keep mask of `action` at sparsity `sparsity` from `state` (repaired)."""
        keep = state.keep.copy()
        for order, n in zip(state.orders, self.counts(state, action, sparsity)):
            keep[order[:n]] = False
        return self.analysis.repair(keep, self.scores)

    def max_sparsity(self, state: State, action: np.ndarray) -> float:
        """A sparsity at which every group with a_i > 0 is pruned to its floor."""
        a = np.asarray(action, dtype=np.float64)
        spare = np.array([o.size for o in state.orders], dtype=np.float64)
        live = a > 0
        if not live.any():
            return 0.0
        return float(np.max((spare[live] + 1.0) / (a[live] * self.total_units)))

    def solve(self, state: State, action: np.ndarray, target: float, ratio: RatioFn,
              iterations: int = 50) -> float | None:
        """The smallest sparsity whose mask has ratio <= `target` (0.0 when `state` already
        does), or None when `action` cannot reach it."""
        if ratio(state.keep) <= target + _TOL:
            return 0.0
        hi = self.max_sparsity(state, action)
        if hi <= 0.0 or ratio(self.prune(state, action, hi)) > target + _TOL:
            return None
        lo = 0.0
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            if ratio(self.prune(state, action, mid)) <= target + _TOL:
                hi = mid
            else:
                lo = mid
        return hi

    def land(self, state: State, action: np.ndarray, target: float, ratio: RatioFn) -> np.ndarray:
        """The mask of `action` that just meets `target`; when `action` alone cannot reach it,
        its most pruned mask topped up with the globally least important units."""
        sparsity = self.solve(state, action, target, ratio)
        if sparsity is not None:
            return self.prune(state, action, sparsity)
        return self.top_up(self.prune(state, action, self.max_sparsity(state, action)), target, ratio)

    def top_up(self, keep: np.ndarray, target: float, ratio: RatioFn) -> np.ndarray:
        """`keep` with the fewest globally least important units removed to meet `target` (the
        smallest allowed model when even that is not enough)."""
        if ratio(keep) <= target + _TOL:
            return keep
        order = removal_order(self.analysis, self.scores, keep, self.min_keep)

        def drop(n: int) -> np.ndarray:
            out = keep.copy()
            out[order[:n]] = False
            return self.analysis.repair(out, self.scores)

        if ratio(drop(order.size)) > target + _TOL:
            return drop(order.size)
        lo, hi = 0, order.size
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ratio(drop(mid)) <= target + _TOL:
                hi = mid
            else:
                lo = mid
        return drop(hi)


def step_targets(target: float, steps: int, extra: int = 0) -> list[float]:
    """Kept fraction after each pruning step: target^(k/steps), k = 1..steps+extra (a geometric
    schedule: every step removes the same share of what is left)."""
    return [float(target ** (k / steps)) for k in range(1, steps + extra + 1)]
