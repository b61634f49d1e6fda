"""Hardware-friendly widths: the channel-count multiple each group is pruned to.

Runtimes compute convolutions in blocks of channels: onnxruntime's CPU kernels (MLAS) use NCHWc
blocks of 8 (AVX2) or 16 (AVX-512) channels and fall back to slower paths on other widths;
tensor cores want channel counts that are multiples of 8 (fp16). A pruned model with widths like
11/22/44 can be *slower* than the original although it has half the MACs (measured: MobileNetV2
at 50% MACs ran at 0.65x the original's speed with widths multiple of 1, 1.84x with multiples
of 8; see docs/latency.md).

`--round-to auto` (the default) picks, per group, the multiple that suits the target runtime
(`RUNTIME_WIDTHS`); `--round-to K` uses K for every group wide enough; `--round-to 1` turns
rounding off. A group keeps its full width, or a multiple of its width unit.

Under rounding, a MACs target is met by bisection and then `fill_rounded` gives the remaining
budget back one block of `multiple` units at a time, so the kept MACs land just under the
target (within 2% of the original's MACs) instead of jumping far below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnxprune.criteria.normalize import mean_normalized
from onnxprune.deps import Analysis, ChannelGroup
from onnxprune.errors import InputError, option
from onnxprune.search.budget import BudgetMeter, make_feasible


@dataclass(frozen=True)
class RuntimeWidth:
    """Width multiples of a runtime: `tiers` holds `(min_channels, multiple)` pairs; a group
    takes the multiple of the widest tier it reaches (groups below every tier: any width)."""

    tiers: tuple[tuple[int, int], ...]
    why: str

    def channel_multiple(self, channels: int) -> int:
        """The channel multiple for a group of `channels` channels (1: any width)."""
        multiple = 1
        for min_channels, m in sorted(self.tiers):
            if channels >= min_channels:
                multiple = m
        return multiple

    def describe(self) -> str:
        """The tiers in words, e.g. "8 for groups of 16+ channels, 16 for 32+"."""
        parts = [f"{m} for groups of {t}+ channels" if i == 0 else f"{m} for {t}+"
                 for i, (t, m) in enumerate(sorted(self.tiers))]
        return ", ".join(parts)


RUNTIME_WIDTHS: dict[str, RuntimeWidth] = {
    "cpu": RuntimeWidth(((16, 8), (32, 16)), "onnxruntime CPU: MLAS computes convolutions in NCHWc blocks of 8 "
                        "(AVX2) or 16 (AVX-512) channels; see docs/latency.md for the measurement behind the tiers"),
    "cuda": RuntimeWidth(((16, 8),), "CUDA tensor cores (fp16 channel counts multiple of 8)"),
    "tensorrt": RuntimeWidth(((16, 8),), "TensorRT tensor cores (fp16 channel counts multiple of 8)"),
}

RoundTo = int | str  # an int >= 1, or "auto"

# how far below the budget (share of the original) a rounded candidate may land before swaps are
# tried, and how far below it one may land at most where swaps can help (the rounding's 2%)
FILL_TOLERANCE = 0.005
BUDGET_TOLERANCE = 0.02


def parse_round_to(value: RoundTo) -> RoundTo:
    """`"auto"` or a positive int (strings of digits accepted); `InputError` otherwise."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            value = int(value)
        except ValueError:
            raise InputError(f"{option('round_to')} must be 'auto' or a positive integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{option('round_to')} must be 'auto' or a positive integer, got {value!r}")
    return int(value)


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIME_WIDTHS:
        raise InputError(f"unknown {option('runtime')} {runtime!r} (choose from {', '.join(RUNTIME_WIDTHS)})")
    return runtime


