"""Channel importance computed on the ONNX weights alone: l1, l2, bn, random.

A group's importance aggregates every member: the producers' output slices and the consumers'
input slices (and, for `bn`, the BatchNormalization scales), each normalized by its own mean so
that no single layer dominates, then averaged per unit.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from onnxprune.deps import Analysis
from onnxprune.errors import InputError

WeightCriterion = Literal["l1", "l2", "bn", "random"]
WEIGHT_CRITERIA = ("l1", "l2", "bn", "random")


def _position_norms(arr: np.ndarray, axis: int, p: int) -> np.ndarray:
    """L1 or L2 norm of each slice along `axis` (float64 accumulation, no float64 copy)."""
    others = tuple(a for a in range(arr.ndim) if a != axis)
    if p == 1:
        return np.abs(arr).sum(axis=others, dtype=np.float64)
    return np.sqrt(np.square(arr).sum(axis=others, dtype=np.float64))


def _accumulate(analysis: Analysis, kinds: tuple[str, ...], p: int,
                only_bn_scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    g = analysis.graph
    total = np.zeros(analysis.groups.num_units)
    count = np.zeros(analysis.groups.num_units)
    for rm in analysis.groups.members:
        m = rm.member
        if m.kind not in kinds or not m.tensor:
            continue
        if only_bn_scale:
            node = g.by_name[m.node]
            if node.op_type != "BatchNormalization" or node.inputs[1] != m.tensor:
                continue
        arr = g.const(m.tensor)
        if arr is None or arr.ndim == 0:
            continue
        norms = _position_norms(arr, m.axis, p)
        mean = norms.mean()
        norms = norms / mean if mean > 0 else norms
        # A unit may cover several positions (Flatten -> Gemm): average them.
        per_unit = np.zeros(analysis.groups.num_units)
        hits = np.zeros(analysis.groups.num_units)
        np.add.at(per_unit, rm.units, norms)
        np.add.at(hits, rm.units, 1.0)
        touched = hits > 0
        total[touched] += per_unit[touched] / hits[touched]
        count[touched] += 1
    return total, count


def weight_scores(analysis: Analysis, criterion: str, seed: int = 0) -> np.ndarray:
    """Importance of every unit (higher = more important); frozen units get +inf."""
    if criterion not in WEIGHT_CRITERIA:
        raise InputError(f"unknown criterion {criterion!r} (choose from {', '.join(WEIGHT_CRITERIA)})")
    n = analysis.groups.num_units
    if criterion == "random":
        scores = np.random.default_rng(seed).random(n)
    else:
        p = 2 if criterion == "l2" else 1
        total, count = _accumulate(analysis, ("out", "in"), p)
        if criterion == "bn":
            bn_total, bn_count = _accumulate(analysis, ("param",), 1, only_bn_scale=True)
            # Groups with a BatchNormalization use its scales; others (e.g. BN folded into
            # Conv by the exporter) fall back to L1 of the weights.
            has_bn = np.zeros(n, dtype=bool)
            for grp in analysis.channel_groups:
                if (bn_count[grp.unit_slice] > 0).all():
                    has_bn[grp.unit_slice] = True
            total = np.where(has_bn, bn_total, total)
            count = np.where(has_bn, bn_count, count)
        scores = np.divide(total, count, out=np.zeros(n), where=count > 0)
    for grp in analysis.channel_groups:
        if not grp.prunable:
            scores[grp.unit_slice] = np.inf
    return scores
