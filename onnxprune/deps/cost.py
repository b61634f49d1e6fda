"""MACs and params of a model under any candidate mask, without rewriting anything.

Each cost term is `base * f(a) * f(b)` where `f(s)` is the kept fraction of the positions of
segment `s` (a Conv's output channels, its input channels...). A mask is a boolean vector over
all units; one call is a gather, a `reduceat` and a dot product, so a search can afford
thousands of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.deps.groups import GroupSet
from onnxprune.ir import LayerGraph

_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass(frozen=True, eq=False)
class CostModel:
    flat: np.ndarray  # concatenated unit indices of all segments
    starts: np.ndarray  # (segments,) offsets into `flat`
    lengths: np.ndarray  # (segments,)
    mac_base: np.ndarray  # (mac terms,)
    mac_seg: np.ndarray  # (mac terms, 2) segment index, -1 = factor 1
    mac_nodes: tuple[str, ...]
    param_base: np.ndarray
    param_seg: np.ndarray  # (param terms, 2)
    fixed_params: int  # params of initializers no mask touches

    def _fractions(self, keep: np.ndarray) -> np.ndarray:
        if self.flat.size == 0:
            return np.ones(1)
        kept = np.add.reduceat(keep[self.flat].astype(np.float64), self.starts)
        return np.append(kept / self.lengths, 1.0)  # index -1 -> 1.0

    def macs(self, keep: np.ndarray) -> int:
        f = self._fractions(keep)
        return int(round(float(np.dot(self.mac_base, f[self.mac_seg[:, 0]] * f[self.mac_seg[:, 1]]))))

    def params(self, keep: np.ndarray) -> int:
        f = self._fractions(keep)
        val = float(np.dot(self.param_base, f[self.param_seg[:, 0]] * f[self.param_seg[:, 1]]))
        return int(round(val)) + self.fixed_params

    def cost(self, keep: np.ndarray) -> tuple[int, int]:
        """(MACs, params) with the units where `keep` is False removed."""
        f = self._fractions(keep)
        macs = float(np.dot(self.mac_base, f[self.mac_seg[:, 0]] * f[self.mac_seg[:, 1]]))
        params = float(np.dot(self.param_base, f[self.param_seg[:, 0]] * f[self.param_seg[:, 1]]))
        return int(round(macs)), int(round(params)) + self.fixed_params

    def node_macs(self, keep: np.ndarray) -> dict[str, int]:
        f = self._fractions(keep)
        vals = self.mac_base * f[self.mac_seg[:, 0]] * f[self.mac_seg[:, 1]]
        return {n: int(round(v)) for n, v in zip(self.mac_nodes, vals.tolist())}


def build_cost_model(graph: LayerGraph, groups: GroupSet) -> CostModel:
    segments: list[np.ndarray] = []
    index: dict[int, int] = {}

    def seg(units: np.ndarray | None) -> int:
        if units is None or units.size == 0:
            return -1
        key = id(units)
        if key not in index:
            index[key] = len(segments)
            segments.append(units)
        return index[key]

    mac_base, mac_seg, mac_nodes = [], [], []
    for name, macs, out_u, in_u in groups.macs_terms:
        mac_base.append(float(macs))
        mac_seg.append((seg(out_u), seg(in_u)))
        mac_nodes.append(name)

    # Params: each float initializer, scaled along every axis a member slices.
    axes_of: dict[str, dict[int, np.ndarray]] = {}
    for rm in groups.members:
        m = rm.member
        if m.kind in ("out", "in", "param") and m.tensor:
            axes_of.setdefault(m.tensor, {}).setdefault(m.axis, rm.units)
    param_base, param_seg = [], []
    fixed = 0
    for name, t in graph.initializers.items():
        if t.data_type not in _FLOAT_TYPES:
            continue
        numel = int(np.prod(t.dims)) if len(t.dims) else 1
        axes = list(axes_of.get(name, {}).values())
        if not axes:
            fixed += numel
            continue
        param_base.append(float(numel))
        param_seg.append((seg(axes[0]), seg(axes[1]) if len(axes) > 1 else -1))

    lengths = np.array([s.size for s in segments], dtype=np.float64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if segments else np.zeros(0, np.int64)
    flat = np.concatenate(segments) if segments else np.zeros(0, np.int64)
    n = len(segments)

    def fix(pairs: list[tuple[int, int]]) -> np.ndarray:
        arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        arr[arr < 0] = n  # the appended 1.0
        return arr

    return CostModel(
        flat=flat, starts=starts, lengths=lengths,
        mac_base=np.array(mac_base), mac_seg=fix(mac_seg), mac_nodes=tuple(mac_nodes),
        param_base=np.array(param_base), param_seg=fix(param_seg), fixed_params=fixed,
    )
