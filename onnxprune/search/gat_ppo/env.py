"""The pruning environment of gat-ppo: groups decided slice by slice, the state re-encoded
after each decision, and every finished candidate projected exactly onto the budget.

An episode decides the prunable groups in `slices` (by depth; one group per step by default,
as in AMC / GNN-RL). After each step the node features change (kept width, decided, current,
MACs used and still to remove), so the policy sees a different state at every step.

Two action spaces (`ActionSpace`):

- `levels` (default): one keep ratio per group out of `fractions` (e.g. 0.2, 0.3 ... 1.0),
  a categorical choice. The channels kept in a group are the most important ones.
  Projection: all decided ratios are multiplied by one factor `s` (bisection) so that the
  candidate keeps as much as the budget allows, kept counts rounded up to the group's
  `--round-to` multiple and at least `min_keep` of each group; under rounding the budget the
  blocks leave is then filled (`rounding.fill_to_budget`). The policy decides how the budget
  is shared.
- `blocks` (the seed, arXiv 2509.10526): each group's units sorted by importance and cut into
  blocks; one Bernoulli keep/drop per block. Projection: the least important kept units are
  removed while over budget (`make_feasible`), the most important removed ones added back while
  under it (`fill_budget`; under rounding `rounding.fit_rounded` at the multiples); the chosen
  channels are kept otherwise.

Every projected candidate meets the budget; with `project=False` (ablation) a blocks
candidate is left as sampled and may be over budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnxprune.deps import Analysis, ChannelGroup
from onnxprune.errors import UnsupportedModelError
from onnxprune.search.budget import BudgetMeter, fill_budget, make_feasible
from onnxprune.search.rounding import fill_to_budget, fit_rounded
from onnxprune.search.gat_ppo.features import StateGraph

MIN_KEEP = 0.05


def kept_count(n: int, ratio: float, round_to: int = 1, min_keep: float = MIN_KEEP) -> int:
    """Units kept of a group of `n` at keep `ratio`: rounded up (to a multiple of `round_to`
    when the group is at least that wide), at least `min_keep` of the group and at least 1."""
    k = int(math.ceil(max(ratio * n, min_keep * n, 1.0) - 1e-9))
    if round_to > 1 and n >= round_to:
        k = int(round_to * math.ceil(k / round_to))
    return min(max(k, 1), n)


class Projector:
    """Keep masks from per-group keep ratios, and the exact projection onto the budget.

    `multiples[i]`: the unit multiple node i's kept width honours (`SearchContext.multiples`:
    `--round-to`, auto by default); every mask it makes keeps a multiple of it (or the whole
    group), so the search's winner needs no rounding afterwards.
    """

    def __init__(self, analysis: Analysis, meter: BudgetMeter, graph: StateGraph, importance: np.ndarray,
                 multiples: Sequence[int] | None = None, min_keep: float = MIN_KEEP, iterations: int = 30) -> None:
        self.analysis, self.meter, self.graph = analysis, meter, graph
        self.importance = importance
        self.multiples = [1] * graph.num_nodes if multiples is None else [int(m) for m in multiples]
        if len(self.multiples) != graph.num_nodes:
            raise ValueError(f"{len(self.multiples)} multiples for {graph.num_nodes} nodes")
        self.by_group = dict(zip(graph.group_ids, self.multiples))
        self.min_keep, self.iterations = min_keep, iterations
        # most important first; frozen units (+inf) always first
        self.orders = [np.argsort(-importance[s:s + n], kind="stable") for s, n in zip(graph.unit_starts, graph.units)]

    @property
    def rounded(self) -> bool:
        return any(m > 1 for m in self.multiples)

    def mask(self, ratios: np.ndarray) -> np.ndarray:
        """The keep mask keeping the most important `ratio` of every node's units (counts
        rounded up to the node's multiple)."""
        keep = self.analysis.full_keep()
        for i, (s, n) in enumerate(zip(self.graph.unit_starts.tolist(), self.graph.units.tolist())):
            k = kept_count(n, float(ratios[i]), self.multiples[i], self.min_keep)
            local = np.zeros(n, dtype=bool)
            local[self.orders[i][:k]] = True
            local |= ~np.isfinite(self.importance[s:s + n])
            keep[s:s + n] = local
        return self.analysis.repair(keep, self.importance)

    def project(self, ratios: np.ndarray) -> tuple[np.ndarray, float]:
        """(mask, factor): the widest mask `mask(clip(factor * ratios, 0, 1))` within budget;
        under rounding (a multiple > 1), then the budget the blocks left unused given back one block at a time
        to the groups furthest below their share `clip(factor * ratios)` at the smallest
        over-budget factor, and where no block fits, a group above its share gives units to one
        below it (`fill_to_budget`; the decided proportions kept as far as blocks allow). At
        exact widths the factor alone decides (on the planted problem, filling there too
        blurred what the policy's choices cost: PPO kept the costly group whole less often).

        Raises `UnsupportedModelError` when even the smallest allowed model is over budget.
        """
        ratios = np.clip(np.asarray(ratios, dtype=np.float64), 1e-3, 1.0)
        low = self.mask(np.zeros_like(ratios))
        if not self.meter.feasible(low):
            raise UnsupportedModelError(
                f"the budget {self.meter.budget.describe()} is out of reach: the smallest allowed model keeps "
                f"{self.meter.ratio(low):.3f}")
        lo, hi = 0.0, 1.0 / float(ratios.min())  # mask(hi * ratios) keeps everything
        top = self.mask(np.minimum(hi * ratios, 1.0))
        if self.meter.feasible(top):
            return top, hi
        best = low
        for _ in range(self.iterations):
            mid = 0.5 * (lo + hi)
            keep = self.mask(np.minimum(mid * ratios, 1.0))
            if self.meter.feasible(keep):
                lo, best = mid, keep
            else:
                hi = mid
        if self.rounded and self.meter.cheap:
            share = dict(zip(self.graph.group_ids, np.minimum(hi * ratios, 1.0).tolist()))

            def deficit(group: ChannelGroup, keep: np.ndarray) -> float:
                return share[group.id] - float(keep[group.unit_slice].mean())

            def surplus(group: ChannelGroup, keep: np.ndarray) -> bool:  # a swap never thins a group below its share
                return deficit(group, keep) < 0

            best = fill_to_budget(self.meter, best, self.importance, self.by_group, prefer=deficit,
                                  min_keep_fraction=self.min_keep, may_shrink=surplus)
        return best, lo


