"""Turning unit scores into a keep mask: uniform and global allocation, MACs targets.

`uniform`: the same fraction of units leaves every prunable group. `global`: all prunable units
are ranked together with a minimum kept per group; scores are normalized per group, or, with
`per_cost` (unnormalized scores such as Taylor's loss-change estimate), divided by the MACs each
unit costs (`criteria.normalize.cross_group`). A MACs target
is met by bisection on the sparsity, using the cost model (no rewrite); under width rounding
(`round_to`, see `onnxprune.search.rounding`) the unused budget is then given back block by block
(global ranking: then by swaps, one group growing while another shrinks, where blocks alone do not
fit and the swap gains more importance than it loses), so the result lands just under the target
or where no further block or swap is worth its MACs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from onnxprune.criteria.normalize import cross_group, cross_group_importance
from onnxprune.deps import Analysis, ChannelGroup
from onnxprune.errors import InputError, UnsupportedModelError, option
from onnxprune.search.rounding import (RoundTo, check_runtime, fill_rounded, parse_round_to, swap_rounded,
                                      width_multiples)

MIN_KEEP_FRACTION = 0.05


@dataclass(frozen=True)
class AllocationConfig:
    sparsity: float | None = None  # fraction of units removed
    target_flops: float | None = None  # fraction of MACs kept (at most)
    global_ranking: bool = False
    round_to: RoundTo = "auto"  # width multiple per group: "auto" (from `runtime`), or K (1: off)
    runtime: str = "cpu"  # the runtime the pruned model is for (cpu | cuda | tensorrt)
    per_cost: bool = False  # global ranking by (unnormalized) importance per MACs
    min_keep_fraction: float = MIN_KEEP_FRACTION

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.target_flops is None):
            raise InputError(f"give exactly one of {option('sparsity')} and {option('target_flops')}")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise InputError(f"{option('sparsity')} must be in [0, 1), got {self.sparsity}")
        if self.target_flops is not None and not 0.0 < self.target_flops <= 1.0:
            raise InputError(f"{option('target_flops')} must be in (0, 1], got {self.target_flops}")
        object.__setattr__(self, "round_to", parse_round_to(self.round_to))
        check_runtime(self.runtime)


Multiples = Mapping[int, int]  # group id -> unit multiple (missing: 1)


def _kept_count(group: ChannelGroup, fraction_kept: float, multiple: int, min_keep: float) -> int:
    n = group.units
    want = max(fraction_kept * n, min_keep * n, 1.0)
    k = int(math.ceil(want - 1e-9))
    if multiple > 1 and n >= multiple:
        k = int(multiple * math.ceil(k / multiple))
    return min(max(k, 1), n)


def uniform_keep(analysis: Analysis, scores: np.ndarray, sparsity: float, multiples: Multiples | None = None,
                 min_keep: float = MIN_KEEP_FRACTION) -> np.ndarray:
    """Keep the best `1 - sparsity` of the units of every prunable group (kept counts rounded up
    to the group's multiple)."""
    multiples = multiples or {}
    keep = analysis.full_keep()
    for g in analysis.prunable():
        k = _kept_count(g, 1.0 - sparsity, multiples.get(g.id, 1), min_keep)
        local = scores[g.unit_slice]
        order = np.argsort(-local, kind="stable")
        mask = np.zeros(g.units, dtype=bool)
        mask[order[:k]] = True
        keep[g.unit_slice] = mask
    return analysis.repair(keep, scores)


def global_keep(analysis: Analysis, scores: np.ndarray, sparsity: float, multiples: Multiples | None = None,
                min_keep: float = MIN_KEEP_FRACTION, per_cost: bool = False) -> np.ndarray:
    """Remove the globally least important `sparsity` share of all prunable units (`per_cost`:
    ranked by importance per MACs, see the module docstring)."""
    multiples = multiples or {}
    keep = analysis.full_keep()
    groups = analysis.prunable()
    if not groups:
        return keep
    normed = cross_group(analysis, scores, per_cost)
    flat = np.concatenate(normed)
    n_remove = int(round(sparsity * flat.size))
    if n_remove == 0:
        return keep
    threshold = np.partition(flat, n_remove - 1)[n_remove - 1]
    for g, local in zip(groups, normed):
        below = int((local <= threshold).sum())
        k = _kept_count(g, 1.0 - below / g.units, multiples.get(g.id, 1), min_keep)
        order = np.argsort(-local, kind="stable")
        mask = np.zeros(g.units, dtype=bool)
        mask[order[:k]] = True
        keep[g.unit_slice] = mask
    return analysis.repair(keep, scores)


def allocate(analysis: Analysis, scores: np.ndarray, cfg: AllocationConfig) -> np.ndarray:
    """The keep mask for a sparsity or a MACs target (bisection on the sparsity, then the unused
    budget filled back block by block when widths are rounded)."""
    if cfg.global_ranking:
        def pick(a: Analysis, sc: np.ndarray, s: float, r: Multiples, m: float) -> np.ndarray:
            return global_keep(a, sc, s, r, m, per_cost=cfg.per_cost)
    else:
        pick = uniform_keep
    if not analysis.prunable():
        raise UnsupportedModelError("no prunable channel group in this model (see `onnxprune analyze`)")
    multiples = width_multiples(analysis, cfg.round_to, cfg.runtime)
    if cfg.sparsity is not None:
        return pick(analysis, scores, cfg.sparsity, multiples, cfg.min_keep_fraction)
    full = analysis.macs
    target = cfg.target_flops * full  # type: ignore[operator]

    def macs_at(s: float) -> tuple[int, np.ndarray]:
        keep = pick(analysis, scores, s, multiples, cfg.min_keep_fraction)
        return analysis.cost.macs(keep), keep

    macs, keep = macs_at(0.0)
    if macs <= target:
        return keep
    hi_macs, hi_keep = macs_at(1.0 - 1e-9)
    if hi_macs > target:
        raise UnsupportedModelError(
            f"{option('target_flops', cfg.target_flops)} is out of reach: pruning every prunable group to its "
            f"minimum keeps {hi_macs / full:.3f} of the MACs"
        )
    lo, hi, best = 0.0, 1.0 - 1e-9, hi_keep
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        m, k = macs_at(mid)
        if m <= target:
            hi, best = mid, k
        else:
            lo = mid
        if hi - lo < 1e-5:
            break
    if analysis.cost.macs(best) < target - 0.002 * full:
        # Rounding makes the MACs jump as the sparsity moves (every 32-channel group goes from
        # 32 to 16 at once): give the budget the bisection left unused back, one block at a time.
        def macs(k: np.ndarray) -> float:
            return float(analysis.cost.macs(k))

        def fill(k: np.ndarray) -> np.ndarray:
            return fill_rounded(analysis, k, scores, multiples, macs, target,
                                prefer="score" if cfg.global_ranking else "uniform", tolerance=0.002 * full)

        best = fill(best)
        if cfg.global_ranking and macs(best) < target - 0.002 * full:
            # Blocks alone cannot reach the target (a wide group's next block is too big): one
            # group grows while another gives blocks back, where that gains more importance (on
            # the ranking's scale) than it loses. Uniform allocations stay uniform.
            best = swap_rounded(analysis, best, scores, multiples, macs, target, 0.002 * full,
                                cfg.min_keep_fraction, fill,
                                values=cross_group_importance(analysis, scores, cfg.per_cost))
    return best
