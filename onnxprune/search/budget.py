"""Budgets a search must meet: MACs, params, measured latency, or kept channels.

A `Budget` is a fraction of the original model kept at most (`target`). `BudgetMeter` measures a
candidate keep mask against it: MACs and params come from the cost model (microseconds), latency
from rewriting the candidate and timing it in onnxruntime (cached per mask), channels from the
share of prunable units kept. `make_feasible` removes the least important units until a mask
meets the budget, so that every search method can guarantee a feasible result.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnxprune.criteria.normalize import mean_normalized
from onnxprune.deps import Analysis
from onnxprune.errors import InputError, UnsupportedModelError

BUDGET_KINDS = ("macs", "params", "latency", "channels")


@dataclass(frozen=True)
class Budget:
    """Keep at most `target` (0 < target <= 1) of the original `kind`."""

    kind: str = "macs"
    target: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise InputError(f"unknown budget {self.kind!r} (choose from {', '.join(BUDGET_KINDS)})")
        if not 0.0 < self.target <= 1.0:
            raise InputError(f"the {self.kind} budget must be in (0, 1], got {self.target}")

    def describe(self) -> str:
        return f"{self.kind} <= {self.target:g}"


def mask_key(keep: np.ndarray) -> bytes:
    """A short hashable key of a keep mask (for caches)."""
    return hashlib.blake2b(np.packbits(np.asarray(keep, dtype=bool)).tobytes(), digest_size=16).digest()


class BudgetMeter:
    """Measures keep masks against a budget.

    `latency_fn(keep) -> seconds` gives a candidate's latency (the API's per-layer latency table,
    which says `cheap = True`, or a rewrite timed with onnxruntime); a latency budget needs it.
    """

    def __init__(self, analysis: Analysis, budget: Budget,
                 latency_fn: Callable[[np.ndarray], float] | None = None) -> None:
        self.analysis = analysis
        self.budget = budget
        self._prunable = np.zeros(analysis.groups.num_units, dtype=bool)
        for g in analysis.prunable():
            self._prunable[g.unit_slice] = True
        self._latency_fn = latency_fn
        self._latency_cache: dict[bytes, float] = {}
        self._base: float | None = None

    def latency(self, keep: np.ndarray) -> float:
        if self._latency_fn is None:
            raise ValueError("a latency budget needs latency_fn (the API passes one)")
        key = mask_key(keep)
        if key not in self._latency_cache:
            self._latency_cache[key] = float(self._latency_fn(keep))
        return self._latency_cache[key]

    def ratio(self, keep: np.ndarray) -> float:
        """Cost of `keep` as a fraction of the unpruned model's."""
        keep = np.asarray(keep, dtype=bool)
        kind = self.budget.kind
        if kind == "macs":
            return self.analysis.cost.macs(keep) / max(self.analysis.macs, 1)
        if kind == "params":
            return self.analysis.cost.params(keep) / max(self.analysis.params, 1)
        if kind == "channels":
            total = int(self._prunable.sum())
            return float(keep[self._prunable].sum()) / max(total, 1)
        if self._base is None:
            self._base = self.latency(self.analysis.full_keep())
        return self.latency(keep) / max(self._base, 1e-12)

    @property
    def cheap(self) -> bool:
        """Whether measuring a candidate costs microseconds (cost model or latency table), not a
        rewrite and a timing run: searches may then probe many masks."""
        return self.budget.kind != "latency" or bool(getattr(self._latency_fn, "cheap", False))

    def violation(self, keep: np.ndarray) -> float:
        """How far above the budget `keep` is (0 when feasible), in fractions of the original."""
        return max(0.0, self.ratio(keep) - self.budget.target)

    def feasible(self, keep: np.ndarray) -> bool:
        return self.ratio(keep) <= self.budget.target + 1e-12


def first_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int:
    """The smallest n in (lo, hi] with `pred(n)`, by bisection, for a monotone `pred` with
    `pred(lo)` false and `pred(hi)` true (each probe may cost a measurement: about log2(hi - lo))."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


def removal_order(analysis: Analysis, scores: np.ndarray, keep: np.ndarray,
                  min_keep_fraction: float = 0.05) -> np.ndarray:
    """Units that may still be removed from `keep`, least important first.

    Scores are normalized by their group's mean (as in global ranking); each group keeps at
    least `min_keep_fraction` of its units (and at least one).
    """
    candidates: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for g in analysis.prunable():
        local_keep = keep[g.unit_slice]
        kept = np.flatnonzero(local_keep)
        floor = max(1, int(np.ceil(min_keep_fraction * g.units)))
        spare = kept.size - floor
        if spare <= 0:
            continue
        local = mean_normalized(scores[g.unit_slice][kept])
        order = np.argsort(local, kind="stable")[:spare]
        candidates.append(g.unit_start + kept[order])
        values.append(local[order])
    if not candidates:
        return np.zeros(0, dtype=np.int64)
    units = np.concatenate(candidates)
    return units[np.argsort(np.concatenate(values), kind="stable")]


def make_feasible(meter: BudgetMeter, keep: np.ndarray, scores: np.ndarray,
                  min_keep_fraction: float = 0.05) -> np.ndarray:
    """`keep` with the fewest least-important units removed so that it meets the budget.

    Bisection over how many units of `removal_order` to drop (the cost is monotone in it), so
    a latency budget costs only a few measurements. Raises `UnsupportedModelError` when even
    the smallest allowed model is over budget.
    """
    keep = np.asarray(keep, dtype=bool)
    analysis = meter.analysis
    keep = analysis.repair(keep, scores)
    if meter.feasible(keep):
        return keep
    order = removal_order(analysis, scores, keep, min_keep_fraction)

    def drop(n: int) -> np.ndarray:
        out = keep.copy()
        out[order[:n]] = False
        return analysis.repair(out, scores)

    smallest = drop(order.size)
    if not meter.feasible(smallest):
        raise UnsupportedModelError(
            f"the budget {meter.budget.describe()} is out of reach: the smallest allowed model keeps "
            f"{meter.ratio(smallest):.3f}"
        )
    return drop(first_true(0, order.size, lambda n: meter.feasible(drop(n))))


def fill_budget(meter: BudgetMeter, keep: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`keep` with the most important removed units added back while it stays within budget.

    A search that decides in blocks usually lands below its budget; the rest of the budget is
    given to the removed units with the highest scores (normalized by their group's mean, as in
    global ranking). Bisection over how many to add (the cost is monotone in it). Returns
    `keep` unchanged when it is over budget or nothing fits.
    """
    keep = np.asarray(keep, dtype=bool)
    if not meter.feasible(keep):
        return keep
    units: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for g in meter.analysis.prunable():
        removed = np.flatnonzero(~keep[g.unit_slice])
        if removed.size == 0:
            continue
        units.append(g.unit_start + removed)
        values.append(mean_normalized(scores[g.unit_slice])[removed])
    if not units:
        return keep
    order = np.concatenate(units)[np.argsort(-np.concatenate(values), kind="stable")]

    def add(n: int) -> np.ndarray:
        out = keep.copy()
        out[order[:n]] = True
        return out

    if meter.feasible(add(order.size)):
        return add(order.size)
    # add(0) is feasible, add(order.size) is not: the largest feasible count is one below the first infeasible
    return add(first_true(0, order.size, lambda n: not meter.feasible(add(n))) - 1)