@dataclass(frozen=True, eq=False)
class ActionSpace:
    """What one node's action is: `kind` "levels" (categorical over `fractions`) or "blocks"
    (Bernoulli per block of `blocks[i]`). `width`: logits per node."""

    kind: str
    width: int
    fractions: np.ndarray  # (levels,) keep ratios, levels only
    blocks: tuple[tuple[np.ndarray, ...], ...] = ()  # blocks only: global unit indices, least important first

    def valid(self, nodes: int) -> np.ndarray:
        """(nodes, width) which logits are real choices."""
        if self.kind == "levels":
            return np.ones((nodes, self.width), dtype=bool)
        counts = np.array([len(b) for b in self.blocks])
        return np.arange(self.width)[None, :] < counts[:, None]


def level_space(levels: int, lowest: float) -> ActionSpace:
    """`levels` keep ratios evenly spaced from `lowest` to 1."""
    return ActionSpace("levels", levels, np.linspace(lowest, 1.0, levels))


def block_space(graph: StateGraph, importance: np.ndarray, block: int, blocks_per_group: int) -> ActionSpace:
    """Each node's finite-score units sorted by ascending importance, cut into blocks of `block`
    units (or `blocks_per_group` blocks; neither: median group size / 8)."""
    if block <= 0 and blocks_per_group <= 0:
        block = max(1, int(np.median(graph.units)) // 8)
    out = []
    for start, n in zip(graph.unit_starts.tolist(), graph.units.tolist()):
        local = importance[start:start + n].astype(np.float64)
        finite = np.flatnonzero(np.isfinite(local))
        order = finite[np.argsort(local[finite], kind="stable")]
        if order.size == 0:
            out.append((start + np.arange(n),))
            continue
        count = min(blocks_per_group, order.size) if blocks_per_group > 0 else -(-order.size // block)
        out.append(tuple(start + part for part in np.array_split(order, max(count, 1))))
    width = max(len(b) for b in out) if out else 1
    return ActionSpace("blocks", width, np.zeros(0), tuple(out))


class Episode:
    """The state of one episode: which nodes are decided, their ratios (levels) or kept units
    (blocks), and the features the policy reads next."""

    def __init__(self, graph: StateGraph, space: ActionSpace, projector: Projector, slices: list[np.ndarray],
                 target: float) -> None:
        self.graph, self.space, self.projector, self.slices = graph, space, projector, slices
        self.target = target
        n = graph.num_nodes
        self.ratios = np.ones(n, dtype=np.float64)
        self.decided = np.zeros(n, dtype=bool)
        self.keep = projector.analysis.full_keep()  # blocks: the units kept so far
        self.step = 0

    @property
    def done(self) -> bool:
        return self.step >= len(self.slices)

    def partial_mask(self) -> np.ndarray:
        if self.space.kind == "blocks":
            return self.keep
        return self.projector.mask(self.ratios)

    def features(self) -> np.ndarray:
        """(nodes, features) of the current state."""
        analysis = self.projector.analysis
        used = analysis.cost.macs(self.partial_mask()) / max(analysis.macs, 1) if self.decided.any() else 1.0
        current = np.zeros(self.graph.num_nodes, dtype=np.float32)
        if not self.done:
            current[self.slices[self.step]] = 1.0
        gap = (used - self.target) / max(1.0 - self.target, 1e-6)
        return self.graph.features(self.ratios.astype(np.float32), self.decided.astype(np.float32), current,
                                   used, gap, self.step / max(len(self.slices), 1))

    def apply(self, actions: np.ndarray) -> None:
        """Decide the current slice: `actions` is (nodes,) level indices or (nodes, width) bool
        block choices (only the slice's rows are read)."""
        nodes = self.slices[self.step]
        if self.space.kind == "levels":
            self.ratios[nodes] = self.space.fractions[np.asarray(actions)[nodes]]
        else:
            for i in nodes.tolist():
                blocks = self.space.blocks[i]
                chosen = np.asarray(actions[i, :len(blocks)], dtype=bool).copy()
                if not chosen.any():
                    chosen[-1] = True  # a group keeps its most important block
                for b, on in zip(blocks, chosen.tolist()):
                    self.keep[b] = on
                self.ratios[i] = float(self.keep[self.graph.unit_starts[i]:
                                                 self.graph.unit_starts[i] + self.graph.units[i]].mean())
        self.decided[nodes] = True
        self.step += 1

    def finish(self, meter: BudgetMeter, project: bool = True) -> tuple[np.ndarray, float]:
        """(candidate mask, projection factor) of the decided episode."""
        pr = self.projector
        if self.space.kind == "levels":
            return pr.project(self.ratios)
        keep = pr.analysis.repair(self.keep, pr.importance)
        if not project:
            return keep, 1.0
        if pr.rounded:  # blocks of channels need not align with the multiples
            return fit_rounded(meter, keep, pr.importance, pr.by_group, meter.cheap, pr.min_keep), 1.0
        keep = make_feasible(meter, keep, pr.importance, pr.min_keep)
        return fill_budget(meter, keep, pr.importance), 1.0