def unit_multiple(group: ChannelGroup, channel_multiple: int) -> int:
    """Units per block so that the kept *channels* are a multiple of `channel_multiple`
    (a unit of a grouped Conv covers one channel of every conv group)."""
    per_unit = max(1, group.channels // max(group.units, 1))
    return channel_multiple // math.gcd(channel_multiple, per_unit)


def group_multiple(group: ChannelGroup, round_to: RoundTo, runtime: str = "cpu") -> int:
    """The unit multiple `group` is pruned to (1: any width)."""
    if round_to == "auto":
        channel_multiple = RUNTIME_WIDTHS[check_runtime(runtime)].channel_multiple(group.channels)
        if channel_multiple == 1:
            return 1
        m = unit_multiple(group, channel_multiple)
    else:
        m = unit_multiple(group, int(round_to))
    return m if group.units >= m else 1


def width_multiples(analysis: Analysis, round_to: RoundTo, runtime: str = "cpu") -> dict[int, int]:
    """Group id -> unit multiple, for every prunable group."""
    return {g.id: group_multiple(g, round_to, runtime) for g in analysis.prunable()}


def channel_multiples(analysis: Analysis, round_to: RoundTo, runtime: str = "cpu") -> dict[int, int]:
    """Group id -> channel multiple its kept width honours (what reports show)."""
    out = {}
    for g in analysis.prunable():
        per_unit = max(1, g.channels // max(g.units, 1))
        out[g.id] = group_multiple(g, round_to, runtime) * per_unit
    return out


def rounded_count(k: int, n: int, multiple: int) -> int:
    """`k` kept units of `n` rounded up to a multiple (or the full group)."""
    if multiple > 1:
        k = multiple * math.ceil(k / multiple)
    return min(max(k, 1), n)


def is_rounded(analysis: Analysis, keep: np.ndarray, multiples: dict[int, int]) -> bool:
    """Every prunable group keeps all its units or a multiple of its block."""
    for g in analysis.prunable():
        k = int(keep[g.unit_slice].sum())
        m = multiples.get(g.id, 1)
        if k != g.units and k % m:
            return False
    return True


def _normalized(scores: np.ndarray, g: ChannelGroup) -> np.ndarray:
    """`g`'s scores divided by their mean: the scale `cross_group_importance` sums."""
    return mean_normalized(scores[g.unit_slice])


def _next_block(keep: np.ndarray, g: ChannelGroup, m: int, normed: np.ndarray) -> np.ndarray | None:
    """Global indices of the best removed units that take `g` to its next allowed width."""
    local = keep[g.unit_slice]
    k = int(local.sum())
    if k >= g.units:
        return None
    k2 = min(g.units, m * (k // m + 1)) if m > 1 else k + 1
    removed = np.flatnonzero(~local)
    best = removed[np.argsort(-normed[removed], kind="stable")[: k2 - k]]
    return g.unit_start + best


def fill_rounded(analysis: Analysis, keep: np.ndarray, scores: np.ndarray, multiples: dict[int, int],
                 cost: Callable[[np.ndarray], float], limit: float,
                 prefer: str | Callable[[ChannelGroup, np.ndarray], float] = "score",
                 tolerance: float = 0.0) -> np.ndarray:
    """Give the unused budget back one block at a time while `cost(keep) <= limit`.

    A block takes one group to its next allowed width with its best removed units.
    `prefer="score"`: the block with the highest mean normalized score per unit of cost;
    `"uniform"`: the group with the smallest kept fraction (a uniform allocation stays uniform);
    a callable `(group, keep) -> priority`: the group with the highest priority.
    Stops when nothing fits, or once within `tolerance` (same unit as `cost`) of `limit`.
    """
    keep = np.asarray(keep, dtype=bool).copy()
    current = cost(keep)
    if current > limit:
        return keep
    groups = analysis.prunable()
    normed = {g.id: _normalized(scores, g) for g in groups}
    blocked: set[int] = set()
    while current < limit - tolerance:
        best: tuple[float, np.ndarray, float] | None = None
        for g in groups:
            if g.id in blocked:
                continue
            units = _next_block(keep, g, multiples.get(g.id, 1), normed[g.id])
            if units is None:
                blocked.add(g.id)
                continue
            cand = keep.copy()
            cand[units] = True
            c = cost(cand)
            if c > limit:
                blocked.add(g.id)  # costs only grow as the others fill: it will not fit later
                continue
            if callable(prefer):
                priority = float(prefer(g, keep))
            elif prefer == "uniform":
                priority = -float(keep[g.unit_slice].mean())
            else:
                gain = float(np.mean(normed[g.id][units - g.unit_start]))
                priority = gain / max(c - current, 1e-12)
            if best is None or priority > best[0]:
                best = (priority, cand, c)
        if best is None:
            break
        _, keep, current = best
    return keep


def _prev_block(keep: np.ndarray, g: ChannelGroup, m: int, normed: np.ndarray, floor: int) -> np.ndarray | None:
    """Global indices of the worst kept units whose removal takes `g` to its previous allowed
    width (not below `floor` units), or None."""
    local = keep[g.unit_slice]
    k = int(local.sum())
    k2 = (k - 1) // m * m if m > 1 else k - 1
    if k2 < max(floor, 1):
        return None
    kept = np.flatnonzero(local)
    worst = kept[np.argsort(normed[kept], kind="stable")[: k - k2]]
    return g.unit_start + worst


def swap_rounded(analysis: Analysis, keep: np.ndarray, scores: np.ndarray, multiples: dict[int, int],
                 cost: Callable[[np.ndarray], float], limit: float, tolerance: float = 0.0,
                 min_keep_fraction: float = 0.05, fill: Callable[[np.ndarray], np.ndarray] | None = None,
                 rounds: int = 8, may_shrink: Callable[[ChannelGroup, np.ndarray], bool] | None = None,
                 values: np.ndarray | None = None) -> np.ndarray:
    """Use the budget that block filling cannot reach: when no block fits, one group takes its
    next block and another gives back blocks until the mask fits again (e.g. a 32-unit group in
    steps of 8 grows while a narrow group in steps of 1 gives two units).

    Among the swaps that fit and use more budget than now: with `values` (each unit's importance
    on one scale across groups, `criteria.normalize.cross_group_importance`), the swap with the
    largest importance gained minus lost is kept, and only if that is positive; without, the
    swap that uses the most budget. Then `fill` (if given) runs again; up to `rounds` swaps,
    until within `tolerance` of `limit` or no swap qualifies. `may_shrink(group, keep)`: which
    groups may give units (default: any above its floor). `keep` must be within `limit`."""
    keep = np.asarray(keep, dtype=bool).copy()
    current = cost(keep)
    groups = analysis.prunable()
    normed = {g.id: _normalized(scores, g) for g in groups}
    floors = {g.id: max(1, math.ceil(min_keep_fraction * g.units)) for g in groups}
    worth = None if values is None else np.asarray(values, dtype=np.float64)
    for _ in range(rounds):
        if current >= limit - tolerance or current > limit:
            break
        best: tuple[tuple[float, float], np.ndarray] | None = None
        for g in groups:
            grow = _next_block(keep, g, multiples.get(g.id, 1), normed[g.id])
            if grow is None:
                continue
            grown = keep.copy()
            grown[grow] = True
            for h in groups:
                if h.id == g.id or (may_shrink is not None and not may_shrink(h, keep)):
                    continue
                cand = grown.copy()
                c = cost(cand)
                while c > limit:
                    drop = _prev_block(cand, h, multiples.get(h.id, 1), normed[h.id], floors[h.id])
                    if drop is None:
                        break
                    cand[drop] = False
                    c = cost(cand)
                if not current < c <= limit:
                    continue
                if worth is None:
                    rank = (c, 0.0)
                else:
                    net = float(worth[cand & ~keep].sum() - worth[keep & ~cand].sum())
                    if net <= 0:
                        continue  # loses more importance than the extra budget buys
                    rank = (net, c)
                if best is None or rank > best[0]:
                    best = (rank, cand)
        if best is None:
            break
        keep = fill(best[1]) if fill is not None else best[1]
        current = cost(keep)
    return keep


def floor_rounded(analysis: Analysis, keep: np.ndarray, scores: np.ndarray, multiples: dict[int, int]) -> np.ndarray:
    """Each pruned group's kept units rounded *down* to its block (at least one block), keeping
    the best-scored units: costs only fall, so a feasible mask stays feasible (MACs, params)."""
    keep = np.asarray(keep, dtype=bool).copy()
    for g in analysis.prunable():
        m = multiples.get(g.id, 1)
        local = keep[g.unit_slice]
        k = int(local.sum())
        if m <= 1 or k == g.units or k % m == 0:
            continue
        k2 = max(m, m * (k // m))
        normed = _normalized(scores, g)
        if k2 <= k:
            kept = np.flatnonzero(local)
            drop = kept[np.argsort(normed[kept], kind="stable")[: k - k2]]
            keep[g.unit_start + drop] = False
        else:  # fewer than one block kept: take the best removed units up to one block
            removed = np.flatnonzero(~local)
            add = removed[np.argsort(-normed[removed], kind="stable")[: k2 - k]]
            keep[g.unit_start + add] = True
    return keep


def fit_rounded(meter: BudgetMeter, keep: np.ndarray, scores: np.ndarray, multiples: dict[int, int],
                refill: bool = True, min_keep_fraction: float = 0.05) -> np.ndarray:
    """`keep` projected onto rounded widths within the budget of `meter`, as close to it as
    blocks allow: every pruned group's width rounded down to its block (costs fall), made
    feasible if a group had to grow to one block, then (`refill`) the unused budget given back
    block by block (best score per cost; `fill_to_budget`)."""
    keep = np.asarray(keep, dtype=bool)
    analysis = meter.analysis
    out = keep if is_rounded(analysis, keep, multiples) else floor_rounded(analysis, keep, scores, multiples)
    if not meter.feasible(out):
        out = floor_rounded(analysis, make_feasible(meter, out, scores, min_keep_fraction), scores, multiples)
    if refill and meter.feasible(out):
        out = fill_to_budget(meter, out, scores, multiples, min_keep_fraction=min_keep_fraction)
    return out


def fill_to_budget(meter: BudgetMeter, keep: np.ndarray, scores: np.ndarray, multiples: dict[int, int],
                   prefer: str | Callable[[ChannelGroup, np.ndarray], float] = "score",
                   min_keep_fraction: float = 0.05,
                   may_shrink: Callable[[ChannelGroup, np.ndarray], bool] | None = None) -> np.ndarray:
    """A feasible rounded `keep` filled up to the budget: blocks added while they fit
    (`fill_rounded`, `prefer`), then swaps where blocks alone cannot get within
    `FILL_TOLERANCE` of it (`swap_rounded`: among the groups `may_shrink` allows first, among
    all while still more than `BUDGET_TOLERANCE` below; the swap that uses the most budget, since
    a search's widths come from its policy and `scores` only order units within a group). Widths
    stay multiples; the result stays within the budget."""
    target = meter.budget.target

    def fill(k: np.ndarray) -> np.ndarray:
        return fill_rounded(meter.analysis, k, scores, multiples, meter.ratio, target, prefer=prefer)

    out = fill(keep)
    if meter.ratio(out) < target - FILL_TOLERANCE:
        out = swap_rounded(meter.analysis, out, scores, multiples, meter.ratio, target, FILL_TOLERANCE,
                           min_keep_fraction, fill, may_shrink=may_shrink)
    if may_shrink is not None and meter.ratio(out) < target - BUDGET_TOLERANCE:  # any group may give
        out = swap_rounded(meter.analysis, out, scores, multiples, meter.ratio, target, FILL_TOLERANCE,
                           min_keep_fraction, fill)
    return out
