"""Pruning configurations: per-group keep counts to masks (`UnitTables`), random rates, budget scaling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.deps import Analysis
from onnxprune.search.budget import BudgetMeter


@dataclass(frozen=True, eq=False)
class UnitTables:
    """Per-unit lookups that turn per-group keep counts into masks in one vectorized step.

    `group` (U,) index into `groups` (-1: not prunable), `rank` (U,) place of the unit in its
    group by descending L1 (0 = most important), `units` (G,) units per group, `floor` (G,)
    least units a group keeps.
    """

    group: np.ndarray
    rank: np.ndarray
    units: np.ndarray
    floor: np.ndarray
    frozen: np.ndarray  # (U,) units with infinite score (always kept)
    scores: np.ndarray

    @classmethod
    def build(cls, analysis: Analysis, scores: np.ndarray, min_rate: float) -> "UnitTables":
        group = np.full(analysis.groups.num_units, -1, dtype=np.int64)
        rank = np.zeros(analysis.groups.num_units, dtype=np.int64)
        prunable = analysis.prunable()
        for gi, g in enumerate(prunable):
            group[g.unit_slice] = gi
            order = np.argsort(-scores[g.unit_slice], kind="stable")
            rank[g.unit_start + order] = np.arange(g.units)
        units = np.array([g.units for g in prunable], dtype=np.int64)
        floor = np.maximum(1, np.ceil(min_rate * units)).astype(np.int64)
        frozen = ~np.isfinite(scores)
        return cls(group, rank, units, floor, frozen, scores)

    def counts(self, rates: np.ndarray) -> np.ndarray:
        """(B, G) kept units for (B, G) keep rates."""
        return np.clip(np.rint(rates * self.units), self.floor, self.units).astype(np.int64)

    def _mask(self, counts: np.ndarray, rank: np.ndarray) -> np.ndarray:
        counts = np.atleast_2d(counts)
        ext = np.concatenate([counts, np.full((counts.shape[0], 1), np.iinfo(np.int64).max)], axis=1)
        return (rank[None, :] < ext[:, self.group]) | self.frozen[None, :]  # (B, U); group -1 -> always kept

    def l1_keep(self, counts: np.ndarray) -> np.ndarray:
        """(B, U) masks keeping the `counts` highest-L1 units of each group."""
        return self._mask(counts, self.rank)

    def random_keep(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(B, U) masks keeping `counts` random units of each group (frozen units first)."""
        counts = np.atleast_2d(counts)
        out = np.empty((counts.shape[0], self.group.size), dtype=bool)
        members = [np.flatnonzero(self.group == gi) for gi in range(self.units.size)]
        for b in range(counts.shape[0]):
            key = rng.random(self.group.size) - 2.0 * self.frozen  # frozen units sort first
            rank = np.empty_like(self.rank)
            for idx in members:
                rank[idx[np.argsort(key[idx], kind="stable")]] = np.arange(idx.size)
            out[b] = self._mask(counts[b], rank)[0]
        return out


def sample_rates(rng: np.random.Generator, count: int, groups: int, min_rate: float) -> np.ndarray:
    """(count, G) random per-group keep rates: a global level times a per-group spread."""
    level = rng.uniform(min_rate, 1.0, size=(count, 1))
    spread = rng.uniform(0.3, 1.7, size=(count, groups))
    return np.clip(level * spread, min_rate, 1.0)


def scale_into_budget(meter: BudgetMeter, tables: UnitTables, analysis: Analysis, shape: np.ndarray,
                      steps: int = 14) -> tuple[np.ndarray, float] | None:
    """The L1 mask of rates `clip(s * shape)` with the largest `s` that meets the budget (bisection;
    the cost grows with `s` since L1 masks are nested), and its budget ratio; None if even the
    smallest allowed rates are over budget."""

    def at(s: float) -> tuple[np.ndarray, float]:
        keep = analysis.repair(tables.l1_keep(tables.counts(np.clip(s * shape, 0.0, 1.0))[None])[0], tables.scores)
        return keep, meter.ratio(keep)

    lo_keep, lo_ratio = at(0.0)
    if lo_ratio > meter.budget.target + 1e-12:
        return None
    hi = 1.0 / max(float(shape.min()), 1e-6)
    hi_keep, hi_ratio = at(hi)
    if hi_ratio <= meter.budget.target + 1e-12:
        return hi_keep, hi_ratio
    lo = 0.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        keep, ratio = at(mid)
        if ratio <= meter.budget.target + 1e-12:
            lo, lo_keep, lo_ratio = mid, keep, ratio
        else:
            hi = mid
    return lo_keep, lo_ratio
